//! The `ResumptionStore` contract (XEP-0198 state), one suite run against
//! `MemoryResumption` and `RedisResumption` on the real Redis; and the
//! registry's `set_resumption`/`relocate`, against both registries.

use starling_api::resumption::{
    detached_addr, JournalEntry, Parked, ResumableStream, ResumeRefused,
};
use starling_api::{ResumptionStore, SessionAddr, SessionRecord, SessionRegistry};
use starling_jid::{BareJid, FullJid};
use starling_redis_client::testing::test_client;

use crate::{MemoryRegistry, MemoryResumption, RedisRegistry, RedisResumption};

fn addr(node: &str, conn: u64) -> SessionAddr {
    SessionAddr {
        node: node.into(),
        conn,
    }
}

fn owner() -> BareJid {
    "juliet@example.com".parse().unwrap()
}

fn jid() -> FullJid {
    "juliet@example.com/balcony".parse().unwrap()
}

fn stream(id: &str, timeout_secs: u64) -> ResumableStream {
    ResumableStream {
        id: id.into(),
        jid: jid(),
        addr: addr("cm1", 7),
        timeout_secs,
        max_unacked: 4,
    }
}

fn entry(
    id: &str,
    at: &SessionAddr,
    newly_acked: u32,
    acked: u32,
    h_in: u32,
    appended: &[&str],
) -> JournalEntry {
    JournalEntry {
        id: id.into(),
        addr: at.clone(),
        newly_acked,
        acked,
        h_in,
        appended: appended.iter().map(|s| s.to_string()).collect(),
        consumed: Vec::new(),
    }
}

async fn journal_detach_park_and_resume(store: &dyn ResumptionStore) {
    let at = addr("cm1", 7);
    store.enable(stream("s1", 300)).await.unwrap();
    let held = store
        .journal(&[
            entry("s1", &at, 0, 0, 0, &["<m1/>", "<m2/>", "<m3/>"]),
            entry("s1", &at, 1, 1, 2, &[]),
            // Another address's entry is refused (the stream moved).
            entry("s1", &addr("cm2", 1), 0, 1, 2, &["<lost/>"]),
        ])
        .await
        .unwrap();
    assert_eq!(held, vec![true, true, false]);
    assert!(store.detach("s1", &at, false).await.unwrap());
    // Detached: only the owner finds it, and only a plausible h is taken.
    assert_eq!(
        store
            .peek("s1", &"romeo@example.com".parse().unwrap(), Some(1))
            .await
            .unwrap(),
        Err(ResumeRefused::NotFound)
    );
    assert_eq!(
        store.peek("s1", &owner(), Some(4)).await.unwrap(),
        Err(ResumeRefused::HandledCountTooHigh {
            h: 4,
            sent: 3,
            h_in: 2
        })
    );
    assert_eq!(
        store.peek("s1", &owner(), Some(2)).await.unwrap(),
        Ok((jid(), detached_addr(7)))
    );
    assert_eq!(store.park("s1", "<m4/>").await.unwrap(), Parked::Queued);
    assert_eq!(store.park("s1", "<m5/>").await.unwrap(), Parked::Queued);
    // The bound (4) counts the unacked and the parked.
    assert_eq!(store.park("s1", "<m6/>").await.unwrap(), Parked::Full);
    assert_eq!(store.park("nope", "<m6/>").await.unwrap(), Parked::Gone);
    let here = addr("cm2", 9);
    let resumed = store
        .resume("s1", &owner(), Some(2), &here, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resumed.jid, jid());
    assert_eq!(resumed.previous, detached_addr(7));
    assert_eq!(
        (
            resumed.h_in,
            resumed.acked,
            resumed.timeout_secs,
            resumed.max_unacked
        ),
        (2, 2, 300, 4)
    );
    assert_eq!(resumed.unacked, vec!["<m3/>", "<m4/>", "<m5/>"]);
    // The old address can write no more; the new one can.
    assert!(!store.detach("s1", &at, false).await.unwrap());
    assert_eq!(
        store
            .journal(&[entry("s1", &at, 0, 2, 2, &["<x/>"])])
            .await
            .unwrap(),
        vec![false]
    );
    assert_eq!(
        store
            .journal(&[entry("s1", &here, 2, 4, 3, &["<m6/>"])])
            .await
            .unwrap(),
        vec![true]
    );
    // Ending returns what was not acknowledged, once.
    assert_eq!(store.end("s1", &at).await.unwrap(), None);
    assert_eq!(
        store.end("s1", &here).await.unwrap(),
        Some(vec!["<m5/>".to_string(), "<m6/>".to_string()])
    );
    assert_eq!(store.end("s1", &here).await.unwrap(), None);
    assert_eq!(
        store.peek("s1", &owner(), None).await.unwrap(),
        Err(ResumeRefused::NotFound)
    );
}

async fn resume_without_h_and_counters_wrap(store: &dyn ResumptionStore) {
    let at = addr("cm1", 7);
    store.enable(stream("s2", 300)).await.unwrap();
    // The counters wrap at 2^32 (XEP-0198 section 4).
    let near = u32::MAX - 1;
    store
        .journal(&[entry("s2", &at, 0, near, 5, &["<a/>", "<b/>", "<c/>"])])
        .await
        .unwrap();
    let resumed = store
        .resume("s2", &owner(), Some(0), &addr("cm2", 1), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resumed.unacked, vec!["<c/>"], "MAX-1 + 2 wraps to 0");
    assert_eq!(resumed.acked, 0);
    // Without h nothing more is acknowledged.
    let again = store
        .resume("s2", &owner(), None, &addr("cm3", 1), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.acked, again.unacked.len()), (0, 1));
    assert_eq!(again.previous, addr("cm2", 1));
    store.end("s2", &addr("cm3", 1)).await.unwrap();
}

async fn expiry_hands_each_stream_out_once(store: &dyn ResumptionStore) {
    let at = addr("cm1", 7);
    store.enable(stream("s3", 0)).await.unwrap();
    store.enable(stream("s4", 300)).await.unwrap();
    store
        .journal(&[entry("s3", &at, 0, 0, 0, &["<q/>"])])
        .await
        .unwrap();
    // Attached streams never expire.
    assert!(store
        .take_expired(10)
        .await
        .unwrap()
        .iter()
        .all(|e| e.id != "s3"));
    assert!(store.detach("s3", &at, false).await.unwrap());
    assert!(store.detach("s4", &at, false).await.unwrap());
    assert_eq!(store.park("s3", "<p/>").await.unwrap(), Parked::Queued);
    let expired = store.take_expired(10).await.unwrap();
    let mine: Vec<_> = expired
        .iter()
        .filter(|e| e.id == "s3" || e.id == "s4")
        .collect();
    assert_eq!(mine.len(), 1, "only the stream whose timeout passed");
    assert_eq!(mine[0].jid, jid());
    assert_eq!(mine[0].addr, detached_addr(7));
    assert_eq!(mine[0].stanzas, vec!["<q/>", "<p/>"]);
    assert!(store
        .take_expired(10)
        .await
        .unwrap()
        .iter()
        .all(|e| e.id != "s3"));
    assert_eq!(store.park("s3", "<late/>").await.unwrap(), Parked::Gone);
    let resumed = store
        .resume("s4", &owner(), Some(0), &at, false)
        .await
        .unwrap();
    assert!(resumed.is_ok());
    store.end("s4", &at).await.unwrap();
}

async fn registry_relocates_and_marks_resumable(registry: &dyn SessionRegistry) {
    let jid: FullJid = "romeo@example.com/orchard".parse().unwrap();
    registry
        .bind(SessionRecord::new(jid.clone(), addr("cm1", 1)))
        .await
        .unwrap();
    registry
        .set_presence(&jid, &addr("cm1", 1), true, 5, Some("<presence/>".into()))
        .await
        .unwrap();
    assert!(registry
        .set_resumption(&jid, &addr("cm1", 1), "id-1")
        .await
        .unwrap());
    assert!(!registry
        .set_resumption(&jid, &addr("cm9", 1), "id-2")
        .await
        .unwrap());
    assert!(!registry
        .relocate(&jid, &addr("cm9", 1), &detached_addr(1))
        .await
        .unwrap());
    assert!(registry
        .relocate(&jid, &addr("cm1", 1), &detached_addr(1))
        .await
        .unwrap());
    let record = registry.session(&jid).await.unwrap().unwrap();
    assert_eq!(record.addr, detached_addr(1));
    // Everything else of the record is kept: contacts see no change.
    assert_eq!((record.available, record.priority), (true, 5));
    assert_eq!(record.resumption.as_deref(), Some("id-1"));
    assert!(registry
        .relocate(&jid, &detached_addr(1), &addr("cm2", 4))
        .await
        .unwrap());
    assert_eq!(registry.node_sessions("cm2").await.unwrap().len(), 1);
    assert!(registry.node_sessions("cm1").await.unwrap().is_empty());
    assert!(registry
        .unbind(&jid, &addr("cm2", 4))
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn memory_resumption_contract() {
    let store = MemoryResumption::new();
    journal_detach_park_and_resume(&store).await;
    resume_without_h_and_counters_wrap(&store).await;
    expiry_hands_each_stream_out_once(&store).await;
    registry_relocates_and_marks_resumable(&MemoryRegistry::new()).await;
}

#[tokio::test]
async fn redis_resumption_contract() {
    let Some(client) = test_client().await else {
        return;
    };
    let store = RedisResumption::new(client.clone());
    journal_detach_park_and_resume(&store).await;
    resume_without_h_and_counters_wrap(&store).await;
    expiry_hands_each_stream_out_once(&store).await;
    registry_relocates_and_marks_resumable(&RedisRegistry::new(client)).await;
}

/// Redis only: what was in flight to a node that died joins the queue after
/// what the node journaled and before what was parked meanwhile; what a live
/// node consumed does not.
#[tokio::test]
async fn in_flight_stanzas_of_a_dead_node_are_taken_over_in_order() {
    let Some(client) = test_client().await else {
        return;
    };
    let store = RedisResumption::new(client.clone());
    let at = addr("cm1", 7);
    store.enable(stream("f1", 300)).await.unwrap();
    let in_flight = |stanza: &str| {
        let client = client.clone();
        let stanza = stanza.to_string();
        async move {
            let mut connection = client.connection();
            starling_redis_client::redis::cmd("RPUSH")
                .arg(client.resumption_inflight_key("f1"))
                .arg(stanza)
                .query_async::<()>(&mut connection)
                .await
                .unwrap();
        }
    };
    // Published to cm1: two journaled by it (one of them consumed from the
    // in-flight record by the journal), one superseded (consumed), one lost
    // with the node.
    for stanza in ["<j1/>", "<j2/>", "<gone/>", "<lost/>"] {
        in_flight(stanza).await;
    }
    let mut journaled = entry("f1", &at, 0, 0, 0, &["<j1/>", "<j2/>"]);
    journaled.consumed.push("<gone/>".into());
    assert_eq!(store.journal(&[journaled]).await.unwrap(), vec![true]);
    // The node died; the router parks what comes next.
    assert_eq!(store.park("f1", "<p1/>").await.unwrap(), Parked::Queued);
    let resumed = store
        .resume("f1", &owner(), Some(1), &addr("cm2", 1), true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resumed.unacked, vec!["<j2/>", "<lost/>", "<p1/>"]);
    // A resumption from a live node leaves the in-flight record to that node.
    in_flight("<late/>").await;
    let again = store
        .resume("f1", &owner(), None, &addr("cm3", 1), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.unacked, vec!["<j2/>", "<lost/>", "<p1/>"]);
    assert_eq!(
        store
            .end("f1", &addr("cm3", 1))
            .await
            .unwrap()
            .map(|s| s.len()),
        Some(3)
    );
}
