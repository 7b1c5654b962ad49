//! Resource binding (RFC 6120 section 7), the conflict policy and unbinding.

use starling_api::{BindError, RouterApi, SessionRegistry};
use starling_xmpp::StreamErrorCondition;

use super::*;
use crate::session::REPLACED_TEXT;

#[tokio::test]
async fn binds_the_requested_resource() {
    let harness = Harness::new().await;
    let jid = harness
        .router
        .bind(
            &bare("juliet@example.com"),
            Some("balcony"),
            &addr(CM_TEST, 1),
        )
        .await
        .unwrap();
    assert_eq!(jid.to_string(), "juliet@example.com/balcony");
    let record = harness.registry.session(&jid).await.unwrap().unwrap();
    assert_eq!(record.addr, addr(CM_TEST, 1));
    assert!(!record.available);
    assert_eq!(record.priority, 0);
}

#[tokio::test]
async fn generates_a_random_resource_when_none_is_requested() {
    let harness = Harness::new().await;
    let user = bare("juliet@example.com");
    let first = harness
        .router
        .bind(&user, None, &addr(CM_TEST, 1))
        .await
        .unwrap();
    let second = harness
        .router
        .bind(&user, None, &addr(CM_TEST, 2))
        .await
        .unwrap();
    assert_ne!(first, second);
    for jid in [&first, &second] {
        assert_eq!(jid.bare(), &user);
        assert_eq!(jid.resource().len(), 16);
        assert!(jid
            .resource()
            .chars()
            .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c)));
    }
    assert_eq!(harness.registry.sessions(&user).await.unwrap().len(), 2);
}

#[tokio::test]
async fn refuses_more_resources_than_the_limit() {
    let harness = Harness::with_options(HarnessOptions {
        max_resources_per_user: 2,
        ..Default::default()
    })
    .await;
    let user = bare("juliet@example.com");
    harness.bind("juliet@example.com/one", CM_TEST, 1).await;
    harness.bind("juliet@example.com/two", CM_TEST, 2).await;
    assert_eq!(
        harness
            .router
            .bind(&user, Some("three"), &addr(CM_TEST, 3))
            .await,
        Err(BindError::ResourceConstraint)
    );
    assert_eq!(
        harness.router.bind(&user, None, &addr(CM_TEST, 3)).await,
        Err(BindError::ResourceConstraint)
    );
    // Rebinding a bound full JID replaces it and does not count.
    assert_eq!(
        harness
            .router
            .bind(&user, Some("two"), &addr(CM_TEST, 4))
            .await
            .map(|jid| jid.to_string()),
        Ok("juliet@example.com/two".to_string())
    );
    // Another account is not affected.
    harness.bind("romeo@example.com/orchard", CM_TEST, 5).await;
}

#[tokio::test]
async fn a_new_login_replaces_the_old_session_with_conflict() {
    let mut harness = Harness::new().await;
    let jid = harness
        .online("juliet@example.com/balcony", CM_OTHER, 1, 0)
        .await;
    harness.presence.take_calls();

    harness.bind("juliet@example.com/balcony", CM_TEST, 2).await;

    assert_eq!(
        harness.seen_on_other(),
        vec![Seen::Close(
            1,
            StreamErrorCondition::Conflict,
            Some(REPLACED_TEXT.to_string())
        )]
    );
    assert_eq!(harness.seen_on_test(), Vec::new());
    assert_eq!(
        harness.presence.take_calls(),
        vec![PresenceCall::SessionEnded {
            jid: "juliet@example.com/balcony".into(),
            was_available: true
        }]
    );
    let record = harness.registry.session(&jid).await.unwrap().unwrap();
    assert_eq!(record.addr, addr(CM_TEST, 2));
    assert!(!record.available, "the new session starts unavailable");

    // The replaced session's late unbind leaves its successor alone.
    harness
        .router
        .unbind(&jid, &addr(CM_OTHER, 1))
        .await
        .unwrap();
    assert_eq!(harness.presence.take_calls(), Vec::new());
    assert!(harness.registry.session(&jid).await.unwrap().is_some());
}

#[tokio::test]
async fn refuses_accounts_outside_the_domain_and_invalid_resources() {
    let harness = Harness::new().await;
    assert_eq!(
        harness
            .router
            .bind(
                &bare("romeo@example.net"),
                Some("orchard"),
                &addr(CM_TEST, 1)
            )
            .await,
        Err(BindError::NotAllowed)
    );
    assert_eq!(
        harness
            .router
            .bind(&bare("example.com"), Some("orchard"), &addr(CM_TEST, 1))
            .await,
        Err(BindError::NotAllowed)
    );
    assert_eq!(
        harness
            .router
            .bind(&bare("juliet@example.com"), Some(""), &addr(CM_TEST, 1))
            .await,
        Err(BindError::BadRequest)
    );
}

#[tokio::test]
async fn unbind_removes_the_session_and_announces_its_end() {
    let harness = Harness::new().await;
    let jid = harness
        .online("juliet@example.com/balcony", CM_TEST, 1, 3)
        .await;
    let quiet = harness.bind("juliet@example.com/chamber", CM_TEST, 2).await;

    harness
        .router
        .unbind(&jid, &addr(CM_TEST, 1))
        .await
        .unwrap();
    harness
        .router
        .unbind(&quiet, &addr(CM_TEST, 2))
        .await
        .unwrap();
    assert_eq!(
        harness.presence.take_calls(),
        vec![
            PresenceCall::SessionEnded {
                jid: "juliet@example.com/balcony".into(),
                was_available: true
            },
            PresenceCall::SessionEnded {
                jid: "juliet@example.com/chamber".into(),
                was_available: false
            },
        ]
    );
    assert!(harness
        .registry
        .sessions(jid.bare())
        .await
        .unwrap()
        .is_empty());

    // A second unbind finds nothing and announces nothing.
    harness
        .router
        .unbind(&jid, &addr(CM_TEST, 1))
        .await
        .unwrap();
    assert_eq!(harness.presence.take_calls(), Vec::new());
}
