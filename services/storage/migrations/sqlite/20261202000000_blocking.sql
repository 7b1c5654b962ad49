-- Block lists (XEP-0191 Blocking Command). One row per blocked address
-- (a domain, domain/resource, bare or full JID, normalised), with the
-- XEP-0377 report the user attached when blocking it (reason URI and text).
-- Identical in both dialects (tests/connect.rs compares them).
CREATE TABLE blocklist_items (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    jid TEXT NOT NULL,
    report_reason TEXT,
    report_text TEXT,
    blocked_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, jid)
);
