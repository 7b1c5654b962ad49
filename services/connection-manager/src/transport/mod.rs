//! The transport under an XML stream, behind one trait. Negotiation and the
//! session read events and write [`Outgoing`] units through [`Transport`]
//! without knowing which one it is; a bound session splits it into a
//! [`TransportReader`] and a [`TransportWriter`] for its two tasks.
//!
//! - [`tcp`]: a byte stream, plain TCP until STARTTLS (RFC 6120 section
//!   5.4.3.3), TLS after it or from the first byte (XEP-0368); [`tls`] holds
//!   the node's certificate and TLS configurations.
//! - [`websocket`]: a WebSocket on the HTTP listener (RFC 7395).
//! - [`bosh`]: a BOSH virtual connection on the HTTP listener (XEP-0206).
//!
//! Calls are generic over the transport (no boxed futures on the path of
//! every read and write).

pub(crate) mod bosh;
pub(crate) mod tcp;
pub(crate) mod tls;
pub(crate) mod websocket;

use std::future::Future;
use std::io;

use starling_xmpp::ParseError;
use tokio_rustls::TlsAcceptor;

use crate::framing::{Framing, Inbound, Outgoing};

/// What a TLS session terminated here gives for channel binding. The HTTPS
/// listener puts it in the extensions of each request of a TLS connection
/// (so that a `wss://` WebSocket can be bound to its session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsChannel {
    /// The `tls-exporter` data (RFC 9266), for TLS 1.3 only.
    pub(crate) exporter: Option<Vec<u8>>,
}

impl TlsChannel {
    /// The channel binding data of a server-side rustls session.
    pub fn of(connection: &rustls::ServerConnection) -> Self {
        TlsChannel {
            exporter: tls_exporter(connection),
        }
    }
}

/// `tls-exporter` (RFC 9266 section 2): the TLS exporter with the label
/// `EXPORTER-Channel-Binding`, no context (for TLS 1.3 the same as an empty
/// one, RFC 8446 section 7.5), 32 bytes. Only for TLS 1.3: in TLS 1.2 it is
/// safe only with the extended master secret (RFC 9266 section 3), and this
/// server does not require that of its TLS 1.2 clients.
pub(crate) fn tls_exporter(connection: &rustls::ServerConnection) -> Option<Vec<u8>> {
    if connection.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return None;
    }
    connection
        .export_keying_material(
            vec![0u8; starling_sasl::TLS_EXPORTER_LENGTH],
            starling_sasl::TLS_EXPORTER_LABEL,
            None,
        )
        .ok()
}

/// What one read brought.
#[derive(Debug)]
pub(crate) enum Received {
    /// Input went to the decoder; its events are ready.
    Fed,
    /// The input broke the stream: this stream error ends it (after the
    /// events decoded before it).
    Invalid(ParseError),
    /// The connection is gone.
    Lost,
}

/// What a stream runs over, whole: during negotiation.
pub(crate) trait Transport: Send + Sized + 'static {
    type Reader: TransportReader;
    type Writer: TransportWriter;

    /// How the stream is framed on this transport (fixed for the connection).
    fn framing(&self) -> Framing;

    /// Whether TLS protects the stream here (a TLS-terminating proxy in front
    /// of the HTTP listener does not count).
    fn is_tls(&self) -> bool;

    /// The TLS session this server terminated under the stream, for channel
    /// binding (RFC 5056); `None` without one (plain TCP, a WebSocket behind
    /// a proxy, BOSH).
    fn tls_channel(&self) -> Option<TlsChannel> {
        None
    }

    /// Whether STARTTLS can upgrade this transport now: only a plain TCP
    /// stream can (a WebSocket or BOSH leaves TLS to the HTTP layer, RFC 7395
    /// section 3.1).
    fn can_start_tls(&self) -> bool {
        false
    }

    /// The TLS handshake on this connection after `<proceed/>` (RFC 6120
    /// section 5.4.3.3).
    fn start_tls(self, acceptor: &TlsAcceptor) -> impl Future<Output = io::Result<Self>> + Send {
        let _ = acceptor;
        std::future::ready(Err(io::Error::from(io::ErrorKind::Unsupported)))
    }

    /// Read once and feed the decoder. Cancel-safe.
    fn receive(&mut self, inbound: &mut Inbound) -> impl Future<Output = Received> + Send;

    fn send(&mut self, out: &Outgoing) -> impl Future<Output = io::Result<()>> + Send;

    /// End the connection (a TCP FIN, a WebSocket close frame).
    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>> + Send;

    /// Separate halves for the session's reader and writer tasks.
    fn split(self) -> (Self::Reader, Self::Writer);
}

/// The reading half of a bound session's transport.
pub(crate) trait TransportReader: Send + 'static {
    /// Read once and feed the decoder. Cancel-safe.
    fn receive(&mut self, inbound: &mut Inbound) -> impl Future<Output = Received> + Send;
}

/// The writing half of a bound session's transport.
pub(crate) trait TransportWriter: Send + 'static {
    fn framing(&self) -> Framing;

    fn send(&mut self, out: &Outgoing) -> impl Future<Output = io::Result<()>> + Send;

    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}
