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
//! TLS-terminating proxy in front and publish a `wss://` URL. On the HTTPS
//! listener (`listen.https`) the TLS session is this server's: its request
//! carries the session's channel binding data ([`TlsChannel`]), and the
//! stream offers the `-PLUS` mechanisms bound to it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::header::{HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::Router;
use starling_xmpp::escape_attr;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::limits::ConnectionPermit;
use crate::listener::bosh::BOSH_PATH;
use crate::metrics;
use crate::negotiation;
use crate::session;
use crate::shared::Shared;
use crate::transport::websocket::WebSocketStream;
use crate::transport::TlsChannel;

/// Where the WebSocket endpoint is served.
pub const WEBSOCKET_PATH: &str = "/xmpp-websocket";
/// The WebSocket subprotocol of RFC 7395 section 3.1.
const SUBPROTOCOL: &str = "xmpp";
/// XEP-0156 section 3: the link relation of a WebSocket endpoint.
const WEBSOCKET_REL: &str = "urn:xmpp:alt-connections:websocket";
/// XEP-0156 section 3: the link relation of a BOSH endpoint.
const BOSH_REL: &str = "urn:xmpp:alt-connections:xbosh";

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
    tls: Option<Extension<TlsChannel>>,
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
    // The write buffer is bounded too: tungstenite answers every ping with a
    // pong on its own, and a client that pings without reading would grow
    // it without end (issue 18). Past the bound the write fails and the
    // connection ends, like a client that does not read its stanzas.
    upgrade
        .read_buffer_size(4096)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(WRITE_BUFFER_BYTES + 4 * max_message)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| {
            // wss:// on listen.https: the TLS session under it is ours.
            let stream = WebSocketStream::new(socket, tls.map(|Extension(tls)| tls));
            connections.track_future(serve_websocket(shared, stream, peer, permit, deadline))
        })
}

/// Written in one go once this much is buffered (tungstenite's default is 128 KiB).
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

async fn serve_websocket(
    shared: Arc<Shared>,
    socket: WebSocketStream,
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

/// The endpoints XEP-0156 advertises, as the client reached us: its `Host`
/// header, and `wss://`/`https://` when a proxy says the request came over
/// TLS. `None` when the host is missing or not a plausible `host[:port]`.
#[derive(Debug, PartialEq, Eq)]
struct Endpoints {
    websocket: String,
    bosh: String,
}

fn endpoints(headers: &HeaderMap) -> Option<Endpoints> {
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
    let (websocket_scheme, http_scheme) = if forwarded_tls {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    Some(Endpoints {
        websocket: format!("{websocket_scheme}://{host}{WEBSOCKET_PATH}"),
        bosh: format!("{http_scheme}://{host}{BOSH_PATH}"),
    })
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
    let Some(endpoints) = endpoints(&headers) else {
        return bad_host();
    };
    discovery_response("application/xrd+xml", host_meta_xml(&endpoints))
}

/// XEP-0156 section 3.2, JSON form (RFC 6415 appendix A).
async fn host_meta_json(headers: HeaderMap) -> Response {
    let Some(endpoints) = endpoints(&headers) else {
        return bad_host();
    };
    discovery_response("application/json", host_meta_json_body(&endpoints))
}

/// Both connection methods the HTTP listener serves: XMPP over WebSocket
/// (RFC 7395) and BOSH (XEP-0206), each under its XEP-0156 link relation.
fn links(endpoints: &Endpoints) -> [(&'static str, &str); 2] {
    [
        (WEBSOCKET_REL, endpoints.websocket.as_str()),
        (BOSH_REL, endpoints.bosh.as_str()),
    ]
}

fn host_meta_xml(endpoints: &Endpoints) -> String {
    let mut xml = String::from(
        "<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n",
    );
    for (rel, href) in links(endpoints) {
        xml.push_str(&format!(
            "  <Link rel='{rel}' href='{}'/>\n",
            escape_attr(href)
        ));
    }
    xml.push_str("</XRD>\n");
    xml
}

fn host_meta_json_body(endpoints: &Endpoints) -> String {
    // The URLs hold only host characters checked by `endpoints`: no JSON escaping needed.
    let links: Vec<String> = links(endpoints)
        .iter()
        .map(|(rel, href)| format!("{{\"rel\":\"{rel}\",\"href\":\"{href}\"}}"))
        .collect();
    format!("{{\"links\":[{}]}}\n", links.join(","))
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

    fn endpoints_of(pairs: &[(&'static str, &str)]) -> Option<(String, String)> {
        endpoints(&headers(pairs)).map(|endpoints| (endpoints.websocket, endpoints.bosh))
    }

    #[test]
    fn urls_from_the_request() {
        assert_eq!(
            endpoints_of(&[("host", "example.com:5280")]),
            Some((
                "ws://example.com:5280/xmpp-websocket".into(),
                "http://example.com:5280/http-bind".into()
            ))
        );
        assert_eq!(
            endpoints_of(&[("host", "chat.example.com"), ("x-forwarded-proto", "https")]),
            Some((
                "wss://chat.example.com/xmpp-websocket".into(),
                "https://chat.example.com/http-bind".into()
            ))
        );
        assert_eq!(
            endpoints_of(&[("host", "[::1]:5280")]).map(|(websocket, _)| websocket),
            Some("ws://[::1]:5280/xmpp-websocket".into())
        );
        assert_eq!(endpoints_of(&[]), None);
        assert_eq!(endpoints_of(&[("host", "a'b")]), None);
        assert_eq!(endpoints_of(&[("host", "a\"b")]), None);
    }

    #[test]
    fn host_meta_bodies_advertise_websocket_and_bosh() {
        let endpoints = Endpoints {
            websocket: "wss://example.com/xmpp-websocket".into(),
            bosh: "https://example.com/http-bind".into(),
        };
        assert_eq!(
            host_meta_xml(&endpoints),
            "<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n  <Link rel='urn:xmpp:alt-connections:websocket' href='wss://example.com/xmpp-websocket'/>\n  <Link rel='urn:xmpp:alt-connections:xbosh' href='https://example.com/http-bind'/>\n</XRD>\n"
        );
        assert_eq!(
            host_meta_json_body(&endpoints),
            "{\"links\":[{\"rel\":\"urn:xmpp:alt-connections:websocket\",\"href\":\"wss://example.com/xmpp-websocket\"},{\"rel\":\"urn:xmpp:alt-connections:xbosh\",\"href\":\"https://example.com/http-bind\"}]}\n"
        );
    }
}
