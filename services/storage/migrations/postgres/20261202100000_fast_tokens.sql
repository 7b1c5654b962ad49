-- FAST tokens (XEP-0484): per account and client (SASL2 user agent), at most
-- two per client (the one in use and the one issued last). The token itself is
-- never stored: its SHA-256, and when it was issued.
CREATE TABLE fast_tokens (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    agent_id TEXT NOT NULL,
    mechanism TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    token_hash BYTEA NOT NULL,
    PRIMARY KEY (account_id, agent_id, issued_at)
);
