//! The admin API end to end over a real gRPC listener on 127.0.0.1:0, on
//! the in-process registry and bus and SQLite storage in memory: the token
//! check on every method, and what each method does to the registry, the
//! bus and the storage.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use starling_admin::{
    serve_admin, AdminService, BearerAuth, LocalS2sStreams, Membership, NodeStatus,
};
use starling_api::{ApiResult, S2sStreamInfo, SessionAddr, SessionRecord, SessionRegistry};
use starling_bus::{Bus, Delivery, DeliveryReceiver, InProcessBus};
use starling_proto::admin::v1 as proto;
use starling_proto::admin::v1::admin_client::AdminClient;
use starling_registry::MemoryRegistry;
use starling_storage::{Storage, StorageConfig};
use starling_xmpp::StreamErrorCondition;
use tonic::transport::Channel;
use tonic::{Code, Request};

const TOKEN: &str = "test-token-0123456789abcdef";

/// Two connection-managers; cm2 drains since a fixed time.
struct TwoNodes;

#[async_trait]
impl Membership for TwoNodes {
    async fn nodes(&self) -> ApiResult<Vec<NodeStatus>> {
        Ok(vec![
            NodeStatus {
                node: "cm1".into(),
                alive: true,
                draining_since_unix_ms: None,
            },
            NodeStatus {
                node: "cm2".into(),
                alive: true,
                draining_since_unix_ms: Some(1_700_000_000_000),
            },
            NodeStatus {
                node: "cm3".into(),
                alive: false,
                draining_since_unix_ms: None,
            },
        ])
    }
}

/// The s2s streams the nodes hold: two on cm1, one on cm2, one on a node
/// the cluster does not know.
fn s2s_rows() -> Vec<S2sStreamInfo> {
    let row = |node: &str, domain: &str, direction: &str| S2sStreamInfo {
        node: node.into(),
        domain: domain.into(),
        direction: direction.into(),
        authentication: "external".into(),
        tls: true,
        stanzas_in: 1,
        stanzas_out: 2,
        queued: 0,
        since_unix_ms: 1_700_000_000_000,
    };
    vec![
        row("cm2", "example.net", "in"),
        row("cm1", "example.net", "out"),
        row("cm1", "chat.example.com", "in"),
        row("cm-gone", "example.net", "in"),
    ]
}

struct Harness {
    client: AdminClient<Channel>,
    registry: Arc<MemoryRegistry>,
    bus: Arc<InProcessBus>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

async fn start() -> Harness {
    let registry = Arc::new(MemoryRegistry::new());
    let bus = Arc::new(InProcessBus::new());
    let storage = Arc::new(
        Storage::connect(&StorageConfig {
            url: "sqlite::memory:".into(),
            ..Default::default()
        })
        .await
        .unwrap(),
    );
    let service = AdminService::new(
        "example.org",
        registry.clone(),
        bus.clone(),
        storage,
        Arc::new(TwoNodes),
    )
    .unwrap()
    .with_s2s_streams(Arc::new(LocalS2sStreams::new(Arc::new(s2s_rows))));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_admin(
        listener,
        service,
        BearerAuth::new(TOKEN),
        async move {
            let _ = shutdown_rx.await;
        },
    ));
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Harness {
        client: AdminClient::new(channel),
        registry,
        bus,
        shutdown: Some(shutdown_tx),
    }
}

fn authorized<T>(message: T) -> Request<T> {
    with_token(message, &format!("Bearer {TOKEN}"))
}

fn with_token<T>(message: T, authorization: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", authorization.parse().unwrap());
    request
}

async fn bind(registry: &MemoryRegistry, jid: &str, node: &str, conn: u64) {
    let record = SessionRecord::new(
        jid.parse().unwrap(),
        SessionAddr {
            node: node.into(),
            conn,
        },
    );
    registry.bind(record).await.unwrap();
}

async fn next(receiver: &mut DeliveryReceiver) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), receiver.recv())
        .await
        .expect("a delivery in time")
        .expect("bus open")
}

#[tokio::test]
async fn every_method_needs_the_token() {
    let mut harness = start().await;
    let client = &mut harness.client;
    let status = client
        .list_nodes(proto::ListNodesRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = client
        .list_nodes(with_token(
            proto::ListNodesRequest {},
            "Bearer not-the-token",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // A refused call has no effect.
    let status = client
        .add_user(with_token(
            proto::AddUserRequest {
                jid: "mallory@example.org".into(),
                password: "secret".into(),
            },
            "Bearer not-the-token",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let users = client
        .list_users(authorized(proto::ListUsersRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(users.jids.is_empty(), "{:?}", users.jids);
    let nodes = client
        .list_nodes(authorized(proto::ListNodesRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(nodes.nodes.len(), 3);
}

#[tokio::test]
async fn sessions_are_listed_filtered_paged_and_counted() {
    let mut harness = start().await;
    bind(&harness.registry, "alice@example.org/phone", "cm1", 1).await;
    bind(&harness.registry, "alice@example.org/laptop", "cm2", 7).await;
    bind(&harness.registry, "bob@example.org/desk", "cm2", 8).await;
    let client = &mut harness.client;

    let all = client
        .list_sessions(authorized(proto::ListSessionsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let jids: Vec<&str> = all.sessions.iter().map(|s| s.full_jid.as_str()).collect();
    assert_eq!(
        jids,
        [
            "alice@example.org/laptop",
            "alice@example.org/phone",
            "bob@example.org/desk"
        ]
    );
    assert_eq!(all.next_after, "");
    assert_eq!(all.sessions[0].node, "cm2");
    assert_eq!(all.sessions[0].conn, 7);

    let on_cm2 = client
        .list_sessions(authorized(proto::ListSessionsRequest {
            node: "cm2".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(on_cm2.sessions.len(), 2);
    assert!(on_cm2.sessions.iter().all(|s| s.node == "cm2"));

    let alice_on_cm1 = client
        .list_sessions(authorized(proto::ListSessionsRequest {
            node: "cm1".into(),
            bare_jid: "alice@example.org".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alice_on_cm1.sessions.len(), 1);
    assert_eq!(alice_on_cm1.sessions[0].full_jid, "alice@example.org/phone");

    let first_page = client
        .list_sessions(authorized(proto::ListSessionsRequest {
            limit: 2,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first_page.sessions.len(), 2);
    assert_eq!(first_page.next_after, "alice@example.org/phone");
    let second_page = client
        .list_sessions(authorized(proto::ListSessionsRequest {
            limit: 2,
            after: first_page.next_after,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second_page.sessions.len(), 1);
    assert_eq!(second_page.sessions[0].full_jid, "bob@example.org/desk");
    assert_eq!(second_page.next_after, "");

    let bad = client
        .list_sessions(authorized(proto::ListSessionsRequest {
            bare_jid: "not a jid@".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    let count = client
        .count_sessions(authorized(proto::CountSessionsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(count.total, 3);
    let per_node: Vec<(&str, u64)> = count
        .nodes
        .iter()
        .map(|n| (n.node.as_str(), n.sessions))
        .collect();
    assert_eq!(per_node, [("cm1", 1), ("cm2", 2), ("cm3", 0)]);

    let nodes = client
        .list_nodes(authorized(proto::ListNodesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(nodes[1].node, "cm2");
    assert!(nodes[1].alive && nodes[1].draining);
    assert_eq!(nodes[1].draining_since_unix_ms, 1_700_000_000_000);
    assert_eq!(nodes[1].sessions, 2);
    assert!(!nodes[0].draining);
    assert!(!nodes[2].alive);
}

#[tokio::test]
async fn kick_closes_the_stream_on_the_node_that_holds_it() {
    let mut harness = start().await;
    let mut cm1 = harness.bus.subscribe("cm1").await.unwrap();
    let mut cm2 = harness.bus.subscribe("cm2").await.unwrap();
    bind(&harness.registry, "alice@example.org/phone", "cm1", 1).await;
    bind(&harness.registry, "alice@example.org/laptop", "cm2", 7).await;
    let client = &mut harness.client;

    let kicked = client
        .kick_session(authorized(proto::KickSessionRequest {
            jid: "alice@example.org/laptop".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kicked.kicked, ["alice@example.org/laptop"]);
    assert_eq!(
        next(&mut cm2).await,
        Delivery::Close {
            conn: 7,
            condition: StreamErrorCondition::PolicyViolation,
            text: None
        }
    );

    // A bare JID: every resource, with the condition and text asked for.
    let kicked = client
        .kick_session(authorized(proto::KickSessionRequest {
            jid: "alice@example.org".into(),
            condition: "reset".into(),
            text: "maintenance".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kicked.kicked.len(), 2);
    assert_eq!(
        next(&mut cm1).await,
        Delivery::Close {
            conn: 1,
            condition: StreamErrorCondition::Reset,
            text: Some("maintenance".into())
        }
    );
    assert!(matches!(
        next(&mut cm2).await,
        Delivery::Close { conn: 7, .. }
    ));

    for (jid, condition, code) in [
        ("nobody@example.org", "", Code::NotFound),
        (
            "alice@example.org/phone",
            "no-such-condition",
            Code::InvalidArgument,
        ),
        ("@@", "", Code::InvalidArgument),
    ] {
        let status = client
            .kick_session(authorized(proto::KickSessionRequest {
                jid: jid.into(),
                condition: condition.into(),
                text: String::new(),
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{jid} {condition}");
    }

    // The node holding the session is gone from the bus: nobody took it.
    drop(cm1);
    drop(cm2);
    let status = client
        .kick_session(authorized(proto::KickSessionRequest {
            jid: "alice@example.org/phone".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn announce_sends_one_envelope_per_node_from_the_domain() {
    let mut harness = start().await;
    let mut cm1 = harness.bus.subscribe("cm1").await.unwrap();
    let mut cm2 = harness.bus.subscribe("cm2").await.unwrap();
    bind(&harness.registry, "alice@example.org/phone", "cm1", 1).await;
    bind(&harness.registry, "alice@example.org/laptop", "cm2", 7).await;
    bind(&harness.registry, "bob@example.org/desk", "cm2", 8).await;
    let client = &mut harness.client;

    let sent = client
        .announce(authorized(proto::AnnounceRequest {
            text: "maintenance at 22:00 <UTC>".into(),
            subject: "Notice".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.recipients, 3);
    let Delivery::Stanza {
        recipients, stanza, ..
    } = next(&mut cm2).await
    else {
        panic!("expected a stanza");
    };
    let mut to: Vec<String> = recipients.iter().filter_map(|r| r.to.clone()).collect();
    to.sort();
    assert_eq!(to, ["alice@example.org/laptop", "bob@example.org/desk"]);
    assert_eq!(stanza.attr("from"), Some("example.org"));
    assert_eq!(stanza.attr("type"), Some("headline"));
    let xml = stanza.to_xml();
    assert!(
        xml.contains("<subject>Notice</subject><body>maintenance at 22:00 &lt;UTC&gt;</body>"),
        "{xml}"
    );
    let Delivery::Stanza { recipients, .. } = next(&mut cm1).await else {
        panic!("expected a stanza");
    };
    assert_eq!(recipients.len(), 1);

    // One node only, type normal.
    let sent = client
        .announce(authorized(proto::AnnounceRequest {
            text: "cm1 only".into(),
            node: "cm1".into(),
            r#type: "normal".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.recipients, 1);
    let Delivery::Stanza { stanza, .. } = next(&mut cm1).await else {
        panic!("expected a stanza");
    };
    assert_eq!(stanza.attr("type"), Some("normal"));
    assert!(cm2.try_recv().is_err(), "cm2 got an announcement for cm1");

    for request in [
        proto::AnnounceRequest {
            text: " ".into(),
            ..Default::default()
        },
        proto::AnnounceRequest {
            text: "x".into(),
            r#type: "chat".into(),
            ..Default::default()
        },
    ] {
        let status = client.announce(authorized(request)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
}

#[tokio::test]
async fn accounts_are_managed_like_starling_user() {
    let mut harness = start().await;
    let client = &mut harness.client;
    client
        .add_user(authorized(proto::AddUserRequest {
            jid: "carol@example.org".into(),
            password: "pencil".into(),
        }))
        .await
        .unwrap();
    let duplicate = client
        .add_user(authorized(proto::AddUserRequest {
            jid: "carol@example.org".into(),
            password: "pencil".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    assert_eq!(duplicate.message(), "carol@example.org already exists");
    for (jid, password) in [("example.org", "x"), ("dave@example.org", "")] {
        let status = client
            .add_user(authorized(proto::AddUserRequest {
                jid: jid.into(),
                password: password.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{jid}");
    }
    client
        .set_password(authorized(proto::SetPasswordRequest {
            jid: "carol@example.org".into(),
            password: "new-pencil".into(),
        }))
        .await
        .unwrap();
    let users = client
        .list_users(authorized(proto::ListUsersRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(users.jids, ["carol@example.org"]);
    client
        .remove_user(authorized(proto::RemoveUserRequest {
            jid: "carol@example.org".into(),
        }))
        .await
        .unwrap();
    let gone = client
        .remove_user(authorized(proto::RemoveUserRequest {
            jid: "carol@example.org".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let gone = client
        .set_password(authorized(proto::SetPasswordRequest {
            jid: "carol@example.org".into(),
            password: "x".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test]
async fn drain_reaches_the_node_and_checks_its_arguments() {
    let mut harness = start().await;
    let mut cm1 = harness.bus.subscribe("cm1").await.unwrap();
    let client = &mut harness.client;
    client
        .drain_node(authorized(proto::DrainNodeRequest {
            node: "cm1".into(),
            window_seconds: 45,
        }))
        .await
        .unwrap();
    assert_eq!(
        next(&mut cm1).await,
        Delivery::Drain {
            window: Some(Duration::from_secs(45))
        }
    );
    client
        .drain_node(authorized(proto::DrainNodeRequest {
            node: "cm1".into(),
            window_seconds: 0,
        }))
        .await
        .unwrap();
    assert_eq!(next(&mut cm1).await, Delivery::Drain { window: None });
    for (node, window_seconds, code) in [
        ("cm9", 1, Code::NotFound),
        ("cm3", 1, Code::Unavailable), // listed but dead
        ("cm2", 1, Code::Unavailable), // alive but not on the bus
        ("cm1", 3601, Code::InvalidArgument),
        ("", 1, Code::InvalidArgument),
    ] {
        let status = client
            .drain_node(authorized(proto::DrainNodeRequest {
                node: node.into(),
                window_seconds,
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{node}");
    }
}

#[tokio::test]
async fn s2s_streams_are_listed_by_domain_and_node() {
    let mut harness = start().await;
    let list = |node: &str, domain: &str| proto::ListS2sStreamsRequest {
        node: node.into(),
        domain: domain.into(),
    };
    let rows = |response: proto::ListS2sStreamsResponse| -> Vec<(String, String, String)> {
        response
            .streams
            .into_iter()
            .map(|row| (row.domain, row.direction, row.node))
            .collect()
    };
    let everything = harness
        .client
        .list_s2s_streams(authorized(list("", "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(everything.streams[0].stanzas_out, 2);
    assert!(everything.streams[0].tls);
    // Ordered by domain then direction; the unknown node's row is not listed.
    assert_eq!(
        rows(everything),
        vec![
            ("chat.example.com".into(), "in".into(), "cm1".into()),
            ("example.net".into(), "in".into(), "cm2".into()),
            ("example.net".into(), "out".into(), "cm1".into()),
        ]
    );
    let one_domain = harness
        .client
        .list_s2s_streams(authorized(list("", "Example.NET")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rows(one_domain).len(), 2);
    let one_node = harness
        .client
        .list_s2s_streams(authorized(list("cm1", "example.net")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rows(one_node),
        vec![("example.net".into(), "out".into(), "cm1".into())]
    );
    let invalid = harness
        .client
        .list_s2s_streams(authorized(list("", "not a domain")))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    let unauthorized = harness
        .client
        .list_s2s_streams(Request::new(list("", "")))
        .await
        .unwrap_err();
    assert_eq!(unauthorized.code(), Code::Unauthenticated);
}
