//! `starling`: runs the server and carries the operator commands.
//!
//! `main` is a checklist: parse the command line, load the configuration
//! (exit 64 when it cannot be used), then for `serve` install the telemetry
//! and run the server (`starling_server`) until SIGTERM or SIGINT, and turn
//! the outcome into an exit code.

mod admin;
mod cli;
mod user;

use std::process::ExitCode;

use clap::Parser;
use starling_server::{telemetry, Config, Server, Target};

/// Exit status for a configuration or command line that cannot be used (sysexits EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            // --help and --version are not errors; a bad command line is EX_USAGE.
            return if error.use_stderr() {
                ExitCode::from(EXIT_BAD_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let config = match Config::load(
        cli.config_path(),
        &starling_server::config::process_environment(),
    ) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("starling: {error}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("starling: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("starling: {error:#}");
            match error.downcast_ref::<admin::Exit>() {
                Some(exit) => ExitCode::from(exit.code),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// `starling serve`: telemetry, then the server until SIGTERM or SIGINT
/// (a second one cuts the drain short), then the last spans out.
async fn serve(mut config: Config, target: Target) -> anyhow::Result<()> {
    config.cluster.node_id = starling_server::node_id(&config, target);
    let telemetry = telemetry::init(&config, target.name(), &config.cluster.node_id);
    let served = match Server::bind(config, target).await {
        Ok(server) => server.run(termination_signal(), termination_signal()).await,
        Err(error) => Err(error),
    };
    // The last spans (the drain's) leave before the process does.
    telemetry.shutdown().await;
    served
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn termination_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for sigterm");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => tracing::info!("sigint received, shutting down"),
            _ = terminate.recv() => tracing::info!("sigterm received, shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
