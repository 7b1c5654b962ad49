//! `starling-load`: parse the flags, run the scenario, print and write the result.

use std::process::ExitCode;

use clap::Parser;
use starling_loadtest::cli::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(70);
        }
    };
    let out = args.out.clone();
    let result = match runtime.block_on(starling_loadtest::run::run(args)) {
        Ok(result) => result,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(64);
        }
    };
    print!("{}", result.human_summary());
    if let Some(path) = out {
        let json = serde_json::to_string_pretty(&result).expect("the result serialises");
        if let Err(error) = std::fs::write(&path, json + "\n") {
            eprintln!("error: cannot write {}: {error}", path.display());
            return ExitCode::from(73);
        }
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    if result.scenario != "accounts" && result.logins.initial_ok == 0 {
        eprintln!("error: no user could log in");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
