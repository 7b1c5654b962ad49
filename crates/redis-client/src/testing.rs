//! Test support (feature `test-support`): a client on the real Redis with a
//! random key prefix, and throw-away `redis-server` processes (one server that
//! can be restarted, or a 3-master Redis Cluster) killed when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::Rng;
use starling_testing::wait_until;

use crate::{RedisClient, RedisConfig};

/// The variable that turns "Redis unreachable" from a failure into a skipped test.
pub const SKIP_VARIABLE: &str = "STARLING_TEST_SKIP_REDIS";

/// How long a throw-away `redis-server` may take to answer, or a cluster to form.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The Redis the tests use: `STARLING_TEST_REDIS_URL`, by default the local one.
pub fn test_redis_url() -> String {
    std::env::var("STARLING_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn skipping() -> bool {
    std::env::var(SKIP_VARIABLE).is_ok_and(|value| value == "1")
}

/// A key prefix no other test run uses.
pub fn random_prefix() -> String {
    format!("test-{:016x}:", rand::thread_rng().gen::<u64>())
}

/// A client on the test Redis with a random key prefix. Panics with a clear
/// message when Redis cannot be reached, unless `STARLING_TEST_SKIP_REDIS=1`
/// (then `None`: the caller returns early).
pub async fn test_client() -> Option<RedisClient> {
    let url = test_redis_url();
    let config = RedisConfig {
        urls: vec![url.clone()],
        cluster: false,
        key_prefix: random_prefix(),
    };
    match RedisClient::connect(&config).await {
        Ok(client) => Some(client),
        Err(error) if skipping() => {
            eprintln!("skipping: redis at {url} unreachable ({error}) and {SKIP_VARIABLE}=1");
            None
        }
        Err(error) => panic!(
            "these tests need a real Redis at {url} (set STARLING_TEST_REDIS_URL, or {SKIP_VARIABLE}=1 to skip): {error}"
        ),
    }
}

/// A loopback port that is free, and whose cluster bus port (+10000) is free too.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        if port < 55000 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

fn temp_dir(kind: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "starling-{kind}-{}-{:08x}",
        std::process::id(),
        rand::thread_rng().gen::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

fn start_server(dir: &Path, port: u16, cluster: bool) -> Child {
    let mut command = Command::new("redis-server");
    command
        .arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--save")
        .arg("")
        .arg("--appendonly")
        .arg("no")
        .arg("--daemonize")
        .arg("no")
        .arg("--dir")
        .arg(dir);
    if cluster {
        command
            .arg("--cluster-enabled")
            .arg("yes")
            .arg("--cluster-config-file")
            .arg(dir.join(format!("nodes-{port}.conf")));
    }
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server (is it installed? apt-get install redis-server)")
}

fn redis_cli(port: u16, arguments: &[&str]) -> Option<String> {
    let output = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(arguments)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn redis_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// One throw-away `redis-server` on a free loopback port that a test may restart.
pub struct RedisServerHarness {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServerHarness {
    /// Start it; `None` when `redis-server` is missing and `STARLING_TEST_SKIP_REDIS=1`.
    pub async fn start() -> Option<Self> {
        if !redis_available() {
            assert!(
                skipping(),
                "redis-server is not installed (or set {SKIP_VARIABLE}=1 to skip)"
            );
            return None;
        }
        let port = free_port();
        let dir = temp_dir("redis");
        let mut harness = RedisServerHarness {
            port,
            dir,
            child: None,
        };
        harness.start_process().await;
        Some(harness)
    }

    async fn start_process(&mut self) {
        self.child = Some(start_server(&self.dir, self.port, false));
        let port = self.port;
        wait_until("redis-server to answer", START_TIMEOUT, async || {
            redis_cli(port, &["ping"]).is_some_and(|out| out.contains("PONG"))
        })
        .await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A configuration for this server with a random key prefix.
    pub fn config(&self) -> RedisConfig {
        RedisConfig {
            urls: vec![self.url()],
            cluster: false,
            key_prefix: random_prefix(),
        }
    }

    /// Kill the server (losing every key, as a restart without persistence does).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill and start again on the same port, empty.
    pub async fn restart(&mut self) {
        self.stop();
        self.start_process().await;
    }
}

impl Drop for RedisServerHarness {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A 3-master Redis Cluster on free loopback ports, in a temporary directory,
/// killed (and its directory removed) when dropped, even when the test fails.
pub struct RedisClusterHarness {
    ports: Vec<u16>,
    dir: PathBuf,
    children: Vec<Child>,
}

impl RedisClusterHarness {
    /// Start three cluster-enabled servers, create the cluster and wait for
    /// `cluster_state:ok` on every node. `None` when `redis-server` is missing
    /// and `STARLING_TEST_SKIP_REDIS=1`.
    pub async fn start() -> Option<Self> {
        if !redis_available() {
            assert!(
                skipping(),
                "redis-server is not installed (or set {SKIP_VARIABLE}=1 to skip)"
            );
            return None;
        }
        let dir = temp_dir("redis-cluster");
        let mut harness = RedisClusterHarness {
            ports: Vec::new(),
            dir,
            children: Vec::new(),
        };
        while harness.ports.len() < 3 {
            let port = free_port();
            if !harness.ports.contains(&port) {
                harness.ports.push(port);
            }
        }
        for port in harness.ports.clone() {
            harness
                .children
                .push(start_server(&harness.dir, port, true));
        }
        for port in harness.ports.clone() {
            wait_until("cluster node to answer", START_TIMEOUT, async || {
                redis_cli(port, &["ping"]).is_some_and(|out| out.contains("PONG"))
            })
            .await;
        }
        let mut create = vec!["--cluster".to_string(), "create".to_string()];
        create.extend(harness.ports.iter().map(|port| format!("127.0.0.1:{port}")));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let create: Vec<&str> = create.iter().map(String::as_str).collect();
        assert!(
            redis_cli(harness.ports[0], &create).is_some(),
            "redis-cli --cluster create failed"
        );
        for port in harness.ports.clone() {
            wait_until("cluster_state:ok", START_TIMEOUT, async || {
                redis_cli(port, &["cluster", "info"])
                    .is_some_and(|out| out.contains("cluster_state:ok"))
            })
            .await;
        }
        Some(harness)
    }

    /// The seed node URLs.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// A cluster configuration with a random key prefix.
    pub fn config(&self) -> RedisConfig {
        RedisConfig {
            urls: self.urls(),
            cluster: true,
            key_prefix: random_prefix(),
        }
    }
}

impl Drop for RedisClusterHarness {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
