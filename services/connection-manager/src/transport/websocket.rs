//! The WebSocket transport (RFC 7395) of the HTTP listeners: one complete
//! element per text message ([`Framing::WebSocket`]). Plain HTTP, or HTTPS
//! on `listen.https` where the TLS session is ours and can be bound to
//! (RFC 5056); a TLS-terminating proxy in front is the deployment's business.

use std::io;

use axum::extract::ws::{Message, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{Sink, SinkExt, Stream, StreamExt};
use starling_xmpp::{ParseError, StreamError, StreamErrorCondition};

use super::{Received, TlsChannel, Transport, TransportReader, TransportWriter};
use crate::framing::{Framing, Inbound, Outgoing};

/// A WebSocket stream, with the TLS session under it when this server
/// terminated it (`wss://` on `listen.https`): then channel binding is
/// offered (its `-PLUS` mechanisms), though the stream still counts as not
/// TLS-protected for PLAIN and registration (the listener may as well be
/// plain HTTP behind a proxy; the policy stays one for both).
pub(crate) struct WebSocketStream {
    socket: WebSocket,
    tls: Option<TlsChannel>,
}

impl WebSocketStream {
    pub fn new(socket: WebSocket, tls: Option<TlsChannel>) -> Self {
        WebSocketStream { socket, tls }
    }
}

impl Transport for WebSocketStream {
    type Reader = SplitStream<WebSocket>;
    type Writer = SplitSink<WebSocket, Message>;

    fn framing(&self) -> Framing {
        Framing::WebSocket
    }

    fn is_tls(&self) -> bool {
        false
    }

    fn tls_channel(&self) -> Option<TlsChannel> {
        self.tls.clone()
    }

    async fn receive(&mut self, inbound: &mut Inbound) -> Received {
        receive_message(&mut self.socket, inbound).await
    }

    async fn send(&mut self, out: &Outgoing) -> io::Result<()> {
        send_messages(&mut self.socket, out).await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        SinkExt::close(&mut self.socket)
            .await
            .map_err(io::Error::other)
    }

    fn split(self) -> (Self::Reader, Self::Writer) {
        let (sink, stream) = StreamExt::split(self.socket);
        (stream, sink)
    }
}

impl TransportReader for SplitStream<WebSocket> {
    async fn receive(&mut self, inbound: &mut Inbound) -> Received {
        receive_message(self, inbound).await
    }
}

impl TransportWriter for SplitSink<WebSocket, Message> {
    fn framing(&self) -> Framing {
        Framing::WebSocket
    }

    async fn send(&mut self, out: &Outgoing) -> io::Result<()> {
        send_messages(self, out).await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.close().await.map_err(io::Error::other)
    }
}

/// RFC 7395 section 3.2: XMPP travels in text messages, one element each.
/// Pings are answered by the WebSocket layer itself.
async fn receive_message<S>(stream: &mut S, inbound: &mut Inbound) -> Received
where
    S: Stream<Item = Result<Message, axum::Error>> + Unpin + ?Sized,
{
    loop {
        let message = match stream.next().await {
            None => return Received::Lost,
            Some(Err(error)) => {
                if is_capacity_error(error) {
                    // Larger than the WebSocket layer buffers at all.
                    return Received::Invalid(ParseError(StreamError::with_text(
                        StreamErrorCondition::PolicyViolation,
                        "message too large",
                    )));
                }
                return Received::Lost;
            }
            Some(Ok(message)) => message,
        };
        let fed = match message {
            Message::Text(text) => inbound.feed(text.as_str().as_bytes()),
            Message::Binary(_) => {
                return Received::Invalid(ParseError(StreamError::with_text(
                    StreamErrorCondition::BadFormat,
                    "xmpp over websocket uses text messages",
                )))
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            // The client closed the WebSocket without <close/>.
            Message::Close(_) => return Received::Lost,
        };
        return match fed {
            Ok(()) => Received::Fed,
            Err(error) => Received::Invalid(error),
        };
    }
}

fn is_capacity_error(error: axum::Error) -> bool {
    matches!(
        error
            .into_inner()
            .downcast::<tungstenite::Error>()
            .map(|error| *error),
        Ok(tungstenite::Error::Capacity(_))
    )
}

/// Each unit is one text message (RFC 7395 section 3.3.3), flushed together.
async fn send_messages<S>(sink: &mut S, out: &Outgoing) -> io::Result<()>
where
    S: Sink<Message, Error = axum::Error> + Unpin + ?Sized,
{
    for unit in out.units() {
        sink.feed(Message::text(unit))
            .await
            .map_err(io::Error::other)?;
    }
    sink.flush().await.map_err(io::Error::other)
}
