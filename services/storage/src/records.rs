//! The mapping between the contract's types (RFC 6121 section 2 roster
//! items, RFC 5802 SCRAM keys) and table rows, shared by both drivers.

use std::fmt;
use std::str::FromStr;

use starling_api::{
    ArchiveDefault, RosterItem, ScramCredentials, StoredCredentials, Subscription,
    SubscriptionEntry,
};
use starling_jid::BareJid;

use crate::error::StorageError;

/// The `hash` column of `scram_credentials` (IANA hash function textual names).
pub(crate) const HASH_SHA1: &str = "SHA-1";
pub(crate) const HASH_SHA256: &str = "SHA-256";

/// An account's key in the `accounts` table: its normalised domainpart and
/// localpart (RFC 7622 section 3).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AccountAddress<'a> {
    pub(crate) domain: &'a str,
    pub(crate) localpart: &'a str,
}

impl<'a> AccountAddress<'a> {
    /// The account address of a user; `None` for a domain-only JID, which
    /// can never be an account.
    pub(crate) fn of(user: &'a BareJid) -> Option<Self> {
        Some(AccountAddress {
            domain: user.domain(),
            localpart: user.node()?,
        })
    }
}

impl fmt::Display for AccountAddress<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.localpart, self.domain)
    }
}

/// A multi-user chat room's key in `muc_rooms`: its service's domain and
/// its localpart (XEP-0045: `room@service`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RoomAddress<'a> {
    pub(crate) service: &'a str,
    pub(crate) localpart: &'a str,
}

impl<'a> RoomAddress<'a> {
    /// `None` for a JID without a localpart, which names no room.
    pub(crate) fn of(room: &'a BareJid) -> Option<Self> {
        Some(RoomAddress {
            service: room.domain(),
            localpart: room.node()?,
        })
    }
}

/// One row of `scram_credentials`.
pub(crate) struct CredentialsRow {
    pub(crate) hash: String,
    pub(crate) salt: Vec<u8>,
    pub(crate) iterations: i64,
    pub(crate) stored_key: Vec<u8>,
    pub(crate) server_key: Vec<u8>,
}

/// Both hashes' keys from the rows of one account; no row means no account.
pub(crate) fn credentials_from_rows(
    account: &AccountAddress<'_>,
    rows: Vec<CredentialsRow>,
) -> Result<Option<StoredCredentials>, StorageError> {
    if rows.is_empty() {
        return Ok(None);
    }
    let mut sha1 = None;
    let mut sha256 = None;
    for row in rows {
        let iterations = u32::try_from(row.iterations).map_err(|_| {
            StorageError::CorruptData(format!(
                "{account}: {} iteration count {} out of range",
                row.hash, row.iterations
            ))
        })?;
        let keys = ScramCredentials {
            salt: row.salt,
            iterations,
            stored_key: row.stored_key,
            server_key: row.server_key,
        };
        match row.hash.as_str() {
            HASH_SHA1 => sha1 = Some(keys),
            HASH_SHA256 => sha256 = Some(keys),
            // A hash added by a later version (SCRAM-SHA-512): not part of this contract.
            _ => {}
        }
    }
    match (sha1, sha256) {
        (Some(sha1), Some(sha256)) => Ok(Some(StoredCredentials { sha1, sha256 })),
        _ => Err(StorageError::CorruptData(format!(
            "{account}: SCRAM-SHA-1 or SCRAM-SHA-256 keys missing"
        ))),
    }
}

/// The columns of one roster item row, with the first of its groups.
pub(crate) struct RosterItemColumns {
    pub(crate) contact: String,
    pub(crate) name: Option<String>,
    pub(crate) subscription: String,
    pub(crate) pending_out: bool,
    pub(crate) pending_in: bool,
    pub(crate) pending_in_stanza: Option<String>,
    pub(crate) in_roster: bool,
    pub(crate) first_group: Option<String>,
}

/// A roster item from its row. `Ok(None)` (with a warning) when the stored
/// contact no longer parses as a JID, so one bad row cannot hide a roster.
pub(crate) fn roster_item_from_columns(
    account: &AccountAddress<'_>,
    columns: RosterItemColumns,
) -> Result<Option<RosterItem>, StorageError> {
    let Some(SubscriptionEntry {
        jid,
        subscription,
        pending_in,
    }) = subscription_entry_from_columns(
        account,
        &columns.contact,
        &columns.subscription,
        columns.pending_in,
    )?
    else {
        return Ok(None);
    };
    Ok(Some(RosterItem {
        jid,
        name: columns.name,
        subscription,
        pending_out: columns.pending_out,
        pending_in,
        pending_in_stanza: columns.pending_in_stanza,
        groups: columns.first_group.into_iter().collect(),
        in_roster: columns.in_roster,
    }))
}

/// The subscription state of a stored roster item; `None` (logged) for a
/// row whose contact no longer parses, so that one bad row does not make
/// the whole roster unreadable.
pub(crate) fn subscription_entry_from_columns(
    account: &AccountAddress<'_>,
    contact: &str,
    subscription: &str,
    pending_in: bool,
) -> Result<Option<SubscriptionEntry>, StorageError> {
    let jid = match BareJid::from_str(contact) {
        Ok(jid) => jid,
        Err(error) => {
            tracing::warn!(user = %account, %contact, %error, "skipping stored roster item with an invalid jid");
            return Ok(None);
        }
    };
    let subscription = Subscription::from_name(subscription).ok_or_else(|| {
        StorageError::CorruptData(format!(
            "{account}: roster item {jid} has subscription {subscription:?}"
        ))
    })?;
    Ok(Some(SubscriptionEntry {
        jid,
        subscription,
        pending_in,
    }))
}

/// A roster version as the contract has it.
pub(crate) fn version_from_column(version: i64) -> Result<u64, StorageError> {
    u64::try_from(version)
        .map_err(|_| StorageError::CorruptData(format!("negative roster version {version}")))
}

/// Reject what no database can store faithfully: a string with a NUL
/// character (PostgreSQL TEXT refuses it; XML 1.0 section 2.2 forbids it in a stanza anyway).
pub(crate) fn check_storable_text(what: &str, text: &str) -> Result<(), StorageError> {
    if text.contains('\0') {
        return Err(StorageError::Invalid(format!(
            "{what} contains a NUL character"
        )));
    }
    Ok(())
}

/// The checks a roster item passes before it is stored: no duplicate group
/// (RFC 6121 section 2.3.3, the presence service answers `bad-request`
/// first; storage refuses too) and nothing unstorable.
pub(crate) fn check_roster_item(item: &RosterItem) -> Result<(), StorageError> {
    if let Some(name) = &item.name {
        check_storable_text("roster item name", name)?;
    }
    if let Some(stanza) = &item.pending_in_stanza {
        check_storable_text("pending subscription request", stanza)?;
    }
    for (index, group) in item.groups.iter().enumerate() {
        check_storable_text("roster group", group)?;
        if item.groups[..index].contains(group) {
            return Err(StorageError::Invalid(format!(
                "roster item {} names group {group:?} twice",
                item.jid
            )));
        }
    }
    Ok(())
}

/// One row of `blocklist_items`: the normalised address and the XEP-0377
/// report, if any.
pub(crate) struct BlockRow {
    pub(crate) jid: String,
    pub(crate) report_reason: Option<String>,
    pub(crate) report_text: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> BareJid {
        "alice@example.org".parse().unwrap()
    }

    #[test]
    fn domain_jid_is_no_account() {
        let domain: BareJid = "example.org".parse().unwrap();
        assert!(AccountAddress::of(&domain).is_none());
        let user = alice();
        let address = AccountAddress::of(&user).unwrap();
        assert_eq!(
            (address.domain, address.localpart),
            ("example.org", "alice")
        );
        assert_eq!(address.to_string(), "alice@example.org");
    }

    #[test]
    fn duplicate_groups_are_refused() {
        let mut item = RosterItem::new("bob@example.net".parse().unwrap());
        item.groups = vec!["Friends".into(), "Work".into(), "Friends".into()];
        assert!(matches!(
            check_roster_item(&item),
            Err(StorageError::Invalid(_))
        ));
        item.groups = vec!["Friends".into(), "friends".into()];
        assert!(check_roster_item(&item).is_ok());
    }

    #[test]
    fn nul_characters_are_refused() {
        let mut item = RosterItem::new("bob@example.net".parse().unwrap());
        item.name = Some("Bo\0b".into());
        assert!(matches!(
            check_roster_item(&item),
            Err(StorageError::Invalid(_))
        ));
        assert!(check_storable_text(
            "stanza",
            "<message to='alice@example.org'><body>hi</body></message>"
        )
        .is_ok());
        assert!(check_storable_text("stanza", "<message><body>\0</body></message>").is_err());
    }

    #[test]
    fn incomplete_credentials_are_corrupt() {
        let user = alice();
        let address = AccountAddress::of(&user).unwrap();
        assert!(credentials_from_rows(&address, Vec::new())
            .unwrap()
            .is_none());
        let only_sha1 = vec![CredentialsRow {
            hash: HASH_SHA1.into(),
            salt: vec![1],
            iterations: 4096,
            stored_key: vec![2],
            server_key: vec![3],
        }];
        assert!(matches!(
            credentials_from_rows(&address, only_sha1),
            Err(StorageError::CorruptData(_))
        ));
        let negative = vec![CredentialsRow {
            hash: HASH_SHA256.into(),
            salt: vec![1],
            iterations: -1,
            stored_key: vec![2],
            server_key: vec![3],
        }];
        assert!(matches!(
            credentials_from_rows(&address, negative),
            Err(StorageError::CorruptData(_))
        ));
    }

    #[test]
    fn unknown_subscription_is_corrupt_and_bad_jid_is_skipped() {
        let user = alice();
        let address = AccountAddress::of(&user).unwrap();
        let columns = |contact: &str, subscription: &str| RosterItemColumns {
            contact: contact.into(),
            name: None,
            subscription: subscription.into(),
            pending_out: false,
            pending_in: true,
            pending_in_stanza: Some("<presence from='bob@example.net' type='subscribe'/>".into()),
            in_roster: false,
            first_group: Some("Friends".into()),
        };
        let item = roster_item_from_columns(&address, columns("bob@example.net", "from"))
            .unwrap()
            .unwrap();
        assert_eq!(item.subscription, Subscription::From);
        assert_eq!(item.groups, vec!["Friends".to_string()]);
        assert!(!item.in_roster);
        assert!(matches!(
            roster_item_from_columns(&address, columns("bob@example.net", "pending")),
            Err(StorageError::CorruptData(_))
        ));
        assert!(
            roster_item_from_columns(&address, columns("@example.net", "none"))
                .unwrap()
                .is_none()
        );
    }
}

/// How much one account's roster may hold (`storage.max_roster_items`,
/// `storage.max_roster_bytes`): items, and bytes of contact JIDs, names,
/// groups and the kept subscription requests together.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RosterQuota {
    pub items: u32,
    pub bytes: u64,
}

/// The bytes an item holds in the roster's quota.
pub(crate) fn roster_item_bytes(contact: &str, item: &starling_api::RosterItem) -> u64 {
    let text = contact.len()
        + item.name.as_deref().map_or(0, str::len)
        + item.pending_in_stanza.as_deref().map_or(0, str::len)
        + item.groups.iter().map(|group| group.len()).sum::<usize>();
    text as u64
}

/// How much one account's offline queue may hold (`storage.max_offline_per_user`,
/// `storage.max_offline_bytes_per_user`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OfflineQuota {
    pub messages: u32,
    pub bytes: u64,
}

/// One message to write, its owner's address already split.
pub(crate) struct ArchiveRow<'a> {
    pub(crate) owner: AccountAddress<'a>,
    pub(crate) id: i64,
    pub(crate) with_bare: String,
    pub(crate) with_resource: String,
    pub(crate) stanza_xml: &'a str,
}

/// One message to write in a room's archive.
pub(crate) struct RoomArchiveRow<'a> {
    pub(crate) room: &'a str,
    pub(crate) id: i64,
    pub(crate) with_bare: &'a str,
    pub(crate) with_resource: &'a str,
    pub(crate) stanza_xml: &'a str,
}

/// What one owner's preferences say about one address: the default rule,
/// the rule naming the address (bare or full, `never` first) if any, and
/// whether the address's bare JID is in the owner's roster.
pub(crate) struct DecisionRow {
    pub(crate) default_rule: String,
    pub(crate) listed_rule: Option<String>,
    pub(crate) in_roster: bool,
}

pub(crate) fn default_rule_name(rule: ArchiveDefault) -> &'static str {
    match rule {
        ArchiveDefault::Always => "always",
        ArchiveDefault::Never => "never",
        ArchiveDefault::Roster => "roster",
    }
}
