//! The two drivers behind [`crate::Storage`]: SQLite for the embedded
//! single-process default and PostgreSQL for the cluster (DESIGN.md "Durable
//! storage"). Each compiles the shared `queries/` against its own sqlx
//! driver type, so every query is written once and type-checked twice.

use std::time::Duration;

pub(crate) mod postgres;
pub(crate) mod sqlite;

/// How long a request waits for a pooled connection before it fails as
/// unavailable (the client then sees a `wait` error).
pub(crate) const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
