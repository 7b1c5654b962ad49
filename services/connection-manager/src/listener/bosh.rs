//! BOSH (XEP-0124) carrying XMPP (XEP-0206) at [`BOSH_PATH`] on the HTTP
//! listener, for web clients that cannot use a WebSocket.
//!
//! A BOSH session is a virtual connection: the children of each request's
//! `<body/>` are stream events for the same negotiation and session code as
//! a TCP or WebSocket stream (with the message framing, each element
//! declaring its namespaces), and what that code writes is collected for the
//! requests the server holds (the transport is `transport::bosh`). To the
//! router it is an ordinary session.
//!
//! This module does the HTTP part: session creation with bounded
//! `wait`/`hold`/`requests` (XEP-0124 section 7), request ids in order and
//! within the window (section 14), retransmission of a repeated request's
//! response, `xmpp:restart` (XEP-0206 section 6), `type='terminate'` from the
//! client (section 13), inactivity and `pause` (section 10), and the
//! terminal conditions of section 17.2.
//!
//! Security: like a WebSocket on this listener, a BOSH session is never
//! treated as TLS-protected: SCRAM only, never PLAIN, no in-band
//! registration (docs/adr/0002).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, CONTENT_TYPE,
};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures::StreamExt;
use parking_lot::Mutex;
use starling_jid::normalize_domainpart;
use starling_xmpp::{
    escape_attr, ns, parse_element, Element, Limits, Node, StreamEvent, StreamHeader,
};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits::ConnectionPermit;
use crate::metrics;
use crate::negotiation;
use crate::session;
use crate::shared::Shared;
use crate::transport::bosh::{BoshTransport, Link};
use crate::xml::random_id;

/// Where the BOSH endpoint is served.
pub const BOSH_PATH: &str = "/http-bind";
/// XEP-0124 section 4: the namespace of `<body/>`.
const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
/// XEP-0206 section 5: the namespace of the `xmpp:` attributes.
const NS_XBOSH: &str = "urn:xmpp:xbosh";
/// The protocol version this connection manager implements.
const BOSH_VERSION: &str = "1.6";
/// The longest a request is held (XEP-0124 section 7.1, `wait`).
const MAX_WAIT: Duration = Duration::from_secs(60);
/// The most requests held at once (`hold`).
const MAX_HOLD: u64 = 1;
/// The shortest polling interval we ask of polling clients, in seconds.
const POLLING_SECS: u64 = 2;
/// The longest `pause` a client may ask for (XEP-0124 section 10).
const MAX_PAUSE: Duration = Duration::from_secs(120);
/// XEP-0124 section 14.1: request ids stay below 2^53.
const MAX_RID: u64 = (1 << 53) - 1;
/// How much of an oversize body is read and dropped before the answer.
const OVERSIZE_DRAIN_FACTOR: usize = 4;
const OVERSIZE_DRAIN_TIME: Duration = Duration::from_secs(2);
/// Events of one session waiting for the stream code.
const EVENT_QUEUE: usize = 64;

/// The terminal conditions of XEP-0124 section 17.2 that we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    BadRequest,
    HostUnknown,
    ItemNotFound,
    PolicyViolation,
    RemoteConnectionFailed,
    RemoteStreamError,
    SystemShutdown,
    InternalServerError,
}

impl Condition {
    fn name(self) -> &'static str {
        match self {
            Condition::BadRequest => "bad-request",
            Condition::HostUnknown => "host-unknown",
            Condition::ItemNotFound => "item-not-found",
            Condition::PolicyViolation => "policy-violation",
            Condition::RemoteConnectionFailed => "remote-connection-failed",
            Condition::RemoteStreamError => "remote-stream-error",
            Condition::SystemShutdown => "system-shutdown",
            Condition::InternalServerError => "internal-server-error",
        }
    }
}

/// The request-side state of one session.
struct SessionState {
    /// The rid the next request in order carries.
    next_rid: u64,
    /// Requests being processed or held, and those waiting for their turn.
    in_flight: u64,
    /// Release signals of the held requests, oldest first.
    held: VecDeque<Arc<Notify>>,
    /// The latest responses, by rid, for retransmission (section 14.3).
    answered: VecDeque<(u64, Arc<str>)>,
    /// Since when no request is in flight.
    idle_since: Instant,
    /// The inactivity allowed now: `inactivity`, or a client's `pause`.
    idle_limit: Duration,
    ended: bool,
}

struct BoshSession {
    sid: String,
    link: Arc<Link>,
    events_tx: mpsc::Sender<StreamEvent>,
    to: String,
    lang: Option<String>,
    wait: Duration,
    hold: u64,
    requests: u64,
    inactivity: Duration,
    state: Mutex<SessionState>,
    /// Any change of `state` the waiting requests or the watchdog care about.
    changed: Notify,
}

type Sessions = Arc<Mutex<HashMap<String, Arc<BoshSession>>>>;

#[derive(Clone)]
struct BoshState {
    shared: Arc<Shared>,
    connections: TaskTracker,
    sessions: Sessions,
}

/// The route: `POST` and the CORS preflight `OPTIONS` at [`BOSH_PATH`].
/// Served with `into_make_service_with_connect_info::<SocketAddr>()`.
pub(crate) fn router(shared: Arc<Shared>, connections: TaskTracker) -> Router {
    Router::new()
        .route(BOSH_PATH, post(request).options(preflight))
        .with_state(BoshState {
            shared,
            connections,
            sessions: Arc::default(),
        })
}

/// CORS preflight: any origin may POST XML here (the session is
/// authenticated by SASL inside, not by cookies).
async fn preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*")),
            (
                ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST, OPTIONS"),
            ),
            (
                ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Content-Type"),
            ),
            (ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400")),
        ],
    )
        .into_response()
}

fn xml_response(xml: impl Into<String>) -> Response {
    let xml: String = xml.into();
    (
        StatusCode::OK,
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/xml; charset=utf-8"),
            ),
            (ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*")),
        ],
        xml,
    )
        .into_response()
}

/// `<body type='terminate' condition='...'/>` (XEP-0124 section 17.2).
fn terminate_xml(condition: Option<Condition>) -> String {
    match condition {
        Some(condition) => format!(
            "<body type='terminate' condition='{}' xmlns='{NS_HTTPBIND}'/>",
            condition.name()
        ),
        None => format!("<body type='terminate' xmlns='{NS_HTTPBIND}'/>"),
    }
}

/// A request: processed in a task of its own, so that output taken for it
/// is cached for retransmission even if the client drops the connection.
async fn request(
    State(state): State<BoshState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Body,
) -> Response {
    let task = state
        .connections
        .spawn(handle_request(state.clone(), peer, body));
    match task.await {
        Ok(xml) => xml_response(xml.as_ref()),
        Err(_) => xml_response(terminate_xml(Some(Condition::InternalServerError))),
    }
}

enum BodyError {
    /// Longer than allowed; what was read of it.
    TooLarge(Vec<u8>),
    Broken,
}

async fn read_body(body: Body, max_bytes: usize) -> Result<Vec<u8>, BodyError> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| BodyError::Broken)?;
        if bytes.len() + chunk.len() > max_bytes {
            let room = max_bytes - bytes.len();
            bytes.extend_from_slice(&chunk[..room]);
            // Read (and drop) a bounded rest, so that the client, still
            // sending, reads our answer instead of a connection reset.
            let mut drained = 0usize;
            let _ = tokio::time::timeout(OVERSIZE_DRAIN_TIME, async {
                while drained < max_bytes.saturating_mul(OVERSIZE_DRAIN_FACTOR) {
                    match stream.next().await {
                        Some(Ok(chunk)) => drained += chunk.len(),
                        Some(Err(_)) | None => break,
                    }
                }
            })
            .await;
            return Err(BodyError::TooLarge(bytes));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// The `sid` of a body too large to parse, from its start tag.
fn scan_sid(prefix: &[u8]) -> Option<String> {
    let head = &prefix[..prefix.len().min(2048)];
    let head = String::from_utf8_lossy(head);
    let start_tag = head.split('>').next()?;
    for quote in ['\'', '"'] {
        for (index, _) in start_tag.match_indices(&format!("sid={quote}")) {
            // Not the tail of another attribute name.
            let before = start_tag[..index].chars().next_back();
            if !before.is_some_and(char::is_whitespace) {
                continue;
            }
            let value = &start_tag[index + 5..];
            return value.split(quote).next().map(str::to_string);
        }
    }
    None
}

/// An attribute in the `urn:xmpp:xbosh` namespace, whatever its prefix.
fn xbosh_attr<'a>(body: &'a Element, local: &str) -> Option<&'a str> {
    body.attrs().find_map(|(name, value)| {
        let (prefix, name_local) = name.split_once(':')?;
        let bound = prefix != "xml"
            && prefix != "xmlns"
            && name_local == local
            && body.attr(&format!("xmlns:{prefix}")) == Some(NS_XBOSH);
        bound.then_some(value)
    })
}

fn parse_number(value: Option<&str>) -> Option<u64> {
    let value = value?;
    if value.is_empty() || value.len() > 16 || !value.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

async fn handle_request(state: BoshState, peer: SocketAddr, body: Body) -> Arc<str> {
    let shared = &state.shared;
    let max_bytes = shared.limits.max_stanza_bytes;
    let bytes = match read_body(body, max_bytes).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge(prefix)) => {
            tracing::debug!(peer = %peer, "bosh request body too large");
            if let Some(sid) = scan_sid(&prefix) {
                let session = state.sessions.lock().get(&sid).cloned();
                if let Some(session) = session {
                    session.end(&state.sessions);
                }
            }
            return terminate_xml(Some(Condition::PolicyViolation)).into();
        }
        Err(BodyError::Broken) => return terminate_xml(Some(Condition::BadRequest)).into(),
    };
    // The body element is one level above the stanzas it carries.
    let limits = Limits {
        max_depth: shared.parser_limits.max_depth + 1,
        max_stanza_bytes: max_bytes.max(shared.parser_limits.max_stanza_bytes),
        ..shared.parser_limits
    };
    let body = match parse_element(&bytes, &limits) {
        Ok(body) if body.is("body", NS_HTTPBIND) => body,
        Ok(_) | Err(_) => {
            tracing::debug!(peer = %peer, "bosh request is not a body element");
            return terminate_xml(Some(Condition::BadRequest)).into();
        }
    };
    let Some(rid) = parse_number(body.attr("rid")).filter(|rid| *rid <= MAX_RID) else {
        return terminate_xml(Some(Condition::BadRequest)).into();
    };
    match body.attr("sid") {
        None => create_session(&state, peer, rid, &body).await,
        Some(sid) => {
            let session = state.sessions.lock().get(sid).cloned();
            match session {
                Some(session) => session.request(&state.sessions, rid, body).await,
                None => terminate_xml(Some(Condition::ItemNotFound)).into(),
            }
        }
    }
}

/// XEP-0124 section 7 and XEP-0206 section 5: a new session.
async fn create_session(state: &BoshState, peer: SocketAddr, rid: u64, body: &Element) -> Arc<str> {
    let shared = &state.shared;
    let to = body.attr("to").unwrap_or_default();
    if normalize_domainpart(to).ok().as_deref() != Some(shared.domain.as_str()) {
        return terminate_xml(Some(Condition::HostUnknown)).into();
    }
    if shared.drain.stop_accepting.is_cancelled() {
        return terminate_xml(Some(Condition::SystemShutdown)).into();
    }
    let Some(permit) = shared.ip_limits.try_connect(peer.ip()) else {
        tracing::info!(peer = %peer, listener = "bosh", "too many connections from one address");
        shared.metrics.limit_hit(metrics::Limit::ConnectionsPerIp);
        return terminate_xml(Some(Condition::PolicyViolation)).into();
    };
    let wait = parse_number(body.attr("wait"))
        .map(Duration::from_secs)
        .unwrap_or(MAX_WAIT)
        .min(MAX_WAIT);
    let hold = parse_number(body.attr("hold")).unwrap_or(1).min(MAX_HOLD);
    // Section 7.1: one more than hold, so that the client can always send.
    let requests = hold + 1;
    let inactivity = shared.limits.bosh_inactivity;
    let link = Link::new(max_bytes_of_output(shared));
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let session = Arc::new(BoshSession {
        sid: random_id(),
        link: Arc::clone(&link),
        events_tx,
        to: to.to_string(),
        lang: body.attr("xml:lang").map(str::to_string),
        wait,
        hold,
        requests,
        inactivity,
        state: Mutex::new(SessionState {
            next_rid: rid + 1,
            in_flight: 1,
            held: VecDeque::new(),
            answered: VecDeque::new(),
            idle_since: Instant::now(),
            idle_limit: inactivity,
            ended: false,
        }),
        changed: Notify::new(),
    });
    state
        .sessions
        .lock()
        .insert(session.sid.clone(), Arc::clone(&session));
    let transport = link.transport(events_rx);
    let deadline = Instant::now() + shared.limits.pre_auth_timeout;
    state.connections.spawn(serve_bosh(
        Arc::clone(shared),
        transport,
        peer,
        permit,
        deadline,
        Arc::clone(&link),
    ));
    tokio::spawn(watchdog(
        Arc::clone(&session),
        Arc::clone(&state.sessions),
        shared.shutdown.clone(),
    ));
    tracing::debug!(peer = %peer, sid = %session.sid, "bosh session created");
    // XEP-0206 section 14: `xmpp:version` defaults to 1.0.
    let version = xbosh_attr(body, "version").unwrap_or("1.0").to_string();
    session.open_stream(Some(version)).await;
    session.respond(&state.sessions, rid, true).await
}

/// Room for what waits for the client: a few of the largest stanzas.
fn max_bytes_of_output(shared: &Shared) -> usize {
    shared.limits.max_stanza_bytes.saturating_mul(4)
}

async fn serve_bosh(
    shared: Arc<Shared>,
    transport: BoshTransport,
    peer: SocketAddr,
    permit: ConnectionPermit,
    deadline: Instant,
    link: Arc<Link>,
) {
    let conn = shared.next_conn_id();
    let mut counted = shared.metrics.connection(metrics::Transport::Bosh);
    tracing::debug!(conn, peer = %peer, listener = "bosh", "connection accepted");
    if let Some(bound) =
        negotiation::negotiate(Arc::clone(&shared), conn, transport, peer, deadline).await
    {
        counted.bound();
        session::run(shared, bound).await;
    }
    // However the stream ended, the next request learns it.
    link.close();
    drop(permit);
    tracing::debug!(conn, peer = %peer, "connection closed");
}

/// Ends a session that stays idle past its inactivity (or pause): the stream
/// sees the connection lost, and the session is unbound like any other.
async fn watchdog(session: Arc<BoshSession>, sessions: Sessions, shutdown: CancellationToken) {
    loop {
        let changed = session.changed.notified();
        let deadline = {
            let state = session.state.lock();
            if state.ended {
                return;
            }
            (state.in_flight == 0).then(|| state.idle_since + state.idle_limit)
        };
        let idle = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = changed => {}
            _ = shutdown.cancelled() => return,
            _ = idle => {
                let expired = {
                    let state = session.state.lock();
                    state.in_flight == 0 && state.idle_since.elapsed() >= state.idle_limit
                };
                if expired {
                    tracing::debug!(sid = %session.sid, "bosh session inactive");
                    session.end(&sessions);
                    return;
                }
            }
        }
    }
}

impl BoshSession {
    /// The session is over: no more requests, the stream sees the connection lost.
    fn end(&self, sessions: &Sessions) {
        let held: Vec<Arc<Notify>> = {
            let mut state = self.state.lock();
            state.ended = true;
            state.held.drain(..).collect()
        };
        sessions.lock().remove(&self.sid);
        self.link.lose();
        for release in held {
            release.notify_one();
        }
        self.changed.notify_waiters();
    }

    /// A stream header for the stream code: at creation and at each restart.
    async fn open_stream(&self, version: Option<String>) {
        let header = StreamHeader {
            to: Some(self.to.clone()),
            from: None,
            id: None,
            version,
            lang: self.lang.clone(),
            default_namespace: Some(ns::CLIENT.to_string()),
        };
        self.feed(StreamEvent::Open(header)).await;
    }

    async fn feed(&self, event: StreamEvent) {
        // A stream that already ended takes nothing; the next response says so.
        let _ = self.events_tx.send(event).await;
    }

    fn terminate(&self, sessions: &Sessions, condition: Condition) -> Arc<str> {
        self.end(sessions);
        terminate_xml(Some(condition)).into()
    }

    /// A request on an existing session.
    async fn request(&self, sessions: &Sessions, rid: u64, body: Element) -> Arc<str> {
        enum Admission {
            Ended,
            Repeated,
            OutOfWindow,
            TooMany,
            Admitted,
        }
        let admission = {
            let mut state = self.state.lock();
            if state.ended {
                Admission::Ended
            } else if rid < state.next_rid {
                Admission::Repeated
            } else if rid >= state.next_rid + self.requests {
                // Section 14.2: within the window of `requests` outstanding rids.
                Admission::OutOfWindow
            } else {
                state.in_flight += 1;
                state.idle_limit = self.inactivity;
                if state.in_flight > self.requests {
                    Admission::TooMany
                } else {
                    Admission::Admitted
                }
            }
        };
        match admission {
            Admission::Ended => return terminate_xml(Some(Condition::ItemNotFound)).into(),
            Admission::Repeated => return self.retransmit(sessions, rid).await,
            Admission::OutOfWindow => {
                tracing::debug!(sid = %self.sid, rid, "bosh rid out of window");
                return self.terminate(sessions, Condition::ItemNotFound);
            }
            Admission::TooMany => {
                tracing::debug!(sid = %self.sid, "too many simultaneous bosh requests");
                return self.terminate(sessions, Condition::PolicyViolation);
            }
            Admission::Admitted => {}
        }
        // Section 14.2: requests are processed in rid order.
        let turn_deadline = Instant::now() + self.wait;
        loop {
            let changed = self.changed.notified();
            {
                let state = self.state.lock();
                if state.ended {
                    return terminate_xml(Some(Condition::ItemNotFound)).into();
                }
                if state.next_rid == rid {
                    break;
                }
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(turn_deadline) => {
                    return self.terminate(sessions, Condition::ItemNotFound);
                }
            }
        }
        let terminating = body.attr("type") == Some("terminate");
        if xbosh_attr(&body, "restart") == Some("true") {
            // XEP-0206 section 6: a restart stands for a new stream header.
            self.open_stream(Some("1.0".to_string())).await;
        }
        let pause = parse_number(body.attr("pause"));
        let mut body = body;
        for node in std::mem::take(body.nodes_mut()) {
            match node {
                Node::Element(element) => self.feed(StreamEvent::Element(element)).await,
                Node::Text(text) if text.trim().is_empty() => {}
                Node::Text(_) => {
                    self.advance(rid);
                    return self.terminate(sessions, Condition::BadRequest);
                }
            }
        }
        if terminating {
            // Section 13: the stanzas it carries are sent, then the stream closes.
            self.feed(StreamEvent::Close).await;
            self.advance(rid);
            tracing::debug!(sid = %self.sid, "bosh session terminated by the client");
            self.end(sessions);
            return terminate_xml(None).into();
        }
        if let Some(pause) = pause {
            // Section 10: answer every held request now, allow a longer silence.
            let pause = Duration::from_secs(pause).min(MAX_PAUSE);
            let held: Vec<Arc<Notify>> = {
                let mut state = self.state.lock();
                state.idle_limit = pause.max(self.inactivity);
                state.held.drain(..).collect()
            };
            for release in held {
                release.notify_one();
            }
            self.advance(rid);
            return self.finish(rid, empty_body());
        }
        self.advance(rid);
        self.respond(sessions, rid, false).await
    }

    fn advance(&self, rid: u64) {
        self.state.lock().next_rid = rid + 1;
        self.changed.notify_waiters();
    }

    /// Section 14.3: a repeated rid gets the response already sent for it.
    async fn retransmit(&self, sessions: &Sessions, rid: u64) -> Arc<str> {
        let deadline = Instant::now() + self.wait + Duration::from_secs(5);
        loop {
            let changed = self.changed.notified();
            let lost = {
                let state = self.state.lock();
                if let Some((_, xml)) = state.answered.iter().find(|(answered, _)| *answered == rid)
                {
                    return Arc::clone(xml);
                }
                let oldest_kept = state.next_rid.saturating_sub(self.requests);
                rid < oldest_kept || state.ended
            };
            if lost {
                return self.terminate(sessions, Condition::ItemNotFound);
            }
            // Still held: it gets the same response once there is one.
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return self.terminate(sessions, Condition::ItemNotFound);
                }
            }
        }
    }

    /// Hold the request until there is output, it must make room for a newer
    /// one, or `wait` passes; then answer with what was written.
    async fn respond(&self, sessions: &Sessions, rid: u64, creating: bool) -> Arc<str> {
        let release = Arc::new(Notify::new());
        if !creating {
            let released: Vec<Arc<Notify>> = {
                let mut state = self.state.lock();
                state.held.push_back(Arc::clone(&release));
                let excess = state.held.len().saturating_sub(self.hold as usize);
                state.held.drain(..excess).collect()
            };
            for older in released {
                older.notify_one();
            }
        }
        let deadline = Instant::now() + self.wait;
        let taken = loop {
            let ready = self.link.ready();
            let changed = self.changed.notified();
            if let Some(taken) = self.link.take() {
                break taken;
            }
            if self.state.lock().ended {
                break (Vec::new(), true);
            }
            tokio::select! {
                _ = ready => {}
                _ = changed => {}
                _ = release.notified() => break self.link.take().unwrap_or_default(),
                _ = tokio::time::sleep_until(deadline) => break self.link.take().unwrap_or_default(),
            }
        };
        let (units, closed) = taken;
        let session_attrs = creating.then(|| self.creation_attrs(&units));
        let rendered = render(&units, closed, session_attrs.as_deref());
        if rendered.terminal {
            tracing::debug!(sid = %self.sid, "bosh session ended by the stream");
            self.end(sessions);
        }
        {
            let mut state = self.state.lock();
            state.held.retain(|held| !Arc::ptr_eq(held, &release));
        }
        self.finish(rid, rendered.xml)
    }

    /// Account for an answered request and keep its response.
    fn finish(&self, rid: u64, xml: String) -> Arc<str> {
        let xml: Arc<str> = xml.into();
        {
            let mut state = self.state.lock();
            state.in_flight = state.in_flight.saturating_sub(1);
            if state.in_flight == 0 {
                state.idle_since = Instant::now();
            }
            state.answered.push_back((rid, Arc::clone(&xml)));
            while state.answered.len() as u64 > self.requests + 1 {
                state.answered.pop_front();
            }
        }
        self.changed.notify_waiters();
        xml
    }

    /// XEP-0124 section 7.1 and XEP-0206 section 5: the session's parameters.
    fn creation_attrs(&self, units: &[String]) -> String {
        let mut attrs = format!(
            " sid='{}' wait='{}' requests='{}' hold='{}' inactivity='{}' polling='{POLLING_SECS}' maxpause='{}' ver='{BOSH_VERSION}' from='{}' secure='false' xmpp:version='1.0' xmpp:restartlogic='true'",
            self.sid,
            self.wait.as_secs(),
            self.requests,
            self.hold,
            self.inactivity.as_secs().max(1),
            MAX_PAUSE.as_secs(),
            escape_attr(&self.to),
        );
        if let Some(stream_id) = units.iter().find_map(|unit| open_id(unit)) {
            attrs.push_str(" authid='");
            attrs.push_str(&escape_attr(&stream_id));
            attrs.push('\'');
        }
        attrs
    }
}

fn empty_body() -> String {
    format!("<body xmlns='{NS_HTTPBIND}'/>")
}

/// The stream id of an `<open/>` unit.
fn open_id(unit: &str) -> Option<String> {
    let rest = unit.strip_prefix("<open ")?;
    let start = rest.find(" id='")? + 5;
    let value = &rest[start..];
    Some(value[..value.find('\'')?].to_string())
}

struct Rendered {
    xml: String,
    /// The response ends the session.
    terminal: bool,
}

/// The units the stream code wrote, as one response `<body/>`: the stream
/// header is implied by the session, `<close/>` is `type='terminate'`, a
/// stream error is `condition='remote-stream-error'` with the error's
/// content (XEP-0206 section 7).
fn render(units: &[String], closed: bool, session_attrs: Option<&str>) -> Rendered {
    let mut content = String::new();
    let mut terminal = closed;
    let mut stream_error = false;
    let mut stream_closed = false;
    for unit in units {
        if unit.starts_with("<open ") {
            continue;
        }
        if unit.starts_with("<close ") {
            terminal = true;
            stream_closed = true;
            continue;
        }
        if unit.starts_with("<stream:error") {
            // XEP-0206 section 7: the body holds the content of the stream error.
            stream_error = true;
            terminal = true;
            let inner = unit
                .split_once('>')
                .and_then(|(_, rest)| rest.strip_suffix("</stream:error>"))
                .unwrap_or_default();
            content.push_str(inner);
            continue;
        }
        content.push_str(unit);
    }
    let mut xml = String::from("<body");
    if terminal {
        xml.push_str(" type='terminate'");
        let condition = if stream_error {
            Some(Condition::RemoteStreamError)
        } else if !stream_closed {
            Some(Condition::RemoteConnectionFailed)
        } else {
            None
        };
        if let Some(condition) = condition {
            xml.push_str(" condition='");
            xml.push_str(condition.name());
            xml.push('\'');
        }
    }
    xml.push_str(" xmlns='");
    xml.push_str(NS_HTTPBIND);
    xml.push('\'');
    if let Some(attrs) = session_attrs {
        xml.push_str(" xmlns:xmpp='");
        xml.push_str(NS_XBOSH);
        xml.push('\'');
        xml.push_str(attrs);
    }
    if content.is_empty() {
        xml.push_str("/>");
    } else {
        xml.push_str(" xmlns:stream='");
        xml.push_str(ns::STREAM);
        xml.push_str("'>");
        xml.push_str(&content);
        xml.push_str("</body>");
    }
    Rendered { xml, terminal }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_translates_the_framing() {
        let units = vec![
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' id='s1' from='example.com' version='1.0' xml:lang='en'/>".to_string(),
            "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>".to_string(),
        ];
        let rendered = render(&units, false, None);
        assert!(!rendered.terminal);
        assert_eq!(
            rendered.xml,
            "<body xmlns='http://jabber.org/protocol/httpbind' xmlns:stream='http://etherx.jabber.org/streams'><stream:features xmlns:stream='http://etherx.jabber.org/streams'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features></body>"
        );
        assert_eq!(open_id(&units[0]).as_deref(), Some("s1"));

        let units = vec![
            "<stream:error xmlns:stream='http://etherx.jabber.org/streams'><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>".to_string(),
            "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>".to_string(),
        ];
        let rendered = render(&units, true, None);
        assert!(rendered.terminal);
        assert_eq!(
            rendered.xml,
            "<body type='terminate' condition='remote-stream-error' xmlns='http://jabber.org/protocol/httpbind' xmlns:stream='http://etherx.jabber.org/streams'><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></body>"
        );

        let rendered = render(&[], false, None);
        assert_eq!(
            rendered.xml,
            "<body xmlns='http://jabber.org/protocol/httpbind'/>"
        );
        // The stream ended without closing (the connection to it failed).
        let rendered = render(&[], true, None);
        assert_eq!(
            rendered.xml,
            "<body type='terminate' condition='remote-connection-failed' xmlns='http://jabber.org/protocol/httpbind'/>"
        );
        let rendered = render(
            &["<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>".to_string()],
            true,
            None,
        );
        assert_eq!(
            rendered.xml,
            "<body type='terminate' xmlns='http://jabber.org/protocol/httpbind'/>"
        );
    }

    #[test]
    fn terminate_bodies() {
        assert_eq!(
            terminate_xml(Some(Condition::ItemNotFound)),
            "<body type='terminate' condition='item-not-found' xmlns='http://jabber.org/protocol/httpbind'/>"
        );
    }

    #[test]
    fn request_attributes() {
        let body = parse_element(
            b"<body xmlns='http://jabber.org/protocol/httpbind' rid='42' sid='abc' xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh'/>",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(xbosh_attr(&body, "restart"), Some("true"));
        assert_eq!(xbosh_attr(&body, "version"), None);
        assert_eq!(parse_number(body.attr("rid")), Some(42));
        assert_eq!(parse_number(Some("-1")), None);
        assert_eq!(parse_number(Some("")), None);
        assert_eq!(parse_number(Some("99999999999999999")), None);
        let other = parse_element(
            b"<body xmlns='http://jabber.org/protocol/httpbind' x:restart='true' xmlns:x='urn:other'/>",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(xbosh_attr(&other, "restart"), None);
    }

    #[test]
    fn sid_of_an_oversize_body() {
        assert_eq!(
            scan_sid(b"<body rid='1' sid='abc' xmlns='x'><message>").as_deref(),
            Some("abc")
        );
        assert_eq!(
            scan_sid(b"<body rid=\"1\" sid=\"d\">").as_deref(),
            Some("d")
        );
        assert_eq!(scan_sid(b"<body rid='1' xsid='abc'>"), None);
        assert_eq!(scan_sid(b"<body rid='1'><x sid='abc'/>"), None);
    }
}
