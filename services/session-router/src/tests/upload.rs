//! The HTTP File Upload service (XEP-0363) as the router answers it: disco,
//! slots, and every refusal of section 5, as literal XML.

use std::time::Duration;

use starling_api::upload::token_matches;

use super::*;
use crate::upload::UploadSettings;

const JULIET: &str = "juliet@example.com/balcony";

fn settings() -> UploadSettings {
    UploadSettings {
        domain: "upload.example.com".into(),
        max_file_bytes: 1000,
        quota_bytes: 1500,
        expire_after: Duration::from_secs(3600),
        slot_validity: Duration::from_secs(60),
        public_url: "https://files.example.com".into(),
    }
}

async fn harness() -> Harness {
    Harness::with_options(HarnessOptions {
        upload: Some(settings()),
        ..HarnessOptions::default()
    })
    .await
}

async fn ask(harness: &mut Harness, iq: &str) -> String {
    harness.send(JULIET, CM_TEST, 1, iq).await;
    match harness.seen_on_test().as_slice() {
        [Seen::Stanza(_, xml)] => xml.clone(),
        other => panic!("expected one reply, got {other:?}"),
    }
}

fn request(id: &str, filename: &str, size: &str) -> String {
    format!("<iq from='{JULIET}' to='upload.example.com' id='{id}' type='get'><request xmlns='urn:xmpp:http:upload:0' filename='{filename}' size='{size}' content-type='image/jpeg'/></iq>")
}

#[tokio::test]
async fn the_service_is_in_the_server_items_and_answers_disco_info() {
    let mut harness = harness().await;
    assert_eq!(
        ask(&mut harness, "<iq from='juliet@example.com/balcony' to='example.com' id='i1' type='get'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>").await,
        "<iq type='result' id='i1' to='juliet@example.com/balcony' from='example.com'><query xmlns='http://jabber.org/protocol/disco#items'><item jid='upload.example.com' name='HTTP File Upload'/><item jid='irc.example.com'/></query></iq>"
    );
    let info = ask(&mut harness, "<iq from='juliet@example.com/balcony' to='upload.example.com' id='i2' type='get'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>").await;
    assert!(
        info.contains("<feature var='urn:xmpp:http:upload:0'/>"),
        "{info}"
    );
    assert!(
        info.contains("<field var='max-file-size'><value>1000</value></field>"),
        "{info}"
    );
    // Off: no upload item; the harness's component stays.
    let mut off = Harness::new().await;
    off.send(JULIET, CM_TEST, 1, "<iq from='juliet@example.com/balcony' to='example.com' id='i3' type='get'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>").await;
    assert_eq!(
        off.seen_on_test(),
        vec![to_conn(1, "<iq type='result' id='i3' to='juliet@example.com/balcony' from='example.com'><query xmlns='http://jabber.org/protocol/disco#items'><item jid='irc.example.com'/></query></iq>")]
    );
}

#[tokio::test]
async fn a_granted_slot_is_stored_with_its_token_hash() {
    let mut harness = harness().await;
    let reply = ask(&mut harness, &request("s1", "../my juliet.jpg", "600")).await;
    let prefix = "<iq type='result' id='s1' to='juliet@example.com/balcony' from='upload.example.com'><slot xmlns='urn:xmpp:http:upload:0'><put url='https://files.example.com/upload/";
    assert!(reply.starts_with(prefix), "{reply}");
    let id = &reply[prefix.len()..prefix.len() + 32];
    let url = format!("https://files.example.com/upload/{id}/my%20juliet.jpg");
    let token_start = reply.find("Bearer ").unwrap() + 7;
    let token = &reply[token_start..token_start + 64];
    assert_eq!(
        reply,
        format!("{prefix}{id}/my%20juliet.jpg'><header name='Authorization'>Bearer {token}</header></put><get url='{url}'/></slot></iq>")
    );
    let slot = harness.storage.upload_slot(id).await.unwrap().unwrap();
    assert_eq!(slot.file_name, "my juliet.jpg");
    assert_eq!(slot.size, 600);
    assert_eq!(slot.content_type.as_deref(), Some("image/jpeg"));
    assert!(token_matches(token, &slot.token_hash));
    assert_eq!(
        harness.metric("starling_upload_slots_total{outcome=\"granted\"}"),
        1.0
    );
}

#[tokio::test]
async fn refusals_carry_the_section_5_errors() {
    let mut harness = harness().await;
    assert_eq!(
        ask(&mut harness, &request("t1", "big.jpg", "1001")).await,
        "<iq id='t1' to='juliet@example.com/balcony' from='upload.example.com' type='error'><request xmlns='urn:xmpp:http:upload:0' filename='big.jpg' size='1001' content-type='image/jpeg'/><error type='modify'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>File too large. The maximum file size is 1000 bytes</text><file-too-large xmlns='urn:xmpp:http:upload:0'><max-file-size>1000</max-file-size></file-too-large></error></iq>"
    );
    ask(&mut harness, &request("q1", "a.jpg", "1000")).await;
    // The fixed clock: the pending slot stops counting 60 s after it.
    assert_eq!(
        ask(&mut harness, &request("q2", "b.jpg", "600")).await,
        "<iq id='q2' to='juliet@example.com/balcony' from='upload.example.com' type='error'><request xmlns='urn:xmpp:http:upload:0' filename='b.jpg' size='600' content-type='image/jpeg'/><error type='wait'><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>Quota reached: 1000 of 1500 bytes in use</text><retry xmlns='urn:xmpp:http:upload:0' stamp='2002-09-10T23:09:26Z'/></error></iq>"
    );
    assert_eq!(
        ask(&mut harness, &request("b1", "a.jpg", "-5")).await,
        "<iq id='b1' to='juliet@example.com/balcony' from='upload.example.com' type='error'><request xmlns='urn:xmpp:http:upload:0' filename='a.jpg' size='-5' content-type='image/jpeg'/><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>the size is not a number of bytes</text></error></iq>"
    );
    assert!(ask(&mut harness, "<iq from='juliet@example.com/balcony' to='upload.example.com' id='c1' type='get'><request xmlns='urn:xmpp:http:upload:0' filename='a' size='1' content-type='nonsense'/></iq>").await.contains("<bad-request"));
    assert_eq!(
        ask(&mut harness, "<iq from='juliet@example.com/balcony' to='someone@upload.example.com' id='n1' type='get'><request xmlns='urn:xmpp:http:upload:0' filename='a' size='1'/></iq>").await,
        "<iq id='n1' to='juliet@example.com/balcony' from='someone@upload.example.com' type='error'><request xmlns='urn:xmpp:http:upload:0' filename='a' size='1'/><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    );
    for (outcome, count) in [
        ("too_large", 1.0),
        ("quota", 1.0),
        ("bad_request", 2.0),
        ("granted", 1.0),
    ] {
        assert_eq!(
            harness.metric(&format!(
                "starling_upload_slots_total{{outcome=\"{outcome}\"}}"
            )),
            count,
            "{outcome}"
        );
    }
}

#[tokio::test]
async fn only_local_sessions_get_slots() {
    let mut harness = harness().await;
    harness
        .send_from_server("<iq from='example.com' to='upload.example.com' id='x1' type='get'><request xmlns='urn:xmpp:http:upload:0' filename='a' size='1'/></iq>")
        .await;
    harness.assert_nothing_delivered();
    assert_eq!(
        harness.metric("starling_upload_slots_total{outcome=\"not_allowed\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_message_to_the_upload_service_is_service_unavailable_even_when_federating() {
    // The upload domain is a service of this deployment, not another
    // server: with federation on, a message to it must not go over s2s.
    let mut harness = Harness::with_options(HarnessOptions {
        upload: Some(settings()),
        s2s: crate::remote::S2sPolicy {
            enabled: true,
            ..Default::default()
        },
        ..HarnessOptions::default()
    })
    .await;
    harness.bind(JULIET, CM_TEST, 1).await;
    let message = format!(
        "<message from='{JULIET}' to='upload.example.com' id='u1'><body>hi</body></message>"
    );
    let reply = ask(&mut harness, &message).await;
    assert!(
        reply.contains("type='error'") && reply.contains("<service-unavailable"),
        "{reply}"
    );
    assert_eq!(harness.seen_on_other(), Vec::new());
}
