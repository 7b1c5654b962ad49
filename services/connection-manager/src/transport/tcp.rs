//! The byte-stream transport of the c2s listeners: plain TCP until STARTTLS
//! (RFC 6120 section 5.4.3.3), TLS after it or from the first byte
//! (XEP-0368). The stream is one XML document cut into chunks anywhere
//! ([`Framing::Stream`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::{Received, TlsChannel, Transport, TransportReader, TransportWriter};
use crate::framing::{Framing, Inbound, Outgoing};

/// A byte stream: TCP, or TLS over TCP.
pub(crate) enum ByteStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport for ByteStream {
    type Reader = ByteReader;
    type Writer = ByteWriter;

    fn framing(&self) -> Framing {
        Framing::Stream
    }

    fn is_tls(&self) -> bool {
        matches!(self, ByteStream::Tls(_))
    }

    fn can_start_tls(&self) -> bool {
        matches!(self, ByteStream::Plain(_))
    }

    fn tls_channel(&self) -> Option<TlsChannel> {
        match self {
            ByteStream::Plain(_) => None,
            ByteStream::Tls(tls) => Some(TlsChannel::of(tls.get_ref().1)),
        }
    }

    async fn start_tls(self, acceptor: &TlsAcceptor) -> io::Result<Self> {
        match self {
            ByteStream::Plain(tcp) => Ok(ByteStream::Tls(Box::new(acceptor.accept(tcp).await?))),
            ByteStream::Tls(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    async fn receive(&mut self, inbound: &mut Inbound) -> Received {
        receive_bytes(self, inbound).await
    }

    async fn send(&mut self, out: &Outgoing) -> io::Result<()> {
        send_bytes(self, out).await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        AsyncWriteExt::shutdown(self).await
    }

    fn split(self) -> (ByteReader, ByteWriter) {
        match self {
            // Plain TCP splits into two owned halves without a lock between
            // them; TLS shares one session state, so its halves take turns.
            ByteStream::Plain(tcp) => {
                let (reader, writer) = tcp.into_split();
                (ByteReader(Box::new(reader)), ByteWriter(Box::new(writer)))
            }
            stream => {
                let (reader, writer) = tokio::io::split(stream);
                (ByteReader(Box::new(reader)), ByteWriter(Box::new(writer)))
            }
        }
    }
}

/// The reading half of a byte stream.
pub(crate) struct ByteReader(Box<dyn AsyncRead + Unpin + Send>);

impl TransportReader for ByteReader {
    async fn receive(&mut self, inbound: &mut Inbound) -> Received {
        receive_bytes(&mut self.0, inbound).await
    }
}

/// The writing half of a byte stream.
pub(crate) struct ByteWriter(pub(crate) Box<dyn AsyncWrite + Unpin + Send>);

impl TransportWriter for ByteWriter {
    fn framing(&self) -> Framing {
        Framing::Stream
    }

    async fn send(&mut self, out: &Outgoing) -> io::Result<()> {
        send_bytes(&mut self.0, out).await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.0.shutdown().await
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

pub(crate) async fn receive_bytes<R>(reader: &mut R, inbound: &mut Inbound) -> Received
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

async fn send_bytes<W>(writer: &mut W, out: &Outgoing) -> io::Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    writer.write_all(out.as_str().as_bytes()).await?;
    writer.flush().await
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
