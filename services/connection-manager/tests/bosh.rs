//! BOSH (XEP-0124, XEP-0206) against the real HTTP listener, with a plain
//! HTTP/1.1 client over TCP: session creation and its bounded parameters,
//! SCRAM with restart, binding, a chat with a TCP session of the same node,
//! long polling, retransmission, the request window, oversize bodies,
//! inactivity and client termination.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
const EMPTY: &str = "<body xmlns='http://jabber.org/protocol/httpbind'/>";

/// One HTTP exchange: the response head and body.
async fn http(addr: SocketAddr, method: &str, body: &str) -> (String, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!(
            "{method} /http-bind HTTP/1.1\r\nHost: xmpp.example.com\r\nOrigin: http://web.example\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(75), tcp.read_to_end(&mut response))
        .await
        .expect("a response in time")
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a complete response");
    (head.to_string(), body.to_string())
}

/// A stanza for a request that is to be held: the test router records it and
/// delivers it nowhere, so the request still has nothing to answer with.
const HELD_MARKER: &str = "<message xmlns='jabber:client' to='nobody@example.com' id='held'/>";

/// Wait until the server has taken the request carrying [`HELD_MARKER`]: it
/// routed the marker, and holds the request from then on.
async fn wait_until_request_is_held(server: &TestServer) {
    wait_until("the held request's marker to be routed", WAIT, async || {
        server
            .router
            .routed
            .lock()
            .iter()
            .any(|stanza| stanza.attr("id") == Some("held"))
    })
    .await;
}

async fn post(addr: SocketAddr, body: &str) -> String {
    let (head, body) = http(addr, "POST", body).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("\r\ncontent-type: text/xml; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.contains("\r\naccess-control-allow-origin: *"),
        "{head}"
    );
    body
}

fn attr<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    let start_tag = body.split('>').next().unwrap();
    text_between(start_tag, &format!(" {name}='"), "'")
}

struct BoshClient {
    addr: SocketAddr,
    sid: String,
    rid: u64,
}

impl BoshClient {
    /// Create a session; the response with its parameters and features.
    async fn create(server: &TestServer, wait: u64, hold: u64) -> (BoshClient, String) {
        let rid = 4_000_000;
        let response = post(
            server.http,
            &format!("<body content='text/xml; charset=utf-8' hold='{hold}' rid='{rid}' to='example.com' wait='{wait}' ver='1.6' xml:lang='en' xmpp:version='1.0' xmlns='{HTTPBIND}' xmlns:xmpp='urn:xmpp:xbosh'/>"),
        )
        .await;
        let sid = attr(&response, "sid")
            .unwrap_or_else(|| panic!("no sid: {response}"))
            .to_string();
        let client = BoshClient {
            addr: server.http,
            sid,
            rid,
        };
        (client, response)
    }

    fn next_body(&mut self, extra_attrs: &str, payload: &str) -> String {
        self.rid += 1;
        format!(
            "<body rid='{}' sid='{}'{extra_attrs} xmlns='{HTTPBIND}'>{payload}</body>",
            self.rid, self.sid
        )
    }

    async fn send(&mut self, payload: &str) -> String {
        let body = self.next_body("", payload);
        post(self.addr, &body).await
    }

    async fn restart(&mut self) -> String {
        let body = self.next_body(
            " to='example.com' xml:lang='en' xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh'",
            "",
        );
        post(self.addr, &body).await
    }

    async fn scram(&mut self, username: &str, password: &str) -> Result<(), String> {
        let hash = ScramTestHash::Sha256;
        let client_first_bare = format!("n={username},r=BoshClientNonce0123456789");
        let challenge = self
            .send(&format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{}'>{}</auth>",
                hash.name(),
                b64(format!("n,,{client_first_bare}").as_bytes())
            ))
            .await;
        let Some(server_first) = text_between(&challenge, "sasl'>", "</challenge>") else {
            return Err(challenge);
        };
        let server_first = String::from_utf8(unb64(server_first)).unwrap();
        let (client_final, server_signature) =
            hash.client_final(password, &client_first_bare, &server_first);
        let success = self
            .send(&format!(
                "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
                b64(client_final.as_bytes())
            ))
            .await;
        let Some(additional) = text_between(&success, "sasl'>", "</success>") else {
            return Err(success);
        };
        assert_eq!(
            String::from_utf8(unb64(additional)).unwrap(),
            format!("v={}", b64(&server_signature))
        );
        Ok(())
    }

    /// Create, SCRAM-SHA-256, restart, bind: the client and its full JID.
    async fn login(
        server: &TestServer,
        wait: u64,
        username: &str,
        password: &str,
    ) -> (BoshClient, String) {
        let (mut client, _) = BoshClient::create(server, wait, 1).await;
        client.scram(username, password).await.unwrap();
        let features = client.restart().await;
        assert!(
            features.contains("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"),
            "{features}"
        );
        let reply = client
            .send("<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bosh</resource></bind></iq>")
            .await;
        assert!(
            reply.contains("<iq xmlns='jabber:client' type='result' id='b1'>"),
            "{reply}"
        );
        let jid = text_between(&reply, "<jid>", "</jid>").unwrap().to_string();
        (client, jid)
    }
}

fn item_not_found() -> String {
    format!("<body type='terminate' condition='item-not-found' xmlns='{HTTPBIND}'/>")
}

#[tokio::test]
async fn bosh_session_chats_with_a_tcp_session() {
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "secret").await;
    server.add_user("romeo", "montague").await;

    // Session creation: the client's wait and hold are bounded by ours;
    // plain HTTP is not TLS, so SCRAM only (docs/adr/0002).
    let (mut probe, created) = BoshClient::create(&server, 120, 5).await;
    assert_eq!(attr(&created, "wait"), Some("60"), "{created}");
    assert_eq!(attr(&created, "hold"), Some("1"));
    assert_eq!(attr(&created, "requests"), Some("2"));
    assert_eq!(attr(&created, "inactivity"), Some("60"));
    assert_eq!(attr(&created, "polling"), Some("2"));
    assert_eq!(attr(&created, "maxpause"), Some("120"));
    assert_eq!(attr(&created, "ver"), Some("1.6"));
    assert_eq!(attr(&created, "from"), Some("example.com"));
    assert_eq!(attr(&created, "xmpp:version"), Some("1.0"));
    assert_eq!(attr(&created, "xmpp:restartlogic"), Some("true"));
    assert!(attr(&created, "authid").is_some(), "{created}");
    assert!(
        created.contains("><stream:features xmlns:stream='http://etherx.jabber.org/streams'><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism></mechanisms></stream:features></body>"),
        "{created}"
    );
    let refused = probe
        .send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
            b64(b"\0juliet\0secret")
        ))
        .await;
    assert!(
        refused.contains(
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><encryption-required/></failure>"
        ),
        "{refused}"
    );

    let (mut web, web_jid) = BoshClient::login(&server, 2, "juliet", "secret").await;
    assert_eq!(web_jid, "juliet@example.com/bosh");
    let (mut tcp, tcp_jid) = Client::login(&server, "romeo", "montague", Some("orchard")).await;

    // BOSH to TCP, stamped with the BOSH session's full JID. Nothing comes
    // back for the BOSH request: it is answered empty after `wait`.
    let started = Instant::now();
    let answer = web
        .send(&format!(
            "<message xmlns='jabber:client' to='{tcp_jid}' id='m1' from='mallory@example.com'><body>hello over bosh</body></message>"
        ))
        .await;
    assert_eq!(
        tcp.read_until("</message>").await,
        "<message to='romeo@example.com/orchard' id='m1' from='juliet@example.com/bosh' xml:lang='en'><body>hello over bosh</body></message>"
    );
    assert_eq!(answer, EMPTY);
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );

    // Long polling: a held request returns the stanza pushed meanwhile. The
    // request carries a stanza: once it is routed, the server has the request.
    let held_body = web.next_body("", HELD_MARKER);
    let addr = web.addr;
    let held = tokio::spawn(async move {
        let started = Instant::now();
        (post(addr, &held_body).await, started.elapsed())
    });
    wait_until_request_is_held(&server).await;
    assert!(
        !held.is_finished(),
        "the request was answered before anything was pushed"
    );
    tcp.send(&format!(
        "<message to='{web_jid}' id='m2'><body>hello from tcp</body></message>"
    ))
    .await;
    let (pushed, elapsed) = held.await.unwrap();
    assert_eq!(
        pushed,
        "<body xmlns='http://jabber.org/protocol/httpbind' xmlns:stream='http://etherx.jabber.org/streams'><message xmlns='jabber:client' to='juliet@example.com/bosh' id='m2' from='romeo@example.com/orchard' xml:lang='en'><body>hello from tcp</body></message></body>"
    );
    // Answered when the stanza came, not when `wait` (2 s) ran out.
    assert!(elapsed < Duration::from_millis(1900), "{elapsed:?}");

    // Section 14.3: a repeated rid gets the same response again.
    let repeated = format!(
        "<body rid='{}' sid='{}' xmlns='{HTTPBIND}'/>",
        web.rid, web.sid
    );
    assert_eq!(post(web.addr, &repeated).await, pushed);

    // Section 13: the client terminates, with a last stanza.
    let ended = web
        .send(&format!(
            "<message xmlns='jabber:client' to='{tcp_jid}' id='m3'><body>bye</body></message>"
        ))
        .await;
    assert!(ended.starts_with("<body"), "{ended}");
    let body = web.next_body(
        " type='terminate'",
        "<presence xmlns='jabber:client' type='unavailable'/>",
    );
    assert_eq!(
        post(web.addr, &body).await,
        format!("<body type='terminate' xmlns='{HTTPBIND}'/>")
    );
    assert!(tcp
        .read_until("</message>")
        .await
        .contains("<body>bye</body>"));
    let unbound = server.router.clone();
    wait_until("the bosh session is unbound", WAIT, async || {
        unbound
            .unbound
            .lock()
            .iter()
            .any(|jid| jid.to_string() == web_jid)
    })
    .await;
    assert_eq!(web.send("").await, item_not_found());
}

#[tokio::test]
async fn out_of_window_rid_terminates() {
    let server = TestServer::start(|_| {}).await;
    let (mut client, _) = BoshClient::create(&server, 2, 1).await;
    client.rid += 5;
    assert_eq!(client.send("").await, item_not_found());
    // The session is gone.
    client.rid -= 5;
    assert_eq!(client.send("").await, item_not_found());
    // An unknown sid, and a body that is not one.
    assert_eq!(
        post(
            server.http,
            &format!("<body rid='7' sid='nosuchsession' xmlns='{HTTPBIND}'/>")
        )
        .await,
        item_not_found()
    );
    assert_eq!(
        post(server.http, "<message xmlns='jabber:client'/>").await,
        format!("<body type='terminate' condition='bad-request' xmlns='{HTTPBIND}'/>")
    );
    assert_eq!(
        post(
            server.http,
            &format!("<body rid='1' to='example.net' wait='5' hold='1' xmlns='{HTTPBIND}'/>")
        )
        .await,
        format!("<body type='terminate' condition='host-unknown' xmlns='{HTTPBIND}'/>")
    );
}

#[tokio::test]
async fn oversize_body_is_a_policy_violation() {
    let server = TestServer::start(|config| config.limits.max_stanza_bytes = 16_384).await;
    let (mut client, _) = BoshClient::create(&server, 2, 1).await;
    let body = client.next_body(
        "",
        &format!(
            "<message xmlns='jabber:client' to='a@example.com'><body>{}</body></message>",
            "x".repeat(20_000)
        ),
    );
    assert_eq!(
        post(client.addr, &body).await,
        format!("<body type='terminate' condition='policy-violation' xmlns='{HTTPBIND}'/>")
    );
    assert_eq!(client.send("").await, item_not_found());
}

#[tokio::test]
async fn inactivity_ends_the_session() {
    let server =
        TestServer::start(|config| config.limits.bosh_inactivity = Duration::from_secs(1)).await;
    server.add_user("juliet", "secret").await;
    let (mut client, jid) = BoshClient::login(&server, 2, "juliet", "secret").await;
    // No request for longer than `inactivity`: unbound like a lost connection.
    let router = server.router.clone();
    wait_until("the idle bosh session is unbound", WAIT, async || {
        router
            .unbound
            .lock()
            .iter()
            .any(|bound| bound.to_string() == jid)
    })
    .await;
    assert_eq!(client.send("").await, item_not_found());
}

#[tokio::test]
async fn cors_preflight_is_answered() {
    let server = TestServer::start(|_| {}).await;
    let (head, body) = http(server.http, "OPTIONS", "").await;
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("\r\naccess-control-allow-origin: *"),
        "{head}"
    );
    assert!(
        head.contains("\r\naccess-control-allow-methods: post, options"),
        "{head}"
    );
    assert!(
        head.contains("\r\naccess-control-allow-headers: content-type"),
        "{head}"
    );
    assert_eq!(body, "");
}

#[tokio::test]
async fn shutdown_answers_the_held_request() {
    let mut server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "secret").await;
    let (mut client, _) = BoshClient::login(&server, 30, "juliet", "secret").await;
    let held_body = client.next_body("", HELD_MARKER);
    let addr = client.addr;
    let held = tokio::spawn(async move { post(addr, &held_body).await });
    wait_until_request_is_held(&server).await;
    // The shutdown closes the stream: the held request carries its error.
    server.shutdown().await;
    assert_eq!(
        tokio::time::timeout(WAIT, held).await.unwrap().unwrap(),
        format!("<body type='terminate' condition='remote-stream-error' xmlns='{HTTPBIND}' xmlns:stream='http://etherx.jabber.org/streams'><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></body>")
    );
}
