//! The SQLite driver: one database file in WAL mode (or `sqlite::memory:` for
//! tests), created with its folder when missing.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::error::{redact_url, StorageError};
use crate::StorageConfig;

pub(crate) type Db = sqlx::Sqlite;

/// Take the write lock when the transaction starts: a deferred transaction
/// that reads first and writes later fails with SQLITE_BUSY instead of
/// waiting when another connection writes in between.
pub(crate) const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

// The same query file is compiled once per driver on purpose (see backend/mod.rs).
#[allow(clippy::duplicate_mod, reason = "compiled once per driver on purpose")]
#[path = "queries/mod.rs"]
pub(crate) mod queries;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a connection waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the URL names a private in-memory database (`sqlite::memory:`,
/// `sqlite://:memory:` or `?mode=memory`).
fn is_in_memory(url: &str) -> bool {
    let without_scheme = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (database, parameters) = without_scheme
        .split_once('?')
        .unwrap_or((without_scheme, ""));
    database == ":memory:"
        || parameters
            .split('&')
            .any(|parameter| parameter == "mode=memory")
}

/// Open the pool and run the migrations.
pub(crate) async fn connect(config: &StorageConfig) -> Result<SqlitePool, StorageError> {
    let url = config.url.trim();
    let shown_url = redact_url(url);
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|source| StorageError::InvalidUrl {
            url: shown_url.clone(),
            source,
        })?
        .foreign_keys(true)
        .busy_timeout(BUSY_TIMEOUT)
        // Temporary tables and indexes (an `INSERT ... SELECT` of the archive
        // writer builds one per batch) in memory: by default SQLite creates,
        // writes and unlinks a file under /var/tmp for each, a dozen system
        // calls per transaction (docs/performance.md "What archiving costs").
        .pragma("temp_store", "memory");
    let pool_options = if is_in_memory(url) {
        // Every connection to `sqlite::memory:` would open its own empty
        // database, and the database vanishes with its last connection: keep
        // exactly one connection open for the life of the pool.
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        create_parent_folder(options.get_filename())?;
        SqlitePoolOptions::new().max_connections(config.max_connections)
    };
    let options = if is_in_memory(url) {
        options
    } else {
        options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
    };
    let pool = pool_options
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
    tracing::info!(url = %shown_url, "sqlite storage ready");
    Ok(pool)
}

fn create_parent_folder(database_file: &Path) -> Result<(), StorageError> {
    let Some(folder) = database_file.parent() else {
        return Ok(());
    };
    if folder.as_os_str().is_empty() || folder.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(folder).map_err(|source| StorageError::CreateFolder {
        path: folder.to_path_buf(),
        source,
    })?;
    tracing::info!(folder = %folder.display(), "created the folder of the sqlite database");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_urls_are_recognised() {
        assert!(is_in_memory("sqlite::memory:"));
        assert!(is_in_memory("sqlite://:memory:"));
        assert!(is_in_memory("sqlite://shared?mode=memory&cache=shared"));
        assert!(!is_in_memory("sqlite://./data/starling.db"));
        assert!(!is_in_memory("sqlite:starling.db?mode=rwc"));
    }
}
