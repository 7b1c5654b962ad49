//! `starling`: runs the server and carries the operator commands.

mod admin;
mod admin_server;
mod cli;
mod config;
mod http;
mod serve;
mod telemetry;
mod user;

use std::process::ExitCode;

use clap::Parser;

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
    let config = match config::Config::load(cli.config_path(), &config::process_environment()) {
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
