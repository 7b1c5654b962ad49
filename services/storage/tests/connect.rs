//! Connecting, configuration errors, the SQLite file settings, readiness
//! probes, and the equality of the SQLite and PostgreSQL schemas
//! (DESIGN.md "Durable storage": the same tables on both databases).

mod support;

use std::collections::BTreeSet;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, Row};
use starling_api::{
    AccountStore, ApiError, OfflineStore, RosterStore, ScramCredentials, StoredCredentials,
};
use starling_jid::BareJid;
use starling_storage::{Storage, StorageConfig, StorageError};
use support::{suite_config, FreshPostgres, TempFolder};

fn credentials() -> StoredCredentials {
    let keys = ScramCredentials {
        salt: vec![1; 16],
        iterations: 4096,
        stored_key: vec![2; 20],
        server_key: vec![3; 20],
    };
    StoredCredentials {
        sha1: keys.clone(),
        sha256: ScramCredentials {
            stored_key: vec![4; 32],
            server_key: vec![5; 32],
            ..keys
        },
    }
}

#[tokio::test]
async fn unsupported_scheme_names_the_url() {
    let error = Storage::connect(&suite_config("mysql://root@127.0.0.1/xmpp".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(error, StorageError::UnsupportedUrl { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("mysql://root@127.0.0.1/xmpp"), "{message}");
    assert!(
        message.contains("sqlite://"),
        "the message should say what is expected: {message}"
    );

    let error = Storage::connect(&suite_config("./starling.db".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(error, StorageError::UnsupportedUrl { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn bad_url_parameters_and_settings_are_refused() {
    let error = Storage::connect(&suite_config("sqlite://./x.db?mode=sideways".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(error, StorageError::InvalidUrl { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("sqlite://./x.db?mode=sideways"),
        "{error}"
    );

    let error = Storage::connect(&suite_config(
        "postgres://u:hunter2@127.0.0.1:notaport/db".into(),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(error, StorageError::InvalidUrl { .. }),
        "{error:?}"
    );
    assert!(
        !error.to_string().contains("hunter2"),
        "the password must not appear: {error}"
    );

    let config = StorageConfig {
        max_connections: 0,
        ..suite_config("sqlite::memory:".into())
    };
    let error = Storage::connect(&config).await.unwrap_err();
    assert!(
        matches!(
            error,
            StorageError::InvalidSetting {
                key: "max_connections",
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn unreachable_postgres_is_unavailable() {
    // Nothing listens on port 1 of the loopback address.
    let config = suite_config("postgres://postgres:secret@127.0.0.1:1/starling".into());
    let error = Storage::connect(&config).await.unwrap_err();
    assert!(matches!(error, StorageError::Connect { .. }), "{error:?}");
    assert!(error.is_unavailable());
    assert!(matches!(ApiError::from(error), ApiError::Unavailable(_)));
}

#[tokio::test]
async fn sqlite_file_is_created_in_wal_mode_and_persists() {
    let folder = TempFolder::new();
    let file = folder.path.join("a").join("b").join("starling.db");
    let config = suite_config(format!("sqlite://{}", file.display()));
    let alice: BareJid = "alice@example.org".parse().unwrap();

    let storage = Storage::connect(&config).await.unwrap();
    assert!(file.is_file(), "connect should create {}", file.display());
    storage.ping().await.unwrap();
    storage
        .create_account(&alice, &credentials())
        .await
        .unwrap();
    storage
        .store_offline(
            &alice,
            "<message xmlns='jabber:client' to='alice@example.org'><body>kept</body></message>",
        )
        .await
        .unwrap();
    storage.close().await;

    // Closed: a request fails as unavailable, never panics.
    assert!(matches!(
        storage.count_offline(&alice).await,
        Err(ApiError::Unavailable(_))
    ));
    assert!(storage.ping().await.unwrap_err().is_unavailable());

    // Connecting again runs the (already applied) migrations and finds the data.
    let reopened = Storage::connect(&config).await.unwrap();
    assert_eq!(
        reopened.credentials(&alice).await.unwrap(),
        Some(credentials())
    );
    assert_eq!(
        reopened.take_all_offline(&alice).await.unwrap(),
        vec!["<message xmlns='jabber:client' to='alice@example.org'><body>kept</body></message>"]
    );
    reopened.close().await;

    let mut connection =
        sqlx::SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&file))
            .await
            .unwrap();
    let journal_mode: String = sqlx::query("PRAGMA journal_mode")
        .fetch_one(&mut connection)
        .await
        .unwrap()
        .get(0);
    assert_eq!(journal_mode, "wal");
    connection.close().await.unwrap();
}

#[tokio::test]
async fn in_memory_databases_are_separate_and_shared_by_clones() {
    let first = Storage::connect(&suite_config("sqlite::memory:".into()))
        .await
        .unwrap();
    let second = Storage::connect(&suite_config("sqlite::memory:".into()))
        .await
        .unwrap();
    let alice: BareJid = "alice@example.org".parse().unwrap();
    first.create_account(&alice, &credentials()).await.unwrap();
    assert_eq!(second.credentials(&alice).await.unwrap(), None);
    // Clones share the database.
    let clone = first.clone();
    assert_eq!(
        clone.credentials(&alice).await.unwrap(),
        Some(credentials())
    );
}

/// One column as both databases describe it: table, column, portable type,
/// NOT NULL, position in the primary key (0 when not in it).
type ColumnShape = (String, String, &'static str, bool, i64);

fn portable_type(declared: &str) -> &'static str {
    match declared.to_ascii_lowercase().as_str() {
        "integer" | "bigint" => "integer",
        "blob" | "bytea" => "bytes",
        "text" => "text",
        "boolean" => "boolean",
        _ => "unknown",
    }
}

async fn sqlite_schema(file: &std::path::Path) -> (BTreeSet<ColumnShape>, BTreeSet<String>) {
    let mut connection =
        sqlx::SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(file))
            .await
            .unwrap();
    let rows = sqlx::query(
        "SELECT m.name, p.name, p.type, p.\"notnull\", p.pk FROM sqlite_master m JOIN pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND m.name NOT LIKE '\\_sqlx%' ESCAPE '\\'",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    let columns = rows
        .iter()
        .map(|row| {
            let declared: String = row.get(2);
            let primary_key_position: i64 = row.get(4);
            // A primary key column is never NULL, declared or not.
            let not_null = row.get::<i64, _>(3) == 1 || primary_key_position > 0;
            (
                row.get(0),
                row.get(1),
                portable_type(&declared),
                not_null,
                primary_key_position,
            )
        })
        .collect();
    let indexes = sqlx::query(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite\\_autoindex%' ESCAPE '\\'",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect();
    connection.close().await.unwrap();
    (columns, indexes)
}

async fn postgres_schema(url: &str) -> (BTreeSet<ColumnShape>, BTreeSet<String>) {
    let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
    let rows = sqlx::query(
        "SELECT c.table_name::text, c.column_name::text, c.data_type::text, c.is_nullable = 'NO', \
         COALESCE((SELECT k.ordinal_position::bigint FROM information_schema.key_column_usage k \
                   JOIN information_schema.table_constraints t \
                     ON t.constraint_name = k.constraint_name AND t.table_schema = k.table_schema \
                   WHERE t.constraint_type = 'PRIMARY KEY' AND k.table_schema = c.table_schema \
                     AND k.table_name = c.table_name AND k.column_name = c.column_name), 0) \
         FROM information_schema.columns c \
         WHERE c.table_schema = current_schema() AND c.table_name NOT LIKE '\\_sqlx%'",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    let columns = rows
        .iter()
        .map(|row| {
            let declared: String = row.get(2);
            (
                row.get(0),
                row.get(1),
                portable_type(&declared),
                row.get(3),
                row.get(4),
            )
        })
        .collect();
    let indexes = sqlx::query(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema() \
         AND indexname NOT LIKE '%\\_pkey' AND tablename NOT LIKE '\\_sqlx%'",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect();
    connection.close().await.unwrap();
    (columns, indexes)
}

#[tokio::test]
async fn sqlite_and_postgres_migrations_make_the_same_tables() {
    let folder = TempFolder::new();
    let file = folder.path.join("schema.db");
    let sqlite = Storage::connect(&suite_config(format!("sqlite://{}", file.display())))
        .await
        .unwrap();
    sqlite.close().await;
    let (sqlite_columns, sqlite_indexes) = sqlite_schema(&file).await;
    let tables: BTreeSet<&str> = sqlite_columns
        .iter()
        .map(|column| column.0.as_str())
        .collect();
    assert_eq!(
        tables,
        BTreeSet::from([
            "account_documents",
            "accounts",
            "archive_accounts",
            "archive_messages",
            "archive_pref_jids",
            "blocklist_items",
            "fast_tokens",
            "muc_affiliations",
            "muc_archive_messages",
            "muc_rooms",
            "offline_messages",
            "caps_features",
            "pep_items",
            "pep_nodes",
            "pep_subscriptions",
            "pep_whitelist",
            "push_registrations",
            "roster_groups",
            "roster_items",
            "scram_credentials",
            "upload_slots"
        ])
    );
    assert!(
        sqlite_columns.iter().all(|column| column.2 != "unknown"),
        "{sqlite_columns:?}"
    );

    let Some(database) = FreshPostgres::create().await else {
        return;
    };
    let postgres = match Storage::connect(&suite_config(database.url.clone())).await {
        Ok(storage) => storage,
        Err(error) => {
            database.drop_database().await;
            panic!("cannot open storage on postgresql: {error}");
        }
    };
    postgres.close().await;
    let (postgres_columns, postgres_indexes) = postgres_schema(&database.url).await;
    database.drop_database().await;
    assert_eq!(
        sqlite_columns, postgres_columns,
        "the two migration folders differ"
    );
    assert_eq!(sqlite_indexes, postgres_indexes);
    assert_eq!(
        sqlite_indexes,
        BTreeSet::from([
            "accounts_by_address".to_string(),
            "archive_messages_by_with".to_string(),
            "caps_features_by_last_seen".to_string(),
            "muc_archive_messages_by_id".to_string(),
            "muc_archive_messages_by_with".to_string(),
            "pep_items_by_seq".to_string(),
            "pep_subscriptions_by_subscriber".to_string(),
            "upload_slots_by_account".to_string(),
        ])
    );
}

#[tokio::test]
async fn postgres_connects_and_pings() {
    let Some(database) = FreshPostgres::create().await else {
        return;
    };
    let outcome = async {
        let storage = Storage::connect(&suite_config(database.url.clone())).await?;
        storage.ping().await?;
        // A second start on the same database finds the migrations applied.
        let again = Storage::connect(&suite_config(database.url.clone())).await?;
        again.ping().await?;
        storage.close().await;
        again.close().await;
        Ok::<_, StorageError>(())
    }
    .await;
    database.drop_database().await;
    outcome.unwrap();
}

#[test]
fn with_database_replaces_only_the_path() {
    assert_eq!(
        support::with_database(
            "postgres://postgres@127.0.0.1:5432/postgres",
            "starling_test_1"
        ),
        "postgres://postgres@127.0.0.1:5432/starling_test_1"
    );
    assert_eq!(
        support::with_database("postgres://root@localhost", "t"),
        "postgres://root@localhost/t"
    );
    assert_eq!(
        support::with_database("postgres://u:p@h/db?sslmode=disable", "t"),
        "postgres://u:p@h/t?sslmode=disable"
    );
}

#[tokio::test]
async fn stored_roster_row_with_an_invalid_jid_is_skipped() {
    let folder = TempFolder::new();
    let file = folder.path.join("roster.db");
    let storage = Storage::connect(&suite_config(format!("sqlite://{}", file.display())))
        .await
        .unwrap();
    let alice: BareJid = "alice@example.org".parse().unwrap();
    storage
        .create_account(&alice, &credentials())
        .await
        .unwrap();
    let mut before = starling_api::RosterItem::new("aaa@example.net".parse().unwrap());
    before.groups = vec!["Before".into()];
    let mut after = starling_api::RosterItem::new("ccc@example.net".parse().unwrap());
    after.groups = vec!["After".into()];
    storage.put_roster_item(&alice, &before).await.unwrap();
    storage.put_roster_item(&alice, &after).await.unwrap();

    // A row written by hand (or under older normalisation rules) that is no JID.
    let mut connection =
        sqlx::SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&file))
            .await
            .unwrap();
    sqlx::query(
        "INSERT INTO roster_items (account_id, contact, subscription, pending_out, pending_in, in_roster) \
         SELECT id, 'bbb@@bad', 'both', 0, 0, 1 FROM accounts",
    )
    .execute(&mut connection)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO roster_groups (account_id, contact, position, group_name) \
         SELECT id, 'bbb@@bad', 0, 'Stray' FROM accounts",
    )
    .execute(&mut connection)
    .await
    .unwrap();
    connection.close().await.unwrap();

    let (_, items) = storage.roster(&alice).await.unwrap();
    assert_eq!(items, vec![before, after]);
    storage.close().await;
}
