-- Starling's initial schema, PostgreSQL dialect. Keep it table-for-table and
-- column-for-column identical to ../sqlite/20250101000000_initial.sql: the
-- only differences are the identity column and BYTEA for BLOB
-- (tests/contract.rs compares both schemas).
--
-- Every user's data hangs off accounts(id) with ON DELETE CASCADE, so later
-- tables (MAM archive, vCards, private XML storage, block lists, PEP items)
-- are added as new tables keyed by account_id without touching these.

-- Local accounts; domain and localpart are stored normalised (RFC 7622 section 3).
-- roster_version is the per-user roster version counter (RFC 6121 section 2.6),
-- last_offline_seq the last sequence number handed to an offline message.
CREATE TABLE accounts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain TEXT NOT NULL,
    localpart TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    roster_version BIGINT NOT NULL,
    last_offline_seq BIGINT NOT NULL
);
CREATE UNIQUE INDEX accounts_by_address ON accounts (domain, localpart);

-- Salted SCRAM keys, one row per hash function (RFC 5802 section 3); never a password.
CREATE TABLE scram_credentials (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    hash TEXT NOT NULL,
    salt BYTEA NOT NULL,
    iterations BIGINT NOT NULL,
    stored_key BYTEA NOT NULL,
    server_key BYTEA NOT NULL,
    PRIMARY KEY (account_id, hash)
);

-- Roster items with the full subscription state of RFC 6121 Appendix A.
CREATE TABLE roster_items (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    contact TEXT NOT NULL,
    name TEXT,
    subscription TEXT NOT NULL CHECK (subscription IN ('none', 'to', 'from', 'both')),
    pending_out BOOLEAN NOT NULL,
    pending_in BOOLEAN NOT NULL,
    pending_in_stanza TEXT,
    in_roster BOOLEAN NOT NULL,
    PRIMARY KEY (account_id, contact)
);

-- The groups of a roster item (RFC 6121 section 2.1.2.2), in the order given.
CREATE TABLE roster_groups (
    account_id BIGINT NOT NULL,
    contact TEXT NOT NULL,
    position BIGINT NOT NULL,
    group_name TEXT NOT NULL,
    PRIMARY KEY (account_id, contact, position),
    FOREIGN KEY (account_id, contact) REFERENCES roster_items (account_id, contact) ON DELETE CASCADE
);

-- The offline message queue (XEP-0160), taken oldest first by (account_id, seq).
CREATE TABLE offline_messages (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    stanza_xml TEXT NOT NULL,
    stored_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, seq)
);
