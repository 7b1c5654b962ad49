//! The BOSH transport (XEP-0206): a virtual connection. Reads come from the
//! bodies of HTTP requests, writes are collected for the requests the server
//! holds (the HTTP side is `listener::bosh`). Like a WebSocket it is never
//! TLS here, and it uses the message framing ([`Framing::WebSocket`]): each
//! unit is one child of a `<body/>`, declaring its own namespaces.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use parking_lot::Mutex;
use starling_xmpp::StreamEvent;
use tokio::sync::futures::Notified;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::{Received, Transport, TransportReader, TransportWriter};
use crate::framing::{Framing, Inbound, Outgoing};

/// A BOSH session's stream, whole: its two halves.
pub(crate) struct BoshTransport {
    reader: BoshReader,
    writer: BoshWriter,
}

impl Transport for BoshTransport {
    type Reader = BoshReader;
    type Writer = BoshWriter;

    fn framing(&self) -> Framing {
        Framing::WebSocket
    }

    fn is_tls(&self) -> bool {
        false
    }

    async fn receive(&mut self, inbound: &mut Inbound) -> Received {
        self.reader.receive(inbound).await
    }

    async fn send(&mut self, out: &Outgoing) -> io::Result<()> {
        self.writer.send(out).await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.writer.shutdown().await
    }

    fn split(self) -> (BoshReader, BoshWriter) {
        (self.reader, self.writer)
    }
}

/// What the stream code wrote and no request has taken yet.
#[derive(Default)]
struct Output {
    units: VecDeque<String>,
    bytes: usize,
    /// The stream code shut the transport down.
    closed: bool,
}

/// The shared state of one virtual connection, between its transport halves
/// and the HTTP requests of its session.
pub(crate) struct Link {
    output: Mutex<Output>,
    /// Output arrived or the stream closed.
    ready: Notify,
    /// A request took the output.
    drained: Notify,
    /// The client side is gone (inactivity, termination): reads end, writes fail.
    lost: CancellationToken,
    /// Output beyond this waits for a request to take some (a client that
    /// stops polling slows the writer, whose stall timeout then closes it).
    capacity: usize,
}

impl Link {
    /// Output beyond `capacity` bytes waits for a request to take some.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Link {
            output: Mutex::new(Output::default()),
            ready: Notify::new(),
            drained: Notify::new(),
            lost: CancellationToken::new(),
            capacity,
        })
    }

    /// The transport over this link, for the stream code; `events_rx` brings
    /// the events decoded from request bodies.
    pub fn transport(self: &Arc<Self>, events_rx: mpsc::Receiver<StreamEvent>) -> BoshTransport {
        BoshTransport {
            reader: BoshReader {
                events_rx,
                link: Arc::clone(self),
            },
            writer: BoshWriter {
                link: Arc::clone(self),
            },
        }
    }

    /// Resolves when output arrives or the stream closes (create it before
    /// looking with [`Link::take`]).
    pub fn ready(&self) -> Notified<'_> {
        self.ready.notified()
    }

    /// The client side is gone: reads end, writes fail.
    pub fn lose(&self) {
        self.lost.cancel();
    }

    /// The stream code is done with the link: the next request learns it.
    pub fn close(&self) {
        self.output.lock().closed = true;
        self.ready.notify_waiters();
    }

    /// Everything written so far, when there is something or the stream closed.
    pub fn take(&self) -> Option<(Vec<String>, bool)> {
        let mut output = self.output.lock();
        if output.units.is_empty() && !output.closed {
            return None;
        }
        let units = output.units.drain(..).collect();
        output.bytes = 0;
        let closed = output.closed;
        drop(output);
        self.drained.notify_waiters();
        Some((units, closed))
    }
}

/// The reading half of a BOSH virtual connection: events decoded from
/// request bodies.
pub(crate) struct BoshReader {
    events_rx: mpsc::Receiver<StreamEvent>,
    link: Arc<Link>,
}

impl TransportReader for BoshReader {
    /// One event into the decoder. Cancel-safe.
    async fn receive(&mut self, inbound: &mut Inbound) -> Received {
        tokio::select! {
            biased;
            event = self.events_rx.recv() => match event {
                Some(event) => {
                    inbound.push_event(event);
                    Received::Fed
                }
                None => Received::Lost,
            },
            _ = self.link.lost.cancelled() => Received::Lost,
        }
    }
}

/// The writing half of a BOSH virtual connection: units collected for the
/// held requests.
pub(crate) struct BoshWriter {
    link: Arc<Link>,
}

impl TransportWriter for BoshWriter {
    fn framing(&self) -> Framing {
        Framing::WebSocket
    }

    async fn send(&mut self, out: &Outgoing) -> io::Result<()> {
        loop {
            let drained = self.link.drained.notified();
            {
                if self.link.lost.is_cancelled() {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                let mut output = self.link.output.lock();
                if output.bytes < self.link.capacity || output.units.is_empty() {
                    for unit in out.units() {
                        output.bytes += unit.len();
                        output.units.push_back(unit.to_string());
                    }
                    drop(output);
                    self.link.ready.notify_waiters();
                    return Ok(());
                }
            }
            tokio::select! {
                _ = drained => {}
                _ = self.link.lost.cancelled() => return Err(io::ErrorKind::BrokenPipe.into()),
            }
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.link.close();
        Ok(())
    }
}
