-- HTTP File Upload (XEP-0363): one row per slot granted, for the per-account
-- quota and for the PUT and GET of any connection-manager. The PUT token
-- itself is never stored: its SHA-256. Rows go when their file expires
-- (upload.expire_after_secs), or when a slot never used is that old.
CREATE TABLE upload_slots (
    id TEXT NOT NULL PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    file_name TEXT NOT NULL,
    size BIGINT NOT NULL,
    content_type TEXT,
    token_hash BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    uploaded_at BIGINT
);
CREATE INDEX upload_slots_by_account ON upload_slots (account_id, created_at);
