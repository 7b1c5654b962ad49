//! A bound session (RFC 6120 section 8): every stanza the client sends is
//! checked, stamped with the session's full JID (section 8.1.2.1) and routed;
//! the reader is slowed by a token bucket, never disconnected for speed.
//! Stream-level failures end the stream as section 4.9 says, and every ending
//! unbinds the session.

use std::sync::Arc;
use std::time::SystemTime;

use starling_api::{Origin, SessionAddr};
use starling_jid::FullJid;
use starling_telemetry::SPAN_TARGET;
use starling_xmpp::xep::{carbons, Payload};
use starling_xmpp::{
    ns, stanza, Element, InvalidStanza, Iq, Node, Presence, StanzaError, StanzaErrorCondition,
    StanzaKind, StreamError, StreamErrorCondition,
};
use tracing::Instrument;

use crate::csi::ClientState;
use crate::delivery::is_reroutable;
use crate::limits::TokenBucket;
use crate::negotiation::bind::BoundStream;
use crate::outbound::{join_writer, run_writer, ConnectionHandle};
use crate::queued::QueuedStanza;
use crate::reading::{Flow, StreamHandler};
use crate::register;
use crate::shared::Shared;
use crate::transport::Transport;

struct Session {
    shared: Arc<Shared>,
    jid: FullJid,
    jid_string: String,
    addr: SessionAddr,
    handle: Arc<ConnectionHandle>,
    client_lang: Option<String>,
    rate_limit: Option<TokenBucket>,
    /// The client closed the stream (`</stream:stream>`): no resumption.
    clean_close: bool,
}

/// Serve a bound session until its stream ends, then unbind it and reroute
/// what it did not receive.
pub(crate) async fn run<T: Transport>(shared: Arc<Shared>, bound: BoundStream<T>) {
    let BoundStream {
        conn,
        peer,
        transport,
        mut parser,
        jid,
        addr,
        handle,
        client_lang,
    } = bound;
    let (mut reader, writer) = transport.split();
    let mut writer_task = tokio::spawn(run_writer(
        writer,
        Arc::clone(&handle),
        shared.metrics.clone(),
        shared
            .resumption
            .as_ref()
            .is_some_and(|resumption| resumption.outlives_process),
    ));
    let rate_limit = TokenBucket::new(
        shared.limits.stanzas_per_second,
        shared.limits.stanza_burst,
        std::time::Instant::now(),
    );
    let mut session = Session {
        shared: Arc::clone(&shared),
        jid_string: jid.to_string(),
        jid,
        addr,
        handle: Arc::clone(&handle),
        client_lang,
        rate_limit,
        clean_close: false,
    };
    crate::reading::read_until_end(&shared, &mut session, &mut reader, &mut parser).await;
    tracing::debug!(conn, peer = %peer, "stream ended");
    drop(reader);
    session.teardown(&mut writer_task).await;
}

impl StreamHandler for Session {
    fn handle(&self) -> &ConnectionHandle {
        &self.handle
    }

    async fn throttle(&mut self) -> Flow {
        Session::throttle(self).await
    }

    async fn element(&mut self, element: Element) -> Flow {
        let h_before = self.handle.with_sm(|sm| sm.h_in);
        let flow = self.handle_stanza(element).await;
        self.handle.with_sm(|sm| sm.journal_handled(h_before));
        flow
    }

    fn closed_by_peer(&mut self) {
        self.clean_close = true;
    }

    fn close_with(&self, error: StreamError) {
        tracing::debug!(conn = self.handle.conn, jid = %self.jid, error = %error, "closing stream with an error");
        self.handle.close(Some(error));
    }
}

impl Session {
    /// Wait for the token bucket: reading slows down, the session stays.
    async fn throttle(&mut self) -> Flow {
        let metrics = &self.shared.metrics;
        let taken = self
            .handle
            .wait_for_token(self.rate_limit.as_mut(), &self.shared.shutdown, || {
                metrics.limit_hit(crate::metrics::Limit::StanzaRate)
            })
            .await;
        if taken {
            Flow::Continue
        } else {
            Flow::Stop
        }
    }

    /// Send a stanza to this session's own client.
    fn reply(&self, reply: Element) {
        if self.handle.push(QueuedStanza::new(reply)).is_err() {
            // The client is not reading its own replies either.
            self.handle.close_overflowed();
        }
    }

    fn reply_error(&self, request: &Element, error: StanzaError) {
        if let Some(reply) = stanza::error_reply(request, &error) {
            self.reply(reply);
        }
    }

    async fn handle_stanza(&mut self, mut element: Element) -> Flow {
        // XEP-0352 section 3.2: <active/> and <inactive/>, no reply.
        if let Some(state) = ClientState::of(&element).filter(|_| self.shared.csi_enabled) {
            self.handle
                .set_client_state(state, self.shared.metrics.csi());
            return Flow::Continue;
        }
        if element.namespace() == ns::SM && self.shared.sm.enabled {
            return self.handle_sm(element).await;
        }
        // Section 4.9.3.25: only message, presence and iq in jabber:client.
        let kind = match StanzaKind::of(&element) {
            Some(kind) if element.namespace() == ns::CLIENT => kind,
            _ => {
                self.close_with(StreamError::with_text(
                    StreamErrorCondition::UnsupportedStanzaType,
                    format!("<{}/> is not a stanza", element.name()),
                ));
                return Flow::Stop;
            }
        };
        self.shared.metrics.stanza_received(kind);
        // XEP-0198 section 4: every stanza read is handled here (routed, or
        // answered with an error), so `h` counts it now.
        self.handle.with_sm(|sm| sm.stanza_handled());
        // Section 8.1.2.1: the server stamps the full JID; a forged one is overwritten.
        element.set_attr("from", self.jid_string.clone());
        match stanza::to(&element) {
            Ok(Some(to)) => element.set_attr("to", to.to_string()),
            Ok(None) => {}
            Err(_) => {
                // Section 8.3.3.8: not routed, an error to the sender.
                self.reply_error(
                    &element,
                    StanzaError::new(StanzaErrorCondition::JidMalformed),
                );
                return Flow::Continue;
            }
        }
        // Section 8.1.5: a stanza without xml:lang takes the stream's.
        if let Some(lang) = &self.client_lang {
            if element.attr("xml:lang").is_none() {
                element.set_attr("xml:lang", lang.clone());
            }
        }
        // What the edge accepts, it delivers or bounces (issue 18): every hop
        // after this one carries the stanza as re-serialised text (escaping
        // can make it up to six times what the client sent) with the stamped
        // `from`, parsed again under `Limits::for_server_copies`. Held to
        // `max_stanza_bytes` here, it parses wherever it goes, wrapped or stored;
        // over it, the sender is told now (RFC 6120 section 8.3.3.12).
        let stanza_bytes = element.stanza_xml_len();
        if stanza_bytes > self.shared.limits.max_stanza_bytes {
            self.shared
                .metrics
                .limit_hit(crate::metrics::Limit::StanzaGrowth);
            let mut refused = Element::new(element.name(), element.namespace());
            for (name, value) in element.attrs() {
                refused.set_attr(name, value);
            }
            self.reply_error(
                &refused,
                StanzaError::new(StanzaErrorCondition::PolicyViolation).with_text(format!(
                    "the stanza is {stanza_bytes} bytes as the server sends it on; the limit is {}",
                    self.shared.limits.max_stanza_bytes
                )),
            );
            return Flow::Continue;
        }
        // The stanza's rules are checked once, here, by its typed form (RFC 6120
        // section 8.2.3 for IQs, RFC 6121 section 4.7 for presence); a broken
        // one is answered with bad-request and never routed.
        let element = match kind {
            StanzaKind::Message => element,
            StanzaKind::Presence => match Presence::try_from_element(element) {
                Ok(presence) => {
                    if presence.element().attr("to").is_none() {
                        self.handle.note_broadcast_presence(&presence);
                    }
                    presence.into_element()
                }
                Err(invalid) => return self.reject(invalid),
            },
            StanzaKind::Iq => match Iq::try_from_element(element) {
                Ok(iq) => {
                    if self.addressed_to_server(iq.element()) {
                        if let Some(flow) = self.handle_server_iq(iq.element()).await {
                            return flow;
                        }
                    }
                    iq.into_element()
                }
                Err(invalid) => return self.reject(invalid),
            },
        };
        if kind == StanzaKind::Iq
            && stanza::stanza_type(&element) == "get"
            && stanza::iq_payload(&element).is_some_and(|payload| payload.namespace() == ns::ROSTER)
        {
            self.handle.note_roster_requested();
        }
        // XEP-0280 sections 4 and 5: the session's carbons switch, which the
        // router records in the registry (for the same requests: a set of the
        // typed payload, from the session for itself); the edge's copy follows it.
        if kind == StanzaKind::Iq
            && stanza::stanza_type(&element) == "set"
            && (self.addressed_to_server(&element)
                || element.attr("to") == Some(self.jid.bare().to_string().as_str()))
        {
            match stanza::iq_payload(&element) {
                Some(payload) if carbons::Enable::from_element(payload).is_ok() => {
                    self.handle.note_carbons(true)
                }
                Some(payload) if carbons::Disable::from_element(payload).is_ok() => {
                    self.handle.note_carbons(false)
                }
                _ => {}
            }
        }
        let reply_template = error_reply_template(&element, kind);
        let origin = Origin::Session {
            jid: self.jid.clone(),
            addr: self.addr.clone(),
        };
        // The root of the stanza's trace; the router's spans are its children,
        // in this process or across the route stream (RouteRequest.trace_context).
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            parent: None,
            "connection_manager.route",
            otel.kind = "server",
            stanza.kind = element.name(),
            stanza.type = element.attr("type"),
            node.id = %self.shared.node_id,
            connection.id = self.handle.conn,
        );
        // The stanza enters the cluster now: deliveries carry this time, and
        // the delivering node observes the end-to-end latency from it.
        let routed = self
            .shared
            .router
            .route(origin, element, Some(SystemTime::now()))
            .instrument(span)
            .await;
        if let Err(error) = routed {
            tracing::debug!(jid = %self.jid, %error, "routing failed");
            self.reply_error(&reply_template, error.to_stanza_error());
        }
        Flow::Continue
    }

    /// A stream management nonza (XEP-0198).
    async fn handle_sm(&mut self, element: Element) -> Flow {
        match crate::sm_session::handle_nonza(
            &self.shared,
            &self.handle,
            &self.jid,
            &self.addr,
            element,
        )
        .await
        {
            Ok(()) => Flow::Continue,
            Err(error) => {
                self.close_with(error);
                Flow::Stop
            }
        }
    }

    /// A stanza that broke a rule of its kind: its sender gets the error.
    fn reject(&mut self, invalid: Box<InvalidStanza>) -> Flow {
        tracing::debug!(jid = %self.jid, error = %invalid, "stanza rejected");
        let InvalidStanza { stanza, error } = *invalid;
        self.reply_error(&stanza, error);
        Flow::Continue
    }

    /// An IQ without `to`, or to our domain, is for the server (RFC 6120 section 10.3.3).
    fn addressed_to_server(&self, iq: &Element) -> bool {
        match iq.attr("to") {
            None => true,
            Some(to) => to == self.shared.domain,
        }
    }

    /// The server IQs handled at the edge; `None` when the router handles it.
    async fn handle_server_iq(&mut self, iq: &Element) -> Option<Flow> {
        if !matches!(stanza::stanza_type(iq), "get" | "set") {
            return None;
        }
        let payload = stanza::iq_payload(iq)?;
        if payload.is("session", ns::SESSION) {
            // Legacy session establishment (RFC 3921 section 3): a no-op.
            self.reply(stanza::iq_result(iq));
            return Some(Flow::Continue);
        }
        if payload.is("bind", ns::BIND) {
            // One resource per stream (RFC 6120 section 7.7.2.1 note on multiple resources).
            self.reply_error(iq, StanzaError::new(StanzaErrorCondition::NotAllowed));
            return Some(Flow::Continue);
        }
        if payload.is("query", ns::REGISTER) {
            let outcome = register::handle_authenticated(&self.shared, self.jid.bare(), iq).await;
            self.reply(outcome.reply);
            if outcome.account_removed {
                // XEP-0077 section 3.2: the account is gone, and so is its stream.
                self.close_with(StreamError::with_text(
                    StreamErrorCondition::NotAuthorized,
                    "account removed",
                ));
                return Some(Flow::Stop);
            }
            return Some(Flow::Continue);
        }
        None
    }

    /// Unbind first (so nothing more is routed here), let the writer finish,
    /// then reroute what the client never received. A resumable stream that
    /// lost its connection is detached instead (XEP-0198 section 5).
    async fn teardown(self, writer_task: &mut tokio::task::JoinHandle<Vec<QueuedStanza>>) {
        self.handle.close(None);
        let journal = self.handle.with_sm(|sm| sm.journal.clone());
        if let Some(sink) = journal {
            crate::sm_session::end_resumable(
                &self.shared,
                &self.jid,
                &self.handle,
                &sink,
                self.clean_close,
                writer_task,
            )
            .await;
            return;
        }
        if let Err(error) = self.shared.router.unbind(&self.jid, &self.addr).await {
            tracing::warn!(jid = %self.jid, %error, "unbind failed");
        }
        let unwritten = join_writer(&self.handle, writer_task).await;
        self.shared.remove_connection(self.handle.conn);
        // Sent but not acknowledged (XEP-0198 section 4): as if never sent.
        let mut leftovers = self.handle.take_unacked();
        leftovers.extend(unwritten);
        leftovers.extend(self.handle.take_remaining());
        for queued in leftovers {
            let stanza = queued.into_element();
            if !is_reroutable(&stanza) {
                continue;
            }
            if let Err(error) = self.shared.router.undeliverable(stanza, &self.addr).await {
                tracing::warn!(jid = %self.jid, %error, "rerouting an unwritten stanza failed");
            }
        }
        tracing::info!(conn = self.handle.conn, jid = %self.jid, "session ended");
    }
}

/// What an error reply needs of a stanza after it was handed to the router:
/// its addressing and, for an IQ, its payload (section 8.3.1; a message's or
/// presence's payload is not echoed back, to keep routing free of copies).
fn error_reply_template(element: &Element, kind: StanzaKind) -> Element {
    let mut template = Element::new(element.name(), element.namespace());
    for (name, value) in element.attrs() {
        template.set_attr(name, value);
    }
    if kind == StanzaKind::Iq {
        for node in element.nodes() {
            if let Node::Element(child) = node {
                template.append_child(child.clone());
            }
        }
    }
    template
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iq(attrs: &[(&str, &str)], children: usize) -> Element {
        let mut iq = Element::new("iq", ns::CLIENT);
        for (name, value) in attrs {
            iq.set_attr(*name, *value);
        }
        for index in 0..children {
            iq.append_child(Element::new(format!("q{index}"), "urn:example"));
        }
        iq
    }

    fn rejected(iq: &Element) -> Option<String> {
        Iq::try_from_element(iq.clone())
            .err()
            .map(|invalid| invalid.error.to_element().to_xml())
    }

    #[test]
    fn iq_semantics() {
        assert_eq!(rejected(&iq(&[("id", "1"), ("type", "get")], 1)), None);
        assert_eq!(rejected(&iq(&[("id", "1"), ("type", "set")], 1)), None);
        assert_eq!(rejected(&iq(&[("id", "1"), ("type", "result")], 0)), None);
        assert_eq!(rejected(&iq(&[("id", "1"), ("type", "error")], 2)), None);
        assert_eq!(
            rejected(&iq(&[("type", "get")], 1)).as_deref(),
            Some("<error xmlns='jabber:client' type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>an iq needs an id</text></error>")
        );
        assert!(rejected(&iq(&[("id", "1"), ("type", "get")], 0)).is_some());
        assert!(rejected(&iq(&[("id", "1"), ("type", "set")], 2)).is_some());
        assert!(rejected(&iq(&[("id", "1"), ("type", "result")], 2)).is_some());
        assert!(rejected(&iq(&[("id", "1")], 1)).is_some());
        assert!(rejected(&iq(&[("id", "1"), ("type", "fetch")], 1)).is_some());
        assert!(rejected(&iq(&[("id", ""), ("type", "get")], 1)).is_some());
    }

    #[test]
    fn error_template_keeps_addressing_and_iq_payload() {
        let message = Element::new("message", ns::CLIENT)
            .with_attr("id", "m1")
            .with_attr("from", "juliet@example.com/balcony")
            .with_attr("to", "romeo@example.net")
            .with_child(Element::new("body", ns::CLIENT).with_text("hi"));
        let reply = stanza::error_reply(
            &error_reply_template(&message, StanzaKind::Message),
            &StanzaError::new(StanzaErrorCondition::ServiceUnavailable),
        )
        .unwrap();
        assert_eq!(
            reply.to_stanza_xml(),
            "<message id='m1' to='juliet@example.com/balcony' from='romeo@example.net' type='error'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        );
        let iq = iq(&[("id", "q"), ("type", "get")], 1);
        assert_eq!(error_reply_template(&iq, StanzaKind::Iq), iq);
    }
}
