//! Stream negotiation (RFC 6120 sections 4 to 7): the stream header, STARTTLS
//! (section 5), SASL (section 6), pre-authentication in-band registration
//! (XEP-0077) and resource binding (section 7), all under one absolute
//! deadline from accept until the resource is bound.

use std::net::SocketAddr;
use std::sync::Arc;

use starling_api::{BindError, SessionAddr};
use starling_jid::{normalize_domainpart, normalize_resourcepart, BareJid, FullJid, Jid};
use starling_sasl::{
    decode_xmpp_payload, verify_plain_password, Mechanism, PlainCredentials, SaslError,
    ScramClientFirst, ScramHash, ScramKeys, ScramServerFirst,
};
use starling_xmpp::{
    ns, stanza, Element, StanzaError, StanzaErrorCondition, StanzaErrorType, StanzaKind,
    StreamError, StreamErrorCondition, StreamEvent, StreamHeader,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::framing::{Framing, Inbound, Outgoing};
use crate::metrics::Limit;
use crate::outbound::{ConnectionHandle, QueuedStanza, CLOSE_WRITE_TIMEOUT};
use crate::transport::{ByteStream, Received, Transport};
use crate::xml::{self, FeatureSet, STARTTLS_FAILURE, STARTTLS_PROCEED, STREAM_CLOSE};
use crate::{random_id, register, ListenerKind, Shared};

/// How a stream ends during negotiation.
#[derive(Debug)]
pub(crate) enum StreamEnd {
    /// A stream error, then `</stream:stream>` (RFC 6120 section 4.9.1.1).
    Error(StreamError),
    /// A nonza that ends the stream (STARTTLS `<failure/>`), then `</stream:stream>`.
    FailureThenClose(&'static str),
    /// The client sent `</stream:stream>`: answer with ours (section 4.4).
    ClientClosed,
    /// The connection is gone or unusable: nothing more can be written.
    ConnectionLost,
}

impl From<StreamError> for StreamEnd {
    fn from(error: StreamError) -> Self {
        StreamEnd::Error(error)
    }
}

fn stream_error(condition: StreamErrorCondition, text: &str) -> StreamEnd {
    StreamEnd::Error(StreamError::with_text(condition, text))
}

/// A SASL exchange in progress.
enum SaslExchange {
    Idle,
    /// `<auth/>` came without an initial response; the empty challenge was sent.
    AwaitingInitialResponse(Mechanism),
    /// The server-first-message was sent; the client-final-message is next.
    ScramFinal {
        exchange: Box<ScramServerFirst>,
        user: Option<BareJid>,
    },
}

/// Everything the session needs from a negotiated, bound stream.
pub(crate) struct BoundStream {
    pub conn: starling_api::ConnId,
    pub peer: SocketAddr,
    pub transport: Transport,
    pub parser: Inbound,
    pub jid: FullJid,
    pub addr: SessionAddr,
    pub handle: Arc<ConnectionHandle>,
    /// The stream's `xml:lang` when the client declared one (RFC 6120 section 4.7.4).
    pub client_lang: Option<String>,
}

struct Negotiation {
    shared: Arc<Shared>,
    conn: starling_api::ConnId,
    peer: SocketAddr,
    transport: Option<Transport>,
    /// How the transport frames the stream (fixed for the connection).
    framing: Framing,
    parser: Inbound,
    /// Our response header was sent for the current stream.
    header_sent: bool,
    stream_id: String,
    lang: String,
    client_lang: Option<String>,
    reply_to: Option<String>,
    auth_attempts: u32,
    /// The mechanism of the current or last `<auth/>` (for metrics).
    mechanism: Option<Mechanism>,
    sasl: SaslExchange,
    /// Set by SASL success.
    user: Option<BareJid>,
}

/// What the negotiation loop stopped for.
enum Negotiated {
    /// An authenticated client asked to bind a resource.
    BindRequest(Element),
}

/// Refuse a connection over the per-IP limit: on the STARTTLS listener, our
/// header and `<policy-violation/>` right away (RFC 6120 section 4.9.1.2);
/// direct TLS is simply closed (an error would first cost a TLS handshake).
pub(crate) async fn refuse_connection(shared: Arc<Shared>, mut tcp: TcpStream, kind: ListenerKind) {
    if kind == ListenerKind::StartTls {
        shared
            .metrics
            .stream_error(StreamErrorCondition::PolicyViolation.as_str());
        let mut out = xml::stream_header(&random_id(), &shared.domain, None, "en");
        out.push_str(
            &StreamError::with_text(
                StreamErrorCondition::PolicyViolation,
                "too many connections from your address",
            )
            .to_xml(),
        );
        out.push_str(STREAM_CLOSE);
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
            tcp.write_all(out.as_bytes()).await?;
            tcp.shutdown().await
        })
        .await;
    }
}

/// Accept a TCP connection (with the TLS handshake on the direct TLS
/// listener) and negotiate its stream until a resource is bound. `None` when
/// the stream ended (everything owed to the client has been written).
pub(crate) async fn negotiate(
    shared: Arc<Shared>,
    conn: starling_api::ConnId,
    tcp: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
) -> Option<BoundStream> {
    // RFC 6120 section 13.12 (denial of service): one absolute deadline from
    // accept until the resource is bound, not an idle timer.
    let deadline = Instant::now() + shared.limits.pre_auth_timeout;
    let stream = match kind {
        ListenerKind::StartTls => Some(ByteStream::Plain(tcp)),
        ListenerKind::DirectTls => {
            let handshake = shared.direct_tls.accept(tcp);
            tokio::select! {
                result = handshake => match result {
                    Ok(tls) => Some(ByteStream::Tls(Box::new(tls))),
                    Err(error) => {
                        tracing::debug!(conn, peer = %peer, %error, "direct tls handshake failed");
                        None
                    }
                },
                _ = tokio::time::sleep_until(deadline) => None,
                _ = shared.shutdown.cancelled() => None,
            }
        }
    };
    negotiate_transport(shared, conn, Transport::Bytes(stream?), peer, deadline).await
}

/// Negotiate a stream on an established transport (TCP, TLS or WebSocket)
/// until a resource is bound, by `deadline`. `None` when the stream ended.
pub(crate) async fn negotiate_transport(
    shared: Arc<Shared>,
    conn: starling_api::ConnId,
    transport: Transport,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<BoundStream> {
    let framing = transport.framing();
    let mut negotiation = Negotiation {
        shared: Arc::clone(&shared),
        conn,
        peer,
        transport: Some(transport),
        framing,
        parser: Inbound::new(framing, shared.parser_limits),
        header_sent: false,
        stream_id: random_id(),
        lang: "en".to_string(),
        client_lang: None,
        reply_to: None,
        auth_attempts: 0,
        mechanism: None,
        sasl: SaslExchange::Idle,
        user: None,
    };

    loop {
        let outcome = tokio::select! {
            outcome = negotiation.run() => outcome,
            _ = tokio::time::sleep_until(deadline) => {
                tracing::debug!(conn, peer = %peer, "pre-authentication deadline passed");
                shared.metrics.limit_hit(Limit::PreAuthTimeout);
                Err(stream_error(StreamErrorCondition::ConnectionTimeout, "authentication and binding took too long"))
            }
            _ = shared.shutdown.cancelled() => Err(StreamEnd::Error(StreamError::new(StreamErrorCondition::SystemShutdown))),
        };
        match outcome {
            Ok(Negotiated::BindRequest(iq)) => {
                // Not under the deadline's select: a bind that the router
                // completed must not be dropped half-way.
                match negotiation.bind_resource(iq).await {
                    Ok(Some(bound)) => return Some(bound),
                    Ok(None) => continue,
                    Err(end) => {
                        negotiation.finish(end).await;
                        return None;
                    }
                }
            }
            Err(end) => {
                negotiation.finish(end).await;
                return None;
            }
        }
    }
}

fn parse_version(version: &str) -> Option<(u32, u32)> {
    let (major, minor) = version.split_once('.')?;
    if major.is_empty()
        || minor.is_empty()
        || !major
            .bytes()
            .chain(minor.bytes())
            .all(|byte| byte.is_ascii_digit())
    {
        return None;
    }
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// An `xml:lang` value we can echo: a plausible BCP 47 tag (RFC 6120 section 4.7.4).
fn acceptable_lang(lang: &str) -> bool {
    !lang.is_empty()
        && lang.len() <= 35
        && lang
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
}

/// Check a client's initial stream header (RFC 6120 sections 4.7 and 4.8).
pub(crate) fn check_stream_header(header: &StreamHeader, domain: &str) -> Result<(), StreamError> {
    // Section 4.8.2: the content namespace of a client stream is jabber:client.
    if header.default_namespace.as_deref() != Some(ns::CLIENT) {
        return Err(StreamError::with_text(
            StreamErrorCondition::InvalidNamespace,
            "the default namespace must be jabber:client",
        ));
    }
    // Section 4.7.2: the initiating entity MUST include 'to', naming a domain we serve.
    let served = header
        .to
        .as_deref()
        .and_then(|to| normalize_domainpart(to).ok())
        .is_some_and(|to| to == domain);
    if !served {
        return Err(StreamError::new(StreamErrorCondition::HostUnknown));
    }
    // Section 4.7.5: no version (a pre-1.0 entity) or one below 1.0 cannot be served;
    // a higher one is answered with 1.0, and the client decides.
    match header.version.as_deref().and_then(parse_version) {
        Some((major, _)) if major >= 1 => Ok(()),
        _ => Err(StreamError::with_text(
            StreamErrorCondition::UnsupportedVersion,
            "version 1.0 is required",
        )),
    }
}

impl Negotiation {
    fn transport(&mut self) -> Result<&mut Transport, StreamEnd> {
        self.transport.as_mut().ok_or(StreamEnd::ConnectionLost)
    }

    fn is_tls(&self) -> bool {
        self.transport.as_ref().is_some_and(Transport::is_tls)
    }

    /// Whether `require_tls` applies: to TCP streams. A WebSocket has no
    /// STARTTLS (RFC 7395 section 3.1: TLS belongs to the WebSocket layer, here
    /// a TLS-terminating proxy); it gets what a plaintext TCP stream gets with
    /// TLS optional: SCRAM only, no PLAIN, no in-band registration.
    fn tls_required(&self) -> bool {
        self.shared.require_tls && self.framing == Framing::Stream
    }

    async fn send(&mut self, out: &Outgoing) -> Result<(), StreamEnd> {
        self.transport()?
            .send(out)
            .await
            .map_err(|_| StreamEnd::ConnectionLost)
    }

    async fn send_nonza(&mut self, xml: &str) -> Result<(), StreamEnd> {
        let mut out = Outgoing::new(self.framing);
        out.nonza(xml);
        self.send(&out).await
    }

    async fn send_stanza(&mut self, stanza: &Element) -> Result<(), StreamEnd> {
        let mut out = Outgoing::new(self.framing);
        out.stanza(stanza);
        self.send(&out).await
    }

    /// Write what ends the stream (our header first if it was not sent,
    /// section 4.9.1.2), then close the connection.
    async fn finish(&mut self, end: StreamEnd) {
        let mut out = Outgoing::new(self.framing);
        let needs_header = !self.header_sent;
        match &end {
            StreamEnd::Error(error) => {
                tracing::debug!(conn = self.conn, peer = %self.peer, error = %error, "closing stream with an error");
                if needs_header {
                    out.header(&self.stream_id, &self.shared.domain, None, &self.lang);
                }
                self.shared.metrics.stream_error(error.condition.as_str());
                out.stream_error(error);
                out.close();
            }
            StreamEnd::FailureThenClose(failure) => {
                out.nonza(failure);
                out.close();
            }
            StreamEnd::ClientClosed => {
                if needs_header {
                    out.header(&self.stream_id, &self.shared.domain, None, &self.lang);
                }
                out.close();
            }
            StreamEnd::ConnectionLost => {}
        }
        let Some(transport) = self.transport.as_mut() else {
            return;
        };
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
            if !out.is_empty() {
                transport.send(&out).await?;
            }
            transport.shutdown().await
        })
        .await;
    }

    /// Process events, reading as needed, until a bind request or the end.
    async fn run(&mut self) -> Result<Negotiated, StreamEnd> {
        loop {
            while let Some(event) = self
                .parser
                .next_event()
                .map_err(|error| StreamEnd::Error(error.0))?
            {
                if let Some(negotiated) = self.handle_event(event).await? {
                    return Ok(negotiated);
                }
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> Result<(), StreamEnd> {
        let transport = self.transport.as_mut().ok_or(StreamEnd::ConnectionLost)?;
        let received = transport.receive(&mut self.parser).await;
        match received {
            Received::Fed => Ok(()),
            Received::Invalid(error) => Err(StreamEnd::Error(error.0)),
            Received::Lost => Err(StreamEnd::ConnectionLost),
        }
    }

    async fn handle_event(&mut self, event: StreamEvent) -> Result<Option<Negotiated>, StreamEnd> {
        match event {
            StreamEvent::Open(header) => {
                self.open_stream(header).await?;
                Ok(None)
            }
            StreamEvent::Close => Err(StreamEnd::ClientClosed),
            StreamEvent::Element(element) => self.handle_element(element).await,
        }
    }

    /// Answer a stream header with ours and the features of this stage.
    async fn open_stream(&mut self, header: StreamHeader) -> Result<(), StreamEnd> {
        self.stream_id = random_id();
        self.client_lang = header.lang.clone().filter(|lang| acceptable_lang(lang));
        self.lang = self.client_lang.clone().unwrap_or_else(|| "en".to_string());
        // Section 4.7.1: 'to' of the response is the 'from' of the initial header, if valid.
        self.reply_to = header
            .from
            .as_deref()
            .and_then(|from| from.parse::<Jid>().ok())
            .map(|jid| jid.to_string());
        check_stream_header(&header, &self.shared.domain)?;
        let mut features = FeatureSet::for_stage(
            self.is_tls(),
            self.tls_required(),
            self.user.is_some(),
            &self.shared.stream_features,
        );
        if self.framing == Framing::WebSocket {
            features.starttls = None;
        }
        let mut out = Outgoing::new(self.framing);
        out.header(
            &self.stream_id,
            &self.shared.domain,
            self.reply_to.as_deref(),
            &self.lang,
        );
        out.features(&features);
        self.header_sent = true;
        self.send(&out).await
    }

    async fn handle_element(&mut self, element: Element) -> Result<Option<Negotiated>, StreamEnd> {
        if element.is("starttls", ns::TLS) {
            self.start_tls().await?;
            return Ok(None);
        }
        if element.namespace() == ns::SASL {
            if self.user.is_some() {
                // Section 6.4.6: SASL happens once per stream negotiation.
                return Err(stream_error(
                    StreamErrorCondition::UnsupportedStanzaType,
                    "already authenticated",
                ));
            }
            match element.name() {
                "auth" => self.start_auth(&element).await?,
                "response" => self.continue_auth(&element).await?,
                "abort" => {
                    // Section 6.4.4; an abort counts as a failed attempt (it is one).
                    self.sasl = SaslExchange::Idle;
                    self.count_auth_failure(SaslError::Aborted.condition().as_str());
                    self.send_nonza(&xml::sasl_failure(SaslError::Aborted.condition()))
                        .await?;
                }
                _ => {
                    return Err(stream_error(
                        StreamErrorCondition::UnsupportedStanzaType,
                        "unknown sasl element",
                    ))
                }
            }
            return Ok(None);
        }
        let Some(kind) = StanzaKind::of(&element).filter(|_| element.namespace() == ns::CLIENT)
        else {
            return Err(stream_error(
                StreamErrorCondition::UnsupportedStanzaType,
                "unknown top-level element",
            ));
        };
        if kind == StanzaKind::Iq {
            let payload = stanza::iq_payload(&element);
            if let (Some(_), Some(payload)) = (&self.user, payload) {
                if payload.is("bind", ns::BIND) {
                    return Ok(Some(Negotiated::BindRequest(element)));
                }
            }
            let register_payload = payload.is_some_and(|payload| payload.is("query", ns::REGISTER));
            if self.user.is_none()
                && register_payload
                && self.shared.registration_enabled
                && self.is_tls()
            {
                let reply = register::handle_unauthenticated(&self.shared, &element).await;
                self.send_stanza(&reply).await?;
                return Ok(None);
            }
        }
        // Section 4.9.3.12: no stanza before authentication and binding.
        Err(stream_error(
            StreamErrorCondition::NotAuthorized,
            "authenticate and bind a resource first",
        ))
    }

    /// STARTTLS (section 5.4.2): `<proceed/>`, then the TLS handshake on the
    /// same TCP connection, and a fresh stream. Bytes the client sent after
    /// `<starttls/>` are discarded with the parser (no plaintext injection).
    async fn start_tls(&mut self) -> Result<(), StreamEnd> {
        if self.is_tls() || self.user.is_some() || self.framing == Framing::WebSocket {
            // Section 5.4.2.2: TLS cannot be negotiated now: failure, then close.
            return Err(StreamEnd::FailureThenClose(STARTTLS_FAILURE));
        }
        self.send_nonza(STARTTLS_PROCEED).await?;
        self.parser.reset();
        self.header_sent = false;
        let Some(Transport::Bytes(ByteStream::Plain(tcp))) = self.transport.take() else {
            return Err(StreamEnd::ConnectionLost);
        };
        match self.shared.starttls.accept(tcp).await {
            Ok(tls) => {
                self.transport = Some(Transport::Bytes(ByteStream::Tls(Box::new(tls))));
                Ok(())
            }
            Err(error) => {
                tracing::debug!(conn = self.conn, peer = %self.peer, %error, "starttls handshake failed");
                Err(StreamEnd::ConnectionLost)
            }
        }
    }

    /// Answer a failed step with `<failure/>` (section 6.4.5), remembering
    /// password failures against the client's address.
    async fn fail_auth(&mut self, error: SaslError) -> Result<(), StreamEnd> {
        self.sasl = SaslExchange::Idle;
        tracing::debug!(conn = self.conn, peer = %self.peer, %error, "sasl failure");
        self.count_auth_failure(error.condition().as_str());
        if matches!(error, SaslError::NotAuthorized(_)) {
            self.shared
                .ip_limits
                .record_auth_failure(self.peer.ip(), std::time::Instant::now());
        }
        self.send_nonza(&xml::sasl_failure(error.condition())).await
    }

    /// `starling_logins_total{result="failure"}` and `starling_sasl_failures_total`.
    fn count_auth_failure(&self, reason: &'static str) {
        let mechanism = self.mechanism.map_or("none", Mechanism::as_str);
        self.shared.metrics.login(mechanism, false);
        self.shared.metrics.sasl_failure(mechanism, reason);
    }

    async fn start_auth(&mut self, auth: &Element) -> Result<(), StreamEnd> {
        self.sasl = SaslExchange::Idle;
        self.mechanism = None;
        self.auth_attempts += 1;
        if self.auth_attempts > self.shared.limits.max_auth_attempts {
            self.shared.metrics.limit_hit(Limit::AuthAttempts);
            // Section 6.4.5: past a reasonable number of retries, a stream
            // error, which SHOULD be <policy-violation/>.
            return Err(stream_error(
                StreamErrorCondition::PolicyViolation,
                "too many authentication attempts",
            ));
        }
        let Some(mechanism) = auth.attr("mechanism").and_then(Mechanism::from_name) else {
            return self
                .fail_auth(SaslError::InvalidMechanism("mechanism not offered"))
                .await;
        };
        self.mechanism = Some(mechanism);
        if !self.is_tls() && (self.tls_required() || mechanism.requires_encryption()) {
            // Sections 5.3.1 and 6.5.3: TLS first (mandatory here, or needed
            // by a mechanism that sends the password).
            return self
                .fail_auth(SaslError::EncryptionRequired("negotiate tls first"))
                .await;
        }
        if self
            .shared
            .ip_limits
            .auth_throttled(self.peer.ip(), std::time::Instant::now())
        {
            // The password is not even looked at; the account is not locked.
            self.shared.metrics.limit_hit(Limit::FailedAuthPerIp);
            return self
                .fail_auth(SaslError::TemporaryAuthFailure(
                    "too many failures from this address",
                ))
                .await;
        }
        let text = auth.text();
        if text.trim().is_empty() {
            // Section 6.4.2: no initial response, so an empty challenge asks for it.
            self.sasl = SaslExchange::AwaitingInitialResponse(mechanism);
            return self.send_nonza(&xml::sasl_challenge(None)).await;
        }
        match decode_xmpp_payload(&text) {
            Ok(payload) => self.initial_response(mechanism, &payload).await,
            Err(error) => self.fail_auth(error).await,
        }
    }

    async fn continue_auth(&mut self, response: &Element) -> Result<(), StreamEnd> {
        let payload = match decode_xmpp_payload(&response.text()) {
            Ok(payload) => payload,
            Err(error) => return self.fail_auth(error).await,
        };
        match std::mem::replace(&mut self.sasl, SaslExchange::Idle) {
            SaslExchange::Idle => {
                self.fail_auth(SaslError::MalformedRequest("no exchange in progress"))
                    .await
            }
            SaslExchange::AwaitingInitialResponse(mechanism) => {
                self.initial_response(mechanism, &payload).await
            }
            SaslExchange::ScramFinal { exchange, user } => {
                match (exchange.verify_client_final(&payload), user) {
                    (Ok(server_final), Some(user)) => {
                        self.authenticated(user, server_final.as_bytes()).await
                    }
                    (Ok(_), None) => {
                        self.fail_auth(SaslError::NotAuthorized("no such account"))
                            .await
                    }
                    (Err(error), _) => self.fail_auth(error).await,
                }
            }
        }
    }

    /// The account an authentication identity names, if it is a valid localpart.
    fn account(&self, username: &str) -> Option<BareJid> {
        BareJid::from_parts(Some(username), &self.shared.domain).ok()
    }

    /// Section 6.3.8: the authorization identity may only be the account's own bare JID.
    fn check_authzid(
        &self,
        authzid: Option<&str>,
        user: Option<&BareJid>,
    ) -> Result<(), SaslError> {
        let Some(authzid) = authzid else {
            return Ok(());
        };
        let requested = authzid.parse::<BareJid>().ok();
        if requested.is_some() && requested.as_ref() == user {
            Ok(())
        } else {
            Err(SaslError::InvalidAuthzid(
                "authzid is not the authenticated account",
            ))
        }
    }

    /// Look up an account's stored credentials. `Err` when storage fails: the
    /// client gets `<temporary-auth-failure/>`, which says nothing about the account.
    /// (Takes `&mut self`: a `&Negotiation` held across an await would need
    /// the transport to be `Sync`, and a WebSocket is not.)
    async fn stored_credentials(
        &mut self,
        user: Option<&BareJid>,
    ) -> Result<Option<starling_api::StoredCredentials>, SaslError> {
        let Some(user) = user else { return Ok(None) };
        self.shared
            .storage
            .credentials(user)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "credential lookup failed");
                SaslError::TemporaryAuthFailure("credentials unavailable")
            })
    }

    async fn initial_response(
        &mut self,
        mechanism: Mechanism,
        payload: &[u8],
    ) -> Result<(), StreamEnd> {
        match mechanism.scram_hash() {
            Some(hash) => self.scram_first(hash, payload).await,
            None => self.plain(payload).await,
        }
    }

    async fn scram_first(&mut self, hash: ScramHash, payload: &[u8]) -> Result<(), StreamEnd> {
        let client_first = match ScramClientFirst::parse(hash, payload) {
            Ok(client_first) => client_first,
            Err(error) => return self.fail_auth(error).await,
        };
        // An invalid username is treated as an unknown account: same exchange, same failure.
        let user = self.account(client_first.username());
        if let Err(error) = self.check_authzid(client_first.authzid(), user.as_ref()) {
            return self.fail_auth(error).await;
        }
        let keys = match self.stored_credentials(user.as_ref()).await {
            Ok(credentials) => credentials.map(|credentials| match hash {
                ScramHash::Sha1 => ScramKeys::from(&credentials.sha1),
                ScramHash::Sha256 => ScramKeys::from(&credentials.sha256),
            }),
            Err(error) => return self.fail_auth(error).await,
        };
        let user = user.filter(|_| keys.is_some());
        let (exchange, server_first) = client_first.respond(keys, &self.shared.scram_secret);
        self.sasl = SaslExchange::ScramFinal {
            exchange: Box::new(exchange),
            user,
        };
        self.send_nonza(&xml::sasl_challenge(Some(server_first.as_bytes())))
            .await
    }

    async fn plain(&mut self, payload: &[u8]) -> Result<(), StreamEnd> {
        let plain = match PlainCredentials::parse(payload) {
            Ok(plain) => plain,
            Err(error) => return self.fail_auth(error).await,
        };
        let user = self.account(&plain.authcid);
        if let Err(error) = self.check_authzid(plain.authzid.as_deref(), user.as_ref()) {
            return self.fail_auth(error).await;
        }
        let keys = match self.stored_credentials(user.as_ref()).await {
            Ok(credentials) => credentials.map(|credentials| ScramKeys::from(&credentials.sha256)),
            Err(error) => return self.fail_auth(error).await,
        };
        // PBKDF2 is CPU work: off the async threads. An unknown account runs
        // the same derivation (RFC 5802 section 9's concern applies to PLAIN too).
        let password = plain.password;
        let valid = tokio::task::spawn_blocking(move || {
            verify_plain_password(ScramHash::Sha256, &password, keys.as_ref())
        })
        .await
        .unwrap_or(false);
        match (valid, user) {
            (true, Some(user)) => self.authenticated(user, b"").await,
            _ => {
                self.fail_auth(SaslError::NotAuthorized(
                    "wrong password or no such account",
                ))
                .await
            }
        }
    }

    /// `<success/>` and the stream restart of section 6.4.6.
    async fn authenticated(
        &mut self,
        user: BareJid,
        additional_data: &[u8],
    ) -> Result<(), StreamEnd> {
        tracing::info!(conn = self.conn, peer = %self.peer, user = %user, "authenticated");
        self.sasl = SaslExchange::Idle;
        self.shared
            .metrics
            .login(self.mechanism.map_or("none", Mechanism::as_str), true);
        self.user = Some(user);
        self.send_nonza(&xml::sasl_success(additional_data)).await?;
        self.parser.reset();
        self.header_sent = false;
        Ok(())
    }

    /// Resource binding (section 7.6). `Ok(None)`: the client got an error
    /// reply and may try again.
    async fn bind_resource(&mut self, iq: Element) -> Result<Option<BoundStream>, StreamEnd> {
        let Some(user) = self.user.clone() else {
            return Err(stream_error(
                StreamErrorCondition::NotAuthorized,
                "authenticate first",
            ));
        };
        let bad_request = StanzaError::new(StanzaErrorCondition::BadRequest);
        if stanza::stanza_type(&iq) != "set" || iq.attr("id").is_none() {
            self.reply_error(&iq, bad_request).await?;
            return Ok(None);
        }
        let requested = match iq
            .get_child("bind", ns::BIND)
            .and_then(|bind| bind.get_child("resource", ns::BIND))
            .map(Element::text)
            .filter(|resource| !resource.is_empty())
        {
            None => None,
            // Section 7.7.2.1: the resourcepart is normalised by OpaqueString (RFC 7622 section 3.4).
            Some(resource) => match normalize_resourcepart(&resource) {
                Ok(resource) => Some(resource),
                Err(_) => {
                    self.reply_error(&iq, bad_request.with_text("invalid resourcepart"))
                        .await?;
                    return Ok(None);
                }
            },
        };
        let addr = SessionAddr {
            node: self.shared.node_id.clone(),
            conn: self.conn,
        };
        // Registered before the router knows the session, so that nothing
        // routed to it right after the bind is lost.
        let handle = ConnectionHandle::new(self.conn, self.shared.limits.outbound_queue_stanzas);
        self.shared.add_connection(self.conn, Arc::clone(&handle));
        match self
            .shared
            .router
            .bind(&user, requested.as_deref(), &addr)
            .await
        {
            Ok(jid) => {
                tracing::info!(conn = self.conn, jid = %jid, "resource bound");
                handle.set_bound(jid.clone(), addr.clone());
                let mut result = stanza::iq_result(&iq);
                result.append_child(
                    Element::new("bind", ns::BIND)
                        .with_child(Element::new("jid", ns::BIND).with_text(jid.to_string())),
                );
                // Ahead of anything routed to the session in the meantime.
                handle.push_front(QueuedStanza::new(result));
                let Some(transport) = self.transport.take() else {
                    self.shared.remove_connection(self.conn);
                    return Err(StreamEnd::ConnectionLost);
                };
                let parser = std::mem::replace(
                    &mut self.parser,
                    Inbound::new(self.framing, self.shared.parser_limits),
                );
                Ok(Some(BoundStream {
                    conn: self.conn,
                    peer: self.peer,
                    transport,
                    parser,
                    jid,
                    addr,
                    handle,
                    client_lang: self.client_lang.clone(),
                }))
            }
            Err(error) => {
                self.shared.remove_connection(self.conn);
                tracing::info!(conn = self.conn, user = %user, %error, "resource binding refused");
                let stanza_error = match error {
                    BindError::BadRequest => StanzaError::new(StanzaErrorCondition::BadRequest),
                    // Section 7.6.2.1: too many resources, type wait.
                    BindError::ResourceConstraint => {
                        StanzaError::new(StanzaErrorCondition::ResourceConstraint)
                            .with_type(StanzaErrorType::Wait)
                    }
                    // Section 7.6.2.2.
                    BindError::NotAllowed => StanzaError::new(StanzaErrorCondition::NotAllowed),
                    BindError::Api(error) => error.to_stanza_error(),
                };
                self.reply_error(&iq, stanza_error).await?;
                Ok(None)
            }
        }
    }

    async fn reply_error(
        &mut self,
        request: &Element,
        error: StanzaError,
    ) -> Result<(), StreamEnd> {
        match stanza::error_reply(request, &error) {
            Some(reply) => self.send_stanza(&reply).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(to: Option<&str>, version: Option<&str>, namespace: Option<&str>) -> StreamHeader {
        StreamHeader {
            to: to.map(str::to_string),
            version: version.map(str::to_string),
            default_namespace: namespace.map(str::to_string),
            ..StreamHeader::default()
        }
    }

    fn condition(header: &StreamHeader) -> Option<StreamErrorCondition> {
        check_stream_header(header, "example.com")
            .err()
            .map(|error| error.condition)
    }

    #[test]
    fn stream_header_checks() {
        use StreamErrorCondition::*;
        assert_eq!(
            condition(&header(Some("example.com"), Some("1.0"), Some(ns::CLIENT))),
            None
        );
        assert_eq!(
            condition(&header(Some("EXAMPLE.com"), Some("1.0"), Some(ns::CLIENT))),
            None
        );
        // A higher version is answered with 1.0 (section 4.7.5).
        assert_eq!(
            condition(&header(Some("example.com"), Some("1.1"), Some(ns::CLIENT))),
            None
        );
        assert_eq!(
            condition(&header(Some("example.com"), Some("2.0"), Some(ns::CLIENT))),
            None
        );
        assert_eq!(
            condition(&header(Some("example.net"), Some("1.0"), Some(ns::CLIENT))),
            Some(HostUnknown)
        );
        assert_eq!(
            condition(&header(None, Some("1.0"), Some(ns::CLIENT))),
            Some(HostUnknown)
        );
        assert_eq!(
            condition(&header(Some("example.com"), None, Some(ns::CLIENT))),
            Some(UnsupportedVersion)
        );
        assert_eq!(
            condition(&header(Some("example.com"), Some("0.9"), Some(ns::CLIENT))),
            Some(UnsupportedVersion)
        );
        assert_eq!(
            condition(&header(Some("example.com"), Some("1"), Some(ns::CLIENT))),
            Some(UnsupportedVersion)
        );
        assert_eq!(
            condition(&header(Some("example.com"), Some("1.x"), Some(ns::CLIENT))),
            Some(UnsupportedVersion)
        );
        assert_eq!(
            condition(&header(Some("example.com"), Some("1.0"), Some(ns::SERVER))),
            Some(InvalidNamespace)
        );
        assert_eq!(
            condition(&header(Some("example.com"), Some("1.0"), None)),
            Some(InvalidNamespace)
        );
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("1.0"), Some((1, 0)));
        assert_eq!(parse_version("01.010"), Some((1, 10)));
        assert_eq!(parse_version("1."), None);
        assert_eq!(parse_version("+1.0"), None);
    }

    #[test]
    fn languages() {
        assert!(acceptable_lang("en"));
        assert!(acceptable_lang("zh-Hant-TW"));
        assert!(!acceptable_lang(""));
        assert!(!acceptable_lang("en'><x"));
    }
}
