//! The stream under negotiation: its transport and decoder, what it has said
//! so far (our header, the stream id and language), how it writes, and how
//! it ends (RFC 6120 section 4.9). Every negotiation step works on it.

use std::net::SocketAddr;
use std::sync::Arc;

use starling_api::ConnId;
use starling_jid::Jid;
use starling_sasl::ChannelBindings;
use starling_xmpp::StreamHeader;
use starling_xmpp::{stanza, Element, StanzaError, StreamError, StreamErrorCondition, StreamEvent};

use super::header::{acceptable_lang, check_stream_header};
use crate::framing::{Framing, Inbound, Outgoing};
use crate::outbound::CLOSE_WRITE_TIMEOUT;
use crate::shared::Shared;
use crate::transport::{Received, Transport};
use crate::xml::random_id;

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

pub(crate) fn stream_error(condition: StreamErrorCondition, text: &str) -> StreamEnd {
    StreamEnd::Error(StreamError::with_text(condition, text))
}

/// A stream being negotiated.
pub(crate) struct NegotiatingStream<T> {
    pub shared: Arc<Shared>,
    pub conn: ConnId,
    pub peer: SocketAddr,
    /// Taken while STARTTLS upgrades it, and by the bind.
    pub transport: Option<T>,
    /// How the transport frames the stream (fixed for the connection).
    pub framing: Framing,
    pub parser: Inbound,
    /// Our response header was sent for the current stream.
    header_sent: bool,
    stream_id: String,
    lang: String,
    /// The stream's `xml:lang` when the client declared one (RFC 6120 section 4.7.4).
    pub client_lang: Option<String>,
    reply_to: Option<String>,
}

impl<T: Transport> NegotiatingStream<T> {
    pub fn new(shared: Arc<Shared>, conn: ConnId, peer: SocketAddr, transport: T) -> Self {
        let framing = transport.framing();
        NegotiatingStream {
            parser: Inbound::new(framing, shared.parser_limits),
            shared,
            conn,
            peer,
            transport: Some(transport),
            framing,
            header_sent: false,
            stream_id: random_id(),
            lang: "en".to_string(),
            client_lang: None,
            reply_to: None,
        }
    }

    pub fn is_tls(&self) -> bool {
        self.transport.as_ref().is_some_and(T::is_tls)
    }

    /// The channel binding data of the stream (RFC 5056): its TLS session's
    /// exporter and the end-point hash of the certificate this node presents,
    /// when the TLS session ends here; none otherwise.
    pub fn channel_bindings(&self) -> ChannelBindings {
        match self.transport.as_ref().and_then(T::tls_channel) {
            Some(tls) => {
                ChannelBindings::new(tls.exporter, self.shared.tls_server_end_point.clone())
            }
            None => ChannelBindings::none(),
        }
    }

    /// Whether STARTTLS can be negotiated on the transport now.
    pub fn can_start_tls(&self) -> bool {
        self.transport.as_ref().is_some_and(T::can_start_tls)
    }

    /// Whether `require_tls` applies: to TCP streams. A WebSocket has no
    /// STARTTLS (RFC 7395 section 3.1: TLS belongs to the WebSocket layer, here
    /// a TLS-terminating proxy); it gets what a plaintext TCP stream gets with
    /// TLS optional: SCRAM only, no PLAIN, no in-band registration.
    pub fn tls_required(&self) -> bool {
        self.shared.require_tls && self.framing == Framing::Stream
    }

    /// A new stream header from the client: remember what it says (a fresh
    /// stream id, its language, whom to answer) and check it.
    pub fn open(&mut self, header: &StreamHeader) -> Result<(), StreamError> {
        self.stream_id = random_id();
        self.client_lang = header.lang.clone().filter(|lang| acceptable_lang(lang));
        self.lang = self.client_lang.clone().unwrap_or_else(|| "en".to_string());
        // Section 4.7.1: 'to' of the response is the 'from' of the initial header, if valid.
        self.reply_to = header
            .from
            .as_deref()
            .and_then(|from| from.parse::<Jid>().ok())
            .map(|jid| jid.to_string());
        check_stream_header(header, &self.shared.domain)
    }

    /// Our response header and the features of this stage
    /// (`<stream:features>` as `features::FeatureSet` writes it).
    pub async fn send_header(&mut self, features_xml: &str) -> Result<(), StreamEnd> {
        let mut out = Outgoing::new(self.framing);
        out.header(
            &self.stream_id,
            &self.shared.domain,
            self.reply_to.as_deref(),
            &self.lang,
        );
        out.features(features_xml);
        self.header_sent = true;
        self.send(&out).await
    }

    /// New `<stream:features>` without a new header: after a SASL2 success
    /// (XEP-0388 section "Success", no stream restart).
    pub async fn send_features(&mut self, features_xml: &str) -> Result<(), StreamEnd> {
        let mut out = Outgoing::new(self.framing);
        out.features(features_xml);
        self.send(&out).await
    }

    /// The stream restarts (after STARTTLS, section 5.4.3.3, and SASL success,
    /// section 6.4.6): the client sends a new header, and what it sent before
    /// it is discarded with the parser.
    pub fn restart(&mut self) {
        self.parser.reset();
        self.header_sent = false;
    }

    /// The next complete event, `Ok(None)` when more input is needed.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, StreamEnd> {
        self.parser
            .next_event()
            .map_err(|error| StreamEnd::Error(error.0))
    }

    pub async fn read_more(&mut self) -> Result<(), StreamEnd> {
        let transport = self.transport.as_mut().ok_or(StreamEnd::ConnectionLost)?;
        let received = transport.receive(&mut self.parser).await;
        match received {
            Received::Fed => Ok(()),
            Received::Invalid(error) => Err(StreamEnd::Error(error.0)),
            Received::Lost => Err(StreamEnd::ConnectionLost),
        }
    }

    pub async fn send(&mut self, out: &Outgoing) -> Result<(), StreamEnd> {
        self.transport
            .as_mut()
            .ok_or(StreamEnd::ConnectionLost)?
            .send(out)
            .await
            .map_err(|_| StreamEnd::ConnectionLost)
    }

    pub async fn send_nonza(&mut self, xml: &str) -> Result<(), StreamEnd> {
        let mut out = Outgoing::new(self.framing);
        out.nonza(xml);
        self.send(&out).await
    }

    pub async fn send_stanza(&mut self, stanza: &Element) -> Result<(), StreamEnd> {
        let mut out = Outgoing::new(self.framing);
        out.stanza(stanza);
        self.send(&out).await
    }

    pub async fn reply_error(
        &mut self,
        request: &Element,
        error: StanzaError,
    ) -> Result<(), StreamEnd> {
        match stanza::error_reply(request, &error) {
            Some(reply) => self.send_stanza(&reply).await,
            None => Ok(()),
        }
    }

    /// The transport and the decoder, for the bound session; `None` when the
    /// connection is gone.
    pub fn take_bound(&mut self) -> Option<(T, Inbound)> {
        let transport = self.transport.take()?;
        let parser = std::mem::replace(
            &mut self.parser,
            Inbound::new(self.framing, self.shared.parser_limits),
        );
        Some((transport, parser))
    }

    /// Write what ends the stream (our header first if it was not sent,
    /// section 4.9.1.2), then close the connection.
    pub async fn finish(&mut self, end: StreamEnd) {
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
}
