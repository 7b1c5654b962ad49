//! Presence, RFC 6121 section 4, and offline messages at login (XEP-0160).

use starling_api::{
    OfflineStore, PresenceApi, RosterItem, RosterStore, SessionRegistry, Subscription,
};
use starling_jid::{BareJid, FullJid};

use crate::harness::{xml, Harness};

async fn put_contact(harness: &Harness, user: &str, contact: &str, subscription: Subscription) {
    let user: BareJid = user.parse().unwrap();
    let mut item = RosterItem::new(contact.parse().unwrap());
    item.subscription = subscription;
    harness.storage.put_roster_item(&user, &item).await.unwrap();
}

#[tokio::test]
async fn initial_presence_is_broadcast_and_answered_with_contacts_and_own_resources() {
    let mut harness = Harness::new().await;
    let phone = harness.online("alice@example.com/phone", "cm1").await;
    let bob = harness.online("bob@example.com/desk", "cm2").await;
    harness.befriend(&phone, &bob).await;
    let _laptop = harness.online("alice@example.com/laptop", "cm2").await;
    put_contact(
        &harness,
        "alice@example.com",
        "romeo@remote.net",
        Subscription::Both,
    )
    .await;

    let tablet = harness.bind("alice@example.com/tablet", "cm2").await;
    harness
        .presence(
            &tablet,
            "<presence><show>away</show><priority>5</priority></presence>",
        )
        .await;
    // Section 4.2.2: to the subscribed contact, to every available resource
    // including the sender; then the contacts' and the other resources'
    // presence to the new resource (local ones read from the registry).
    assert_eq!(
        harness.received("cm1"),
        ["alice@example.com/phone <presence from='alice@example.com/tablet' to='alice@example.com'><show>away</show><priority>5</priority></presence>"]
    );
    assert_eq!(
        harness.received("cm2"),
        [
            "bob@example.com/desk <presence from='alice@example.com/tablet' to='bob@example.com'><show>away</show><priority>5</priority></presence>",
            "alice@example.com/laptop <presence from='alice@example.com/tablet' to='alice@example.com'><show>away</show><priority>5</priority></presence>",
            "alice@example.com/tablet <presence from='alice@example.com/tablet' to='alice@example.com'><show>away</show><priority>5</priority></presence>",
            "alice@example.com/tablet <presence from='bob@example.com/desk' to='alice@example.com/tablet'/>",
            "alice@example.com/tablet <presence from='alice@example.com/laptop' to='alice@example.com/tablet'/>",
            "alice@example.com/tablet <presence from='alice@example.com/phone' to='alice@example.com/tablet'/>",
        ]
    );
    // The remote contact gets the broadcast and is probed from the bare JID (section 4.3.1).
    assert_eq!(
        harness.routed(),
        [
            "<presence from='alice@example.com/tablet' to='romeo@remote.net'><show>away</show><priority>5</priority></presence>",
            "<presence from='alice@example.com' to='romeo@remote.net' type='probe'/>",
        ]
    );
    let record = harness
        .registry
        .session(&tablet.jid)
        .await
        .unwrap()
        .unwrap();
    assert!(record.available);
    assert_eq!(record.priority, 5);
    assert_eq!(
        record.presence.as_deref(),
        Some("<presence from='alice@example.com/tablet'><show>away</show><priority>5</priority></presence>")
    );

    // Section 4.4: a subsequent presence goes to the same set, with no probe.
    harness
        .presence(&tablet, "<presence><show>dnd</show></presence>")
        .await;
    assert_eq!(harness.received("cm1").len(), 1);
    assert_eq!(harness.received("cm2").len(), 3);
    assert_eq!(harness.routed(), ["<presence from='alice@example.com/tablet' to='romeo@remote.net'><show>dnd</show></presence>"]);
}

#[tokio::test]
async fn a_presence_broadcast_costs_one_publish_per_node() {
    let mut harness = Harness::new().await;
    let alice = harness.online("alice@example.com/phone", "cm1").await;
    let mut contacts = Vec::new();
    for index in 0..40 {
        let contact = format!("friend{index}@example.com");
        put_contact(&harness, "alice@example.com", &contact, Subscription::From).await;
        let node = if index % 2 == 0 { "cm1" } else { "cm2" };
        let session = harness.bind(&format!("{contact}/pc"), node).await;
        harness
            .registry
            .set_presence(&session.jid, &session.addr, true, 0, None)
            .await
            .unwrap();
        contacts.push(session);
    }
    harness.drain_all();
    harness
        .presence(&alice, "<presence><show>chat</show></presence>")
        .await;
    let cm1 = harness.envelopes("cm1");
    let cm2 = harness.envelopes("cm2");
    assert_eq!((cm1.len(), cm2.len()), (1, 1), "one envelope per node");
    // 20 contacts and alice herself on cm1, 20 contacts on cm2.
    assert_eq!((cm1[0].recipients.len(), cm2[0].recipients.len()), (21, 20));
    assert_eq!(
        cm2[0].stanza.to_stanza_xml(),
        "<presence from='alice@example.com/phone'><show>chat</show></presence>"
    );
    assert_eq!(
        cm2[0].recipients[0].to.as_deref(),
        Some("friend1@example.com")
    );
}

#[tokio::test]
async fn unavailable_presence_and_session_end_are_broadcast() {
    let mut harness = Harness::new().await;
    let phone = harness.online("alice@example.com/phone", "cm1").await;
    let bob = harness.online("bob@example.com/desk", "cm2").await;
    harness.befriend(&phone, &bob).await;
    let laptop = harness.online("alice@example.com/laptop", "cm2").await;

    // Section 4.5.2: the session ends without unavailable presence.
    harness
        .registry
        .unbind(&phone.jid, &phone.addr)
        .await
        .unwrap();
    harness
        .service
        .session_ended(&phone.jid, true)
        .await
        .unwrap();
    assert!(harness.received("cm1").is_empty());
    assert_eq!(
        harness.received("cm2"),
        [
            "bob@example.com/desk <presence from='alice@example.com/phone' type='unavailable' to='bob@example.com'/>",
            "alice@example.com/laptop <presence from='alice@example.com/phone' type='unavailable' to='alice@example.com'/>",
        ]
    );

    // Unavailable presence sent by the client keeps its status; the sender is
    // recorded unavailable and a later session end broadcasts nothing more.
    harness
        .presence(
            &laptop,
            "<presence type='unavailable'><status>gone</status></presence>",
        )
        .await;
    assert_eq!(
        harness.received("cm2"),
        ["bob@example.com/desk <presence type='unavailable' from='alice@example.com/laptop' to='bob@example.com'><status>gone</status></presence>"]
    );
    let record = harness
        .registry
        .session(&laptop.jid)
        .await
        .unwrap()
        .unwrap();
    assert!(!record.available && record.presence.is_none());
    harness
        .service
        .session_ended(&laptop.jid, false)
        .await
        .unwrap();
    assert!(harness.received_all().is_empty());
}

#[tokio::test]
async fn directed_presence_is_delivered_and_withdrawn_when_the_session_ends() {
    let mut harness = Harness::new().await;
    let alice = harness.online("alice@example.com/phone", "cm1").await;
    let bob = harness.online("bob@example.com/desk", "cm2").await;
    harness.befriend(&alice, &bob).await;
    let _carol = harness.online("carol@example.com/pc", "cm2").await;

    // Section 4.6: to a non-subscriber, to a subscriber, and to a remote entity.
    harness
        .presence(
            &alice,
            "<presence to='carol@example.com/pc'><status>hi</status></presence>",
        )
        .await;
    harness
        .presence(
            &alice,
            "<presence to='bob@example.com'><status>psst</status></presence>",
        )
        .await;
    harness
        .presence(&alice, "<presence to='juliet@remote.net'/>")
        .await;
    assert_eq!(
        harness.received("cm2"),
        [
            "carol@example.com/pc <presence to='carol@example.com/pc' from='alice@example.com/phone'><status>hi</status></presence>",
            "bob@example.com/desk <presence to='bob@example.com' from='alice@example.com/phone'><status>psst</status></presence>",
        ]
    );
    assert_eq!(
        harness.routed(),
        ["<presence to='juliet@remote.net' from='alice@example.com/phone'/>"]
    );

    // Section 4.6.3: the non-subscribers learn of the session's end; bob gets
    // the broadcast once, not a second copy for the directed presence.
    harness
        .service
        .session_ended(&alice.jid, true)
        .await
        .unwrap();
    assert_eq!(
        harness.received("cm2"),
        [
            "bob@example.com/desk <presence from='alice@example.com/phone' type='unavailable' to='bob@example.com'/>",
            "carol@example.com/pc <presence from='alice@example.com/phone' type='unavailable' to='carol@example.com/pc'/>",
        ]
    );
    assert_eq!(
        harness.routed(),
        ["<presence from='alice@example.com/phone' type='unavailable' to='juliet@remote.net'/>"]
    );
    assert!(harness
        .registry
        .take_directed_presence(&alice.jid)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn directed_unavailable_forgets_the_entity() {
    let mut harness = Harness::new().await;
    let alice = harness.online("alice@example.com/phone", "cm1").await;
    let _carol = harness.online("carol@example.com/pc", "cm2").await;
    harness
        .presence(&alice, "<presence to='carol@example.com'/>")
        .await;
    harness
        .presence(
            &alice,
            "<presence to='carol@example.com' type='unavailable'/>",
        )
        .await;
    assert_eq!(
        harness.received("cm2"),
        [
            "carol@example.com/pc <presence to='carol@example.com' from='alice@example.com/phone'/>",
            "carol@example.com/pc <presence to='carol@example.com' type='unavailable' from='alice@example.com/phone'/>",
        ]
    );
    harness
        .service
        .session_ended(&alice.jid, true)
        .await
        .unwrap();
    assert!(harness.received("cm2").is_empty());
}

#[tokio::test]
async fn offline_messages_wait_for_a_non_negative_priority() {
    let mut harness = Harness::new().await;
    let bob_bare: BareJid = "bob@example.com".parse().unwrap();
    for body in ["one", "two"] {
        let message = format!("<message from='alice@example.com/phone' to='bob@example.com' type='chat'><body>{body}</body></message>");
        harness
            .storage
            .store_offline(&bob_bare, &message)
            .await
            .unwrap();
    }
    let desk = harness.bind("bob@example.com/desk", "cm2").await;
    harness
        .presence(&desk, "<presence><priority>-1</priority></presence>")
        .await;
    assert_eq!(
        harness.received("cm2"),
        ["bob@example.com/desk <presence from='bob@example.com/desk' to='bob@example.com'><priority>-1</priority></presence>"]
    );
    assert_eq!(harness.storage.count_offline(&bob_bare).await.unwrap(), 2);

    // XEP-0160: non-negative presence: the queue, oldest first, to this resource.
    harness
        .presence(&desk, "<presence><priority>1</priority></presence>")
        .await;
    assert_eq!(
        harness.received("cm2"),
        [
            "bob@example.com/desk <presence from='bob@example.com/desk' to='bob@example.com'><priority>1</priority></presence>",
            "bob@example.com/desk <message from='alice@example.com/phone' to='bob@example.com' type='chat'><body>one</body></message>",
            "bob@example.com/desk <message from='alice@example.com/phone' to='bob@example.com' type='chat'><body>two</body></message>",
        ]
    );
    assert_eq!(harness.storage.count_offline(&bob_bare).await.unwrap(), 0);
}

#[tokio::test]
async fn offline_messages_its_node_cannot_take_go_back_to_the_router() {
    let mut harness = Harness::new().await;
    let bob_bare: BareJid = "bob@example.com".parse().unwrap();
    harness
        .storage
        .store_offline(
            &bob_bare,
            "<message to='bob@example.com'><body>hello</body></message>",
        )
        .await
        .unwrap();
    // A session on a node whose connection-manager is gone.
    let lost = harness.bind("bob@example.com/lost", "cm9").await;
    harness.presence(&lost, "<presence/>").await;
    assert_eq!(
        *harness.router.undeliverable.lock(),
        ["<message to='bob@example.com'><body>hello</body></message>"]
    );
    assert!(harness.received_all().is_empty());
}

#[tokio::test]
async fn inbound_presence_reaches_available_resources_or_the_addressed_one() {
    let mut harness = Harness::new().await;
    let _phone = harness.online("alice@example.com/phone", "cm1").await;
    let _laptop = harness.online("alice@example.com/laptop", "cm2").await;
    let _idle = harness.bind("alice@example.com/idle", "cm2").await;
    harness
        .service
        .inbound_presence(
            xml("<presence from='romeo@remote.net/garden' to='alice@example.com'/>"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        harness.received_all(),
        [
            "alice@example.com/phone <presence from='romeo@remote.net/garden' to='alice@example.com'/>",
            "alice@example.com/laptop <presence from='romeo@remote.net/garden' to='alice@example.com'/>",
        ]
    );
    harness
        .service
        .inbound_presence(xml("<presence from='romeo@remote.net/garden' to='alice@example.com/laptop' type='unavailable'/>"), None)
        .await
        .unwrap();
    assert_eq!(
        harness.received_all(),
        ["alice@example.com/laptop <presence from='romeo@remote.net/garden' to='alice@example.com/laptop' type='unavailable'/>"]
    );
    // No such resource, no sender, or the server itself: dropped.
    for dropped in [
        "<presence from='romeo@remote.net/garden' to='alice@example.com/car'/>",
        "<presence to='alice@example.com'/>",
        "<presence from='romeo@remote.net' to='example.com'/>",
    ] {
        harness
            .service
            .inbound_presence(xml(dropped), None)
            .await
            .unwrap();
    }
    assert!(harness.received_all().is_empty());
}

#[tokio::test]
async fn client_probes_are_ignored_and_unknown_types_bad_show_and_priority_bounce() {
    let mut harness = Harness::new().await;
    let alice = harness.online("alice@example.com/phone", "cm1").await;
    harness
        .presence(&alice, "<presence to='bob@example.com' type='probe'/>")
        .await;
    assert!(harness.received_all().is_empty());
    assert!(harness.routed().is_empty());
    harness
        .presence(&alice, "<presence type='invisible' id='x1'/>")
        .await;
    assert_eq!(
        harness.received("cm1"),
        ["alice@example.com/phone <presence id='x1' to='alice@example.com/phone' type='error'><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>unknown presence type</text></error></presence>"]
    );
    // Section 4.7.2.3: a priority out of -128..127 is refused, not clamped (the
    // edge and this service used to read it differently); section 4.7.2.1: an
    // empty or unknown <show/> is refused, never relayed.
    for (id, child, text) in [
        (
            "x3",
            "<priority>1000</priority>",
            "priority must be one integer from -128 to 127",
        ),
        (
            "x4",
            "<priority>-3000000000</priority>",
            "priority must be one integer from -128 to 127",
        ),
        (
            "x5",
            "<show/>",
            "show must be one of away, chat, dnd, xa, at most once",
        ),
        (
            "x6",
            "<show>busy</show>",
            "show must be one of away, chat, dnd, xa, at most once",
        ),
    ] {
        harness
            .presence(&alice, &format!("<presence id='{id}'>{child}</presence>"))
            .await;
        assert_eq!(
            harness.received("cm1"),
            [format!("alice@example.com/phone <presence id='{id}' to='alice@example.com/phone' type='error'>{child}<error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>{text}</text></error></presence>")]
        );
    }
    // Directed presence to an address that is not a JID (section 4.6.2).
    harness
        .presence(&alice, "<presence to='bob@' id='x2'/>")
        .await;
    assert_eq!(
        harness.received("cm1"),
        ["alice@example.com/phone <presence id='x2' to='alice@example.com/phone' from='bob@' type='error'><error type='modify'><jid-malformed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"]
    );
    // Presence from a session that is not bound any more changes nothing.
    let ghost_jid: FullJid = "alice@example.com/ghost".parse().unwrap();
    let ghost_addr = starling_api::SessionAddr {
        node: "cm1".into(),
        conn: 999,
    };
    harness
        .service
        .outbound_presence(&ghost_jid, &ghost_addr, xml("<presence/>"), None)
        .await
        .unwrap();
    assert!(harness.received_all().is_empty());
}

#[tokio::test]
async fn deliveries_carry_the_origin_time_of_the_call() {
    let mut harness = Harness::new().await;
    let alice = harness.online("alice@example.com/laptop", "cm1").await;
    let bob = harness.online("bob@example.com/phone", "cm2").await;
    harness.befriend(&alice, &bob).await;
    harness.drain_all();
    let routed_at = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
    let mut away = xml("<presence><show>away</show></presence>");
    away.set_attr("from", alice.jid.to_string());
    harness
        .service
        .outbound_presence(&alice.jid, &alice.addr, away, Some(routed_at))
        .await
        .unwrap();
    let envelopes = harness.envelopes("cm2");
    assert!(!envelopes.is_empty(), "bob is told");
    assert!(envelopes
        .iter()
        .all(|envelope| envelope.routed_at == Some(routed_at)));
    // A session that ended was no client's stanza: no time.
    harness
        .service
        .session_ended(&alice.jid, true)
        .await
        .unwrap();
    let envelopes = harness.envelopes("cm2");
    assert!(!envelopes.is_empty(), "bob is told");
    assert!(envelopes
        .iter()
        .all(|envelope| envelope.routed_at.is_none()));
}
