//! The storage service: accounts and SCRAM credentials (RFC 5802), rosters
//! with versioning (RFC 6121 sections 2 and 2.6) and the offline message
//! queue (XEP-0160), on SQLite or PostgreSQL through sqlx.
//!
//! [`Storage`] implements [`StorageApi`]. Every user's data hangs off their
//! row in `accounts`: writes for a user without an account fail with
//! `NotFound`, reads for one find nothing (an empty roster at version 0, no
//! credentials, no offline message). Rows in other users' rosters that point
//! at a removed account stay: the presence service unsubscribes them.
//!
//! Roster versions (RFC 6121 section 2.6) start at the account's creation
//! time in milliseconds and grow by exactly one per change, so a re-created
//! account never repeats a version a client cached for the removed one.
//!
//! Schema: `migrations/sqlite` and `migrations/postgres`, table-for-table
//! identical (a test compares them). Tests run the whole contract on SQLite
//! in memory, SQLite in a file and a fresh PostgreSQL database per test at
//! `STARLING_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! they fail when PostgreSQL is unreachable unless `STARLING_TEST_SKIP_POSTGRES=1`.
//!
//! ```no_run
//! # async fn example() -> Result<(), starling_storage::StorageError> {
//! use starling_storage::{Storage, StorageConfig};
//!
//! let storage = Storage::connect(&StorageConfig { url: "sqlite::memory:".into(), ..Default::default() }).await?;
//! storage.ping().await?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::{PgPool, SqlitePool};
use starling_api::ApiError;
use starling_jid::BareJid;

mod backend;
mod error;
mod metrics;
mod records;

pub use error::{redact_url, StorageError};
pub use metrics::StorageMetrics;

/// How to reach the database, and the per-user quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// "sqlite://path/to/file.db", "sqlite::memory:" or "postgres://user@host:port/db"
    pub url: String,
    /// Offline queue cap per user (XEP-0160); store_offline returns ApiError::LimitReached past it.
    pub max_offline_per_user: u32,
    /// Offline queue cap per user in bytes (the stored stanzas' size); past
    /// it store_offline returns ApiError::LimitReached too.
    pub max_offline_bytes_per_user: u64,
    /// Roster size cap per user; put_roster_item returns LimitReached past it (for a new item).
    pub max_roster_items: u32,
    /// Roster size cap per user in bytes (contact JIDs, names, groups, kept
    /// subscription requests); put_roster_item returns LimitReached past it.
    pub max_roster_bytes: u64,
    /// Block list cap per user (XEP-0191, `blocking.max_items`); `block`
    /// returns LimitReached when a request would pass it.
    pub max_blocklist_items: u32,
    /// The size of the connection pool (SQLite in memory always uses one connection).
    pub max_connections: u32,
    /// Bytes of XML documents (private XML storage, vCard) kept per account;
    /// put_account_data returns LimitReached past it.
    pub max_account_data_bytes: u64,
    /// Messages kept per account archive (XEP-0313, `mam.max_messages_per_account`);
    /// past it the oldest are removed as new ones come. 0: no bound.
    pub max_archive_messages_per_account: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: "sqlite://./data/starling.db".into(),
            max_offline_per_user: 1000,
            max_offline_bytes_per_user: 2 * 1024 * 1024,
            max_roster_items: 1000,
            max_roster_bytes: DEFAULT_MAX_ROSTER_BYTES,
            max_blocklist_items: 1000,
            max_connections: 8,
            max_account_data_bytes: DEFAULT_MAX_ACCOUNT_DATA_BYTES,
            max_archive_messages_per_account: DEFAULT_MAX_ARCHIVE_MESSAGES_PER_ACCOUNT,
        }
    }
}

/// The default of `storage.max_account_data_bytes`: room for a vCard with
/// an avatar at the stanza size limit, and bookmarks and notes beside it.
pub const DEFAULT_MAX_ACCOUNT_DATA_BYTES: u64 = 1024 * 1024;
/// `storage.max_roster_bytes` by default: a thousand contacts with names and
/// groups take about 100 KB.
pub const DEFAULT_MAX_ROSTER_BYTES: u64 = 1024 * 1024;

/// The default of `mam.max_messages_per_account`.
pub const DEFAULT_MAX_ARCHIVE_MESSAGES_PER_ACCOUNT: u64 = 1_000_000;

/// The storage service over a connection pool; cloning shares the pool.
#[derive(Clone)]
pub struct Storage {
    pool: DatabasePool,
    max_offline_per_user: u32,
    max_offline_bytes_per_user: u64,
    max_roster_items: u32,
    max_roster_bytes: u64,
    max_account_data_bytes: u64,
    max_blocklist_items: u32,
    max_archive_messages_per_account: u64,
    metrics: StorageMetrics,
}

#[derive(Clone)]
enum DatabasePool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let driver = match self.pool {
            DatabasePool::Sqlite(_) => "sqlite",
            DatabasePool::Postgres(_) => "postgres",
        };
        f.debug_struct("Storage")
            .field("driver", &driver)
            .field("max_offline_per_user", &self.max_offline_per_user)
            .field("max_roster_items", &self.max_roster_items)
            .field("max_blocklist_items", &self.max_blocklist_items)
            .finish()
    }
}

/// Run one query function of `backend/queries/` on whichever driver the
/// storage uses, observing its duration in `starling_db_query_duration_seconds`.
macro_rules! on_database {
    ($storage:expr, $operation:ident($($argument:expr),* $(,)?)) => {{
        let started = Instant::now();
        let result = match &$storage.pool {
            DatabasePool::Sqlite(pool) => backend::sqlite::queries::$operation(pool, $($argument),*).await,
            DatabasePool::Postgres(pool) => backend::postgres::queries::$operation(pool, $($argument),*).await,
        };
        $storage.metrics.query(
            stringify!($operation),
            started.elapsed(),
            result.as_ref().is_err_and(|error: &StorageError| error.is_failure()),
        );
        result
    }};
}

// One module per feature that keeps data: its store trait implemented for
// `Storage`, with one span per operation, the same in one process and behind
// gRPC. Declared after `on_database!` so that they can use it.
mod account_data;
mod accounts;
mod archive;
mod blocking;
mod fast;
mod muc;
mod offline;
mod pep;
mod push;
mod roster;
mod upload;

impl Storage {
    /// Connect, create the SQLite file and its parent folder when missing, run migrations.
    pub async fn connect(config: &StorageConfig) -> Result<Storage, StorageError> {
        if config.max_connections == 0 {
            return Err(StorageError::InvalidSetting {
                key: "max_connections",
                message: "must be greater than 0".into(),
            });
        }
        let url = config.url.trim();
        let pool = if url.starts_with("sqlite:") {
            DatabasePool::Sqlite(backend::sqlite::connect(config).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            DatabasePool::Postgres(backend::postgres::connect(config).await?)
        } else {
            return Err(StorageError::UnsupportedUrl {
                url: redact_url(url),
            });
        };
        let storage = Storage {
            pool,
            max_offline_per_user: config.max_offline_per_user,
            max_offline_bytes_per_user: config.max_offline_bytes_per_user,
            max_roster_items: config.max_roster_items,
            max_roster_bytes: config.max_roster_bytes,
            max_account_data_bytes: config.max_account_data_bytes,
            max_blocklist_items: config.max_blocklist_items,
            max_archive_messages_per_account: config.max_archive_messages_per_account,
            metrics: StorageMetrics::default(),
        };
        // The second half of migration 20261204300000: push registrations
        // kept as XML documents move into their table.
        let moved = storage.move_push_documents().await?;
        if moved > 0 {
            tracing::info!(moved, "push documents moved into push_registrations");
        }
        Ok(storage)
    }

    /// Observe queries and the offline queue in `metrics` (docs/operations.md).
    pub fn with_metrics(mut self, metrics: StorageMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Count every stored offline message into `starling_offline_messages_queued`.
    pub async fn refresh_offline_gauge(&self) -> Result<u64, StorageError> {
        let count = on_database!(self, count_all_offline())?;
        self.metrics.set_offline_queued(count);
        Ok(count)
    }

    /// Refresh `starling_offline_messages_queued` now and then every `every`
    /// (one `COUNT(*)`), until the task is aborted.
    pub fn spawn_offline_gauge(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        spawn_every(self, every, |storage| async move {
            if let Err(error) = storage.refresh_offline_gauge().await {
                tracing::warn!(%error, "counting the offline messages failed");
            }
        })
    }

    /// The OpenTelemetry `db.system` of the driver in use.
    fn db_system(&self) -> &'static str {
        match &self.pool {
            DatabasePool::Sqlite(_) => "sqlite",
            DatabasePool::Postgres(_) => "postgresql",
        }
    }

    /// Cheap liveness probe for /readyz.
    pub async fn ping(&self) -> Result<(), StorageError> {
        on_database!(self, ping())
    }

    /// Close every connection of the pool, waiting for queries under way;
    /// later calls fail as unavailable.
    pub async fn close(&self) {
        match &self.pool {
            DatabasePool::Sqlite(pool) => pool.close().await,
            DatabasePool::Postgres(pool) => pool.close().await,
        }
    }
}

/// Run `work` on a clone of `storage` now and then every `every` (a late
/// tick waits, ticks are never bunched), until the task is aborted.
fn spawn_every<Work, Done>(
    storage: &Storage,
    every: Duration,
    work: Work,
) -> tokio::task::JoinHandle<()>
where
    Work: Fn(Storage) -> Done + Send + 'static,
    Done: std::future::Future<Output = ()> + Send,
{
    let storage = storage.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            work(storage.clone()).await;
        }
    })
}

/// Milliseconds since the Unix epoch, for `created_at` and `stored_at`.
fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// Convert a failed operation into the contract's error, logging what the
/// client will not see.
fn into_api_error(operation: &'static str, user: &BareJid, error: StorageError) -> ApiError {
    if error.is_unavailable() {
        tracing::warn!(operation, user = %user, %error, "storage unavailable");
    } else if matches!(
        error,
        StorageError::Database(_) | StorageError::CorruptData(_)
    ) {
        tracing::error!(operation, user = %user, %error, "storage operation failed");
    } else {
        tracing::debug!(operation, user = %user, %error, "storage request refused");
    }
    ApiError::from(error)
}

fn no_account(user: &BareJid) -> StorageError {
    StorageError::AccountNotFound(user.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_api::{AccountStore, OfflineStore, StoredCredentials};

    #[test]
    fn default_config_is_the_embedded_one() {
        let config = StorageConfig::default();
        assert_eq!(config.url, "sqlite://./data/starling.db");
        assert_eq!(
            (
                config.max_offline_per_user,
                config.max_roster_items,
                config.max_connections
            ),
            (1000, 1000, 8)
        );
    }

    fn value(registry: &prometheus::Registry, series: &str) -> f64 {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn the_offline_queue_is_bounded_in_bytes() {
        let config = StorageConfig {
            url: "sqlite::memory:".into(),
            max_offline_bytes_per_user: 110,
            ..Default::default()
        };
        let storage = Storage::connect(&config).await.unwrap();
        let juliet: BareJid = "juliet@example.com".parse().unwrap();
        storage
            .create_account(&juliet, &StoredCredentials::for_password("x"))
            .await
            .unwrap();
        // 46 bytes, counted in bytes (é is two): two fit, a third does not.
        let message = format!("<message><body>{}</body></message>", "é".repeat(7));
        assert_eq!(message.len(), 46);
        storage.store_offline(&juliet, &message).await.unwrap();
        storage.store_offline(&juliet, &message).await.unwrap();
        let refused = storage.store_offline(&juliet, &message).await.unwrap_err();
        assert!(
            matches!(refused, starling_api::ApiError::LimitReached(_)),
            "{refused:?}"
        );
        // A small one still fits.
        storage.store_offline(&juliet, "<message/>").await.unwrap();
        assert_eq!(storage.take_all_offline(&juliet).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn queries_and_the_offline_queue_are_measured() {
        let registry = prometheus::Registry::new();
        let config = StorageConfig {
            url: "sqlite::memory:".into(),
            max_offline_per_user: 2,
            ..Default::default()
        };
        let storage = Storage::connect(&config)
            .await
            .unwrap()
            .with_metrics(StorageMetrics::register(&registry).unwrap());
        let juliet: BareJid = "juliet@example.com".parse().unwrap();
        let romeo: BareJid = "romeo@example.com".parse().unwrap();
        storage
            .create_account(&juliet, &StoredCredentials::for_password("x"))
            .await
            .unwrap();
        for body in ["one", "two"] {
            storage
                .store_offline(&juliet, &format!("<message><body>{body}</body></message>"))
                .await
                .unwrap();
        }
        // The queue is full: a refusal, not a database error.
        assert!(storage.store_offline(&juliet, "<message/>").await.is_err());
        assert_eq!(storage.refresh_offline_gauge().await.unwrap(), 2);
        assert_eq!(value(&registry, "starling_offline_messages_queued"), 2.0);
        assert_eq!(storage.take_all_offline(&juliet).await.unwrap().len(), 2);
        // A login with an empty queue.
        assert!(storage.take_all_offline(&romeo).await.unwrap().is_empty());

        assert_eq!(
            value(&registry, "starling_offline_messages_stored_total"),
            2.0
        );
        assert_eq!(
            value(&registry, "starling_offline_messages_delivered_total"),
            2.0
        );
        assert_eq!(
            value(&registry, "starling_offline_messages_per_login_count"),
            2.0
        );
        assert_eq!(
            value(
                &registry,
                "starling_offline_messages_per_login_bucket{le=\"0\"}"
            ),
            1.0
        );
        assert_eq!(
            value(
                &registry,
                "starling_db_query_duration_seconds_count{operation=\"store_offline\"}"
            ),
            3.0
        );
        assert_eq!(
            value(
                &registry,
                "starling_db_query_errors_total{operation=\"store_offline\"}"
            ),
            0.0
        );

        // The database is gone: the next query is a failure.
        storage.close().await;
        assert!(storage.credentials(&juliet).await.is_err());
        assert_eq!(
            value(
                &registry,
                "starling_db_query_errors_total{operation=\"credentials\"}"
            ),
            1.0
        );
    }

    #[test]
    fn storage_is_shareable() {
        fn assert_shareable<T: Clone + Send + Sync + 'static>() {}
        assert_shareable::<Storage>();
    }
}
