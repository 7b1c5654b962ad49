//! Command-line flags of `starling-load`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::conn::{TlsMode, TransportMode};

/// What the simulated users do once logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Connect, TLS, SASL, bind, roster, initial presence for every user at
    /// the ramp rate; report logins/s and login latency.
    LoginStorm,
    /// Steady one-to-one messages at a target aggregate rate (one stage per
    /// `--rates` value); report end-to-end latency and delivery.
    Chat,
    /// Each user has R contacts (mutual subscriptions made at setup); each
    /// presence update is broadcast to R contacts; report delivery latency.
    PresenceFanout,
    /// Hold every session open; report server memory per idle session.
    Idle,
    /// Mostly idle, a fraction chatting, the idle users reconnecting now and then.
    Mixed,
}

impl Scenario {
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::LoginStorm => "login-storm",
            Scenario::Chat => "chat",
            Scenario::PresenceFanout => "presence-fanout",
            Scenario::Idle => "idle",
            Scenario::Mixed => "mixed",
        }
    }
}

/// How the accounts come to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountSource {
    /// They exist already (names from `--user-pattern`).
    Existing,
    /// Run `--accounts-cmd` once per user.
    Cmd,
    /// XEP-0077 in-band registration.
    Register,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "starling-load",
    version,
    about = "Load generator for any XMPP server (RFC 6120/6121 client side)"
)]
pub struct Args {
    /// The scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// The server's c2s address, or its HTTP address with `--transport
    /// websocket` (loopback only, by policy of this tool's users).
    /// Repeatable or a comma list: users are spread over the addresses
    /// round-robin (user i on address i mod k), and with several addresses the
    /// chat pairs are chosen so that every message crosses servers.
    #[arg(
        long = "server",
        value_delimiter = ',',
        num_args = 1,
        default_value = "127.0.0.1:5222"
    )]
    pub servers: Vec<String>,
    /// The XMPP domain (stream `to`, JID domain, TLS server name).
    #[arg(long, default_value = "localhost")]
    pub domain: String,
    /// Transport security: none, starttls or direct (certificates are never verified).
    /// With `--transport websocket`: none (`ws://`) or direct (`wss://`).
    #[arg(long, value_enum, default_value = "none")]
    pub tls: TlsMode,
    /// What carries the stream: tcp (RFC 6120, the c2s port) or websocket
    /// (RFC 7395, `ws://SERVER/WS_PATH` with the `xmpp` subprotocol, SERVER
    /// being the server's HTTP port).
    #[arg(long, value_enum, default_value = "tcp")]
    pub transport: TransportMode,
    /// The WebSocket endpoint's path (`--transport websocket`).
    #[arg(long, default_value = "/xmpp-websocket")]
    pub ws_path: String,
    /// SASL mechanisms in order of preference (the first one the server offers is used).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "SCRAM-SHA-256,SCRAM-SHA-1,PLAIN"
    )]
    pub mechanisms: Vec<String>,
    /// Resource to bind.
    #[arg(long, default_value = "load")]
    pub resource: String,
    /// Skip the roster get during login.
    #[arg(long)]
    pub no_roster: bool,
    /// XEP-0198 stream management: off, ack (`<enable/>`) or resume
    /// (`<enable resume='true'/>`), sent after bind and the roster get,
    /// before the initial presence; the server's `<r/>` is answered with
    /// `<a h/>`. A server that does not offer it, `<failed/>`, or an `<a/>`
    /// acking more than was sent count as errors (kind `sm`).
    #[arg(long, value_enum, default_value = "off")]
    pub sm: crate::sm::SmMode,
    /// With `--sm`: also ask the server for an ack (`<r/>`) every N stanzas
    /// sent (0: never, only answer the server's requests).
    #[arg(long, default_value_t = 0)]
    pub sm_request_every: u32,

    /// Number of simulated users (one session each).
    #[arg(long, short = 'n', default_value_t = 100)]
    pub users: usize,
    /// Username pattern; `%d` is replaced by the user's number.
    #[arg(long, default_value = "user%d")]
    pub user_pattern: String,
    /// Number of the first user.
    #[arg(long, default_value_t = 1)]
    pub first_index: usize,
    /// Password (pattern; `%d` is replaced by the user's number).
    #[arg(long, default_value = "password")]
    pub password: String,

    /// How accounts come to exist: existing, cmd (`--accounts-cmd`) or register (XEP-0077).
    #[arg(long, value_enum, default_value = "existing")]
    pub accounts: AccountSource,
    /// Command template run through `sh -c` once per user, e.g.
    /// `starling user add {user}@{domain} {password} --config X`. Placeholders:
    /// {user} {password} {domain} {jid} {index}. Implies `--accounts cmd`.
    #[arg(long)]
    pub accounts_cmd: Option<String>,
    /// Account creations run at once.
    #[arg(long, default_value_t = 4)]
    pub accounts_parallel: usize,
    /// Create the accounts, then exit.
    #[arg(long)]
    pub accounts_only: bool,

    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 200.0)]
    pub ramp: f64,
    /// Seconds each measured stage lasts (idle: how long sessions are held).
    #[arg(long, short = 'd', default_value_t = 30.0)]
    pub duration: f64,
    /// Target aggregate rate (messages/s for chat and mixed, presence updates/s for presence-fanout).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Several target rates, one stage each, in order (overrides --rate).
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// Stop stepping through --rates once a stage's p99 exceeds this many milliseconds
    /// or it delivers less than 99% of what it should.
    #[arg(long)]
    pub stop_p99_ms: Option<f64>,
    /// Contacts per user (presence-fanout); made even, each subscription mutual.
    #[arg(long, default_value_t = 10)]
    pub contacts: usize,
    /// Fraction of users that chat (mixed).
    #[arg(long, default_value_t = 0.1)]
    pub chatters: f64,
    /// Reconnects per second over all idle users (mixed).
    #[arg(long, default_value_t = 2.0)]
    pub reconnect_rate: f64,
    /// Extra bytes of padding in each message body.
    #[arg(long, default_value_t = 0)]
    pub body_size: usize,
    /// Seconds to wait after the last stage for late deliveries.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Seconds to let the server settle after logins before sampling its memory.
    #[arg(long, default_value_t = 3.0)]
    pub settle: f64,
    /// Per-login timeout in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub login_timeout: f64,
    /// Login attempts after a failure (chat, presence, idle, mixed).
    #[arg(long, default_value_t = 2)]
    pub login_retries: u32,
    /// Seconds allowed for the subscription setup of presence-fanout.
    #[arg(long, default_value_t = 120.0)]
    pub setup_timeout: f64,

    /// Runtime worker threads of the generator.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Source addresses to spread connections over (default: 127.0.0.1, 127.0.0.2, ...
    /// as needed when the target is on loopback and --users exceeds 20,000).
    #[arg(long, value_delimiter = ',')]
    pub source_addrs: Vec<IpAddr>,

    /// PID of a server process to measure (repeatable). Descendants are included.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Do not add the descendants of --server-pid.
    #[arg(long)]
    pub no_server_children: bool,
    /// A label for the server in the result (e.g. starling, prosody).
    #[arg(long, default_value = "server")]
    pub label: String,
    /// Write the JSON result here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress line.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

impl Args {
    pub fn username(&self, number: usize) -> String {
        self.user_pattern.replace("%d", &number.to_string())
    }

    pub fn password_of(&self, number: usize) -> String {
        self.password.replace("%d", &number.to_string())
    }

    /// The target rates, one per stage.
    pub fn stage_rates(&self) -> Vec<f64> {
        if self.rates.is_empty() {
            vec![self.rate]
        } else {
            self.rates.clone()
        }
    }

    /// Fill an account command template.
    pub fn account_command(&self, template: &str, number: usize) -> String {
        let user = self.username(number);
        let password = self.password_of(number);
        template
            .replace("{jid}", &format!("{user}@{}", self.domain))
            .replace("{user}", &user)
            .replace("{password}", &password)
            .replace("{domain}", &self.domain)
            .replace("{index}", &number.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_templates() {
        let args = Args::parse_from([
            "starling-load",
            "chat",
            "--user-pattern",
            "lt%d",
            "--password",
            "pw-%d",
            "--rates",
            "1000,2000",
        ]);
        assert_eq!(args.servers, vec!["127.0.0.1:5222".to_string()]);
        assert_eq!(args.transport, TransportMode::Tcp);
        assert_eq!(args.ws_path, "/xmpp-websocket");
        assert_eq!(args.username(7), "lt7");
        assert_eq!(args.password_of(7), "pw-7");
        assert_eq!(args.stage_rates(), vec![1000.0, 2000.0]);
        assert_eq!(
            args.account_command(
                "starling user add {jid} {password} --config c.toml # {user} {index}",
                3
            ),
            "starling user add lt3@localhost pw-3 --config c.toml # lt3 3"
        );
    }

    #[test]
    fn websocket_transport() {
        let args = Args::parse_from([
            "starling-load",
            "idle",
            "--transport",
            "websocket",
            "--server",
            "127.0.0.1:25280",
            "--ws-path",
            "/ws",
        ]);
        assert_eq!(args.transport, TransportMode::Websocket);
        assert_eq!(args.ws_path, "/ws");
        assert_eq!(args.tls, TlsMode::None);
    }

    #[test]
    fn several_servers() {
        let args = Args::parse_from([
            "starling-load",
            "chat",
            "--server",
            "127.0.0.1:23050,127.0.0.1:23060",
            "--server",
            "127.0.0.1:23070",
        ]);
        assert_eq!(
            args.servers,
            vec!["127.0.0.1:23050", "127.0.0.1:23060", "127.0.0.1:23070"]
        );
    }
}
