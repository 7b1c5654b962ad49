//! The s2s listeners (RFC 6120 as the receiving entity): streams that
//! other servers open to us, on the STARTTLS listener (`listen.s2s`) or the
//! direct TLS one (`listen.s2s_tls`, XEP-0368: TLS from the first byte,
//! ALPN `xmpp-server`, then the same stream).
//!
//! The header must be in `jabber:server` and name our domain; STARTTLS is
//! offered, and required unless `s2s.require_tls` is off (section 5.3.1:
//! anything else before it ends the stream with `<not-authorized/>`). TLS
//! asks for the peer's certificate without requiring one; when it is valid
//! for the domain of the header's `from`, SASL EXTERNAL is offered
//! (XEP-0178 section 3) and authenticates that domain. Dialback (XEP-0220)
//! is offered too: a `<db:result/>` from a domain is verified by asking
//! that domain's servers (`db:verify` on a stream of our own,
//! [`super::connect::Connector::verify_key`]); a `<db:verify/>` about a key
//! we sent is answered from the shared secret, on any node. Every stanza
//! must come from an authenticated domain (section 4.9.3.9, `invalid-from`;
//! before any, section 4.9.3.12, `not-authorized`), fit its domain's
//! `s2s.max_stanzas_per_sec`, and is then routed like a client's. Hostile
//! input meets the limits of every stream: the parser's size and depth
//! (`limits.max_stanza_bytes`, past it `<policy-violation/>`), the
//! pre-authentication deadline, the connections per address, the token
//! bucket of `limits.stanzas_per_second`; a stream silent for
//! `s2s.idle_timeout_secs` is closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use starling_api::Origin;
use starling_jid::normalize_domainpart;
use starling_xmpp::{
    escape_attr, ns, stanza, Element, StanzaError, StanzaErrorCondition, StreamError,
    StreamErrorCondition, StreamEvent,
};
use tokio::net::TcpStream;
use tokio::time::Instant;

use rustls::pki_types::CertificateDer;

use super::dialback::{self, NS_DIALBACK, NS_DIALBACK_FEATURE};
use super::state::{Direction, Registration};
use crate::framing::{Framing, Inbound, Outgoing};
use crate::limits::TokenBucket;
use crate::outbound::{join_writer, run_writer, ConnectionHandle};
use crate::queued::QueuedStanza;
use crate::reading::{next_event, refuse, Flow, Interrupted, StreamHandler};
use crate::shared::Shared;
use crate::transport::tcp::ByteStream;
use crate::transport::Transport;
use crate::xml::random_id;

/// Our response header as the receiving server.
pub(crate) fn response_header(stream_id: &str, from: &str, to: Option<&str>) -> String {
    let mut header = format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{}' xmlns:db='{}' id='{}' from='{}'",
        ns::SERVER,
        ns::STREAM,
        NS_DIALBACK,
        escape_attr(stream_id),
        escape_attr(from)
    );
    if let Some(to) = to {
        header.push_str(&format!(" to='{}'", escape_attr(to)));
    }
    header.push_str(" version='1.0'>");
    header
}

/// The features offered: STARTTLS before TLS (required or not); SASL
/// EXTERNAL when the peer's certificate is valid for its domain (XEP-0178
/// section 3); dialback once encrypted or when TLS is optional.
pub(crate) fn features(tls: bool, require_tls: bool, offer_external: bool) -> String {
    let mut features = String::from("<stream:features>");
    if !tls {
        features.push_str(&format!("<starttls xmlns='{}'>", ns::TLS));
        if require_tls {
            features.push_str("<required/>");
        }
        features.push_str("</starttls>");
    }
    if offer_external {
        features.push_str(&format!(
            "<mechanisms xmlns='{}'><mechanism>EXTERNAL</mechanism></mechanisms>",
            ns::SASL
        ));
    }
    if tls || !require_tls {
        features.push_str(&format!(
            "<dialback xmlns='{NS_DIALBACK_FEATURE}'><errors/></dialback>"
        ));
    }
    features.push_str("</stream:features>");
    features
}

/// The certificate chain the peer presented in the TLS handshake, if any.
fn peer_certificates(stream: &ByteStream) -> Option<&[CertificateDer<'static>]> {
    match stream {
        ByteStream::Plain(_) => None,
        ByteStream::Tls(tls) => tls.get_ref().1.peer_certificates(),
    }
}

/// Why a SASL EXTERNAL `<auth/>` is refused (RFC 6120 section 6.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExternalRefusal {
    /// Section 6.5.6: a mechanism we did not offer.
    InvalidMechanism,
    /// Section 6.5.4: the authorization identity is not base64.
    IncorrectEncoding,
    /// Section 6.5.6 and XEP-0178 section 3: an authorization identity
    /// other than the domain the certificate was checked for.
    InvalidAuthzid,
}

impl ExternalRefusal {
    fn condition(self) -> &'static str {
        match self {
            ExternalRefusal::InvalidMechanism => "invalid-mechanism",
            ExternalRefusal::IncorrectEncoding => "incorrect-encoding",
            ExternalRefusal::InvalidAuthzid => "invalid-authzid",
        }
    }
}

/// Check an `<auth/>` on a stream whose certificate is valid for
/// `peer_domain` (XEP-0178 section 3): mechanism EXTERNAL, and an
/// authorization identity that is empty, `=` (RFC 6120 section 6.4.2: none
/// given) or the base64 of that domain.
pub(crate) fn check_external(auth: &Element, peer_domain: &str) -> Result<(), ExternalRefusal> {
    use base64::Engine;
    if auth.attr("mechanism") != Some("EXTERNAL") {
        return Err(ExternalRefusal::InvalidMechanism);
    }
    let text = auth.text();
    let text = text.trim();
    if text.is_empty() || text == "=" {
        return Ok(());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| ExternalRefusal::IncorrectEncoding)?;
    let authzid = String::from_utf8(decoded).map_err(|_| ExternalRefusal::IncorrectEncoding)?;
    match normalize_domainpart(authzid.trim()) {
        Ok(domain) if domain == peer_domain => Ok(()),
        _ => Err(ExternalRefusal::InvalidAuthzid),
    }
}

/// Serve one connection of an s2s listener: on the direct TLS listener
/// (XEP-0368) the TLS handshake comes first, with the ALPN protocol
/// `xmpp-server`, then the same stream as after STARTTLS.
pub(crate) async fn accept(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    direct_tls: bool,
    deadline: Instant,
) {
    let Some(s2s) = shared.s2s.as_ref() else {
        return;
    };
    let stream = if direct_tls {
        let handshake = s2s.direct_tls.accept(tcp);
        tokio::select! {
            result = handshake => match result {
                Ok(tls) => ByteStream::Tls(Box::new(tls)),
                Err(error) => {
                    tracing::debug!(peer = %peer, %error, "s2s direct tls handshake failed");
                    return;
                }
            },
            _ = tokio::time::sleep_until(deadline) => return,
            _ = shared.shutdown.cancelled() => return,
        }
    } else {
        ByteStream::Plain(tcp)
    };
    serve(shared, stream, peer, deadline).await;
}

/// Negotiate an inbound stream (TLS, then SASL EXTERNAL when offered), then
/// serve it.
async fn serve(shared: Arc<Shared>, stream: ByteStream, peer: SocketAddr, deadline: Instant) {
    let Some(s2s) = shared.s2s.as_ref() else {
        return;
    };
    let require_tls = s2s.settings().require_tls;
    let mut stream = stream;
    let mut parser = Inbound::new(Framing::Stream, shared.parser_limits);
    // The domain SASL EXTERNAL authenticated (XEP-0178), once it has.
    let mut external: Option<String> = None;
    let (stream_id, first_element) = loop {
        let stream_id = random_id();
        let our_header = response_header(&stream_id, &shared.domain, None);
        let header = match next_event(&shared, &mut stream, &mut parser, deadline).await {
            Ok(StreamEvent::Open(header)) => header,
            Ok(_) | Err(Interrupted::Gone) => return,
            Err(Interrupted::Timeout) => {
                let error = StreamError::new(StreamErrorCondition::ConnectionTimeout);
                refuse(&shared, &mut stream, Some(our_header), error).await;
                return;
            }
            Err(Interrupted::Invalid(error)) => {
                refuse(&shared, &mut stream, Some(our_header), error).await;
                return;
            }
        };
        if header.default_namespace.as_deref() != Some(ns::SERVER) {
            let error = StreamError::with_text(
                StreamErrorCondition::InvalidNamespace,
                "the default namespace must be jabber:server",
            );
            refuse(&shared, &mut stream, Some(our_header), error).await;
            return;
        }
        // RFC 6120 section 4.9.3.6: a `to` we do not serve.
        let to = header
            .to
            .as_deref()
            .and_then(|to| normalize_domainpart(to).ok());
        if to.as_deref() != Some(shared.domain.as_str()) {
            let error = StreamError::new(StreamErrorCondition::HostUnknown);
            refuse(&shared, &mut stream, Some(our_header), error).await;
            return;
        }
        let peer_domain = header
            .from
            .as_deref()
            .and_then(|from| normalize_domainpart(from).ok());
        if let Some(peer_domain) = &peer_domain {
            if !s2s.settings().allows(peer_domain) {
                shared.metrics.s2s().stream("in", "denied");
                tracing::info!(peer = %peer, domain = %peer_domain, "inbound s2s stream from a domain the policy refuses");
                let error = StreamError::new(StreamErrorCondition::PolicyViolation);
                refuse(&shared, &mut stream, Some(our_header), error).await;
                return;
            }
        }
        // XEP-0178 section 3: EXTERNAL when the certificate the peer
        // presented is valid for the domain its header names.
        let offer_external = external.is_none()
            && peer_domain.as_deref().is_some_and(|domain| {
                s2s.certificates
                    .certificate_valid(peer_certificates(&stream), domain)
            });
        let header_xml = response_header(&stream_id, &shared.domain, peer_domain.as_deref());
        let mut out = Outgoing::new(Framing::Stream);
        out.nonza(&header_xml);
        out.features(&features(stream.is_tls(), require_tls, offer_external));
        if stream.send(&out).await.is_err() {
            return;
        }
        let can_start_tls = !stream.is_tls();
        if external.is_some() || (!can_start_tls && !offer_external) {
            break (stream_id, None);
        }
        let element = match next_event(&shared, &mut stream, &mut parser, deadline).await {
            Ok(StreamEvent::Element(element)) => element,
            Ok(_) | Err(Interrupted::Gone) => return,
            Err(Interrupted::Timeout) => {
                let error = StreamError::new(StreamErrorCondition::ConnectionTimeout);
                refuse(&shared, &mut stream, None, error).await;
                return;
            }
            Err(Interrupted::Invalid(error)) => {
                refuse(&shared, &mut stream, None, error).await;
                return;
            }
        };
        if can_start_tls {
            if element.is("starttls", ns::TLS) {
                let mut out = Outgoing::new(Framing::Stream);
                out.nonza(&format!("<proceed xmlns='{}'/>", ns::TLS));
                if stream.send(&out).await.is_err() {
                    return;
                }
                stream = match tokio::time::timeout_at(deadline, stream.start_tls(&s2s.starttls))
                    .await
                {
                    Ok(Ok(stream)) => stream,
                    _ => return,
                };
                parser = Inbound::new(Framing::Stream, shared.parser_limits);
                continue;
            }
            if require_tls {
                // RFC 6120 section 5.3.1: TLS first.
                let error = StreamError::with_text(
                    StreamErrorCondition::NotAuthorized,
                    "STARTTLS is required",
                );
                refuse(&shared, &mut stream, None, error).await;
                return;
            }
            break (stream_id, Some(element));
        }
        if !element.is("auth", ns::SASL) {
            break (stream_id, Some(element));
        }
        let peer_domain = peer_domain.expect("EXTERNAL is offered for a named domain only");
        match check_external(&element, &peer_domain) {
            Ok(()) => {
                let mut out = Outgoing::new(Framing::Stream);
                out.nonza(&format!("<success xmlns='{}'/>", ns::SASL));
                if stream.send(&out).await.is_err() {
                    return;
                }
                tracing::info!(peer = %peer, domain = %peer_domain, "inbound s2s stream authenticated by sasl external");
                shared.metrics.s2s().stream("in", "external");
                external = Some(peer_domain);
                // RFC 6120 section 6.4.6: the peer opens a new stream.
                parser = Inbound::new(Framing::Stream, shared.parser_limits);
            }
            Err(refusal) => {
                tracing::info!(peer = %peer, domain = %peer_domain, condition = refusal.condition(), "inbound s2s sasl external refused");
                shared.metrics.s2s().stream("in", "failed");
                let mut out = Outgoing::new(Framing::Stream);
                out.nonza(&format!(
                    "<failure xmlns='{}'><{}/></failure>",
                    ns::SASL,
                    refusal.condition()
                ));
                out.close();
                let _ = tokio::time::timeout(crate::outbound::CLOSE_WRITE_TIMEOUT, async {
                    stream.send(&out).await?;
                    Transport::shutdown(&mut stream).await
                })
                .await;
                return;
            }
        }
    };
    let negotiated = Negotiated {
        stream,
        parser,
        stream_id,
        external,
        first_element,
    };
    run_stream(shared, negotiated, peer, deadline).await;
}

/// An inbound stream past its negotiation.
struct Negotiated {
    stream: ByteStream,
    parser: Inbound,
    stream_id: String,
    /// The domain SASL EXTERNAL authenticated, if it did.
    external: Option<String>,
    /// What the peer sent after the features when it was not `<auth/>`.
    first_element: Option<Element>,
}

/// The domains authenticated on one inbound stream (several: piggybacking,
/// XEP-0220 section 2.5), each with its place in the stream table.
type Authenticated = Arc<Mutex<HashMap<String, Registration>>>;

struct InboundStream {
    shared: Arc<Shared>,
    handle: Arc<ConnectionHandle>,
    stream_id: String,
    authenticated: Authenticated,
    tls: bool,
    rate_limit: Option<TokenBucket>,
    /// When the peer last sent something (`s2s.idle_timeout_secs`).
    last_activity: Arc<Mutex<Instant>>,
}

async fn run_stream(
    shared: Arc<Shared>,
    negotiated: Negotiated,
    peer: SocketAddr,
    deadline: Instant,
) {
    let Negotiated {
        stream,
        mut parser,
        stream_id,
        external,
        first_element,
    } = negotiated;
    let Some(s2s) = shared.s2s.as_ref() else {
        return;
    };
    let conn = shared.next_conn_id();
    let handle = ConnectionHandle::with_bytes(
        conn,
        shared.limits.outbound_queue_stanzas,
        shared.outbound_bytes.clone(),
    );
    let tls = stream.is_tls();
    let (mut reader, writer) = stream.split();
    let mut writer_task = tokio::spawn(run_writer(
        writer,
        Arc::clone(&handle),
        shared.metrics.clone(),
        false,
    ));
    let authenticated: Authenticated = Arc::new(Mutex::new(HashMap::new()));
    if let Some(domain) = external {
        let registration = s2s
            .streams
            .register(&domain, Direction::In, "external", tls);
        authenticated.lock().insert(domain, registration);
    }
    let last_activity = Arc::new(Mutex::new(Instant::now()));
    let watchdog = tokio::spawn(watch(
        Arc::clone(&shared),
        Arc::clone(&handle),
        Arc::clone(&authenticated),
        Arc::clone(&last_activity),
        deadline,
        s2s.settings().idle_timeout,
    ));
    let mut session = InboundStream {
        shared: Arc::clone(&shared),
        handle: Arc::clone(&handle),
        stream_id,
        authenticated,
        tls,
        rate_limit: TokenBucket::new(
            shared.limits.stanzas_per_second,
            shared.limits.stanza_burst,
            std::time::Instant::now(),
        ),
        last_activity,
    };
    tracing::debug!(peer = %peer, conn, "inbound s2s stream");
    let go_on = match first_element {
        Some(element) => matches!(session.element(element).await, Flow::Continue),
        None => true,
    };
    if go_on {
        crate::reading::read_until_end(&shared, &mut session, &mut reader, &mut parser).await;
    }
    drop(reader);
    watchdog.abort();
    handle.close(None);
    let _ = join_writer(&handle, &mut writer_task).await;
    // The stream leaves the table (and the per-domain metrics).
    session.authenticated.lock().clear();
    tracing::debug!(peer = %peer, conn, "inbound s2s stream closed");
}

/// Close a stream that authenticates no domain by the pre-authentication
/// deadline (RFC 6120 section 13.12), and one that stays silent for
/// `s2s.idle_timeout_secs` after it (section 4.4: a plain close; the peer
/// opens a new stream when it has something to send).
async fn watch(
    shared: Arc<Shared>,
    handle: Arc<ConnectionHandle>,
    authenticated: Authenticated,
    last_activity: Arc<Mutex<Instant>>,
    deadline: Instant,
    idle_timeout: std::time::Duration,
) {
    loop {
        let now = Instant::now();
        let authenticated_any = !authenticated.lock().is_empty();
        if !authenticated_any && now >= deadline {
            handle.close(Some(StreamError::new(
                StreamErrorCondition::ConnectionTimeout,
            )));
            return;
        }
        let idle_until = *last_activity.lock() + idle_timeout;
        if now >= idle_until {
            shared.metrics.s2s().stream("in", "idle");
            tracing::debug!(conn = handle.conn, "closing an idle inbound s2s stream");
            handle.close(None);
            return;
        }
        let wake = if authenticated_any {
            idle_until
        } else {
            idle_until.min(deadline)
        };
        tokio::time::sleep_until(wake).await;
    }
}

impl StreamHandler for InboundStream {
    fn handle(&self) -> &ConnectionHandle {
        &self.handle
    }

    async fn throttle(&mut self) -> Flow {
        let taken = self
            .handle
            .wait_for_token(self.rate_limit.as_mut(), &self.shared.shutdown, || {})
            .await;
        if taken {
            Flow::Continue
        } else {
            Flow::Stop
        }
    }

    async fn element(&mut self, element: Element) -> Flow {
        *self.last_activity.lock() = Instant::now();
        if element.namespace() == NS_DIALBACK {
            self.dialback(element);
            return Flow::Continue;
        }
        self.stanza(element).await
    }
}

/// A dialback answer as an element for the stream's queue.
fn dialback_answer(kind: &str, from: &str, to: &str, id: Option<&str>, result: &str) -> Element {
    let mut element = Element::new(kind, NS_DIALBACK)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("type", result);
    if let Some(id) = id {
        element.set_attr("id", id);
    }
    element
}

impl InboundStream {
    fn send(&self, element: Element) {
        if self
            .handle
            .push(QueuedStanza::nonza(element, false))
            .is_err()
        {
            self.handle.close_overflowed();
        }
    }

    fn refuse(&self, outcome: &'static str, error: StreamError) -> Flow {
        self.shared.metrics.s2s().stream("in", outcome);
        self.close_with(error);
        Flow::Stop
    }

    fn dialback(&self, element: Element) {
        let Some(s2s) = self.shared.s2s.as_ref() else {
            return;
        };
        let from = element
            .attr("from")
            .and_then(|from| normalize_domainpart(from).ok());
        let to = element
            .attr("to")
            .and_then(|to| normalize_domainpart(to).ok());
        let (Some(from), Some(to)) = (from, to) else {
            self.close_with(StreamError::new(StreamErrorCondition::ImproperAddressing));
            return;
        };
        let key = element.text();
        match element.name() {
            // XEP-0220 section 2.4: is this key ours? Any node can tell.
            "verify" => {
                let id = element.attr("id").unwrap_or_default();
                let valid = to == self.shared.domain
                    && dialback::key_matches(
                        &key,
                        &s2s.settings().dialback_secret,
                        &from,
                        &self.shared.domain,
                        id,
                    );
                self.send(dialback_answer(
                    "verify",
                    &self.shared.domain,
                    &from,
                    Some(id),
                    if valid { "valid" } else { "invalid" },
                ));
            }
            // XEP-0220 section 2.1.2: the peer claims `from`; ask its servers.
            "result" if element.attr("type").is_none() => {
                if to != self.shared.domain {
                    let mut answer = dialback_answer("result", &to, &from, None, "error");
                    answer.append_child(error_child(StanzaErrorCondition::ItemNotFound));
                    self.send(answer);
                    return;
                }
                if !s2s.settings().allows(&from) {
                    self.shared.metrics.s2s().stream("in", "denied");
                    let mut answer = dialback_answer("result", &to, &from, None, "error");
                    answer.append_child(error_child(StanzaErrorCondition::Forbidden));
                    self.send(answer);
                    return;
                }
                let shared = Arc::clone(&self.shared);
                let handle = Arc::clone(&self.handle);
                let authenticated = Arc::clone(&self.authenticated);
                let stream_id = self.stream_id.clone();
                let tls = self.tls;
                tokio::spawn(async move {
                    let Some(s2s) = shared.s2s.as_ref() else {
                        return;
                    };
                    let verified = s2s.connector.verify_key(&from, &stream_id, &key).await;
                    let answer = match verified {
                        Ok(true) => {
                            let registration =
                                s2s.streams.register(&from, Direction::In, "dialback", tls);
                            authenticated.lock().insert(from.clone(), registration);
                            shared.metrics.s2s().stream("in", "dialback");
                            tracing::info!(domain = %from, "inbound s2s stream authenticated by dialback");
                            dialback_answer("result", &shared.domain, &from, None, "valid")
                        }
                        Ok(false) => {
                            shared.metrics.s2s().stream("in", "failed");
                            tracing::info!(domain = %from, "inbound s2s dialback key refused by its domain");
                            dialback_answer("result", &shared.domain, &from, None, "invalid")
                        }
                        Err(error) => {
                            shared.metrics.s2s().stream("in", "failed");
                            tracing::info!(domain = %from, %error, "inbound s2s dialback could not be verified");
                            let mut answer =
                                dialback_answer("result", &shared.domain, &from, None, "error");
                            answer.append_child(error_child(
                                StanzaErrorCondition::RemoteServerNotFound,
                            ));
                            answer
                        }
                    };
                    if handle.push(QueuedStanza::nonza(answer, false)).is_err() {
                        handle.close_overflowed();
                    }
                });
            }
            _ => {}
        }
    }

    async fn stanza(&mut self, element: Element) -> Flow {
        let (kind, mut element) = match crate::reading::stream_stanza(element, ns::SERVER) {
            Ok(stanza) => stanza,
            Err(error) => return self.refuse("failed", error),
        };
        let authenticated_any = !self.authenticated.lock().is_empty();
        if !authenticated_any {
            // Section 4.9.3.12: nothing before authentication.
            return self.refuse(
                "failed",
                StreamError::with_text(StreamErrorCondition::NotAuthorized, "authenticate first"),
            );
        }
        // Section 4.9.3.9 and 8.1.2.2: `from` of an authenticated domain.
        let from_domain = match stanza::from(&element) {
            Ok(Some(from)) if self.authenticated.lock().contains_key(from.domain()) => {
                element.set_attr("from", from.to_string());
                from.domain().to_string()
            }
            _ => {
                tracing::info!(
                    from = element.attr("from").unwrap_or(""),
                    "inbound s2s stanza from a domain not authenticated on its stream"
                );
                return self.refuse(
                    "invalid_from",
                    StreamError::new(StreamErrorCondition::InvalidFrom),
                );
            }
        };
        match stanza::to(&element) {
            Ok(Some(to))
                if to.domain() == self.shared.domain
                    || self.shared.components.get(to.domain()).is_some() =>
            {
                element.set_attr("to", to.to_string());
            }
            Ok(_) => {
                // Section 4.9.3.6: not a domain of ours.
                return self.refuse(
                    "failed",
                    StreamError::new(StreamErrorCondition::HostUnknown),
                );
            }
            Err(_) => {
                self.reply_error(&element, StanzaErrorCondition::JidMalformed);
                return Flow::Continue;
            }
        }
        let element = match crate::reading::checked_stanza(kind, element) {
            Ok(element) => element,
            Err(invalid) => {
                if let Some(reply) = invalid.error_reply() {
                    self.route(reply).await;
                }
                return Flow::Continue;
            }
        };
        if let Some(s2s) = self.shared.s2s.as_ref() {
            if !s2s.streams.admit_inbound(&from_domain) {
                // Over `s2s.max_stanzas_per_sec`: RFC 6120 section 8.3.3.18,
                // the server lacks the resources to handle it now; type
                // wait (section 8.3.2): the sender may retry later. The
                // stream goes on: the peer's other traffic is not punished
                // for a burst, and nothing is dropped without an answer
                // (an error stanza itself is dropped, section 8.3.1, and
                // counted).
                self.shared.metrics.s2s().stanza("rate_limited");
                self.reply_error(&element, StanzaErrorCondition::ResourceConstraint);
                return Flow::Continue;
            }
        }
        self.shared.metrics.s2s().stanza("received");
        if let Some(registration) = self.authenticated.lock().get(&from_domain) {
            registration.entry().received();
        }
        self.route(element).await;
        Flow::Continue
    }

    fn reply_error(&self, request: &Element, condition: StanzaErrorCondition) {
        if let Some(reply) = stanza::error_reply(request, &StanzaError::new(condition)) {
            let router = Arc::clone(&self.shared.router);
            tokio::spawn(async move {
                let _ = router.route(Origin::Server, reply, None).await;
            });
        }
    }

    async fn route(&self, element: Element) {
        if let Err(error) = self
            .shared
            .router
            .route(Origin::Server, element, Some(SystemTime::now()))
            .await
        {
            tracing::debug!(%error, "routing an inbound s2s stanza failed");
        }
    }
}

/// `<error type='cancel'><condition/></error>` for a dialback error (XEP-0220 section 2.4).
fn error_child(condition: StanzaErrorCondition) -> Element {
    let mut error = Element::new("error", NS_DIALBACK).with_attr("type", "cancel");
    error.append_child(Element::new(condition.as_str(), ns::STANZAS_ERROR));
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starttls_first_then_external_and_dialback() {
        assert_eq!(
            features(false, true, false),
            "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>"
        );
        assert_eq!(
            features(true, true, false),
            "<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>"
        );
        assert_eq!(
            features(false, false, false),
            "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'></starttls><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>"
        );
        assert_eq!(
            features(true, true, true),
            "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>"
        );
    }

    fn auth(xml: &str) -> Element {
        let mut parser = Inbound::new(Framing::Stream, starling_xmpp::Limits::default());
        parser
            .feed(format!("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>{xml}").as_bytes())
            .unwrap();
        let _header = parser.next_event().unwrap();
        match parser.next_event().unwrap() {
            Some(StreamEvent::Element(element)) => element,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn external_takes_no_authzid_or_the_certificate_s_domain() {
        let sasl = "urn:ietf:params:xml:ns:xmpp-sasl";
        for accepted in [
            format!("<auth xmlns='{sasl}' mechanism='EXTERNAL'/>"),
            format!("<auth xmlns='{sasl}' mechanism='EXTERNAL'>=</auth>"),
            // XEP-0178 section 3's example: base64 of conference.example.org.
            format!(
                "<auth xmlns='{sasl}' mechanism='EXTERNAL'>Y29uZmVyZW5jZS5leGFtcGxlLm9yZw==</auth>"
            ),
        ] {
            assert_eq!(
                check_external(&auth(&accepted), "conference.example.org"),
                Ok(()),
                "{accepted}"
            );
        }
        assert_eq!(
            check_external(
                &auth(&format!("<auth xmlns='{sasl}' mechanism='EXTERNAL'>Y29uZmVyZW5jZS5leGFtcGxlLm9yZw==</auth>")),
                "example.org"
            ),
            Err(ExternalRefusal::InvalidAuthzid)
        );
        assert_eq!(
            check_external(
                &auth(&format!(
                    "<auth xmlns='{sasl}' mechanism='PLAIN'>AGEAYg==</auth>"
                )),
                "example.org"
            ),
            Err(ExternalRefusal::InvalidMechanism)
        );
        assert_eq!(
            check_external(
                &auth(&format!(
                    "<auth xmlns='{sasl}' mechanism='EXTERNAL'>not base64!</auth>"
                )),
                "example.org"
            ),
            Err(ExternalRefusal::IncorrectEncoding)
        );
    }

    #[test]
    fn response_header_declares_dialback() {
        assert_eq!(
            response_header("s1", "a.example", Some("b.example")),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' id='s1' from='a.example' to='b.example' version='1.0'>"
        );
    }
}
