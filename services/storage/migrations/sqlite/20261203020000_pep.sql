-- Personal Eventing Protocol (XEP-0163) over the XEP-0060 subset it needs:
-- an account's nodes with their configuration, the persistent items of each
-- (numbered by the node's own sequence, newest highest), the whitelist of a
-- `whitelist` node, and the verified entity capabilities (XEP-0115) that
-- every router of the cluster shares. Booleans are 0/1 integers and
-- max_items -1 means `max`, so that both dialects have the same columns.
CREATE TABLE pep_nodes (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    node TEXT NOT NULL,
    access_model TEXT NOT NULL,
    max_items BIGINT NOT NULL,
    persist_items BIGINT NOT NULL,
    send_last_published_item TEXT NOT NULL,
    notify_retract BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    PRIMARY KEY (account_id, node)
);

CREATE TABLE pep_items (
    account_id BIGINT NOT NULL,
    node TEXT NOT NULL,
    item_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    publisher TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (account_id, node, item_id),
    FOREIGN KEY (account_id, node) REFERENCES pep_nodes (account_id, node) ON DELETE CASCADE
);

CREATE INDEX pep_items_by_seq ON pep_items (account_id, node, seq);

CREATE TABLE pep_whitelist (
    account_id BIGINT NOT NULL,
    node TEXT NOT NULL,
    jid TEXT NOT NULL,
    PRIMARY KEY (account_id, node, jid),
    FOREIGN KEY (account_id, node) REFERENCES pep_nodes (account_id, node) ON DELETE CASCADE
);

CREATE TABLE caps_features (
    hash TEXT NOT NULL,
    ver TEXT NOT NULL,
    features TEXT NOT NULL,
    learned_at BIGINT NOT NULL,
    PRIMARY KEY (hash, ver)
);
