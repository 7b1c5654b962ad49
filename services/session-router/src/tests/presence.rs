//! Presence goes to the presence service (RFC 6121 sections 3 and 4).

use super::*;

#[tokio::test]
async fn session_presence_is_outbound_processing() {
    let mut harness = Harness::new().await;
    let presence = "<presence from='juliet@example.com/balcony'><priority>5</priority></presence>";
    harness
        .send("juliet@example.com/balcony", CM_TEST, 1, presence)
        .await;
    let subscribe =
        "<presence from='juliet@example.com/balcony' to='romeo@example.net' type='subscribe'/>";
    harness
        .send("juliet@example.com/balcony", CM_TEST, 1, subscribe)
        .await;
    assert_eq!(
        harness.presence.take_calls(),
        vec![
            PresenceCall::Outbound {
                from: "juliet@example.com/balcony".into(),
                addr: addr(CM_TEST, 1),
                stanza: presence.into()
            },
            PresenceCall::Outbound {
                from: "juliet@example.com/balcony".into(),
                addr: addr(CM_TEST, 1),
                stanza: subscribe.into()
            },
        ]
    );
    harness.assert_nothing_delivered();
}

#[tokio::test]
async fn server_presence_to_a_local_entity_is_inbound_processing() {
    let mut harness = Harness::new().await;
    let to_bare =
        "<presence from='romeo@example.com/orchard' to='juliet@example.com' type='subscribe'/>";
    let to_full = "<presence from='romeo@example.com/orchard' to='juliet@example.com/balcony'/>";
    harness.send_from_server(to_bare).await;
    harness.send_from_server(to_full).await;
    assert_eq!(
        harness.presence.take_calls(),
        vec![
            PresenceCall::Inbound {
                stanza: to_bare.into()
            },
            PresenceCall::Inbound {
                stanza: to_full.into()
            }
        ]
    );
    harness.assert_nothing_delivered();
}

#[tokio::test]
async fn server_presence_to_a_remote_domain_is_answered_and_to_nowhere_dropped() {
    let mut harness = Harness::new().await;
    harness
        .send_from_server("<presence from='juliet@example.com/balcony' to='romeo@example.net'/>")
        .await;
    harness
        .send_from_server("<presence from='juliet@example.com/balcony'/>")
        .await;
    harness
        .send_from_server("<presence from='juliet@example.com/balcony' to='juliet@@example.com'/>")
        .await;
    // Federation is off: RFC 6120 section 10.4.3, presence included.
    let calls = harness.presence.take_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let PresenceCall::Inbound { stanza } = &calls[0] else {
        panic!("{calls:?}");
    };
    assert!(
        stanza.contains("type='error'") && stanza.contains("remote-server-not-found"),
        "{stanza}"
    );
    harness.assert_nothing_delivered();
}

#[tokio::test]
async fn non_stanzas_are_dropped() {
    let mut harness = Harness::new().await;
    harness
        .send(
            "juliet@example.com/balcony",
            CM_TEST,
            1,
            "<r xmlns='urn:xmpp:sm:3'/>",
        )
        .await;
    assert_eq!(harness.presence.take_calls(), Vec::new());
    harness.assert_nothing_delivered();
}

#[tokio::test]
async fn a_router_built_with_its_presence_is_reached_through_the_handle_it_gave_it() {
    let harness = Harness::new().await;
    let handed: Arc<Mutex<Option<Arc<dyn RouterApi>>>> = Arc::default();
    let router = SessionRouter::new_cyclic(|handle| {
        *handed.lock() = Some(handle);
        SessionRouter::new(
            harness.router.config().clone(),
            harness.registry.clone(),
            harness.bus.clone(),
            harness.storage.clone(),
            harness.presence.clone(),
        )
    });
    let handle = handed.lock().take().expect("the handle was handed over");
    handle
        .route(
            Origin::Session {
                jid: full("juliet@example.com/balcony"),
                addr: addr(CM_TEST, 1),
            },
            xml("<presence/>"),
            None,
        )
        .await
        .expect("the handle routes through the router");
    assert_eq!(harness.presence.take_calls().len(), 1);
    drop(router);
    let error = handle
        .route(
            Origin::Server,
            xml("<message to='romeo@example.com'/>"),
            None,
        )
        .await
        .expect_err("the router is gone");
    assert!(matches!(error, ApiError::Unavailable(_)), "{error:?}");
}
