-- XEP-0115 capability records are pruned when no session announced them for
-- pep.caps_retention_days: last_seen is refreshed (at most once a day per
-- record) when a session announces the record's ver, and the storage
-- service's sweep removes the rows seen before the cutoff, oldest first.
ALTER TABLE caps_features ADD COLUMN last_seen BIGINT NOT NULL DEFAULT 0;
UPDATE caps_features SET last_seen = learned_at;
CREATE INDEX caps_features_by_last_seen ON caps_features (last_seen);
