-- Persistent multi-user chat rooms (XEP-0045 section 10.2
-- `muc#roomconfig_persistentroom`): what a room keeps when it has no
-- occupant and when the room store (Redis, or the process in `starling
-- serve`) loses it. One row per room, named by its service's domain and its
-- localpart; `config` is the room configuration as the MUC service
-- serialises it (JSON), with the name and the public flag copied out for the
-- service's disco#items. `revision` grows with each change: an older write
-- is ignored. Identical in both dialects; `public` is a 0/1 integer.
CREATE TABLE muc_rooms (
    service TEXT NOT NULL,
    localpart TEXT NOT NULL,
    revision BIGINT NOT NULL,
    name TEXT NOT NULL,
    public BIGINT NOT NULL,
    config TEXT NOT NULL,
    subject TEXT NOT NULL,
    subject_nick TEXT NOT NULL,
    occupant_id_salt TEXT NOT NULL,
    PRIMARY KEY (service, localpart)
);

-- Section 5.2: a room's long-lived affiliations by bare JID (`none` is not
-- stored), with the reason given (a ban's, section 9.1).
CREATE TABLE muc_affiliations (
    service TEXT NOT NULL,
    localpart TEXT NOT NULL,
    jid TEXT NOT NULL,
    affiliation TEXT NOT NULL CHECK (affiliation IN ('owner', 'admin', 'member', 'outcast')),
    reason TEXT,
    PRIMARY KEY (service, localpart, jid),
    FOREIGN KEY (service, localpart) REFERENCES muc_rooms (service, localpart) ON DELETE CASCADE
);
