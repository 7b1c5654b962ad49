//! `starling_router_routed_total`: one decision per routed stanza, taken
//! where the routing rules take it; and the origin time carried to the bus.

use std::time::{Duration, UNIX_EPOCH};

use super::*;

const ROMEO: &str = "romeo@example.com/orchard";

fn routed(harness: &Harness, kind: &str, decision: &str) -> f64 {
    harness.metric(&format!(
        "starling_router_routed_total{{decision=\"{decision}\",kind=\"{kind}\"}}"
    ))
}

#[tokio::test]
async fn each_stanza_counts_once_under_its_decision() {
    let mut harness = Harness::new().await;
    harness
        .online("juliet@example.com/balcony", CM_TEST, 1, 0)
        .await;
    harness
        .online("nurse@example.com/kitchen", CM_OTHER, 2, 0)
        .await;

    // Romeo's node is cm-test: juliet is there, the nurse on cm-other.
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat'><body>here</body></message>")
        .await;
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='nurse@example.com/kitchen' type='chat'><body>there</body></message>")
        .await;
    // Juliet writes to Romeo, who has no session: offline.
    harness
        .send("juliet@example.com/balcony", CM_TEST, 1, "<message from='juliet@example.com/balcony' to='romeo@example.com' type='chat'><body>later</body></message>")
        .await;
    // No such account: bounced with service-unavailable.
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='tybalt@example.com' type='chat'><body>?</body></message>")
        .await;
    // An error message to a bare JID is ignored (RFC 6121 section 8.5.2.1.1).
    harness
        .send(
            ROMEO,
            CM_TEST,
            10,
            "<message from='romeo@example.com/orchard' to='juliet@example.com' type='error'/>",
        )
        .await;
    // Presence goes to the presence service; a ping is answered by the server.
    harness
        .send(
            ROMEO,
            CM_TEST,
            10,
            "<presence from='romeo@example.com/orchard'/>",
        )
        .await;
    harness
        .send(ROMEO, CM_TEST, 10, "<iq from='romeo@example.com/orchard' to='example.com' type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;

    assert_eq!(routed(&harness, "message", "local"), 1.0);
    assert_eq!(routed(&harness, "message", "remote"), 1.0);
    assert_eq!(routed(&harness, "message", "offline"), 1.0);
    assert_eq!(routed(&harness, "message", "bounced"), 1.0);
    assert_eq!(routed(&harness, "message", "dropped"), 1.0);
    assert_eq!(routed(&harness, "message", "error"), 0.0);
    assert_eq!(routed(&harness, "presence", "server"), 1.0);
    assert_eq!(routed(&harness, "iq", "server"), 1.0);
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&harness.metrics.gather())
        .unwrap();
    assert!(
        text.contains("starling_router_route_duration_seconds_count{kind=\"message\"} 5"),
        "{text}"
    );
    harness.seen_on_test();
    harness.seen_on_other();
}

#[tokio::test]
async fn a_failed_dependency_is_an_error() {
    let harness = Harness::with_options(HarnessOptions {
        storage_down: true,
        ..HarnessOptions::default()
    })
    .await;
    // No session: the router asks storage whether the account exists, and storage is down.
    harness
        .send(ROMEO, CM_TEST, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat'><body>hi</body></message>")
        .await;
    assert_eq!(routed(&harness, "message", "error"), 1.0);
    assert_eq!(routed(&harness, "message", "bounced"), 0.0);
}

#[tokio::test]
async fn deliveries_carry_the_origin_time_of_the_routed_stanza() {
    let mut harness = Harness::new().await;
    harness
        .online("juliet@example.com/balcony", CM_TEST, 1, 0)
        .await;
    let origin = UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_123);
    harness
        .send_at(ROMEO, CM_OTHER, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat'><body>timed</body></message>", Some(origin))
        .await;
    harness
        .send(ROMEO, CM_OTHER, 10, "<message from='romeo@example.com/orchard' to='juliet@example.com' type='chat'><body>untimed</body></message>")
        .await;
    let times: Vec<_> = std::iter::from_fn(|| harness.cm_test.try_recv().ok())
        .map(|delivery| match delivery {
            Delivery::Stanza { routed_at, .. } => routed_at,
            Delivery::Close { .. } | Delivery::Drain { .. } | Delivery::Undecodable { .. } => {
                panic!("only stanzas expected")
            }
        })
        .collect();
    assert_eq!(times, vec![Some(origin), None]);
}
