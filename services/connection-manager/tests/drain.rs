//! Graceful drain over real sockets: a `Delivery::Drain` on the node's bus
//! channel closes the listeners at once and ends every stream with
//! `<system-shutdown/>` (RFC 6120 section 4.9.3.20), spread over the window.

mod common;

use std::time::{Duration, Instant};

use common::*;
use starling_bus::{Bus, Delivery};

const SYSTEM_SHUTDOWN: &str = "<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>";

#[tokio::test]
async fn drain_refuses_new_connections_and_spreads_the_closes_over_the_window() {
    let mut server = TestServer::start(|_| {}).await;
    server.add_user("juliet", "pencil").await;
    server.add_user("romeo", "pencil").await;
    let (mut first, first_jid) = Client::login(&server, "juliet", "pencil", None).await;
    let (mut second, second_jid) = Client::login(&server, "romeo", "pencil", None).await;

    let window = Duration::from_secs(2);
    let started = Instant::now();
    let receivers = server
        .bus
        .publish(
            &server.node_id,
            Delivery::Drain {
                window: Some(window),
            },
        )
        .await
        .unwrap();
    assert_eq!(receivers, 1);

    // The listeners close at once: the kernel refuses new connections.
    wait_until(
        "the listeners to refuse connections once the drain started",
        Duration::from_secs(1),
        async || tokio::net::TcpStream::connect(server.c2s).await.is_err(),
    )
    .await;

    // Two streams over a 2 s window: the first at once, the second half-way.
    assert!(first.read_to_close().await.ends_with(SYSTEM_SHUTDOWN));
    let first_closed = started.elapsed();
    assert!(second.read_to_close().await.ends_with(SYSTEM_SHUTDOWN));
    let second_closed = started.elapsed();
    assert!(
        first_closed < Duration::from_millis(800),
        "{first_closed:?}"
    );
    assert!(
        second_closed >= Duration::from_millis(900)
            && second_closed < window + Duration::from_secs(1),
        "{second_closed:?}"
    );
    // The sessions ended as a normal disconnect: the router was told.
    wait_until("both sessions unbound", WAIT, async || {
        let unbound = server.router.unbound.lock();
        [&first_jid, &second_jid]
            .iter()
            .all(|jid| unbound.iter().any(|unbound| &unbound.to_string() == *jid))
    })
    .await;
    // A second drain request changes nothing, and shutdown still completes.
    server
        .bus
        .publish(&server.node_id, Delivery::Drain { window: None })
        .await
        .unwrap();
    server.shutdown().await;
}
