//! The PostgreSQL driver: a normal connection pool, for the cluster.

use std::str::FromStr;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::error::{redact_url, StorageError};
use crate::StorageConfig;

pub(crate) type Db = sqlx::Postgres;

/// Read committed: every write transaction locks the account row first
/// (`UPDATE accounts ... RETURNING`), which orders concurrent writers.
pub(crate) const BEGIN_WRITE: &str = "BEGIN";

// The same query file is compiled once per driver on purpose (see backend/mod.rs).
#[allow(clippy::duplicate_mod, reason = "compiled once per driver on purpose")]
#[path = "queries/mod.rs"]
pub(crate) mod queries;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Open the pool (failing now if the server cannot be reached) and run the
/// migrations; concurrent starts are serialised by sqlx's advisory lock.
pub(crate) async fn connect(config: &StorageConfig) -> Result<PgPool, StorageError> {
    let url = config.url.trim();
    let shown_url = redact_url(url);
    let options = PgConnectOptions::from_str(url).map_err(|source| StorageError::InvalidUrl {
        url: shown_url.clone(),
        source,
    })?;
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(super::ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|source| StorageError::Connect {
            url: shown_url.clone(),
            source,
        })?;
    MIGRATOR
        .run(&pool)
        .await
        .map_err(|source| StorageError::Migrate {
            url: shown_url.clone(),
            source,
        })?;
    tracing::info!(url = %shown_url, "postgresql storage ready");
    Ok(pool)
}
