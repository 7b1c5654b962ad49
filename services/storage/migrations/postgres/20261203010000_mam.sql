-- The message archive (XEP-0313 Message Archive Management) with its
-- preferences (XEP-0441). Identical in both dialects (tests/connect.rs
-- compares them).
--
-- archive_messages: one row per message in one account's archive. `id` is
-- assigned by the session-router before delivery (it is the XEP-0359
-- stanza-id): microseconds since the Unix epoch shifted left by 8 bits, so
-- id order is time order and a time range is an id range. A page query is
-- one range scan of the primary key (account_id, id), or with a `with`
-- filter of archive_messages_by_with (account_id, with_bare, id): O(log n)
-- to find the page, then the page's rows.
CREATE TABLE archive_messages (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    id BIGINT NOT NULL,
    with_bare TEXT NOT NULL,
    with_resource TEXT NOT NULL,
    stanza_xml TEXT NOT NULL,
    PRIMARY KEY (account_id, id)
);
CREATE INDEX archive_messages_by_with ON archive_messages (account_id, with_bare, id);

-- Per account: the default rule of XEP-0441 and how many messages the
-- archive holds (kept with every insert and purge, so that the bound
-- mam.max_messages_per_account is enforced without counting rows).
CREATE TABLE archive_accounts (
    account_id BIGINT NOT NULL PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    default_rule TEXT NOT NULL CHECK (default_rule IN ('always', 'never', 'roster')),
    message_count BIGINT NOT NULL
);

-- The addresses of XEP-0441 <always/> and <never/>, normalised; an address
-- in both is kept as 'never' (never wins).
CREATE TABLE archive_pref_jids (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    jid TEXT NOT NULL,
    rule TEXT NOT NULL CHECK (rule IN ('always', 'never')),
    PRIMARY KEY (account_id, jid)
);
