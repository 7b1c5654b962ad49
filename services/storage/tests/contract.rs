//! The whole `StorageApi` contract (accounts and SCRAM credentials, RFC 6121
//! section 2 rosters and versioning, the XEP-0160 offline queue) as one
//! suite, run against SQLite in memory, SQLite in a file and PostgreSQL.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use starling_api::{
    AbuseReport, AccountDataStore, AccountStore, ApiError, BlockedItem, BlockingStore,
    OfflineStore, RosterItem, RosterStore, ScramCredentials, StoredCredentials, Subscription,
};
use starling_jid::{BareJid, Jid};
use starling_storage::Storage;
use support::{
    MAX_ACCOUNT_DATA_BYTES, MAX_BLOCKLIST_ITEMS, MAX_OFFLINE_PER_USER, MAX_ROSTER_ITEMS,
};

fn jid(text: &str) -> BareJid {
    text.parse()
        .unwrap_or_else(|error| panic!("{text:?} is not a bare jid: {error:?}"))
}

fn credentials(seed: u8) -> StoredCredentials {
    let keys = |length: usize, iterations: u32| ScramCredentials {
        salt: vec![seed; 16],
        iterations,
        stored_key: (0..length)
            .map(|index| seed.wrapping_add(index as u8))
            .collect(),
        server_key: (0..length)
            .map(|index| seed.wrapping_mul(3).wrapping_add(index as u8))
            .collect(),
    };
    StoredCredentials {
        sha1: keys(20, 4096),
        sha256: keys(32, 8192 + u32::from(seed)),
    }
}

async fn account(storage: &Storage, user: &str) -> BareJid {
    let user = jid(user);
    storage
        .create_account(&user, &credentials(1))
        .await
        .expect("create account");
    user
}

fn is_not_found<T: std::fmt::Debug>(result: &Result<T, ApiError>) -> bool {
    matches!(result, Err(ApiError::NotFound(_)))
}

pub mod cases {
    pub use super::archive_cases::*;
    pub use super::blocking_cases::*;
    pub use super::muc_cases::*;
    pub use super::pep_cases::*;
    pub use super::push_cases::*;
    pub use super::upload_cases::*;
    use super::*;

    pub async fn accounts_create_duplicate_list_remove(storage: Storage) {
        let alice = jid("alice@example.org");
        storage
            .create_account(&alice, &credentials(1))
            .await
            .unwrap();
        let duplicate = storage.create_account(&alice, &credentials(2)).await;
        assert!(
            matches!(duplicate, Err(ApiError::AlreadyExists(_))),
            "{duplicate:?}"
        );
        // The duplicate did not touch the first account's credentials.
        assert_eq!(
            storage.credentials(&alice).await.unwrap(),
            Some(credentials(1))
        );

        // Normalised addresses (RFC 7622 section 3): "Carol@EXAMPLE.org" is carol@example.org.
        account(&storage, "zoe@example.org").await;
        account(&storage, "Carol@EXAMPLE.org").await;
        account(&storage, "jürgen@example.org").await;
        account(&storage, "bob@example.net").await;
        let same_as_carol = storage
            .create_account(&jid("CAROL@example.org"), &credentials(3))
            .await;
        assert!(
            matches!(same_as_carol, Err(ApiError::AlreadyExists(_))),
            "{same_as_carol:?}"
        );

        let listed = storage.list_accounts("example.org").await.unwrap();
        let expected = vec![
            jid("alice@example.org"),
            jid("carol@example.org"),
            jid("jürgen@example.org"),
            jid("zoe@example.org"),
        ];
        assert_eq!(listed, expected);
        assert_eq!(
            storage.list_accounts("EXAMPLE.ORG").await.unwrap(),
            expected
        );
        assert_eq!(
            storage.list_accounts("example.net").await.unwrap(),
            vec![jid("bob@example.net")]
        );
        assert_eq!(
            storage.list_accounts("nowhere.example").await.unwrap(),
            Vec::<BareJid>::new()
        );
        assert!(matches!(
            storage.list_accounts("bad domain..").await,
            Err(ApiError::Invalid(_))
        ));

        storage.remove_account(&alice).await.unwrap();
        assert!(is_not_found(&storage.remove_account(&alice).await));
        assert_eq!(storage.credentials(&alice).await.unwrap(), None);
        assert_eq!(
            storage.list_accounts("example.org").await.unwrap(),
            vec![
                jid("carol@example.org"),
                jid("jürgen@example.org"),
                jid("zoe@example.org")
            ]
        );
        // The address is free again.
        storage
            .create_account(&alice, &credentials(4))
            .await
            .unwrap();
        assert_eq!(
            storage.credentials(&alice).await.unwrap(),
            Some(credentials(4))
        );
    }

    pub async fn domain_jid_is_never_an_account(storage: Storage) {
        let domain = jid("example.org");
        let created = storage.create_account(&domain, &credentials(1)).await;
        assert!(matches!(created, Err(ApiError::Invalid(_))), "{created:?}");
        assert!(is_not_found(
            &storage.set_credentials(&domain, &credentials(1)).await
        ));
        assert!(is_not_found(&storage.remove_account(&domain).await));
        assert_eq!(storage.credentials(&domain).await.unwrap(), None);
        assert_eq!(storage.roster(&domain).await.unwrap(), (0, Vec::new()));
        assert!(is_not_found(
            &storage
                .put_roster_item(&domain, &RosterItem::new(jid("bob@example.net")))
                .await
        ));
        assert!(is_not_found(
            &storage.store_offline(&domain, "<message/>").await
        ));
        assert_eq!(
            storage.take_all_offline(&domain).await.unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(storage.count_offline(&domain).await.unwrap(), 0);
    }

    pub async fn credentials_round_trip(storage: Storage) {
        let alice = jid("alice@example.org");
        assert_eq!(storage.credentials(&alice).await.unwrap(), None);
        assert!(is_not_found(
            &storage.set_credentials(&alice, &credentials(7)).await
        ));
        assert_eq!(
            storage.credentials(&alice).await.unwrap(),
            None,
            "set_credentials must not create an account"
        );

        storage
            .create_account(&alice, &credentials(7))
            .await
            .unwrap();
        assert_eq!(
            storage.credentials(&alice).await.unwrap(),
            Some(credentials(7))
        );
        storage
            .set_credentials(&alice, &credentials(9))
            .await
            .unwrap();
        assert_eq!(
            storage.credentials(&alice).await.unwrap(),
            Some(credentials(9))
        );

        // Extreme values survive: u32::MAX iterations, empty and long byte strings.
        let extreme = StoredCredentials {
            sha1: ScramCredentials {
                salt: Vec::new(),
                iterations: u32::MAX,
                stored_key: vec![0; 20],
                server_key: vec![255; 20],
            },
            sha256: ScramCredentials {
                salt: vec![0, 255, 0],
                iterations: 1,
                stored_key: vec![0xAB; 512],
                server_key: Vec::new(),
            },
        };
        storage.set_credentials(&alice, &extreme).await.unwrap();
        assert_eq!(storage.credentials(&alice).await.unwrap(), Some(extreme));
    }

    pub async fn roster_put_get_remove_with_increasing_versions(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let (initial_version, items) = storage.roster(&alice).await.unwrap();
        assert!(items.is_empty());

        let mut bob = RosterItem::new(jid("bob@example.net"));
        bob.name = Some("Bob".into());
        bob.subscription = Subscription::Both;
        bob.groups = vec!["Friends".into()];
        let version_after_bob = storage.put_roster_item(&alice, &bob).await.unwrap();
        assert!(version_after_bob > initial_version);

        let mut carol = RosterItem::new(jid("carol@example.com"));
        carol.subscription = Subscription::To;
        carol.pending_out = true;
        let version_after_carol = storage.put_roster_item(&alice, &carol).await.unwrap();
        assert!(version_after_carol > version_after_bob);

        let (version, items) = storage.roster(&alice).await.unwrap();
        assert_eq!(version, version_after_carol);
        assert_eq!(items, vec![bob.clone(), carol.clone()]);
        assert_eq!(
            storage
                .roster_item(&alice, &jid("bob@example.net"))
                .await
                .unwrap(),
            Some(bob.clone())
        );
        assert_eq!(
            storage
                .roster_item(&alice, &jid("Bob@Example.NET"))
                .await
                .unwrap(),
            Some(bob.clone())
        );
        assert_eq!(
            storage
                .roster_item(&alice, &jid("dave@example.net"))
                .await
                .unwrap(),
            None
        );

        // Replacing an item bumps the version too, and replaces every field.
        bob.name = None;
        bob.subscription = Subscription::From;
        bob.groups = Vec::new();
        let version_after_update = storage.put_roster_item(&alice, &bob).await.unwrap();
        assert!(version_after_update > version_after_carol);
        assert_eq!(
            storage.roster_item(&alice, &bob.jid).await.unwrap(),
            Some(bob.clone())
        );

        let version_after_remove = storage.remove_roster_item(&alice, &bob.jid).await.unwrap();
        assert!(
            version_after_remove.is_some_and(|version| version > version_after_update),
            "{version_after_remove:?}"
        );
        assert_eq!(storage.roster_item(&alice, &bob.jid).await.unwrap(), None);
        // Removing what is not there changes nothing.
        assert_eq!(
            storage.remove_roster_item(&alice, &bob.jid).await.unwrap(),
            None
        );
        let (version, items) = storage.roster(&alice).await.unwrap();
        assert_eq!(Some(version), version_after_remove);
        assert_eq!(items, vec![carol]);
    }

    pub async fn roster_placeholders_are_stored_and_returned(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        // RFC 6121 section 3.1.3: an inbound request from a contact not in
        // the roster is remembered, with its stanza, but not shown.
        let mut mallory = RosterItem::new(jid("mallory@evil.example"));
        mallory.in_roster = false;
        mallory.pending_in = true;
        mallory.pending_in_stanza =
            Some("<presence from='mallory@evil.example' to='alice@example.org' type='subscribe'><status>hi &amp; bye</status></presence>".into());
        storage.put_roster_item(&alice, &mallory).await.unwrap();

        let mut visible = RosterItem::new(jid("bob@example.net"));
        visible.groups = vec!["Work".into()];
        storage.put_roster_item(&alice, &visible).await.unwrap();

        let (_, items) = storage.roster(&alice).await.unwrap();
        assert_eq!(items, vec![visible, mallory.clone()]);
        assert_eq!(
            storage.roster_item(&alice, &mallory.jid).await.unwrap(),
            Some(mallory.clone())
        );

        // Approving turns the placeholder into a visible item.
        mallory.in_roster = true;
        mallory.pending_in = false;
        mallory.pending_in_stanza = None;
        mallory.subscription = Subscription::From;
        storage.put_roster_item(&alice, &mallory).await.unwrap();
        assert_eq!(
            storage.roster_item(&alice, &mallory.jid).await.unwrap(),
            Some(mallory)
        );
    }

    pub async fn roster_groups_keep_their_order(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let mut bob = RosterItem::new(jid("bob@example.net"));
        bob.groups = vec![
            "Zeta".into(),
            "Alpha".into(),
            "Mitte ü".into(),
            "friends".into(),
            "Friends".into(),
        ];
        storage.put_roster_item(&alice, &bob).await.unwrap();
        let mut domain_contact = RosterItem::new(jid("transport.example.net"));
        domain_contact.groups = vec!["Gateways".into()];
        storage
            .put_roster_item(&alice, &domain_contact)
            .await
            .unwrap();
        // Items come sorted by JID; a domain-only JID sorts first.
        assert_eq!(
            storage.roster(&alice).await.unwrap().1,
            vec![domain_contact, bob.clone()]
        );

        bob.groups = vec!["Alpha".into()];
        storage.put_roster_item(&alice, &bob).await.unwrap();
        assert_eq!(
            storage.roster_item(&alice, &bob.jid).await.unwrap(),
            Some(bob.clone())
        );

        // RFC 6121 section 2.3.3: a group named twice is refused, and nothing changes.
        let version = storage.roster(&alice).await.unwrap().0;
        let mut twice = bob.clone();
        twice.groups = vec!["Work".into(), "Work".into()];
        assert!(matches!(
            storage.put_roster_item(&alice, &twice).await,
            Err(ApiError::Invalid(_))
        ));
        assert_eq!(storage.roster(&alice).await.unwrap().0, version);
        assert_eq!(
            storage.roster_item(&alice, &bob.jid).await.unwrap(),
            Some(bob)
        );
    }

    pub async fn roster_writes_need_an_account(storage: Storage) {
        let ghost = jid("ghost@example.org");
        let put = storage
            .put_roster_item(&ghost, &RosterItem::new(jid("bob@example.net")))
            .await;
        assert!(is_not_found(&put), "{put:?}");
        assert_eq!(storage.roster(&ghost).await.unwrap(), (0, Vec::new()));
        assert_eq!(
            storage
                .roster_item(&ghost, &jid("bob@example.net"))
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            storage
                .remove_roster_item(&ghost, &jid("bob@example.net"))
                .await
                .unwrap(),
            None
        );
    }

    pub async fn roster_is_bounded_in_bytes(storage: Storage) {
        // Issue 18: each item under the per-item limits, the roster over its bytes.
        let alice = account(&storage, "alice@example.org").await;
        let grouped = |index: usize| {
            let mut item = RosterItem::new(jid(&format!("c{index}@example.net")));
            item.name = Some("n".repeat(200));
            item.groups = (0..3)
                .map(|group| format!("{group}{}", "g".repeat(299)))
                .collect();
            item
        };
        // 1,114 bytes each (14 of JID, 200 of name, 900 of groups): three fit in 4,096, four do not.
        for index in 0..3 {
            storage
                .put_roster_item(&alice, &grouped(index))
                .await
                .unwrap();
        }
        let version = storage.roster(&alice).await.unwrap().0;
        let refused = storage.put_roster_item(&alice, &grouped(3)).await;
        assert!(
            matches!(refused, Err(ApiError::LimitReached(_))),
            "{refused:?}"
        );
        assert_eq!(storage.roster(&alice).await.unwrap().0, version);
        assert_eq!(storage.roster(&alice).await.unwrap().1.len(), 3);
        // Replacing an item counts its new size, not both.
        let mut renamed = grouped(0);
        renamed.name = Some("m".repeat(700));
        storage.put_roster_item(&alice, &renamed).await.unwrap();
        renamed.name = Some("m".repeat(1000));
        let refused = storage.put_roster_item(&alice, &renamed).await;
        assert!(
            matches!(refused, Err(ApiError::LimitReached(_))),
            "{refused:?}"
        );
        // A small item still fits in what is left.
        let small = RosterItem::new(jid("small@example.net"));
        storage.put_roster_item(&alice, &small).await.unwrap();
    }

    pub async fn roster_cap_refuses_new_items_only(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        for index in 0..MAX_ROSTER_ITEMS {
            let item = RosterItem::new(jid(&format!("contact{index}@example.net")));
            storage.put_roster_item(&alice, &item).await.unwrap();
        }
        let version = storage.roster(&alice).await.unwrap().0;
        let refused = storage
            .put_roster_item(&alice, &RosterItem::new(jid("one-too-many@example.net")))
            .await;
        assert!(
            matches!(refused, Err(ApiError::LimitReached(_))),
            "{refused:?}"
        );
        assert_eq!(
            storage.roster(&alice).await.unwrap().0,
            version,
            "a refused put must not change the version"
        );
        assert_eq!(
            storage
                .roster_item(&alice, &jid("one-too-many@example.net"))
                .await
                .unwrap(),
            None
        );

        // Updating an existing item still works at the cap.
        let mut existing = RosterItem::new(jid("contact0@example.net"));
        existing.name = Some("Renamed".into());
        assert!(storage.put_roster_item(&alice, &existing).await.unwrap() > version);

        // Removing one makes room for one.
        storage
            .remove_roster_item(&alice, &jid("contact1@example.net"))
            .await
            .unwrap();
        storage
            .put_roster_item(&alice, &RosterItem::new(jid("one-too-many@example.net")))
            .await
            .unwrap();
        assert_eq!(
            storage.roster(&alice).await.unwrap().1.len(),
            MAX_ROSTER_ITEMS as usize
        );
    }

    pub async fn offline_messages_are_taken_oldest_first(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let bob = account(&storage, "bob@example.org").await;
        let stanzas = [
            "<message xmlns='jabber:client' from='carol@example.com/phone' to='alice@example.org' type='chat' id='m1'><body>first</body></message>",
            "<message xmlns='jabber:client' from='carol@example.com/phone' to='alice@example.org' type='normal' id='m2'><subject>Ünïcödé ✓</subject><body>second &lt;3</body></message>",
            "<message xmlns='jabber:client' from='dave@example.net' to='alice@example.org' id='m3'><body>third</body><delay xmlns='urn:xmpp:delay' from='example.org' stamp='2002-09-10T23:08:25Z'/></message>",
        ];
        assert_eq!(storage.count_offline(&alice).await.unwrap(), 0);
        for stanza in stanzas {
            storage.store_offline(&alice, stanza).await.unwrap();
        }
        storage.store_offline(&bob, "<message xmlns='jabber:client' to='bob@example.org'><body>for bob</body></message>").await.unwrap();
        assert_eq!(storage.count_offline(&alice).await.unwrap(), 3);
        assert_eq!(storage.count_offline(&bob).await.unwrap(), 1);

        assert_eq!(
            storage.take_all_offline(&alice).await.unwrap(),
            stanzas.to_vec()
        );
        assert_eq!(
            storage.take_all_offline(&alice).await.unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(storage.count_offline(&alice).await.unwrap(), 0);
        assert_eq!(
            storage.count_offline(&bob).await.unwrap(),
            1,
            "taking alice's queue leaves bob's"
        );

        // Order holds across takes: what comes after a take is newer.
        storage
            .store_offline(&alice, "<message xmlns='jabber:client' id='m4'/>")
            .await
            .unwrap();
        storage
            .store_offline(&alice, "<message xmlns='jabber:client' id='m5'/>")
            .await
            .unwrap();
        assert_eq!(
            storage.take_all_offline(&alice).await.unwrap(),
            vec![
                "<message xmlns='jabber:client' id='m4'/>",
                "<message xmlns='jabber:client' id='m5'/>"
            ]
        );
    }

    pub async fn offline_queue_is_taken_in_pages(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let small = |index: usize| format!("<message xmlns='jabber:client' id='s{index}'/>");
        let large = format!(
            "<message xmlns='jabber:client' id='large'><body>{}</body></message>",
            "x".repeat(2000)
        );
        // Five: the suite's queue bound.
        for index in 0..4 {
            storage.store_offline(&alice, &small(index)).await.unwrap();
        }
        storage.store_offline(&alice, &large).await.unwrap();

        // Bounded by count.
        let page = storage.take_offline(&alice, 2, u64::MAX).await.unwrap();
        assert_eq!(page.stanzas, vec![small(0), small(1)]);
        assert!(page.more);
        // Bounded by bytes: two small ones fit in 150 bytes, the large one does not.
        let page = storage.take_offline(&alice, 100, 150).await.unwrap();
        assert_eq!(page.stanzas, vec![small(2), small(3)]);
        assert!(page.more);
        // A message larger than the page is taken alone, never stuck; the
        // last page says nothing is left.
        let page = storage.take_offline(&alice, 100, 150).await.unwrap();
        assert_eq!(page.stanzas, vec![large.clone()]);
        assert!(!page.more);
        let page = storage.take_offline(&alice, 100, 150).await.unwrap();
        assert_eq!(page, starling_api::OfflinePage::default());
        assert_eq!(storage.count_offline(&alice).await.unwrap(), 0);
        // No account: an empty page.
        let ghost = jid("ghost@example.org");
        assert_eq!(
            storage.take_offline(&ghost, 10, 10).await.unwrap(),
            starling_api::OfflinePage::default()
        );
    }

    pub async fn subscriptions_are_the_roster_states_without_names(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let mut bob = RosterItem::new(jid("bob@example.net"));
        bob.name = Some("Bob".into());
        bob.subscription = Subscription::From;
        bob.groups = vec!["Friends".into(), "Work".into()];
        storage.put_roster_item(&alice, &bob).await.unwrap();
        let mut carol = RosterItem::new(jid("carol@example.com"));
        carol.pending_in = true;
        carol.pending_in_stanza = Some("<presence type='subscribe'/>".into());
        carol.in_roster = false;
        storage.put_roster_item(&alice, &carol).await.unwrap();
        let entries = storage.subscriptions(&alice).await.unwrap();
        let expected: Vec<starling_api::SubscriptionEntry> =
            [&bob, &carol].into_iter().map(Into::into).collect();
        let mut sorted = entries.clone();
        sorted.sort_by(|left, right| left.jid.cmp(&right.jid));
        assert_eq!(sorted, expected);
        assert!(storage
            .subscriptions(&jid("ghost@example.org"))
            .await
            .unwrap()
            .is_empty());
    }

    pub async fn offline_queue_is_capped(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        for index in 0..MAX_OFFLINE_PER_USER {
            storage
                .store_offline(
                    &alice,
                    &format!("<message xmlns='jabber:client' id='m{index}'/>"),
                )
                .await
                .unwrap();
        }
        let refused = storage
            .store_offline(&alice, "<message xmlns='jabber:client' id='overflow'/>")
            .await;
        assert!(
            matches!(refused, Err(ApiError::LimitReached(_))),
            "{refused:?}"
        );
        assert_eq!(
            storage.count_offline(&alice).await.unwrap(),
            u64::from(MAX_OFFLINE_PER_USER)
        );
        let taken = storage.take_all_offline(&alice).await.unwrap();
        assert_eq!(taken.len(), MAX_OFFLINE_PER_USER as usize);
        assert_eq!(
            taken.last().map(String::as_str),
            Some(
                format!(
                    "<message xmlns='jabber:client' id='m{}'/>",
                    MAX_OFFLINE_PER_USER - 1
                )
                .as_str()
            )
        );
        // Room again after the take.
        storage
            .store_offline(&alice, "<message xmlns='jabber:client' id='after'/>")
            .await
            .unwrap();
        assert_eq!(storage.count_offline(&alice).await.unwrap(), 1);
    }

    pub async fn account_documents_round_trip_and_are_bounded_in_bytes(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let bob = account(&storage, "bob@example.org").await;
        let bookmarks =
            "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>";
        assert_eq!(
            storage
                .account_data(&alice, "private storage:bookmarks")
                .await
                .unwrap(),
            None
        );
        storage
            .put_account_data(&alice, "private storage:bookmarks", Some(bookmarks))
            .await
            .unwrap();
        assert_eq!(
            storage
                .account_data(&alice, "private storage:bookmarks")
                .await
                .unwrap()
                .as_deref(),
            Some(bookmarks)
        );
        // Another account's documents are its own.
        assert_eq!(
            storage
                .account_data(&bob, "private storage:bookmarks")
                .await
                .unwrap(),
            None
        );
        // Replacing a document counts its new size, not both.
        let half = "x".repeat(MAX_ACCOUNT_DATA_BYTES as usize / 2);
        storage
            .put_account_data(&alice, "vcard", Some(&half))
            .await
            .unwrap();
        storage
            .put_account_data(&alice, "vcard", Some(&half))
            .await
            .unwrap();
        // Past the bound in total: refused, the old document kept.
        let refused = storage
            .put_account_data(&alice, "private other", Some(&half))
            .await;
        assert!(
            matches!(refused, Err(ApiError::LimitReached(_))),
            "{refused:?}"
        );
        assert_eq!(
            storage.account_data(&alice, "private other").await.unwrap(),
            None
        );
        // Removing makes room again.
        storage
            .put_account_data(&alice, "vcard", None)
            .await
            .unwrap();
        assert_eq!(storage.account_data(&alice, "vcard").await.unwrap(), None);
        storage
            .put_account_data(&alice, "private other", Some(&half))
            .await
            .unwrap();
        // No account, no documents.
        let ghost = jid("ghost@example.org");
        assert!(is_not_found(
            &storage
                .put_account_data(&ghost, "vcard", Some("<vCard xmlns='vcard-temp'/>"))
                .await
        ));
        assert_eq!(storage.account_data(&ghost, "vcard").await.unwrap(), None);
        // They go with the account.
        storage.remove_account(&alice).await.unwrap();
        let alice = account(&storage, "alice@example.org").await;
        assert_eq!(
            storage.account_data(&alice, "private other").await.unwrap(),
            None
        );
    }

    pub async fn offline_rejections(storage: Storage) {
        let ghost = jid("ghost@example.org");
        let stored = storage
            .store_offline(
                &ghost,
                "<message xmlns='jabber:client' to='ghost@example.org'/>",
            )
            .await;
        assert!(is_not_found(&stored), "{stored:?}");
        assert_eq!(
            storage.take_all_offline(&ghost).await.unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(storage.count_offline(&ghost).await.unwrap(), 0);

        let alice = account(&storage, "alice@example.org").await;
        let with_nul = storage
            .store_offline(
                &alice,
                "<message xmlns='jabber:client'><body>a\0b</body></message>",
            )
            .await;
        assert!(
            matches!(with_nul, Err(ApiError::Invalid(_))),
            "{with_nul:?}"
        );
        assert_eq!(storage.count_offline(&alice).await.unwrap(), 0);
    }

    pub async fn remove_account_removes_everything(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let bob = account(&storage, "bob@example.org").await;
        let mut bob_in_alice = RosterItem::new(bob.clone());
        bob_in_alice.groups = vec!["Friends".into()];
        bob_in_alice.subscription = Subscription::Both;
        storage
            .put_roster_item(&alice, &bob_in_alice)
            .await
            .unwrap();
        let mut alice_in_bob = RosterItem::new(alice.clone());
        alice_in_bob.subscription = Subscription::Both;
        storage.put_roster_item(&bob, &alice_in_bob).await.unwrap();
        storage
            .store_offline(&alice, "<message xmlns='jabber:client' id='m1'/>")
            .await
            .unwrap();
        let (old_version, _) = storage.roster(&alice).await.unwrap();

        storage.remove_account(&alice).await.unwrap();
        assert_eq!(storage.credentials(&alice).await.unwrap(), None);
        assert_eq!(storage.roster(&alice).await.unwrap(), (0, Vec::new()));
        assert_eq!(storage.count_offline(&alice).await.unwrap(), 0);
        // Bob's roster still points at alice: the presence service unsubscribes it, not storage.
        assert_eq!(
            storage.roster_item(&bob, &alice).await.unwrap(),
            Some(alice_in_bob)
        );

        // A re-created account starts empty and never repeats a roster
        // version of the removed one (RFC 6121 section 2.6).
        storage
            .create_account(&alice, &credentials(2))
            .await
            .unwrap();
        let (new_version, items) = storage.roster(&alice).await.unwrap();
        assert!(items.is_empty());
        assert!(
            new_version > old_version,
            "{new_version} after {old_version}"
        );
        assert_eq!(
            storage.take_all_offline(&alice).await.unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            storage.credentials(&alice).await.unwrap(),
            Some(credentials(2))
        );
    }

    pub async fn concurrent_roster_puts_get_distinct_versions(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let storage = Arc::new(storage);
        let tasks: Vec<_> = (0..20)
            .map(|index| {
                let storage = storage.clone();
                let alice = alice.clone();
                tokio::spawn(async move {
                    let item = RosterItem::new(jid(&format!("contact{index}@example.net")));
                    storage.put_roster_item(&alice, &item).await
                })
            })
            .collect();
        let mut versions = Vec::new();
        for task in tasks {
            versions.push(task.await.unwrap().unwrap());
        }
        let distinct: BTreeSet<u64> = versions.iter().copied().collect();
        assert_eq!(distinct.len(), 20, "versions {versions:?}");
        let (current_version, items) = storage.roster(&alice).await.unwrap();
        assert_eq!(items.len(), 20);
        assert_eq!(Some(&current_version), distinct.last());
        // No version was skipped either: each put advanced the counter by one.
        let (first, last) = (*distinct.first().unwrap(), *distinct.last().unwrap());
        assert_eq!(last - first, 19);
    }

    pub async fn concurrent_offline_stores_respect_the_cap(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let storage = Arc::new(storage);
        let tasks: Vec<_> = (0..20)
            .map(|index| {
                let storage = storage.clone();
                let alice = alice.clone();
                tokio::spawn(async move {
                    storage
                        .store_offline(
                            &alice,
                            &format!("<message xmlns='jabber:client' id='c{index}'/>"),
                        )
                        .await
                })
            })
            .collect();
        let mut stored = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(()) => stored += 1,
                Err(ApiError::LimitReached(_)) => {}
                Err(error) => panic!("unexpected error {error:?}"),
            }
        }
        assert_eq!(stored, MAX_OFFLINE_PER_USER);
        assert_eq!(
            storage.count_offline(&alice).await.unwrap(),
            u64::from(MAX_OFFLINE_PER_USER)
        );
    }

    pub async fn concurrent_takes_never_return_a_message_twice(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let storage = Arc::new(storage);
        let mut expected = BTreeSet::new();
        let mut takers = Vec::new();
        // Stores and takes interleave; every stored message comes out exactly once.
        for round in 0..4 {
            for index in 0..MAX_OFFLINE_PER_USER {
                let stanza = format!("<message xmlns='jabber:client' id='r{round}m{index}'/>");
                match storage.store_offline(&alice, &stanza).await {
                    Ok(()) => {
                        expected.insert(stanza);
                    }
                    Err(ApiError::LimitReached(_)) => {}
                    Err(error) => panic!("unexpected error {error:?}"),
                }
            }
            for _ in 0..3 {
                let storage = storage.clone();
                let alice = alice.clone();
                takers.push(tokio::spawn(async move {
                    storage.take_all_offline(&alice).await
                }));
            }
        }
        let mut taken = Vec::new();
        for taker in takers {
            taken.extend(taker.await.unwrap().unwrap());
        }
        taken.extend(storage.take_all_offline(&alice).await.unwrap());
        let distinct: BTreeSet<String> = taken.iter().cloned().collect();
        assert_eq!(
            distinct.len(),
            taken.len(),
            "a message was taken twice: {taken:?}"
        );
        assert_eq!(distinct, expected);
    }
}

pub mod blocking_cases {
    use super::*;

    fn address(text: &str) -> Jid {
        text.parse().expect("a valid jid")
    }

    fn addresses(items: &[BlockedItem]) -> Vec<String> {
        items.iter().map(|item| item.jid.to_string()).collect()
    }

    pub async fn blocklist_block_unblock_and_reports(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        assert_eq!(storage.blocklist(&alice).await.unwrap(), Vec::new());
        let spam = AbuseReport {
            reason: "urn:xmpp:reporting:spam".into(),
            text: Some("buy now".into()),
        };
        storage
            .block(
                &alice,
                &[
                    BlockedItem {
                        jid: address("spammer@example.net"),
                        report: Some(spam.clone()),
                    },
                    BlockedItem::new(address("example.com")),
                    BlockedItem::new(address("Romeo@Example.net/Orchard")),
                ],
            )
            .await
            .unwrap();
        let list = storage.blocklist(&alice).await.unwrap();
        // Sorted by address, normalised, each with its report.
        assert_eq!(
            addresses(&list),
            vec![
                "example.com",
                "romeo@example.net/Orchard",
                "spammer@example.net"
            ]
        );
        assert_eq!(list[2].report, Some(spam.clone()));
        assert_eq!(list[0].report, None);

        // Blocking again keeps one item, and a plain block keeps the report.
        storage
            .block(&alice, &[BlockedItem::new(address("spammer@example.net"))])
            .await
            .unwrap();
        let list = storage.blocklist(&alice).await.unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[2].report, Some(spam));

        // Unblock one (and one never blocked): only the blocked one is removed.
        let removed = storage
            .unblock(
                &alice,
                &[address("example.com"), address("nobody@example.org")],
            )
            .await
            .unwrap();
        assert_eq!(removed, vec![address("example.com")]);
        assert_eq!(storage.blocklist(&alice).await.unwrap().len(), 2);

        // Another account's list is its own.
        let bob = account(&storage, "bob@example.org").await;
        assert!(storage.blocklist(&bob).await.unwrap().is_empty());

        // Unblock all (XEP-0191 section 3.5).
        let removed = storage.unblock(&alice, &[]).await.unwrap();
        assert_eq!(removed.len(), 2);
        assert!(storage.blocklist(&alice).await.unwrap().is_empty());
    }

    pub async fn blocklist_cap_refuses_the_whole_request(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let items: Vec<BlockedItem> = (0..MAX_BLOCKLIST_ITEMS)
            .map(|index| BlockedItem::new(address(&format!("user{index}@example.net"))))
            .collect();
        storage.block(&alice, &items[..2]).await.unwrap();
        // Two more new ones and one already there: exactly at the cap.
        storage.block(&alice, &items[1..]).await.unwrap();
        let full = storage
            .block(
                &alice,
                &[
                    BlockedItem::new(address("extra@example.net")),
                    BlockedItem::new(address("user0@example.net")),
                ],
            )
            .await;
        assert!(matches!(full, Err(ApiError::LimitReached(_))), "{full:?}");
        let list = storage.blocklist(&alice).await.unwrap();
        assert_eq!(list.len(), MAX_BLOCKLIST_ITEMS as usize);
        assert!(!addresses(&list).contains(&"extra@example.net".to_string()));
        // Re-blocking what is there is not a new item.
        storage.block(&alice, &items[..1]).await.unwrap();
    }

    pub async fn blocklist_needs_an_account_and_goes_with_it(storage: Storage) {
        let ghost = jid("ghost@example.org");
        let refused = storage
            .block(&ghost, &[BlockedItem::new(address("a@example.net"))])
            .await;
        assert!(is_not_found(&refused), "{refused:?}");
        assert!(storage.blocklist(&ghost).await.unwrap().is_empty());
        assert!(storage.unblock(&ghost, &[]).await.unwrap().is_empty());

        let alice = account(&storage, "alice@example.org").await;
        storage
            .block(&alice, &[BlockedItem::new(address("a@example.net"))])
            .await
            .unwrap();
        storage.remove_account(&alice).await.unwrap();
        let alice = account(&storage, "alice@example.org").await;
        assert!(storage.blocklist(&alice).await.unwrap().is_empty());

        // A report text past the bound is refused, nothing stored.
        let long = BlockedItem {
            jid: address("b@example.net"),
            report: Some(AbuseReport {
                reason: "urn:xmpp:reporting:abuse".into(),
                text: Some("x".repeat(5000)),
            }),
        };
        let refused = storage.block(&alice, &[long]).await;
        assert!(matches!(refused, Err(ApiError::Invalid(_))), "{refused:?}");
        assert!(storage.blocklist(&alice).await.unwrap().is_empty());
    }

    pub async fn concurrent_blocks_respect_the_cap(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let storage = Arc::new(storage);
        let tasks: Vec<_> = (0..(MAX_BLOCKLIST_ITEMS * 3))
            .map(|index| {
                let storage = storage.clone();
                let alice = alice.clone();
                tokio::spawn(async move {
                    storage
                        .block(
                            &alice,
                            &[BlockedItem::new(address(&format!("c{index}@example.net")))],
                        )
                        .await
                })
            })
            .collect();
        let mut accepted = 0;
        for task in tasks {
            if task.await.unwrap().is_ok() {
                accepted += 1;
            }
        }
        assert_eq!(accepted, MAX_BLOCKLIST_ITEMS);
        assert_eq!(
            storage.blocklist(&alice).await.unwrap().len(),
            MAX_BLOCKLIST_ITEMS as usize
        );
    }
}

pub mod pep_cases {
    use super::*;
    use starling_api::{
        AccessModel, CapsRecord, MaxItems, PepConfigPatch, PepItem, PepLimits, PepNode,
        PepNodeConfig, PepPublish, PepPublishOutcome, PepStore,
    };

    const LIMITS: PepLimits = PepLimits {
        max_items_per_node: 3,
        max_nodes_per_account: 2,
    };

    fn item(id: &str) -> PepItem {
        PepItem {
            id: id.into(),
            publisher: "alice@example.org/phone".into(),
            payload_xml: format!(
                "<mood xmlns='http://jabber.org/protocol/mood'><text>{id}</text></mood>"
            ),
        }
    }

    fn publish(node: &str, id: &str, options: PepConfigPatch) -> PepPublish {
        PepPublish {
            node: node.into(),
            item: Some(item(id)),
            options,
        }
    }

    fn ids(items: &[PepItem]) -> Vec<&str> {
        items.iter().map(|item| item.id.as_str()).collect()
    }

    async fn published(storage: &Storage, owner: &BareJid, publish: &PepPublish) -> PepNode {
        match storage
            .publish_pep_item(owner, publish, LIMITS)
            .await
            .unwrap()
        {
            PepPublishOutcome::Published { node, .. } => node,
            other => panic!("not published: {other:?}"),
        }
    }

    pub async fn pep_publish_auto_creates_and_keeps_max_items(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let many = PepConfigPatch {
            max_items: Some(MaxItems::Count(2)),
            ..PepConfigPatch::default()
        };
        let outcome = storage
            .publish_pep_item(&alice, &publish("urn:mood", "a", many), LIMITS)
            .await
            .unwrap();
        let PepPublishOutcome::Published { node, created } = outcome else {
            panic!("not published: {outcome:?}");
        };
        assert!(created);
        assert_eq!(node.config.max_items, MaxItems::Count(2));
        assert_eq!(node.config.access_model, AccessModel::Presence);
        published(
            &storage,
            &alice,
            &publish("urn:mood", "b", PepConfigPatch::default()),
        )
        .await;
        published(
            &storage,
            &alice,
            &publish("urn:mood", "c", PepConfigPatch::default()),
        )
        .await;
        // Two kept, newest first; the oldest went.
        let all = storage
            .pep_items(&alice, "urn:mood", &[], None)
            .await
            .unwrap();
        assert_eq!(ids(&all), vec!["c", "b"]);
        assert_eq!(all[0], item("c"));
        let newest = storage
            .pep_items(&alice, "urn:mood", &[], Some(1))
            .await
            .unwrap();
        assert_eq!(ids(&newest), vec!["c"]);
        let by_id = storage
            .pep_items(
                &alice,
                "urn:mood",
                &["b".into(), "a".into(), "b".into()],
                None,
            )
            .await
            .unwrap();
        assert_eq!(ids(&by_id), vec!["b"]);
        // Publishing an existing id replaces it and makes it the newest.
        published(
            &storage,
            &alice,
            &publish("urn:mood", "b", PepConfigPatch::default()),
        )
        .await;
        let all = storage
            .pep_items(&alice, "urn:mood", &[], None)
            .await
            .unwrap();
        assert_eq!(ids(&all), vec!["b", "c"]);
        let last = storage
            .pep_last_items(&alice, &["urn:mood".into(), "urn:none".into()])
            .await
            .unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(
            (last[0].0.name.as_str(), last[0].1.id.as_str()),
            ("urn:mood", "b")
        );
        // `max` means the server's limit.
        let max = PepConfigPatch {
            max_items: Some(MaxItems::Max),
            ..PepConfigPatch::default()
        };
        for id in ["1", "2", "3", "4", "5"] {
            published(&storage, &alice, &publish("urn:many", id, max.clone())).await;
        }
        let all = storage
            .pep_items(&alice, "urn:many", &[], None)
            .await
            .unwrap();
        assert_eq!(ids(&all), vec!["5", "4", "3"]);
        assert_eq!(
            storage
                .pep_node(&alice, "urn:many")
                .await
                .unwrap()
                .unwrap()
                .config
                .max_items,
            MaxItems::Max
        );
        // Another account's node of the same name is another node.
        let bob = account(&storage, "bob@example.org").await;
        assert!(storage
            .pep_items(&bob, "urn:mood", &[], None)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(storage.pep_node(&bob, "urn:mood").await.unwrap(), None);
    }

    pub async fn pep_preconditions_and_node_limit(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let whitelist = PepConfigPatch {
            access_model: Some(AccessModel::Whitelist),
            ..PepConfigPatch::default()
        };
        let node = published(
            &storage,
            &alice,
            &publish("urn:bookmarks", "x", whitelist.clone()),
        )
        .await;
        assert_eq!(node.config.access_model, AccessModel::Whitelist);
        // The same options again: met.
        published(&storage, &alice, &publish("urn:bookmarks", "y", whitelist)).await;
        let presence = PepConfigPatch {
            access_model: Some(AccessModel::Presence),
            ..PepConfigPatch::default()
        };
        assert_eq!(
            storage
                .publish_pep_item(&alice, &publish("urn:bookmarks", "z", presence), LIMITS)
                .await
                .unwrap(),
            PepPublishOutcome::PreconditionNotMet
        );
        assert_eq!(
            ids(&storage
                .pep_items(&alice, "urn:bookmarks", &[], None)
                .await
                .unwrap()),
            vec!["y"]
        );
        published(
            &storage,
            &alice,
            &publish("urn:second", "x", PepConfigPatch::default()),
        )
        .await;
        assert_eq!(
            storage
                .publish_pep_item(
                    &alice,
                    &publish("urn:third", "x", PepConfigPatch::default()),
                    LIMITS
                )
                .await
                .unwrap(),
            PepPublishOutcome::NodeLimitReached
        );
        assert_eq!(storage.pep_nodes(&alice).await.unwrap().len(), 2);
        let third = PepNode {
            name: "urn:third".into(),
            config: PepNodeConfig::default(),
        };
        assert!(matches!(
            storage.create_pep_node(&alice, &third, LIMITS).await,
            Err(ApiError::LimitReached(_))
        ));
        // Creating a node that exists changes nothing.
        let existing = PepNode {
            name: "urn:second".into(),
            config: PepNodeConfig::default(),
        };
        assert!(!storage
            .create_pep_node(&alice, &existing, LIMITS)
            .await
            .unwrap());
        let nobody = jid("nobody@example.org");
        assert!(is_not_found(
            &storage
                .publish_pep_item(
                    &nobody,
                    &publish("urn:x", "x", PepConfigPatch::default()),
                    LIMITS
                )
                .await
        ));
    }

    pub async fn pep_configure_retract_whitelist_delete(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let bob = jid("bob@example.org");
        let carol = jid("carol@example.org");
        let keep_three = PepConfigPatch {
            max_items: Some(MaxItems::Count(3)),
            ..PepConfigPatch::default()
        };
        for id in ["1", "2", "3"] {
            published(
                &storage,
                &alice,
                &publish("urn:tune", id, keep_three.clone()),
            )
            .await;
        }
        assert!(storage
            .retract_pep_item(&alice, "urn:tune", "2")
            .await
            .unwrap());
        assert!(!storage
            .retract_pep_item(&alice, "urn:tune", "2")
            .await
            .unwrap());
        let mut node = storage.pep_node(&alice, "urn:tune").await.unwrap().unwrap();
        node.config.max_items = MaxItems::Count(1);
        node.config.access_model = AccessModel::Whitelist;
        node.config.notify_retract = false;
        storage
            .configure_pep_node(&alice, &node, LIMITS)
            .await
            .unwrap();
        assert_eq!(
            storage.pep_node(&alice, "urn:tune").await.unwrap(),
            Some(node.clone())
        );
        assert_eq!(
            ids(&storage
                .pep_items(&alice, "urn:tune", &[], None)
                .await
                .unwrap()),
            vec!["3"]
        );
        let missing = PepNode {
            name: "urn:missing".into(),
            config: PepNodeConfig::default(),
        };
        assert!(is_not_found(
            &storage.configure_pep_node(&alice, &missing, LIMITS).await
        ));

        storage
            .update_pep_whitelist(&alice, "urn:tune", &[bob.clone(), carol.clone()], &[], 2)
            .await
            .unwrap();
        assert_eq!(
            storage.pep_whitelist(&alice, "urn:tune").await.unwrap(),
            vec![bob.clone(), carol.clone()]
        );
        let dave = jid("dave@example.org");
        assert!(matches!(
            storage
                .update_pep_whitelist(&alice, "urn:tune", std::slice::from_ref(&dave), &[], 2)
                .await,
            Err(ApiError::LimitReached(_))
        ));
        storage
            .update_pep_whitelist(
                &alice,
                "urn:tune",
                std::slice::from_ref(&dave),
                std::slice::from_ref(&bob),
                2,
            )
            .await
            .unwrap();
        assert_eq!(
            storage.pep_whitelist(&alice, "urn:tune").await.unwrap(),
            vec![carol.clone(), dave.clone()]
        );
        assert!(is_not_found(
            &storage
                .update_pep_whitelist(&alice, "urn:missing", std::slice::from_ref(&bob), &[], 2)
                .await
        ));

        // A deleted node takes its items and whitelist; recreated, it is empty.
        assert!(storage.delete_pep_node(&alice, "urn:tune").await.unwrap());
        assert!(!storage.delete_pep_node(&alice, "urn:tune").await.unwrap());
        published(
            &storage,
            &alice,
            &publish("urn:tune", "new", PepConfigPatch::default()),
        )
        .await;
        assert!(storage
            .pep_whitelist(&alice, "urn:tune")
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            ids(&storage
                .pep_items(&alice, "urn:tune", &[], None)
                .await
                .unwrap()),
            vec!["new"]
        );
        // Removing the account removes its nodes.
        storage.remove_account(&alice).await.unwrap();
        storage
            .create_account(&alice, &credentials(2))
            .await
            .unwrap();
        assert!(storage.pep_nodes(&alice).await.unwrap().is_empty());
        assert!(storage
            .pep_items(&alice, "urn:tune", &[], None)
            .await
            .unwrap()
            .is_empty());
    }

    pub async fn pep_roster_groups_and_subscriptions(storage: Storage) {
        use starling_api::{PepSubscribedNode, PepSubscription, PepSubscriptionState};
        use starling_jid::Jid;
        let alice = account(&storage, "alice@example.org").await;
        // A `roster` node keeps its groups sorted and once each; they are
        // part of the preconditions.
        let roster = PepConfigPatch {
            access_model: Some(AccessModel::Roster),
            roster_groups_allowed: Some(starling_api::roster_groups(["Friends", "Family"])),
            ..PepConfigPatch::default()
        };
        let node = published(&storage, &alice, &publish("urn:mood", "a", roster.clone())).await;
        assert_eq!(node.config.access_model, AccessModel::Roster);
        assert_eq!(node.config.roster_groups_allowed, vec!["Family", "Friends"]);
        assert_eq!(
            storage.pep_node(&alice, "urn:mood").await.unwrap(),
            Some(node.clone())
        );
        published(&storage, &alice, &publish("urn:mood", "b", roster)).await;
        let other_groups = PepConfigPatch {
            roster_groups_allowed: Some(vec!["Friends".into()]),
            ..PepConfigPatch::default()
        };
        assert_eq!(
            storage
                .publish_pep_item(&alice, &publish("urn:mood", "c", other_groups), LIMITS)
                .await
                .unwrap(),
            PepPublishOutcome::PreconditionNotMet
        );
        let mut line_break = node.clone();
        line_break.config.roster_groups_allowed = vec!["a\nb".into()];
        assert!(storage
            .configure_pep_node(&alice, &line_break, LIMITS)
            .await
            .is_err());

        // Explicit subscriptions: pending, approved, removed, bounded.
        let authorize = PepConfigPatch {
            access_model: Some(AccessModel::Authorize),
            ..PepConfigPatch::default()
        };
        published(&storage, &alice, &publish("urn:tune", "x", authorize)).await;
        let bob: Jid = "bob@example.org".parse().unwrap();
        let carol_phone: Jid = "carol@example.org/phone".parse().unwrap();
        let pending = Some(PepSubscriptionState::Pending);
        let subscribed = Some(PepSubscriptionState::Subscribed);
        assert_eq!(
            storage
                .set_pep_subscription(&alice, "urn:tune", &bob, pending, 2)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            storage
                .set_pep_subscription(&alice, "urn:tune", &carol_phone, subscribed, 2)
                .await
                .unwrap(),
            None
        );
        let dave: Jid = "dave@example.org".parse().unwrap();
        assert!(matches!(
            storage
                .set_pep_subscription(&alice, "urn:tune", &dave, pending, 2)
                .await,
            Err(ApiError::LimitReached(_))
        ));
        assert_eq!(
            storage.pep_subscriptions(&alice, "urn:tune").await.unwrap(),
            vec![
                PepSubscription {
                    jid: bob.clone(),
                    state: PepSubscriptionState::Pending
                },
                PepSubscription {
                    jid: carol_phone.clone(),
                    state: PepSubscriptionState::Subscribed
                },
            ]
        );
        // Only approved ones are the subscriber's subscribed nodes.
        assert!(storage
            .pep_subscribed_nodes(&jid("bob@example.org"))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            storage
                .set_pep_subscription(&alice, "urn:tune", &bob, subscribed, 2)
                .await
                .unwrap(),
            pending
        );
        assert_eq!(
            storage
                .pep_subscribed_nodes(&jid("carol@example.org"))
                .await
                .unwrap(),
            vec![PepSubscribedNode {
                owner: alice.clone(),
                node: "urn:tune".into(),
                jid: carol_phone.clone(),
            }]
        );
        assert_eq!(
            storage
                .set_pep_subscription(&alice, "urn:tune", &bob, None, 2)
                .await
                .unwrap(),
            subscribed
        );
        assert_eq!(
            storage
                .set_pep_subscription(&alice, "urn:tune", &bob, None, 2)
                .await
                .unwrap(),
            None
        );
        assert!(is_not_found(
            &storage
                .set_pep_subscription(&alice, "urn:none", &bob, pending, 2)
                .await
        ));
        // The subscriptions go with their node.
        assert!(storage.delete_pep_node(&alice, "urn:tune").await.unwrap());
        assert!(storage
            .pep_subscribed_nodes(&jid("carol@example.org"))
            .await
            .unwrap()
            .is_empty());
    }

    pub async fn pep_refuses_oversized_names_and_nul(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let long = "n".repeat(2000);
        assert!(matches!(
            storage
                .publish_pep_item(
                    &alice,
                    &publish(&long, "x", PepConfigPatch::default()),
                    LIMITS
                )
                .await,
            Err(ApiError::Invalid(_))
        ));
        let mut nul = publish("urn:x", "x", PepConfigPatch::default());
        nul.item = Some(PepItem {
            payload_xml: "<a>\0</a>".into(),
            ..item("x")
        });
        assert!(matches!(
            storage.publish_pep_item(&alice, &nul, LIMITS).await,
            Err(ApiError::Invalid(_))
        ));
        assert!(storage.pep_nodes(&alice).await.unwrap().is_empty());
    }

    pub async fn caps_records_are_shared_and_kept_once(storage: Storage) {
        assert_eq!(storage.caps_features("sha-1", "ver=").await.unwrap(), None);
        let record = CapsRecord {
            hash: "sha-1".into(),
            ver: "ver=".into(),
            features: vec!["urn:xmpp:ping".into(), "urn:mood+notify".into()],
        };
        storage.put_caps(&record).await.unwrap();
        let other = CapsRecord {
            features: vec!["urn:other".into()],
            ..record.clone()
        };
        storage.put_caps(&other).await.unwrap();
        assert_eq!(
            storage.caps_features("sha-1", "ver=").await.unwrap(),
            Some(record.features.clone())
        );
        assert_eq!(
            storage.caps_features("sha-256", "ver=").await.unwrap(),
            None
        );
        let broken = CapsRecord {
            features: vec!["a\nb".into()],
            ver: "other=".into(),
            ..record
        };
        assert!(matches!(
            storage.put_caps(&broken).await,
            Err(ApiError::Invalid(_))
        ));
    }

    pub async fn caps_records_unseen_are_purged(storage: Storage) {
        const DAY: i64 = 86_400_000;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let record = |ver: &str| CapsRecord {
            hash: "sha-1".into(),
            ver: ver.into(),
            features: vec![format!("urn:{ver}+notify")],
        };
        // a: seen 40 days ago, again an hour later (within a day: not written).
        storage
            .put_caps_seen_at(&record("a"), now - 40 * DAY)
            .await
            .unwrap();
        storage
            .put_caps_seen_at(&record("a"), now - 40 * DAY + DAY / 24)
            .await
            .unwrap();
        // b: seen 40 days ago, again 35 days ago (refreshed).
        storage
            .put_caps_seen_at(&record("b"), now - 40 * DAY)
            .await
            .unwrap();
        storage
            .put_caps_seen_at(&record("b"), now - 35 * DAY)
            .await
            .unwrap();
        storage.put_caps(&record("c")).await.unwrap();
        assert_eq!(
            storage
                .purge_caps_seen_before(now - 40 * DAY - 1)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            storage
                .purge_caps_seen_before(now - 40 * DAY + DAY / 48)
                .await
                .unwrap(),
            1
        );
        assert_eq!(storage.caps_features("sha-1", "a").await.unwrap(), None);
        assert!(storage.caps_features("sha-1", "b").await.unwrap().is_some());
        assert_eq!(
            storage
                .purge_caps_seen_before(now - 30 * DAY)
                .await
                .unwrap(),
            1
        );
        assert_eq!(storage.caps_features("sha-1", "b").await.unwrap(), None);
        assert_eq!(
            storage.caps_features("sha-1", "c").await.unwrap(),
            Some(vec!["urn:c+notify".to_string()])
        );
        // More than one batch: the sweep goes on until it has removed them all
        // (within its bound).
        for index in 0..1200 {
            storage
                .put_caps_seen_at(&record(&format!("old{index}")), now - 50 * DAY)
                .await
                .unwrap();
        }
        assert_eq!(
            storage
                .purge_caps_seen_before(now - 30 * DAY)
                .await
                .unwrap(),
            1200
        );
        assert!(storage.caps_features("sha-1", "c").await.unwrap().is_some());
    }
}

/// One test per case and backend.
macro_rules! contract_suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::support::run_case(crate::support::Backend::SqliteMemory, crate::cases::$case).await;
                }
            )*
        }
        mod sqlite_file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::support::run_case(crate::support::Backend::SqliteFile, crate::cases::$case).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::support::run_case(crate::support::Backend::Postgres, crate::cases::$case).await;
                }
            )*
        }
    };
}

contract_suite!(
    muc_rooms_are_written_whole_by_revision_and_removed,
    muc_rooms_are_listed_per_service_when_public,
    muc_rooms_refuse_unknown_affiliations,
    push_registrations_enable_replace_remove_and_cap,
    push_documents_move_into_the_table,
    upload_slots_count_against_the_quota_and_complete_once,
    upload_purge_removes_expired_slots,
    concurrent_upload_slots_respect_the_quota,
    pep_publish_auto_creates_and_keeps_max_items,
    pep_preconditions_and_node_limit,
    pep_configure_retract_whitelist_delete,
    pep_roster_groups_and_subscriptions,
    pep_refuses_oversized_names_and_nul,
    caps_records_are_shared_and_kept_once,
    caps_records_unseen_are_purged,
    archive_writes_both_directions_and_pages_both_ways,
    archive_filters_by_with_time_and_ids,
    archive_names_unknown_ids_not_found,
    archive_quota_removes_the_oldest,
    archive_preferences_decide_and_round_trip,
    archive_retention_purges_old_messages,
    room_archives_page_tombstone_remove_and_purge,
    blocklist_block_unblock_and_reports,
    blocklist_cap_refuses_the_whole_request,
    blocklist_needs_an_account_and_goes_with_it,
    concurrent_blocks_respect_the_cap,
    accounts_create_duplicate_list_remove,
    domain_jid_is_never_an_account,
    credentials_round_trip,
    roster_put_get_remove_with_increasing_versions,
    roster_placeholders_are_stored_and_returned,
    roster_groups_keep_their_order,
    roster_writes_need_an_account,
    roster_cap_refuses_new_items_only,
    roster_is_bounded_in_bytes,
    offline_messages_are_taken_oldest_first,
    offline_queue_is_capped,
    offline_queue_is_taken_in_pages,
    subscriptions_are_the_roster_states_without_names,
    offline_rejections,
    account_documents_round_trip_and_are_bounded_in_bytes,
    remove_account_removes_everything,
    concurrent_roster_puts_get_distinct_versions,
    concurrent_offline_stores_respect_the_cap,
    concurrent_takes_never_return_a_message_twice,
);

/// Persistent multi-user chat rooms (XEP-0045).
pub mod muc_cases {
    use super::*;
    use starling_api::{MucAffiliation, MucRoomRecord, MucRoomStore};

    fn affiliation(jid: &str, name: &str, reason: Option<&str>) -> MucAffiliation {
        MucAffiliation {
            jid: jid.into(),
            affiliation: name.into(),
            reason: reason.map(str::to_string),
        }
    }

    fn room(jid_text: &str, revision: i64, public: bool) -> MucRoomRecord {
        MucRoomRecord {
            jid: jid(jid_text),
            revision,
            name: format!("{jid_text} at {revision}"),
            public,
            config: format!("{{\"revision\":{revision}}}"),
            subject: "Fire".into(),
            subject_nick: "witch".into(),
            occupant_id_salt: "salt".into(),
            // In the order they are read back: by JID.
            affiliations: vec![
                affiliation("member@example.org", "member", None),
                affiliation("owner@example.org", "owner", None),
                affiliation("troll@example.org", "outcast", Some("Treason")),
            ],
        }
    }

    pub async fn muc_rooms_are_written_whole_by_revision_and_removed(storage: Storage) {
        let coven = jid("coven@chat.example.org");
        assert_eq!(storage.muc_room(&coven).await.unwrap(), None);
        let first = room("coven@chat.example.org", 1, true);
        assert!(storage.put_muc_room(&first).await.unwrap());
        assert_eq!(storage.muc_room(&coven).await.unwrap(), Some(first.clone()));

        // A newer revision replaces everything, the affiliations included.
        let mut second = room("coven@chat.example.org", 2, false);
        second.subject = String::new();
        second.affiliations = vec![
            affiliation("admin@example.org", "admin", None),
            affiliation("owner@example.org", "owner", None),
        ];
        assert!(storage.put_muc_room(&second).await.unwrap());
        assert_eq!(
            storage.muc_room(&coven).await.unwrap(),
            Some(second.clone())
        );

        // An older or equal revision (a stalled writer's) changes nothing.
        assert!(!storage.put_muc_room(&first).await.unwrap());
        let mut same = second.clone();
        same.name = "late".into();
        assert!(!storage.put_muc_room(&same).await.unwrap());
        assert_eq!(storage.muc_room(&coven).await.unwrap(), Some(second));

        // Another room, and the same localpart at another service, are apart.
        let other = room("other@chat.example.org", 7, true);
        let elsewhere = room("coven@muc.example.net", 3, true);
        storage.put_muc_room(&other).await.unwrap();
        storage.put_muc_room(&elsewhere).await.unwrap();
        assert!(storage.remove_muc_room(&coven).await.unwrap());
        assert!(!storage.remove_muc_room(&coven).await.unwrap());
        assert_eq!(storage.muc_room(&coven).await.unwrap(), None);
        assert_eq!(storage.muc_room(&other.jid).await.unwrap(), Some(other));
        assert_eq!(
            storage.muc_room(&elsewhere.jid).await.unwrap(),
            Some(elsewhere)
        );
        // Created again after its removal: from any revision.
        assert!(storage.put_muc_room(&first).await.unwrap());
        assert_eq!(storage.muc_room(&coven).await.unwrap(), Some(first));
        // A domain alone names no room.
        assert_eq!(
            storage.muc_room(&jid("chat.example.org")).await.unwrap(),
            None
        );
    }

    pub async fn muc_rooms_are_listed_per_service_when_public(storage: Storage) {
        for (name, public) in [("b", true), ("a", true), ("hidden", false), ("c", true)] {
            storage
                .put_muc_room(&room(&format!("{name}@chat.example.org"), 1, public))
                .await
                .unwrap();
        }
        storage
            .put_muc_room(&room("d@muc.example.net", 1, true))
            .await
            .unwrap();
        let listed = storage
            .listed_muc_rooms("chat.example.org", 10)
            .await
            .unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|room| (room.jid.to_string(), room.name.clone()))
                .collect::<Vec<_>>(),
            ["a", "b", "c"]
                .map(|name| (
                    format!("{name}@chat.example.org"),
                    format!("{name}@chat.example.org at 1")
                ))
                .to_vec()
        );
        assert_eq!(
            storage
                .listed_muc_rooms("chat.example.org", 2)
                .await
                .unwrap()
                .len(),
            2
        );
        assert!(storage
            .listed_muc_rooms("nowhere.example", 10)
            .await
            .unwrap()
            .is_empty());
    }

    pub async fn muc_rooms_refuse_unknown_affiliations(storage: Storage) {
        let mut bad = room("coven@chat.example.org", 1, true);
        bad.affiliations
            .push(affiliation("x@example.org", "none", None));
        let refused = storage.put_muc_room(&bad).await;
        assert!(matches!(refused, Err(ApiError::Invalid(_))), "{refused:?}");
        let mut twice = room("coven@chat.example.org", 1, true);
        twice
            .affiliations
            .push(affiliation("owner@example.org", "member", None));
        let refused = storage.put_muc_room(&twice).await;
        assert!(matches!(refused, Err(ApiError::Invalid(_))), "{refused:?}");
        let mut nul = room("coven@chat.example.org", 1, true);
        nul.subject = "a\0b".into();
        let refused = storage.put_muc_room(&nul).await;
        assert!(matches!(refused, Err(ApiError::Invalid(_))), "{refused:?}");
        assert_eq!(storage.muc_room(&bad.jid).await.unwrap(), None);
    }
}

/// Push registrations (XEP-0357).
pub mod push_cases {
    use super::*;
    use starling_api::{PushRegistration, PushStore};

    fn registration(service: &str, node: &str, options: Option<&str>) -> PushRegistration {
        PushRegistration {
            service_jid: service.into(),
            node: node.into(),
            publish_options_xml: options.map(str::to_string),
        }
    }

    fn nodes(registrations: &[PushRegistration]) -> Vec<(String, String)> {
        registrations
            .iter()
            .map(|known| (known.service_jid.clone(), known.node.clone()))
            .collect()
    }

    pub async fn push_registrations_enable_replace_remove_and_cap(storage: Storage) {
        let ghost = jid("ghost@example.org");
        let refused = storage
            .put_push_registration(&ghost, &registration("push.example", "n", None), 4)
            .await;
        assert!(is_not_found(&refused), "{refused:?}");
        assert!(storage.push_registrations(&ghost).await.unwrap().is_empty());

        let alice = account(&storage, "alice@example.org").await;
        let bob = account(&storage, "bob@example.org").await;
        assert!(storage.push_registrations(&alice).await.unwrap().is_empty());
        for (service, node) in [("a.example", "1"), ("a.example", "2"), ("b.example", "1")] {
            storage
                .put_push_registration(&alice, &registration(service, node, None), 4)
                .await
                .unwrap();
        }
        // Enabled again: the options replaced, and it is the newest.
        let form = "<x xmlns='jabber:x:data' type='submit'/>";
        storage
            .put_push_registration(&alice, &registration("a.example", "1", Some(form)), 4)
            .await
            .unwrap();
        let stored = storage.push_registrations(&alice).await.unwrap();
        assert_eq!(
            nodes(&stored),
            [("a.example", "2"), ("b.example", "1"), ("a.example", "1")]
                .map(|(service, node)| (service.to_string(), node.to_string()))
        );
        assert_eq!(stored[2].publish_options_xml.as_deref(), Some(form));
        assert!(storage.push_registrations(&bob).await.unwrap().is_empty());

        // The cap counts the others: a fourth fits, a fifth does not, and a
        // re-enable at the cap still does.
        storage
            .put_push_registration(&alice, &registration("c.example", "1", None), 4)
            .await
            .unwrap();
        let full = storage
            .put_push_registration(&alice, &registration("d.example", "1", None), 4)
            .await;
        assert!(matches!(full, Err(ApiError::LimitReached(_))), "{full:?}");
        storage
            .put_push_registration(&alice, &registration("c.example", "1", None), 4)
            .await
            .unwrap();
        assert_eq!(storage.push_registrations(&alice).await.unwrap().len(), 4);

        // Section 6: one node, or every node of a service.
        assert_eq!(
            storage
                .remove_push_registrations(&alice, "a.example", Some("2"))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            storage
                .remove_push_registrations(&alice, "b.example", None)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            storage
                .remove_push_registrations(&alice, "nobody.example", None)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            nodes(&storage.push_registrations(&alice).await.unwrap()),
            [("a.example", "1"), ("c.example", "1")]
                .map(|(service, node)| (service.to_string(), node.to_string()))
        );
        // They go with the account.
        storage.remove_account(&alice).await.unwrap();
        let alice = account(&storage, "alice@example.org").await;
        assert!(storage.push_registrations(&alice).await.unwrap().is_empty());
    }

    pub async fn push_documents_move_into_the_table(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let bob = account(&storage, "bob@example.org").await;
        // The account document of the previous layout, as the router wrote it.
        storage
            .put_account_data(
                &alice,
                "push",
                Some("<push xmlns='urn:xmpp:push:0'><enable jid='push.example' node='n1'/><enable jid='push.example' node='n2'><x xmlns='jabber:x:data' type='submit'><field var='secret'><value>s&apos;</value></field></x></enable></push>"),
            )
            .await
            .unwrap();
        storage
            .put_account_data(&bob, "vcard", Some("<vCard xmlns='vcard-temp'/>"))
            .await
            .unwrap();
        assert_eq!(storage.move_push_documents().await.unwrap(), 1);
        let moved = storage.push_registrations(&alice).await.unwrap();
        assert_eq!(
            nodes(&moved),
            [("push.example", "n1"), ("push.example", "n2")]
                .map(|(service, node)| (service.to_string(), node.to_string()))
        );
        assert_eq!(
            moved[1].publish_options_xml.as_deref(),
            // Re-serialised: the same XML, the text's apostrophe unescaped.
            Some("<x xmlns='jabber:x:data' type='submit'><field var='secret'><value>s'</value></field></x>")
        );
        assert_eq!(storage.account_data(&alice, "push").await.unwrap(), None);
        // Other documents stay; a second run moves nothing.
        assert!(storage.account_data(&bob, "vcard").await.unwrap().is_some());
        assert_eq!(storage.move_push_documents().await.unwrap(), 0);
        assert_eq!(storage.push_registrations(&alice).await.unwrap().len(), 2);
    }
}

/// The message archive (XEP-0313) and its preferences (XEP-0441).
pub mod archive_cases {
    use super::*;
    use starling_api::{
        ArchiveDefault, ArchiveEntry, ArchiveId, ArchivePrefs, ArchiveQuery, ArchiveStore,
        PageStart,
    };
    use support::MAX_ARCHIVE_MESSAGES;

    fn full(text: &str) -> Jid {
        text.parse().unwrap()
    }

    /// An id at `second` seconds (plus a sub-microsecond byte).
    fn id_at(second: i64, byte: i64) -> ArchiveId {
        ArchiveId((1_700_000_000_000_000 + second * 1_000_000) << 8 | byte)
    }

    fn entry(owner: &BareJid, id: ArchiveId, with: &str, body: &str) -> ArchiveEntry {
        ArchiveEntry {
            owner: owner.clone(),
            id,
            with: full(with),
            stanza_xml: format!("<message type='chat'><body>{body}</body></message>"),
        }
    }

    fn bodies(page: &starling_api::ArchivePage) -> Vec<String> {
        page.messages
            .iter()
            .map(|message| {
                let start = message.stanza_xml.find("<body>").unwrap() + 6;
                let end = message.stanza_xml.find("</body>").unwrap();
                message.stanza_xml[start..end].to_string()
            })
            .collect()
    }

    fn query(max: u32, page: PageStart) -> ArchiveQuery {
        ArchiveQuery {
            max,
            page,
            ..ArchiveQuery::default()
        }
    }

    pub async fn archive_writes_both_directions_and_pages_both_ways(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let bob = account(&storage, "bob@example.org").await;
        let nobody = jid("nobody@example.org");
        let mut entries = Vec::new();
        for index in 0..10 {
            let id = id_at(index, 7);
            entries.push(entry(&alice, id, "bob@example.org", &format!("m{index}")));
            entries.push(entry(
                &bob,
                id,
                "alice@example.org/phone",
                &format!("m{index}"),
            ));
            // An owner without an account is skipped, not an error.
            entries.push(entry(&nobody, id, "alice@example.org", "lost"));
        }
        assert_eq!(storage.archive_messages(&entries).await.unwrap(), 20);
        // Written again (a retried batch): nothing twice.
        assert_eq!(storage.archive_messages(&entries).await.unwrap(), 0);

        let first = storage
            .query_archive(&alice, &query(4, PageStart::First))
            .await
            .unwrap();
        assert_eq!(bodies(&first), ["m0", "m1", "m2", "m3"]);
        assert!(!first.complete);
        let next = storage
            .query_archive(&alice, &query(4, PageStart::After(first.messages[3].id)))
            .await
            .unwrap();
        assert_eq!(bodies(&next), ["m4", "m5", "m6", "m7"]);
        let last_forward = storage
            .query_archive(&alice, &query(4, PageStart::After(next.messages[3].id)))
            .await
            .unwrap();
        assert_eq!(bodies(&last_forward), ["m8", "m9"]);
        assert!(last_forward.complete);

        // Backwards: the last page, then the one before it, oldest first within.
        let last = storage
            .query_archive(&bob, &query(3, PageStart::Last))
            .await
            .unwrap();
        assert_eq!(bodies(&last), ["m7", "m8", "m9"]);
        assert!(!last.complete);
        let before = storage
            .query_archive(&bob, &query(7, PageStart::Before(last.messages[0].id)))
            .await
            .unwrap();
        assert_eq!(bodies(&before), ["m0", "m1", "m2", "m3", "m4", "m5", "m6"]);
        assert!(before.complete);

        // Exactly max left: complete, without a further page.
        let exact = storage
            .query_archive(&alice, &query(10, PageStart::First))
            .await
            .unwrap();
        assert_eq!(exact.messages.len(), 10);
        assert!(exact.complete);
        let empty = storage
            .query_archive(&alice, &query(0, PageStart::First))
            .await
            .unwrap();
        assert!(empty.messages.is_empty() && !empty.complete);
        let nothing = storage
            .query_archive(&alice, &query(5, PageStart::After(exact.messages[9].id)))
            .await
            .unwrap();
        assert!(nothing.messages.is_empty() && nothing.complete);

        assert_eq!(
            storage.archive_bounds(&alice).await.unwrap(),
            Some((id_at(0, 7), id_at(9, 7)))
        );
        assert_eq!(
            storage
                .archive_bounds(&jid("carol@example.org"))
                .await
                .unwrap(),
            None
        );

        // The archive goes with the account.
        storage.remove_account(&alice).await.unwrap();
        let alice = account(&storage, "alice@example.org").await;
        assert_eq!(storage.archive_bounds(&alice).await.unwrap(), None);
    }

    pub async fn archive_filters_by_with_time_and_ids(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let entries = vec![
            entry(&alice, id_at(0, 1), "bob@example.org/phone", "b-phone"),
            entry(&alice, id_at(1, 1), "carol@example.org", "carol"),
            entry(&alice, id_at(2, 1), "bob@example.org/laptop", "b-laptop"),
            entry(&alice, id_at(3, 1), "bob@example.org", "b-bare"),
            entry(&alice, id_at(4, 1), "alice@example.org", "self"),
        ];
        storage.archive_messages(&entries).await.unwrap();
        let with = |text: &str| ArchiveQuery {
            with: Some(full(text)),
            max: 10,
            ..ArchiveQuery::default()
        };
        let page = storage
            .query_archive(&alice, &with("bob@example.org"))
            .await
            .unwrap();
        assert_eq!(bodies(&page), ["b-phone", "b-laptop", "b-bare"]);
        let page = storage
            .query_archive(&alice, &with("bob@example.org/laptop"))
            .await
            .unwrap();
        assert_eq!(bodies(&page), ["b-laptop"]);
        // Section 4.1.1: `with` the account itself matches messages to itself only.
        let page = storage
            .query_archive(&alice, &with("alice@example.org"))
            .await
            .unwrap();
        assert_eq!(bodies(&page), ["self"]);

        let window = ArchiveQuery {
            start: Some(ArchiveId::first_at(id_at(1, 0).micros())),
            end: Some(ArchiveId::last_at(id_at(3, 0).micros())),
            max: 10,
            ..ArchiveQuery::default()
        };
        let page = storage.query_archive(&alice, &window).await.unwrap();
        assert_eq!(bodies(&page), ["carol", "b-laptop", "b-bare"]);
        assert!(page.complete);

        let between = ArchiveQuery {
            after_id: Some(id_at(0, 1)),
            before_id: Some(id_at(4, 1)),
            with: Some(full("bob@example.org")),
            max: 10,
            ..ArchiveQuery::default()
        };
        let page = storage.query_archive(&alice, &between).await.unwrap();
        assert_eq!(bodies(&page), ["b-laptop", "b-bare"]);

        let some = ArchiveQuery {
            ids: vec![id_at(4, 1), id_at(1, 1)],
            max: 10,
            ..ArchiveQuery::default()
        };
        let page = storage.query_archive(&alice, &some).await.unwrap();
        assert_eq!(bodies(&page), ["carol", "self"]);
    }

    pub async fn archive_names_unknown_ids_not_found(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let bob = account(&storage, "bob@example.org").await;
        storage
            .archive_messages(&[entry(&bob, id_at(0, 1), "alice@example.org", "bob's")])
            .await
            .unwrap();
        storage
            .archive_messages(&[entry(&alice, id_at(1, 1), "bob@example.org", "alice's")])
            .await
            .unwrap();
        // Bob's id is not in Alice's archive, whichever way it is named.
        let unknown = id_at(0, 1);
        for asked in [
            query(5, PageStart::After(unknown)),
            query(5, PageStart::Before(unknown)),
            ArchiveQuery {
                after_id: Some(unknown),
                max: 5,
                ..ArchiveQuery::default()
            },
            ArchiveQuery {
                before_id: Some(unknown),
                max: 5,
                ..ArchiveQuery::default()
            },
            ArchiveQuery {
                ids: vec![id_at(1, 1), unknown],
                max: 5,
                ..ArchiveQuery::default()
            },
        ] {
            let result = storage.query_archive(&alice, &asked).await;
            assert!(is_not_found(&result), "{asked:?}: {result:?}");
        }
        let nobody = storage
            .query_archive(
                &jid("nobody@example.org"),
                &query(5, PageStart::After(unknown)),
            )
            .await;
        assert!(is_not_found(&nobody), "{nobody:?}");
    }

    pub async fn archive_quota_removes_the_oldest(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let total = MAX_ARCHIVE_MESSAGES as i64 + 5;
        // In several batches, one of them past the bound at once.
        for batch in [0..3, 3..10, 10..total] {
            let entries: Vec<_> = batch
                .map(|index| {
                    entry(
                        &alice,
                        id_at(index, 0),
                        "bob@example.org",
                        &format!("m{index}"),
                    )
                })
                .collect();
            storage.archive_messages(&entries).await.unwrap();
        }
        let page = storage
            .query_archive(&alice, &query(100, PageStart::First))
            .await
            .unwrap();
        let expected: Vec<String> = (5..total).map(|index| format!("m{index}")).collect();
        assert_eq!(bodies(&page), expected);
        assert_eq!(
            storage.archive_bounds(&alice).await.unwrap(),
            Some((id_at(5, 0), id_at(total - 1, 0)))
        );
    }

    pub async fn archive_preferences_decide_and_round_trip(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let bob = jid("bob@example.org");
        let decide = |pairs: Vec<(BareJid, Jid)>| {
            let storage = storage.clone();
            async move { storage.archive_decisions(&pairs).await.unwrap() }
        };
        // Never set: the default keeps everything.
        assert_eq!(
            storage.archive_prefs(&alice).await.unwrap(),
            ArchivePrefs::default()
        );
        assert_eq!(
            decide(vec![
                (alice.clone(), full("bob@example.org/x")),
                (jid("nobody@example.org"), full("bob@example.org")),
            ])
            .await,
            [true, false]
        );
        let prefs = ArchivePrefs {
            default: ArchiveDefault::Roster,
            always: vec![full("carol@example.org"), full("dave@example.org")],
            never: vec![full("dave@example.org"), full("carol@example.org/spam")],
        };
        storage.set_archive_prefs(&alice, &prefs).await.unwrap();
        let stored = storage.archive_prefs(&alice).await.unwrap();
        assert_eq!(stored.default, ArchiveDefault::Roster);
        // An address in both lists is never archived.
        assert_eq!(stored.always, [full("carol@example.org")]);
        let mut never = stored.never.clone();
        never.sort_by_key(ToString::to_string);
        assert_eq!(
            never,
            [full("carol@example.org/spam"), full("dave@example.org")]
        );
        let mut item = RosterItem::new(bob.clone());
        item.subscription = Subscription::Both;
        storage.put_roster_item(&alice, &item).await.unwrap();
        assert_eq!(
            decide(vec![
                (alice.clone(), full("bob@example.org/phone")),
                (alice.clone(), full("eve@example.org")),
                (alice.clone(), full("carol@example.org/home")),
                (alice.clone(), full("carol@example.org/spam")),
                (alice.clone(), full("dave@example.org")),
            ])
            .await,
            [true, false, true, false, false]
        );
        storage
            .set_archive_prefs(
                &alice,
                &ArchivePrefs {
                    default: ArchiveDefault::Never,
                    ..ArchivePrefs::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            decide(vec![(alice.clone(), full("bob@example.org"))]).await,
            [false]
        );
        assert!(is_not_found(
            &storage
                .set_archive_prefs(&jid("nobody@example.org"), &ArchivePrefs::default())
                .await
        ));
        // Preferences keep the archive's count: the quota still holds after.
        let entries: Vec<_> = (0..MAX_ARCHIVE_MESSAGES as i64 + 1)
            .map(|index| entry(&alice, id_at(index, 0), "bob@example.org", "x"))
            .collect();
        storage.archive_messages(&entries).await.unwrap();
        storage
            .set_archive_prefs(&alice, &ArchivePrefs::default())
            .await
            .unwrap();
        let page = storage
            .query_archive(&alice, &query(100, PageStart::First))
            .await
            .unwrap();
        assert_eq!(page.messages.len() as u64, MAX_ARCHIVE_MESSAGES);
    }

    pub async fn archive_retention_purges_old_messages(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let bob = account(&storage, "bob@example.org").await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        let day = 86_400_000_000i64;
        let entries = vec![
            entry(
                &alice,
                ArchiveId::first_at(now - 3 * day),
                "bob@example.org",
                "old",
            ),
            entry(
                &alice,
                ArchiveId::first_at(now - day / 2),
                "bob@example.org",
                "recent",
            ),
            entry(
                &bob,
                ArchiveId::first_at(now - 5 * day),
                "alice@example.org",
                "older",
            ),
        ];
        storage.archive_messages(&entries).await.unwrap();
        let purged = storage
            .purge_archive(std::time::Duration::from_secs(86_400))
            .await
            .unwrap();
        assert_eq!(purged, 2);
        let page = storage
            .query_archive(&alice, &query(10, PageStart::First))
            .await
            .unwrap();
        assert_eq!(bodies(&page), ["recent"]);
        assert_eq!(storage.archive_bounds(&bob).await.unwrap(), None);
        // The count followed: the quota counts what is left.
        let more: Vec<_> = (0..MAX_ARCHIVE_MESSAGES as i64)
            .map(|index| {
                entry(
                    &alice,
                    ArchiveId::first_at(now + index),
                    "bob@example.org",
                    "new",
                )
            })
            .collect();
        storage.archive_messages(&more).await.unwrap();
        let page = storage
            .query_archive(&alice, &query(100, PageStart::First))
            .await
            .unwrap();
        assert_eq!(page.messages.len() as u64, MAX_ARCHIVE_MESSAGES);
        assert_eq!(bodies(&page)[0], "new");
    }

    /// Rooms' archives (XEP-0313 section 5.1.2): per room, paged and
    /// filtered like an account's, tombstoned, removed with the room, purged.
    pub async fn room_archives_page_tombstone_remove_and_purge(storage: Storage) {
        use starling_api::RoomArchiveStore;
        let coven = jid("coven@conference.example.org");
        let other = jid("other@conference.example.org");
        let mut entries = Vec::new();
        for index in 0..6 {
            let nick = if index % 2 == 0 { "alice" } else { "bob" };
            entries.push(entry(
                &coven,
                id_at(index, 0),
                &format!("coven@conference.example.org/{nick}"),
                &format!("m{index}"),
            ));
            entries.push(entry(
                &other,
                id_at(index, 0),
                "other@conference.example.org/x",
                "elsewhere",
            ));
        }
        assert_eq!(storage.archive_room_messages(&entries).await.unwrap(), 12);
        assert_eq!(storage.archive_room_messages(&entries).await.unwrap(), 0);
        let first = storage
            .query_room_archive(&coven, &query(4, PageStart::First))
            .await
            .unwrap();
        assert_eq!(bodies(&first), ["m0", "m1", "m2", "m3"]);
        assert!(!first.complete);
        let rest = storage
            .query_room_archive(&coven, &query(4, PageStart::After(first.messages[3].id)))
            .await
            .unwrap();
        assert_eq!(bodies(&rest), ["m4", "m5"]);
        assert!(rest.complete);
        // `with` an occupant JID: that occupant's messages.
        let bob_only = storage
            .query_room_archive(
                &coven,
                &ArchiveQuery {
                    with: Some(full("coven@conference.example.org/bob")),
                    ..query(10, PageStart::First)
                },
            )
            .await
            .unwrap();
        assert_eq!(bodies(&bob_only), ["m1", "m3", "m5"]);
        // An id of another room is not in this one.
        assert!(matches!(
            storage
                .query_room_archive(
                    &jid("empty@conference.example.org"),
                    &query(4, PageStart::After(id_at(1, 0)))
                )
                .await,
            Err(starling_api::ApiError::NotFound(_))
        ));
        // A tombstone replaces one message; an unknown id replaces nothing.
        let tombstone = "<message type='groupchat'><body>gone</body></message>";
        assert!(storage
            .replace_room_archive_message(&coven, id_at(2, 0), tombstone)
            .await
            .unwrap());
        assert!(!storage
            .replace_room_archive_message(&coven, id_at(99, 0), tombstone)
            .await
            .unwrap());
        let read = storage
            .room_archive_message(&coven, id_at(2, 0))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.stanza_xml, tombstone);
        assert_eq!(
            storage
                .room_archive_message(&coven, id_at(99, 0))
                .await
                .unwrap(),
            None
        );
        // A destroyed room's archive goes, the other room's stays.
        assert_eq!(storage.remove_room_archive(&coven).await.unwrap(), 6);
        assert!(storage
            .query_room_archive(&coven, &query(10, PageStart::First))
            .await
            .unwrap()
            .messages
            .is_empty());
        // Retention purges rooms' messages too (these are from 2023).
        let purged = storage
            .purge_archive(std::time::Duration::from_secs(86_400))
            .await
            .unwrap();
        assert_eq!(purged, 6);
        assert!(storage
            .query_room_archive(&other, &query(10, PageStart::First))
            .await
            .unwrap()
            .messages
            .is_empty());
    }
}

pub mod upload_cases {
    use super::*;
    use starling_api::{UploadQuota, UploadSlotGrant, UploadSlotRecord, UploadStore};

    fn slot(id: u32, size: u64, created_at_millis: i64) -> UploadSlotRecord {
        UploadSlotRecord {
            id: format!("{id:032x}"),
            file_name: "photo.jpg".into(),
            size,
            content_type: Some("image/jpeg".into()),
            token_hash: vec![id as u8; 32],
            created_at_millis,
            uploaded_at_millis: None,
        }
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    fn quota(bytes: u64, now_millis: i64) -> UploadQuota {
        UploadQuota {
            bytes,
            now_millis,
            stored_for_millis: 3_600_000,
            pending_for_millis: 60_000,
        }
    }

    pub async fn upload_slots_count_against_the_quota_and_complete_once(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let bob = account(&storage, "bob@example.org").await;
        let now = now();
        for (id, size) in [(1, 600), (2, 400)] {
            assert_eq!(
                storage
                    .create_upload_slot(&alice, &slot(id, size, now), quota(1000, now))
                    .await
                    .unwrap(),
                UploadSlotGrant::Granted
            );
        }
        // Full: refused with the time the oldest pending slot stops counting.
        assert_eq!(
            storage
                .create_upload_slot(&alice, &slot(3, 1, now), quota(1000, now))
                .await
                .unwrap(),
            UploadSlotGrant::QuotaExceeded {
                used_bytes: 1000,
                retry_at_millis: Some(now + 60_000)
            }
        );
        assert!(storage
            .upload_slot(&format!("{:032x}", 3))
            .await
            .unwrap()
            .is_none());
        // Another account has its own quota; no quota at all is 0.
        assert_eq!(
            storage
                .create_upload_slot(&bob, &slot(4, 1000, now), quota(1000, now))
                .await
                .unwrap(),
            UploadSlotGrant::Granted
        );
        assert_eq!(
            storage
                .create_upload_slot(&bob, &slot(5, 1 << 40, now), quota(0, now))
                .await
                .unwrap(),
            UploadSlotGrant::Granted
        );
        // A pending slot stops counting after pending_for, an uploaded file after stored_for.
        let id1 = format!("{:032x}", 1);
        assert!(storage.complete_upload_slot(&id1, now + 5).await.unwrap());
        assert!(
            storage.complete_upload_slot(&id1, now + 5).await.unwrap(),
            "a retry"
        );
        assert!(
            !storage.complete_upload_slot(&id1, now + 6).await.unwrap(),
            "used"
        );
        assert!(!storage
            .complete_upload_slot(&format!("{:032x}", 99), now)
            .await
            .unwrap());
        let later = now + 120_000;
        assert_eq!(
            storage
                .create_upload_slot(&alice, &slot(6, 400, later), quota(1000, later))
                .await
                .unwrap(),
            UploadSlotGrant::Granted
        );
        assert_eq!(
            storage
                .create_upload_slot(&alice, &slot(7, 1, later), quota(1000, later))
                .await
                .unwrap(),
            UploadSlotGrant::QuotaExceeded {
                used_bytes: 1000,
                retry_at_millis: Some(later + 60_000)
            }
        );
        let stored = storage.upload_slot(&id1).await.unwrap().unwrap();
        assert_eq!(stored.uploaded_at_millis, Some(now + 5));
        assert_eq!(stored.size, 600);
        assert_eq!(stored.content_type.as_deref(), Some("image/jpeg"));
        assert_eq!(stored.token_hash, vec![1u8; 32]);
        assert!(is_not_found(
            &storage
                .create_upload_slot(&jid("nobody@example.org"), &slot(8, 1, now), quota(0, now))
                .await
        ));
        // The slots go with the account.
        storage.remove_account(&alice).await.unwrap();
        assert!(storage.upload_slot(&id1).await.unwrap().is_none());
    }

    pub async fn upload_purge_removes_expired_slots(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let now = now();
        let hour = 3_600_000;
        for (id, created) in [(1, now - 3 * hour), (2, now - 3 * hour), (3, now)] {
            storage
                .create_upload_slot(&alice, &slot(id, 1, created), quota(0, now))
                .await
                .unwrap();
        }
        // Uploaded recently although granted long ago: kept.
        assert!(storage
            .complete_upload_slot(&format!("{:032x}", 2), now - 1000)
            .await
            .unwrap());
        let purged = storage
            .purge_upload_slots(std::time::Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(purged, 1);
        assert!(storage
            .upload_slot(&format!("{:032x}", 1))
            .await
            .unwrap()
            .is_none());
        assert!(storage
            .upload_slot(&format!("{:032x}", 2))
            .await
            .unwrap()
            .is_some());
        assert_eq!(
            storage
                .purge_upload_slots(std::time::Duration::from_secs(3600))
                .await
                .unwrap(),
            0
        );
    }

    pub async fn concurrent_upload_slots_respect_the_quota(storage: Storage) {
        let alice = account(&storage, "alice@example.org").await;
        let now = now();
        let storage = Arc::new(storage);
        let mut tasks = Vec::new();
        for id in 0..20 {
            let storage = storage.clone();
            let alice = alice.clone();
            tasks.push(tokio::spawn(async move {
                storage
                    .create_upload_slot(&alice, &slot(id, 100, now), quota(1000, now))
                    .await
                    .unwrap()
            }));
        }
        let mut granted = 0;
        for task in tasks {
            if task.await.unwrap() == UploadSlotGrant::Granted {
                granted += 1;
            }
        }
        assert_eq!(granted, 10);
    }
}
