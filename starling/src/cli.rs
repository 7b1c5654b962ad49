//! The command line: `starling serve` and the operator commands.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use starling_server::config::{self, Config};
use starling_server::Target;

#[derive(Debug, Parser)]
#[command(
    name = "starling",
    version,
    about = "Starling, a cluster-native XMPP server"
)]
pub struct Cli {
    /// The TOML configuration file (every key can be overridden by STARLING_<SECTION>_<KEY>).
    #[arg(long, global = true, env = "STARLING_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    pub fn config_path(&self) -> Option<&Path> {
        self.config.as_deref()
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: every service in one process (the default), or one service of a cluster.
    Serve {
        /// Which service this process runs.
        #[arg(long, value_enum, default_value = "all")]
        target: Target,
    },
    /// Manage accounts in the configured storage.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Operate a running server through its admin API (`[admin]`).
    Admin(crate::admin::AdminArgs),
    /// Check the configuration and print it with every override applied.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create an account.
    Add { jid: String, password: String },
    /// Set an account's password.
    Passwd { jid: String, password: String },
    /// Remove an account and everything stored for it.
    Remove { jid: String },
    /// List the accounts of a domain.
    List { domain: String },
    /// Revoke an account's FAST tokens (XEP-0484): of one client (its SASL2
    /// user agent id) with --agent, else of every client.
    FastRevoke {
        jid: String,
        #[arg(long)]
        agent: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate and print the effective configuration as TOML.
    Check {
        /// Also check that the configuration has what this target needs to
        /// serve (`starling serve --target T` would refuse it otherwise).
        #[arg(long, value_enum)]
        target: Option<Target>,
    },
    /// List every key with its environment variable and default.
    Keys,
}

pub async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { target } => crate::serve(config, target).await,
        Command::User { command } => match command {
            UserCommand::Add { jid, password } => crate::user::add(&config, &jid, &password).await,
            UserCommand::Passwd { jid, password } => {
                crate::user::passwd(&config, &jid, &password).await
            }
            UserCommand::Remove { jid } => crate::user::remove(&config, &jid).await,
            UserCommand::List { domain } => crate::user::list(&config, &domain).await,
            UserCommand::FastRevoke { jid, agent } => {
                crate::user::fast_revoke(&config, &jid, agent.as_deref()).await
            }
        },
        Command::Admin(args) => crate::admin::run(args, &config).await,
        Command::Config { command } => {
            match command {
                ConfigCommand::Check { target } => {
                    if let Some(target) = target {
                        starling_server::check_target_config(&config, target).map_err(|error| {
                            crate::admin::exit(crate::admin::EXIT_USAGE, format!("{error:#}"))
                        })?;
                    }
                    let mut shown = config.clone();
                    if !shown.admin.token.is_empty() {
                        // A secret: its presence is what the check shows.
                        shown.admin.token = "(set, not shown)".into();
                    }
                    if !shown.s2s.dialback_secret.is_empty() {
                        shown.s2s.dialback_secret = "(set, not shown)".into();
                    }
                    print!("{}", toml::to_string(&shown)?)
                }
                ConfigCommand::Keys => {
                    for (key, default) in config::key_paths() {
                        println!("{key:<36} {:<44} default {default}", config::env_name(&key));
                    }
                }
            }
            Ok(())
        }
    }
}
