//! The service over its stores: a persistent room outlives its room store
//! (the database gives it back), and a groupchat message costs three Redis
//! round trips. No session is registered, so every stanza the room sends
//! comes back to the caller, `to` its recipient: what the tests read.

use super::*;
use starling_api::MucRoomStore;
use starling_bus::InProcessBus;
use starling_registry::MemoryRegistry;
use starling_storage::{Storage, StorageConfig};
use starling_xmpp::{parse_element, Limits};

use crate::engine::{MUC_ADMIN, MUC_OWNER, MUC_USER};
use crate::store::{MemoryRoomStore, RedisRoomStore};

const SERVICE: &str = "chat.shakespeare.lit";
const ROOM: &str = "coven@chat.shakespeare.lit";
const OWNER: &str = "crone1@shakespeare.lit/desktop";
const MEMBER: &str = "hag66@shakespeare.lit/pda";
const OUTSIDER: &str = "wiccarocks@shakespeare.lit/laptop";

async fn database() -> Arc<Storage> {
    let config = StorageConfig {
        url: "sqlite::memory:".into(),
        ..StorageConfig::default()
    };
    Arc::new(Storage::connect(&config).await.expect("in-memory storage"))
}

/// The room as the database holds it.
async fn stored(durable: &Storage) -> Option<starling_api::MucRoomRecord> {
    durable.muc_room(&ROOM.parse().unwrap()).await.unwrap()
}

fn service(store: Arc<dyn RoomStore>, durable: Arc<Storage>) -> MucService {
    MucService::new(
        Settings::for_domain(SERVICE),
        store,
        Arc::new(MemoryRegistry::new()),
        Arc::new(InProcessBus::new()),
    )
    .with_durable_rooms(durable)
}

async fn send(service: &MucService, from: &str, stanza: &str) -> Vec<Element> {
    let mut element = parse_element(stanza.as_bytes(), &Limits::default()).expect("valid xml");
    element.set_attr("from", from.to_string());
    service.handle(&element, None).await.expect("applied")
}

async fn join(service: &MucService, from: &str, nick: &str) -> Vec<Element> {
    send(
        service,
        from,
        &format!(
            "<presence xmlns='jabber:client' to='{ROOM}/{nick}'><x xmlns='{MUC}'/></presence>"
        ),
    )
    .await
}

fn error_condition(stanzas: &[Element]) -> Option<String> {
    stanzas
        .iter()
        .find_map(|stanza| stanza.get_child("error", ns::CLIENT))
        .and_then(|error| {
            error
                .children()
                .next()
                .map(|child| child.name().to_string())
        })
}

fn self_presence(stanzas: &[Element], to: &str) -> bool {
    stanzas.iter().any(|stanza| {
        stanza.name() == "presence"
            && stanza.attr("to") == Some(to)
            && stanza.get_child("x", MUC_USER).is_some_and(|x| {
                x.children()
                    .any(|status| status.name() == "status" && status.attr("code") == Some("110"))
            })
    })
}

/// The owner creates a persistent, members-only, named room, makes a member
/// and bans someone with a reason (XEP-0045 sections 10.1, 10.2, 9.3, 9.1).
async fn create_persistent_room(service: &MucService) {
    join(service, OWNER, "firstwitch").await;
    let configured = send(
        service,
        OWNER,
        &format!("<iq xmlns='jabber:client' type='set' id='c1' to='{ROOM}'><query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'>\
                  <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
                  <field var='muc#roomconfig_roomname'><value>The Coven</value></field>\
                  <field var='muc#roomconfig_persistentroom'><value>1</value></field>\
                  <field var='muc#roomconfig_membersonly'><value>1</value></field></x></query></iq>"),
    )
    .await;
    assert_eq!(
        stanza::stanza_type(&configured[0]),
        "result",
        "{configured:?}"
    );
    let changed = send(
        service,
        OWNER,
        &format!("<iq xmlns='jabber:client' type='set' id='m1' to='{ROOM}'><query xmlns='{MUC_ADMIN}'>\
                  <item affiliation='member' jid='hag66@shakespeare.lit'/>\
                  <item affiliation='outcast' jid='earlofcambridge@shakespeare.lit'><reason>Treason</reason></item></query></iq>"),
    )
    .await;
    assert_eq!(stanza::stanza_type(&changed[0]), "result", "{changed:?}");
    send(
        service,
        OWNER,
        &format!("<message xmlns='jabber:client' to='{ROOM}' type='groupchat'><subject>Fire Burn and Cauldron Bubble!</subject></message>"),
    )
    .await;
    // The owner leaves: the persistent room stays, with no occupant.
    send(
        service,
        OWNER,
        &format!("<presence xmlns='jabber:client' to='{ROOM}/firstwitch' type='unavailable'/>"),
    )
    .await;
}

#[tokio::test]
async fn a_persistent_room_outlives_its_room_store() {
    let durable = database().await;
    let first = service(Arc::new(MemoryRoomStore::default()), durable.clone());
    create_persistent_room(&first).await;
    let record = stored(&durable).await.expect("stored");
    assert_eq!(record.name, "The Coven");
    assert_eq!(record.subject, "Fire Burn and Cauldron Bubble!");

    // Another process (or Redis flushed): an empty room store, the same database.
    let second = service(Arc::new(MemoryRoomStore::default()), durable.clone());
    // Section 6.3: listed from the database.
    let items = send(
        &second,
        OUTSIDER,
        &format!(
            "<iq xmlns='jabber:client' type='get' id='i1' to='{SERVICE}'><query xmlns='{}'/></iq>",
            ns::DISCO_ITEMS
        ),
    )
    .await;
    let listed: Vec<(String, String)> = stanza::iq_payload(&items[0])
        .expect("items")
        .children()
        .map(|item| {
            (
                item.attr("jid").unwrap_or_default().to_string(),
                item.attr("name").unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(listed, vec![(ROOM.to_string(), "The Coven".to_string())]);
    // Members-only (section 7.2.6): the outsider is refused, the member enters.
    assert_eq!(
        error_condition(&join(&second, OUTSIDER, "intruder").await).as_deref(),
        Some("registration-required")
    );
    let entered = join(&second, MEMBER, "thirdwitch").await;
    assert!(self_presence(&entered, MEMBER), "{entered:?}");
    // Not a new room: no 201, and the subject as set.
    assert!(!entered
        .iter()
        .any(|stanza| stanza.to_xml().contains("'201'")));
    assert!(entered.iter().any(|stanza| stanza
        .get_child("subject", ns::CLIENT)
        .is_some_and(|subject| subject.text() == "Fire Burn and Cauldron Bubble!")));
    // The owner is still the owner, the ban and its reason are still there.
    let entered = join(&second, OWNER, "firstwitch").await;
    assert!(self_presence(&entered, OWNER));
    let bans = send(
        &second,
        OWNER,
        &format!("<iq xmlns='jabber:client' type='get' id='b1' to='{ROOM}'><query xmlns='{MUC_ADMIN}'><item affiliation='outcast'/></query></iq>"),
    )
    .await;
    let ban = stanza::iq_payload(&bans[0])
        .and_then(|query| query.get_child("item", MUC_ADMIN).cloned())
        .expect("one ban");
    assert_eq!(ban.attr("jid"), Some("earlofcambridge@shakespeare.lit"));
    assert_eq!(
        ban.get_child("reason", MUC_ADMIN)
            .map(|reason| reason.text())
            .as_deref(),
        Some("Treason")
    );

    // Made temporary (section 10.2): the database forgets it.
    send(
        &second,
        OWNER,
        &format!("<iq xmlns='jabber:client' type='set' id='c2' to='{ROOM}'><query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'>\
                  <field var='muc#roomconfig_persistentroom'><value>0</value></field></x></query></iq>"),
    )
    .await;
    assert_eq!(stored(&durable).await, None);
}

#[tokio::test]
async fn a_destroyed_room_leaves_the_database() {
    let durable = database().await;
    let service = service(Arc::new(MemoryRoomStore::default()), durable.clone());
    create_persistent_room(&service).await;
    // Section 10.9, by an owner who is not in the room.
    let destroyed = send(
        &service,
        OWNER,
        &format!("<iq xmlns='jabber:client' type='set' id='d1' to='{ROOM}'><query xmlns='{MUC_OWNER}'><destroy/></query></iq>"),
    )
    .await;
    assert_eq!(stanza::stanza_type(&destroyed[0]), "result");
    assert_eq!(stored(&durable).await, None);
    // Gone for good: a join creates a new, locked room (201).
    let entered = join(&service, MEMBER, "thirdwitch").await;
    assert!(entered
        .iter()
        .any(|stanza| stanza.to_xml().contains("'201'")));
}

#[tokio::test]
async fn a_temporary_room_is_not_written_to_the_database() {
    let durable = database().await;
    let service = service(Arc::new(MemoryRoomStore::default()), durable.clone());
    join(&service, OWNER, "firstwitch").await;
    send(
        &service,
        OWNER,
        &format!("<iq xmlns='jabber:client' type='set' id='c1' to='{ROOM}'><query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'/></query></iq>"),
    )
    .await;
    assert_eq!(stored(&durable).await, None);
}

#[tokio::test]
async fn a_groupchat_message_costs_three_redis_round_trips() {
    let Some(redis) = starling_redis_client::testing::test_client().await else {
        return;
    };
    let store = Arc::new(RedisRoomStore::new(redis));
    let service = service(store.clone(), database().await);
    create_persistent_room(&service).await;
    join(&service, OWNER, "firstwitch").await;
    join(&service, MEMBER, "thirdwitch").await;
    let message =
        format!("<message xmlns='jabber:client' to='{ROOM}' type='groupchat'><body>Harpier cries</body></message>");
    let before = store.round_trips();
    let record_before = store.peek(ROOM).await.unwrap();
    let reflected = send(&service, MEMBER, &message).await;
    // The record is not rewritten: the message went to the history list and
    // the room's last stanza-id beside it.
    assert_eq!(store.peek(ROOM).await.unwrap(), record_before);
    // Take the lease and read the room (one script), append to the history
    // (one script, the lease checked), release the lease. Before the
    // history had a list of its own: take, read, write the whole record,
    // index it, release (five).
    assert_eq!(store.round_trips() - before, 3);
    assert_eq!(reflected.len(), 2, "{reflected:?}");
    // The history has the message: a newcomer gets it (section 7.2.15).
    send(
        &service,
        MEMBER,
        &format!("<presence xmlns='jabber:client' to='{ROOM}/thirdwitch' type='unavailable'/>"),
    )
    .await;
    let entered = join(&service, MEMBER, "thirdwitch").await;
    assert!(entered.iter().any(|stanza| stanza
        .get_child("body", ns::CLIENT)
        .is_some_and(|body| body.text() == "Harpier cries")
        && stanza.get_child("delay", "urn:xmpp:delay").is_some()));
}

/// A database that refuses writes.
struct RefusingDatabase(Arc<Storage>);

#[async_trait::async_trait]
impl MucRoomStore for RefusingDatabase {
    async fn muc_room(
        &self,
        room: &starling_jid::BareJid,
    ) -> ApiResult<Option<starling_api::MucRoomRecord>> {
        self.0.muc_room(room).await
    }

    async fn put_muc_room(&self, _room: &starling_api::MucRoomRecord) -> ApiResult<bool> {
        Err(ApiError::Unavailable("database down".into()))
    }

    async fn remove_muc_room(&self, _room: &starling_jid::BareJid) -> ApiResult<bool> {
        Err(ApiError::Unavailable("database down".into()))
    }

    async fn listed_muc_rooms(
        &self,
        domain: &str,
        limit: u32,
    ) -> ApiResult<Vec<starling_api::ListedMucRoom>> {
        self.0.listed_muc_rooms(domain, limit).await
    }
}

#[tokio::test]
async fn a_change_the_database_refuses_is_undone() {
    let store: Arc<dyn RoomStore> = Arc::new(MemoryRoomStore::default());
    let service = MucService::new(
        Settings::for_domain(SERVICE),
        store.clone(),
        Arc::new(MemoryRegistry::new()),
        Arc::new(InProcessBus::new()),
    )
    .with_durable_rooms(Arc::new(RefusingDatabase(database().await)));
    join(&service, OWNER, "firstwitch").await;
    let mut submit = parse_element(
        format!("<iq xmlns='jabber:client' type='set' id='c1' to='{ROOM}'><query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'>\
                 <field var='muc#roomconfig_persistentroom'><value>1</value></field></x></query></iq>").as_bytes(),
        &Limits::default(),
    )
    .unwrap();
    submit.set_attr("from", OWNER.to_string());
    // The sender learns it failed (the router answers with the error).
    assert!(matches!(
        service.handle(&submit, None).await,
        Err(ApiError::Unavailable(_))
    ));
    // The room is as it was: locked, temporary.
    let record = store.peek(ROOM).await.unwrap().expect("the room");
    let room: Room = serde_json::from_str(&record).unwrap();
    assert!(room.locked);
    assert!(!room.config.persistent);
}

#[tokio::test]
async fn a_record_holding_its_history_moves_it_to_the_list() {
    let store: Arc<dyn RoomStore> = Arc::new(MemoryRoomStore::default());
    let service = service(store.clone(), database().await);
    join(&service, OWNER, "firstwitch").await;
    send(
        &service,
        OWNER,
        &format!("<iq xmlns='jabber:client' type='set' id='c1' to='{ROOM}'><query xmlns='{MUC_OWNER}'><x xmlns='jabber:x:data' type='submit'/></query></iq>"),
    )
    .await;
    // The record as an earlier version wrote it: the history inside.
    let (lease, loaded) = store.acquire(ROOM, false).await.unwrap();
    let mut record: serde_json::Value = serde_json::from_str(&loaded.record.unwrap()).unwrap();
    record["history"] = serde_json::json!([{
        "xml": format!("<message xmlns='jabber:client' from='{ROOM}/firstwitch' type='groupchat'><body>of old</body></message>"),
        "at": 1_700_000_000u64,
        "sender": "crone1@shakespeare.lit",
    }]);
    let record = record.to_string();
    let limits = HistoryLimits {
        max_stanzas: 50,
        max_bytes: 1 << 20,
    };
    store
        .save(&lease, RecordWrite::Put(&record), &[], None, limits)
        .await
        .unwrap();
    store.release(lease).await;
    // A message: the old entry goes to the list before it, the record loses it.
    send(
        &service,
        OWNER,
        &format!("<message xmlns='jabber:client' to='{ROOM}' type='groupchat'><body>anew</body></message>"),
    )
    .await;
    let (lease, loaded) = store.acquire(ROOM, true).await.unwrap();
    store.release(lease).await;
    assert!(!loaded.record.unwrap().contains("of old"));
    assert_eq!(loaded.history.len(), 2);
    assert!(loaded.history[0].contains("of old") && loaded.history[1].contains("anew"));
}
