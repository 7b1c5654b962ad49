//! Client streams end to end over real sockets on 127.0.0.1: stream headers,
//! STARTTLS and direct TLS, SASL, binding, stanza handling, limits, delivery
//! and shutdown (RFC 6120), driven with literal XML.

mod common;

use std::time::{Duration, Instant};

use common::*;
use starling_api::SessionRegistry;
use starling_bus::Bus;
use starling_xmpp::{ns, Element};

const SHA256: ScramTestHash = ScramTestHash::Sha256;
const SHA1: ScramTestHash = ScramTestHash::Sha1;

fn failure(condition: &str) -> String {
    format!("<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><{condition}/></failure>")
}

fn stream_error(condition: &str) -> String {
    format!("<stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>")
}

// ------------------------------------------------------------ stream header

#[tokio::test]
async fn response_header_and_required_starttls() {
    let server = TestServer::start(|_| {}).await;
    let mut client = Client::connect(&server).await;
    client
        .send("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='EXAMPLE.com' from='juliet@example.com' version='1.0' xml:lang='fr'>")
        .await;
    let reply = client.read_until("</stream:features>").await;
    assert!(reply.starts_with("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='"), "{reply}");
    assert!(
        reply.contains(" from='example.com' to='juliet@example.com' version='1.0' xml:lang='fr'>"),
        "{reply}"
    );
    assert!(reply.ends_with("<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>"), "{reply}");
}

#[tokio::test]
async fn host_unknown() {
    let server = TestServer::start(|_| {}).await;
    let mut client = Client::connect(&server).await;
    client
        .send("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.net' version='1.0'>")
        .await;
    let rest = client.read_to_close().await;
    // Section 4.9.1.2: our header first, then the error, then the close.
    assert!(
        rest.starts_with("<?xml version='1.0'?><stream:stream "),
        "{rest}"
    );
    assert!(rest.ends_with("<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"), "{rest}");
}

#[tokio::test]
async fn invalid_namespace_and_unsupported_version() {
    let server = TestServer::start(|_| {}).await;
    let mut client = Client::connect(&server).await;
    client
        .send("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='example.com' version='1.0'>")
        .await;
    assert!(client
        .read_to_close()
        .await
        .contains(&stream_error("invalid-namespace")));

    let mut client = Client::connect(&server).await;
    client.send("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.com'>").await;
    assert!(client
        .read_to_close()
        .await
        .contains(&stream_error("unsupported-version")));
}

#[tokio::test]
async fn restricted_xml_and_invalid_utf8() {
    let server = TestServer::start(|_| {}).await;
    let mut client = Client::connect(&server).await;
    client
        .send("<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY x 'y'>]>")
        .await;
    let rest = client.read_to_close().await;
    assert!(
        rest.starts_with("<?xml version='1.0'?><stream:stream "),
        "{rest}"
    );
    assert!(rest.contains(&stream_error("restricted-xml")), "{rest}");

    let mut client = Client::connect(&server).await;
    client.open().await;
    client
        .send_bytes(b"<message to='a@example.com'><body>\xff\xfe</body></message>")
        .await;
    let rest = client.read_to_close().await;
    assert!(rest.contains(&stream_error("not-well-formed")), "{rest}");
    assert!(rest.ends_with("</stream:stream>"), "{rest}");
}

#[tokio::test]
async fn client_close_is_answered() {
    let server = TestServer::start(|_| {}).await;
    let mut client = Client::connect(&server).await;
    client.open().await;
    client.send("</stream:stream>").await;
    assert_eq!(client.read_to_close().await, "</stream:stream>");
}

// ------------------------------------------------------------ TLS and SASL

/// SCRAM -PLUS (RFC 5802 section 6) with the data a rustls client computes
/// for its own session: tls-exporter (RFC 9266) and tls-server-end-point
/// (RFC 5929, the server's certificate is ECDSA with SHA-256).
#[tokio::test]
async fn scram_plus_binds_to_the_clients_tls_session() {
    use sha2::Digest;
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "pencil").await;

    let mut client = Client::connect_direct_tls(&server).await;
    client.open().await;
    let (exporter, _) = client.tls_binding.clone().unwrap();
    client
        .scram_bound(
            "SCRAM-SHA-256-PLUS",
            SHA256,
            "p=tls-exporter,,",
            &exporter,
            "juliet",
            "pencil",
        )
        .await
        .unwrap();

    let mut client = Client::connect(&server).await;
    client.secure().await;
    let (_, certificate) = client.tls_binding.clone().unwrap();
    let end_point = sha2::Sha256::digest(&certificate).to_vec();
    client
        .scram_bound(
            "SCRAM-SHA-1-PLUS",
            SHA1,
            "p=tls-server-end-point,,",
            &end_point,
            "juliet",
            "pencil",
        )
        .await
        .unwrap();

    // Another session's exporter: what a client behind a man in the middle sends.
    let mut other = Client::connect(&server).await;
    other.secure().await;
    let mut client = Client::connect(&server).await;
    client.secure().await;
    let (other_exporter, _) = other.tls_binding.clone().unwrap();
    assert_eq!(
        client
            .scram_bound(
                "SCRAM-SHA-256-PLUS",
                SHA256,
                "p=tls-exporter,,",
                &other_exporter,
                "juliet",
                "pencil"
            )
            .await
            .unwrap_err(),
        failure("not-authorized")
    );
    // 'y' where -PLUS was offered: a downgrade.
    assert_eq!(
        client
            .scram_bound("SCRAM-SHA-256", SHA256, "y,,", b"", "juliet", "pencil")
            .await
            .unwrap_err(),
        failure("not-authorized")
    );
}

#[tokio::test]
async fn starttls_then_scram_sha256_bind_and_route() {
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "pencil").await;
    let mut client = Client::connect(&server).await;
    client.open().await;
    client.starttls().await;
    let features = client.open().await;
    // TLS 1.3 here: -PLUS first, both channel binding types (XEP-0440).
    assert!(features.ends_with("<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms><sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/><channel-binding type='tls-server-end-point'/></sasl-channel-binding><register xmlns='http://jabber.org/features/iq-register'/></stream:features>"), "{features}");
    client.scram(SHA256, "juliet", "pencil").await.unwrap();
    let features = client.open().await;
    assert!(features.ends_with("<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session><ver xmlns='urn:xmpp:features:rosterver'/><sm xmlns='urn:xmpp:sm:3'/><csi xmlns='urn:xmpp:csi:0'/></stream:features>"), "{features}");
    client
        .send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>balcony</resource></bind></iq>")
        .await;
    let reply = client.read_until("</iq>").await;
    assert_eq!(reply, "<iq type='result' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>juliet@example.com/balcony</jid></bind></iq>");

    // Legacy session: an empty result.
    client
        .send("<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
        .await;
    assert_eq!(
        client.read_until("/>").await,
        "<iq type='result' id='s1' to='juliet@example.com/balcony'/>"
    );

    // A forged 'from' is overwritten; 'to' is normalised (section 8.1.2.1).
    client
        .send("<message from='romeo@example.net/forged' to='Romeo@Example.NET' type='chat' id='m1'><body>hi</body></message>")
        .await;
    wait_until("the message is routed", WAIT, async || {
        !server.router.routed.lock().is_empty()
    })
    .await;
    assert_eq!(
        server.router.routed_xml(),
        vec!["<message from='juliet@example.com/balcony' to='romeo@example.net' type='chat' id='m1' xml:lang='en'><body>hi</body></message>"]
    );
}

#[tokio::test]
async fn scram_sha1_success() {
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "pencil").await;
    let mut client = Client::connect(&server).await;
    client.secure().await;
    client.scram(SHA1, "juliet", "pencil").await.unwrap();
    client.open().await;
    assert_eq!(client.bind(Some("phone")).await, "juliet@example.com/phone");
}

#[tokio::test]
async fn scram_without_initial_response_gets_an_empty_challenge() {
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "pencil").await;
    let mut client = Client::connect(&server).await;
    client.secure().await;
    client
        .send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'/>")
        .await;
    assert_eq!(
        client.read_sasl().await,
        "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    );
    client
        .send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            b64(b"n,,n=juliet,r=abcdef")
        ))
        .await;
    let challenge = client.read_sasl().await;
    let server_first = String::from_utf8(unb64(
        text_between(&challenge, "'>", "</challenge>").unwrap(),
    ))
    .unwrap();
    assert!(server_first.starts_with("r=abcdef"), "{server_first}");
    let (client_final, _) = SHA256.client_final("pencil", "n=juliet,r=abcdef", &server_first);
    client
        .send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            b64(client_final.as_bytes())
        ))
        .await;
    assert!(client
        .read_sasl()
        .await
        .starts_with("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"));
}

#[tokio::test]
async fn plain_inside_tls() {
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "pencil").await;
    let mut client = Client::connect(&server).await;
    client.secure().await;
    assert_eq!(
        client.plain("juliet", "crayon").await.unwrap_err(),
        failure("not-authorized")
    );
    client.plain("juliet", "pencil").await.unwrap();
    client.open().await;
    assert_eq!(client.bind(Some("desk")).await, "juliet@example.com/desk");
}

#[tokio::test]
async fn wrong_password_and_unknown_user_look_the_same() {
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "pencil").await;
    let mut client = Client::connect(&server).await;
    client.secure().await;
    assert_eq!(
        client.scram(SHA256, "juliet", "crayon").await.unwrap_err(),
        failure("not-authorized")
    );
    assert_eq!(
        client.scram(SHA256, "nobody", "pencil").await.unwrap_err(),
        failure("not-authorized")
    );
    assert_eq!(
        client.scram(SHA1, "nobody", "pencil").await.unwrap_err(),
        failure("not-authorized")
    );
    assert_eq!(
        client.plain("nobody", "pencil").await.unwrap_err(),
        failure("not-authorized")
    );

    // The unknown account's challenge has the shape of a real one, and the same salt every time.
    let salt_of = |challenge: &str| {
        let server_first = String::from_utf8(unb64(
            text_between(challenge, "'>", "</challenge>").unwrap(),
        ))
        .unwrap();
        let salt = text_between(&server_first, ",s=", ",").unwrap().to_string();
        // The iteration count of real accounts, then XEP-0474's h= as for them.
        assert!(server_first.contains(",i=4096,h="), "{server_first}");
        salt
    };
    let mut salts = Vec::new();
    for _ in 0..2 {
        let mut client = Client::connect(&server).await;
        client.secure().await;
        client
            .send(&format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>", b64(b"n,,n=nobody,r=abc")))
            .await;
        salts.push(salt_of(&client.read_sasl().await));
    }
    assert_eq!(salts[0], salts[1]);
    assert_eq!(unb64(&salts[0]).len(), 16);
}

#[tokio::test]
async fn sasl_rejections() {
    let server = TestServer::start(|config| config.limits.max_auth_attempts = 10).await;
    server.add_user("juliet", "pencil").await;
    let mut client = Client::connect(&server).await;
    client.secure().await;
    let cases = [
        ("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='DIGEST-MD5'>=</auth>".to_string(), "invalid-mechanism"),
        ("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>not*base64</auth>".to_string(), "incorrect-encoding"),
        (format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>", b64(b"p=tls-unique,,n=juliet,r=abc")), "malformed-request"),
        (format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>", b64(b"n,a=romeo@example.com,n=juliet,r=abc")), "invalid-authzid"),
        (format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>", b64(b"romeo@example.com\0juliet\0pencil")), "invalid-authzid"),
        (format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>", b64(b"juliet\0pencil")), "malformed-request"),
        ("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>=</response>".to_string(), "malformed-request"),
        ("<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".to_string(), "aborted"),
    ];
    for (request, condition) in cases {
        client.send(&request).await;
        assert_eq!(client.read_sasl().await, failure(condition), "{request}");
    }
    // The authzid may be the account's own bare JID.
    client
        .send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
            b64(b"juliet@example.com\0juliet\0pencil")
        ))
        .await;
    assert!(client.read_sasl().await.starts_with("<success"));
}

#[tokio::test]
async fn sixth_attempt_closes_the_stream() {
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "pencil").await;
    let mut client = Client::connect(&server).await;
    client.secure().await;
    for _ in 0..5 {
        assert_eq!(
            client.plain("juliet", "wrong").await.unwrap_err(),
            failure("not-authorized")
        );
    }
    client
        .send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
            b64(b"\0juliet\0pencil")
        ))
        .await;
    let rest = client.read_to_close().await;
    // RFC 6120 section 6.4.5: a stream error, <policy-violation/>.
    assert!(
        rest.starts_with(&stream_error("policy-violation")),
        "{rest}"
    );
    assert!(rest.ends_with("</stream:error></stream:stream>"), "{rest}");
}

#[tokio::test]
async fn failed_logins_per_address_are_throttled_without_locking_the_account() {
    let server = TestServer::start(|config| config.limits.failed_auth_per_ip = 2).await;
    server.add_user("juliet", "pencil").await;
    let mut client = Client::connect(&server).await;
    client.secure().await;
    assert_eq!(
        client.plain("juliet", "wrong").await.unwrap_err(),
        failure("not-authorized")
    );
    assert_eq!(
        client.scram(SHA256, "juliet", "wrong").await.unwrap_err(),
        failure("not-authorized")
    );
    // Even the right password is not checked now, on any stream from this address.
    assert_eq!(
        client.plain("juliet", "pencil").await.unwrap_err(),
        failure("temporary-auth-failure")
    );
    let mut other = Client::connect(&server).await;
    other.secure().await;
    assert_eq!(
        other.scram(SHA256, "juliet", "pencil").await.unwrap_err(),
        failure("temporary-auth-failure")
    );
}

#[tokio::test]
async fn nothing_before_tls_when_it_is_required() {
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "pencil").await;
    let mut client = Client::connect(&server).await;
    client.open().await;
    // Sections 5.3.1 and 6.5.3.
    assert_eq!(
        client.plain("juliet", "pencil").await.unwrap_err(),
        failure("encryption-required")
    );
    assert_eq!(
        client.scram(SHA256, "juliet", "pencil").await.unwrap_err(),
        failure("encryption-required")
    );
    client
        .send("<message to='romeo@example.net'><body>x</body></message>")
        .await;
    assert!(client
        .read_to_close()
        .await
        .contains(&stream_error("not-authorized")));
}

#[tokio::test]
async fn plain_is_never_offered_nor_accepted_without_tls() {
    let server = TestServer::start(|config| config.require_tls = false).await;
    server.add_user("juliet", "pencil").await;
    let mut client = Client::connect(&server).await;
    let features = client.open().await;
    assert!(features.ends_with("<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism></mechanisms></stream:features>"), "{features}");
    assert_eq!(
        client.plain("juliet", "pencil").await.unwrap_err(),
        failure("encryption-required")
    );
    // SCRAM over plaintext is allowed when TLS is not required (load tests).
    client.scram(SHA256, "juliet", "pencil").await.unwrap();
    client.open().await;
    assert_eq!(client.bind(Some("bench")).await, "juliet@example.com/bench");
}

#[tokio::test]
async fn starttls_twice_fails_and_closes() {
    let server = TestServer::start(|_| {}).await;
    let mut client = Client::connect(&server).await;
    client.secure().await;
    client
        .send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    assert_eq!(
        client.read_to_close().await,
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:stream>"
    );
}

#[tokio::test]
async fn direct_tls_with_alpn() {
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "pencil").await;
    let mut client = Client::connect_direct_tls(&server).await;
    let features = client.open().await;
    assert!(
        features.contains("<mechanism>PLAIN</mechanism>"),
        "{features}"
    );
    assert!(!features.contains("starttls"), "{features}");
    client.scram(SHA256, "juliet", "pencil").await.unwrap();
    client.open().await;
    assert_eq!(client.bind(None).await, "juliet@example.com/gen1");
}

// ------------------------------------------------------------ binding

#[tokio::test]
async fn bind_with_and_without_resource_and_errors() {
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "pencil").await;
    let (_first, jid) = Client::login(&server, "juliet", "pencil", None).await;
    assert_eq!(jid, "juliet@example.com/gen1");

    let mut client = Client::connect(&server).await;
    client.secure().await;
    client.scram(SHA256, "juliet", "pencil").await.unwrap();
    client.open().await;
    let errors = [
        ("<iq type='get' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>", "<iq id='b1' type='error'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"),
        // U+2028 LINE SEPARATOR is XML but not OpaqueString (RFC 7622 section 3.4).
        ("<iq type='set' id='b2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>a\u{2028}b</resource></bind></iq>", "<iq id='b2' type='error'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>a\u{2028}b</resource></bind><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>invalid resourcepart</text></error></iq>"),
        ("<iq type='set' id='b3'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>crowded</resource></bind></iq>", "<iq id='b3' type='error'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>crowded</resource></bind><error type='wait'><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"),
        ("<iq type='set' id='b4'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>forbidden</resource></bind></iq>", "<iq id='b4' type='error'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>forbidden</resource></bind><error type='cancel'><not-allowed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"),
    ];
    for (request, expected) in errors {
        client.send(request).await;
        assert_eq!(client.read_until("</iq>").await, expected);
    }
    // After errors, binding still works; a stanza before it would be not-authorized.
    assert_eq!(
        client.bind(Some("balcony")).await,
        "juliet@example.com/balcony"
    );
}

#[tokio::test]
async fn stanza_before_bind_is_not_authorized() {
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "pencil").await;
    let mut client = Client::connect(&server).await;
    client.secure().await;
    client.scram(SHA256, "juliet", "pencil").await.unwrap();
    client.open().await;
    client.send("<presence/>").await;
    assert!(client
        .read_to_close()
        .await
        .contains(&stream_error("not-authorized")));
}

#[tokio::test]
async fn a_new_login_replaces_the_session_with_conflict() {
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "pencil").await;
    let (mut first, _) = Client::login(&server, "juliet", "pencil", Some("balcony")).await;
    let (_second, jid) = Client::login(&server, "juliet", "pencil", Some("balcony")).await;
    assert_eq!(jid, "juliet@example.com/balcony");
    let rest = first.read_to_close().await;
    assert!(rest.contains("<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>replaced by a new session</text></stream:error></stream:stream>"), "{rest}");
}

// ------------------------------------------------------------ stanzas

#[tokio::test]
async fn stanza_checks_after_bind() {
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "pencil").await;
    let (mut client, _) = Client::login(&server, "juliet", "pencil", Some("balcony")).await;
    let cases = [
        ("<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>", "<iq to='juliet@example.com/balcony' type='error'><ping xmlns='urn:xmpp:ping'/><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>an iq needs an id</text></error></iq>"),
        ("<iq type='get' id='i2'/>", "<iq id='i2' to='juliet@example.com/balcony' type='error'><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>an iq get or set needs exactly one child</text></error></iq>"),
        ("<iq type='set' id='i3'><a xmlns='urn:a'/><b xmlns='urn:b'/></iq>", "<iq id='i3' to='juliet@example.com/balcony' type='error'><a xmlns='urn:a'/><b xmlns='urn:b'/><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>an iq get or set needs exactly one child</text></error></iq>"),
        ("<iq type='fetch' id='i4'><a xmlns='urn:a'/></iq>", "<iq id='i4' to='juliet@example.com/balcony' type='error'><a xmlns='urn:a'/><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>an iq type is get, set, result or error</text></error></iq>"),
        ("<message to='@example.com' id='m1'><body>x</body></message>", "<message id='m1' to='juliet@example.com/balcony' from='@example.com' type='error'><body>x</body><error type='modify'><jid-malformed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"),
        ("<iq type='set' id='i5'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>", "<iq id='i5' to='juliet@example.com/balcony' type='error'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><error type='cancel'><not-allowed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"),
        ("<message to='fail@example.com' id='m2'><body>x</body></message>", "<message id='m2' to='juliet@example.com/balcony' from='fail@example.com' type='error'><error type='wait'><internal-server-error xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"),
        ("<iq type='get' id='i6' to='fail@example.com'><ping xmlns='urn:xmpp:ping'/></iq>", "<iq id='i6' to='juliet@example.com/balcony' from='fail@example.com' type='error'><ping xmlns='urn:xmpp:ping'/><error type='wait'><internal-server-error xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"),
    ];
    for (request, expected) in cases {
        client.send(request).await;
        let end = if expected.starts_with("<iq") {
            "</iq>"
        } else {
            "</message>"
        };
        assert_eq!(client.read_until(end).await, expected, "{request}");
    }
    // None of the rejected stanzas reached the router, except the two it refused.
    let routed = server.router.routed_xml();
    assert_eq!(routed.len(), 2, "{routed:?}");
    // A message to another user of the node is delivered through the bus.
    let (mut romeo, _) = Client::login(&server, "juliet", "pencil", Some("orchard")).await;
    client.send("<message to='juliet@example.com/orchard' from='evil@example.org' id='m3'><body>hi</body></message>").await;
    assert_eq!(
        romeo.read_until("</message>").await,
        "<message to='juliet@example.com/orchard' from='juliet@example.com/balcony' id='m3' xml:lang='en'><body>hi</body></message>"
    );
}

#[tokio::test]
async fn non_stanza_element_is_unsupported_stanza_type() {
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "pencil").await;
    let (mut client, jid) = Client::login(&server, "juliet", "pencil", None).await;
    client.send("<foo xmlns='urn:example:foo'/>").await;
    let rest = client.read_to_close().await;
    assert!(
        rest.contains(&stream_error("unsupported-stanza-type")),
        "{rest}"
    );
    assert!(rest.ends_with("</stream:stream>"), "{rest}");
    wait_until("the session is unbound", WAIT, async || {
        server
            .router
            .unbound
            .lock()
            .iter()
            .any(|unbound| unbound.to_string() == jid)
    })
    .await;
}

#[tokio::test]
async fn oversize_stanza_is_a_policy_violation() {
    let server = TestServer::start(|config| config.limits.max_stanza_bytes = 4096).await;
    server.add_user("juliet", "pencil").await;
    let (mut client, _) = Client::login(&server, "juliet", "pencil", None).await;
    let body = "x".repeat(8192);
    client
        .send(&format!(
            "<message to='romeo@example.net'><body>{body}</body></message>"
        ))
        .await;
    let rest = client.read_to_close().await;
    assert!(rest.contains(&stream_error("policy-violation")), "{rest}");
    assert!(server.router.routed.lock().is_empty());
}

#[tokio::test]
async fn client_stream_close_unbinds() {
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "pencil").await;
    let (mut client, jid) = Client::login(&server, "juliet", "pencil", None).await;
    client.send("<presence/></stream:stream>").await;
    assert_eq!(client.read_to_close().await, "</stream:stream>");
    wait_until("the session is unbound", WAIT, async || {
        server
            .router
            .unbound
            .lock()
            .iter()
            .any(|unbound| unbound.to_string() == jid)
    })
    .await;
    assert_eq!(
        server.router.routed_xml(),
        vec![format!("<presence from='{jid}' xml:lang='en'/>")]
    );
    assert!(server
        .router
        .registry
        .sessions(&"juliet@example.com".parse().unwrap())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn connection_loss_unbinds() {
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "pencil").await;
    let (client, jid) = Client::login(&server, "juliet", "pencil", None).await;
    drop(client);
    wait_until("the session is unbound", WAIT, async || {
        server
            .router
            .unbound
            .lock()
            .iter()
            .any(|unbound| unbound.to_string() == jid)
    })
    .await;
}

#[tokio::test]
async fn reading_is_throttled_not_disconnected() {
    let server = TestServer::start(|config| {
        config.limits.stanzas_per_second = 20;
        config.limits.stanza_burst = 1;
    })
    .await;
    server.add_user("juliet", "pencil").await;
    let (mut client, _) = Client::login(&server, "juliet", "pencil", None).await;
    let started = Instant::now();
    let mut burst = String::new();
    for index in 0..11 {
        burst.push_str(&format!("<message to='romeo@example.net' id='{index}'/>"));
    }
    client.send(&burst).await;
    wait_until("all stanzas are routed", WAIT, async || {
        server.router.routed.lock().len() == 11
    })
    .await;
    // One token at once, then 20 per second: ten more take about half a second.
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    client
        .send("<iq type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
        .await;
    client.read_until("id='s'").await;
}

// ------------------------------------------------------------ limits

#[tokio::test]
async fn pre_auth_deadline_is_absolute() {
    let server =
        TestServer::start(|config| config.limits.pre_auth_timeout = Duration::from_millis(300))
            .await;
    let started = Instant::now();
    let mut client = Client::connect(&server).await;
    client.open().await;
    // Activity does not extend the deadline.
    client.send(" ").await;
    let rest = client.read_to_close().await;
    assert!(rest.contains(&stream_error("connection-timeout")), "{rest}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let server = TestServer::start(|config| config.limits.max_connections_per_ip = 2).await;
    let mut first = Client::connect(&server).await;
    first.open().await;
    let mut second = Client::connect(&server).await;
    second.open().await;
    let mut third = Client::connect(&server).await;
    let rest = third.read_to_close().await;
    assert!(
        rest.starts_with("<?xml version='1.0'?><stream:stream "),
        "{rest}"
    );
    assert!(rest.ends_with("<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>too many connections from your address</text></stream:error></stream:stream>"), "{rest}");
    first.send("</stream:stream>").await;
    first.read_to_close().await;
    // The slot is free again once the server has released it.
    wait_until("the server to release the slot", WAIT, async || {
        let mut fourth = Client::connect(&server).await;
        fourth.send(HEADER).await;
        fourth.read_until(">").await;
        fourth.read_until(">").await;
        fourth.read_until(">").await.starts_with("<stream:features")
    })
    .await;
}

// ------------------------------------------------------------ delivery

#[tokio::test]
async fn deliveries_to_gone_connections_are_rerouted() {
    let server = TestServer::start(|_| {}).await;
    let message = Element::new("message", ns::CLIENT).with_attr("to", "juliet@example.com/gone");
    server.deliver(4242, message).await;
    wait_until("the stanza is rerouted", WAIT, async || {
        server.router.undeliverable.lock().len() == 1
    })
    .await;
}

#[tokio::test]
async fn rewritten_recipient_and_one_write_per_batch() {
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "pencil").await;
    let (mut client, jid) = Client::login(&server, "juliet", "pencil", Some("balcony")).await;
    let conn = server.conn_of(&jid).await;
    let presence =
        Element::new("presence", ns::SERVER).with_attr("from", "romeo@example.net/orchard");
    server
        .bus
        .publish(
            &server.node_id,
            starling_bus::Delivery::Stanza {
                recipients: vec![starling_bus::Recipient {
                    conn,
                    to: Some(jid.clone()),
                }],
                stanza: std::sync::Arc::new(presence),
                routed_at: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        client.read_until("/>").await,
        format!("<presence from='romeo@example.net/orchard' to='{jid}'/>")
    );
}

#[tokio::test]
async fn a_stopped_reader_is_closed_without_blocking_others() {
    let server = TestServer::start(|config| config.limits.outbound_queue_stanzas = 8).await;
    server.add_user("juliet", "pencil").await;
    server.add_user("romeo", "pencil").await;
    let (_stalled, stalled_jid) = Client::login(&server, "juliet", "pencil", Some("stalled")).await;
    let (mut reader, reader_jid) = Client::login(&server, "romeo", "pencil", Some("orchard")).await;
    let stalled_conn = server.conn_of(&stalled_jid).await;
    let reader_conn = server.conn_of(&reader_jid).await;
    let body = "x".repeat(32 * 1024);
    // Far more than socket buffers hold: the stalled client's queue overflows.
    for index in 0..1000 {
        let message = Element::new("message", ns::CLIENT)
            .with_attr("to", stalled_jid.as_str())
            .with_attr("id", index.to_string())
            .with_child(Element::new("body", ns::CLIENT).with_text(body.clone()));
        server.deliver(stalled_conn, message).await;
        if server
            .router
            .unbound
            .lock()
            .iter()
            .any(|unbound| unbound.to_string() == stalled_jid)
        {
            break;
        }
        tokio::task::yield_now().await;
    }
    wait_until(
        "the stalled session is closed and unbound",
        WAIT,
        async || {
            server
                .router
                .unbound
                .lock()
                .iter()
                .any(|unbound| unbound.to_string() == stalled_jid)
        },
    )
    .await;
    wait_until("its messages go back to the router", WAIT, async || {
        !server.router.undeliverable.lock().is_empty()
    })
    .await;
    // Meanwhile the other session is served at once.
    let message = Element::new("message", ns::CLIENT)
        .with_attr("to", reader_jid.as_str())
        .with_attr("id", "fast");
    server.deliver(reader_conn, message).await;
    let received =
        tokio::time::timeout(Duration::from_secs(2), reader.read_until("id='fast'/>")).await;
    assert!(received.is_ok(), "the reading client was held up");
}

// ------------------------------------------------------------ registration

#[tokio::test]
async fn in_band_registration() {
    let server = TestServer::start(|_| {}).await;
    server.add_user("taken", "pencil").await;
    let mut client = Client::connect(&server).await;
    client.secure().await;
    let cases = [
        ("<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>", "<iq type='result' id='r1'><query xmlns='jabber:iq:register'><instructions>Choose a username and password to register with this server.</instructions><username/><password/></query></iq>"),
        ("<iq type='set' id='r2'><query xmlns='jabber:iq:register'><username>bill</username></query></iq>", "<iq id='r2' type='error'><query xmlns='jabber:iq:register'><username>bill</username></query><error type='modify'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>username and password are required</text></error></iq>"),
        ("<iq type='set' id='r3'><query xmlns='jabber:iq:register'><username>bad@name</username><password>Calliope</password></query></iq>", "<iq id='r3' type='error'><query xmlns='jabber:iq:register'><username>bad@name</username><password>Calliope</password></query><error type='modify'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>the username is not a valid localpart</text></error></iq>"),
        ("<iq type='set' id='r4'><query xmlns='jabber:iq:register'><username>taken</username><password>Calliope</password></query></iq>", "<iq id='r4' type='error'><query xmlns='jabber:iq:register'><username>taken</username><password>Calliope</password></query><error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"),
        ("<iq type='set' id='r5'><query xmlns='jabber:iq:register'><remove/></query></iq>", "<iq id='r5' type='error'><query xmlns='jabber:iq:register'><remove/></query><error type='auth'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"),
        ("<iq type='set' id='r6'><query xmlns='jabber:iq:register'><username>Bill</username><password>Calliope</password></query></iq>", "<iq type='result' id='r6'/>"),
    ];
    for (request, expected) in cases {
        client.send(request).await;
        let end = if expected.ends_with("/>") {
            "/>"
        } else {
            "</iq>"
        };
        assert_eq!(client.read_until(end).await, expected, "{request}");
    }
    assert!(server.has_user("bill").await);
    client.scram(SHA256, "bill", "Calliope").await.unwrap();
    client.open().await;
    let jid = client.bind(Some("home")).await;

    // After authentication: what the account is, a password change, then removal.
    client
        .send("<iq type='get' id='a1'><query xmlns='jabber:iq:register'/></iq>")
        .await;
    assert_eq!(client.read_until("</iq>").await, format!("<iq type='result' id='a1' to='{jid}'><query xmlns='jabber:iq:register'><registered/><username>bill</username><password/></query></iq>"));
    client.send("<iq type='set' id='a2' to='example.com'><query xmlns='jabber:iq:register'><username>other</username><password>x</password></query></iq>").await;
    assert!(client
        .read_until("</iq>")
        .await
        .contains("<not-allowed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"));
    client.send("<iq type='set' id='a3' to='example.com'><query xmlns='jabber:iq:register'><username>bill</username><password>NewSecret</password></query></iq>").await;
    assert_eq!(
        client.read_until("/>").await,
        format!("<iq type='result' id='a3' to='{jid}' from='example.com'/>")
    );
    let mut again = Client::connect(&server).await;
    again.secure().await;
    assert!(again.scram(SHA256, "bill", "Calliope").await.is_err());
    again.scram(SHA256, "bill", "NewSecret").await.unwrap();

    client
        .send("<iq type='set' id='a4'><query xmlns='jabber:iq:register'><remove/></query></iq>")
        .await;
    let rest = client.read_to_close().await;
    assert!(
        rest.starts_with(&format!("<iq type='result' id='a4' to='{jid}'/>")),
        "{rest}"
    );
    assert!(rest.contains(&stream_error("not-authorized")), "{rest}");
    assert!(!server.has_user("bill").await);
}

#[tokio::test]
async fn registration_is_not_offered_when_disabled() {
    let server = TestServer::start(|config| config.registration_enabled = false).await;
    let mut client = Client::connect(&server).await;
    let features = client.secure().await;
    assert!(!features.contains("iq-register"), "{features}");
    client
        .send("<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>")
        .await;
    assert!(client
        .read_to_close()
        .await
        .contains(&stream_error("not-authorized")));
}

// ------------------------------------------------------------ shutdown

#[tokio::test]
async fn shutdown_closes_every_stream_with_system_shutdown() {
    let mut server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "pencil").await;
    let (mut bound, jid) = Client::login(&server, "juliet", "pencil", None).await;
    let mut negotiating = Client::connect(&server).await;
    negotiating.open().await;
    server.shutdown().await;
    assert!(bound.read_to_close().await.ends_with("<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"));
    assert!(negotiating.read_to_close().await.ends_with("<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"));
    assert!(server
        .router
        .unbound
        .lock()
        .iter()
        .any(|unbound| unbound.to_string() == jid));
    assert!(
        tokio::net::TcpStream::connect(server.c2s).await.is_err(),
        "still accepting"
    );
}

#[tokio::test]
async fn storage_failure_is_a_temporary_auth_failure() {
    let server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "pencil").await;
    let fake = server.fake_storage.clone().unwrap();
    fake.unavailable
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut client = Client::connect(&server).await;
    client.secure().await;
    assert_eq!(
        client.scram(SHA256, "juliet", "pencil").await.unwrap_err(),
        failure("temporary-auth-failure")
    );
    assert_eq!(
        client.plain("juliet", "pencil").await.unwrap_err(),
        failure("temporary-auth-failure")
    );
    client
        .send("<iq type='set' id='r1'><query xmlns='jabber:iq:register'><username>bill</username><password>Calliope</password></query></iq>")
        .await;
    assert_eq!(
        client.read_until("</iq>").await,
        "<iq id='r1' type='error'><query xmlns='jabber:iq:register'><username>bill</username><password>Calliope</password></query><error type='wait'><internal-server-error xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    );
    // Storage back: the same stream authenticates (temporary failures are not password failures).
    fake.unavailable
        .store(false, std::sync::atomic::Ordering::SeqCst);
    client.scram(SHA256, "juliet", "pencil").await.unwrap();
}
