//! The connection-manager's Prometheus metrics, scraped as text after real
//! logins and messages over sockets on 127.0.0.1.

mod common;

use common::*;
use starling_connection_manager::CmMetrics;

fn scrape(registry: &prometheus::Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap()
}

/// The value of the series whose line starts with `series ` (name and labels as exported).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn counters_move_with_logins_and_messages() {
    let registry = prometheus::Registry::new();
    let metrics = CmMetrics::register(&registry).unwrap();
    let server = TestServer::start(move |config| config.metrics = metrics).await;
    server.add_user("juliet", "pencil").await;

    let before = scrape(&registry);
    assert_eq!(
        value(
            &before,
            "starling_logins_total{mechanism=\"SCRAM-SHA-256\",result=\"success\"}"
        ),
        0.0
    );
    assert_eq!(value(&before, "starling_sessions"), 0.0);

    // A wrong password first: a failed login and its SASL condition.
    let mut intruder = Client::connect(&server).await;
    intruder.secure().await;
    assert!(intruder
        .scram(ScramTestHash::Sha256, "juliet", "wrong")
        .await
        .is_err());

    let (mut balcony, _) = Client::login(&server, "juliet", "pencil", Some("balcony")).await;
    let (mut orchard, _) = Client::login(&server, "juliet", "pencil", Some("orchard")).await;
    balcony
        .send("<message to='juliet@example.com/orchard' id='m1'><body>hi</body></message>")
        .await;
    orchard.read_until("</message>").await;

    let text = scrape(&registry);
    assert_eq!(
        value(
            &text,
            "starling_logins_total{mechanism=\"SCRAM-SHA-256\",result=\"success\"}"
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "starling_logins_total{mechanism=\"SCRAM-SHA-256\",result=\"failure\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "starling_sasl_failures_total{mechanism=\"SCRAM-SHA-256\",reason=\"not-authorized\"}"
        ),
        1.0
    );
    assert_eq!(value(&text, "starling_sessions"), 2.0);
    // The intruder's connection never bound a resource.
    assert_eq!(
        value(
            &text,
            "starling_connections{state=\"bound\",transport=\"tcp\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "starling_connections{state=\"negotiating\",transport=\"tcp\"}"
        ),
        1.0
    );
    // The message carried the time balcony's node handed it to the router.
    assert_eq!(
        value(
            &text,
            "starling_stanza_delivery_latency_seconds_count{kind=\"message\"}"
        ),
        1.0
    );
    assert!(
        value(
            &text,
            "starling_stanza_delivery_latency_seconds_bucket{kind=\"message\",le=\"5\"}"
        ) == 1.0
    );
    // The latency SLO of deploy/prometheus/alerts.yml reads the 100 ms bucket.
    assert!(
        value(
            &text,
            "starling_stanza_delivery_latency_seconds_bucket{kind=\"message\",le=\"0.1\"}"
        ) <= 1.0
    );
    assert_eq!(
        value(&text, "starling_stanzas_received_total{kind=\"message\"}"),
        1.0
    );
    // The two bind results, then the message.
    assert_eq!(
        value(&text, "starling_stanzas_sent_total{kind=\"message\"}"),
        1.0
    );
    assert!(value(&text, "starling_stanzas_sent_total{kind=\"iq\"}") >= 2.0);
    assert!(!text.contains('@'), "a JID in the metrics:\n{text}");

    // Closing a stream ends its session and its connection in the gauges.
    balcony.send("</stream:stream>").await;
    balcony.read_to_close().await;
    wait_until("the session gauge follows", WAIT, async || {
        let text = scrape(&registry);
        value(&text, "starling_sessions") == 1.0
            && value(
                &text,
                "starling_connections{state=\"bound\",transport=\"tcp\"}",
            ) == 1.0
    })
    .await;
}

#[tokio::test]
async fn limits_and_stream_errors_are_counted() {
    let registry = prometheus::Registry::new();
    let metrics = CmMetrics::register(&registry).unwrap();
    let server = TestServer::start(move |config| {
        config.metrics = metrics;
        config.limits.max_connections_per_ip = 1;
    })
    .await;
    let mut first = Client::connect(&server).await;
    first.open().await;
    let mut second = Client::connect(&server).await;
    second.read_to_close().await;
    let text = scrape(&registry);
    assert_eq!(
        value(
            &text,
            "starling_limits_hit_total{limit=\"connections_per_ip\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "starling_stream_errors_total{condition=\"policy-violation\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&text, "starling_limits_hit_total{limit=\"rate_limit\"}"),
        0.0
    );
}
