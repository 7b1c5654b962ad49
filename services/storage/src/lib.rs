//! The storage service: accounts and SCRAM credentials, rosters, offline messages, on SQLite or PostgreSQL through sqlx
