//! `starling serve` as a library: the typed configuration ([`config`]) and
//! the composition of the services one process runs ([`Server`], [`serve`]),
//! for every `--target`, with its HTTP endpoints (`/healthz`, `/readyz`,
//! `/metrics`), its admin API and its telemetry.
//!
//! The binary parses the command line, loads the configuration, installs the
//! telemetry and runs [`Server`] until a signal; tests call [`serve`] or
//! [`Server::bind`] with a configuration of their own and a shutdown future.

pub mod config;
pub mod telemetry;

mod admin_server;
mod election;
mod http;
mod serve;

pub use config::{Config, ConfigError};
pub use serve::{check_target_config, connect_storage, node_id, serve, Server, Target};
