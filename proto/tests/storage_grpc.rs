//! The whole `StorageApi` through `GrpcStorageClient` against real tonic
//! servers backed by `starling_storage::Storage` on `sqlite::memory:`.

mod support;

use std::sync::Arc;

use starling_api::{
    AccountStore, ApiError, OfflineStore, RosterItem, RosterStore, ScramCredentials,
    StoredCredentials, Subscription,
};
use starling_jid::BareJid;
use starling_proto::storage::v1 as proto;
use starling_proto::storage::v1::storage_client::StorageClient;
use starling_proto::GrpcStorageClient;
use starling_storage::{Storage, StorageConfig};
use support::{KillableServer, TestServer};

async fn memory_storage() -> Arc<Storage> {
    let config = StorageConfig {
        url: "sqlite::memory:".into(),
        max_offline_per_user: 3,
        ..Default::default()
    };
    Arc::new(Storage::connect(&config).await.expect("sqlite in memory"))
}

fn jid(value: &str) -> BareJid {
    value.parse().expect("valid jid")
}

fn credentials(seed: u8) -> StoredCredentials {
    let scram = |length: usize| ScramCredentials {
        salt: vec![seed; 16],
        iterations: 4096,
        stored_key: vec![seed.wrapping_add(1); length],
        server_key: vec![seed.wrapping_add(2); length],
    };
    StoredCredentials {
        sha1: scram(20),
        sha256: scram(32),
    }
}

#[tokio::test]
async fn whole_storage_api_round_trips_through_grpc() {
    let storage = memory_storage().await;
    let server = TestServer::start(Some(storage), None, None).await;
    let client = GrpcStorageClient::connect(vec![server.endpoint()]).expect("client");

    let juliet = jid("juliet@example.org");
    let romeo = jid("romeo@example.org");

    // Accounts and credentials.
    client
        .create_account(&juliet, &credentials(1))
        .await
        .expect("create juliet");
    client
        .create_account(&romeo, &credentials(2))
        .await
        .expect("create romeo");
    assert!(matches!(
        client.create_account(&juliet, &credentials(3)).await,
        Err(ApiError::AlreadyExists(_))
    ));
    assert_eq!(
        client.credentials(&juliet).await.expect("credentials"),
        Some(credentials(1))
    );
    client
        .set_credentials(&juliet, &credentials(7))
        .await
        .expect("set credentials");
    assert_eq!(
        client.credentials(&juliet).await.expect("credentials"),
        Some(credentials(7))
    );
    assert_eq!(
        client
            .credentials(&jid("nobody@example.org"))
            .await
            .expect("credentials"),
        None
    );
    assert!(matches!(
        client
            .set_credentials(&jid("nobody@example.org"), &credentials(1))
            .await,
        Err(ApiError::NotFound(_))
    ));
    assert_eq!(
        client.list_accounts("example.org").await.expect("list"),
        vec![juliet.clone(), romeo.clone()]
    );

    // Roster with versions.
    let (version_empty, items) = client.roster(&juliet).await.expect("roster");
    assert!(items.is_empty());
    let mut item = RosterItem::new(romeo.clone());
    item.name = Some("Romeo".into());
    item.subscription = Subscription::To;
    item.pending_in = true;
    item.pending_in_stanza =
        Some("<presence xmlns='jabber:client' from='romeo@example.org' type='subscribe'/>".into());
    item.groups = vec!["Friends".into(), "Verona".into()];
    let version_put = client
        .put_roster_item(&juliet, &item)
        .await
        .expect("put item");
    assert!(version_put > version_empty);
    let (version, items) = client.roster(&juliet).await.expect("roster");
    assert_eq!(version, version_put);
    assert_eq!(items, vec![item.clone()]);
    assert_eq!(
        client
            .roster_item(&juliet, &romeo)
            .await
            .expect("roster item"),
        Some(item.clone())
    );
    assert_eq!(
        client
            .roster_item(&juliet, &jid("nurse@example.org"))
            .await
            .expect("roster item"),
        None
    );
    let version_removed = client
        .remove_roster_item(&juliet, &romeo)
        .await
        .expect("remove item")
        .expect("item existed");
    assert!(version_removed > version_put);
    assert_eq!(
        client
            .remove_roster_item(&juliet, &romeo)
            .await
            .expect("remove again"),
        None
    );

    // Offline queue with its limit (XEP-0160).
    for number in 1..=3 {
        let stanza = format!(
            "<message xmlns='jabber:client' to='juliet@example.org' id='m{number}'><body>{number}</body></message>"
        );
        client
            .store_offline(&juliet, &stanza)
            .await
            .expect("store offline");
    }
    assert!(matches!(
        client
            .store_offline(&juliet, "<message xmlns='jabber:client'/>")
            .await,
        Err(ApiError::LimitReached(_))
    ));
    assert_eq!(client.count_offline(&juliet).await.expect("count"), 3);
    let taken = client.take_all_offline(&juliet).await.expect("take");
    assert_eq!(
        taken,
        (1..=3)
            .map(|number| format!(
                "<message xmlns='jabber:client' to='juliet@example.org' id='m{number}'><body>{number}</body></message>"
            ))
            .collect::<Vec<_>>()
    );
    assert_eq!(client.count_offline(&juliet).await.expect("count"), 0);

    // Removing the account.
    client.remove_account(&romeo).await.expect("remove romeo");
    assert!(matches!(
        client.remove_account(&romeo).await,
        Err(ApiError::NotFound(_))
    ));
    assert_eq!(
        client.list_accounts("example.org").await.expect("list"),
        vec![juliet.clone()]
    );
    server.stop().await;
}

#[tokio::test]
async fn server_rejects_malformed_requests_with_invalid_argument() {
    let storage = memory_storage().await;
    let server = TestServer::start(Some(storage), None, None).await;
    let mut raw = StorageClient::connect(server.endpoint())
        .await
        .expect("raw client");

    let status = raw
        .get_roster(proto::GetRosterRequest {
            user: "not a jid@@".into(),
        })
        .await
        .expect_err("bad jid");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let status = raw
        .create_account(proto::CreateAccountRequest {
            user: "juliet@example.org".into(),
            credentials: None,
        })
        .await
        .expect_err("missing credentials");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let status = raw
        .put_roster_item(proto::PutRosterItemRequest {
            user: "juliet@example.org".into(),
            item: Some(proto::RosterItem {
                jid: "romeo@example.org".into(),
                subscription: 17,
                in_roster: true,
                ..Default::default()
            }),
        })
        .await
        .expect_err("unknown subscription");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let status = raw
        .put_roster_item(proto::PutRosterItemRequest {
            user: "juliet@example.org".into(),
            item: None,
        })
        .await
        .expect_err("missing item");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn calls_fail_over_when_a_storage_replica_stops() {
    // Two replicas over one database, as in the cluster.
    let storage = memory_storage().await;
    let first = TestServer::start(Some(storage.clone()), None, None).await;
    let second = TestServer::start(Some(storage.clone()), None, None).await;
    let client =
        GrpcStorageClient::connect(vec![first.endpoint(), second.endpoint()]).expect("client");
    let juliet = jid("juliet@example.org");
    client
        .create_account(&juliet, &credentials(1))
        .await
        .expect("create");
    // Both replicas serve (round robin).
    for _ in 0..4 {
        assert_eq!(client.count_offline(&juliet).await.expect("count"), 0);
    }

    first.stop().await;
    for number in 0..20 {
        client
            .store_offline(
                &juliet,
                &format!("<message xmlns='jabber:client' id='f{number}'/>"),
            )
            .await
            .or_else(|error| match error {
                ApiError::LimitReached(_) => Ok(()),
                other => Err(other),
            })
            .expect("store keeps succeeding");
        assert!(client.credentials(&juliet).await.expect("read").is_some());
        client
            .take_all_offline(&juliet)
            .await
            .expect("take keeps succeeding");
    }
    second.stop().await;

    // With every replica gone, calls fail with Unavailable, without panicking.
    assert!(matches!(
        client.credentials(&juliet).await,
        Err(ApiError::Unavailable(_))
    ));
}

#[tokio::test]
async fn unreachable_endpoints_give_unavailable() {
    let client =
        GrpcStorageClient::connect(vec!["127.0.0.1:1".into(), "http://127.0.0.1:2".into()])
            .expect("lazy client");
    assert!(matches!(
        client.count_offline(&jid("juliet@example.org")).await,
        Err(ApiError::Unavailable(_))
    ));
    assert!(GrpcStorageClient::connect(Vec::new()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_keep_succeeding_when_a_storage_replica_is_killed() {
    // A database file: a replica killed mid-query must not take an in-memory
    // database down with its connection.
    let folder = std::env::temp_dir().join(format!(
        "starling-proto-kill-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos()
    ));
    let config = StorageConfig {
        url: format!("sqlite://{}/starling.db", folder.display()),
        ..Default::default()
    };
    let storage = Arc::new(Storage::connect(&config).await.expect("sqlite file"));
    let mut first = KillableServer::start(Some(storage.clone()), None);
    let second = TestServer::start(Some(storage.clone()), None, None).await;
    let client =
        GrpcStorageClient::connect(vec![first.endpoint(), second.endpoint()]).expect("client");
    let juliet = jid("juliet@example.org");
    client
        .create_account(&juliet, &credentials(1))
        .await
        .expect("create");
    // Open connections to both replicas, then kill one like kill -9.
    for _ in 0..4 {
        assert!(client.credentials(&juliet).await.expect("read").is_some());
    }
    first.kill();
    for number in 0..20 {
        assert!(client.credentials(&juliet).await.expect("read").is_some());
        let version = client
            .put_roster_item(
                &juliet,
                &RosterItem::new(jid(&format!("contact{number}@example.org"))),
            )
            .await
            .expect("write keeps succeeding");
        assert!(version > 0);
    }
    assert_eq!(client.roster(&juliet).await.expect("roster").1.len(), 20);
    second.stop().await;
    drop(client);
    storage.close().await;
    let _ = std::fs::remove_dir_all(&folder);
}

#[tokio::test]
async fn at_most_once_calls_move_on_when_the_connection_is_refused() {
    let storage = memory_storage().await;
    let live = TestServer::start(Some(storage), None, None).await;
    // A port nobody listens on: the request provably never left.
    let refused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let refused_endpoint = format!("http://{}", refused.local_addr().expect("addr"));
    drop(refused);
    let client =
        GrpcStorageClient::connect(vec![refused_endpoint, live.endpoint()]).expect("client");
    let juliet = jid("juliet@example.org");
    // Round robin starts on the refused endpoint.
    assert_eq!(
        client
            .take_all_offline(&juliet)
            .await
            .expect("take_offline"),
        Vec::<String>::new()
    );
    live.stop().await;
}

#[tokio::test]
async fn the_message_archive_round_trips_through_grpc() {
    use starling_api::{
        ArchiveDefault, ArchiveEntry, ArchiveId, ArchivePrefs, ArchiveQuery, ArchiveStore,
        PageStart,
    };
    use starling_jid::Jid;

    let storage = memory_storage().await;
    let server = TestServer::start(Some(storage), None, None).await;
    let client = GrpcStorageClient::connect(vec![server.endpoint()]).expect("client");
    let juliet = jid("juliet@example.org");
    client
        .create_account(&juliet, &credentials(1))
        .await
        .expect("create juliet");
    let romeo: Jid = "romeo@example.org/orchard".parse().unwrap();
    let entries: Vec<ArchiveEntry> = (1..=5)
        .map(|index| ArchiveEntry {
            owner: juliet.clone(),
            id: ArchiveId::first_at(1_000_000 * index),
            with: romeo.clone(),
            stanza_xml: format!("<message><body>{index}</body></message>"),
        })
        .collect();
    assert_eq!(client.archive_messages(&entries).await.unwrap(), 5);
    let page = client
        .query_archive(
            &juliet,
            &ArchiveQuery {
                with: Some(romeo.clone()),
                start: Some(ArchiveId::first_at(2_000_000)),
                page: PageStart::Before(entries[4].id),
                max: 2,
                ..ArchiveQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page.messages
            .iter()
            .map(|message| message.id)
            .collect::<Vec<_>>(),
        [entries[2].id, entries[3].id]
    );
    assert!(!page.complete);
    assert!(matches!(
        client
            .query_archive(
                &juliet,
                &ArchiveQuery {
                    page: PageStart::After(ArchiveId(42)),
                    max: 2,
                    ..ArchiveQuery::default()
                },
            )
            .await,
        Err(ApiError::NotFound(_))
    ));
    assert_eq!(
        client.archive_bounds(&juliet).await.unwrap(),
        Some((entries[0].id, entries[4].id))
    );
    let prefs = ArchivePrefs {
        default: ArchiveDefault::Roster,
        always: vec!["nurse@example.org".parse().unwrap()],
        never: vec![romeo.clone()],
    };
    client.set_archive_prefs(&juliet, &prefs).await.unwrap();
    assert_eq!(client.archive_prefs(&juliet).await.unwrap(), prefs);
    assert_eq!(
        client
            .archive_decisions(&[
                (juliet.clone(), romeo.clone()),
                (juliet.clone(), "nurse@example.org/x".parse().unwrap()),
            ])
            .await
            .unwrap(),
        [false, true]
    );
}

#[tokio::test]
async fn push_registrations_round_trip_through_grpc() {
    use starling_api::{PushRegistration, PushStore};
    let storage = memory_storage().await;
    let server = TestServer::start(Some(storage), None, None).await;
    let client = GrpcStorageClient::connect(vec![server.endpoint()]).expect("client");
    let juliet = jid("juliet@example.org");
    let registration = |node: &str, options: Option<&str>| PushRegistration {
        service_jid: "push.example.org".into(),
        node: node.into(),
        publish_options_xml: options.map(str::to_string),
    };
    // No account: not found.
    assert!(matches!(
        client
            .put_push_registration(&juliet, &registration("n1", None), 2)
            .await,
        Err(ApiError::NotFound(_))
    ));
    client
        .create_account(&juliet, &credentials(1))
        .await
        .expect("create juliet");
    let form = "<x xmlns='jabber:x:data' type='submit'/>";
    client
        .put_push_registration(&juliet, &registration("n1", Some(form)), 2)
        .await
        .expect("enable n1");
    client
        .put_push_registration(&juliet, &registration("n2", None), 2)
        .await
        .expect("enable n2");
    assert!(matches!(
        client
            .put_push_registration(&juliet, &registration("n3", None), 2)
            .await,
        Err(ApiError::LimitReached(_))
    ));
    assert_eq!(
        client.push_registrations(&juliet).await.expect("list"),
        vec![registration("n1", Some(form)), registration("n2", None)]
    );
    assert_eq!(
        client
            .remove_push_registrations(&juliet, "push.example.org", Some("n1"))
            .await
            .expect("disable n1"),
        1
    );
    assert_eq!(
        client.push_registrations(&juliet).await.expect("list"),
        vec![registration("n2", None)]
    );
    server.stop().await;
}

#[tokio::test]
async fn persistent_muc_rooms_round_trip_through_grpc() {
    use starling_api::{MucAffiliation, MucRoomRecord, MucRoomStore};
    let storage = memory_storage().await;
    let server = TestServer::start(Some(storage), None, None).await;
    let client = GrpcStorageClient::connect(vec![server.endpoint()]).expect("client");
    let room = MucRoomRecord {
        jid: jid("coven@chat.example.org"),
        revision: 2,
        name: "The Coven".into(),
        public: true,
        config: "{\"persistent\":true}".into(),
        subject: "Fire".into(),
        subject_nick: "witch".into(),
        occupant_id_salt: "salt".into(),
        affiliations: vec![
            MucAffiliation {
                jid: "crone@example.org".into(),
                affiliation: "owner".into(),
                reason: None,
            },
            MucAffiliation {
                jid: "earl@example.org".into(),
                affiliation: "outcast".into(),
                reason: Some("Treason".into()),
            },
        ],
    };
    assert_eq!(client.muc_room(&room.jid).await.expect("read"), None);
    assert!(client.put_muc_room(&room).await.expect("write"));
    // Not newer: not written.
    assert!(!client.put_muc_room(&room).await.expect("write again"));
    assert_eq!(
        client.muc_room(&room.jid).await.expect("read"),
        Some(room.clone())
    );
    let listed = client
        .listed_muc_rooms("chat.example.org", 10)
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].jid.clone(), listed[0].name.as_str()),
        (room.jid.clone(), "The Coven")
    );
    // An unknown affiliation is refused as invalid.
    let mut bad = room.clone();
    bad.revision = 3;
    bad.affiliations[0].affiliation = "king".into();
    assert!(matches!(
        client.put_muc_room(&bad).await,
        Err(ApiError::Invalid(_))
    ));
    assert!(client.remove_muc_room(&room.jid).await.expect("remove"));
    assert_eq!(client.muc_room(&room.jid).await.expect("read"), None);
    server.stop().await;
}

#[tokio::test]
async fn room_archives_round_trip_through_grpc() {
    use starling_api::{ArchiveEntry, ArchiveId, ArchiveQuery, PageStart, RoomArchiveStore};
    use starling_jid::Jid;

    let storage = memory_storage().await;
    let server = TestServer::start(Some(storage), None, None).await;
    let client = GrpcStorageClient::connect(vec![server.endpoint()]).expect("client");
    let room = jid("coven@conference.example.org");
    let witch: Jid = "coven@conference.example.org/firstwitch".parse().unwrap();
    let entries: Vec<ArchiveEntry> = (1..=3)
        .map(|index| ArchiveEntry {
            owner: room.clone(),
            id: ArchiveId::first_at(1_000_000 * index),
            with: witch.clone(),
            stanza_xml: format!("<message type='groupchat'><body>{index}</body></message>"),
        })
        .collect();
    assert_eq!(client.archive_room_messages(&entries).await.unwrap(), 3);
    let page = client
        .query_room_archive(
            &room,
            &ArchiveQuery {
                with: Some(witch.clone()),
                page: PageStart::Last,
                max: 2,
                ..ArchiveQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page.messages
            .iter()
            .map(|message| message.id)
            .collect::<Vec<_>>(),
        [entries[1].id, entries[2].id]
    );
    assert!(client
        .replace_room_archive_message(&room, entries[0].id, "<message><retracted/></message>")
        .await
        .unwrap());
    let read = client
        .room_archive_message(&room, entries[0].id)
        .await
        .unwrap()
        .expect("still there");
    assert_eq!(read.stanza_xml, "<message><retracted/></message>");
    assert_eq!(
        client
            .room_archive_message(&room, ArchiveId(7))
            .await
            .unwrap(),
        None
    );
    assert_eq!(client.remove_room_archive(&room).await.unwrap(), 3);
}
