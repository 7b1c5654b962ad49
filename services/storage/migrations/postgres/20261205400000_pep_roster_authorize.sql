-- The `roster` and `authorize` access models of PEP nodes (XEP-0060 section
-- 4.5): a node's pubsub#roster_groups_allowed (group names joined with a
-- line break, sorted; empty for none), and the explicit subscriptions to a
-- node (section 6.1): the subscribed JID (bare or full), its bare JID for
-- the subscriber's own look-up, and the state (`pending` until the owner of
-- an `authorize` node approves it, section 8.6, then `subscribed`).
ALTER TABLE pep_nodes ADD COLUMN roster_groups TEXT NOT NULL DEFAULT '';

CREATE TABLE pep_subscriptions (
    account_id BIGINT NOT NULL,
    node TEXT NOT NULL,
    jid TEXT NOT NULL,
    subscriber TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (account_id, node, jid),
    FOREIGN KEY (account_id, node) REFERENCES pep_nodes (account_id, node) ON DELETE CASCADE
);

CREATE INDEX pep_subscriptions_by_subscriber ON pep_subscriptions (subscriber, state);
