//! The connection-manager's error type: failures to start or run the service.
//! Errors on one stream are answered on that stream (RFC 6120 section 4.9) and
//! never surface here.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CmError {
    /// A configuration value is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The certificate or key cannot be read, generated or used.
    #[error("tls: {0}")]
    Tls(String),
    /// A file of the TLS material cannot be read or written.
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A listener cannot be bound (address in use, permission denied).
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The bus subscription failed.
    #[error("bus: {0}")]
    Bus(#[from] starling_api::ApiError),
}
