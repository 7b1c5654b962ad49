//! The reading side of an authenticated stream, shared by client sessions
//! (`crate::session`), external components (`crate::component`) and
//! inbound server streams (`crate::s2s::inbound`): read,
//! decode, and hand each element to the stream's handler in order, each
//! after a token of its rate limit, until the stream is to end (the peer
//! closed it, the connection broke, the input broke the stream, the node
//! shuts down, or something else closed it). Before authentication, the
//! components and server streams read with [`next_event`] and end a refused
//! stream with [`refuse`].

use std::future::Future;

use starling_xmpp::{Element, StreamError, StreamErrorCondition, StreamEvent};
use tokio::time::Instant;

use crate::framing::{Framing, Inbound, Outgoing};
use crate::outbound::ConnectionHandle;
use crate::shared::Shared;
use crate::transport::tcp::ByteStream;
use crate::transport::{Received, Transport, TransportReader};

/// Whether the reader goes on.
pub(crate) enum Flow {
    Continue,
    Stop,
}

/// What an authenticated stream does with what its peer sends.
pub(crate) trait StreamHandler: Send {
    /// The stream's connection.
    fn handle(&self) -> &ConnectionHandle;

    /// Wait until the next element may be handled (the rate limit).
    fn throttle(&mut self) -> impl Future<Output = Flow> + Send;

    /// One element read from the peer (a stanza or a nonza).
    fn element(&mut self, element: Element) -> impl Future<Output = Flow> + Send;

    /// The peer closed the stream (`</stream:stream>`, RFC 6120 section 4.4).
    fn closed_by_peer(&mut self) {}

    /// End the stream with `error`.
    fn close_with(&self, error: StreamError) {
        tracing::debug!(conn = self.handle().conn, error = %error, "closing stream with an error");
        self.handle().close(Some(error));
    }
}

/// Handle every complete event the parser holds.
pub(crate) async fn process_events<H: StreamHandler>(stream: &mut H, parser: &mut Inbound) -> Flow {
    loop {
        if stream.handle().is_closing() {
            return Flow::Stop;
        }
        let event = match parser.next_event() {
            Ok(Some(event)) => event,
            Ok(None) => return Flow::Continue,
            Err(error) => {
                stream.close_with(error.0);
                return Flow::Stop;
            }
        };
        match event {
            StreamEvent::Element(element) => {
                if let Flow::Stop = stream.throttle().await {
                    return Flow::Stop;
                }
                if let Flow::Stop = stream.element(element).await {
                    return Flow::Stop;
                }
            }
            StreamEvent::Close => {
                // Section 4.4: answer with our closing tag.
                stream.closed_by_peer();
                stream.handle().close(None);
                return Flow::Stop;
            }
            StreamEvent::Open(_) => {
                // No restart is expected once the stream is authenticated.
                stream.close_with(StreamError::with_text(
                    StreamErrorCondition::InvalidXml,
                    "unexpected stream header",
                ));
                return Flow::Stop;
            }
        }
    }
}

/// Read and handle the stream until it is to end.
pub(crate) async fn read_until_end<H: StreamHandler, R: TransportReader>(
    shared: &Shared,
    stream: &mut H,
    reader: &mut R,
    parser: &mut Inbound,
) {
    loop {
        if let Flow::Stop = process_events(stream, parser).await {
            return;
        }
        tokio::select! {
            _ = stream.handle().reading_stopped() => return,
            _ = shared.shutdown.cancelled() => {
                stream.handle().close(Some(StreamError::new(StreamErrorCondition::SystemShutdown)));
                return;
            }
            received = reader.receive(parser) => match received {
                Received::Lost => {
                    tracing::debug!(conn = stream.handle().conn, "connection lost");
                    stream.handle().close(None);
                    return;
                }
                Received::Fed => {}
                Received::Invalid(error) => {
                    // Events before the error are still processed, in order.
                    if let Flow::Continue = process_events(stream, parser).await {
                        stream.close_with(error.0);
                    }
                    return;
                }
            },
        }
    }
}

/// Why reading stopped before an event came.
pub(crate) enum Interrupted {
    /// The connection is gone, or the server is shutting down.
    Gone,
    /// The handshake deadline passed.
    Timeout,
    /// The input broke the stream.
    Invalid(StreamError),
}

/// The next stream event before authentication (a component's handshake,
/// a server stream's negotiation), reading until one is complete, within
/// the pre-authentication `deadline`.
pub(crate) async fn next_event(
    shared: &Shared,
    stream: &mut ByteStream,
    parser: &mut Inbound,
    deadline: Instant,
) -> Result<StreamEvent, Interrupted> {
    loop {
        match parser.next_event() {
            Ok(Some(event)) => return Ok(event),
            Ok(None) => {}
            Err(error) => return Err(Interrupted::Invalid(error.0)),
        }
        tokio::select! {
            received = stream.receive(parser) => match received {
                Received::Fed => {}
                Received::Lost => return Err(Interrupted::Gone),
                Received::Invalid(error) => {
                    // Events decoded before the error come first.
                    if let Ok(Some(event)) = parser.next_event() {
                        return Ok(event);
                    }
                    return Err(Interrupted::Invalid(error.0));
                }
            },
            _ = tokio::time::sleep_until(deadline) => return Err(Interrupted::Timeout),
            _ = shared.shutdown.cancelled() => return Err(Interrupted::Gone),
        }
    }
}

/// Write what is left to say and close the connection: `header` first when
/// the component has not had ours yet (RFC 6120 section 4.9.1.2).
pub(crate) async fn refuse(
    shared: &Shared,
    stream: &mut ByteStream,
    header: Option<String>,
    error: StreamError,
) {
    shared.metrics.stream_error(error.condition.as_str());
    let mut out = Outgoing::new(Framing::Stream);
    if let Some(header) = header {
        out.nonza(&header);
    }
    out.stream_error(&error);
    out.close();
    let _ = tokio::time::timeout(crate::outbound::CLOSE_WRITE_TIMEOUT, async {
        stream.send(&out).await?;
        Transport::shutdown(stream).await
    })
    .await;
}

/// A stanza of a server or component stream (content namespace
/// `namespace`), taken into the server's own namespace (`jabber:client`)
/// for routing, with its kind. RFC 6120 section 4.9.3.25: anything but
/// message, presence and iq in the stream's content namespace ends the
/// stream with `<unsupported-stanza-type/>`.
pub(crate) fn stream_stanza(
    mut element: Element,
    namespace: &str,
) -> Result<(starling_xmpp::StanzaKind, Element), StreamError> {
    let not_a_stanza = |element: &Element| {
        StreamError::with_text(
            StreamErrorCondition::UnsupportedStanzaType,
            format!("<{}/> is not a stanza", element.name()),
        )
    };
    if element.namespace() != namespace {
        return Err(not_a_stanza(&element));
    }
    element.set_namespace_deep(starling_xmpp::ns::CLIENT);
    match starling_xmpp::StanzaKind::of(&element) {
        Some(kind) => Ok((kind, element)),
        None => Err(not_a_stanza(&element)),
    }
}

/// The typed checks every server-side stanza gets before routing (RFC 6120
/// section 8.2.3, RFC 6121 section 4.7): a message as it is, a presence or
/// an IQ through its typed form; a broken one comes back with its error.
pub(crate) fn checked_stanza(
    kind: starling_xmpp::StanzaKind,
    element: Element,
) -> Result<Element, Box<starling_xmpp::InvalidStanza>> {
    use starling_xmpp::{Iq, Presence, StanzaKind};
    match kind {
        StanzaKind::Message => Ok(element),
        StanzaKind::Presence => Presence::try_from_element(element).map(Presence::into_element),
        StanzaKind::Iq => Iq::try_from_element(element).map(Iq::into_element),
    }
}
