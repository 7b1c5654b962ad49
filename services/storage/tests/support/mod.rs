//! The databases the contract suite runs against: SQLite in memory, SQLite
//! in a fresh file, and a fresh PostgreSQL database per test.
//!
//! PostgreSQL is reached at `STARLING_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); a test that cannot reach
//! it fails, unless `STARLING_TEST_SKIP_POSTGRES=1`.

#![allow(dead_code, reason = "each test file uses a part of the support module")]

use std::future::Future;
use std::path::PathBuf;

use sqlx::Connection;
use starling_storage::{Storage, StorageConfig};

/// The limits every suite storage runs with, small enough to reach in a test.
pub const MAX_OFFLINE_PER_USER: u32 = 5;
pub const MAX_ROSTER_ITEMS: u32 = 25;
/// Enough for the item cap's test (25 short items), not for long groups.
pub const MAX_ROSTER_BYTES: u64 = 4096;
pub const MAX_BLOCKLIST_ITEMS: u32 = 4;

/// The suite's bound on an account's stored documents.
pub const MAX_ACCOUNT_DATA_BYTES: u64 = 1000;
/// Messages kept per archive in the suite (XEP-0313 quota).
pub const MAX_ARCHIVE_MESSAGES: u64 = 12;

pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    SqliteMemory,
    SqliteFile,
    Postgres,
}

pub fn suite_config(url: String) -> StorageConfig {
    StorageConfig {
        url,
        max_offline_per_user: MAX_OFFLINE_PER_USER,
        max_roster_items: MAX_ROSTER_ITEMS,
        max_roster_bytes: MAX_ROSTER_BYTES,
        max_blocklist_items: MAX_BLOCKLIST_ITEMS,
        max_connections: 8,
        max_account_data_bytes: MAX_ACCOUNT_DATA_BYTES,
        max_archive_messages_per_account: MAX_ARCHIVE_MESSAGES,
        ..StorageConfig::default()
    }
}

/// A folder of its own under the system's temporary folder, removed on drop.
pub struct TempFolder {
    pub path: PathBuf,
}

impl TempFolder {
    pub fn new() -> TempFolder {
        let path = std::env::temp_dir().join(format!(
            "starling-storage-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        TempFolder { path }
    }
}

impl Drop for TempFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A PostgreSQL database made for one test, dropped by [`FreshPostgres::drop_database`].
pub struct FreshPostgres {
    admin_url: String,
    pub name: String,
    pub url: String,
}

fn postgres_skipped() -> bool {
    std::env::var("STARLING_TEST_SKIP_POSTGRES").is_ok_and(|value| value == "1")
}

/// `url` with its database path replaced by `database`, keeping any query.
pub fn with_database(url: &str, database: &str) -> String {
    let authority_start = url.find("://").map_or(0, |index| index + 3);
    let (before_query, query) = match url.find('?') {
        Some(index) => (&url[..index], &url[index..]),
        None => (url, ""),
    };
    let authority_end = before_query[authority_start..]
        .find('/')
        .map_or(before_query.len(), |index| authority_start + index);
    format!("{}/{database}{query}", &before_query[..authority_end])
}

impl FreshPostgres {
    /// `None` when PostgreSQL tests are skipped on purpose; panics with a
    /// clear message when PostgreSQL cannot be reached.
    pub async fn create() -> Option<FreshPostgres> {
        if postgres_skipped() {
            eprintln!("STARLING_TEST_SKIP_POSTGRES=1: skipping the postgresql run of this test");
            return None;
        }
        let admin_url = std::env::var("STARLING_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_string());
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap_or_else(|error| {
            panic!(
                "PostgreSQL is not reachable at {admin_url}: {error}. Start it (trust auth), point \
                 STARLING_TEST_POSTGRES_URL at a server where this user may CREATE DATABASE, or set \
                 STARLING_TEST_SKIP_POSTGRES=1 to skip the PostgreSQL runs"
            )
        });
        let name = format!("starling_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|error| {
                panic!("cannot create database {name} at {admin_url}: {error}")
            });
        admin.close().await.ok();
        let url = with_database(&admin_url, &name);
        Some(FreshPostgres {
            admin_url,
            name,
            url,
        })
    }

    pub async fn drop_database(self) {
        match sqlx::PgConnection::connect(&self.admin_url).await {
            Ok(mut admin) => {
                if let Err(error) = sqlx::query(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .execute(&mut admin)
                .await
                {
                    eprintln!("cannot drop test database {}: {error}", self.name);
                }
                admin.close().await.ok();
            }
            Err(error) => eprintln!("cannot drop test database {}: {error}", self.name),
        }
    }
}

/// Run one contract case against a fresh database of `backend`, cleaning up
/// the database even when the case panics (the panic is then re-raised).
pub async fn run_case<Case, CaseFuture>(backend: Backend, case: Case)
where
    Case: FnOnce(Storage) -> CaseFuture,
    CaseFuture: Future<Output = ()> + Send + 'static,
{
    match backend {
        Backend::SqliteMemory => {
            let storage = connect(suite_config("sqlite::memory:".into())).await;
            reraise(run_and_close(storage, case).await);
        }
        Backend::SqliteFile => {
            let folder = TempFolder::new();
            // A folder that does not exist yet: connect creates it.
            let file = folder.path.join("nested").join("starling.db");
            let storage = connect(suite_config(format!("sqlite://{}", file.display()))).await;
            let outcome = run_and_close(storage, case).await;
            drop(folder);
            reraise(outcome);
        }
        Backend::Postgres => {
            let Some(database) = FreshPostgres::create().await else {
                return;
            };
            let storage = match Storage::connect(&suite_config(database.url.clone())).await {
                Ok(storage) => storage,
                Err(error) => {
                    database.drop_database().await;
                    panic!("cannot open storage on a fresh postgresql database: {error}");
                }
            };
            let outcome = run_and_close(storage, case).await;
            database.drop_database().await;
            reraise(outcome);
        }
    }
}

fn reraise(outcome: Result<(), Box<dyn std::any::Any + Send>>) {
    if let Err(panic_payload) = outcome {
        std::panic::resume_unwind(panic_payload);
    }
}

async fn connect(config: StorageConfig) -> Storage {
    Storage::connect(&config)
        .await
        .unwrap_or_else(|error| panic!("cannot open storage {}: {error}", config.url))
}

async fn run_and_close<Case, CaseFuture>(
    storage: Storage,
    case: Case,
) -> Result<(), Box<dyn std::any::Any + Send>>
where
    Case: FnOnce(Storage) -> CaseFuture,
    CaseFuture: Future<Output = ()> + Send + 'static,
{
    let outcome = tokio::spawn(case(storage.clone())).await;
    storage.close().await;
    outcome.map_err(|join_error| match join_error.try_into_panic() {
        Ok(payload) => payload,
        Err(join_error) => Box::new(format!("contract case did not finish: {join_error}")),
    })
}
