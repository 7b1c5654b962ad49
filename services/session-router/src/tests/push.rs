//! Push notifications (XEP-0357): enable and disable, the notification to
//! the app server (the harness's component, `irc.example.com`) for a message
//! stored offline, and an app server's error disabling the registration.

use super::*;

const JULIET: &str = "juliet@example.com/phone";
const ROMEO: &str = "romeo@example.com/orchard";

/// Juliet, bound but not available, enables push to the component; the
/// component is connected on the other node.
async fn enabled(harness: &mut Harness, node: &str) {
    harness.bind(JULIET, CM_TEST, 1).await;
    harness
        .router
        .bind(
            &BareJid::domain_jid("irc.example.com").unwrap(),
            Some(starling_api::COMPONENT_RESOURCE),
            &addr(CM_OTHER, 70),
        )
        .await
        .expect("component registered");
    let enable = format!("<iq from='{JULIET}' id='e1' type='set'><enable xmlns='urn:xmpp:push:0' jid='irc.example.com' node='{node}'/></iq>");
    harness.send(JULIET, CM_TEST, 1, &enable).await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            1,
            &format!("<iq type='result' id='e1' to='{JULIET}'/>")
        )]
    );
}

/// The one stanza the component received, as XML.
fn notification(harness: &mut Harness) -> String {
    match harness.seen_on_other().as_slice() {
        [Seen::Stanza(recipients, xml)] if recipients == &vec![Recipient::conn(70)] => xml.clone(),
        other => panic!("expected one notification, got {other:?}"),
    }
}

#[tokio::test]
async fn an_offline_message_notifies_the_app_server_without_its_body() {
    let mut harness = Harness::new().await;
    enabled(&mut harness, "n1").await;
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='m1'><body>secret words</body></message>")
        .await;
    let xml = notification(&mut harness);
    assert!(
        xml.starts_with("<iq type='set' from='juliet@example.com' to='irc.example.com' id='push-"),
        "{xml}"
    );
    assert!(xml.ends_with("<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n1'><item><notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field><field var='message-count'><value>1</value></field><field var='last-message-sender'><value>romeo@example.com/orchard</value></field></x></notification></item></publish></pubsub></iq>"), "{xml}");
    assert!(!xml.contains("secret words"));
    assert_eq!(
        harness.metric("starling_push_notifications_total{outcome=\"sent\"}"),
        1.0
    );

    // A chat state alone is not worth a notification.
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='m2'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
        .await;
    assert_eq!(harness.seen_on_other(), Vec::new());

    // Disabled: nothing more.
    harness
        .send(JULIET, CM_TEST, 1, "<iq from='juliet@example.com/phone' id='d1' type='set'><disable xmlns='urn:xmpp:push:0' jid='irc.example.com'/></iq>")
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            1,
            "<iq type='result' id='d1' to='juliet@example.com/phone'/>"
        )]
    );
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='m3'><body>again</body></message>")
        .await;
    assert_eq!(harness.seen_on_other(), Vec::new());
}

#[tokio::test]
async fn an_error_from_the_app_server_disables_the_registration_unless_it_is_wait() {
    let mut harness = Harness::new().await;
    enabled(&mut harness, "n2").await;
    let message = "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='m1'><body>hi</body></message>";
    harness.send(ROMEO, CM_TEST, 10, message).await;
    let xml = notification(&mut harness);
    let id = xml
        .split("id='")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap()
        .to_string();

    // Type wait: transient, kept (XEP-0357 section 7.1 allows it).
    harness.send_from_server(&format!("<iq from='irc.example.com' to='juliet@example.com' id='{id}' type='error'><error type='wait'><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")).await;
    harness.send(ROMEO, CM_TEST, 10, message).await;
    notification(&mut harness);

    // Type auth: the registration is disabled.
    harness.send_from_server(&format!("<iq from='irc.example.com' to='juliet@example.com' id='{id}' type='error'><error type='auth'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")).await;
    assert_eq!(
        harness.metric("starling_push_notifications_total{outcome=\"rejected\"}"),
        1.0
    );
    harness.send(ROMEO, CM_TEST, 10, message).await;
    assert_eq!(harness.seen_on_other(), Vec::new());
}

#[tokio::test]
async fn enable_is_the_accounts_own_and_checked() {
    let mut harness = Harness::new().await;
    harness.bind(JULIET, CM_TEST, 1).await;
    harness
        .send(ROMEO, CM_TEST, 10, "<iq from='romeo@example.com/orchard' to='juliet@example.com' id='x1' type='set'><enable xmlns='urn:xmpp:push:0' jid='irc.example.com' node='n'/></iq>")
        .await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(10, "<iq id='x1' to='romeo@example.com/orchard' from='juliet@example.com' type='error'><enable xmlns='urn:xmpp:push:0' jid='irc.example.com' node='n'/><error type='auth'><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")]
    );
    harness
        .send(JULIET, CM_TEST, 1, "<iq from='juliet@example.com/phone' id='x2' type='set'><enable xmlns='urn:xmpp:push:0' node='n'/></iq>")
        .await;
    let seen = harness.seen_on_test();
    assert!(
        matches!(seen.as_slice(), [Seen::Stanza(_, xml)] if xml.contains("<bad-request")),
        "{seen:?}"
    );
    assert_eq!(
        harness.metric("starling_push_registrations_total{event=\"refused\"}"),
        2.0
    );
}

/// An account without registrations costs no database read per message:
/// the router knows (cached) that it has none; an enable through this router
/// makes it read them again.
#[tokio::test]
async fn the_router_remembers_an_account_has_no_registrations() {
    let mut harness = Harness::new().await;
    let juliet = bare("juliet@example.com");
    harness
        .send(
            ROMEO,
            CM_TEST,
            2,
            "<message to='juliet@example.com' type='chat'><body>one</body></message>",
        )
        .await;
    assert_eq!(harness.router.push_accounts.cached(&juliet), Some(false));
    enabled(&mut harness, "n1").await;
    assert_eq!(harness.router.push_accounts.cached(&juliet), None);
    harness
        .send(
            ROMEO,
            CM_TEST,
            2,
            "<message to='juliet@example.com' type='chat'><body>two</body></message>",
        )
        .await;
    assert!(notification(&mut harness).contains("<value>1</value>"));
    assert_eq!(harness.router.push_accounts.cached(&juliet), Some(true));
}

/// Two routers of a cluster, each with its block lists on Redis: an enable
/// through one makes the other forget that the account had no
/// registrations (the invalidation crosses Redis), and a disable the other
/// way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_knowledge_is_invalidated_across_routers() {
    let Some(client) = starling_redis_client::testing::test_client().await else {
        return;
    };
    let on_redis = |storage: Arc<dyn StorageApi>| {
        let client = client.clone();
        async move {
            starling_bus::Blocklists::on_redis(
                storage,
                client,
                starling_bus::BlockingMetrics::default(),
            )
            .await
            .expect("block lists on redis")
        }
    };
    let harness = Harness::new().await;
    let other = harness.another_router(on_redis(harness.storage.clone()).await);
    // The harness's router replaced by one on Redis too.
    let mut harness = Harness {
        router: Arc::new(harness.another_router(on_redis(harness.storage.clone()).await)),
        ..harness
    };
    let juliet = bare("juliet@example.com");
    assert!(!other.has_push_registrations(&juliet).await.unwrap());
    assert_eq!(other.push_accounts.cached(&juliet), Some(false));

    enabled(&mut harness, "n1").await;
    starling_testing::wait_until(
        "the other router to forget juliet's push knowledge",
        std::time::Duration::from_secs(10),
        async || other.push_accounts.cached(&juliet).is_none(),
    )
    .await;
    assert!(other.has_push_registrations(&juliet).await.unwrap());

    // A disable through the other router reaches the harness's.
    assert!(harness
        .router
        .has_push_registrations(&juliet)
        .await
        .unwrap());
    assert_eq!(
        crate::handlers::push::remove_registrations(&other, &juliet, "irc.example.com", None)
            .await
            .unwrap(),
        1
    );
    starling_testing::wait_until(
        "the harness's router to forget juliet's push knowledge",
        std::time::Duration::from_secs(10),
        async || harness.router.push_accounts.cached(&juliet).is_none(),
    )
    .await;
    assert!(!harness
        .router
        .has_push_registrations(&juliet)
        .await
        .unwrap());
}

#[tokio::test]
async fn an_app_server_on_another_domain_is_reached_over_s2s_even_with_nobody_online() {
    let mut harness = Harness::with_options(HarnessOptions {
        s2s: crate::remote::S2sPolicy {
            enabled: true,
            ..Default::default()
        },
        live_node: Some(CM_OTHER),
        ..HarnessOptions::default()
    })
    .await;
    harness.bind(JULIET, CM_TEST, 1).await;
    let enable = format!("<iq from='{JULIET}' id='e1' type='set'><enable xmlns='urn:xmpp:push:0' jid='push.example.net' node='n9'/></iq>");
    harness.send(JULIET, CM_TEST, 1, &enable).await;
    assert_eq!(
        harness.seen_on_test(),
        vec![to_conn(
            1,
            &format!("<iq type='result' id='e1' to='{JULIET}'/>")
        )]
    );
    // Juliet's phone went away: none of her sessions is left.
    let phone: FullJid = JULIET.parse().unwrap();
    harness
        .router
        .unbind(&phone, &addr(CM_TEST, 1))
        .await
        .unwrap();
    harness.seen_on_test();
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat' id='m1'><body>secret words</body></message>")
        .await;
    match harness.seen_on_other().as_slice() {
        [Seen::Stanza(recipients, xml)]
            if recipients == &vec![Recipient::conn(starling_api::S2S_OUTBOUND_CONN)] =>
        {
            assert!(
                xml.starts_with(
                    "<iq type='set' from='juliet@example.com' to='push.example.net' id='push-"
                ),
                "{xml}"
            );
            assert!(!xml.contains("secret words"));
        }
        other => panic!("expected the notification on the s2s owner, got {other:?}"),
    }
    assert_eq!(
        harness.metric("starling_push_notifications_total{outcome=\"sent\"}"),
        1.0
    );
}
