//! Message routing, RFC 6121 section 8.5, and offline storage (XEP-0160).

use super::*;

const ROMEO: &str = "romeo@example.com/orchard";

const SERVICE_UNAVAILABLE: &str =
    "<error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>";

#[tokio::test]
async fn bare_jid_message_goes_to_the_highest_priority_resources() {
    let mut harness = Harness::new().await;
    harness
        .online("juliet@example.com/balcony", CM_TEST, 1, 5)
        .await;
    harness
        .online("juliet@example.com/chamber", CM_TEST, 2, 5)
        .await;
    harness
        .online("juliet@example.com/garden", CM_OTHER, 3, 1)
        .await;
    harness
        .bind("juliet@example.com/connected", CM_OTHER, 4)
        .await;

    let message = "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='m1'><body>Wherefore art thou?</body></message>";
    harness.send(ROMEO, CM_TEST, 10, message).await;

    assert_eq!(harness.seen_on_test(), vec![to_conns(&[1, 2], message)]);
    assert_eq!(harness.seen_on_other(), Vec::new());
    assert!(harness.offline_of("juliet@example.com").await.is_empty());
}

#[tokio::test]
async fn normal_message_without_type_follows_the_same_rule() {
    let mut harness = Harness::new().await;
    harness
        .online("juliet@example.com/balcony", CM_TEST, 1, 0)
        .await;
    harness
        .online("juliet@example.com/chamber", CM_OTHER, 2, 7)
        .await;

    let message = "<message from='romeo@example.com/orchard' to='juliet@example.com' id='m2'><subject>Hi</subject></message>";
    harness.send(ROMEO, CM_TEST, 10, message).await;

    assert_eq!(harness.seen_on_test(), Vec::new());
    assert_eq!(harness.seen_on_other(), vec![to_conn(2, message)]);
}

#[tokio::test]
async fn fan_out_publishes_one_envelope_per_node() {
    let mut harness = Harness::new().await;
    harness.online("juliet@example.com/a", CM_TEST, 1, 0).await;
    harness.online("juliet@example.com/b", CM_TEST, 2, 0).await;
    harness.online("juliet@example.com/c", CM_OTHER, 3, 0).await;

    let message = "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='f1'><body>all of you</body></message>";
    harness.send(ROMEO, CM_TEST, 10, message).await;

    // 3 sessions on 2 nodes => exactly 2 publishes.
    assert_eq!(harness.seen_on_test(), vec![to_conns(&[1, 2], message)]);
    assert_eq!(harness.seen_on_other(), vec![to_conn(3, message)]);
}

#[tokio::test]
async fn headline_goes_to_every_non_negative_resource() {
    let mut harness = Harness::new().await;
    harness
        .online("juliet@example.com/balcony", CM_TEST, 1, 5)
        .await;
    harness
        .online("juliet@example.com/chamber", CM_TEST, 2, 0)
        .await;
    harness
        .online("juliet@example.com/hidden", CM_OTHER, 3, -1)
        .await;

    let headline = "<message from='example.com' to='juliet@example.com' type='headline'><body>News</body></message>";
    harness.send_from_server(headline).await;

    assert_eq!(harness.seen_on_test(), vec![to_conns(&[1, 2], headline)]);
    assert_eq!(harness.seen_on_other(), Vec::new());
}

#[tokio::test]
async fn negative_priority_gets_no_bare_jid_messages_but_full_jid_ones() {
    let mut harness = Harness::new().await;
    harness
        .online("juliet@example.com/balcony", CM_TEST, 1, -1)
        .await;

    let to_bare = "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='n1'><body>bare</body></message>";
    harness.send(ROMEO, CM_TEST, 10, to_bare).await;
    harness.assert_nothing_delivered();
    assert_eq!(
        harness.offline_of("juliet@example.com").await,
        vec!["<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='n1'><body>bare</body><delay xmlns='urn:xmpp:delay' from='example.com' stamp='2002-09-10T23:08:25Z'/></message>"]
    );

    let to_full = "<message from='romeo@example.com/orchard' to='juliet@example.com/balcony' type='chat' id='n2'><body>full</body></message>";
    harness.send(ROMEO, CM_TEST, 10, to_full).await;
    assert_eq!(harness.seen_on_test(), vec![to_conn(1, to_full)]);
}

#[tokio::test]
async fn chat_and_normal_go_offline_with_a_delay_stamp() {
    let mut harness = Harness::new().await;
    // Connected but not available: not a recipient of bare JID messages.
    harness
        .bind("juliet@example.com/connecting", CM_TEST, 1)
        .await;

    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='o1'><body>first</body></message>")
        .await;
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com' id='o2'><body>second</body></message>")
        .await;

    harness.assert_nothing_delivered();
    assert_eq!(
        harness.offline_of("juliet@example.com").await,
        vec![
            "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='o1'><body>first</body><delay xmlns='urn:xmpp:delay' from='example.com' stamp='2002-09-10T23:08:25Z'/></message>",
            "<message from='romeo@example.com/orchard' to='juliet@example.com' id='o2'><body>second</body><delay xmlns='urn:xmpp:delay' from='example.com' stamp='2002-09-10T23:08:25Z'/></message>",
        ]
    );
}

#[tokio::test]
async fn offline_headline_and_error_are_dropped() {
    let mut harness = Harness::new().await;
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com' type='headline'><body>News</body></message>")
        .await;
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com' type='error' id='e1'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
        .await;
    harness.assert_nothing_delivered();
    assert!(harness.offline_of("juliet@example.com").await.is_empty());
}

#[tokio::test]
async fn error_message_to_bare_jid_is_ignored_even_when_online() {
    let mut harness = Harness::new().await;
    harness
        .online("juliet@example.com/balcony", CM_OTHER, 1, 0)
        .await;
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com' type='error' id='e2'><error type='cancel'><gone xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
        .await;
    harness.assert_nothing_delivered();
}

#[tokio::test]
async fn groupchat_to_a_bare_jid_is_refused() {
    let mut harness = Harness::new().await;
    harness
        .online("juliet@example.com/balcony", CM_OTHER, 1, 0)
        .await;
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com' type='groupchat' id='g1'><body>hi all</body></message>")
        .await;
    assert_eq!(harness.seen_on_other(), Vec::new());
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            10,
            &format!("<message id='g1' to='romeo@example.com/orchard' from='juliet@example.com' type='error'><body>hi all</body>{SERVICE_UNAVAILABLE}</message>")
        )]
    );
}

#[tokio::test]
async fn message_to_an_unknown_account_is_service_unavailable() {
    let mut harness = Harness::new().await;
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='ghost@example.com' type='chat' id='u1'><body>anyone?</body></message>")
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            10,
            &format!("<message id='u1' to='romeo@example.com/orchard' from='ghost@example.com' type='error'><body>anyone?</body>{SERVICE_UNAVAILABLE}</message>")
        )]
    );
    assert!(harness.offline_of("ghost@example.com").await.is_empty());

    // Also through a full JID of the unknown account.
    harness
        .send(
            ROMEO,
            CM_TEST,
            10,
            "<message from='romeo@example.com/orchard' to='ghost@example.com/desk' id='u2'/>",
        )
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            10,
            &format!("<message id='u2' to='romeo@example.com/orchard' from='ghost@example.com/desk' type='error'>{SERVICE_UNAVAILABLE}</message>")
        )]
    );
}

#[tokio::test]
async fn a_full_offline_queue_bounces_the_message() {
    let mut harness = Harness::with_options(HarnessOptions {
        offline_limit: 1,
        ..Default::default()
    })
    .await;
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='q1'><body>one</body></message>")
        .await;
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='q2'><body>two</body></message>")
        .await;
    assert_eq!(harness.offline_of("juliet@example.com").await.len(), 1);
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            10,
            &format!("<message id='q2' to='romeo@example.com/orchard' from='juliet@example.com' type='error'><body>two</body>{SERVICE_UNAVAILABLE}</message>")
        )]
    );
}

#[tokio::test]
async fn a_storage_failure_bounces_with_internal_server_error() {
    let mut harness = Harness::with_options(HarnessOptions {
        storage_down: true,
        ..Default::default()
    })
    .await;
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='s1'><body>hello</body></message>")
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            10,
            "<message id='s1' to='romeo@example.com/orchard' from='juliet@example.com' type='error'><body>hello</body><error type='wait'><internal-server-error xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        )]
    );
}

#[tokio::test]
async fn message_to_a_missing_full_jid_falls_back_to_the_bare_jid() {
    let mut harness = Harness::new().await;
    harness
        .online("juliet@example.com/balcony", CM_OTHER, 1, 1)
        .await;

    // normal, chat and headline are treated as if sent to the bare JID (8.5.3.2.1).
    let chat = "<message from='romeo@example.com/orchard' to='juliet@example.com/gone' type='chat' id='x1'><body>still there?</body></message>";
    let headline = "<message from='romeo@example.com/orchard' to='juliet@example.com/gone' type='headline'><body>News</body></message>";
    harness.send(ROMEO, CM_TEST, 10, chat).await;
    harness.send(ROMEO, CM_TEST, 10, headline).await;
    assert_eq!(
        harness.seen_on_other(),
        vec![to_conn(1, chat), to_conn(1, headline)]
    );

    // groupchat => service-unavailable; error => dropped.
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com/gone' type='groupchat' id='x2'><body>room</body></message>")
        .await;
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com/gone' type='error' id='x3'/>")
        .await;
    assert_eq!(harness.seen_on_other(), Vec::new());
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            10,
            &format!("<message id='x2' to='romeo@example.com/orchard' from='juliet@example.com/gone' type='error'><body>room</body>{SERVICE_UNAVAILABLE}</message>")
        )]
    );
}

#[tokio::test]
async fn message_to_a_missing_full_jid_with_nobody_online_goes_offline() {
    let mut harness = Harness::new().await;
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com/gone' type='chat' id='y1'><body>later</body></message>")
        .await;
    harness.assert_nothing_delivered();
    assert_eq!(
        harness.offline_of("juliet@example.com").await,
        vec!["<message from='romeo@example.com/orchard' to='juliet@example.com/gone' type='chat' id='y1'><body>later</body><delay xmlns='urn:xmpp:delay' from='example.com' stamp='2002-09-10T23:08:25Z'/></message>"]
    );
}

#[tokio::test]
async fn groupchat_to_an_existing_full_jid_is_delivered() {
    let mut harness = Harness::new().await;
    harness
        .bind("juliet@example.com/balcony", CM_OTHER, 1)
        .await;
    let groupchat = "<message from='room@conference.example.net/romeo' to='juliet@example.com/balcony' type='groupchat' id='r1'><body>hi room</body></message>";
    harness.send_from_server(groupchat).await;
    assert_eq!(harness.seen_on_other(), vec![to_conn(1, groupchat)]);
}

#[tokio::test]
async fn message_without_to_goes_to_the_senders_own_account() {
    let mut harness = Harness::new().await;
    harness
        .online("romeo@example.com/orchard", CM_TEST, 10, 0)
        .await;
    harness
        .online("romeo@example.com/mobile", CM_OTHER, 11, 0)
        .await;

    harness.send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' id='self1'><body>note to self</body></message>").await;

    let stamped = "<message from='romeo@example.com/orchard' id='self1' to='romeo@example.com'><body>note to self</body></message>";
    assert_eq!(harness.seen_on_test(), vec![to_conn(10, stamped)]);
    assert_eq!(harness.seen_on_other(), vec![to_conn(11, stamped)]);
}

#[tokio::test]
async fn a_missing_from_is_stamped_with_the_session() {
    let mut harness = Harness::new().await;
    harness
        .online("juliet@example.com/balcony", CM_OTHER, 1, 0)
        .await;
    harness
        .send(
            ROMEO,
            CM_TEST,
            10,
            "<message to='juliet@example.com' type='chat'><body>hi</body></message>",
        )
        .await;
    assert_eq!(
        harness.seen_on_other(),
        vec![to_conn(1, "<message to='juliet@example.com' type='chat' from='romeo@example.com/orchard'><body>hi</body></message>")]
    );
}

#[tokio::test]
async fn message_to_the_server_is_service_unavailable_and_errors_are_ignored() {
    let mut harness = Harness::new().await;
    harness.send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='example.com' id='d1'><body>admin?</body></message>").await;
    harness.send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='example.com/admin' type='chat' id='d2'/>").await;
    harness
        .send(
            ROMEO,
            CM_TEST,
            10,
            "<message from='romeo@example.com/orchard' to='example.com' type='error' id='d3'/>",
        )
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![
            to_conn(10, &format!("<message id='d1' to='romeo@example.com/orchard' from='example.com' type='error'><body>admin?</body>{SERVICE_UNAVAILABLE}</message>")),
            to_conn(10, &format!("<message id='d2' to='romeo@example.com/orchard' from='example.com/admin' type='error'>{SERVICE_UNAVAILABLE}</message>")),
        ]
    );
}

#[tokio::test]
async fn message_to_a_remote_domain_is_remote_server_not_found() {
    let mut harness = Harness::new().await;
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='mercutio@example.net' type='chat' id='r1'><body>hey</body></message>")
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            10,
            "<message id='r1' to='romeo@example.com/orchard' from='mercutio@example.net' type='error'><body>hey</body><error type='cancel'><remote-server-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        )]
    );
}

#[tokio::test]
async fn message_to_a_malformed_jid_is_jid_malformed() {
    let mut harness = Harness::new().await;
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@@example.com' id='j1'><body>hey</body></message>")
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            10,
            "<message id='j1' to='romeo@example.com/orchard' from='juliet@@example.com' type='error'><body>hey</body><error type='modify'><jid-malformed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
        )]
    );
}

#[tokio::test]
async fn a_node_without_subscriber_falls_back_to_offline_storage() {
    let mut harness = Harness::new().await;
    harness
        .online("juliet@example.com/balcony", "cm-dead", 1, 0)
        .await;
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='z1'><body>are you there</body></message>")
        .await;
    harness.assert_nothing_delivered();
    assert_eq!(
        harness.offline_of("juliet@example.com").await,
        vec!["<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='z1'><body>are you there</body><delay xmlns='urn:xmpp:delay' from='example.com' stamp='2002-09-10T23:08:25Z'/></message>"]
    );
}

#[tokio::test]
async fn a_session_keeps_its_order() {
    let mut harness = Harness::new().await;
    harness
        .online("juliet@example.com/balcony", CM_OTHER, 1, 0)
        .await;
    for number in 0..200 {
        harness
            .send(ROMEO, CM_TEST, 10, &format!("<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='{number}'/>"))
            .await;
    }
    let received: Vec<Seen> = harness.seen_on_other();
    let expected: Vec<Seen> = (0..200)
        .map(|number| to_conn(1, &format!("<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='{number}'/>")))
        .collect();
    assert_eq!(received, expected);
}
