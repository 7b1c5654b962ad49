//! The transport under an XML stream: plain TCP until STARTTLS (RFC 6120
//! section 5.4.3.3), TLS after it or from the start (XEP-0368), or a
//! WebSocket (RFC 7395), or a BOSH virtual connection (XEP-0206). Negotiation
//! and the session read events and write [`Outgoing`] units through it
//! without knowing which one it is.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::ws::{Message, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{Sink, SinkExt, Stream, StreamExt};
use starling_xmpp::{ParseError, StreamError, StreamErrorCondition};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::bosh::{BoshReader, BoshWriter};
use crate::framing::{Framing, Inbound, Outgoing};

/// A byte stream: TCP, or TLS over TCP.
pub(crate) enum ByteStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// What a stream runs over.
pub(crate) enum Transport {
    Bytes(ByteStream),
    /// A WebSocket on the HTTP listener (plain HTTP: never TLS here; a
    /// TLS-terminating proxy in front is the deployment's business).
    WebSocket(Box<WebSocket>),
    /// A BOSH session (XEP-0206) on the HTTP listener: reads come from
    /// request bodies, writes are collected for the held requests. Like a
    /// WebSocket it is never TLS here, and it uses the message framing.
    Bosh(BoshReader, BoshWriter),
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

impl Transport {
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Bytes(ByteStream::Tls(_)))
    }

    pub fn framing(&self) -> Framing {
        match self {
            Transport::Bytes(_) => Framing::Stream,
            Transport::WebSocket(_) | Transport::Bosh(..) => Framing::WebSocket,
        }
    }

    /// Read once and feed the decoder. Cancel-safe.
    pub async fn receive(&mut self, inbound: &mut Inbound) -> Received {
        match self {
            Transport::Bytes(stream) => receive_bytes(stream, inbound).await,
            Transport::WebSocket(socket) => receive_message(socket.as_mut(), inbound).await,
            Transport::Bosh(reader, _) => reader.receive(inbound).await,
        }
    }

    pub async fn send(&mut self, out: &Outgoing) -> io::Result<()> {
        match self {
            Transport::Bytes(stream) => send_bytes(stream, out).await,
            Transport::WebSocket(socket) => send_messages(socket.as_mut(), out).await,
            Transport::Bosh(_, writer) => writer.send(out).await,
        }
    }

    /// End the connection (a TCP FIN, a WebSocket close frame).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Transport::Bytes(stream) => stream.shutdown().await,
            Transport::WebSocket(socket) => socket.close().await.map_err(io::Error::other),
            Transport::Bosh(_, writer) => {
                writer.shutdown();
                Ok(())
            }
        }
    }

    /// Separate halves for the session's reader and writer tasks.
    pub fn split(self) -> (TransportReader, TransportWriter) {
        match self {
            // Plain TCP splits into two owned halves without a lock between
            // them; TLS shares one session state, so its halves take turns.
            Transport::Bytes(ByteStream::Plain(tcp)) => {
                let (reader, writer) = tcp.into_split();
                (
                    TransportReader::Bytes(Box::new(reader)),
                    TransportWriter::Bytes(Box::new(writer)),
                )
            }
            Transport::Bytes(stream) => {
                let (reader, writer) = tokio::io::split(stream);
                (
                    TransportReader::Bytes(Box::new(reader)),
                    TransportWriter::Bytes(Box::new(writer)),
                )
            }
            Transport::WebSocket(socket) => {
                let (sink, stream) = (*socket).split();
                (
                    TransportReader::WebSocket(stream),
                    TransportWriter::WebSocket(sink),
                )
            }
            Transport::Bosh(reader, writer) => {
                (TransportReader::Bosh(reader), TransportWriter::Bosh(writer))
            }
        }
    }
}

/// The reading half of a bound session's transport.
pub(crate) enum TransportReader {
    Bytes(Box<dyn AsyncRead + Unpin + Send>),
    WebSocket(SplitStream<WebSocket>),
    Bosh(BoshReader),
}

impl TransportReader {
    /// Read once and feed the decoder. Cancel-safe.
    pub async fn receive(&mut self, inbound: &mut Inbound) -> Received {
        match self {
            TransportReader::Bytes(reader) => receive_bytes(reader, inbound).await,
            TransportReader::WebSocket(stream) => receive_message(stream, inbound).await,
            TransportReader::Bosh(reader) => reader.receive(inbound).await,
        }
    }
}

/// The writing half of a bound session's transport.
pub(crate) enum TransportWriter {
    Bytes(Box<dyn AsyncWrite + Unpin + Send>),
    WebSocket(SplitSink<WebSocket, Message>),
    Bosh(BoshWriter),
}

impl TransportWriter {
    pub fn framing(&self) -> Framing {
        match self {
            TransportWriter::Bytes(_) => Framing::Stream,
            TransportWriter::WebSocket(_) | TransportWriter::Bosh(_) => Framing::WebSocket,
        }
    }

    pub async fn send(&mut self, out: &Outgoing) -> io::Result<()> {
        match self {
            TransportWriter::Bytes(writer) => send_bytes(writer, out).await,
            TransportWriter::WebSocket(sink) => send_messages(sink, out).await,
            TransportWriter::Bosh(writer) => writer.send(out).await,
        }
    }

    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            TransportWriter::Bytes(writer) => writer.shutdown().await,
            TransportWriter::WebSocket(sink) => sink.close().await.map_err(io::Error::other),
            TransportWriter::Bosh(writer) => {
                writer.shutdown();
                Ok(())
            }
        }
    }
}

/// Bytes one read takes at most: a TLS record's plaintext (RFC 8446 section
/// 5.1) fits, and the parser enforces the stanza size limit, not this.
const READ_SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    /// One read buffer per runtime thread, not per connection: a read fills
    /// it and the parser copies what it needs before the poll returns, so an
    /// idle connection holds no read buffer at all (docs/performance.md,
    /// memory per idle session).
    static READ_SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; READ_SCRATCH_BYTES].into_boxed_slice());
}

async fn receive_bytes<R>(reader: &mut R, inbound: &mut Inbound) -> Received
where
    R: AsyncRead + Unpin + ?Sized,
{
    std::future::poll_fn(|cx| {
        READ_SCRATCH.with(|scratch| {
            // Never re-entered: nothing below polls another connection.
            let mut scratch = scratch.borrow_mut();
            let mut buffer = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut *reader).poll_read(cx, &mut buffer) {
                // AsyncRead: a pending read has put nothing into the buffer.
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(_)) => Poll::Ready(Received::Lost),
                Poll::Ready(Ok(())) if buffer.filled().is_empty() => Poll::Ready(Received::Lost),
                Poll::Ready(Ok(())) => Poll::Ready(match inbound.feed(buffer.filled()) {
                    Ok(()) => Received::Fed,
                    Err(error) => Received::Invalid(error),
                }),
            }
        })
    })
    .await
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

async fn send_bytes<W>(writer: &mut W, out: &Outgoing) -> io::Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    writer.write_all(out.as_str().as_bytes()).await?;
    writer.flush().await
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

impl AsyncRead for ByteStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ByteStream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            ByteStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ByteStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ByteStream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            ByteStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ByteStream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            ByteStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ByteStream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            ByteStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ByteStream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            ByteStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ByteStream::Plain(stream) => stream.is_write_vectored(),
            ByteStream::Tls(stream) => stream.is_write_vectored(),
        }
    }
}
