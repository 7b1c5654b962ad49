//! Remote domains (RFC 6120 section 10.4): the s2s policy's immediate
//! `remote-server-not-found`, and the per-domain owner of the outbound
//! stream, claimed for a node and reached over the bus at
//! [`starling_api::S2S_OUTBOUND_CONN`].

use super::*;
use starling_api::S2S_OUTBOUND_CONN;

const ROMEO: &str = "romeo@example.com/orchard";

fn federating(allow: &[&str], deny: &[&str]) -> HarnessOptions {
    HarnessOptions {
        s2s: crate::remote::S2sPolicy {
            enabled: true,
            allow: allow.iter().map(|domain| domain.to_string()).collect(),
            deny: deny.iter().map(|domain| domain.to_string()).collect(),
        },
        ..HarnessOptions::default()
    }
}

#[tokio::test]
async fn federation_off_answers_remote_server_not_found_but_never_an_error() {
    let mut harness = Harness::new().await;
    harness.bind(ROMEO, CM_TEST, 10).await;
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.net' type='chat' id='m1'><body>hi</body></message>")
        .await;
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.net' type='error' id='m2'/>")
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            10,
            "<message id='m1' to='romeo@example.com/orchard' from='juliet@example.net' type='error'><body>hi</body><error type='cancel'><remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        )]
    );
    assert_eq!(harness.metric("starling_s2s_policy_refused_total"), 2.0);
}

#[tokio::test]
async fn a_denied_or_not_allowed_domain_is_refused_at_once() {
    let mut harness = Harness::with_options(federating(
        &["partner.example", "evil.example"],
        &["evil.example"],
    ))
    .await;
    harness.bind(ROMEO, CM_TEST, 10).await;
    for domain in ["evil.example", "example.net"] {
        let message =
            format!("<message from='romeo@example.com/orchard' to='juliet@{domain}' id='d1'/>");
        harness.send(ROMEO, CM_TEST, 10, &message).await;
        assert_eq!(
            harness.seen_on_test(),
            vec![to_conn(
                10,
                &format!("<message id='d1' to='romeo@example.com/orchard' from='juliet@{domain}' type='error'><error type='cancel'><remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
            )]
        );
    }
    let allowed = "<message from='romeo@example.com/orchard' to='juliet@partner.example' id='a1'/>";
    harness.send(ROMEO, CM_TEST, 10, allowed).await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(S2S_OUTBOUND_CONN, allowed)]
    );
}

#[tokio::test]
async fn the_first_sender_claims_the_domain_for_its_node_and_the_others_follow() {
    let mut harness = Harness::with_options(federating(&[], &[])).await;
    harness.bind(ROMEO, CM_TEST, 10).await;
    harness
        .bind("benvolio@example.com/street", CM_OTHER, 20)
        .await;
    let first = "<message from='romeo@example.com/orchard' to='juliet@example.net' id='f1'/>";
    harness.send(ROMEO, CM_TEST, 10, first).await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(S2S_OUTBOUND_CONN, first)]
    );
    // The other node's user reaches the same domain through the owner.
    let second =
        "<message from='benvolio@example.com/street' to='juliet@example.net/balcony' id='f2'/>";
    harness
        .send("benvolio@example.com/street", CM_OTHER, 20, second)
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(S2S_OUTBOUND_CONN, second)]
    );
    assert_eq!(harness.seen_on_other(), Vec::new());
    // Presence the presence service sends on a user's behalf goes there too.
    let subscribe =
        "<presence from='benvolio@example.com' to='juliet@example.net' type='subscribe'/>";
    harness.send_from_server(subscribe).await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(S2S_OUTBOUND_CONN, subscribe)]
    );
    let owners = harness
        .registry
        .sessions(&BareJid::domain_jid("example.net").unwrap())
        .await
        .unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(
        owners[0].jid.to_string(),
        format!("example.net/s2s:{CM_TEST}")
    );
    // The owner releases the domain when its stream ends; the next sender's
    // node claims it.
    harness
        .router
        .unbind(&owners[0].jid, &owners[0].addr)
        .await
        .unwrap();
    let third = "<message from='benvolio@example.com/street' to='juliet@example.net' id='f3'/>";
    harness
        .send("benvolio@example.com/street", CM_OTHER, 20, third)
        .await;
    assert_eq!(
        harness.seen_on_other(),
        vec![to_conn(S2S_OUTBOUND_CONN, third)]
    );
}

#[tokio::test]
async fn an_owner_whose_node_is_gone_is_taken_over() {
    let mut harness = Harness::with_options(federating(&[], &[])).await;
    harness.bind(ROMEO, CM_TEST, 10).await;
    // A claim by a node with no subscriber (it died, the janitor has not run).
    let stale = BareJid::domain_jid("example.net")
        .unwrap()
        .with_resource("s2s:cm-dead")
        .unwrap();
    harness
        .registry
        .bind(starling_api::SessionRecord::new(
            stale.clone(),
            addr("cm-dead", S2S_OUTBOUND_CONN),
        ))
        .await
        .unwrap();
    let message = "<message from='romeo@example.com/orchard' to='juliet@example.net' id='t1'/>";
    harness.send(ROMEO, CM_TEST, 10, message).await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(S2S_OUTBOUND_CONN, message)]
    );
    assert!(harness.registry.session(&stale).await.unwrap().is_none());
}

#[tokio::test]
async fn what_the_server_sends_for_an_account_with_no_session_goes_out_through_a_live_node() {
    let mut harness = Harness::with_options(HarnessOptions {
        live_node: Some(CM_OTHER),
        ..federating(&[], &[])
    })
    .await;
    // Benvolio's last session ended: its unavailable presence to a remote
    // contact has no node of his to go through; a live one carries it.
    let gone =
        "<presence from='benvolio@example.com/street' to='juliet@example.net' type='unavailable'/>";
    harness.send_from_server(gone).await;
    assert_eq!(
        harness.seen_on_other(),
        vec![to_conn(S2S_OUTBOUND_CONN, gone)]
    );
    let owners = harness
        .registry
        .sessions(&BareJid::domain_jid("example.net").unwrap())
        .await
        .unwrap();
    assert_eq!(
        owners[0].jid.to_string(),
        format!("example.net/s2s:{CM_OTHER}")
    );
}
