//! The `SessionRegistry` contract, one suite run against `MemoryRegistry`,
//! `RedisRegistry` on the real Redis, and `RedisRegistry` on a throw-away
//! 3-master Redis Cluster; plus the Redis-only parts (liveness, janitor,
//! re-registration after a Redis restart).

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use parking_lot::Mutex;
use starling_api::{ApiError, SessionAddr, SessionRecord, SessionRegistry};
use starling_jid::{FullJid, Jid};
use starling_redis_client::testing::{test_client, RedisClusterHarness, RedisServerHarness};
use starling_redis_client::RedisClient;
use starling_testing::wait_until;

use crate::{DeadSessionCallback, Janitor, MemoryRegistry, NodeLiveness, RedisRegistry};

fn addr(node: &str, conn: u64) -> SessionAddr {
    SessionAddr {
        node: node.into(),
        conn,
    }
}

fn full(jid: &str) -> FullJid {
    jid.parse().unwrap()
}

/// How long a test waits for Redis and the background tasks to converge.
const WAIT: Duration = Duration::from_secs(10);

async fn newest_bind_replaces_and_stale_unbind_is_ignored(registry: &dyn SessionRegistry) {
    let jid = full("a@example.com/phone");
    let first = registry
        .bind(SessionRecord::new(jid.clone(), addr("cm1", 1)))
        .await
        .unwrap();
    assert!(first.replaced.is_none());
    let second = registry
        .bind(SessionRecord::new(jid.clone(), addr("cm2", 2)))
        .await
        .unwrap();
    assert_eq!(
        second.replaced.map(|record| record.addr),
        Some(addr("cm1", 1))
    );
    assert_eq!(registry.unbind(&jid, &addr("cm1", 1)).await.unwrap(), None);
    assert_eq!(registry.sessions(jid.bare()).await.unwrap().len(), 1);
    let removed = registry
        .unbind(&jid, &addr("cm2", 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(removed.jid, jid);
    assert!(registry.sessions(jid.bare()).await.unwrap().is_empty());
    assert_eq!(registry.session(&jid).await.unwrap(), None);
    assert_eq!(registry.unbind(&jid, &addr("cm2", 2)).await.unwrap(), None);
}

async fn presence_updates_only_the_current_session(registry: &dyn SessionRegistry) {
    let jid = full("b@example.com/phone");
    registry
        .bind(SessionRecord::new(jid.clone(), addr("cm1", 1)))
        .await
        .unwrap();
    assert!(!registry
        .set_presence(&jid, &addr("cm1", 9), true, 5, None)
        .await
        .unwrap());
    assert!(!registry
        .set_presence(&full("b@example.com/other"), &addr("cm1", 1), true, 5, None)
        .await
        .unwrap());
    let presence =
        "<presence xmlns='jabber:client'><show>away</show><status>a/b \"c\" é</status></presence>";
    assert!(registry
        .set_presence(&jid, &addr("cm1", 1), true, -3, Some(presence.into()))
        .await
        .unwrap());
    let record = registry.session(&jid).await.unwrap().unwrap();
    assert!(record.available);
    assert_eq!(record.priority, -3);
    assert_eq!(record.presence.as_deref(), Some(presence));
    assert!(registry
        .set_presence(&jid, &addr("cm1", 1), false, 0, None)
        .await
        .unwrap());
    let record = registry.session(&jid).await.unwrap().unwrap();
    assert!(!record.available);
    assert_eq!(record.presence, None);
}

async fn interest_is_recorded_for_the_current_session_only(registry: &dyn SessionRegistry) {
    let jid = full("c@example.com/phone");
    registry
        .bind(SessionRecord::new(jid.clone(), addr("cm1", 1)))
        .await
        .unwrap();
    assert!(!registry
        .set_interested(&jid, &addr("cm2", 1))
        .await
        .unwrap());
    assert!(!registry.session(&jid).await.unwrap().unwrap().interested);
    assert!(registry
        .set_interested(&jid, &addr("cm1", 1))
        .await
        .unwrap());
    assert!(registry
        .set_presence(&jid, &addr("cm1", 1), true, 1, None)
        .await
        .unwrap());
    let record = registry.session(&jid).await.unwrap().unwrap();
    assert!(record.interested && record.available);
}

async fn carbons_are_switched_for_the_current_session_only(registry: &dyn SessionRegistry) {
    let jid = full("g@example.com/phone");
    registry
        .bind(SessionRecord::new(jid.clone(), addr("cm1", 1)))
        .await
        .unwrap();
    assert!(!registry.session(&jid).await.unwrap().unwrap().carbons);
    // A replaced session's late request does not switch its successor.
    assert!(!registry
        .set_carbons(&jid, &addr("cm2", 1), true)
        .await
        .unwrap());
    assert!(!registry.session(&jid).await.unwrap().unwrap().carbons);
    assert!(registry
        .set_carbons(&jid, &addr("cm1", 1), true)
        .await
        .unwrap());
    // The other fields are kept, and a presence update keeps carbons.
    assert!(registry
        .set_presence(&jid, &addr("cm1", 1), true, 2, None)
        .await
        .unwrap());
    assert!(registry
        .set_interested(&jid, &addr("cm1", 1))
        .await
        .unwrap());
    let record = registry.session(&jid).await.unwrap().unwrap();
    assert!(record.carbons && record.available && record.interested);
    assert_eq!(record.priority, 2);
    assert!(registry
        .set_carbons(&jid, &addr("cm1", 1), false)
        .await
        .unwrap());
    assert!(!registry.session(&jid).await.unwrap().unwrap().carbons);
    assert!(!registry
        .set_carbons(&full("g@example.com/gone"), &addr("cm1", 1), true)
        .await
        .unwrap());
}

async fn blocklist_interest_is_recorded_for_the_current_session_only(
    registry: &dyn SessionRegistry,
) {
    let jid = full("k@example.com/phone");
    registry
        .bind(SessionRecord::new(jid.clone(), addr("cm1", 1)))
        .await
        .unwrap();
    assert!(!registry
        .set_blocklist_interest(&jid, &addr("cm2", 1))
        .await
        .unwrap());
    assert!(
        !registry
            .session(&jid)
            .await
            .unwrap()
            .unwrap()
            .blocklist_interest
    );
    assert!(registry
        .set_blocklist_interest(&jid, &addr("cm1", 1))
        .await
        .unwrap());
    // A presence update and the other flags keep it.
    assert!(registry
        .set_presence(&jid, &addr("cm1", 1), true, 1, None)
        .await
        .unwrap());
    assert!(registry
        .set_carbons(&jid, &addr("cm1", 1), true)
        .await
        .unwrap());
    let record = registry.session(&jid).await.unwrap().unwrap();
    assert!(record.blocklist_interest && record.carbons && !record.interested);
}

async fn sessions_lists_every_resource_of_one_account(registry: &dyn SessionRegistry) {
    for (jid, conn) in [
        ("d@example.com/one", 1),
        ("d@example.com/two", 2),
        ("e@example.com/one", 3),
    ] {
        registry
            .bind(SessionRecord::new(full(jid), addr("cm1", conn)))
            .await
            .unwrap();
    }
    let mut resources: Vec<String> = registry
        .sessions(full("d@example.com/x").bare())
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.jid.resource().to_string())
        .collect();
    resources.sort();
    assert_eq!(resources, ["one", "two"]);
}

async fn directed_presence_is_remembered_and_taken(registry: &dyn SessionRegistry) {
    let jid = full("f@example.com/phone");
    registry
        .bind(SessionRecord::new(jid.clone(), addr("cm1", 1)))
        .await
        .unwrap();
    let room: Jid = "room@muc.example.com/f".parse().unwrap();
    let peer: Jid = "peer@example.org".parse().unwrap();
    registry
        .set_directed_presence(&jid, &room, true, 2)
        .await
        .unwrap();
    registry
        .set_directed_presence(&jid, &peer, true, 2)
        .await
        .unwrap();
    registry
        .set_directed_presence(&jid, &peer, false, 2)
        .await
        .unwrap();
    assert_eq!(
        registry.take_directed_presence(&jid).await.unwrap(),
        vec![room.clone()]
    );
    // Bounded per session: a third addressee is refused, one already held is not.
    let third: Jid = "third@example.org".parse().unwrap();
    for to in [&room, &peer] {
        assert!(registry
            .set_directed_presence(&jid, to, true, 2)
            .await
            .unwrap());
    }
    assert!(!registry
        .set_directed_presence(&jid, &third, true, 2)
        .await
        .unwrap());
    assert!(registry
        .set_directed_presence(&jid, &peer, true, 2)
        .await
        .unwrap());
    assert!(registry
        .set_directed_presence(&jid, &peer, false, 2)
        .await
        .unwrap());
    assert!(registry
        .set_directed_presence(&jid, &third, true, 2)
        .await
        .unwrap());
    let mut held = registry.take_directed_presence(&jid).await.unwrap();
    held.sort_by_key(|to| to.to_string());
    assert_eq!(held, vec![room.clone(), third]);
    assert!(registry
        .take_directed_presence(&jid)
        .await
        .unwrap()
        .is_empty());
    // A replaced session's directed presence goes with it.
    registry
        .set_directed_presence(&jid, &room, true, 2)
        .await
        .unwrap();
    registry
        .bind(SessionRecord::new(jid.clone(), addr("cm1", 2)))
        .await
        .unwrap();
    assert!(registry
        .take_directed_presence(&jid)
        .await
        .unwrap()
        .is_empty());
}

async fn node_sessions_follow_the_records(registry: &dyn SessionRegistry) {
    registry
        .bind(SessionRecord::new(
            full("g@example.com/a"),
            addr("node-a", 1),
        ))
        .await
        .unwrap();
    registry
        .bind(SessionRecord::new(
            full("g@example.com/b"),
            addr("node-a", 2),
        ))
        .await
        .unwrap();
    registry
        .bind(SessionRecord::new(
            full("h@example.com/a"),
            addr("node-b", 1),
        ))
        .await
        .unwrap();
    // The resource moves to node-b: node-a no longer has it.
    registry
        .bind(SessionRecord::new(
            full("g@example.com/b"),
            addr("node-b", 2),
        ))
        .await
        .unwrap();
    let on_a: Vec<FullJid> = registry
        .node_sessions("node-a")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.jid)
        .collect();
    assert_eq!(on_a, vec![full("g@example.com/a")]);
    let mut on_b: Vec<String> = registry
        .node_sessions("node-b")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.jid.to_string())
        .collect();
    on_b.sort();
    assert_eq!(on_b, ["g@example.com/b", "h@example.com/a"]);
    registry
        .unbind(&full("g@example.com/a"), &addr("node-a", 1))
        .await
        .unwrap();
    assert!(registry.node_sessions("node-a").await.unwrap().is_empty());
    assert!(registry
        .node_sessions("node-nobody")
        .await
        .unwrap()
        .is_empty());
}

async fn concurrent_binds_end_with_one_session(registry: Arc<dyn SessionRegistry>) {
    let jid = full("race@example.com/same");
    let binds = (0..50u64).map(|conn| {
        let registry = registry.clone();
        let record = SessionRecord::new(jid.clone(), addr(&format!("cm{}", conn % 3), conn));
        tokio::spawn(async move { registry.bind(record).await.unwrap() })
    });
    let outcomes = futures::future::join_all(binds).await;
    let replacements = outcomes
        .into_iter()
        .filter(|outcome| outcome.as_ref().unwrap().replaced.is_some())
        .count();
    assert_eq!(replacements, 49);
    let sessions = registry.sessions(jid.bare()).await.unwrap();
    assert_eq!(sessions.len(), 1);
    let survivor = &sessions[0].addr;
    let mut indexed = 0;
    for node in ["cm0", "cm1", "cm2"] {
        for record in registry.node_sessions(node).await.unwrap() {
            assert_eq!(&record.addr, survivor);
            indexed += 1;
        }
    }
    assert_eq!(indexed, 1);
}

async fn the_resource_limit_holds_under_simultaneous_binds(registry: Arc<dyn SessionRegistry>) {
    // 20 logins of one account with 20 different resources at once, limit 5:
    // exactly 5 are bound, the others refused, nothing in between.
    let binds = (0..20u64).map(|conn| {
        let registry = registry.clone();
        let record = SessionRecord::new(
            full(&format!("busy@example.com/r{conn}")),
            addr(&format!("cm{}", conn % 2), conn),
        );
        tokio::spawn(async move { registry.bind_limited(record, 5).await })
    });
    let outcomes = futures::future::join_all(binds).await;
    let bound = outcomes
        .iter()
        .filter(|outcome| outcome.as_ref().unwrap().is_ok())
        .count();
    let refused = outcomes
        .iter()
        .filter(|outcome| matches!(outcome.as_ref().unwrap(), Err(ApiError::LimitReached(_))))
        .count();
    assert_eq!((bound, refused), (5, 15));
    let sessions = registry
        .sessions(&"busy@example.com".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(sessions.len(), 5);
    // Rebinding a bound full JID replaces it and is not refused.
    let again = SessionRecord::new(sessions[0].jid.clone(), addr("cm9", 99));
    assert!(registry
        .bind_limited(again, 5)
        .await
        .unwrap()
        .replaced
        .is_some());
    // Refused binds left nothing in the node indexes.
    let mut indexed = 0;
    for node in ["cm0", "cm1", "cm9"] {
        indexed += registry.node_sessions(node).await.unwrap().len();
    }
    assert_eq!(indexed, 5);
}

async fn run_contract(
    make: impl Fn() -> futures::future::BoxFuture<'static, Arc<dyn SessionRegistry>>,
) {
    newest_bind_replaces_and_stale_unbind_is_ignored(&*make().await).await;
    presence_updates_only_the_current_session(&*make().await).await;
    interest_is_recorded_for_the_current_session_only(&*make().await).await;
    carbons_are_switched_for_the_current_session_only(&*make().await).await;
    blocklist_interest_is_recorded_for_the_current_session_only(&*make().await).await;
    sessions_lists_every_resource_of_one_account(&*make().await).await;
    directed_presence_is_remembered_and_taken(&*make().await).await;
    node_sessions_follow_the_records(&*make().await).await;
    concurrent_binds_end_with_one_session(make().await).await;
    the_resource_limit_holds_under_simultaneous_binds(make().await).await;
}

#[tokio::test]
async fn memory_registry_meets_the_contract() {
    run_contract(|| async { Arc::new(MemoryRegistry::new()) as Arc<dyn SessionRegistry> }.boxed())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_registry_meets_the_contract() {
    if test_client().await.is_none() {
        return;
    }
    run_contract(|| {
        async {
            Arc::new(RedisRegistry::new(test_client().await.unwrap())) as Arc<dyn SessionRegistry>
        }
        .boxed()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_registry_meets_the_contract() {
    let Some(cluster) = RedisClusterHarness::start().await else {
        return;
    };
    let config = cluster.config();
    run_contract(move || {
        let mut config = config.clone();
        config.key_prefix = starling_redis_client::testing::random_prefix();
        async move {
            Arc::new(RedisRegistry::new(
                RedisClient::connect(&config).await.unwrap(),
            )) as Arc<dyn SessionRegistry>
        }
        .boxed()
    })
    .await;
    // Janitor clean-up across slots, in the cluster too.
    let client = RedisClient::connect(&cluster.config()).await.unwrap();
    janitor_removes_the_sessions_of_a_dead_node(client).await;
}

#[tokio::test]
async fn liveness_key_lives_while_refreshed_and_expires_after() {
    let Some(client) = test_client().await else {
        return;
    };
    let liveness =
        NodeLiveness::spawn(client.clone(), "cm-live".into(), Duration::from_millis(600));
    wait_until("the node key is written", WAIT, async || {
        NodeLiveness::is_alive(&client, "cm-live").await.unwrap()
    })
    .await;
    // Several TTLs later it is still alive: the task refreshes it. Watched all
    // along: the key never expires, and its TTL goes back up at each refresh
    // (every 200 ms), nine times over three TTLs.
    let mut refreshes = 0;
    let mut last_ttl_ms = i64::MAX;
    wait_until("nine refreshes of the node key", WAIT, async || {
        let ttl_ms: i64 = starling_redis_client::redis::cmd("PTTL")
            .arg(client.node_key("cm-live"))
            .query_async(&mut client.connection())
            .await
            .unwrap();
        assert!(ttl_ms > 0, "the node key of a live node expired: {ttl_ms}");
        if ttl_ms > last_ttl_ms {
            refreshes += 1;
        }
        last_ttl_ms = ttl_ms;
        refreshes >= 9
    })
    .await;
    assert!(NodeLiveness::is_alive(&client, "cm-live").await.unwrap());
    assert_eq!(*liveness.key_lost().borrow(), 0);
    liveness.stop().await.unwrap();
    assert!(!NodeLiveness::is_alive(&client, "cm-live").await.unwrap());

    // Dropped without stop(): the key goes too.
    let liveness =
        NodeLiveness::spawn(client.clone(), "cm-dropped".into(), Duration::from_secs(30));
    wait_until("the node key is written", WAIT, async || {
        NodeLiveness::is_alive(&client, "cm-dropped").await.unwrap()
    })
    .await;
    drop(liveness);
    wait_until("the dropped node key is deleted", WAIT, async || {
        !NodeLiveness::is_alive(&client, "cm-dropped").await.unwrap()
    })
    .await;
}

#[tokio::test]
async fn liveness_notices_a_lost_key() {
    let Some(client) = test_client().await else {
        return;
    };
    let liveness =
        NodeLiveness::spawn(client.clone(), "cm-lost".into(), Duration::from_millis(300));
    wait_until("the node key is written", WAIT, async || {
        NodeLiveness::is_alive(&client, "cm-lost").await.unwrap()
    })
    .await;
    let mut connection = client.connection();
    starling_redis_client::redis::cmd("DEL")
        .arg(client.node_key("cm-lost"))
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
    let lost = liveness.key_lost();
    wait_until("the lost key is reported", WAIT, async || {
        *lost.borrow() >= 1
    })
    .await;
    assert!(NodeLiveness::is_alive(&client, "cm-lost").await.unwrap());
    liveness.stop().await.unwrap();
}

fn recording_callback() -> (DeadSessionCallback, Arc<Mutex<Vec<SessionRecord>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_by_callback = seen.clone();
    let callback: DeadSessionCallback = Arc::new(move |record| {
        let seen = seen_by_callback.clone();
        async move { seen.lock().push(record) }.boxed()
    });
    (callback, seen)
}

async fn janitor_removes_the_sessions_of_a_dead_node(client: RedisClient) {
    let registry = Arc::new(RedisRegistry::new(client.clone()));
    let alive = NodeLiveness::spawn(client.clone(), "cm-alive".into(), Duration::from_secs(30));
    wait_until("the live node key is written", WAIT, async || {
        NodeLiveness::is_alive(&client, "cm-alive").await.unwrap()
    })
    .await;
    // cm-dead never had (or lost) its key.
    registry
        .bind(SessionRecord::new(
            full("x@example.com/a"),
            addr("cm-dead", 1),
        ))
        .await
        .unwrap();
    registry
        .bind(SessionRecord::new(
            full("y@example.com/a"),
            addr("cm-dead", 2),
        ))
        .await
        .unwrap();
    registry
        .bind(SessionRecord::new(
            full("x@example.com/b"),
            addr("cm-alive", 1),
        ))
        .await
        .unwrap();
    // A session that moved from cm-dead to cm-alive leaves a stale entry that must not be removed.
    registry
        .bind(SessionRecord::new(
            full("z@example.com/a"),
            addr("cm-dead", 3),
        ))
        .await
        .unwrap();
    registry
        .bind(SessionRecord::new(
            full("z@example.com/a"),
            addr("cm-alive", 3),
        ))
        .await
        .unwrap();

    let (callback, seen) = recording_callback();
    let (first, second) = tokio::join!(
        Janitor::sweep(&registry, &callback),
        Janitor::sweep(&registry, &callback)
    );
    assert_eq!(first.unwrap() + second.unwrap(), 2);
    assert_eq!(Janitor::sweep(&registry, &callback).await.unwrap(), 0);
    let mut removed: Vec<String> = seen
        .lock()
        .iter()
        .map(|record| record.jid.to_string())
        .collect();
    removed.sort();
    assert_eq!(removed, ["x@example.com/a", "y@example.com/a"]);
    assert!(registry.node_sessions("cm-dead").await.unwrap().is_empty());
    assert_eq!(
        registry
            .sessions(full("x@example.com/a").bare())
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        registry
            .session(&full("z@example.com/a"))
            .await
            .unwrap()
            .unwrap()
            .addr,
        addr("cm-alive", 3)
    );
    assert_eq!(registry.node_sessions("cm-alive").await.unwrap().len(), 2);
    alive.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn janitor_sweep_is_idempotent() {
    let Some(client) = test_client().await else {
        return;
    };
    janitor_removes_the_sessions_of_a_dead_node(client).await;
}

/// Returns once the janitors have run at least one whole sweep that started
/// after the call. Sweeps run one after another: a session of a node that
/// never lived is removed by a sweep that started after it was bound, and a
/// second one, bound once the first is gone, by a sweep that started after the
/// first one's sweep ended.
async fn wait_for_a_whole_sweep(
    registry: &RedisRegistry,
    removed: &Mutex<Vec<SessionRecord>>,
    round: &str,
) {
    for (conn, marker) in [(1, "first"), (2, "second")] {
        let jid = full(&format!("{marker}-{round}@example.com/marker"));
        registry
            .bind(SessionRecord::new(
                jid.clone(),
                addr("cm-never-lived", conn),
            ))
            .await
            .unwrap();
        wait_until(
            &format!("a sweep to remove the {marker} marker session"),
            WAIT,
            async || removed.lock().iter().any(|record| record.jid == jid),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_janitor_leads_and_cleans_up_an_expired_node() {
    let Some(client) = test_client().await else {
        return;
    };
    let registry = Arc::new(RedisRegistry::new(client.clone()));
    let liveness = NodeLiveness::spawn(
        client.clone(),
        "cm-expiring".into(),
        Duration::from_millis(600),
    );
    wait_until("the node key is written", WAIT, async || {
        NodeLiveness::is_alive(&client, "cm-expiring")
            .await
            .unwrap()
    })
    .await;
    for conn in 0..3u64 {
        let jid = full(&format!("user{conn}@example.com/res"));
        registry
            .bind(SessionRecord::new(jid, addr("cm-expiring", conn)))
            .await
            .unwrap();
    }
    let (callback, removed) = recording_callback();
    let calls = || {
        removed
            .lock()
            .iter()
            .filter(|record| record.addr.node == "cm-expiring")
            .count()
    };
    let janitors: Vec<Janitor> = (0..2)
        .map(|_| {
            Janitor::spawn(
                client.clone(),
                registry.clone(),
                callback.clone(),
                Duration::from_millis(100),
            )
        })
        .collect();
    wait_until("a janitor leads", WAIT, async || {
        janitors
            .iter()
            .filter(|janitor| janitor.is_leader())
            .count()
            == 1
    })
    .await;
    // The node is alive: a whole sweep removes nothing.
    wait_for_a_whole_sweep(&registry, &removed, "alive").await;
    assert_eq!(calls(), 0);
    // The node dies (its task stops without deleting the key): the key expires.
    liveness.halt_as_if_crashed();
    wait_until("the node's sessions are removed", WAIT, async || {
        calls() == 3
    })
    .await;
    // The sweeps go on, and remove each session once.
    wait_for_a_whole_sweep(&registry, &removed, "dead").await;
    assert_eq!(calls(), 3);
    assert!(registry
        .node_sessions("cm-expiring")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        janitors
            .iter()
            .filter(|janitor| janitor.is_leader())
            .count(),
        1
    );
    for janitor in janitors {
        janitor.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_reregistered_after_a_redis_restart() {
    let Some(mut server) = RedisServerHarness::start().await else {
        return;
    };
    let client = RedisClient::connect(&server.config()).await.unwrap();
    let registry = RedisRegistry::new(client.clone());
    let liveness = NodeLiveness::spawn(
        client.clone(),
        "cm-restart".into(),
        Duration::from_millis(300),
    );
    wait_until("the node key is written", WAIT, async || {
        NodeLiveness::is_alive(&client, "cm-restart")
            .await
            .unwrap_or(false)
    })
    .await;
    let mut record = SessionRecord::new(full("r@example.com/a"), addr("cm-restart", 1));
    record.available = true;
    record.presence = Some("<presence xmlns='jabber:client'/>".into());
    registry.bind(record.clone()).await.unwrap();
    registry
        .bind(SessionRecord::new(
            full("r@example.com/b"),
            addr("cm-restart", 2),
        ))
        .await
        .unwrap();
    let live = registry.node_sessions("cm-restart").await.unwrap();
    assert_eq!(live.len(), 2);

    server.restart().await;
    let lost = liveness.key_lost();
    wait_until("the restart is noticed", WAIT, async || *lost.borrow() >= 1).await;
    // Meanwhile another node took one of the resources: it keeps it.
    registry
        .bind(SessionRecord::new(
            full("r@example.com/b"),
            addr("cm-other", 9),
        ))
        .await
        .unwrap();
    assert_eq!(registry.reregister(live).await.unwrap(), 1);
    assert_eq!(
        registry.session(&record.jid).await.unwrap(),
        Some(record.clone())
    );
    assert_eq!(
        registry.node_sessions("cm-restart").await.unwrap(),
        vec![record]
    );
    assert_eq!(
        registry
            .session(&full("r@example.com/b"))
            .await
            .unwrap()
            .unwrap()
            .addr,
        addr("cm-other", 9)
    );
    liveness.stop().await.unwrap();
}
