//! `starling serve` from Rust: the whole one-process server on port 0 with
//! in-memory SQLite, spoken to over TCP, stopped through its shutdown future.

use std::path::PathBuf;
use std::time::Duration;

use starling_server::{serve, Config, Server, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any one step may take before the test fails.
const STEP_DEADLINE: Duration = Duration::from_secs(20);

/// A data directory (for the generated TLS certificate) removed on drop.
struct DataDir(PathBuf);

impl DataDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "starling-server-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path).expect("create the data directory");
        DataDir(path)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every service in one process, every listener on a port the system picks.
fn one_process_config(data_dir: &DataDir) -> Config {
    let mut config = Config {
        domain: "localhost".into(),
        data_dir: data_dir.0.display().to_string(),
        ..Config::default()
    };
    config.storage.url = "sqlite::memory:".into();
    config.listen.c2s = "127.0.0.1:0".into();
    config.listen.c2s_tls = "127.0.0.1:0".into();
    config.listen.http = "127.0.0.1:0".into();
    // Close the streams at once when draining.
    config.drain.window_secs = 0;
    config
}

/// Read from `stream` until what was read contains `needle`; everything read.
async fn read_until(stream: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(STEP_DEADLINE, async {
        while !String::from_utf8_lossy(&seen).contains(needle) {
            let read = stream
                .read(&mut buffer)
                .await
                .expect("read from the server");
            assert!(
                read > 0,
                "the server closed the stream before sending {needle:?}: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buffer[..read]);
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no {needle:?} in time; read {}",
            String::from_utf8_lossy(&seen)
        )
    });
    String::from_utf8_lossy(&seen).into_owned()
}

/// Wait (bounded) for a serving task to end, and check it ended well.
async fn returns_cleanly(served: tokio::task::JoinHandle<anyhow::Result<()>>) {
    let outcome = tokio::time::timeout(STEP_DEADLINE, served)
        .await
        .expect("serve returns after its shutdown");
    outcome
        .expect("the serve task")
        .expect("serve ends cleanly");
}

#[tokio::test]
async fn a_served_process_answers_a_stream_header_and_drains_on_shutdown() {
    let data_dir = DataDir::new();
    let server = Server::bind(one_process_config(&data_dir), Target::All)
        .await
        .expect("the server binds");
    let c2s = server.local_addr("c2s").expect("c2s is bound");
    assert_ne!(c2s.port(), 0);
    for role in ["c2s_tls", "http"] {
        assert!(server.local_addr(role).is_some(), "{role} is bound");
    }
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server.run(
        async move {
            let _ = shutdown_rx.await;
        },
        std::future::pending(),
    ));

    let mut client = TcpStream::connect(c2s).await.expect("connect to c2s");
    client
        .write_all(
            b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' \
              xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
        )
        .await
        .expect("send the stream header");
    let answer = read_until(&mut client, "</stream:features>").await;
    assert!(answer.contains("<stream:stream"), "{answer}");
    assert!(answer.contains("from='localhost'"), "{answer}");
    assert!(
        answer.contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'"),
        "{answer}"
    );

    shutdown_tx
        .send(())
        .expect("the server waits for its shutdown");
    // The drain closes the stream (RFC 6120 section 4.9.3.20) before the server stops.
    let closing = read_until(&mut client, "</stream:stream>").await;
    assert!(closing.contains("<system-shutdown"), "{closing}");
    returns_cleanly(served).await;
    // Its listeners are gone with it.
    assert!(TcpStream::connect(c2s).await.is_err());
}

#[tokio::test]
async fn serve_returns_when_its_shutdown_resolves() {
    let data_dir = DataDir::new();
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(serve(
        one_process_config(&data_dir),
        Target::All,
        async move {
            let _ = shutdown_rx.await;
        },
    ));
    shutdown_tx.send(()).expect("serve waits for its shutdown");
    returns_cleanly(served).await;
}

#[tokio::test]
async fn a_target_without_its_cluster_keys_is_refused_naming_the_key() {
    let data_dir = DataDir::new();
    let error = serve(
        one_process_config(&data_dir),
        Target::ConnectionManager,
        std::future::pending(),
    )
    .await
    .expect_err("a connection-manager needs cluster.redis");
    assert_eq!(
        error.to_string(),
        "config key `cluster.redis` must be set for --target connection-manager"
    );
}
