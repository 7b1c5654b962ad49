//! `GrpcRouterClient` against real tonic servers backed by a recording
//! `RouterApi`: unary binding, ordered route streams (RFC 6120 section 10.1),
//! stickiness by session and failover of un-acked stanzas.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::future::join_all;
use parking_lot::Mutex;
use starling_api::{ApiError, ApiResult, BindError, Origin, RouterApi, SessionAddr};
use starling_jid::{BareJid, FullJid};
use starling_proto::common::v1 as common_proto;
use starling_proto::router::v1 as proto;
use starling_proto::router::v1::router_client::RouterClient;
use starling_proto::GrpcRouterClient;
use starling_testing::wait_until;
use starling_xmpp::{parse_element, Element, Limits};
use support::{KillableServer, TestServer};

/// Records what it is asked; a stanza with id `block` hangs when blocking is
/// on, one with id `missing` fails with NotFound.
#[derive(Default)]
struct RecordingRouter {
    routed: Mutex<Vec<(Origin, String)>>,
    /// The origin time each routed stanza came with, in order.
    routed_at: Mutex<Vec<Option<SystemTime>>>,
    unbound: Mutex<Vec<(FullJid, SessionAddr)>>,
    undeliverable: Mutex<Vec<(String, SessionAddr)>>,
    block_at: Mutex<Option<String>>,
    blocking: AtomicBool,
}

impl RecordingRouter {
    fn routed_ids(&self, session: &str) -> Vec<String> {
        self.routed
            .lock()
            .iter()
            .filter(|(origin, _)| matches!(origin, Origin::Session { jid, .. } if jid.to_string() == session))
            .map(|(_, xml)| {
                let stanza = parse_element(xml.as_bytes(), &Limits::default()).expect("stanza");
                stanza.attr("id").unwrap_or_default().to_string()
            })
            .collect()
    }
}

#[async_trait]
impl RouterApi for RecordingRouter {
    async fn bind(
        &self,
        user: &BareJid,
        requested: Option<&str>,
        _addr: &SessionAddr,
    ) -> Result<FullJid, BindError> {
        match requested {
            Some("bad") => Err(BindError::BadRequest),
            Some("many") => Err(BindError::ResourceConstraint),
            Some("banned") => Err(BindError::NotAllowed),
            Some("down") => Err(BindError::Api(ApiError::Unavailable(
                "registry down".into(),
            ))),
            Some(resource) => Ok(user.with_resource(resource).expect("resource")),
            None => Ok(user.with_resource("generated-1").expect("resource")),
        }
    }

    async fn unbind(&self, jid: &FullJid, addr: &SessionAddr) -> ApiResult<()> {
        self.unbound.lock().push((jid.clone(), addr.clone()));
        Ok(())
    }

    async fn route(
        &self,
        origin: Origin,
        stanza: Element,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<()> {
        let id = stanza.attr("id").unwrap_or_default().to_string();
        if id == "missing" {
            return Err(ApiError::NotFound("no such user".into()));
        }
        let block = self.blocking.load(Ordering::SeqCst)
            && self.block_at.lock().as_deref() == Some(id.as_str());
        if block {
            std::future::pending::<()>().await;
        }
        self.routed.lock().push((origin, stanza.to_xml()));
        self.routed_at.lock().push(routed_at);
        Ok(())
    }

    async fn undeliverable(&self, stanza: Element, failed: &SessionAddr) -> ApiResult<()> {
        self.undeliverable
            .lock()
            .push((stanza.to_xml(), failed.clone()));
        Ok(())
    }
}

fn addr(conn: u64) -> SessionAddr {
    SessionAddr {
        node: "cm1".into(),
        conn,
    }
}

fn session(jid: &str, conn: u64) -> Origin {
    Origin::Session {
        jid: jid.parse().expect("full jid"),
        addr: addr(conn),
    }
}

fn message(from: &str, id: &str) -> Element {
    let xml = format!(
        "<message xmlns='jabber:client' from='{from}' to='romeo@example.org' type='chat' id='{id}'><body>{id}</body></message>"
    );
    parse_element(xml.as_bytes(), &Limits::default()).expect("message")
}

#[tokio::test]
async fn bind_unbind_and_undeliverable_map_every_outcome() {
    let router = Arc::new(RecordingRouter::default());
    let server = TestServer::start(None, Some(router.clone()), None).await;
    let client = GrpcRouterClient::connect(vec![server.endpoint()]).expect("client");
    let juliet: BareJid = "juliet@example.org".parse().expect("jid");

    assert_eq!(
        client
            .bind(&juliet, Some("balcony"), &addr(1))
            .await
            .expect("bind")
            .to_string(),
        "juliet@example.org/balcony"
    );
    assert_eq!(
        client
            .bind(&juliet, None, &addr(2))
            .await
            .expect("bind")
            .to_string(),
        "juliet@example.org/generated-1"
    );
    assert_eq!(
        client.bind(&juliet, Some("bad"), &addr(3)).await,
        Err(BindError::BadRequest)
    );
    assert_eq!(
        client.bind(&juliet, Some("many"), &addr(3)).await,
        Err(BindError::ResourceConstraint)
    );
    assert_eq!(
        client.bind(&juliet, Some("banned"), &addr(3)).await,
        Err(BindError::NotAllowed)
    );
    assert_eq!(
        client.bind(&juliet, Some("down"), &addr(3)).await,
        Err(BindError::Api(ApiError::Unavailable(
            "registry down".into()
        )))
    );

    let full: FullJid = "juliet@example.org/balcony".parse().expect("jid");
    client.unbind(&full, &addr(1)).await.expect("unbind");
    assert_eq!(router.unbound.lock().clone(), vec![(full, addr(1))]);

    let stanza = message("juliet@example.org/balcony", "u1");
    client
        .undeliverable(stanza.clone(), &addr(1))
        .await
        .expect("undeliverable");
    assert_eq!(
        router.undeliverable.lock().clone(),
        vec![(
            "<message xmlns='jabber:client' from='juliet@example.org/balcony' to='romeo@example.org' type='chat' id='u1'><body>u1</body></message>".to_string(),
            addr(1)
        )]
    );
    server.stop().await;
}

#[tokio::test]
async fn route_stream_keeps_order_for_1000_stanzas_per_session() {
    let router = Arc::new(RecordingRouter::default());
    let server = TestServer::start(None, Some(router.clone()), None).await;
    let client = GrpcRouterClient::connect(vec![server.endpoint()]).expect("client");

    // Every route future is created in order and polled together: the
    // stream, not the caller, must keep the order.
    let sessions = ["juliet@example.org/balcony", "romeo@example.org/garden"];
    let futures = (1..=1000).flat_map(|number| {
        let client = client.clone();
        sessions.map(move |jid| {
            let client = client.clone();
            async move {
                client
                    .route(session(jid, 1), message(jid, &number.to_string()), None)
                    .await
            }
        })
    });
    for result in join_all(futures).await {
        result.expect("every stanza acked");
    }
    let expected: Vec<String> = (1..=1000).map(|number| number.to_string()).collect();
    for jid in sessions {
        assert_eq!(router.routed_ids(jid), expected, "order of {jid}");
    }
    // The stanza travels as literal XML and the origin with it.
    let (origin, xml) = router.routed.lock()[0].clone();
    assert_eq!(origin, session("juliet@example.org/balcony", 1));
    assert_eq!(
        xml,
        "<message xmlns='jabber:client' from='juliet@example.org/balcony' to='romeo@example.org' type='chat' id='1'><body>1</body></message>"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_origin_time_crosses_the_route_stream() {
    let router = Arc::new(RecordingRouter::default());
    let server = TestServer::start(None, Some(router.clone()), None).await;
    let client = GrpcRouterClient::connect(vec![server.endpoint()]).expect("client");
    let jid = "juliet@example.org/balcony";
    let routed_at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
    client
        .route(session(jid, 1), message(jid, "timed"), Some(routed_at))
        .await
        .expect("routed");
    client
        .route(session(jid, 1), message(jid, "untimed"), None)
        .await
        .expect("routed");
    assert_eq!(*router.routed_at.lock(), vec![Some(routed_at), None]);
    server.stop().await;
}

#[tokio::test]
async fn route_errors_come_back_in_the_ack() {
    let router = Arc::new(RecordingRouter::default());
    let server = TestServer::start(None, Some(router.clone()), None).await;
    let client = GrpcRouterClient::connect(vec![server.endpoint()]).expect("client");
    assert_eq!(
        client
            .route(
                session("juliet@example.org/balcony", 1),
                message("juliet@example.org/balcony", "missing"),
                None
            )
            .await,
        Err(ApiError::NotFound("no such user".into()))
    );
    client
        .route(Origin::Server, message("example.org", "s1"), None)
        .await
        .expect("server origin");
    assert_eq!(router.routed.lock()[0].0, Origin::Server);
    server.stop().await;
}

#[tokio::test]
async fn server_acks_malformed_route_requests_with_invalid_argument() {
    let router = Arc::new(RecordingRouter::default());
    let server = TestServer::start(None, Some(router.clone()), None).await;
    let mut raw = RouterClient::connect(server.endpoint())
        .await
        .expect("raw client");
    let session_origin = proto::route_request::Origin::Session(proto::SessionOrigin {
        full_jid: "juliet@example.org/balcony".into(),
        addr: Some(common_proto::SessionAddr {
            node: "cm1".into(),
            conn: 1,
        }),
    });
    let requests = vec![
        proto::RouteRequest {
            sequence: 1,
            origin: Some(session_origin.clone()),
            stanza: "<message xmlns='jabber:client'><body>unclosed".into(),
            routed_at_unix_micros: 0,
            trace_context: Default::default(),
        },
        proto::RouteRequest {
            sequence: 2,
            origin: None,
            stanza: "<message xmlns='jabber:client'/>".into(),
            routed_at_unix_micros: 0,
            trace_context: Default::default(),
        },
        proto::RouteRequest {
            sequence: 3,
            origin: Some(proto::route_request::Origin::Session(
                proto::SessionOrigin {
                    full_jid: "juliet@example.org".into(),
                    addr: None,
                },
            )),
            stanza: "<message xmlns='jabber:client'/>".into(),
            routed_at_unix_micros: 0,
            trace_context: Default::default(),
        },
        proto::RouteRequest {
            sequence: 4,
            origin: Some(session_origin),
            stanza: "<message xmlns='jabber:client' id='ok'/>".into(),
            routed_at_unix_micros: 0,
            trace_context: Default::default(),
        },
    ];
    let mut acks = raw
        .route_stream(futures::stream::iter(requests))
        .await
        .expect("stream opens")
        .into_inner();
    let mut received = Vec::new();
    while let Some(ack) = acks.message().await.expect("ack") {
        received.push((ack.sequence, tonic::Code::from_i32(ack.code)));
    }
    assert_eq!(
        received,
        vec![
            (1, tonic::Code::InvalidArgument),
            (2, tonic::Code::InvalidArgument),
            (3, tonic::Code::InvalidArgument),
            (4, tonic::Code::Ok),
        ]
    );
    assert_eq!(
        router.routed.lock()[0].1,
        "<message xmlns='jabber:client' id='ok'/>"
    );

    let status = raw
        .bind(proto::BindRequest {
            user: "juliet@example.org".into(),
            requested_resource: Some("balcony".into()),
            addr: None,
        })
        .await
        .expect_err("missing addr");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn sessions_stick_to_one_replica_and_spread_over_all() {
    let first_router = Arc::new(RecordingRouter::default());
    let second_router = Arc::new(RecordingRouter::default());
    let first = TestServer::start(None, Some(first_router.clone()), None).await;
    let second = TestServer::start(None, Some(second_router.clone()), None).await;
    let client =
        GrpcRouterClient::connect(vec![first.endpoint(), second.endpoint()]).expect("client");
    let jids: Vec<String> = (0..40)
        .map(|number| format!("user{number}@example.org/phone"))
        .collect();
    for round in 0..5 {
        for jid in &jids {
            client
                .route(session(jid, 1), message(jid, &round.to_string()), None)
                .await
                .expect("routed");
        }
    }
    let mut on_first = 0;
    for jid in &jids {
        let first_ids = first_router.routed_ids(jid);
        let second_ids = second_router.routed_ids(jid);
        assert!(
            first_ids.is_empty() || second_ids.is_empty(),
            "{jid} was split over replicas"
        );
        if !first_ids.is_empty() {
            on_first += 1;
        }
    }
    assert!(
        on_first > 0 && on_first < jids.len(),
        "{on_first} of 40 on the first replica"
    );
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_stanzas_move_to_another_replica_when_a_router_dies() {
    let routers = [
        Arc::new(RecordingRouter::default()),
        Arc::new(RecordingRouter::default()),
    ];
    for router in &routers {
        *router.block_at.lock() = Some("11".into());
    }
    let mut servers = [
        KillableServer::start_router(routers[0].clone()),
        KillableServer::start_router(routers[1].clone()),
    ];
    let client = GrpcRouterClient::connect(vec![servers[0].endpoint(), servers[1].endpoint()])
        .expect("client");
    let jid = "juliet@example.org/balcony";

    // The first stanza shows which replica the session sticks to.
    client
        .route(session(jid, 1), message(jid, "1"), None)
        .await
        .expect("first stanza");
    let primary = if routers[0].routed_ids(jid).is_empty() {
        1
    } else {
        0
    };
    let standby = 1 - primary;
    routers[primary].blocking.store(true, Ordering::SeqCst);

    // Stanzas 2..=50 in flight at once; the primary hangs on 11.
    let sending = tokio::spawn({
        let client = client.clone();
        async move {
            let futures = (2..=50).map(|number| {
                let client = client.clone();
                async move {
                    client
                        .route(session(jid, 1), message(jid, &number.to_string()), None)
                        .await
                }
            });
            join_all(futures).await
        }
    });
    let primary_router = routers[primary].clone();
    wait_until(
        "the primary routed 1..=10",
        Duration::from_secs(10),
        async || primary_router.routed_ids(jid).len() == 10,
    )
    .await;
    servers[primary].kill();

    let results = sending.await.expect("sender task");
    for result in results {
        result.expect("every stanza acked after failover");
    }
    let expected_primary: Vec<String> = (1..=10).map(|number| number.to_string()).collect();
    let expected_standby: Vec<String> = (11..=50).map(|number| number.to_string()).collect();
    assert_eq!(routers[primary].routed_ids(jid), expected_primary);
    assert_eq!(routers[standby].routed_ids(jid), expected_standby);

    // New stanzas of the session keep going to the standby, in order.
    client
        .route(session(jid, 1), message(jid, "51"), None)
        .await
        .expect("after failover");
    assert_eq!(
        routers[standby].routed_ids(jid).last().map(String::as_str),
        Some("51")
    );
}

#[tokio::test]
async fn draining_router_hands_its_sessions_to_another_replica() {
    let first_router = Arc::new(RecordingRouter::default());
    let second_router = Arc::new(RecordingRouter::default());
    let first = TestServer::start(None, Some(first_router.clone()), None).await;
    let second = TestServer::start(None, Some(second_router.clone()), None).await;
    let client =
        GrpcRouterClient::connect(vec![first.endpoint(), second.endpoint()]).expect("client");
    let jids: Vec<String> = (0..20)
        .map(|number| format!("user{number}@example.org/phone"))
        .collect();
    for jid in &jids {
        client
            .route(session(jid, 1), message(jid, "before"), None)
            .await
            .expect("routed");
    }
    // Graceful stop of the first replica while its streams are open.
    first.stop().await;
    for jid in &jids {
        client
            .route(session(jid, 1), message(jid, "after"), None)
            .await
            .expect("routed after the drain");
        assert_eq!(
            second_router.routed_ids(jid).last().map(String::as_str),
            Some("after")
        );
    }
    second.stop().await;
}

#[tokio::test]
async fn route_without_any_live_router_fails_unavailable() {
    let client = GrpcRouterClient::connect(vec!["127.0.0.1:1".into()]).expect("client");
    let jid = "juliet@example.org/balcony";
    assert!(matches!(
        client.route(session(jid, 1), message(jid, "1"), None).await,
        Err(ApiError::Unavailable(_))
    ));
    let juliet: BareJid = "juliet@example.org".parse().expect("jid");
    assert!(matches!(
        client.bind(&juliet, None, &addr(1)).await,
        Err(BindError::Api(ApiError::Unavailable(_)))
    ));
}

#[tokio::test]
async fn a_stuck_session_does_not_hold_up_the_others_on_its_stream() {
    let router = Arc::new(RecordingRouter::default());
    *router.block_at.lock() = Some("stuck".into());
    router.blocking.store(true, Ordering::SeqCst);
    let server = TestServer::start(None, Some(router.clone()), None).await;
    let client = GrpcRouterClient::connect(vec![server.endpoint()]).expect("client");

    let stuck_jid = "juliet@example.org/balcony";
    let stuck = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .route(session(stuck_jid, 1), message(stuck_jid, "stuck"), None)
                .await
        }
    });
    // Other sessions share the one stream; those on other lanes go through.
    let mut completed = 0;
    for number in 0..8 {
        let jid = format!("user{number}@example.org/phone");
        let routed = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            client.route(session(&jid, 2), message(&jid, "1"), None),
        )
        .await;
        if let Ok(result) = routed {
            result.expect("routed");
            completed += 1;
        }
    }
    assert!(completed >= 6, "only {completed} of 8 sessions got through");
    assert!(!stuck.is_finished());
    stuck.abort();
    // The stuck call never ends; the server is dropped with the test's runtime.
    drop(server);
}

#[tokio::test]
async fn replicas_found_by_name_take_stanzas() {
    // `dns:///NAME:PORT` (issue 15): every address of the name is a replica;
    // here `localhost`, resolved by the system like a headless Service's name.
    let router = Arc::new(RecordingRouter::default());
    let server = TestServer::start(None, Some(router.clone()), None).await;
    let port = server.endpoint().rsplit(':').next().unwrap().to_string();
    let client =
        GrpcRouterClient::connect(vec![format!("dns:///localhost:{port}")]).expect("client");
    let jid = "juliet@example.org/balcony";
    for id in ["1", "2", "3"] {
        client
            .route(session(jid, 1), message(jid, id), None)
            .await
            .expect("routed through the resolved replica");
    }
    assert_eq!(router.routed_ids(jid), vec!["1", "2", "3"]);
    server.stop().await;
}

/// kmock (tests/integration/kmock_server.py), a Kubernetes API emulator: a
/// mock, not a Kubernetes. Its kubeconfig is handed to the client through
/// `KUBECONFIG`, as kubectl would read it. The Python with kmock is
/// `STARLING_TEST_PYTHON` (scripts/test.sh sets its venv's).
struct KmockApi {
    process: std::process::Child,
    directory: std::path::PathBuf,
}

impl KmockApi {
    fn start() -> KmockApi {
        use std::io::BufRead;
        let directory = std::env::temp_dir().join(format!("starling-kmock-{}", std::process::id()));
        std::fs::create_dir_all(&directory).expect("temporary directory");
        let kubeconfig = directory.join("kubeconfig");
        let python = std::env::var("STARLING_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/integration/kmock_server.py"
        );
        let mut process = std::process::Command::new(&python)
            .arg(script)
            .arg(&kubeconfig)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("{python} {script}: {error}"));
        let mut port = String::new();
        std::io::BufReader::new(process.stdout.take().expect("stdout"))
            .read_line(&mut port)
            .expect("kmock's port");
        assert!(
            port.trim().parse::<u16>().is_ok(),
            "kmock did not start: is kmock (tests/requirements.txt) installed for {python}?"
        );
        std::env::set_var("KUBECONFIG", &kubeconfig);
        KmockApi { process, directory }
    }
}

impl Drop for KmockApi {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// The EndpointSlice of one replica of Service `router` in the test namespace.
fn router_slice(name: &str, port: u16) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "starling-test",
            "labels": { "kubernetes.io/service-name": "router" },
        },
        "addressType": "IPv4",
        "endpoints": [{ "addresses": ["127.0.0.1"], "conditions": { "ready": true } }],
        "ports": [{ "name": "grpc", "port": port, "protocol": "TCP" }],
    }))
    .expect("endpointslice")
}

#[tokio::test]
async fn endpointslice_replicas_against_kmock_mock_api_follow_adds_and_removals() {
    // `k8s:///SERVICE.NAMESPACE:PORT` (issue 15): the ready endpoints of the
    // Service's EndpointSlices are the replicas, followed by a watch. Each
    // replica here is a slice of its own with its own named port.
    use kube::api::{DeleteParams, PostParams};
    let _kmock = KmockApi::start();
    let slices: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> = kube::Api::namespaced(
        starling_kubernetes::client().await.expect("kube client"),
        "starling-test",
    );
    let first_router = Arc::new(RecordingRouter::default());
    let second_router = Arc::new(RecordingRouter::default());
    let first = TestServer::start(None, Some(first_router.clone()), None).await;
    let second = TestServer::start(None, Some(second_router.clone()), None).await;
    let port_of = |server: &TestServer| {
        server
            .endpoint()
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap()
    };
    slices
        .create(
            &PostParams::default(),
            &router_slice("router-a", port_of(&first)),
        )
        .await
        .expect("first slice");
    let client =
        GrpcRouterClient::connect(vec!["k8s:///router.starling-test:grpc".into()]).expect("client");
    let routed = |router: &RecordingRouter| router.routed.lock().len();
    let send = |round: usize| {
        let client = &client;
        async move {
            for number in 0..20 {
                let jid = format!("user{number}-{round}@example.org/phone");
                client
                    .route(session(&jid, 1), message(&jid, "1"), None)
                    .await
                    .expect("routed");
            }
        }
    };
    send(0).await;
    assert_eq!((routed(&first_router), routed(&second_router)), (20, 0));

    // A replica added: new sessions reach it within seconds.
    slices
        .create(
            &PostParams::default(),
            &router_slice("router-b", port_of(&second)),
        )
        .await
        .expect("second slice");
    let mut round = 1;
    wait_until(
        "the added replica takes traffic",
        Duration::from_secs(10),
        async || {
            send(round).await;
            round += 1;
            routed(&second_router) > 0
        },
    )
    .await;

    // A replica removed: it gets nothing more.
    slices
        .delete("router-a", &DeleteParams::default())
        .await
        .expect("first slice deleted");
    wait_until(
        "the removed replica leaves the set",
        Duration::from_secs(10),
        async || {
            let before = routed(&first_router);
            send(round).await;
            round += 1;
            routed(&first_router) == before
        },
    )
    .await;
    let (on_first, on_second) = (routed(&first_router), routed(&second_router));
    send(round + 1).await;
    assert_eq!(routed(&first_router), on_first);
    assert_eq!(routed(&second_router), on_second + 20);
    first.stop().await;
    second.stop().await;
}
