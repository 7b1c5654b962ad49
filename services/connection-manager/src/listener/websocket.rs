//! XMPP over WebSocket (RFC 7395) on the HTTP listener, and the connection
//! discovery web clients use to find it (XEP-0156).
//!
//! The WebSocket endpoint only does the HTTP part: the subprotocol check of
//! section 3.1, the per-address connection limit and the message size bound.
//! The stream itself goes through the same negotiation and session code as a
//! TCP stream, with the framing of section 3.3; to the router it is an
//! ordinary session.
//!
//! Security: the HTTP listener speaks plain HTTP. A WebSocket stream is never
//! treated as TLS-protected, whatever proxy may be in front: it is offered
//! SCRAM only (the password never crosses the wire), never PLAIN nor in-band
//! registration, and `require_tls` (which asks for STARTTLS, a thing RFC 7395
//! does not have) does not apply to it. Public deployments put a
//! TLS-terminating proxy in front and publish a `wss://` URL.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::header::{HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use starling_xmpp::escape_attr;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::limits::ConnectionPermit;
use crate::metrics;
use crate::negotiation;
use crate::session;
use crate::shared::Shared;

/// Where the WebSocket endpoint is served.
pub const WEBSOCKET_PATH: &str = "/xmpp-websocket";
/// The WebSocket subprotocol of RFC 7395 section 3.1.
const SUBPROTOCOL: &str = "xmpp";
/// XEP-0156 section 3: the link relation of a WebSocket endpoint.
const WEBSOCKET_REL: &str = "urn:xmpp:alt-connections:websocket";

#[derive(Clone)]
struct WebSocketState {
    shared: Arc<Shared>,
    connections: TaskTracker,
}

/// The routes: `/xmpp-websocket`, `/.well-known/host-meta` and
/// `/.well-known/host-meta.json`. The router must be served with
/// `into_make_service_with_connect_info::<SocketAddr>()`: the per-address
/// limit needs the peer's address.
pub(crate) fn router(shared: Arc<Shared>, connections: TaskTracker) -> Router {
    Router::new()
        .route(WEBSOCKET_PATH, get(upgrade))
        .route("/.well-known/host-meta", get(host_meta_xrd))
        .route("/.well-known/host-meta.json", get(host_meta_json))
        .with_state(WebSocketState {
            shared,
            connections,
        })
}

async fn upgrade(
    State(state): State<WebSocketState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let shared = &state.shared;
    // Section 3.1: without the xmpp subprotocol there is no XMPP session;
    // the handshake is refused rather than completed without it.
    let upgrade = upgrade.protocols([SUBPROTOCOL]);
    if upgrade.selected_protocol().is_none() {
        tracing::debug!(peer = %peer, "websocket handshake without the xmpp subprotocol");
        return (
            StatusCode::BAD_REQUEST,
            "the websocket subprotocol \"xmpp\" is required (RFC 7395 section 3.1)\n",
        )
            .into_response();
    }
    if shared.drain.stop_accepting.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let Some(permit) = shared.ip_limits.try_connect(peer.ip()) else {
        tracing::info!(peer = %peer, listener = "websocket", "too many connections from one address");
        shared.metrics.limit_hit(metrics::Limit::ConnectionsPerIp);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections from your address\n",
        )
            .into_response();
    };
    // Room for a message of the largest stanza plus framing slack: a larger
    // one is cut off by the WebSocket layer (and still gets
    // <policy-violation/>), a smaller one over the limit by the decoder.
    let max_message = shared.limits.max_stanza_bytes.saturating_mul(2);
    // The deadline runs from the handshake, as it runs from accept on TCP.
    let deadline = Instant::now() + shared.limits.pre_auth_timeout;
    let shared = Arc::clone(shared);
    let connections = state.connections.clone();
    // tungstenite allocates its read buffer up front, 128 KiB by default: that
    // was most of an idle WebSocket session's memory. A larger message still
    // fits (the buffer grows for it).
    upgrade
        .read_buffer_size(4096)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| {
            connections.track_future(serve_websocket(shared, socket, peer, permit, deadline))
        })
}

async fn serve_websocket(
    shared: Arc<Shared>,
    socket: WebSocket,
    peer: SocketAddr,
    permit: ConnectionPermit,
    deadline: Instant,
) {
    let conn = shared.next_conn_id();
    let mut counted = shared.metrics.connection(metrics::Transport::WebSocket);
    tracing::debug!(conn, peer = %peer, listener = "websocket", "connection accepted");
    if let Some(bound) =
        negotiation::negotiate(Arc::clone(&shared), conn, socket, peer, deadline).await
    {
        counted.bound();
        session::run(shared, bound).await;
    }
    drop(permit);
    tracing::debug!(conn, peer = %peer, "connection closed");
}

/// The WebSocket URL as the client reached us: its `Host` header, and
/// `wss://` when a proxy says the request came over TLS. `None` when the
/// host is missing or not a plausible `host[:port]`.
fn websocket_url(headers: &HeaderMap) -> Option<String> {
    let host = headers.get("host")?.to_str().ok()?;
    let plausible = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b".-:[]_".contains(&byte));
    if !plausible {
        return None;
    }
    let forwarded_tls = headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
    let scheme = if forwarded_tls { "wss" } else { "ws" };
    Some(format!("{scheme}://{host}{WEBSOCKET_PATH}"))
}

/// XEP-0156 section 3.2: host-meta is public and fetched by web clients
/// from other origins.
fn discovery_response(content_type: &'static str, body: String) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*")),
        ],
        body,
    )
        .into_response()
}

fn bad_host() -> Response {
    (StatusCode::BAD_REQUEST, "missing or invalid Host header\n").into_response()
}

/// XEP-0156 section 3.2, XRD form (RFC 6415).
async fn host_meta_xrd(headers: HeaderMap) -> Response {
    let Some(url) = websocket_url(&headers) else {
        return bad_host();
    };
    discovery_response("application/xrd+xml", host_meta_xml(&url))
}

/// XEP-0156 section 3.2, JSON form (RFC 6415 appendix A).
async fn host_meta_json(headers: HeaderMap) -> Response {
    let Some(url) = websocket_url(&headers) else {
        return bad_host();
    };
    discovery_response("application/json", host_meta_json_body(&url))
}

fn host_meta_xml(url: &str) -> String {
    format!(
        "<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n  <Link rel='{WEBSOCKET_REL}' href='{}'/>\n</XRD>\n",
        escape_attr(url)
    )
}

fn host_meta_json_body(url: &str) -> String {
    // The URL holds only host characters checked by `websocket_url`: no JSON escaping needed.
    format!("{{\"links\":[{{\"rel\":\"{WEBSOCKET_REL}\",\"href\":\"{url}\"}}]}}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn url_from_the_request() {
        assert_eq!(
            websocket_url(&headers(&[("host", "example.com:5280")])).as_deref(),
            Some("ws://example.com:5280/xmpp-websocket")
        );
        assert_eq!(
            websocket_url(&headers(&[
                ("host", "chat.example.com"),
                ("x-forwarded-proto", "https")
            ]))
            .as_deref(),
            Some("wss://chat.example.com/xmpp-websocket")
        );
        assert_eq!(
            websocket_url(&headers(&[("host", "[::1]:5280")])).as_deref(),
            Some("ws://[::1]:5280/xmpp-websocket")
        );
        assert_eq!(websocket_url(&headers(&[])), None);
        assert_eq!(websocket_url(&headers(&[("host", "a'b")])), None);
        assert_eq!(websocket_url(&headers(&[("host", "a\"b")])), None);
    }

    #[test]
    fn host_meta_bodies() {
        assert_eq!(
            host_meta_xml("wss://example.com/xmpp-websocket"),
            "<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n  <Link rel='urn:xmpp:alt-connections:websocket' href='wss://example.com/xmpp-websocket'/>\n</XRD>\n"
        );
        assert_eq!(
            host_meta_json_body("ws://example.com:5280/xmpp-websocket"),
            "{\"links\":[{\"rel\":\"urn:xmpp:alt-connections:websocket\",\"href\":\"ws://example.com:5280/xmpp-websocket\"}]}\n"
        );
    }
}
