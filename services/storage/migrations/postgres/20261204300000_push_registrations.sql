-- Push registrations (XEP-0357 section 5), one row per (app server JID,
-- node) of an account, numbered in the order they were enabled. Identical in
-- both dialects. They were kept in the account document "push"
-- (account_documents) before: the storage service moves such documents into
-- this table when it starts (`Storage::connect`, in Rust: they are XML).
CREATE TABLE push_registrations (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    service_jid TEXT NOT NULL,
    node TEXT NOT NULL,
    publish_options TEXT,
    position BIGINT NOT NULL,
    PRIMARY KEY (account_id, service_jid, node)
);
