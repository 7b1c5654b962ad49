-- The archives of multi-user chat rooms (XEP-0313 section 5.1.2, "MUC
-- Archives"): one row per groupchat message a room accepted, kept by the
-- MUC service for rooms that archive (docs/muc.md). Identical in both
-- dialects (tests/connect.rs compares them).
--
-- A room is not an account (archive_messages references accounts), so its
-- archive is a table of its own, keyed by the room's bare JID. `id` is the
-- room's XEP-0359 stanza-id: microseconds since the Unix epoch shifted left
-- by 8 bits (starling_api::ArchiveId), assigned under the room's lease, so
-- id order is the room's order. with_bare is the room, with_resource the
-- sender's nick (a `with` of room@service/nick selects one occupant's
-- messages). A page query is one range scan of the primary key, or of
-- muc_archive_messages_by_with with a `with`; the retention purge
-- (mam.retention_days) scans muc_archive_messages_by_id.
CREATE TABLE muc_archive_messages (
    room TEXT NOT NULL,
    id BIGINT NOT NULL,
    with_bare TEXT NOT NULL,
    with_resource TEXT NOT NULL,
    stanza_xml TEXT NOT NULL,
    PRIMARY KEY (room, id)
);
CREATE INDEX muc_archive_messages_by_with ON muc_archive_messages (room, with_bare, with_resource, id);
CREATE INDEX muc_archive_messages_by_id ON muc_archive_messages (id);
