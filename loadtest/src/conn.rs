//! One client connection: TCP (plaintext, STARTTLS or direct TLS) or XMPP
//! over WebSocket (RFC 7395, `ws://` or `wss://`), the stream (RFC 6120
//! section 4), SASL (section 6), resource binding (section 7), roster get and
//! initial presence (RFC 6121), and XEP-0077 in-band registration.
//!
//! Over WebSocket the stream is framed (RFC 7395 section 3.3): `<open/>`
//! instead of the stream header, one complete element per text message,
//! `<close/>` at the end. The session turns each incoming message back into
//! stream-shaped bytes ([`xml::append_framed_message`]) so that one scanner
//! and one session loop serve both transports, and splits what it writes
//! into one message per element, each declaring its namespace
//! ([`xml::websocket_messages`]).

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use futures::{SinkExt, StreamExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Bytes, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::sasl::{self, Mechanism, SaltedPasswordCache, ScramClient};
use crate::sm::{SmMode, SmStream, NS_SM};
use crate::stats::ErrorKind;
use crate::xml::{self, Event, Scanner};

const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plaintext TCP (the server must allow it).
    None,
    /// STARTTLS (RFC 6120 section 5), certificate not verified.
    Starttls,
    /// TLS from the first byte (XEP-0368 style), certificate not verified.
    Direct,
}

/// What carries the XML stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportMode {
    /// The XML stream over TCP (RFC 6120), the c2s port.
    Tcp,
    /// XMPP over WebSocket (RFC 7395) on the server's HTTP port, subprotocol
    /// `xmpp`; with `--tls direct` over TLS (`wss://`).
    Websocket,
}

/// The WebSocket subprotocol of RFC 7395 section 3.1.
const WS_SUBPROTOCOL: &str = "xmpp";
/// tungstenite's read buffer per connection (its default is 128 KiB, which
/// 20,000 idle sessions cannot afford; a larger message still fits, the
/// buffer grows for it).
const WS_READ_BUFFER: usize = 4096;
/// Frames are collected up to this many bytes before a write: one batch of
/// stanzas becomes a few writes, not one per stanza.
const WS_WRITE_BUFFER: usize = 8192;

/// Where and how to connect; shared by every task.
pub struct Target {
    /// The server addresses (c2s, or the HTTP port for WebSocket); connection
    /// *i* goes to `servers[i mod k]` ([`crate::assign::server_index`]).
    pub servers: Vec<SocketAddr>,
    pub domain: String,
    pub tls: TlsMode,
    pub transport: TransportMode,
    /// The WebSocket endpoint's path (`/xmpp-websocket`).
    pub ws_path: String,
    pub mechanisms: Vec<Mechanism>,
    pub resource: String,
    pub roster_get: bool,
    /// XEP-0198 stream management to enable after bind (`--sm`).
    pub sm: SmMode,
    pub source_addrs: Vec<IpAddr>,
    pub tls_connector: tokio_rustls::TlsConnector,
}

impl Target {
    /// The server connection (user) `connection_index` connects to.
    pub fn server_for(&self, connection_index: usize) -> SocketAddr {
        self.servers[crate::assign::server_index(connection_index, self.servers.len())]
    }
}

/// A login or registration failure, by kind.
#[derive(Debug, Clone)]
pub struct ConnError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ConnError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ConnError {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}: {}", self.kind.as_str(), self.message)
    }
}

fn io_error(error: std::io::Error) -> ConnError {
    ConnError::new(ErrorKind::Io, error.to_string())
}

/// TCP or TLS over TCP.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_read(context, buffer),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_read(context, buffer),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_write(context, data),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write(context, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_flush(context),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(context),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_shutdown(context),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(context),
        }
    }
}

/// A TLS client configuration that accepts any certificate: this is a load
/// tool for servers on loopback with self-signed certificates.
pub fn insecure_tls_connector() -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The connection under the XML stream: bytes (TCP, TLS) or WebSocket messages.
pub enum Link {
    Stream(Transport),
    WebSocket(Box<WebSocketStream<Transport>>),
}

/// An open stream: link, read buffer, scanner.
pub struct Session {
    pub link: Link,
    pub buffer: Vec<u8>,
    pub scanner: Scanner,
    pub full_jid: String,
    /// Roster items with `subscription='both'` in the login's roster result.
    pub roster_both: usize,
    /// XEP-0198 counters once `<enabled/>` was received.
    pub sm: Option<SmStream>,
    /// The resumption id of `<enabled id/>` (`--sm resume`).
    pub sm_id: Option<String>,
}

/// Read buffer growth step (and the initial capacity).
pub const READ_CHUNK: usize = 4096;

fn websocket_io_error(error: tungstenite::Error) -> std::io::Error {
    match error {
        tungstenite::Error::Io(error) => error,
        other => std::io::Error::other(other.to_string()),
    }
}

impl Session {
    fn new(link: Link) -> Self {
        // Over WebSocket tungstenite has the read buffer; ours only ever holds
        // whole messages and grows to the largest one.
        let capacity = match link {
            Link::Stream(_) => READ_CHUNK,
            Link::WebSocket(_) => 0,
        };
        Session {
            link,
            buffer: Vec::with_capacity(capacity),
            scanner: Scanner::new(),
            full_jid: String::new(),
            roster_both: 0,
            sm: None,
            sm_id: None,
        }
    }

    /// Is this stream framed for WebSocket (RFC 7395)?
    pub fn is_websocket(&self) -> bool {
        matches!(self.link, Link::WebSocket(_))
    }

    /// Read more bytes (over WebSocket: the next text message, in the shape
    /// of a TCP stream); `Ok(false)` at end of stream. Cancel-safe: it is
    /// raced against timers and phase changes.
    pub async fn fill(&mut self) -> std::io::Result<bool> {
        self.scanner.compact(&mut self.buffer);
        match &mut self.link {
            Link::Stream(transport) => {
                if self.buffer.capacity() - self.buffer.len() < READ_CHUNK / 2 {
                    self.buffer.reserve(READ_CHUNK);
                }
                let read = transport.read_buf(&mut self.buffer).await?;
                Ok(read > 0)
            }
            Link::WebSocket(socket) => loop {
                // Pings are answered by tungstenite itself; pongs and
                // control frames carry nothing for the stream.
                match socket.next().await {
                    Some(Ok(Message::Text(text))) => {
                        xml::append_framed_message(&mut self.buffer, text.as_bytes());
                        return Ok(true);
                    }
                    Some(Ok(Message::Binary(_))) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "binary WebSocket message (RFC 7395 uses text messages)",
                        ))
                    }
                    Some(Ok(Message::Close(_))) | None => return Ok(false),
                    Some(Ok(_)) => continue,
                    Some(Err(
                        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                    )) => return Ok(false),
                    Some(Err(error)) => return Err(websocket_io_error(error)),
                }
            },
        }
    }

    /// The next top-level element (its range in `buffer`), skipping the stream header.
    pub async fn next_element(&mut self) -> Result<std::ops::Range<usize>, ConnError> {
        loop {
            match self.scanner.next(&self.buffer) {
                Some(Event::Element(range)) => {
                    if xml::name(&self.buffer[range.clone()]) == b"stream:error" {
                        let text = String::from_utf8_lossy(&self.buffer[range]).into_owned();
                        return Err(ConnError::new(ErrorKind::StreamError, text));
                    }
                    return Ok(range);
                }
                Some(Event::StreamHeader(_)) => continue,
                Some(Event::StreamEnd) => {
                    return Err(ConnError::new(
                        ErrorKind::StreamClosed,
                        "server closed the stream",
                    ))
                }
                None => {
                    if !self.fill().await.map_err(io_error)? {
                        return Err(ConnError::new(
                            ErrorKind::StreamClosed,
                            "connection closed by the server",
                        ));
                    }
                }
            }
        }
    }

    /// Write complete elements (over WebSocket: one text message each, RFC
    /// 7395 section 3.3.3) and flush.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), ConnError> {
        match &mut self.link {
            Link::Stream(transport) => {
                transport.write_all(data).await.map_err(io_error)?;
                transport.flush().await.map_err(io_error)
            }
            Link::WebSocket(socket) => {
                let Some((bytes, messages)) = xml::websocket_messages(data) else {
                    return Err(ConnError::new(
                        ErrorKind::Protocol,
                        "an incomplete element cannot be sent over WebSocket",
                    ));
                };
                // One buffer for the whole batch; each message is a slice of it.
                let bytes = Bytes::from(bytes);
                for range in messages {
                    let text = Utf8Bytes::try_from(bytes.slice(range)).map_err(|_| {
                        ConnError::new(ErrorKind::Protocol, "a stanza is not UTF-8")
                    })?;
                    socket
                        .feed(Message::Text(text))
                        .await
                        .map_err(|error| io_error(websocket_io_error(error)))?;
                }
                socket
                    .flush()
                    .await
                    .map_err(|error| io_error(websocket_io_error(error)))
            }
        }
    }

    async fn open_stream(&mut self, domain: &str) -> Result<std::ops::Range<usize>, ConnError> {
        let header = if self.is_websocket() {
            format!(
                "<open xmlns='{}' to='{}' version='1.0'/>",
                xml::NS_FRAMING,
                xml::escape(domain)
            )
        } else {
            format!(
                "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{}' version='1.0'>",
                xml::escape(domain)
            )
        };
        self.send(header.as_bytes()).await?;
        let features = self.next_element().await?;
        if xml::local_name(&self.buffer[features.clone()]) != b"features" {
            return Err(ConnError::new(
                ErrorKind::Protocol,
                "expected stream features",
            ));
        }
        Ok(features)
    }

    /// Wait for the IQ answer with this id, answering server requests meanwhile.
    async fn iq_result(
        &mut self,
        id: &str,
        error_kind: ErrorKind,
    ) -> Result<std::ops::Range<usize>, ConnError> {
        loop {
            let range = self.next_element().await?;
            let element = &self.buffer[range.clone()];
            if xml::name(element) != b"iq" || xml::attribute(element, "id") != Some(id.as_bytes()) {
                continue;
            }
            return match xml::attribute(element, "type") {
                Some(b"result") => Ok(range),
                _ => Err(ConnError::new(
                    error_kind,
                    String::from_utf8_lossy(element).into_owned(),
                )),
            };
        }
    }

    /// Close the stream politely (`</stream:stream>`, or `<close/>` and a
    /// WebSocket close frame); errors do not matter any more.
    pub async fn close(mut self) {
        if let Some(sm) = self.sm.as_mut() {
            // XEP-0198 section 4 allows an unrequested <a/>: without it the
            // server treats what we got since the last <r/> as undelivered on
            // the close (RFC 6121 section 8.5: offline storage), and the next
            // run would receive it again.
            let mut ack = Vec::with_capacity(48);
            sm.answer(&mut ack);
            let _ = self.send(&ack).await;
        }
        if self.is_websocket() {
            let close = format!("<close xmlns='{}'/>", xml::NS_FRAMING);
            let _ = self.send(close.as_bytes()).await;
        } else {
            let _ = self.send(b"</stream:stream>").await;
        }
        match &mut self.link {
            Link::Stream(transport) => {
                let _ = transport.shutdown().await;
            }
            Link::WebSocket(socket) => {
                let _ = WebSocketStream::close(socket, None).await;
            }
        }
    }
}

/// TCP connect (from a chosen source address when given), then direct TLS if
/// asked, then the WebSocket handshake when the transport is WebSocket.
pub async fn connect(target: &Target, connection_index: usize) -> Result<Session, ConnError> {
    let server = target.server_for(connection_index);
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|error| ConnError::new(ErrorKind::Connect, error.to_string()))?;
    if !target.source_addrs.is_empty() {
        let source = target.source_addrs[connection_index % target.source_addrs.len()];
        socket.bind(SocketAddr::new(source, 0)).map_err(|error| {
            ConnError::new(ErrorKind::Connect, format!("bind {source}: {error}"))
        })?;
    }
    let stream = socket
        .connect(server)
        .await
        .map_err(|error| ConnError::new(ErrorKind::Connect, error.to_string()))?;
    let _ = stream.set_nodelay(true);
    let transport = if target.tls == TlsMode::Direct {
        Transport::Tls(Box::new(tls_handshake(target, stream).await?))
    } else {
        Transport::Plain(stream)
    };
    if target.transport == TransportMode::Websocket {
        let socket = websocket_handshake(target, server, transport).await?;
        return Ok(Session::new(Link::WebSocket(Box::new(socket))));
    }
    Ok(Session::new(Link::Stream(transport)))
}

/// The HTTP upgrade to `ws://SERVER/PATH` (`wss://` over TLS) with the
/// `xmpp` subprotocol, which the server must select (RFC 7395 section 3.1).
async fn websocket_handshake(
    target: &Target,
    server: SocketAddr,
    transport: Transport,
) -> Result<WebSocketStream<Transport>, ConnError> {
    let scheme = if target.tls == TlsMode::Direct {
        "wss"
    } else {
        "ws"
    };
    let url = format!("{scheme}://{server}{}", target.ws_path);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|error| ConnError::new(ErrorKind::WebSocket, format!("{url}: {error}")))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(WS_SUBPROTOCOL),
    );
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER);
    let (socket, response) =
        tokio_tungstenite::client_async_with_config(request, transport, Some(config))
            .await
            .map_err(|error| ConnError::new(ErrorKind::WebSocket, format!("{url}: {error}")))?;
    let selected = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|value| value.to_str().ok());
    if selected != Some(WS_SUBPROTOCOL) {
        return Err(ConnError::new(
            ErrorKind::WebSocket,
            format!("{url}: the server did not select the xmpp subprotocol"),
        ));
    }
    Ok(socket)
}

async fn tls_handshake(
    target: &Target,
    stream: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnError> {
    let name = ServerName::try_from(target.domain.clone())
        .map_err(|error| ConnError::new(ErrorKind::Tls, error.to_string()))?;
    target
        .tls_connector
        .connect(name, stream)
        .await
        .map_err(|error| ConnError::new(ErrorKind::Tls, error.to_string()))
}

/// Open the stream and do STARTTLS when configured; returns the session and
/// the range of the (post-TLS) features.
async fn open_secured(
    target: &Target,
    mut session: Session,
) -> Result<(Session, std::ops::Range<usize>), ConnError> {
    let features = session.open_stream(&target.domain).await?;
    if target.tls != TlsMode::Starttls {
        return Ok((session, features));
    }
    if xml::find_child(&session.buffer[features], "starttls").is_none() {
        return Err(ConnError::new(
            ErrorKind::Tls,
            "server does not offer STARTTLS",
        ));
    }
    session
        .send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await?;
    let answer = session.next_element().await?;
    if xml::name(&session.buffer[answer]) != b"proceed" {
        return Err(ConnError::new(ErrorKind::Tls, "STARTTLS refused"));
    }
    let Link::Stream(Transport::Plain(stream)) = session.link else {
        return Err(ConnError::new(
            ErrorKind::Tls,
            "STARTTLS needs a plaintext TCP stream",
        ));
    };
    let tls = tls_handshake(target, stream).await?;
    let mut session = Session::new(Link::Stream(Transport::Tls(Box::new(tls))));
    let features = session.open_stream(&target.domain).await?;
    Ok((session, features))
}

/// Everything a login needs to know about the account.
pub struct Credentials<'a> {
    pub username: &'a str,
    pub password: &'a str,
}

/// The full login: connect, TLS, SASL, bind, (session), roster get, initial presence.
pub async fn login(
    target: &Target,
    connection_index: usize,
    credentials: &Credentials<'_>,
    salted_cache: &mut Option<SaltedPasswordCache>,
) -> Result<Session, ConnError> {
    let session = connect(target, connection_index).await?;
    let (mut session, features) = open_secured(target, session).await?;

    let offered = xml::mechanisms(&session.buffer[features]);
    let Some(mechanism) = target.mechanisms.iter().copied().find(|mechanism| {
        offered
            .iter()
            .any(|name| name.eq_ignore_ascii_case(mechanism.as_str()))
    }) else {
        return Err(ConnError::new(
            ErrorKind::NoMechanism,
            format!("server offers {offered:?}"),
        ));
    };
    authenticate(&mut session, mechanism, credentials, salted_cache).await?;

    // Restart the stream after SASL success (RFC 6120 section 6.4.6).
    session.scanner.reset();
    session.buffer.clear();
    let features = session.open_stream(&target.domain).await?;
    let needs_session = {
        let features = &session.buffer[features.clone()];
        match xml::find_child(features, "session") {
            Some(at) => {
                let rest = &features[at..];
                let session_element_end = memchr::memmem::find(rest, b"</session>").unwrap_or(0);
                !(rest[..session_element_end]
                    .windows(9)
                    .any(|window| window == b"<optional"))
            }
            None => false,
        }
    };
    // XEP-0198 section 3: the server offers <sm/> after authentication.
    let sm_offered = {
        let features = &session.buffer[features];
        xml::find_child(features, "sm")
            .is_some_and(|at| xml::attribute(&features[at..], "xmlns") == Some(NS_SM.as_bytes()))
    };

    let bind = format!(
        "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{}</resource></bind></iq>",
        xml::escape(&target.resource)
    );
    session.send(bind.as_bytes()).await?;
    let result = session.iq_result("bind1", ErrorKind::Bind).await?;
    session.full_jid = xml::child_text(&session.buffer[result], "jid")
        .map(|jid| String::from_utf8_lossy(jid).into_owned())
        .unwrap_or_default();

    if needs_session {
        session.send(b"<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>").await?;
        session.iq_result("sess1", ErrorKind::Bind).await?;
    }
    if target.roster_get {
        session
            .send(b"<iq type='get' id='roster1'><query xmlns='jabber:iq:roster'/></iq>")
            .await?;
        let roster = session.iq_result("roster1", ErrorKind::Protocol).await?;
        let roster = &session.buffer[roster];
        session.roster_both = memchr::memmem::find_iter(roster, b"subscription='both'").count()
            + memchr::memmem::find_iter(roster, b"subscription=\"both\"").count();
    }
    if let Some(enable) = target.sm.enable_element() {
        if !sm_offered {
            return Err(ConnError::new(
                ErrorKind::Sm,
                "the server does not offer stream management (urn:xmpp:sm:3)",
            ));
        }
        enable_sm(&mut session, enable, target.sm).await?;
    }
    session.send(b"<presence/>").await?;
    if let Some(sm) = session.sm.as_mut() {
        sm.stanzas_sent(1);
    }
    Ok(session)
}

/// XEP-0198 section 3: `<enable/>`, then `<enabled/>` (with `id` and
/// `resume='true'` when resumption was asked for) or `<failed/>`. Nothing is
/// sent meanwhile, so the server counts from zero in both directions; a
/// stanza read before `<enabled/>` was written before counting started.
async fn enable_sm(session: &mut Session, enable: &[u8], mode: SmMode) -> Result<(), ConnError> {
    session.send(enable).await?;
    loop {
        let range = session.next_element().await?;
        let element = &session.buffer[range];
        match xml::name(element) {
            b"enabled" => {
                let resumable = matches!(
                    xml::attribute(element, "resume"),
                    Some(b"true") | Some(b"1")
                );
                let id = xml::attribute(element, "id");
                if mode == SmMode::Resume && !(resumable && id.is_some()) {
                    return Err(ConnError::new(
                        ErrorKind::Sm,
                        format!(
                            "resumption not granted: {}",
                            String::from_utf8_lossy(element)
                        ),
                    ));
                }
                session.sm_id = id.map(|id| String::from_utf8_lossy(id).into_owned());
                session.sm = Some(SmStream::default());
                return Ok(());
            }
            b"failed" => {
                return Err(ConnError::new(
                    ErrorKind::Sm,
                    String::from_utf8_lossy(element).into_owned(),
                ))
            }
            _ => continue,
        }
    }
}

async fn authenticate(
    session: &mut Session,
    mechanism: Mechanism,
    credentials: &Credentials<'_>,
    salted_cache: &mut Option<SaltedPasswordCache>,
) -> Result<(), ConnError> {
    let mut scram = None;
    let initial = match mechanism {
        Mechanism::Plain => {
            sasl::plain_initial_response(credentials.username, credentials.password)
        }
        _ => {
            let client = ScramClient::new(
                mechanism,
                credentials.username,
                credentials.password,
                &ScramClient::random_nonce(),
            );
            let first = client.client_first().into_bytes();
            scram = Some(client);
            first
        }
    };
    let auth = format!(
        "<auth xmlns='{NS_SASL}' mechanism='{}'>{}</auth>",
        mechanism.as_str(),
        BASE64.encode(initial)
    );
    session.send(auth.as_bytes()).await?;
    let mut server_final_seen = false;
    loop {
        let range = session.next_element().await?;
        let element = &session.buffer[range];
        let name = xml::local_name(element);
        if name == b"failure" {
            let element = String::from_utf8_lossy(element).into_owned();
            return Err(ConnError::new(ErrorKind::AuthFailed, element));
        }
        if name != b"challenge" && name != b"success" {
            continue;
        }
        let payload = BASE64
            .decode(
                xml::text(element)
                    .iter()
                    .copied()
                    .filter(|byte| !byte.is_ascii_whitespace())
                    .collect::<Vec<u8>>(),
            )
            .map_err(|_| ConnError::new(ErrorKind::AuthFailed, "undecodable SASL payload"))?;
        match name {
            b"challenge" => {
                let Some(client) = scram.as_mut() else {
                    return Err(ConnError::new(
                        ErrorKind::AuthFailed,
                        "unexpected challenge for PLAIN",
                    ));
                };
                if payload.starts_with(b"v=") || payload.starts_with(b"e=") {
                    client.verify_server_final(&payload).map_err(|error| {
                        ConnError::new(ErrorKind::AuthFailed, error.to_string())
                    })?;
                    server_final_seen = true;
                    session
                        .send(format!("<response xmlns='{NS_SASL}'/>").as_bytes())
                        .await?;
                    continue;
                }
                // PBKDF2 is the one expensive step of a login: keep it off the
                // runtime threads so that other sessions' I/O is not delayed.
                let mut owned_client = scram.take().expect("checked above");
                let mut cache = salted_cache.take();
                let (owned_client, cache, client_final) = tokio::task::spawn_blocking(move || {
                    let client_final = owned_client.client_final(&payload, &mut cache);
                    (owned_client, cache, client_final)
                })
                .await
                .map_err(|error| ConnError::new(ErrorKind::AuthFailed, error.to_string()))?;
                scram = Some(owned_client);
                *salted_cache = cache;
                let client_final = client_final
                    .map_err(|error| ConnError::new(ErrorKind::AuthFailed, error.to_string()))?;
                let response = format!(
                    "<response xmlns='{NS_SASL}'>{}</response>",
                    BASE64.encode(client_final)
                );
                session.send(response.as_bytes()).await?;
            }
            b"success" => {
                if let Some(client) = scram.as_ref() {
                    if !server_final_seen {
                        client.verify_server_final(&payload).map_err(|error| {
                            ConnError::new(ErrorKind::AuthFailed, error.to_string())
                        })?;
                    }
                }
                return Ok(());
            }
            _ => continue,
        }
    }
}

/// XEP-0077 in-band registration. An account that exists already counts as registered.
pub async fn register(
    target: &Target,
    connection_index: usize,
    credentials: &Credentials<'_>,
) -> Result<(), ConnError> {
    let session = connect(target, connection_index).await?;
    let (mut session, _features) = open_secured(target, session).await?;
    let request = format!(
        "<iq type='set' id='reg1'><query xmlns='jabber:iq:register'><username>{}</username><password>{}</password></query></iq>",
        xml::escape(credentials.username),
        xml::escape(credentials.password)
    );
    session.send(request.as_bytes()).await?;
    let outcome = loop {
        let range = session.next_element().await?;
        let element = &session.buffer[range];
        if xml::name(element) != b"iq" || xml::attribute(element, "id") != Some(b"reg1") {
            continue;
        }
        if xml::attribute(element, "type") == Some(b"result")
            || xml::find_child(element, "conflict").is_some()
        {
            break Ok(());
        }
        break Err(ConnError::new(
            ErrorKind::Register,
            String::from_utf8_lossy(element).into_owned(),
        ));
    };
    session.close().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

    /// The server side of RFC 7395 section 3.1: the client must offer `xmpp`,
    /// the answer selects it. (The error type is tungstenite's callback
    /// contract, an HTTP response.)
    #[allow(clippy::result_large_err, reason = "tungstenite's callback contract")]
    fn select_xmpp(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
        let offered = request
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        assert_eq!(offered, "xmpp");
        response
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("xmpp"));
        Ok(response)
    }

    /// A scripted RFC 7395 server: it checks that every message is one
    /// element declaring its namespace, and answers a PLAIN login.
    async fn scripted_server(listener: TcpListener) -> Vec<String> {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut socket = tokio_tungstenite::accept_hdr_async(stream, select_xmpp)
            .await
            .expect("handshake");
        let open = "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' id='s' from='localhost' version='1.0'/>";
        let mut received = Vec::new();
        let mut streams = 0;
        while let Some(Ok(message)) = socket.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let text = text.as_str().to_string();
            let (ranges, leftover) = xml::split_elements(text.as_bytes());
            assert!(ranges.len() == 1 && !leftover, "one element: {text}");
            assert!(
                xml::attribute(text.as_bytes(), "xmlns").is_some(),
                "namespace: {text}"
            );
            received.push(text.clone());
            let name = xml::name(text.as_bytes()).to_vec();
            let replies: Vec<String> = match name.as_slice() {
                b"open" => {
                    streams += 1;
                    let features = if streams == 1 {
                        "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>"
                    } else {
                        "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
                    };
                    vec![open.into(), features.into()]
                }
                b"auth" => vec!["<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".into()],
                b"iq" if text.contains("id='bind1'") => vec![
                    "<iq xmlns='jabber:client' type='result' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@localhost/load</jid></bind></iq>".into(),
                ],
                b"iq" => vec![
                    "<iq xmlns='jabber:client' type='result' id='roster1'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' subscription='both'/></query></iq>".into(),
                ],
                b"presence" => vec![
                    "<message xmlns='jabber:client' from='bob@localhost/x' type='chat'><body>hi</body></message>".into(),
                    "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>".into(),
                ],
                _ => Vec::new(),
            };
            for reply in replies {
                socket.send(Message::text(reply)).await.expect("send");
            }
            if name == b"close" {
                break;
            }
        }
        received
    }

    /// The whole login over WebSocket against the scripted server, then a
    /// stanza and the server's `<close/>` read through the session.
    #[tokio::test]
    async fn login_over_websocket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(scripted_server(listener));
        let target = Target {
            servers: vec![address],
            domain: "localhost".into(),
            tls: TlsMode::None,
            transport: TransportMode::Websocket,
            ws_path: "/xmpp-websocket".into(),
            mechanisms: vec![Mechanism::Plain],
            resource: "load".into(),
            roster_get: true,
            sm: SmMode::Off,
            source_addrs: Vec::new(),
            tls_connector: insecure_tls_connector(),
        };
        let credentials = Credentials {
            username: "alice",
            password: "secret",
        };
        let mut session = login(&target, 0, &credentials, &mut None)
            .await
            .expect("login");
        assert!(session.is_websocket());
        assert_eq!(session.full_jid, "alice@localhost/load");
        assert_eq!(session.roster_both, 1);
        let message = session.next_element().await.expect("message");
        assert_eq!(
            xml::child_text(&session.buffer[message], "body"),
            Some(&b"hi"[..])
        );
        let end = session.next_element().await.expect_err("closed");
        assert_eq!(end.kind, ErrorKind::StreamClosed);
        session.close().await;
        let received = server.await.expect("server");
        let names: Vec<String> = received
            .iter()
            .map(|text| String::from_utf8_lossy(xml::name(text.as_bytes())).into_owned())
            .collect();
        assert_eq!(
            names,
            ["open", "auth", "open", "iq", "iq", "presence", "close"]
        );
        assert!(received[0].contains("to='localhost'"));
        assert!(received[5].starts_with("<presence xmlns='jabber:client'"));
    }
}
