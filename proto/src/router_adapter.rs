//! The session-router over gRPC (`starling.router.v1.Router`): resource
//! binding (RFC 6120 section 7) as unary calls and stanza routing (RFC 6121
//! section 8) over long-lived bidirectional `RouteStream`s.
//!
//! Order (RFC 6120 section 10.1): on one stream the server handles the
//! requests of one sender (a session's full JID, or a server stanza's `from`)
//! one after the other, on one of the stream's lanes, while other senders
//! proceed on other lanes, and acknowledges each sequence number; the client keeps one
//! stream per router replica and sends every stanza of one session on the same
//! stream (rendezvous hashing of the session's full JID over the live
//! replicas, so losing a replica moves only the sessions that were on it).
//!
//! A session whose stanzas are in flight on a stream keeps sending on it
//! until they are acknowledged, even when the replicas change (discovery, see
//! [`crate::balance`]): a replica added or gone moves a session only between
//! two of its stanzas, never past one still in flight.
//!
//! Failover: when a stream breaks (the replica died, the connection dropped,
//! the replica drained for shutdown), every request not yet acknowledged is
//! sent again, in its original order, to the replica its session now maps to.
//! Delivery is therefore at-least-once for stanzas in flight: a stanza the dead
//! replica had routed but not yet acknowledged is routed twice.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use parking_lot::Mutex;
use starling_api::{origin_time, ApiError, ApiResult, BindError, Origin, RouterApi, SessionAddr};
use starling_jid::{BareJid, FullJid};
use starling_telemetry::{with_remote_parent, TraceContext};
use starling_xmpp::Element;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::balance::{Replica, ReplicaSet, Replicas, RetryPolicy};
use crate::convert::{
    addr_from_proto, addr_to_proto, invalid_request, malformed_response, parse_bare_jid,
    parse_full_jid, stanza_from_wire, stanza_to_wire,
};
use crate::error::{
    api_error_to_status, bind_rejection_from_proto, bind_rejection_to_proto, code_to_api_error,
    ProtoError,
};
use crate::metrics::GrpcClientMetrics;
use crate::router::v1 as proto;
use crate::router::v1::router_client::RouterClient;
use crate::router::v1::router_server::{Router, RouterServer};

/// Requests one client stream may have unacknowledged at once.
const MAX_IN_FLIGHT_PER_STREAM: usize = 1024;
/// Stanza bytes one client stream may have unacknowledged at once (issue 18):
/// with the count above, what the stream's buffers hold at both ends (the
/// client's outbound buffer, the server's lanes) is bounded in bytes too.
/// Past it, requests wait in the stream's queue, where each is held by the
/// caller awaiting its ack (one stanza per session, which the session's
/// budget already counts).
const MAX_IN_FLIGHT_BYTES_PER_STREAM: usize = 16 * 1024 * 1024;
/// Acks a server stream may buffer before it waits for the client to read.
const SERVER_ACK_BUFFER: usize = 256;
/// Parallel lanes of one route stream on the server; a sender's stanzas
/// always take the same lane.
const ROUTE_LANES_PER_STREAM: usize = 16;
/// Requests a lane may hold before the stream's reader waits for it.
const ROUTE_LANE_BUFFER: usize = 64;

/// The tonic service serving `api` as `starling.router.v1.Router`.
pub fn router_service(api: Arc<dyn RouterApi>) -> RouterServer<RouterGrpcServer> {
    let (drain_tx, drain_rx) = watch::channel(false);
    RouterServer::new(RouterGrpcServer {
        api,
        draining: drain_rx,
        _drain_tx: Some(Arc::new(drain_tx)),
    })
}

/// Like [`router_service`], but its route streams end (after acknowledging
/// the request in hand) once `draining` turns true, so that clients move their
/// un-acknowledged stanzas to another replica during a graceful shutdown.
pub(crate) fn router_service_with_drain(
    api: Arc<dyn RouterApi>,
    draining: watch::Receiver<bool>,
) -> RouterServer<RouterGrpcServer> {
    RouterServer::new(RouterGrpcServer {
        api,
        draining,
        _drain_tx: None,
    })
}

/// Implements the generated `Router` trait by calling a [`RouterApi`].
pub struct RouterGrpcServer {
    api: Arc<dyn RouterApi>,
    draining: watch::Receiver<bool>,
    /// Keeps the drain channel open when nobody else holds its sender.
    _drain_tx: Option<Arc<watch::Sender<bool>>>,
}

fn bad_request(message: String) -> Status {
    api_error_to_status(invalid_request(message))
}

/// Resolves once draining starts; never if the drain sender is gone.
async fn wait_for_drain(mut draining: watch::Receiver<bool>) {
    if draining.wait_for(|draining| *draining).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn origin_from_proto(origin: Option<proto::route_request::Origin>) -> Result<Origin, String> {
    match origin {
        Some(proto::route_request::Origin::Session(session)) => Ok(Origin::Session {
            jid: parse_full_jid("origin.session.full_jid", &session.full_jid)?,
            addr: addr_from_proto("origin.session.addr", session.addr)?,
        }),
        Some(proto::route_request::Origin::Server(_)) => Ok(Origin::Server),
        None => Err("origin: missing".to_string()),
    }
}

fn origin_to_proto(origin: &Origin) -> proto::route_request::Origin {
    match origin {
        Origin::Session { jid, addr } => {
            proto::route_request::Origin::Session(proto::SessionOrigin {
                full_jid: jid.to_string(),
                addr: Some(addr_to_proto(addr)),
            })
        }
        Origin::Server => proto::route_request::Origin::Server(proto::ServerOrigin {}),
    }
}

fn ack_for(sequence: u64, result: ApiResult<()>) -> proto::RouteAck {
    match result {
        Ok(()) => proto::RouteAck {
            sequence,
            code: Code::Ok as i32,
            message: String::new(),
        },
        Err(error) => {
            let status = api_error_to_status(error);
            proto::RouteAck {
                sequence,
                code: status.code() as i32,
                message: status.message().to_string(),
            }
        }
    }
}

fn ack_result(ack: &proto::RouteAck) -> ApiResult<()> {
    if ack.code == Code::Ok as i32 {
        return Ok(());
    }
    Err(code_to_api_error(Code::from_i32(ack.code), &ack.message))
}

/// A route request parsed by a stream's reader, on its way to a lane.
struct ParsedRoute {
    sequence: u64,
    parsed: Result<(Origin, Element), String>,
    /// When the sending connection-manager took the stanza (`routed_at_unix_micros`).
    routed_at: Option<std::time::SystemTime>,
    /// The sender's span: the parent of the router's spans for this stanza.
    /// Per request, since one stream carries many stanzas of many traces.
    trace_context: TraceContext,
}

/// Parse one request; returns the key of the sender whose stanzas must stay
/// in order (the session's full JID, or the `from` of a server stanza).
fn parse_route_request(request: proto::RouteRequest) -> (String, ParsedRoute) {
    let sequence = request.sequence;
    let routed_at = origin_time::from_unix_micros(request.routed_at_unix_micros);
    let trace_context = TraceContext::from_map(request.trace_context);
    let parsed = origin_from_proto(request.origin).and_then(|origin| {
        stanza_from_wire("stanza", &request.stanza).map(|stanza| (origin, stanza))
    });
    let order_key = match &parsed {
        Ok((Origin::Session { jid, .. }, _)) => jid.to_string(),
        Ok((Origin::Server, stanza)) => stanza.attr("from").unwrap_or_default().to_string(),
        Err(_) => String::new(),
    };
    (
        order_key,
        ParsedRoute {
            sequence,
            parsed,
            routed_at,
            trace_context,
        },
    )
}

fn lane_of(order_key: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    order_key.hash(&mut hasher);
    // The remainder is below ROUTE_LANES_PER_STREAM, so it fits in usize.
    (hasher.finish() % ROUTE_LANES_PER_STREAM as u64) as usize
}

/// One lane of a route stream: routes its requests one after the other and
/// acknowledges each.
async fn run_route_lane(
    api: Arc<dyn RouterApi>,
    mut lane_rx: mpsc::Receiver<ParsedRoute>,
    ack_tx: mpsc::Sender<Result<proto::RouteAck, Status>>,
) {
    while let Some(item) = lane_rx.recv().await {
        let result = match item.parsed {
            Ok((origin, stanza)) => {
                with_remote_parent(&item.trace_context, || {
                    api.route(origin, stanza, item.routed_at)
                })
                .await
            }
            Err(message) => Err(invalid_request(message)),
        };
        if let Err(error) = &result {
            tracing::debug!(sequence = item.sequence, %error, "route request failed");
        }
        if ack_tx
            .send(Ok(ack_for(item.sequence, result)))
            .await
            .is_err()
        {
            break;
        }
    }
}

/// Read a route stream and hand each request to the lane of its sender.
async fn read_route_stream(
    api: Arc<dyn RouterApi>,
    mut inbound: Streaming<proto::RouteRequest>,
    ack_tx: mpsc::Sender<Result<proto::RouteAck, Status>>,
    draining: watch::Receiver<bool>,
) {
    let mut lanes: Vec<Option<mpsc::Sender<ParsedRoute>>> =
        (0..ROUTE_LANES_PER_STREAM).map(|_| None).collect();
    let drained = wait_for_drain(draining);
    tokio::pin!(drained);
    loop {
        let next = tokio::select! {
            biased;
            () = &mut drained => {
                tracing::debug!("route stream ends: router draining");
                break;
            }
            next = inbound.message() => next,
        };
        let request = match next {
            Ok(Some(request)) => request,
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(code = ?status.code(), error = %status.message(), "route stream broken");
                break;
            }
        };
        let (order_key, parsed) = parse_route_request(request);
        let lane = lanes[lane_of(&order_key)].get_or_insert_with(|| {
            let (lane_tx, lane_rx) = mpsc::channel(ROUTE_LANE_BUFFER);
            tokio::spawn(run_route_lane(Arc::clone(&api), lane_rx, ack_tx.clone()));
            lane_tx
        });
        if lane.send(parsed).await.is_err() {
            // The lane stopped: the client no longer reads acks.
            break;
        }
    }
    // The lanes finish what they hold; the ack stream ends after their last ack.
}

type RouteAckStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::RouteAck, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Router for RouterGrpcServer {
    async fn bind(
        &self,
        request: Request<proto::BindRequest>,
    ) -> Result<Response<proto::BindResponse>, Status> {
        let request = request.into_inner();
        let user = parse_bare_jid("user", &request.user).map_err(bad_request)?;
        let addr = addr_from_proto("addr", request.addr).map_err(bad_request)?;
        let outcome = match self
            .api
            .bind(&user, request.requested_resource.as_deref(), &addr)
            .await
        {
            Ok(jid) => proto::bind_response::Outcome::FullJid(jid.to_string()),
            Err(BindError::Api(error)) => return Err(api_error_to_status(error)),
            Err(rejection) => match bind_rejection_to_proto(&rejection) {
                Some(rejected) => proto::bind_response::Outcome::Rejected(rejected as i32),
                None => return Err(Status::internal("unmapped bind rejection")),
            },
        };
        Ok(Response::new(proto::BindResponse {
            outcome: Some(outcome),
        }))
    }

    async fn unbind(
        &self,
        request: Request<proto::UnbindRequest>,
    ) -> Result<Response<proto::UnbindResponse>, Status> {
        let request = request.into_inner();
        let jid = parse_full_jid("full_jid", &request.full_jid).map_err(bad_request)?;
        let addr = addr_from_proto("addr", request.addr).map_err(bad_request)?;
        self.api
            .unbind(&jid, &addr)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::UnbindResponse {}))
    }

    type RouteStreamStream = RouteAckStream;

    /// The requests of one sender (session) are handled strictly one after
    /// the other (RFC 6120 section 10.1) on one of the stream's lanes; other
    /// senders' requests do not wait for them. Each is acknowledged by its
    /// sequence number, acks of different lanes possibly out of order.
    async fn route_stream(
        &self,
        request: Request<Streaming<proto::RouteRequest>>,
    ) -> Result<Response<Self::RouteStreamStream>, Status> {
        let inbound = request.into_inner();
        let (ack_tx, ack_rx) = mpsc::channel(SERVER_ACK_BUFFER);
        tokio::spawn(read_route_stream(
            Arc::clone(&self.api),
            inbound,
            ack_tx,
            self.draining.clone(),
        ));
        Ok(Response::new(
            Box::pin(ReceiverStream::new(ack_rx)) as RouteAckStream
        ))
    }

    async fn undeliverable(
        &self,
        request: Request<proto::UndeliverableRequest>,
    ) -> Result<Response<proto::UndeliverableResponse>, Status> {
        let request = request.into_inner();
        let stanza = stanza_from_wire("stanza", &request.stanza).map_err(bad_request)?;
        let failed = addr_from_proto("failed", request.failed).map_err(bad_request)?;
        self.api
            .undeliverable(stanza, &failed)
            .await
            .map_err(api_error_to_status)?;
        Ok(Response::new(proto::UndeliverableResponse {}))
    }
}

/// One stanza waiting for its ack, wherever it currently travels.
struct QueuedRoute {
    request: proto::RouteRequest,
    sticky_key: String,
    /// Streams it was handed to and that broke before acknowledging it.
    failovers: usize,
    ack_tx: oneshot::Sender<ApiResult<()>>,
}

impl QueuedRoute {
    /// What the request holds: its stanza's bytes.
    fn bytes(&self) -> usize {
        self.request.stanza.len()
    }
}

/// The client end of one replica's route stream.
struct RouteStreamHandle {
    queue_tx: mpsc::UnboundedSender<QueuedRoute>,
    generation: u64,
    replica: Arc<Replica>,
}

struct RouterClientShared {
    replicas: ReplicaSet,
    /// The streams, by replica address; also the lock that keeps a session's
    /// stanzas in order while they move between streams.
    streams: Mutex<RouteStreams>,
    ack_timeout: Duration,
}

struct RouteStreams {
    handles: HashMap<String, RouteStreamHandle>,
    next_generation: u64,
    /// Sticky keys with stanzas not yet acknowledged: where they went, how many.
    in_flight: HashMap<String, InFlight>,
    /// The replicas every stream's replica was last found among.
    checked: Option<Replicas>,
}

/// The stanzas of one sticky key in flight, all on the stream of `address`.
struct InFlight {
    address: String,
    stanzas: usize,
}

/// One stanza of a sticky key counted in flight until `route` is done with
/// it (answered, failed, timed out or cancelled).
struct InFlightGuard<'a> {
    shared: &'a RouterClientShared,
    key: String,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        let mut streams = self.shared.streams.lock();
        if let Some(in_flight) = streams.in_flight.get_mut(&self.key) {
            in_flight.stanzas -= 1;
            if in_flight.stanzas == 0 {
                streams.in_flight.remove(&self.key);
            }
        }
    }
}

/// [`RouterApi`] over gRPC, balanced over every router replica.
///
/// `route` sends the stanza on the replica's long-lived `RouteStream` its
/// session maps to and resolves when the router acknowledges it (or fails with
/// `Unavailable` after [`crate::DEFAULT_CALL_TIMEOUT`]); stanzas in flight on
/// a stream that breaks are re-sent to another replica (at-least-once, see the
/// module docs). `unbind` is retried on every replica (it is idempotent),
/// `undeliverable` once (at-least-once), `bind` only when the request never
/// left (binding twice would replace the session with itself).
#[derive(Clone)]
pub struct GrpcRouterClient {
    shared: Arc<RouterClientShared>,
}

impl std::fmt::Debug for GrpcRouterClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("GrpcRouterClient")
            .field("replicas", &self.shared.replicas)
            .finish()
    }
}

impl GrpcRouterClient {
    /// Lazy connections to every endpoint (`host:port` or `http://host:port`);
    /// route streams open on first use.
    pub fn connect(endpoints: Vec<String>) -> Result<Self, ProtoError> {
        Self::connect_with_metrics(endpoints, GrpcClientMetrics::default())
    }

    /// [`GrpcRouterClient::connect`], observing every call and every
    /// stanza's ack time in `metrics`.
    pub fn connect_with_metrics(
        endpoints: Vec<String>,
        metrics: GrpcClientMetrics,
    ) -> Result<Self, ProtoError> {
        let replicas = ReplicaSet::connect("router", endpoints)?.with_metrics(metrics);
        let ack_timeout = replicas.call_timeout;
        Ok(GrpcRouterClient {
            shared: Arc::new(RouterClientShared {
                replicas,
                streams: Mutex::new(RouteStreams {
                    handles: HashMap::new(),
                    next_generation: 0,
                    in_flight: HashMap::new(),
                    checked: None,
                }),
                ack_timeout,
            }),
        })
    }
}

/// Hand a stanza to the stream of the replica its session maps to, opening
/// the stream when there is none. Called with the streams lock held, so that
/// the order of a session's stanzas is the order of these calls.
fn dispatch(shared: &Arc<RouterClientShared>, streams: &mut RouteStreams, mut item: QueuedRoute) {
    let replicas = shared.replicas.snapshot();
    loop {
        if item.failovers > replicas.len() {
            let _ = item.ack_tx.send(Err(ApiError::Unavailable(
                "no router replica acknowledged the stanza".into(),
            )));
            return;
        }
        // The key's stanzas in flight went to a stream that still lives: this
        // one follows them, whatever the replicas are now.
        let pinned = streams
            .in_flight
            .get(&item.sticky_key)
            .map(|in_flight| in_flight.address.clone())
            .filter(|address| streams.handles.contains_key(address));
        let address = match pinned {
            Some(address) => address,
            None => {
                forget_retired_streams(streams, &replicas);
                // A replica is eligible while its stream lives, or when it has
                // not failed recently: a session stays on its stream as long as it works.
                let Some(index) = ReplicaSet::sticky_index(&replicas, &item.sticky_key, |index| {
                    replicas[index].is_healthy()
                        || streams.handles.contains_key(&replicas[index].address)
                }) else {
                    let _ = item.ack_tx.send(Err(ApiError::Unavailable(
                        "no router replica is known".into(),
                    )));
                    return;
                };
                let replica = &replicas[index];
                if !streams.handles.contains_key(&replica.address) {
                    let (queue_tx, queue_rx) = mpsc::unbounded_channel();
                    let generation = streams.next_generation;
                    streams.next_generation += 1;
                    tokio::spawn(run_route_stream(
                        Arc::downgrade(shared),
                        Arc::clone(replica),
                        generation,
                        queue_rx,
                    ));
                    streams.handles.insert(
                        replica.address.clone(),
                        RouteStreamHandle {
                            queue_tx,
                            generation,
                            replica: Arc::clone(replica),
                        },
                    );
                }
                replica.address.clone()
            }
        };
        let Some(handle) = streams.handles.get(&address) else {
            return;
        };
        if let Some(in_flight) = streams.in_flight.get_mut(&item.sticky_key) {
            in_flight.address.clone_from(&address);
        }
        match handle.queue_tx.send(item) {
            Ok(()) => return,
            Err(mpsc::error::SendError(returned)) => {
                // The stream task is gone without cleaning up: forget it.
                if let Some(handle) = streams.handles.remove(&address) {
                    handle.replica.mark_unhealthy();
                }
                item = returned;
                item.failovers += 1;
            }
        }
    }
}

/// Close the streams of replicas no longer listed once no stanza in flight
/// needs them: dropping the handle ends the stream after its last ack.
fn forget_retired_streams(streams: &mut RouteStreams, replicas: &Replicas) {
    if streams
        .checked
        .as_ref()
        .is_some_and(|checked| Arc::ptr_eq(checked, replicas))
    {
        return;
    }
    let listed = |address: &String| replicas.iter().any(|replica| &replica.address == address);
    let RouteStreams {
        handles, in_flight, ..
    } = streams;
    handles.retain(|address, _| {
        listed(address) || in_flight.values().any(|pin| &pin.address == address)
    });
    if handles.keys().all(listed) {
        streams.checked = Some(Arc::clone(replicas));
    }
}

/// A replica's stream broke: forget it and re-dispatch, in order, everything
/// it had not acknowledged.
fn fail_over(
    shared: &Weak<RouterClientShared>,
    replica: &Replica,
    generation: u64,
    unacknowledged: Vec<QueuedRoute>,
    mut queue_rx: mpsc::UnboundedReceiver<QueuedRoute>,
) {
    let Some(shared) = shared.upgrade() else {
        for item in unacknowledged {
            let _ = item
                .ack_tx
                .send(Err(ApiError::Unavailable("router client dropped".into())));
        }
        return;
    };
    let mut streams = shared.streams.lock();
    // The same replica as in the current list while it is still listed.
    replica.mark_unhealthy();
    let address = replica.address.as_str();
    if streams
        .handles
        .get(address)
        .is_some_and(|handle| handle.generation == generation)
    {
        streams.handles.remove(address);
    }
    // No sender is left once the handle is gone: what is queued is all there is.
    queue_rx.close();
    let mut resend = unacknowledged;
    while let Ok(item) = queue_rx.try_recv() {
        resend.push(item);
    }
    let resend: Vec<QueuedRoute> = resend
        .into_iter()
        .filter(|item| !item.ack_tx.is_closed())
        .collect();
    if !resend.is_empty() {
        tracing::warn!(
            replica = %address,
            stanzas = resend.len(),
            "route stream broke, re-sending unacknowledged stanzas to another replica"
        );
    }
    for mut item in resend {
        item.failovers += 1;
        dispatch(&shared, &mut streams, item);
    }
}

/// Why a client route stream stopped.
enum StreamEnd {
    /// The client is gone and nothing is in flight.
    Finished,
    /// The stream broke or the replica ended it; fail over.
    Broken(String),
}

/// The client task of one replica's route stream.
async fn run_route_stream(
    shared: Weak<RouterClientShared>,
    replica: Arc<Replica>,
    generation: u64,
    mut queue_rx: mpsc::UnboundedReceiver<QueuedRoute>,
) {
    let mut pending: BTreeMap<u64, QueuedRoute> = BTreeMap::new();
    let open_timeout = shared
        .upgrade()
        .map(|shared| shared.replicas.call_timeout)
        .unwrap_or(crate::DEFAULT_CALL_TIMEOUT);
    let channel = replica.channel.clone();
    let end = drive_route_stream(channel, open_timeout, &mut queue_rx, &mut pending).await;
    match end {
        StreamEnd::Finished => {}
        StreamEnd::Broken(reason) => {
            tracing::warn!(replica = %replica.address, %reason, "route stream ended");
            fail_over(
                &shared,
                &replica,
                generation,
                pending.into_values().collect(),
                queue_rx,
            );
        }
    }
}

async fn drive_route_stream(
    channel: Channel,
    open_timeout: Duration,
    queue_rx: &mut mpsc::UnboundedReceiver<QueuedRoute>,
    pending: &mut BTreeMap<u64, QueuedRoute>,
) -> StreamEnd {
    // Never more in the outbound buffer than in flight, so sending never waits.
    let (outbound_tx, outbound_rx) = mpsc::channel(MAX_IN_FLIGHT_PER_STREAM);
    let mut client = RouterClient::new(channel);
    let opened = tokio::time::timeout(
        open_timeout,
        client.route_stream(ReceiverStream::new(outbound_rx)),
    )
    .await;
    let mut acks = match opened {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return StreamEnd::Broken(format!("open failed: {}", status.message())),
        Err(_) => return StreamEnd::Broken("open timed out".into()),
    };
    let mut next_sequence: u64 = 1;
    let mut accepting = true;
    // The stanza bytes of `pending`; at least one request is always let
    // through, however large, so that a stanza is never stuck.
    let mut pending_bytes: usize = pending.values().map(QueuedRoute::bytes).sum();
    loop {
        if !accepting && pending.is_empty() {
            return StreamEnd::Finished;
        }
        tokio::select! {
            biased;
            ack = acks.message() => match ack {
                Ok(Some(ack)) => {
                    if let Some(item) = pending.remove(&ack.sequence) {
                        pending_bytes -= item.bytes();
                        let _ = item.ack_tx.send(ack_result(&ack));
                    } else {
                        tracing::warn!(sequence = ack.sequence, "ack for an unknown sequence number");
                    }
                }
                Ok(None) => return StreamEnd::Broken("the router ended the stream".into()),
                Err(status) => return StreamEnd::Broken(status.message().to_string()),
            },
            item = queue_rx.recv(), if accepting
                && pending.len() < MAX_IN_FLIGHT_PER_STREAM
                && (pending.is_empty() || pending_bytes < MAX_IN_FLIGHT_BYTES_PER_STREAM) => match item {
                Some(item) => {
                    let sequence = next_sequence;
                    next_sequence += 1;
                    let mut request = item.request.clone();
                    request.sequence = sequence;
                    pending_bytes += item.bytes();
                    pending.insert(sequence, item);
                    if outbound_tx.try_send(request).is_err() {
                        return StreamEnd::Broken("outbound stream closed".into());
                    }
                }
                None => accepting = false,
            },
        }
    }
}

#[async_trait]
impl RouterApi for GrpcRouterClient {
    async fn bind(
        &self,
        user: &BareJid,
        requested: Option<&str>,
        addr: &SessionAddr,
    ) -> Result<FullJid, BindError> {
        let request = proto::BindRequest {
            user: user.to_string(),
            requested_resource: requested.map(str::to_string),
            addr: Some(addr_to_proto(addr)),
        };
        let response = self
            .shared
            .replicas
            .call("bind", RetryPolicy::AtMostOnce, |channel| {
                let request = request.clone();
                async move { RouterClient::new(channel).bind(request).await }
            })
            .await?;
        match response.outcome {
            Some(proto::bind_response::Outcome::FullJid(jid)) => {
                Ok(parse_full_jid("full_jid", &jid).map_err(malformed_response)?)
            }
            Some(proto::bind_response::Outcome::Rejected(rejection)) => {
                Err(bind_rejection_from_proto(rejection))
            }
            None => Err(BindError::Api(malformed_response(
                "bind outcome missing".into(),
            ))),
        }
    }

    async fn unbind(&self, jid: &FullJid, addr: &SessionAddr) -> ApiResult<()> {
        let request = proto::UnbindRequest {
            full_jid: jid.to_string(),
            addr: Some(addr_to_proto(addr)),
        };
        self.shared
            .replicas
            .call("unbind", RetryPolicy::Idempotent, |channel| {
                let request = request.clone();
                async move { RouterClient::new(channel).unbind(request).await }
            })
            .await?;
        Ok(())
    }

    async fn route(
        &self,
        origin: Origin,
        stanza: Element,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<()> {
        // Stanzas of one session stay on one stream; server-originated ones
        // are kept in order per sender.
        let sticky_key = match &origin {
            Origin::Session { jid, .. } => jid.to_string(),
            Origin::Server => stanza.attr("from").unwrap_or_default().to_string(),
        };
        let request = proto::RouteRequest {
            sequence: 0,
            origin: Some(origin_to_proto(&origin)),
            stanza: stanza_to_wire(&stanza),
            routed_at_unix_micros: origin_time::to_unix_micros(routed_at),
            // Each stanza carries its own context: the stream outlives any one trace.
            trace_context: TraceContext::current().into_map(),
        };
        let started = std::time::Instant::now();
        let (ack_tx, ack_rx) = oneshot::channel();
        // Before the first answer of a `dns:///` name there is nobody to send to.
        self.shared.replicas.current().await;
        let _in_flight = InFlightGuard {
            shared: &self.shared,
            key: sticky_key.clone(),
        };
        {
            let mut streams = self.shared.streams.lock();
            streams
                .in_flight
                .entry(sticky_key.clone())
                .or_insert_with(|| InFlight {
                    address: String::new(),
                    stanzas: 0,
                })
                .stanzas += 1;
            dispatch(
                &self.shared,
                &mut streams,
                QueuedRoute {
                    request,
                    sticky_key,
                    failovers: 0,
                    ack_tx,
                },
            );
        }
        let (result, code) = match tokio::time::timeout(self.shared.ack_timeout, ack_rx).await {
            Ok(Ok(result)) => {
                let code = match &result {
                    Ok(()) => Code::Ok,
                    Err(error) => api_error_to_status(error.clone()).code(),
                };
                (result, code)
            }
            Ok(Err(_)) => (
                Err(ApiError::Unavailable(
                    "route stream dropped the stanza".into(),
                )),
                Code::Unavailable,
            ),
            Err(_) => (
                Err(ApiError::Unavailable(format!(
                    "no route ack within {} ms",
                    self.shared.ack_timeout.as_millis()
                ))),
                Code::DeadlineExceeded,
            ),
        };
        self.shared
            .replicas
            .metrics
            .observe("router", "route_stream", code, started.elapsed());
        result
    }

    async fn undeliverable(&self, stanza: Element, failed: &SessionAddr) -> ApiResult<()> {
        let request = proto::UndeliverableRequest {
            stanza: stanza_to_wire(&stanza),
            failed: Some(addr_to_proto(failed)),
            trace_context: Default::default(),
        };
        self.shared
            .replicas
            .call("undeliverable", RetryPolicy::AtLeastOnce, |channel| {
                let request = request.clone();
                async move { RouterClient::new(channel).undeliverable(request).await }
            })
            .await?;
        Ok(())
    }
}
