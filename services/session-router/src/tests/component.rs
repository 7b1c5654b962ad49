//! External components (XEP-0114): their registration and the routing of
//! every address at their domain (`irc.example.com` in the harness).

use super::*;

const ROMEO: &str = "romeo@example.com/orchard";

async fn connect_component(harness: &Harness, node: &str, conn: u64) -> FullJid {
    harness
        .router
        .bind(
            &BareJid::domain_jid("irc.example.com").unwrap(),
            Some(starling_api::COMPONENT_RESOURCE),
            &addr(node, conn),
        )
        .await
        .expect("component registered")
}

#[tokio::test]
async fn every_address_at_the_domain_goes_to_the_component_on_its_node() {
    let mut harness = Harness::new().await;
    connect_component(&harness, CM_OTHER, 70).await;
    for to in [
        "irc.example.com",
        "#chan%irc.net@irc.example.com/nick",
        "irc.example.com/x",
    ] {
        let message = format!("<message from='romeo@example.com/orchard' to='{to}' type='chat' id='c1'><body>hi</body></message>");
        harness.send(ROMEO, CM_TEST, 10, &message).await;
        assert_eq!(harness.seen_on_other(), vec![to_conn(70, &message)]);
    }
    let iq = "<iq from='romeo@example.com/orchard' to='irc.example.com' type='get' id='v1'><query xmlns='jabber:iq:version'/></iq>";
    harness.send(ROMEO, CM_TEST, 10, iq).await;
    assert_eq!(harness.seen_on_other(), vec![to_conn(70, iq)]);
    // Presence the presence service hands on (a subscription request).
    let subscribe = "<presence from='romeo@example.com' to='irc.example.com' type='subscribe'/>";
    harness.send_from_server(subscribe).await;
    assert_eq!(harness.seen_on_other(), vec![to_conn(70, subscribe)]);
    assert_eq!(harness.seen_on_test(), Vec::new());
}

#[tokio::test]
async fn without_a_component_the_sender_gets_service_unavailable_but_never_for_an_error() {
    let mut harness = Harness::new().await;
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='bot@irc.example.com' type='chat' id='m1'><body>hi</body></message>")
        .await;
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='bot@irc.example.com' type='error' id='m2'/>")
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            10,
            "<message id='m1' to='romeo@example.com/orchard' from='bot@irc.example.com' type='error'><body>hi</body><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        )]
    );
    // A probe or unavailable the server sent on a user's behalf is not answered.
    harness
        .send_from_server("<presence from='romeo@example.com' to='irc.example.com' type='probe'/>")
        .await;
    harness.assert_nothing_delivered();
}

#[tokio::test]
async fn a_newer_component_connection_replaces_the_older_and_only_its_own_unbind_counts() {
    let mut harness = Harness::new().await;
    let jid = connect_component(&harness, CM_TEST, 70).await;
    connect_component(&harness, CM_OTHER, 71).await;
    assert_eq!(
        harness.seen_on_test(),
        vec![Seen::Close(
            70,
            StreamErrorCondition::Conflict,
            Some("replaced by a new session".into())
        )]
    );
    // The replaced connection's late unbind leaves its successor in place.
    harness
        .router
        .unbind(&jid, &addr(CM_TEST, 70))
        .await
        .unwrap();
    let message = "<message from='romeo@example.com/orchard' to='irc.example.com' id='n1'><body>x</body></message>";
    harness.send(ROMEO, CM_TEST, 10, message).await;
    assert_eq!(harness.seen_on_other(), vec![to_conn(71, message)]);
    harness
        .router
        .unbind(&jid, &addr(CM_OTHER, 71))
        .await
        .unwrap();
    assert!(harness
        .registry
        .sessions(jid.bare())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn only_configured_domains_register_and_disco_items_list_them() {
    let harness = Harness::new().await;
    let refused = harness
        .router
        .bind(
            &BareJid::domain_jid("other.example.com").unwrap(),
            Some(starling_api::COMPONENT_RESOURCE),
            &addr(CM_TEST, 1),
        )
        .await;
    assert_eq!(refused, Err(starling_api::BindError::NotAllowed));
    let mut harness = harness;
    harness
        .send(ROMEO, CM_TEST, 10, "<iq from='romeo@example.com/orchard' to='example.com' type='get' id='d1'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            10,
            "<iq type='result' id='d1' to='romeo@example.com/orchard' from='example.com'><query xmlns='http://jabber.org/protocol/disco#items'><item jid='irc.example.com'/></query></iq>"
        )]
    );
}
