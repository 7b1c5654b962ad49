//! The result of a run: the JSON document (`--out`) and the human summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::procstat::ProcSample;
use crate::stats::LatencySummary;

#[derive(Debug, Clone, Serialize, Default)]
pub struct RunResult {
    pub tool: &'static str,
    pub version: &'static str,
    pub label: String,
    pub scenario: String,
    /// The `--server` addresses, comma-separated.
    pub server: String,
    /// Per `--server` address: how many users it was given (round-robin).
    pub servers: Vec<ServerShare>,
    /// chat, mixed: senders whose receiver is on another server (all of them
    /// when several servers are given; 0 with one server).
    pub cross_server_senders: usize,
    pub domain: String,
    pub tls: String,
    /// `tcp` or `websocket`.
    pub transport: String,
    pub users: usize,
    pub ramp_per_second: f64,
    pub stage_seconds: f64,
    pub target_rates: Vec<f64>,
    pub contacts: usize,
    pub workers: usize,
    pub started_unix: u64,
    pub wall_seconds: f64,
    pub connections: Connections,
    pub logins: Logins,
    pub stanzas: Stanzas,
    /// End-to-end latency over every stage, microseconds.
    pub latency_us: LatencySummary,
    pub stages: Vec<StageResult>,
    /// Highest stage rate whose p99 stayed under `sustained_p99_limit_ms` with
    /// at least 99% delivered and 95% of the target sent.
    pub max_sustained_rate: Option<f64>,
    pub sustained_p99_limit_ms: f64,
    pub subscriptions: Option<Subscriptions>,
    /// XEP-0198 (`--sm ack|resume`); absent with `--sm off`.
    pub sm: Option<SmReport>,
    pub errors: BTreeMap<&'static str, u64>,
    pub error_samples: Vec<String>,
    pub server_process: ServerProcess,
    pub client_process: ClientProcess,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ServerShare {
    pub address: String,
    pub users: usize,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Connections {
    pub attempts: u64,
    pub established: u64,
    pub per_second: f64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Logins {
    /// Successful logins, reconnects included.
    pub ok: u64,
    pub failed: u64,
    /// Users logged in during the initial ramp.
    pub initial_ok: u64,
    /// From the first connection to the last initial login, seconds.
    pub window_seconds: f64,
    /// initial_ok / window_seconds.
    pub per_second: f64,
    pub reconnects: u64,
    /// Connect to roster result (or bind result with --no-roster), microseconds.
    pub latency_us: LatencySummary,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Stanzas {
    /// Messages (chat, mixed) or presence broadcasts (presence-fanout) sent.
    pub sent: u64,
    /// Timestamped stanzas received.
    pub delivered: u64,
    /// sent x recipients per stanza.
    pub expected: u64,
    pub delivery_ratio: f64,
    pub sent_per_second: f64,
    pub delivered_per_second: f64,
    pub out_of_order: u64,
    pub other_presence_received: u64,
    pub iq_answered: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct StageResult {
    pub index: usize,
    pub target_rate: f64,
    pub seconds: f64,
    pub sent: u64,
    /// Stanzas of this stage received (late arrivals included).
    pub delivered: u64,
    pub expected: u64,
    pub delivery_ratio: f64,
    pub sent_per_second: f64,
    /// Every timestamped stanza received during the stage's window / its length.
    pub delivered_per_second: f64,
    pub latency_us: LatencySummary,
    pub server_cpu_seconds: f64,
    /// Server CPU during the window / stanzas delivered during the window.
    pub server_cpu_us_per_delivered: Option<f64>,
    pub client_cpu_seconds: f64,
    /// Busy CPU of the whole machine during the stage, 100 = one core
    /// (includes softirq time that no process is charged for).
    pub machine_cpu_percent: f64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Subscriptions {
    pub users_done: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ServerProcess {
    pub pids: Vec<u32>,
    /// Before any connection.
    pub baseline: ProcSample,
    /// After every initial login and the settle time.
    pub after_login: ProcSample,
    /// At the end, before the sessions close.
    pub end: ProcSample,
    pub sessions_at_after_login: u64,
    pub cpu_seconds_logins: f64,
    pub cpu_us_per_login: Option<f64>,
    /// Over the measured stages.
    pub cpu_seconds_stages: f64,
    pub cpu_us_per_delivered: Option<f64>,
    /// (after_login.rss - baseline.rss) / sessions.
    pub kib_per_session: Option<f64>,
    pub peak_rss_kib: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ClientProcess {
    pub cpu_seconds: f64,
    /// Average CPU use over the run, 100 = one core.
    pub cpu_percent: f64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

fn millis(micros: u64) -> String {
    format!("{:.2}", micros as f64 / 1000.0)
}

/// What stream management did on the client side.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SmReport {
    /// `ack` or `resume`.
    pub mode: String,
    /// `--sm-request-every` (0: the generator never asks for acks).
    pub request_every: u32,
    /// Logins that got `<enabled/>` (reconnects included).
    pub enabled_sessions: u64,
    /// The server's `<r/>` answered with `<a h/>`.
    pub requests_answered: u64,
    /// Our `<r/>` written, and the server's `<a h/>` received (and checked).
    pub requests_sent: u64,
    pub acks_received: u64,
}

impl RunResult {
    /// The summary printed at the end of a run.
    pub fn human_summary(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "== starling-load {} against {} ({} at {}, {}, tls {}) ==",
            self.scenario, self.label, self.domain, self.server, self.transport, self.tls
        );
        let _ = writeln!(
            text,
            "users {}  ramp {}/s  wall {:.1}s  workers {}",
            self.users, self.ramp_per_second, self.wall_seconds, self.workers
        );
        if self.servers.len() > 1 {
            let shares: Vec<String> = self
                .servers
                .iter()
                .map(|share| format!("{} ({} users)", share.address, share.users))
                .collect();
            let _ = writeln!(
                text,
                "servers: {}; chat senders writing to another server: {}",
                shares.join(", "),
                self.cross_server_senders
            );
        }
        let login = &self.logins;
        let _ = writeln!(
            text,
            "logins: {} ok ({} initial, {} reconnects), {} failed; {:.1} logins/s over {:.2}s; connections {:.1}/s",
            login.ok, login.initial_ok, login.reconnects, login.failed, login.per_second, login.window_seconds, self.connections.per_second
        );
        let _ = writeln!(
            text,
            "login latency ms: p50 {}  p95 {}  p99 {}  max {}",
            millis(login.latency_us.p50),
            millis(login.latency_us.p95),
            millis(login.latency_us.p99),
            millis(login.latency_us.max)
        );
        if let Some(subscriptions) = &self.subscriptions {
            let _ = writeln!(
                text,
                "subscription setup: {} of {} users done in {:.1}s",
                subscriptions.users_done, self.users, subscriptions.seconds
            );
        }
        if self.stanzas.sent > 0 {
            let stanzas = &self.stanzas;
            let _ = writeln!(
                text,
                "stanzas: sent {} ({:.0}/s), delivered {} of {} expected ({:.2}%, {:.0}/s), out of order {}",
                stanzas.sent,
                stanzas.sent_per_second,
                stanzas.delivered,
                stanzas.expected,
                stanzas.delivery_ratio * 100.0,
                stanzas.delivered_per_second,
                stanzas.out_of_order
            );
            for stage in &self.stages {
                let _ = writeln!(
                    text,
                    "  stage {} target {:>7.0}/s: sent {:>7.0}/s delivered {:>7.0}/s ({:.2}%)  latency ms p50 {} p99 {} p99.9 {} max {}  server cpu {}  generator cpu {:.0}%  machine busy {:.0}%",
                    stage.index,
                    stage.target_rate,
                    stage.sent_per_second,
                    stage.delivered_per_second,
                    stage.delivery_ratio * 100.0,
                    millis(stage.latency_us.p50),
                    millis(stage.latency_us.p99),
                    millis(stage.latency_us.p999),
                    millis(stage.latency_us.max),
                    stage
                        .server_cpu_us_per_delivered
                        .map(|value| format!("{value:.1} us/delivered"))
                        .unwrap_or_else(|| "n/a".into()),
                    if stage.seconds > 0.0 { stage.client_cpu_seconds / stage.seconds * 100.0 } else { 0.0 },
                    stage.machine_cpu_percent
                );
            }
            if let Some(rate) = self.max_sustained_rate {
                let _ = writeln!(
                    text,
                    "max sustained rate with p99 < {} ms: {rate:.0}/s",
                    self.sustained_p99_limit_ms
                );
            }
        }
        let server = &self.server_process;
        if !server.pids.is_empty() {
            let _ = writeln!(
                text,
                "server {:?}: rss {} KiB idle -> {} KiB with {} sessions ({} KiB/session), peak {} KiB; cpu {:.2}s logins ({} us/login), {:.2}s stages ({} us/delivered)",
                server.pids,
                server.baseline.rss_kib,
                server.after_login.rss_kib,
                server.sessions_at_after_login,
                server.kib_per_session.map(|value| format!("{value:.1}")).unwrap_or_else(|| "n/a".into()),
                server.peak_rss_kib,
                server.cpu_seconds_logins,
                server.cpu_us_per_login.map(|value| format!("{value:.0}")).unwrap_or_else(|| "n/a".into()),
                server.cpu_seconds_stages,
                server.cpu_us_per_delivered.map(|value| format!("{value:.1}")).unwrap_or_else(|| "n/a".into()),
            );
        }
        let client = &self.client_process;
        let _ = writeln!(
            text,
            "generator: cpu {:.2}s ({:.0}% of one core), rss {} KiB (peak {} KiB)",
            client.cpu_seconds, client.cpu_percent, client.rss_kib, client.peak_rss_kib
        );
        if let Some(sm) = &self.sm {
            let _ = writeln!(
                text,
                "stream management: {} ({} sessions enabled); server <r/> answered {}; <r/> sent {} (every {}), <a/> received {}",
                sm.mode, sm.enabled_sessions, sm.requests_answered, sm.requests_sent, sm.request_every, sm.acks_received
            );
        }
        if self.errors.is_empty() {
            let _ = writeln!(text, "errors: none");
        } else {
            let _ = writeln!(text, "errors: {:?}", self.errors);
            for sample in &self.error_samples {
                let shortened: String = sample.chars().take(300).collect();
                let _ = writeln!(text, "  {shortened}");
            }
        }
        text
    }
}

/// The highest rate among stages that kept p99 under the limit and delivered.
pub fn max_sustained_rate(stages: &[StageResult], p99_limit_ms: f64) -> Option<f64> {
    stages
        .iter()
        .filter(|stage| {
            stage.latency_us.count > 0
                && (stage.latency_us.p99 as f64) < p99_limit_ms * 1000.0
                && stage.delivery_ratio >= 0.99
                && stage.sent_per_second >= 0.95 * stage.target_rate
        })
        .map(|stage| stage.target_rate)
        .fold(None, |best: Option<f64>, rate| {
            Some(best.map_or(rate, |best| best.max(rate)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(rate: f64, sent_rate: f64, p99: u64, ratio: f64) -> StageResult {
        StageResult {
            target_rate: rate,
            sent_per_second: sent_rate,
            delivery_ratio: ratio,
            latency_us: LatencySummary {
                count: 10,
                p99,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn sustained_rate_needs_latency_delivery_and_send_rate() {
        let stages = vec![
            stage(1000.0, 1000.0, 800, 1.0),
            stage(2000.0, 1990.0, 20_000, 0.999),
            stage(4000.0, 4000.0, 60_000, 1.0),
            stage(8000.0, 5000.0, 1_000, 1.0),
            stage(16000.0, 16000.0, 1_000, 0.5),
        ];
        assert_eq!(max_sustained_rate(&stages, 50.0), Some(2000.0));
        assert_eq!(max_sustained_rate(&stages, 0.5), None);
        assert_eq!(max_sustained_rate(&[], 50.0), None);
    }

    #[test]
    fn json_and_summary_render() {
        let result = RunResult {
            tool: "starling-load",
            label: "test".into(),
            scenario: "chat".into(),
            stanzas: Stanzas {
                sent: 10,
                delivered: 10,
                expected: 10,
                delivery_ratio: 1.0,
                ..Default::default()
            },
            stages: vec![stage(1000.0, 1000.0, 800, 1.0)],
            server_process: ServerProcess {
                pids: vec![1],
                kib_per_session: Some(12.5),
                ..Default::default()
            },
            ..Default::default()
        };
        let json: serde_json::Value = serde_json::to_value(&result).unwrap();
        assert_eq!(json["stanzas"]["sent"], 10);
        assert_eq!(json["stages"][0]["latency_us"]["p99"], 800);
        assert_eq!(json["server_process"]["kib_per_session"], 12.5);
        let summary = result.human_summary();
        assert!(summary.contains("stage 0 target"), "{summary}");
        assert!(summary.contains("12.5 KiB/session"), "{summary}");
        assert!(summary.contains("errors: none"));
    }
}
