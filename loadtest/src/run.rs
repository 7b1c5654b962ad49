//! The run: accounts, ramp-up, scenario phases, measurement windows, and the
//! per-user connection tasks.
//!
//! One task per simulated user owns its socket, read buffer and a
//! pre-serialised stanza template; a `watch` channel tells every task which
//! phase the run is in. Sends are scheduled from the stage start so a task
//! that falls behind catches up in one batched write.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rand::Rng;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until};

use crate::assign;
use crate::cli::{AccountSource, Args, Scenario};
use crate::conn::{self, Credentials, Session, Target, TlsMode, TransportMode};
use crate::procstat::{self, ProcSample};
use crate::report::{
    self, ClientProcess, Connections, Logins, RunResult, ServerProcess, ServerShare, StageResult,
    Stanzas, Subscriptions,
};
use crate::sasl::{Mechanism, SaltedPasswordCache};
use crate::sm::{self, SmEvent};
use crate::stats::{self, ErrorKind, LatencySummary, Stats, MAX_STAGES};
use crate::xml::{self, Event};

/// Connections per source address before another loopback address is used.
const CONNECTIONS_PER_SOURCE: usize = 20_000;
/// Smallest gap between two send batches of one session.
const MIN_SEND_GAP: Duration = Duration::from_millis(2);
/// Most stanzas one session writes in one batch.
const MAX_BATCH: u64 = 512;
/// The marker before the timestamp in a body or status: `LT:<16 digits
/// micros>:<10 digits sequence>:<2 digits stage>`.
const MARKER: &[u8] = b"LT:";
const MARKER_LEN: usize = 3 + 16 + 1 + 10 + 1 + 2;

/// What every task should be doing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    Login,
    /// presence-fanout: make the subscriptions.
    Setup,
    /// Sessions open, nothing sent (idle, and between stages).
    Hold,
    Run {
        stage: usize,
        start: Instant,
        per_sender_rate: f64,
    },
    /// Stop sending, keep receiving.
    Drain,
    Close,
}

struct Shared {
    args: Args,
    target: Target,
    stats: Stats,
    phase_tx: watch::Sender<Phase>,
    users: usize,
    /// Per user: does it send (chat, mixed chatters, presence-fanout).
    is_sender: Vec<bool>,
    /// Per user: who it sends messages to (chat, mixed).
    partner: Vec<usize>,
    senders: usize,
    /// Chat senders whose partner is on another server.
    cross_server_senders: usize,
    contacts_half: usize,
    /// Users whose first login succeeded or gave up.
    initial_settled: AtomicUsize,
    initial_ok: AtomicU64,
    /// Micros since epoch of the last initial login.
    last_initial_login: AtomicU64,
    tasks_alive: AtomicUsize,
}

impl Shared {
    fn phase(&self) -> Phase {
        *self.phase_tx.borrow()
    }

    fn contacts(&self, index: usize) -> impl Iterator<Item = usize> + '_ {
        let users = self.users;
        (1..=self.contacts_half).flat_map(move |distance| {
            [
                (index + distance) % users,
                (index + users - distance) % users,
            ]
        })
    }

    fn jid(&self, index: usize) -> String {
        format!(
            "{}@{}",
            self.args.username(self.args.first_index + index),
            self.args.domain
        )
    }
}

/// Run the whole load test described by `args`.
pub async fn run(args: Args) -> anyhow::Result<RunResult> {
    stats::epoch();
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    raise_nofile_limit(args.users);
    let shared = Arc::new(build_shared(args)?);
    let args = &shared.args;

    if args.accounts_cmd.is_some() || args.accounts != AccountSource::Existing {
        create_accounts(&shared).await?;
        if args.accounts_only {
            let mut result = RunResult {
                tool: "starling-load",
                scenario: "accounts".into(),
                ..Default::default()
            };
            result.errors = shared.stats.errors_by_kind();
            result.error_samples = shared.stats.error_samples.lock().clone();
            result.logins.ok = shared.stats.registered.load(Relaxed);
            return Ok(result);
        }
    }

    let server_pids = |shared: &Shared| {
        procstat::expand_descendants(&shared.args.server_pids, !shared.args.no_server_children)
    };
    let sample_server = |shared: &Shared| procstat::sample(&server_pids(shared));
    let baseline = sample_server(&shared);
    let client_start = procstat::sample_self();

    let progress = tokio::spawn(progress_loop(shared.clone()));

    // Ramp up.
    let ramp_start = Instant::now();
    let ramp_start_micros = stats::now_micros();
    let ramp = shared.clone();
    tokio::spawn(async move {
        let mut spawned = 0;
        while spawned < ramp.users {
            let due = ((ramp_start.elapsed().as_secs_f64() * ramp.args.ramp).ceil() as usize)
                .clamp(1, ramp.users);
            while spawned < due {
                ramp.tasks_alive.fetch_add(1, Relaxed);
                tokio::spawn(user_task(ramp.clone(), spawned));
                spawned += 1;
            }
            sleep(Duration::from_millis(5)).await;
        }
    });
    let login_deadline = ramp_start
        + Duration::from_secs_f64(
            shared.users as f64 / args.ramp.max(0.001)
                + args.login_timeout * f64::from(args.login_retries + 1)
                + 10.0,
        );
    while shared.initial_settled.load(Relaxed) < shared.users && Instant::now() < login_deadline {
        sleep(Duration::from_millis(20)).await;
    }
    let initial_ok = shared.initial_ok.load(Relaxed);
    let login_window = (shared
        .last_initial_login
        .load(Relaxed)
        .saturating_sub(ramp_start_micros)) as f64
        / 1e6;
    let after_login_cpu = sample_server(&shared).cpu_seconds;

    let mut stage_results = Vec::new();
    let mut subscriptions = None;
    let measure_memory = |shared: Arc<Shared>| async move {
        sleep(Duration::from_secs_f64(shared.args.settle)).await;
        (
            sample_server(&shared),
            shared.stats.sessions_online.load(Relaxed),
        )
    };

    let (after_login, sessions_at_after_login) = if args.scenario != Scenario::LoginStorm {
        shared.phase_tx.send_replace(Phase::Hold);
        measure_memory(shared.clone()).await
    } else {
        (
            sample_server(&shared),
            shared.stats.sessions_online.load(Relaxed),
        )
    };

    match args.scenario {
        Scenario::LoginStorm => {}
        Scenario::Idle => {
            sleep(Duration::from_secs_f64(args.duration)).await;
        }
        Scenario::PresenceFanout => {
            let setup_start = Instant::now();
            shared.phase_tx.send_replace(Phase::Setup);
            let deadline = setup_start + Duration::from_secs_f64(args.setup_timeout);
            let online = shared.stats.sessions_online.load(Relaxed);
            while shared.stats.subscriptions_done.load(Relaxed) < online
                && Instant::now() < deadline
            {
                sleep(Duration::from_millis(50)).await;
            }
            let done = shared.stats.subscriptions_done.load(Relaxed);
            if done < online {
                shared.stats.error(ErrorKind::SubscriptionSetup, || {
                    format!("{done} of {online} users got all their subscriptions approved in time")
                });
            }
            subscriptions = Some(Subscriptions {
                users_done: done,
                seconds: setup_start.elapsed().as_secs_f64(),
            });
            shared.phase_tx.send_replace(Phase::Hold);
            // Let the roster pushes and presence of the setup pass.
            sleep(Duration::from_secs(1)).await;
            stage_results = run_stages(&shared, &sample_server).await;
        }
        Scenario::Chat | Scenario::Mixed => {
            stage_results = run_stages(&shared, &sample_server).await;
        }
    }

    // Drain: wait for late deliveries.
    shared.phase_tx.send_replace(Phase::Drain);
    let per_stanza = recipients_per_stanza(&shared) as u64;
    let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain);
    if shared.stats.sent.load(Relaxed) > 0 {
        while shared.stats.delivered.load(Relaxed) < shared.stats.sent.load(Relaxed) * per_stanza
            && Instant::now() < drain_deadline
        {
            sleep(Duration::from_millis(20)).await;
        }
    }
    let end = sample_server(&shared);
    let client_end = procstat::sample_self();

    // Close every session.
    shared.phase_tx.send_replace(Phase::Close);
    let close_deadline = Instant::now() + Duration::from_secs(10);
    while shared.tasks_alive.load(Relaxed) > 0 && Instant::now() < close_deadline {
        sleep(Duration::from_millis(20)).await;
    }
    progress.abort();

    // Late-arriving stage counters (delivered after the stage ended) are final now.
    for stage in &mut stage_results {
        let counters = &shared.stats.stages[stage.index];
        stage.delivered = counters.delivered.load(Relaxed);
        stage.expected = stage.sent * per_stanza;
        stage.delivery_ratio = ratio(stage.delivered, stage.expected);
        stage.latency_us = LatencySummary::of(&counters.latency.merged());
    }

    let stats = &shared.stats;
    let wall = started.elapsed().as_secs_f64();
    let sent = stats.sent.load(Relaxed);
    let delivered = stats.delivered.load(Relaxed);
    let measured_seconds: f64 = stage_results.iter().map(|stage| stage.seconds).sum();
    let mut all_latency = stats::new_histogram();
    for stage in &stage_results {
        all_latency
            .add(stats.stages[stage.index].latency.merged())
            .expect("same bounds");
    }
    let stage_cpu: f64 = stage_results
        .iter()
        .map(|stage| stage.server_cpu_seconds)
        .sum();
    let stage_delivered_in_windows: f64 = stage_results
        .iter()
        .map(|stage| stage.delivered_per_second * stage.seconds)
        .sum();
    let have_server = !args.server_pids.is_empty();
    let login_cpu = after_login_cpu - baseline.cpu_seconds;
    let p99_limit_ms = args.stop_p99_ms.unwrap_or(50.0);
    let attempts = stats.connect_attempts.load(Relaxed);
    let connect_errors = stats.errors[ErrorKind::ALL
        .iter()
        .position(|kind| *kind == ErrorKind::Connect)
        .expect("listed")]
    .load(Relaxed);

    let error_samples = stats.error_samples.lock().clone();
    let result = RunResult {
        tool: "starling-load",
        version: env!("CARGO_PKG_VERSION"),
        label: args.label.clone(),
        scenario: args.scenario.as_str().into(),
        server: args.servers.join(","),
        servers: shared
            .target
            .servers
            .iter()
            .enumerate()
            .map(|(server, address)| ServerShare {
                address: address.to_string(),
                users: (0..shared.users)
                    .filter(|&index| {
                        assign::server_index(index, shared.target.servers.len()) == server
                    })
                    .count(),
            })
            .collect(),
        cross_server_senders: if matches!(args.scenario, Scenario::Chat | Scenario::Mixed) {
            shared.cross_server_senders
        } else {
            0
        },
        domain: args.domain.clone(),
        tls: format!("{:?}", args.tls).to_lowercase(),
        transport: format!("{:?}", args.transport).to_lowercase(),
        users: shared.users,
        ramp_per_second: args.ramp,
        stage_seconds: args.duration,
        target_rates: if matches!(
            args.scenario,
            Scenario::Chat | Scenario::Mixed | Scenario::PresenceFanout
        ) {
            args.stage_rates()
        } else {
            Vec::new()
        },
        contacts: if args.scenario == Scenario::PresenceFanout {
            shared.contacts_half * 2
        } else {
            0
        },
        workers: args.workers,
        started_unix,
        wall_seconds: wall,
        connections: Connections {
            attempts,
            established: attempts.saturating_sub(connect_errors),
            per_second: if login_window > 0.0 {
                initial_ok as f64 / login_window
            } else {
                0.0
            },
        },
        logins: Logins {
            ok: stats.logins_ok.load(Relaxed),
            failed: stats.logins_failed.load(Relaxed),
            initial_ok,
            window_seconds: login_window,
            per_second: if login_window > 0.0 {
                initial_ok as f64 / login_window
            } else {
                0.0
            },
            reconnects: stats.reconnects.load(Relaxed),
            latency_us: LatencySummary::of(&stats.login_latency.merged()),
        },
        stanzas: Stanzas {
            sent,
            delivered,
            expected: sent * per_stanza,
            delivery_ratio: ratio(delivered, sent * per_stanza),
            sent_per_second: if measured_seconds > 0.0 {
                sent as f64 / measured_seconds
            } else {
                0.0
            },
            delivered_per_second: if measured_seconds > 0.0 {
                stage_delivered_in_windows / measured_seconds
            } else {
                0.0
            },
            out_of_order: stats.out_of_order.load(Relaxed),
            other_presence_received: stats.presence_received.load(Relaxed),
            iq_answered: stats.iq_answered.load(Relaxed),
        },
        latency_us: LatencySummary::of(&all_latency),
        max_sustained_rate: report::max_sustained_rate(&stage_results, p99_limit_ms),
        sustained_p99_limit_ms: p99_limit_ms,
        stages: stage_results,
        subscriptions,
        sm: (args.sm != sm::SmMode::Off).then(|| report::SmReport {
            mode: format!("{:?}", args.sm).to_lowercase(),
            request_every: args.sm_request_every,
            enabled_sessions: stats.sm_enabled.load(Relaxed),
            requests_answered: stats.sm_requests_answered.load(Relaxed),
            requests_sent: stats.sm_requests_sent.load(Relaxed),
            acks_received: stats.sm_acks_received.load(Relaxed),
        }),
        errors: stats.errors_by_kind(),
        error_samples,
        server_process: ServerProcess {
            pids: args.server_pids.clone(),
            baseline,
            after_login,
            end,
            sessions_at_after_login,
            cpu_seconds_logins: login_cpu,
            cpu_us_per_login: (have_server && initial_ok > 0)
                .then(|| login_cpu * 1e6 / initial_ok as f64),
            cpu_seconds_stages: stage_cpu,
            cpu_us_per_delivered: (have_server && stage_delivered_in_windows > 0.0)
                .then(|| stage_cpu * 1e6 / stage_delivered_in_windows),
            kib_per_session: (have_server && sessions_at_after_login > 0).then(|| {
                (after_login.rss_kib as f64 - baseline.rss_kib as f64)
                    / sessions_at_after_login as f64
            }),
            peak_rss_kib: end.hwm_kib.max(after_login.hwm_kib),
        },
        client_process: ClientProcess {
            cpu_seconds: client_end.cpu_seconds - client_start.cpu_seconds,
            cpu_percent: (client_end.cpu_seconds - client_start.cpu_seconds) / wall * 100.0,
            rss_kib: client_end.rss_kib,
            peak_rss_kib: client_end.hwm_kib,
        },
    };
    Ok(result)
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

/// How many recipients each sent stanza has.
fn recipients_per_stanza(shared: &Shared) -> usize {
    if shared.args.scenario == Scenario::PresenceFanout {
        shared.contacts_half * 2
    } else {
        1
    }
}

/// Run each stage for `--duration`, measuring the server over its window.
async fn run_stages(
    shared: &Arc<Shared>,
    sample_server: &impl Fn(&Shared) -> ProcSample,
) -> Vec<StageResult> {
    let args = &shared.args;
    let mut results = Vec::new();
    let per_stanza = recipients_per_stanza(shared) as u64;
    for (stage, &rate) in args.stage_rates().iter().enumerate().take(MAX_STAGES) {
        let counters = &shared.stats.stages[stage];
        let server_before = sample_server(shared);
        let client_before = procstat::sample_self();
        let machine_before = procstat::machine_cpu();
        let delivered_before = shared.stats.delivered.load(Relaxed);
        let start = Instant::now();
        let per_sender_rate = rate / shared.senders.max(1) as f64;
        shared.phase_tx.send_replace(Phase::Run {
            stage,
            start,
            per_sender_rate,
        });
        sleep(Duration::from_secs_f64(args.duration)).await;
        let seconds = start.elapsed().as_secs_f64();
        shared.phase_tx.send_replace(Phase::Hold);
        let delivered_window = shared.stats.delivered.load(Relaxed) - delivered_before;
        let server_after = sample_server(shared);
        let client_after = procstat::sample_self();
        let machine_after = procstat::machine_cpu();
        // Give this stage's stragglers a moment before judging it.
        sleep(Duration::from_millis(300)).await;
        let sent = counters.sent.load(Relaxed);
        let delivered = counters.delivered.load(Relaxed);
        let server_cpu = server_after.cpu_seconds - server_before.cpu_seconds;
        let result = StageResult {
            index: stage,
            target_rate: rate,
            seconds,
            sent,
            delivered,
            expected: sent * per_stanza,
            delivery_ratio: ratio(delivered, sent * per_stanza),
            sent_per_second: sent as f64 / seconds,
            delivered_per_second: delivered_window as f64 / seconds,
            latency_us: LatencySummary::of(&counters.latency.merged()),
            server_cpu_seconds: server_cpu,
            server_cpu_us_per_delivered: (!args.server_pids.is_empty() && delivered_window > 0)
                .then(|| server_cpu * 1e6 / delivered_window as f64),
            client_cpu_seconds: client_after.cpu_seconds - client_before.cpu_seconds,
            machine_cpu_percent: (machine_after.0 - machine_before.0) / seconds * 100.0,
        };
        let failed = result.latency_us.count == 0
            || args
                .stop_p99_ms
                .is_some_and(|limit| result.latency_us.p99 as f64 > limit * 1000.0)
            || result.delivery_ratio < 0.99;
        if !args.quiet {
            eprintln!(
                "stage {stage} target {rate:.0}/s: sent {:.0}/s, delivered {:.2}%, p99 {:.2} ms",
                result.sent_per_second,
                result.delivery_ratio * 100.0,
                result.latency_us.p99 as f64 / 1000.0
            );
        }
        results.push(result);
        if failed && args.stop_p99_ms.is_some() {
            break;
        }
    }
    results
}

fn build_shared(args: Args) -> anyhow::Result<Shared> {
    let users = args.users;
    if users == 0 {
        bail!("--users must be at least 1");
    }
    if args.ramp <= 0.0 {
        bail!("--ramp must be positive");
    }
    let mut servers: Vec<SocketAddr> = Vec::with_capacity(args.servers.len());
    for server in &args.servers {
        servers.push(
            server
                .trim()
                .parse()
                .with_context(|| format!("--server {server} is not an ip:port"))?,
        );
    }
    if servers.is_empty() {
        bail!("--server needs at least one address");
    }
    if args.transport == TransportMode::Websocket {
        if args.tls == TlsMode::Starttls {
            bail!("--tls starttls does not exist over WebSocket (RFC 7395): use --tls none (ws://) or --tls direct (wss://)");
        }
        if !args.ws_path.starts_with('/') {
            bail!("--ws-path must start with /");
        }
    }
    let mut mechanisms = Vec::new();
    for name in &args.mechanisms {
        mechanisms.push(
            Mechanism::from_name(name).with_context(|| format!("unknown SASL mechanism {name}"))?,
        );
    }
    let mut source_addrs = args.source_addrs.clone();
    if source_addrs.is_empty()
        && servers
            .iter()
            .all(|server| server.ip().is_loopback() && server.is_ipv4())
        && users > CONNECTIONS_PER_SOURCE
    {
        let count = users.div_ceil(CONNECTIONS_PER_SOURCE);
        source_addrs = (0..count)
            .map(|offset| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + offset as u8)))
            .collect();
    }
    let contacts_half = args.contacts.div_ceil(2);
    if args.scenario == Scenario::PresenceFanout && contacts_half * 2 >= users {
        bail!(
            "presence-fanout needs more users ({users}) than contacts per user ({})",
            contacts_half * 2
        );
    }
    let is_sender: Vec<bool> = match args.scenario {
        Scenario::Chat | Scenario::PresenceFanout => vec![true; users],
        Scenario::Mixed => {
            let fraction = args.chatters.clamp(0.0, 1.0);
            (0..users)
                .map(|index| {
                    ((index + 1) as f64 * fraction).floor() > (index as f64 * fraction).floor()
                })
                .collect()
        }
        Scenario::LoginStorm | Scenario::Idle => vec![false; users],
    };
    let partners = assign::chat_partners(&is_sender, servers.len());
    if servers.len() > 1
        && matches!(args.scenario, Scenario::Chat | Scenario::Mixed)
        && !partners.all_cross()
    {
        let message = format!(
            "only {} of {} chat senders can write to a user on another server: with {} servers no server may hold more than half of the senders (try an even --users)",
            partners.cross_server,
            partners.senders,
            servers.len()
        );
        if args.scenario == Scenario::Chat {
            bail!("{message}");
        }
        eprintln!("warning: {message}");
    }
    let (phase_tx, _) = watch::channel(Phase::Login);
    Ok(Shared {
        target: Target {
            servers,
            domain: args.domain.clone(),
            tls: args.tls,
            transport: args.transport,
            ws_path: args.ws_path.clone(),
            mechanisms,
            resource: args.resource.clone(),
            roster_get: !args.no_roster,
            sm: args.sm,
            source_addrs,
            tls_connector: conn::insecure_tls_connector(),
        },
        stats: Stats::new(),
        phase_tx,
        users,
        senders: partners.senders,
        cross_server_senders: partners.cross_server,
        is_sender,
        partner: partners.partner,
        contacts_half,
        initial_settled: AtomicUsize::new(0),
        initial_ok: AtomicU64::new(0),
        last_initial_login: AtomicU64::new(0),
        tasks_alive: AtomicUsize::new(0),
        args,
    })
}

/// Raise RLIMIT_NOFILE to what the run needs (at most the hard limit).
fn raise_nofile_limit(users: usize) {
    let wanted = (users as u64) * 2 + 1024;
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, hard)) if soft < wanted => {
            let new_soft = wanted.min(hard);
            if let Err(error) = rlimit::Resource::NOFILE.set(new_soft, hard) {
                eprintln!("warning: could not raise RLIMIT_NOFILE to {new_soft}: {error}");
            } else if new_soft < users as u64 + 64 {
                eprintln!(
                    "warning: RLIMIT_NOFILE hard limit {hard} leaves room for fewer than {users} sessions: raise it (ulimit -Hn as root) or split the users over several processes"
                );
            }
        }
        Ok(_) => {}
        Err(error) => eprintln!("warning: could not read RLIMIT_NOFILE: {error}"),
    }
}

/// Create the accounts with the command template or XEP-0077.
async fn create_accounts(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let args = &shared.args;
    let semaphore = Arc::new(tokio::sync::Semaphore::new(args.accounts_parallel.max(1)));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(shared.users);
    for index in 0..shared.users {
        let permit = semaphore.clone().acquire_owned().await?;
        let task_shared = shared.clone();
        handles.push(tokio::spawn(async move {
            let shared = task_shared;
            let _permit = permit;
            let args = &shared.args;
            let number = args.first_index + index;
            let outcome = match &args.accounts_cmd {
                Some(template) => {
                    run_account_command(&args.account_command(template, number)).await
                }
                None => {
                    let username = args.username(number);
                    let password = args.password_of(number);
                    let credentials = Credentials {
                        username: &username,
                        password: &password,
                    };
                    match tokio::time::timeout(
                        Duration::from_secs_f64(args.login_timeout),
                        conn::register(&shared.target, index, &credentials),
                    )
                    .await
                    {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(error)) => Err((error.kind, error.message)),
                        Err(_) => Err((ErrorKind::Timeout, "registration timed out".into())),
                    }
                }
            };
            match outcome {
                Ok(()) => {
                    shared.stats.registered.fetch_add(1, Relaxed);
                }
                Err((kind, message)) => shared.stats.error(kind, || message),
            }
        }));
        if !args.quiet && index > 0 && index % 1000 == 0 {
            eprintln!(
                "accounts: {index} of {} started ({:.0}s)",
                shared.users,
                started.elapsed().as_secs_f64()
            );
        }
    }
    for handle in handles {
        handle.await?;
    }
    let created = shared.stats.registered.load(Relaxed);
    if !args.quiet {
        eprintln!(
            "accounts: {created} of {} created or present in {:.1}s",
            shared.users,
            started.elapsed().as_secs_f64()
        );
    }
    if created == 0 {
        bail!(
            "no account could be created: {:?}",
            shared.stats.error_samples.lock()
        );
    }
    Ok(())
}

async fn run_account_command(command: &str) -> Result<(), (ErrorKind, String)> {
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|error| (ErrorKind::AccountCommand, format!("{command}: {error}")))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let text = format!("{stderr}{stdout}").to_lowercase();
    // An account that exists already is what we want.
    if text.contains("exist") || text.contains("conflict") {
        return Ok(());
    }
    Err((
        ErrorKind::AccountCommand,
        format!("{command}: {} {}", output.status, stderr.trim()),
    ))
}

/// The per-user state that survives reconnects.
struct UserState {
    index: usize,
    /// The stanza sent in a Run phase, with the marker digits to patch.
    template: Vec<u8>,
    marker_at: usize,
    sequence: u64,
    /// Stage the counters below belong to.
    plan_stage: usize,
    stage_sent: u64,
    /// Random phase in [0, 1) so that senders do not fire together.
    offset: f64,
    last_sequence_received: u64,
    subscribed: usize,
    setup_sent: bool,
    subscribes_sent: bool,
    salted_cache: Option<SaltedPasswordCache>,
    /// `user@domain`, to recognise the copy of its own presence that the
    /// server sends back (RFC 6121 section 4.4.2).
    bare_jid: Vec<u8>,
}

/// Outcome of a session's run loop.
enum SessionEnd {
    Finished,
    Reconnect,
    Lost,
}

async fn user_task(shared: Arc<Shared>, index: usize) {
    let args = &shared.args;
    let number = args.first_index + index;
    let username = args.username(number);
    let password = args.password_of(number);
    let (template, marker_at) = build_template(&shared, index);
    let mut state = UserState {
        index,
        template,
        marker_at,
        sequence: 0,
        plan_stage: usize::MAX,
        stage_sent: 0,
        offset: rand::thread_rng().gen(),
        last_sequence_received: 0,
        subscribed: 0,
        setup_sent: false,
        subscribes_sent: false,
        salted_cache: None,
        bare_jid: shared.jid(index).into_bytes(),
    };
    let mut initial = true;
    let mut failures = 0;
    let login_timeout = Duration::from_secs_f64(args.login_timeout);
    loop {
        if shared.phase() == Phase::Close {
            break;
        }
        shared.stats.connect_attempts.fetch_add(1, Relaxed);
        let attempt_start = Instant::now();
        let credentials = Credentials {
            username: &username,
            password: &password,
        };
        let outcome = tokio::time::timeout(
            login_timeout,
            conn::login(&shared.target, index, &credentials, &mut state.salted_cache),
        )
        .await;
        match outcome {
            Ok(Ok(session)) => {
                shared
                    .stats
                    .login_latency
                    .record(index, attempt_start.elapsed().as_micros() as u64);
                shared.stats.logins_ok.fetch_add(1, Relaxed);
                if initial {
                    initial = false;
                    shared.initial_ok.fetch_add(1, Relaxed);
                    shared
                        .last_initial_login
                        .fetch_max(stats::now_micros(), Relaxed);
                    shared.initial_settled.fetch_add(1, Relaxed);
                }
                failures = 0;
                if session.sm.is_some() {
                    shared.stats.sm_enabled.fetch_add(1, Relaxed);
                }
                shared.stats.sessions_online.fetch_add(1, Relaxed);
                let end = session_loop(&shared, session, &mut state).await;
                shared.stats.sessions_online.fetch_sub(1, Relaxed);
                match end {
                    SessionEnd::Finished => break,
                    SessionEnd::Reconnect => {
                        shared.stats.reconnects.fetch_add(1, Relaxed);
                        continue;
                    }
                    SessionEnd::Lost => {
                        sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            Ok(Err(error)) => {
                shared.stats.logins_failed.fetch_add(1, Relaxed);
                shared
                    .stats
                    .error(error.kind, || format!("{username}: {}", error.message));
            }
            Err(_) => {
                shared.stats.logins_failed.fetch_add(1, Relaxed);
                shared.stats.error(ErrorKind::Timeout, || {
                    format!("{username}: login timed out")
                });
            }
        }
        failures += 1;
        let give_up = args.scenario == Scenario::LoginStorm || failures > args.login_retries;
        if give_up {
            break;
        }
        sleep(Duration::from_secs(1)).await;
    }
    if initial {
        shared.initial_settled.fetch_add(1, Relaxed);
    }
    shared.tasks_alive.fetch_sub(1, Relaxed);
}

/// The pre-serialised stanza this user sends, and where its marker digits start.
fn build_template(shared: &Shared, index: usize) -> (Vec<u8>, usize) {
    let args = &shared.args;
    let padding = "x".repeat(args.body_size);
    let (head, tail) = match args.scenario {
        Scenario::PresenceFanout => (
            "<presence><status>".to_string(),
            format!("{padding}</status></presence>"),
        ),
        Scenario::Chat | Scenario::Mixed if shared.partner[index] != usize::MAX => (
            format!(
                "<message to='{}' type='chat' id='lt'><body>",
                xml::escape(&shared.jid(shared.partner[index]))
            ),
            format!("{padding}</body></message>"),
        ),
        _ => return (Vec::new(), 0),
    };
    let mut template = Vec::with_capacity(head.len() + MARKER_LEN + tail.len());
    template.extend_from_slice(head.as_bytes());
    let marker_at = template.len();
    template.extend_from_slice(b"LT:0000000000000000:0000000000:00");
    template.extend_from_slice(tail.as_bytes());
    (template, marker_at)
}

/// Write `value` as fixed-width decimal digits, most significant first.
pub fn write_digits(destination: &mut [u8], mut value: u64) {
    for byte in destination.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

fn parse_digits(digits: &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for &byte in digits {
        if !byte.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u64::from(byte - b'0');
    }
    Some(value)
}

/// `(timestamp micros, sequence, stage)` of a marker found in an element.
pub fn parse_marker(element: &[u8]) -> Option<(u64, u64, usize)> {
    let at = memchr::memmem::find(element, MARKER)?;
    let marker = element.get(at..at + MARKER_LEN)?;
    let timestamp = parse_digits(&marker[3..19])?;
    let sequence = parse_digits(&marker[20..30])?;
    let stage = parse_digits(&marker[31..33])? as usize;
    Some((timestamp, sequence, stage))
}

/// Append `count` stanzas from the template, each with a fresh timestamp and sequence.
fn append_stanzas(state: &mut UserState, out: &mut Vec<u8>, count: u64, stage: usize) {
    let now = stats::now_micros();
    for _ in 0..count {
        state.sequence += 1;
        let start = out.len();
        out.extend_from_slice(&state.template);
        let marker = &mut out[start + state.marker_at..start + state.marker_at + MARKER_LEN];
        write_digits(&mut marker[3..19], now);
        write_digits(&mut marker[20..30], state.sequence);
        write_digits(&mut marker[31..33], stage as u64);
    }
}

async fn session_loop(
    shared: &Arc<Shared>,
    mut session: Session,
    state: &mut UserState,
) -> SessionEnd {
    let args = &shared.args;
    let mut phase_rx = shared.phase_tx.subscribe();
    let mut out: Vec<u8> = Vec::new();
    let is_sender = shared.is_sender[state.index] && !state.template.is_empty();
    let reconnects = args.scenario == Scenario::Mixed
        && !shared.is_sender[state.index]
        && args.reconnect_rate > 0.0;
    let idle_users = (shared.users - shared.senders).max(1) as f64;
    let reconnect_at = reconnects.then(|| {
        let mean = idle_users / args.reconnect_rate;
        let uniform: f64 = rand::thread_rng().gen_range(f64::EPSILON..1.0);
        Instant::now() + Duration::from_secs_f64(-uniform.ln() * mean)
    });
    let mut last_batch = Instant::now() - MIN_SEND_GAP;
    loop {
        let phase = *phase_rx.borrow_and_update();
        if phase == Phase::Close {
            if !out.is_empty() {
                let _ = session.send(&out).await;
            }
            session.close().await;
            return SessionEnd::Finished;
        }
        if phase == Phase::Setup && !state.setup_sent && args.scenario == Scenario::PresenceFanout {
            state.setup_sent = true;
            if session.roster_both >= shared.contacts_half * 2 {
                // Subscribed in an earlier run already (the roster says so).
                state.subscribed = shared.contacts_half * 2;
                shared.stats.subscriptions_done.fetch_add(1, Relaxed);
            }
        }
        if phase == Phase::Setup
            && state.subscribed < shared.contacts_half * 2
            && !state.subscribes_sent
        {
            state.subscribes_sent = true;
            for contact in shared.contacts(state.index) {
                out.extend_from_slice(b"<presence type='subscribe' to='");
                out.extend_from_slice(xml::escape(&shared.jid(contact)).as_bytes());
                out.extend_from_slice(b"'/>");
                if let Some(sm) = session.sm.as_mut() {
                    sm.stanzas_sent(1);
                }
            }
        }
        // When is the next batch due?
        let mut next_send = None;
        if let Phase::Run {
            stage,
            start,
            per_sender_rate,
        } = phase
        {
            if is_sender && per_sender_rate > 0.0 {
                if state.plan_stage != stage {
                    state.plan_stage = stage;
                    state.stage_sent = 0;
                }
                let elapsed = start.elapsed().as_secs_f64();
                let due = ((elapsed * per_sender_rate + state.offset).floor() as u64)
                    .saturating_sub(state.stage_sent);
                if due > 0 && last_batch.elapsed() >= MIN_SEND_GAP {
                    let count = due.min(MAX_BATCH);
                    append_stanzas(state, &mut out, count, stage);
                    if let Some(sm) = session.sm.as_mut() {
                        sm.stanzas_sent(count);
                        if sm.maybe_request(args.sm_request_every, &mut out) {
                            shared.stats.sm_requests_sent.fetch_add(1, Relaxed);
                        }
                    }
                    state.stage_sent += count;
                    shared.stats.sent.fetch_add(count, Relaxed);
                    shared.stats.stages[stage].sent.fetch_add(count, Relaxed);
                    last_batch = Instant::now();
                }
                let next_at = (state.stage_sent as f64 + 1.0 - state.offset) / per_sender_rate;
                let at = start + Duration::from_secs_f64(next_at.max(0.0));
                next_send = Some(at.max(last_batch + MIN_SEND_GAP));
            }
        }
        if !out.is_empty() {
            if let Err(error) = session.send(&out).await {
                shared.stats.error(error.kind, || error.message.clone());
                return SessionEnd::Lost;
            }
            out.clear();
            if out.capacity() > 64 * 1024 {
                out.shrink_to(4096);
            }
        }
        let reconnect_armed =
            reconnect_at.filter(|_| matches!(phase, Phase::Run { .. } | Phase::Hold));
        tokio::select! {
            changed = phase_rx.changed() => {
                if changed.is_err() {
                    session.close().await;
                    return SessionEnd::Finished;
                }
            }
            read = session.fill() => {
                match read {
                    Ok(true) => {
                        if let Err(kind) = process_incoming(shared, &mut session, state, &mut out) {
                            if kind != ErrorKind::Sm {
                                // (stream management failures were reported with their element)
                                shared.stats.error(kind, || format!("{}: stream ended", session.full_jid));
                            }
                            return SessionEnd::Lost;
                        }
                    }
                    Ok(false) => {
                        if phase != Phase::Close {
                            shared.stats.error(ErrorKind::StreamClosed, || format!("{}: connection closed", session.full_jid));
                        }
                        return SessionEnd::Lost;
                    }
                    Err(error) => {
                        shared.stats.error(ErrorKind::Io, || error.to_string());
                        return SessionEnd::Lost;
                    }
                }
            }
            _ = sleep_until(next_send.unwrap_or_else(Instant::now).into()), if next_send.is_some() => {}
            _ = sleep_until(reconnect_armed.unwrap_or_else(Instant::now).into()), if reconnect_armed.is_some() => {
                session.close().await;
                return SessionEnd::Reconnect;
            }
        }
    }
}

/// Handle every complete element in the buffer; answers go to `out`.
fn process_incoming(
    shared: &Shared,
    session: &mut Session,
    state: &mut UserState,
    out: &mut Vec<u8>,
) -> Result<(), ErrorKind> {
    let stats = &shared.stats;
    let check_order = matches!(shared.args.scenario, Scenario::Chat | Scenario::Mixed);
    while let Some(event) = session.scanner.next(&session.buffer) {
        let range = match event {
            Event::Element(range) => range,
            Event::StreamHeader(_) => continue,
            Event::StreamEnd => return Err(ErrorKind::StreamClosed),
        };
        let element = &session.buffer[range];
        let name = xml::name(element);
        if let Some(stream) = session.sm.as_mut() {
            if sm::is_stanza(name) {
                stream.stanza_received();
            } else {
                match stream.nonza(name, element, out) {
                    Ok(SmEvent::Answered) => {
                        stats.sm_requests_answered.fetch_add(1, Relaxed);
                        continue;
                    }
                    Ok(SmEvent::Acked) => {
                        stats.sm_acks_received.fetch_add(1, Relaxed);
                        continue;
                    }
                    Ok(SmEvent::Other) => {}
                    Err(error) => {
                        stats.error(ErrorKind::Sm, || {
                            format!("{}: {}", session.full_jid, error.0)
                        });
                        return Err(ErrorKind::Sm);
                    }
                }
            }
        }
        let kind = xml::attribute(element, "type");
        match name {
            b"message" | b"presence" if kind == Some(b"error") => {
                stats.error(ErrorKind::StanzaError, || {
                    String::from_utf8_lossy(element).into_owned()
                });
            }
            b"message" => {
                if let Some((timestamp, sequence, stage)) = parse_marker(element) {
                    record_delivery(shared, state.index, timestamp, stage);
                    if check_order {
                        if sequence <= state.last_sequence_received {
                            stats.out_of_order.fetch_add(1, Relaxed);
                        }
                        state.last_sequence_received = sequence;
                    }
                }
            }
            b"presence" => match kind {
                Some(b"subscribe") => {
                    if let Some(from) = xml::attribute(element, "from") {
                        let bare = from.split(|&byte| byte == b'/').next().unwrap_or(from);
                        out.extend_from_slice(b"<presence type='subscribed' to='");
                        out.extend_from_slice(bare);
                        out.extend_from_slice(b"'/>");
                        if let Some(stream) = session.sm.as_mut() {
                            stream.stanzas_sent(1);
                        }
                    }
                }
                Some(b"subscribed") => {
                    state.subscribed += 1;
                    if state.subscribed == shared.contacts_half * 2 {
                        stats.subscriptions_done.fetch_add(1, Relaxed);
                    }
                }
                _ => {
                    let from = xml::attribute(element, "from").unwrap_or(b"");
                    let from_bare = from.split(|&byte| byte == b'/').next().unwrap_or(from);
                    if from_bare == state.bare_jid.as_slice() {
                        // Our own broadcast reflected to us: not a delivery to a contact.
                        continue;
                    }
                    if let Some((timestamp, _, stage)) = parse_marker(element) {
                        record_delivery(shared, state.index, timestamp, stage);
                    } else {
                        stats.presence_received.fetch_add(1, Relaxed);
                    }
                }
            },
            b"iq" if matches!(kind, Some(b"get") | Some(b"set")) => {
                out.extend_from_slice(b"<iq type='result' id='");
                out.extend_from_slice(xml::attribute(element, "id").unwrap_or(b""));
                out.push(b'\'');
                if let Some(from) = xml::attribute(element, "from") {
                    out.extend_from_slice(b" to='");
                    out.extend_from_slice(from);
                    out.push(b'\'');
                }
                out.extend_from_slice(b"/>");
                if let Some(stream) = session.sm.as_mut() {
                    stream.stanzas_sent(1);
                }
                stats.iq_answered.fetch_add(1, Relaxed);
            }
            b"stream:error" => return Err(ErrorKind::StreamError),
            _ => {}
        }
    }
    Ok(())
}

fn record_delivery(shared: &Shared, index: usize, timestamp: u64, stage: usize) {
    let latency = stats::now_micros().saturating_sub(timestamp);
    shared.stats.delivered.fetch_add(1, Relaxed);
    if let Some(counters) = shared.stats.stages.get(stage) {
        counters.delivered.fetch_add(1, Relaxed);
        counters.latency.record(index, latency);
    }
}

/// One line per second on stderr.
async fn progress_loop(shared: Arc<Shared>) {
    let start = Instant::now();
    let mut previous = (0u64, 0u64, 0u64);
    let mut previous_cpu = procstat::sample_self().cpu_seconds;
    let pids =
        procstat::expand_descendants(&shared.args.server_pids, !shared.args.no_server_children);
    let mut previous_server_cpu = procstat::sample(&pids).cpu_seconds;
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        let stats = &shared.stats;
        let logins = stats.logins_ok.load(Relaxed);
        let sent = stats.sent.load(Relaxed);
        let delivered = stats.delivered.load(Relaxed);
        let cpu = procstat::sample_self().cpu_seconds;
        let server = procstat::sample(&pids);
        if !shared.args.quiet {
            let phase = match shared.phase() {
                Phase::Login => "login".to_string(),
                Phase::Setup => format!("setup {}", stats.subscriptions_done.load(Relaxed)),
                Phase::Hold => "hold".into(),
                Phase::Run { stage, .. } => {
                    let p99 = LatencySummary::of(&stats.stages[stage].latency.merged()).p99;
                    format!("stage {stage} p99 {:.2}ms", p99 as f64 / 1000.0)
                }
                Phase::Drain => "drain".into(),
                Phase::Close => "close".into(),
            };
            let server_part = if pids.is_empty() {
                String::new()
            } else {
                format!(
                    " | server cpu {:.0}% rss {} MiB",
                    (server.cpu_seconds - previous_server_cpu) * 100.0,
                    server.rss_kib / 1024
                )
            };
            // Cumulative, so that a window's acks can be read off two lines.
            let sm_part = if shared.args.sm == sm::SmMode::Off {
                String::new()
            } else {
                format!(
                    " | sm acks sent {} recv {}",
                    stats.sm_requests_answered.load(Relaxed),
                    stats.sm_acks_received.load(Relaxed)
                )
            };
            eprintln!(
                "[{:>4}s] {phase} | online {} logins {} (+{}/s) | sent {} (+{}/s) recv {} (+{}/s) | errors {}{server_part}{sm_part} | self cpu {:.0}%",
                start.elapsed().as_secs(),
                stats.sessions_online.load(Relaxed),
                logins,
                logins - previous.0,
                sent,
                sent - previous.1,
                delivered,
                delivered - previous.2,
                stats.error_total(),
                (cpu - previous_cpu) * 100.0,
            );
        }
        previous = (logins, sent, delivered);
        previous_cpu = cpu;
        previous_server_cpu = server.cpu_seconds;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trip() {
        let mut out =
            b"<message><body>LT:0000000000000000:0000000000:00xx</body></message>".to_vec();
        let at = memchr::memmem::find(&out, MARKER).unwrap();
        write_digits(&mut out[at + 3..at + 19], 1_234_567);
        write_digits(&mut out[at + 20..at + 30], 42);
        write_digits(&mut out[at + 31..at + 33], 3);
        assert_eq!(parse_marker(&out), Some((1_234_567, 42, 3)));
        assert_eq!(parse_marker(b"<message><body>LT:12</body></message>"), None);
        assert_eq!(parse_marker(b"<message><body>hello</body></message>"), None);
    }
}
