//! The s2s listener (RFC 6120 as the receiving entity): streams that other
//! servers open to us.
//!
//! The header must be in `jabber:server` and name our domain; STARTTLS is
//! offered, and required unless `s2s.require_tls` is off (section 5.3.1:
//! anything else before it ends the stream with `<not-authorized/>`). After
//! TLS, dialback (XEP-0220) is offered: a `<db:result/>` from a domain is
//! verified by asking that domain's servers (`db:verify` on a stream of our
//! own, [`super::connect::Connector::verify_key`]); a `<db:verify/>` about a
//! key we sent is answered from the shared secret, on any node. Every stanza
//! must come from an authenticated domain (section 4.9.3.9, `invalid-from`;
//! before any, section 4.9.3.12, `not-authorized`) and is then routed like
//! a client's. Hostile input meets the limits of every stream: the parser's
//! size and depth, the pre-authentication deadline, the connections per
//! address, the token bucket of `limits.stanzas_per_second`.

use std::collections::HashSet;
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

use super::dialback::{self, NS_DIALBACK, NS_DIALBACK_FEATURE};
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

/// The features offered: STARTTLS before TLS (required or not), dialback
/// once encrypted or when TLS is optional.
pub(crate) fn features(tls: bool, require_tls: bool) -> String {
    let mut features = String::from("<stream:features>");
    if !tls {
        features.push_str(&format!("<starttls xmlns='{}'>", ns::TLS));
        if require_tls {
            features.push_str("<required/>");
        }
        features.push_str("</starttls>");
    }
    if tls || !require_tls {
        features.push_str(&format!(
            "<dialback xmlns='{NS_DIALBACK_FEATURE}'><errors/></dialback>"
        ));
    }
    features.push_str("</stream:features>");
    features
}

/// Serve one connection of the s2s listener.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
) {
    let Some(s2s) = shared.s2s.as_ref() else {
        return;
    };
    let require_tls = s2s.settings().require_tls;
    let mut stream = ByteStream::Plain(tcp);
    let mut parser = Inbound::new(Framing::Stream, shared.parser_limits);
    let stream_id = loop {
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
        let header_xml = response_header(&stream_id, &shared.domain, peer_domain.as_deref());
        let mut out = Outgoing::new(Framing::Stream);
        out.nonza(&header_xml);
        out.features(&features(stream.is_tls(), require_tls));
        if stream.send(&out).await.is_err() {
            return;
        }
        if stream.is_tls() || !require_tls {
            break stream_id;
        }
        // Section 5.3.1: TLS first.
        match next_event(&shared, &mut stream, &mut parser, deadline).await {
            Ok(StreamEvent::Element(element)) if element.is("starttls", ns::TLS) => {
                let mut out = Outgoing::new(Framing::Stream);
                out.nonza(&format!("<proceed xmlns='{}'/>", ns::TLS));
                if stream.send(&out).await.is_err() {
                    return;
                }
                stream = match tokio::time::timeout_at(deadline, stream.start_tls(&shared.starttls))
                    .await
                {
                    Ok(Ok(stream)) => stream,
                    _ => return,
                };
                parser = Inbound::new(Framing::Stream, shared.parser_limits);
            }
            Ok(StreamEvent::Element(_)) => {
                let error = StreamError::with_text(
                    StreamErrorCondition::NotAuthorized,
                    "STARTTLS is required",
                );
                refuse(&shared, &mut stream, None, error).await;
                return;
            }
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
        }
    };
    run_stream(shared, stream, parser, peer, stream_id, deadline).await;
}

struct InboundStream {
    shared: Arc<Shared>,
    handle: Arc<ConnectionHandle>,
    stream_id: String,
    /// The domains authenticated on this stream (several: piggybacking,
    /// XEP-0220 section 2.5).
    authenticated: Arc<Mutex<HashSet<String>>>,
    rate_limit: Option<TokenBucket>,
}

async fn run_stream(
    shared: Arc<Shared>,
    stream: ByteStream,
    mut parser: Inbound,
    peer: SocketAddr,
    stream_id: String,
    deadline: Instant,
) {
    let conn = shared.next_conn_id();
    let handle = ConnectionHandle::with_bytes(
        conn,
        shared.limits.outbound_queue_stanzas,
        shared.outbound_bytes.clone(),
    );
    let (mut reader, writer) = stream.split();
    let mut writer_task = tokio::spawn(run_writer(
        writer,
        Arc::clone(&handle),
        shared.metrics.clone(),
        false,
    ));
    let authenticated = Arc::new(Mutex::new(HashSet::new()));
    // Section 13.12: a stream that authenticates no domain by the
    // pre-authentication deadline is closed.
    let watchdog = {
        let handle = Arc::clone(&handle);
        let authenticated = Arc::clone(&authenticated);
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            if authenticated.lock().is_empty() {
                handle.close(Some(StreamError::new(
                    StreamErrorCondition::ConnectionTimeout,
                )));
            }
        })
    };
    let mut session = InboundStream {
        shared: Arc::clone(&shared),
        handle: Arc::clone(&handle),
        stream_id,
        authenticated,
        rate_limit: TokenBucket::new(
            shared.limits.stanzas_per_second,
            shared.limits.stanza_burst,
            std::time::Instant::now(),
        ),
    };
    tracing::debug!(peer = %peer, conn, "inbound s2s stream");
    crate::reading::read_until_end(&shared, &mut session, &mut reader, &mut parser).await;
    drop(reader);
    watchdog.abort();
    handle.close(None);
    let _ = join_writer(&handle, &mut writer_task).await;
    tracing::debug!(peer = %peer, conn, "inbound s2s stream closed");
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
                tokio::spawn(async move {
                    let Some(s2s) = shared.s2s.as_ref() else {
                        return;
                    };
                    let verified = s2s.connector.verify_key(&from, &stream_id, &key).await;
                    let answer = match verified {
                        Ok(true) => {
                            authenticated.lock().insert(from.clone());
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
        match stanza::from(&element) {
            Ok(Some(from)) if self.authenticated.lock().contains(from.domain()) => {
                element.set_attr("from", from.to_string());
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
        }
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
        self.shared.metrics.s2s().stanza("received");
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
    fn starttls_first_then_dialback() {
        assert_eq!(
            features(false, true),
            "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>"
        );
        assert_eq!(
            features(true, true),
            "<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>"
        );
        assert_eq!(
            features(false, false),
            "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'></starttls><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>"
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
