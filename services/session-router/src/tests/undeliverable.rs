//! Stanzas published to a connection that vanished (a race with disconnect).

use starling_api::{RouterApi, SessionAddr};

fn failed(node: &str, conn: u64) -> SessionAddr {
    SessionAddr {
        node: node.to_string(),
        conn,
    }
}

use super::*;

#[tokio::test]
async fn a_message_for_a_vanished_full_jid_goes_to_the_other_resources() {
    let mut harness = Harness::new().await;
    harness
        .online("juliet@example.com/balcony", CM_TEST, 1, 5)
        .await;
    harness
        .online("juliet@example.com/chamber", CM_OTHER, 2, 0)
        .await;
    // The balcony connection vanished on cm-test before its unbind arrived:
    // it is still registered, with the highest priority, yet must not get it.
    let message = "<message from='romeo@example.com/orchard' to='juliet@example.com/balcony' type='chat' id='v1'><body>still?</body></message>";
    harness
        .router
        .undeliverable(xml(message), &failed(CM_TEST, 1))
        .await
        .unwrap();
    assert_eq!(harness.seen_on_test(), Vec::new());
    assert_eq!(harness.seen_on_other(), vec![to_conn(2, message)]);
}

#[tokio::test]
async fn a_message_with_nobody_else_online_goes_offline() {
    let mut harness = Harness::new().await;
    harness
        .online("juliet@example.com/balcony", CM_TEST, 1, 5)
        .await;
    harness
        .router
        .undeliverable(xml("<message from='romeo@example.com/orchard' to='juliet@example.com/balcony' type='chat' id='v2'><body>later</body></message>"), &failed(CM_TEST, 1))
        .await
        .unwrap();
    harness.assert_nothing_delivered();
    assert_eq!(
        harness.offline_of("juliet@example.com").await,
        vec!["<message from='romeo@example.com/orchard' to='juliet@example.com/balcony' type='chat' id='v2'><body>later</body><delay xmlns='urn:xmpp:delay' from='example.com' stamp='2002-09-10T23:08:25Z'/></message>"]
    );
}

#[tokio::test]
async fn a_bare_jid_message_is_routed_again() {
    let mut harness = Harness::new().await;
    harness
        .online("juliet@example.com/chamber", CM_OTHER, 2, 0)
        .await;
    let message = "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='v3'><body>again</body></message>";
    harness
        .router
        .undeliverable(xml(message), &failed(CM_TEST, 9))
        .await
        .unwrap();
    assert_eq!(harness.seen_on_other(), vec![to_conn(2, message)]);
}

#[tokio::test]
async fn an_iq_request_is_answered_service_unavailable() {
    let mut harness = Harness::new().await;
    harness.bind("romeo@example.com/orchard", CM_TEST, 7).await;
    harness
        .router
        .undeliverable(xml("<iq from='romeo@example.com/orchard' to='juliet@example.com/balcony' id='v4' type='get'><ping xmlns='urn:xmpp:ping'/></iq>"), &failed(CM_TEST, 1))
        .await
        .unwrap();
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(7, "<iq id='v4' to='romeo@example.com/orchard' from='juliet@example.com/balcony' type='error'><ping xmlns='urn:xmpp:ping'/><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")]
    );
}

#[tokio::test]
async fn presence_iq_results_and_foreign_messages_are_dropped() {
    let mut harness = Harness::new().await;
    harness.bind("romeo@example.com/orchard", CM_TEST, 7).await;
    for stanza in [
        "<presence from='romeo@example.com/orchard' to='juliet@example.com/balcony'/>",
        "<iq from='romeo@example.com/orchard' to='juliet@example.com/balcony' id='v5' type='result'/>",
        "<message from='juliet@example.com/balcony' to='mercutio@example.net/x' type='chat'/>",
    ] {
        harness.router.undeliverable(xml(stanza), &failed(CM_TEST, 1)).await.unwrap();
    }
    harness.assert_nothing_delivered();
    assert_eq!(harness.presence.take_calls(), Vec::new());
}

#[tokio::test]
async fn a_bare_jid_message_never_returns_to_the_connection_that_failed() {
    let mut harness = Harness::new().await;
    // The registry still lists the vanished connection (its unbind has not
    // landed): the message must go offline, not back to it again and again.
    harness
        .online("juliet@example.com/balcony", CM_TEST, 1, 5)
        .await;
    let message = "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='v6'><body>loop?</body></message>";
    harness
        .router
        .undeliverable(xml(message), &failed(CM_TEST, 1))
        .await
        .unwrap();
    harness.assert_nothing_delivered();
    assert_eq!(harness.offline_of("juliet@example.com").await.len(), 1);
}
