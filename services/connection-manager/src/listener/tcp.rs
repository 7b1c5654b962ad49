//! The c2s TCP listeners: STARTTLS on plain TCP (RFC 6120 section 5) and
//! direct TLS (XEP-0368). Each accepted connection is counted against its
//! client's address (read from the PROXY header a trusted load balancer
//! sends first, `crate::proxy`), then negotiated and served as a session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use starling_xmpp::{StreamError, StreamErrorCondition};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::limits::ConnectionPermit;
use crate::metrics;
use crate::negotiation;
use crate::outbound::CLOSE_WRITE_TIMEOUT;
use crate::proxy::{self, ProxiedPeer};
use crate::session;
use crate::shared::Shared;
use crate::transport::tcp::ByteStream;
use crate::xml::{random_id, stream_header, STREAM_CLOSE};

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerKind {
    /// Plain TCP, STARTTLS offered (RFC 6120 section 5).
    StartTls,
    /// TLS from the first byte (XEP-0368).
    DirectTls,
    /// External components (XEP-0114): plain TCP, `jabber:component:accept`.
    Component,
    /// Server-to-server streams (RFC 6120): STARTTLS, `jabber:server`.
    S2s,
    /// Server-to-server streams with direct TLS (XEP-0368, ALPN `xmpp-server`).
    S2sTls,
}

impl ListenerKind {
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::StartTls => "c2s",
            ListenerKind::DirectTls => "c2s_tls",
            ListenerKind::Component => "component",
            ListenerKind::S2s => "s2s",
            ListenerKind::S2sTls => "s2s_tls",
        }
    }
}

/// Accept connections until the drain or the shutdown stops accepting.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    kind: ListenerKind,
    listener: TcpListener,
    connections: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            // Returning drops the listener: new connections are refused, not queued.
            _ = shared.drain.stop_accepting.cancelled() => {
                tracing::info!(listener = kind.name(), "listener closed");
                return;
            }
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = kind.name(), %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        connections.spawn(admit_connection(Arc::clone(&shared), tcp, peer, kind));
    }
}

/// The client's address (the peer's, or the one its trusted balancer's
/// PROXY header names), counted against the per-address limit; then the
/// connection is served, or refused over the limit.
async fn admit_connection(
    shared: Arc<Shared>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
) {
    // RFC 6120 section 13.12 (denial of service): one absolute deadline from
    // accept until the resource is bound, not an idle timer; the PROXY
    // header is read within it too.
    let deadline = Instant::now() + shared.limits.pre_auth_timeout;
    // The PROXY protocol is for the client listeners behind a balancer;
    // a component connects to its server directly.
    let client = if !matches!(
        kind,
        ListenerKind::Component | ListenerKind::S2s | ListenerKind::S2sTls
    ) && shared.proxies.expects_header(peer.ip())
    {
        let header = tokio::select! {
            header = tokio::time::timeout_at(deadline, proxy::read_header(&mut tcp)) => header,
            _ = shared.shutdown.cancelled() => return,
        };
        match header {
            Ok(Ok(ProxiedPeer::Client(client))) => {
                shared.metrics.proxy_header("client");
                client
            }
            Ok(Ok(ProxiedPeer::Local)) => {
                shared.metrics.proxy_header("local");
                peer
            }
            Ok(Err(error)) => {
                // The header is the balancer's promise: without it nothing
                // says whose connection this is (proxy-protocol.txt section 2:
                // the receiver must not guess, it drops the connection).
                shared.metrics.proxy_header(error.label());
                tracing::info!(peer = %peer, listener = kind.name(), %error, "no valid PROXY header from a trusted proxy");
                return;
            }
            Err(_) => {
                shared.metrics.proxy_header("timeout");
                tracing::info!(peer = %peer, listener = kind.name(), "no PROXY header before the deadline");
                return;
            }
        }
    } else {
        peer
    };
    let Some(permit) = shared.ip_limits.try_connect(client.ip()) else {
        tracing::info!(peer = %client, listener = kind.name(), "too many connections from one address");
        shared.metrics.limit_hit(metrics::Limit::ConnectionsPerIp);
        refuse_connection(shared, tcp, kind).await;
        return;
    };
    if kind == ListenerKind::Component {
        crate::component::serve(shared, tcp, client, deadline).await;
        drop(permit);
        return;
    }
    if matches!(kind, ListenerKind::S2s | ListenerKind::S2sTls) {
        let direct_tls = kind == ListenerKind::S2sTls;
        crate::s2s::inbound::accept(shared, tcp, client, direct_tls, deadline).await;
        drop(permit);
        return;
    }
    serve_connection(shared, tcp, client, kind, permit, deadline).await;
}

/// Refuse a connection over the per-IP limit: on the STARTTLS listener, our
/// header and `<policy-violation/>` right away (RFC 6120 section 4.9.1.2);
/// direct TLS is simply closed (an error would first cost a TLS handshake).
async fn refuse_connection(shared: Arc<Shared>, mut tcp: TcpStream, kind: ListenerKind) {
    let header = match kind {
        ListenerKind::StartTls => stream_header(&random_id(), &shared.domain, None, "en"),
        // XEP-0114 section 3: a header in the component namespace first.
        ListenerKind::Component => crate::component::response_header(&random_id(), &shared.domain),
        ListenerKind::S2s => {
            crate::s2s::inbound::response_header(&random_id(), &shared.domain, None)
        }
        ListenerKind::DirectTls | ListenerKind::S2sTls => return,
    };
    shared
        .metrics
        .stream_error(StreamErrorCondition::PolicyViolation.as_str());
    let mut out = header;
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

async fn serve_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    permit: ConnectionPermit,
    deadline: Instant,
) {
    let conn = shared.next_conn_id();
    let mut counted = shared.metrics.connection(match kind {
        ListenerKind::StartTls | ListenerKind::Component | ListenerKind::S2s => {
            metrics::Transport::Tcp
        }
        ListenerKind::DirectTls | ListenerKind::S2sTls => metrics::Transport::Tls,
    });
    tracing::debug!(conn, peer = %peer, listener = kind.name(), "connection accepted");
    if let Some(stream) = accept_stream(&shared, conn, tcp, peer, kind, deadline).await {
        if let Some(bound) =
            negotiation::negotiate(Arc::clone(&shared), conn, stream, peer, deadline).await
        {
            counted.bound();
            session::run(shared, bound).await;
        }
    }
    drop(permit);
    tracing::debug!(conn, peer = %peer, "connection closed");
}

/// The byte stream of an accepted connection: with the TLS handshake on the
/// direct TLS listener. `None` when the handshake failed or did not finish
/// by the deadline or the shutdown.
async fn accept_stream(
    shared: &Shared,
    conn: starling_api::ConnId,
    tcp: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    deadline: Instant,
) -> Option<ByteStream> {
    match kind {
        ListenerKind::StartTls | ListenerKind::Component | ListenerKind::S2s => {
            Some(ByteStream::Plain(tcp))
        }
        // Served by `crate::s2s::inbound::accept`, never here.
        ListenerKind::S2sTls => None,
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
    }
}
