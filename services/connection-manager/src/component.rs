//! External components (XEP-0114, `jabber:component:accept`): a gateway or
//! service (an IRC gateway, a push app server) that connects to the server
//! over plain TCP, proves a shared secret with `<handshake/>`, and then
//! receives every stanza addressed to its domain and sends stanzas from it.
//!
//! The connection is held to what a client connection is held to: the same
//! stream parser and its limits (stanza size, depth), the absolute deadline
//! from accept until the handshake (`limits.pre_auth_timeout_secs`), the
//! connections per address and failed authentications per address
//! (`crate::limits::IpLimits`), the bounded outbound queue and its writer
//! (`crate::outbound`); then its own limits: a token bucket and a largest
//! stanza per component (`[[components]]`).
//!
//! Routing: after the handshake the component's connection is recorded in
//! the session registry under `<domain>/component`
//! ([`starling_api::COMPONENT_RESOURCE`], through `RouterApi::bind`), so the
//! router of any node delivers whatever is addressed to the domain over the
//! bus to this node. A second stream for a domain already connected replaces
//! the first (the first gets `<conflict/>`), as a second client login does
//! (RFC 6120 section 7.7.2.2): a component whose connection-manager died
//! reconnects to another one and is served at once, without waiting for the
//! janitor to remove the dead node's record.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use sha1::{Digest, Sha1};
use starling_api::{Origin, SessionAddr, COMPONENT_RESOURCE};
use starling_jid::{normalize_domainpart, BareJid};
use starling_xmpp::{
    escape_attr, ns, stanza, Element, StanzaError, StanzaErrorCondition, StreamError,
    StreamErrorCondition, StreamEvent, StreamHeader,
};
use subtle::ConstantTimeEq;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::ComponentSettings;
use crate::delivery::is_reroutable;
use crate::framing::{Framing, Inbound, Outgoing};
use crate::limits::TokenBucket;
use crate::outbound::{join_writer, run_writer, ConnectionHandle};
use crate::queued::QueuedStanza;
use crate::reading::{next_event, refuse, Flow, Interrupted, StreamHandler};
use crate::shared::Shared;
use crate::transport::tcp::ByteStream;
use crate::transport::Transport;
use crate::xml::random_id;

/// The handshake value (XEP-0114 section 3, "Protocol Flow"): the lower-case
/// hex SHA-1 of the stream id followed by the shared secret.
pub(crate) fn handshake_digest(stream_id: &str, secret: &str) -> String {
    let digest = Sha1::new()
        .chain_update(stream_id.as_bytes())
        .chain_update(secret.as_bytes())
        .finalize();
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Whether the component's handshake proves the secret, compared in constant
/// time (no timing tells how much of a guess was right).
fn handshake_matches(provided: &str, stream_id: &str, secret: &str) -> bool {
    let expected = handshake_digest(stream_id, secret);
    bool::from(provided.trim().as_bytes().ct_eq(expected.as_bytes()))
}

/// The server's stream header to a component (XEP-0114 section 3): the
/// component's domain in `from`, the stream id; no version, no features.
pub(crate) fn response_header(stream_id: &str, from: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns:stream='{}' xmlns='{}' from='{}' id='{}'>",
        ns::STREAM,
        ns::COMPONENT_ACCEPT,
        escape_attr(from),
        escape_attr(stream_id)
    )
}

/// Serve one connection of the component listener: the stream header, the
/// handshake, then the component's stanzas until the stream ends.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
) {
    let metrics = shared.metrics.component().clone();
    let mut stream = ByteStream::Plain(tcp);
    let mut parser = Inbound::new(Framing::Stream, shared.parser_limits);
    let stream_id = random_id();
    let header = match next_event(&shared, &mut stream, &mut parser, deadline).await {
        Ok(StreamEvent::Open(header)) => header,
        Ok(_) | Err(Interrupted::Gone) => return,
        Err(Interrupted::Timeout) => {
            metrics.refused("", "handshake_timeout");
            let error = StreamError::new(StreamErrorCondition::ConnectionTimeout);
            let header = response_header(&stream_id, &shared.domain);
            refuse(&shared, &mut stream, Some(header), error).await;
            return;
        }
        Err(Interrupted::Invalid(error)) => {
            let header = response_header(&stream_id, &shared.domain);
            refuse(&shared, &mut stream, Some(header), error).await;
            return;
        }
    };
    let component = match check_header(&shared, &header) {
        Ok(component) => component.clone(),
        Err((reason, error)) => {
            metrics.refused("", reason);
            tracing::info!(peer = %peer, to = header.to.as_deref().unwrap_or(""), condition = %error.condition, "component stream refused");
            let header = response_header(&stream_id, &shared.domain);
            refuse(&shared, &mut stream, Some(header), error).await;
            return;
        }
    };
    let domain = component.domain.clone();
    let mut out = Outgoing::new(Framing::Stream);
    out.nonza(&response_header(&stream_id, &domain));
    if stream.send(&out).await.is_err() {
        return;
    }
    // XEP-0114 section 3: the component answers with <handshake/>; nothing
    // else is accepted before it (RFC 6120 section 4.9.3.12, not-authorized).
    let handshake = match next_event(&shared, &mut stream, &mut parser, deadline).await {
        Ok(StreamEvent::Element(element)) => element,
        Ok(StreamEvent::Close) | Err(Interrupted::Gone) => return,
        Ok(StreamEvent::Open(_)) => {
            let error = StreamError::with_text(
                StreamErrorCondition::InvalidXml,
                "unexpected stream header",
            );
            refuse(&shared, &mut stream, None, error).await;
            return;
        }
        Err(Interrupted::Timeout) => {
            metrics.refused(&domain, "handshake_timeout");
            let error = StreamError::new(StreamErrorCondition::ConnectionTimeout);
            refuse(&shared, &mut stream, None, error).await;
            return;
        }
        Err(Interrupted::Invalid(error)) => {
            refuse(&shared, &mut stream, None, error).await;
            return;
        }
    };
    let now = std::time::Instant::now();
    if shared.ip_limits.auth_throttled(peer.ip(), now) {
        shared
            .metrics
            .limit_hit(crate::metrics::Limit::FailedAuthPerIp);
        metrics.refused(&domain, "not_authorized");
        let error = StreamError::with_text(
            StreamErrorCondition::PolicyViolation,
            "too many failed handshakes from your address",
        );
        refuse(&shared, &mut stream, None, error).await;
        return;
    }
    let authenticated = handshake.is("handshake", ns::COMPONENT_ACCEPT)
        && handshake_matches(&handshake.text(), &stream_id, &component.secret);
    if !authenticated {
        // XEP-0114 section 3: invalid credentials close the stream with
        // <not-authorized/>; so does a stanza before the handshake.
        shared.ip_limits.record_auth_failure(peer.ip(), now);
        metrics.refused(&domain, "not_authorized");
        tracing::info!(peer = %peer, domain = %domain, "component handshake refused");
        let error = StreamError::new(StreamErrorCondition::NotAuthorized);
        refuse(&shared, &mut stream, None, error).await;
        return;
    }
    run_authenticated(shared, stream, parser, peer, component).await;
}

/// The stream header of a component (XEP-0114 section 3): its namespace,
/// and `to` naming a configured component.
fn check_header<'a>(
    shared: &'a Shared,
    header: &StreamHeader,
) -> Result<&'a ComponentSettings, (&'static str, StreamError)> {
    if header.default_namespace.as_deref() != Some(ns::COMPONENT_ACCEPT) {
        return Err((
            "invalid_namespace",
            StreamError::with_text(
                StreamErrorCondition::InvalidNamespace,
                "the default namespace must be jabber:component:accept",
            ),
        ));
    }
    header
        .to
        .as_deref()
        .and_then(|to| normalize_domainpart(to).ok())
        .and_then(|to| shared.components.get(&to))
        .ok_or((
            "host_unknown",
            StreamError::new(StreamErrorCondition::HostUnknown),
        ))
}

struct ComponentSession {
    shared: Arc<Shared>,
    settings: ComponentSettings,
    handle: Arc<ConnectionHandle>,
    rate_limit: Option<TokenBucket>,
    received: prometheus::IntCounter,
}

/// An authenticated component: recorded in the registry, then served until
/// its stream ends.
async fn run_authenticated(
    shared: Arc<Shared>,
    stream: ByteStream,
    mut parser: Inbound,
    peer: SocketAddr,
    settings: ComponentSettings,
) {
    let metrics = shared.metrics.component().clone();
    let domain = settings.domain.clone();
    let conn = shared.next_conn_id();
    let addr = SessionAddr {
        node: shared.node_id.clone(),
        conn,
    };
    let Ok(jid) =
        BareJid::domain_jid(&domain).and_then(|bare| bare.with_resource(COMPONENT_RESOURCE))
    else {
        return;
    };
    let handle = ConnectionHandle::with_bytes(
        conn,
        shared.limits.outbound_queue_stanzas,
        shared.outbound_bytes.clone(),
    );
    handle.count_deliveries(metrics.stanzas(&domain, "out"));
    // Known to the dispatcher before the registry names this node for it.
    shared.add_connection(conn, Arc::clone(&handle));
    if let Err(error) = shared
        .router
        .bind(jid.bare(), Some(COMPONENT_RESOURCE), &addr)
        .await
    {
        tracing::warn!(domain = %domain, %error, "component could not be registered");
        shared.remove_connection(conn);
        let mut stream = stream;
        let error = StreamError::new(StreamErrorCondition::InternalServerError);
        refuse(&shared, &mut stream, None, error).await;
        return;
    }
    handle.set_bound(jid.clone(), addr.clone());
    // XEP-0114 section 3: an empty <handshake/> acknowledges; it precedes
    // whatever the bus delivered since the registry named this connection.
    handle.push_front(QueuedStanza::nonza(
        Element::new("handshake", ns::COMPONENT_ACCEPT),
        false,
    ));
    let connected = metrics.connected(&domain);
    connected.inc();
    tracing::info!(domain = %domain, peer = %peer, conn, "component connected");
    let (mut reader, writer) = stream.split();
    let mut writer_task = tokio::spawn(run_writer(
        writer,
        Arc::clone(&handle),
        shared.metrics.clone(),
        false,
    ));
    let mut session = ComponentSession {
        shared: Arc::clone(&shared),
        rate_limit: TokenBucket::new(
            settings.stanzas_per_second,
            settings.stanza_burst,
            std::time::Instant::now(),
        ),
        received: metrics.stanzas(&domain, "in"),
        settings,
        handle: Arc::clone(&handle),
    };
    crate::reading::read_until_end(&shared, &mut session, &mut reader, &mut parser).await;
    drop(reader);
    if handle.close_condition() == Some(StreamErrorCondition::Conflict) {
        metrics.refused(&domain, "replaced");
    }
    handle.close(None);
    if let Err(error) = shared.router.unbind(&jid, &addr).await {
        tracing::warn!(domain = %domain, %error, "component unbind failed");
    }
    let mut leftovers = join_writer(&handle, &mut writer_task).await;
    shared.remove_connection(conn);
    connected.dec();
    leftovers.extend(handle.take_remaining());
    // What the component was not given: no offline storage for a component,
    // the sender learns it was not delivered (RFC 6120 section 10.4.3).
    for queued in leftovers {
        let stanza = queued.into_element();
        if !is_reroutable(&stanza) {
            continue;
        }
        if let Some(reply) = stanza::error_reply(
            &stanza,
            &StanzaError::new(StanzaErrorCondition::ServiceUnavailable),
        ) {
            if let Err(error) = shared.router.route(Origin::Server, reply, None).await {
                tracing::debug!(domain = %domain, %error, "bouncing an unwritten stanza failed");
            }
        }
    }
    tracing::info!(domain = %domain, conn, "component disconnected");
}

impl StreamHandler for ComponentSession {
    fn handle(&self) -> &ConnectionHandle {
        &self.handle
    }

    async fn throttle(&mut self) -> Flow {
        ComponentSession::throttle(self).await
    }

    async fn element(&mut self, element: Element) -> Flow {
        self.handle_stanza(element).await
    }

    fn close_with(&self, error: StreamError) {
        tracing::info!(domain = %self.domain(), error = %error, "closing component stream with an error");
        self.handle.close(Some(error));
    }
}

impl ComponentSession {
    fn domain(&self) -> &str {
        &self.settings.domain
    }

    fn refuse_stream(&self, reason: &'static str, error: StreamError) -> Flow {
        self.shared
            .metrics
            .component()
            .refused(self.domain(), reason);
        self.close_with(error);
        Flow::Stop
    }

    /// An error for the component about one of its stanzas.
    fn reply_error(&self, reason: &'static str, request: &Element, error: StanzaError) {
        self.shared
            .metrics
            .component()
            .refused(self.domain(), reason);
        if let Some(reply) = stanza::error_reply(request, &error) {
            if self.handle.push(QueuedStanza::new(reply)).is_err() {
                self.handle.close_overflowed();
            }
        }
    }

    /// The component's token bucket: reading slows down, the stream stays.
    async fn throttle(&mut self) -> Flow {
        let metrics = self.shared.metrics.component();
        let domain = &self.settings.domain;
        let taken = self
            .handle
            .wait_for_token(self.rate_limit.as_mut(), &self.shared.shutdown, || {
                metrics.throttled(domain)
            })
            .await;
        if taken {
            Flow::Continue
        } else {
            Flow::Stop
        }
    }

    async fn handle_stanza(&mut self, element: Element) -> Flow {
        // Routed like any server stanza, in the server's content namespace.
        let (kind, mut element) = match crate::reading::stream_stanza(element, ns::COMPONENT_ACCEPT)
        {
            Ok(stanza) => stanza,
            Err(error) => return self.refuse_stream("bad_stanza", error),
        };
        // The component's own bound (the parser held it to the node's).
        let size = element.stanza_xml_len();
        if size > self.settings.max_stanza_bytes {
            return self.refuse_stream(
                "too_large",
                StreamError::with_text(
                    StreamErrorCondition::PolicyViolation,
                    format!(
                        "a stanza may hold at most {} bytes",
                        self.settings.max_stanza_bytes
                    ),
                ),
            );
        }
        // XEP-0114 section 3: every stanza has a `from` whose domain is the
        // component's; anything else ends the stream with <invalid-from/>
        // (RFC 6120 section 4.9.3.9).
        match stanza::from(&element) {
            Ok(Some(from)) if from.domain() == self.settings.domain => {
                element.set_attr("from", from.to_string());
            }
            _ => {
                tracing::info!(domain = %self.domain(), from = element.attr("from").unwrap_or(""), "component stanza with a from outside its domain");
                return self.refuse_stream(
                    "invalid_from",
                    StreamError::with_text(
                        StreamErrorCondition::InvalidFrom,
                        "from must be an address at the component's domain",
                    ),
                );
            }
        }
        match stanza::to(&element) {
            Ok(Some(to)) => element.set_attr("to", to.to_string()),
            Ok(None) => {}
            Err(_) => {
                // RFC 6120 section 8.3.3.8.
                self.reply_error(
                    "jid_malformed",
                    &element,
                    StanzaError::new(StanzaErrorCondition::JidMalformed),
                );
                return Flow::Continue;
            }
        }
        // The typed checks every stanza gets (RFC 6120 section 8.2.3, RFC
        // 6121 section 4.7): a broken one is answered with its error.
        let element = match crate::reading::checked_stanza(kind, element) {
            Ok(element) => element,
            Err(invalid) => {
                self.reply_error("bad_stanza", &invalid.stanza, invalid.error);
                return Flow::Continue;
            }
        };
        self.received.inc();
        let template = reply_template(&element);
        if let Err(error) = self
            .shared
            .router
            .route(Origin::Server, element, Some(SystemTime::now()))
            .await
        {
            tracing::debug!(domain = %self.domain(), %error, "routing a component stanza failed");
            self.reply_error("routing_failed", &template, error.to_stanza_error());
        }
        Flow::Continue
    }
}

/// The addressing of a stanza, kept for an error reply after it was handed on.
fn reply_template(element: &Element) -> Element {
    let mut template = Element::new(element.name(), element.namespace());
    for (name, value) in element.attrs() {
        template.set_attr(name, value);
    }
    template
}

/// The component's full JID in the registry, for tests.
#[cfg(test)]
fn registry_jid(domain: &str) -> starling_jid::FullJid {
    BareJid::domain_jid(domain)
        .and_then(|bare| bare.with_resource(COMPONENT_RESOURCE))
        .expect("valid domain")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_is_the_lowercase_hex_sha1_of_id_and_secret() {
        // Computed independently (Python's hashlib) for id 3BF96D32, secret "secret".
        assert_eq!(
            handshake_digest("3BF96D32", "secret"),
            "b09ea9b3b7f586be8a08d0a3dd7466f110aeb136"
        );
        let digest = handshake_digest("3BF96D32", "secret");
        assert_eq!(digest.len(), 40);
        assert!(digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(handshake_matches(&digest, "3BF96D32", "secret"));
        assert!(handshake_matches(
            &format!(" {digest}\n"),
            "3BF96D32",
            "secret"
        ));
        assert!(!handshake_matches(
            &digest.to_uppercase(),
            "3BF96D32",
            "secret"
        ));
        assert!(!handshake_matches(&digest, "3BF96D33", "secret"));
        assert!(!handshake_matches("", "3BF96D32", "secret"));
    }

    #[test]
    fn response_header_names_the_component() {
        assert_eq!(
            response_header("s1", "irc.example.com"),
            "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:component:accept' from='irc.example.com' id='s1'>"
        );
        assert_eq!(
            registry_jid("IRC.example.com").to_string(),
            "irc.example.com/component"
        );
    }
}
