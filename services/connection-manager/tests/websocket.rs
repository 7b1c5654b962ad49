//! XMPP over WebSocket (RFC 7395) against the real HTTP listener, with a real
//! WebSocket client (tokio-tungstenite): the handshake, framing, SASL,
//! binding, a chat with a TCP session of the same node, and the bad frames.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const OPEN: &str =
    "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.com' version='1.0'/>";
const CLOSE: &str = "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>";

struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    async fn connect(server: &TestServer) -> WsClient {
        let mut request = format!("ws://{}/xmpp-websocket", server.http)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("xmpp"));
        let (socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(
            response.headers().get("sec-websocket-protocol").unwrap(),
            "xmpp"
        );
        WsClient { socket }
    }

    async fn send(&mut self, text: &str) {
        self.socket.send(Message::text(text)).await.unwrap();
    }

    /// The next text message; `None` once the server closed the WebSocket.
    async fn next(&mut self) -> Option<String> {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("a message in time");
            match message {
                Some(Ok(Message::Text(text))) => return Some(text.to_string()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    async fn recv(&mut self) -> String {
        self.next().await.expect("the websocket is still open")
    }

    /// Every message until the server closes the WebSocket.
    async fn recv_to_close(&mut self) -> Vec<String> {
        let mut messages = Vec::new();
        while let Some(message) = self.next().await {
            messages.push(message);
        }
        messages
    }

    /// `<open/>` and the features that follow it.
    async fn open(&mut self) -> String {
        self.send(OPEN).await;
        let open = self.recv().await;
        assert!(
            open.starts_with("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' id='"),
            "{open}"
        );
        assert!(open.contains(" from='example.com'"), "{open}");
        assert!(open.contains(" version='1.0'"), "{open}");
        let features = self.recv().await;
        assert!(
            features
                .starts_with("<stream:features xmlns:stream='http://etherx.jabber.org/streams'>"),
            "{features}"
        );
        features
    }

    async fn scram(&mut self, username: &str, password: &str) -> Result<(), String> {
        let hash = ScramTestHash::Sha256;
        let client_first_bare = format!("n={username},r=WsClientNonce0123456789");
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{}'>{}</auth>",
            hash.name(),
            b64(format!("n,,{client_first_bare}").as_bytes())
        ))
        .await;
        let challenge = self.recv().await;
        let Some(server_first) = text_between(&challenge, "'>", "</challenge>") else {
            return Err(challenge);
        };
        let server_first = String::from_utf8(unb64(server_first)).unwrap();
        let (client_final, server_signature) =
            hash.client_final(password, &client_first_bare, &server_first);
        self.send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            b64(client_final.as_bytes())
        ))
        .await;
        let success = self.recv().await;
        let Some(additional) = text_between(&success, "'>", "</success>") else {
            return Err(success);
        };
        assert_eq!(
            String::from_utf8(unb64(additional)).unwrap(),
            format!("v={}", b64(&server_signature))
        );
        Ok(())
    }

    /// Open, SCRAM-SHA-256, restart, bind: the full JID.
    async fn login(server: &TestServer, username: &str, password: &str) -> (WsClient, String) {
        let mut client = WsClient::connect(server).await;
        client.open().await;
        client.scram(username, password).await.unwrap();
        let features = client.open().await;
        assert!(
            features.contains("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"),
            "{features}"
        );
        client
            .send("<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>web</resource></bind></iq>")
            .await;
        let reply = client.recv().await;
        assert!(
            reply.starts_with("<iq xmlns='jabber:client' type='result' id='b1'>"),
            "{reply}"
        );
        let jid = text_between(&reply, "<jid>", "</jid>").unwrap().to_string();
        (client, jid)
    }
}

#[tokio::test]
async fn websocket_session_chats_with_a_tcp_session() {
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "secret").await;
    server.add_user("romeo", "montague").await;

    // Plain ws:// is not TLS: SCRAM only, no STARTTLS (RFC 7395 has none),
    // no PLAIN, no registration, even though TLS is required on TCP.
    let mut probe = WsClient::connect(&server).await;
    let features = probe.open().await;
    assert_eq!(
        features,
        "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism></mechanisms></stream:features>"
    );
    probe
        .send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
            b64(b"\0juliet\0secret")
        ))
        .await;
    assert_eq!(
        probe.recv().await,
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><encryption-required/></failure>"
    );
    assert_eq!(
        probe.scram("juliet", "wrong").await,
        Err("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>".into())
    );

    let (mut web, web_jid) = WsClient::login(&server, "juliet", "secret").await;
    assert_eq!(web_jid, "juliet@example.com/web");
    let (mut tcp, tcp_jid) = Client::login(&server, "romeo", "montague", Some("orchard")).await;

    // WebSocket to TCP: stamped with the WebSocket session's full JID.
    web.send(&format!(
        "<message xmlns='jabber:client' to='{tcp_jid}' id='m1' from='mallory@example.com'><body>hello from the browser</body></message>"
    ))
    .await;
    let received = tcp.read_until("</message>").await;
    assert_eq!(
        received,
        "<message to='romeo@example.com/orchard' id='m1' from='juliet@example.com/web'><body>hello from the browser</body></message>"
    );

    // TCP to WebSocket: one stanza per message, declaring jabber:client.
    tcp.send(&format!(
        "<message to='{web_jid}' id='m2'><body>hello from tcp</body></message>"
    ))
    .await;
    assert_eq!(
        web.recv().await,
        "<message xmlns='jabber:client' to='juliet@example.com/web' id='m2' from='romeo@example.com/orchard' xml:lang='en'><body>hello from tcp</body></message>"
    );

    // Section 3.6: <close/> is answered with <close/>, then the WebSocket closes.
    web.send(CLOSE).await;
    assert_eq!(web.recv_to_close().await, vec![CLOSE.to_string()]);
    wait_until("the websocket session is unbound", WAIT, async || {
        server
            .router
            .unbound
            .lock()
            .iter()
            .any(|jid| jid.to_string() == web_jid)
    })
    .await;
}

#[tokio::test]
async fn non_xml_frame_is_not_well_formed() {
    let server = TestServer::start(|_| {}).await;
    let mut client = WsClient::connect(&server).await;
    client.open().await;
    client.send("this is not xml").await;
    let messages = client.recv_to_close().await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[0].starts_with("<stream:error xmlns:stream='http://etherx.jabber.org/streams'><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{messages:?}"
    );
    assert_eq!(messages[1], CLOSE);
}

#[tokio::test]
async fn half_an_element_per_frame_is_not_well_formed() {
    // Section 3.3.3: every message is a complete element.
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "secret").await;
    let (mut client, _) = WsClient::login(&server, "juliet", "secret").await;
    client
        .send("<message xmlns='jabber:client' to='romeo@example.com'>")
        .await;
    let messages = client.recv_to_close().await;
    assert!(
        messages[0].contains("<not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{messages:?}"
    );
    assert_eq!(messages.last().map(String::as_str), Some(CLOSE));
}

#[tokio::test]
async fn oversize_frames_are_a_policy_violation() {
    let server = TestServer::start(|config| config.limits.max_stanza_bytes = 4096).await;
    server.add_user("juliet", "secret").await;
    // Over the stanza limit: refused by the decoder.
    let (mut client, _) = WsClient::login(&server, "juliet", "secret").await;
    client
        .send(&format!(
            "<message xmlns='jabber:client' to='romeo@example.com'><body>{}</body></message>",
            "x".repeat(5000)
        ))
        .await;
    let messages = client.recv_to_close().await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[0].starts_with("<stream:error xmlns:stream='http://etherx.jabber.org/streams'><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{messages:?}"
    );
    assert_eq!(messages[1], CLOSE);

    // Far over it: cut off by the WebSocket layer, same stream error.
    let mut client = WsClient::connect(&server).await;
    client.open().await;
    client.send(&"y".repeat(64 * 1024)).await;
    let messages = client.recv_to_close().await;
    assert!(
        messages
            .first()
            .is_some_and(|error| error.contains("<policy-violation ")),
        "{messages:?}"
    );
}

#[tokio::test]
async fn handshake_without_the_xmpp_subprotocol_is_refused() {
    let server = TestServer::start(|_| {}).await;
    let url = format!("ws://{}/xmpp-websocket", server.http);
    let error = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect_err("no websocket without the xmpp subprotocol");
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 400)
        }
        other => panic!("unexpected error {other:?}"),
    }
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
    assert!(tokio_tungstenite::connect_async(request).await.is_err());
}

#[tokio::test]
async fn wrong_domain_and_binary_frames_end_the_stream() {
    let server = TestServer::start(|_| {}).await;
    let mut client = WsClient::connect(&server).await;
    client
        .send("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.net' version='1.0'/>")
        .await;
    let messages = client.recv_to_close().await;
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert!(messages[0].starts_with("<open "), "{messages:?}");
    assert!(messages[1].contains("<host-unknown "), "{messages:?}");
    assert_eq!(messages[2], CLOSE);

    let mut client = WsClient::connect(&server).await;
    client.open().await;
    client
        .socket
        .send(Message::binary(OPEN.as_bytes().to_vec()))
        .await
        .unwrap();
    let messages = client.recv_to_close().await;
    assert!(messages[0].contains("<bad-format "), "{messages:?}");
}

#[tokio::test]
async fn shutdown_closes_websocket_sessions() {
    let mut server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "secret").await;
    let (mut client, _) = WsClient::login(&server, "juliet", "secret").await;
    server.shutdown().await;
    let messages = client.recv_to_close().await;
    assert_eq!(
        messages,
        vec![
            "<stream:error xmlns:stream='http://etherx.jabber.org/streams'><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>".to_string(),
            CLOSE.to_string()
        ]
    );
}

async fn http_get(server: &TestServer, path: &str, extra_headers: &str) -> String {
    let mut tcp = TcpStream::connect(server.http).await.unwrap();
    tcp.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: xmpp.example.com:5280\r\n{extra_headers}Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    response.to_ascii_lowercase()
}

#[tokio::test]
async fn host_meta_advertises_the_websocket_and_bosh_endpoints() {
    // XEP-0156 section 3.
    let server = TestServer::start(|_| {}).await;
    let xrd = http_get(&server, "/.well-known/host-meta", "").await;
    assert!(xrd.starts_with("http/1.1 200"), "{xrd}");
    assert!(xrd.contains("content-type: application/xrd+xml"), "{xrd}");
    assert!(xrd.contains("access-control-allow-origin: *"), "{xrd}");
    assert!(
        xrd.contains("<link rel='urn:xmpp:alt-connections:websocket' href='ws://xmpp.example.com:5280/xmpp-websocket'/>"),
        "{xrd}"
    );
    assert!(
        xrd.contains("<link rel='urn:xmpp:alt-connections:xbosh' href='http://xmpp.example.com:5280/http-bind'/>"),
        "{xrd}"
    );
    let json = http_get(
        &server,
        "/.well-known/host-meta.json",
        "X-Forwarded-Proto: https\r\n",
    )
    .await;
    assert!(json.starts_with("http/1.1 200"), "{json}");
    assert!(json.contains("content-type: application/json"), "{json}");
    assert!(json.contains("access-control-allow-origin: *"), "{json}");
    assert!(
        json.contains("{\"links\":[{\"rel\":\"urn:xmpp:alt-connections:websocket\",\"href\":\"wss://xmpp.example.com:5280/xmpp-websocket\"},{\"rel\":\"urn:xmpp:alt-connections:xbosh\",\"href\":\"https://xmpp.example.com:5280/http-bind\"}]}"),
        "{json}"
    );
}
