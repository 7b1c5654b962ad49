//! The storage crate's one error enum, and how it maps onto the service
//! contract's [`ApiError`] (DESIGN.md "Durable storage").

use std::path::PathBuf;

use starling_api::ApiError;

/// Everything that can go wrong in the storage service.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL names no database this crate speaks.
    #[error("unsupported storage url {url:?}: expected sqlite://FILE, sqlite::memory: or postgres://USER@HOST:PORT/DB")]
    UnsupportedUrl { url: String },
    /// The URL has a known scheme but the driver rejects it.
    #[error("invalid storage url {url:?}: {source}")]
    InvalidUrl { url: String, source: sqlx::Error },
    /// A setting of [`crate::StorageConfig`] other than the URL is out of range.
    #[error("invalid storage setting {key}: {message}")]
    InvalidSetting { key: &'static str, message: String },
    /// The folder of a SQLite database file could not be created.
    #[error("cannot create the folder {path:?} for the sqlite database: {source}")]
    CreateFolder {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The first connection to the database failed.
    #[error("cannot connect to {url:?}: {source}")]
    Connect { url: String, source: sqlx::Error },
    /// The schema migrations failed.
    #[error("cannot migrate the schema of {url:?}: {source}")]
    Migrate {
        url: String,
        source: sqlx::migrate::MigrateError,
    },
    /// A query failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The request breaks a rule of the contract (no localpart, duplicate group, NUL character).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The account does not exist.
    #[error("no such account: {0}")]
    AccountNotFound(String),
    /// The account exists already.
    #[error("account exists already: {0}")]
    AccountExists(String),
    /// The offline queue of the user is full (XEP-0160).
    #[error("offline queue of {user} is full ({limit} messages)")]
    OfflineQueueFull { user: String, limit: u32 },
    /// The account's documents (private XML, vCard) would exceed their bound.
    #[error("stored documents of {user} would exceed {limit} bytes")]
    AccountDataFull { user: String, limit: u64 },
    /// The offline queue of the user holds as many bytes as it may.
    #[error("offline queue of {user} is full ({limit} bytes)")]
    OfflineQueueBytesFull { user: String, limit: u64 },
    /// The roster of the user is full.
    #[error("roster of {user} is full ({limit} items)")]
    RosterFull { user: String, limit: u32 },
    /// The roster of the user would exceed its bound in bytes (`storage.max_roster_bytes`).
    #[error("roster of {user} would exceed {limit} bytes")]
    RosterBytesFull { user: String, limit: u64 },
    /// The block list of the user is full (XEP-0191, `blocking.max_items`).
    #[error("block list of {user} is full ({limit} items)")]
    BlocklistFull { user: String, limit: u32 },
    /// The account has as many push registrations as it may (XEP-0357).
    #[error("push registrations of {user} are full ({limit})")]
    PushRegistrationsFull { user: String, limit: u32 },
    /// The PEP node (XEP-0163) does not exist.
    #[error("no such pep node: {0}")]
    PepNodeNotFound(String),
    /// A PEP bound (`pep.max_nodes_per_account`, whitelist members) was reached.
    #[error("pep {what} limit reached ({limit})")]
    PepLimit { what: &'static str, limit: u32 },
    /// An archive query named a message id that is not in the archive
    /// (XEP-0313: `item-not-found`).
    #[error("no message {0} in the archive")]
    ArchiveItemNotFound(String),
    /// A stored row cannot be read back (a bug or a hand-edited database).
    #[error("corrupt stored data: {0}")]
    CorruptData(String),
}

impl StorageError {
    /// Whether the database cannot be reached or is overloaded now, so the
    /// request may succeed if retried later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StorageError::Connect { .. } => true,
            StorageError::Database(error) => database_is_unavailable(error),
            _ => false,
        }
    }

    /// Whether the database failed the operation (as opposed to refusing a
    /// request: no such account, a full queue, an invalid value).
    pub fn is_failure(&self) -> bool {
        !matches!(
            self,
            StorageError::Invalid(_)
                | StorageError::AccountNotFound(_)
                | StorageError::AccountExists(_)
                | StorageError::OfflineQueueFull { .. }
                | StorageError::OfflineQueueBytesFull { .. }
                | StorageError::RosterFull { .. }
                | StorageError::RosterBytesFull { .. }
                | StorageError::AccountDataFull { .. }
                | StorageError::BlocklistFull { .. }
                | StorageError::PushRegistrationsFull { .. }
                | StorageError::PepNodeNotFound(_)
                | StorageError::PepLimit { .. }
                | StorageError::ArchiveItemNotFound(_)
        )
    }
}

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> ApiError {
        let text = error.to_string();
        match error {
            StorageError::Invalid(_) => ApiError::Invalid(text),
            StorageError::AccountNotFound(_)
            | StorageError::PepNodeNotFound(_)
            | StorageError::ArchiveItemNotFound(_) => ApiError::NotFound(text),
            StorageError::PepLimit { .. } => ApiError::LimitReached(text),
            StorageError::AccountExists(_) => ApiError::AlreadyExists(text),
            StorageError::OfflineQueueFull { .. }
            | StorageError::RosterFull { .. }
            | StorageError::RosterBytesFull { .. }
            | StorageError::OfflineQueueBytesFull { .. }
            | StorageError::AccountDataFull { .. } => ApiError::LimitReached(text),
            StorageError::BlocklistFull { .. } | StorageError::PushRegistrationsFull { .. } => {
                ApiError::LimitReached(text)
            }
            StorageError::Connect { .. } => ApiError::Unavailable(text),
            StorageError::Database(ref database_error) => match database_error {
                sqlx::Error::RowNotFound => ApiError::NotFound(text),
                sqlx::Error::Database(detail) if detail.is_unique_violation() => {
                    ApiError::AlreadyExists(text)
                }
                // An insert that referenced an account removed meanwhile.
                sqlx::Error::Database(detail) if detail.is_foreign_key_violation() => {
                    ApiError::NotFound(text)
                }
                _ if database_is_unavailable(database_error) => ApiError::Unavailable(text),
                _ => ApiError::Internal(text),
            },
            StorageError::UnsupportedUrl { .. }
            | StorageError::InvalidUrl { .. }
            | StorageError::InvalidSetting { .. }
            | StorageError::CreateFolder { .. }
            | StorageError::Migrate { .. }
            | StorageError::CorruptData(_) => ApiError::Internal(text),
        }
    }
}

/// Transient failures: the database is down, unreachable, overloaded, busy
/// past the busy timeout, or aborted the transaction to break a deadlock.
fn database_is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(detail) => {
            let Some(code) = detail.code() else {
                return false;
            };
            if detail
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                postgres_code_is_transient(&code)
            } else if detail
                .try_downcast_ref::<sqlx::sqlite::SqliteError>()
                .is_some()
            {
                sqlite_code_is_transient(&code)
            } else {
                false
            }
        }
        _ => false,
    }
}

/// PostgreSQL SQLSTATE classes 08 (connection exception) and 53
/// (insufficient resources), shutdown codes 57P01-57P03, serialization
/// failure (40001) and deadlock (40P01).
fn postgres_code_is_transient(sqlstate: &str) -> bool {
    sqlstate.starts_with("08")
        || sqlstate.starts_with("53")
        || matches!(sqlstate, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
}

/// SQLite primary result codes BUSY (5), LOCKED (6), IOERR (10), FULL (13)
/// and CANTOPEN (14); sqlx reports the extended code, whose low byte is the primary one.
fn sqlite_code_is_transient(extended_code: &str) -> bool {
    extended_code
        .parse::<u32>()
        .is_ok_and(|extended_code| matches!(extended_code & 0xff, 5 | 6 | 10 | 13 | 14))
}

/// A database URL fit for logs and error messages: the password, if any, is
/// replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |offset| authority_start + offset);
    let authority = &url[authority_start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let user_info = &authority[..at];
    let Some(colon) = user_info.find(':') else {
        return url.to_string();
    };
    format!(
        "{}{}:***{}",
        &url[..authority_start],
        &user_info[..colon],
        &url[authority_start + at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(
            redact_url("postgres://alice:s3cr:et@db:5432/xmpp"),
            "postgres://alice:***@db:5432/xmpp"
        );
        assert_eq!(
            redact_url("postgres://alice@db:5432/xmpp"),
            "postgres://alice@db:5432/xmpp"
        );
        assert_eq!(
            redact_url("postgres://db/xmpp?user=a@b"),
            "postgres://db/xmpp?user=a@b"
        );
        assert_eq!(
            redact_url("sqlite://./data/starling.db"),
            "sqlite://./data/starling.db"
        );
        assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
    }

    #[test]
    fn transient_codes_are_unavailable() {
        // SQLITE_BUSY_SNAPSHOT (517) and SQLITE_BUSY (5), SQLITE_LOCKED (6).
        assert!(sqlite_code_is_transient("517"));
        assert!(sqlite_code_is_transient("5"));
        assert!(sqlite_code_is_transient("6"));
        // SQLITE_CONSTRAINT_UNIQUE (2067) is not transient.
        assert!(!sqlite_code_is_transient("2067"));
        // PostgreSQL: connection failure, too many connections, admin shutdown, deadlock.
        assert!(postgres_code_is_transient("08006"));
        assert!(postgres_code_is_transient("53300"));
        assert!(postgres_code_is_transient("57P01"));
        assert!(postgres_code_is_transient("40P01"));
        // PostgreSQL unique violation and syntax error are not.
        assert!(!postgres_code_is_transient("23505"));
        assert!(!postgres_code_is_transient("42601"));
    }

    fn contract_kind(error: &ApiError) -> &'static str {
        match error {
            ApiError::NotFound(_) => "not-found",
            ApiError::AlreadyExists(_) => "already-exists",
            ApiError::Invalid(_) => "invalid",
            ApiError::LimitReached(_) => "limit-reached",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    #[test]
    fn errors_map_onto_the_contract() {
        let cases = [
            (
                StorageError::AccountNotFound("a@example.org".into()),
                "not-found",
            ),
            (
                StorageError::AccountExists("a@example.org".into()),
                "already-exists",
            ),
            (StorageError::Invalid("nul".into()), "invalid"),
            (
                StorageError::OfflineQueueFull {
                    user: "a@example.org".into(),
                    limit: 3,
                },
                "limit-reached",
            ),
            (
                StorageError::RosterFull {
                    user: "a@example.org".into(),
                    limit: 3,
                },
                "limit-reached",
            ),
            (
                StorageError::Database(sqlx::Error::PoolTimedOut),
                "unavailable",
            ),
            (
                StorageError::Database(sqlx::Error::PoolClosed),
                "unavailable",
            ),
            (
                StorageError::Database(sqlx::Error::Io(
                    std::io::ErrorKind::ConnectionRefused.into(),
                )),
                "unavailable",
            ),
            (
                StorageError::Database(sqlx::Error::RowNotFound),
                "not-found",
            ),
            (
                StorageError::Database(sqlx::Error::Protocol("bad".into())),
                "internal",
            ),
            (StorageError::CorruptData("iterations".into()), "internal"),
            (
                StorageError::UnsupportedUrl {
                    url: "mysql://db".into(),
                },
                "internal",
            ),
        ];
        for (storage_error, expected) in cases {
            let description = storage_error.to_string();
            let api_error = ApiError::from(storage_error);
            assert_eq!(
                contract_kind(&api_error),
                expected,
                "{description} mapped to {api_error:?}"
            );
        }
    }
}
