//! The storage service contract: accounts and SCRAM credentials, rosters
//! (RFC 6121 section 2), the offline message queue (XEP-0160) and FAST
//! tokens (XEP-0484).

use async_trait::async_trait;
use starling_jid::BareJid;

use crate::archive::ArchiveStore;
use crate::blocking::BlockingStore;
use crate::error::ApiResult;
use crate::pep::PepStore;

/// Salted SCRAM keys for one hash function (RFC 5802 section 3). The password
/// itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl From<starling_sasl::ScramKeys> for ScramCredentials {
    fn from(keys: starling_sasl::ScramKeys) -> Self {
        ScramCredentials {
            salt: keys.salt,
            iterations: keys.iterations,
            stored_key: keys.stored_key,
            server_key: keys.server_key,
        }
    }
}

impl From<&ScramCredentials> for starling_sasl::ScramKeys {
    fn from(credentials: &ScramCredentials) -> Self {
        starling_sasl::ScramKeys {
            salt: credentials.salt.clone(),
            iterations: credentials.iterations,
            stored_key: credentials.stored_key.clone(),
            server_key: credentials.server_key.clone(),
        }
    }
}

/// What the server keeps to authenticate an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredentials {
    pub sha1: ScramCredentials,
    pub sha256: ScramCredentials,
}

impl StoredCredentials {
    /// Fresh salted keys for both hashes (PBKDF2: CPU work, call it off the
    /// async threads on a server); the password itself is never kept.
    pub fn for_password(password: &str) -> Self {
        let (sha1, sha256) = starling_sasl::new_credentials(password);
        StoredCredentials {
            sha1: sha1.into(),
            sha256: sha256.into(),
        }
    }
}

/// The subscription state of a roster item (RFC 6121 section 2.1.2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Subscription {
    #[default]
    None,
    To,
    From,
    Both,
}

impl Subscription {
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "none" => Subscription::None,
            "to" => Subscription::To,
            "from" => Subscription::From,
            "both" => Subscription::Both,
            _ => return None,
        })
    }

    /// The user receives the contact's presence.
    pub fn has_to(self) -> bool {
        matches!(self, Subscription::To | Subscription::Both)
    }

    /// The contact receives the user's presence.
    pub fn has_from(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }
}

/// One contact in a user's roster, with the full subscription state of
/// RFC 6121 Appendix A (the pending flags included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterItem {
    pub jid: BareJid,
    pub name: Option<String>,
    pub subscription: Subscription,
    /// The user asked to subscribe to the contact and awaits an answer ("Pending Out", `ask='subscribe'`).
    pub pending_out: bool,
    /// The contact asked to subscribe to the user and awaits an answer ("Pending In").
    /// An item that exists only because of this is not shown in the roster (RFC 6121 section 3.1.3).
    pub pending_in: bool,
    /// The stanza of the pending inbound request, redelivered at login (RFC 6121 section 3.1.3).
    pub pending_in_stanza: Option<String>,
    pub groups: Vec<String>,
    /// False for a placeholder that exists only to remember a pending inbound
    /// request (or a subscription state) the user never put in the roster;
    /// such an item is not returned by a roster get nor pushed (RFC 6121 section 3.1.3).
    pub in_roster: bool,
}

impl RosterItem {
    pub fn new(jid: BareJid) -> Self {
        RosterItem {
            jid,
            name: None,
            subscription: Subscription::None,
            pending_out: false,
            pending_in: false,
            pending_in_stanza: None,
            groups: Vec::new(),
            in_roster: true,
        }
    }
}

/// A contact's subscription state and nothing else of its roster item (no
/// name, groups or stored request): what presence routing reads for every
/// broadcast (RFC 6121 sections 4.2.2 and 4.4.2), so that its cost does not
/// grow with what the user wrote into the roster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionEntry {
    pub jid: BareJid,
    pub subscription: Subscription,
    /// The contact asked to subscribe and awaits an answer ("Pending In").
    pub pending_in: bool,
}

impl From<&RosterItem> for SubscriptionEntry {
    fn from(item: &RosterItem) -> Self {
        SubscriptionEntry {
            jid: item.jid.clone(),
            subscription: item.subscription,
            pending_in: item.pending_in,
        }
    }
}

/// One page of the offline queue, taken oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OfflinePage {
    /// The serialised stanzas, oldest first.
    pub stanzas: Vec<String>,
    /// More messages were left in the queue after this page.
    pub more: bool,
}

/// The storage service: the stores of every feature that keeps data, each
/// a trait of its own implemented by `starling_storage::Storage` (SQLite and
/// PostgreSQL) and by the gRPC client. Code that needs one feature's data
/// imports that feature's trait.
pub trait StorageApi:
    AccountStore
    + RosterStore
    + OfflineStore
    + AccountDataStore
    + BlockingStore
    + FastTokenStore
    + crate::PushStore
    + crate::MucRoomStore
    + PepStore
    + ArchiveStore
    + crate::RoomArchiveStore
    + crate::UploadStore
{
}

impl<
        T: AccountStore
            + RosterStore
            + OfflineStore
            + AccountDataStore
            + BlockingStore
            + FastTokenStore
            + crate::PushStore
            + crate::MucRoomStore
            + PepStore
            + ArchiveStore
            + crate::RoomArchiveStore
            + crate::UploadStore
            + ?Sized,
    > StorageApi for T
{
}

/// Accounts and their SCRAM credentials (RFC 5802; in-band registration, XEP-0077).
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Create an account; `AlreadyExists` if it does.
    async fn create_account(
        &self,
        user: &BareJid,
        credentials: &StoredCredentials,
    ) -> ApiResult<()>;
    /// Replace an account's credentials; `NotFound` if there is no such account.
    async fn set_credentials(
        &self,
        user: &BareJid,
        credentials: &StoredCredentials,
    ) -> ApiResult<()>;
    /// Remove an account with its roster, offline messages and all other data; `NotFound` if absent.
    async fn remove_account(&self, user: &BareJid) -> ApiResult<()>;
    /// The accounts of a domain, sorted.
    async fn list_accounts(&self, domain: &str) -> ApiResult<Vec<BareJid>>;
    /// The credentials of an account, `None` when it does not exist.
    async fn credentials(&self, user: &BareJid) -> ApiResult<Option<StoredCredentials>>;
}

/// Rosters with versioning (RFC 6121 sections 2 and 2.6).
#[async_trait]
pub trait RosterStore: Send + Sync + 'static {
    /// The whole roster (visible and placeholder items) and its current version (RFC 6121 section 2.6).
    async fn roster(&self, user: &BareJid) -> ApiResult<(u64, Vec<RosterItem>)>;
    /// The subscription state of every item (visible and placeholders), by
    /// contact: the roster without names and groups.
    async fn subscriptions(&self, user: &BareJid) -> ApiResult<Vec<SubscriptionEntry>>;
    /// One roster item.
    async fn roster_item(&self, user: &BareJid, contact: &BareJid)
        -> ApiResult<Option<RosterItem>>;
    /// Insert or replace an item; returns the roster's new version.
    async fn put_roster_item(&self, user: &BareJid, item: &RosterItem) -> ApiResult<u64>;
    /// Remove an item; returns the new version, `None` if there was no such item.
    async fn remove_roster_item(&self, user: &BareJid, contact: &BareJid)
        -> ApiResult<Option<u64>>;
}

/// The offline message queue (XEP-0160).
#[async_trait]
pub trait OfflineStore: Send + Sync + 'static {
    /// Append a message (serialised stanza) to the user's offline queue;
    /// `LimitReached` when the queue is full.
    async fn store_offline(&self, user: &BareJid, stanza_xml: &str) -> ApiResult<()>;
    /// Remove and return the oldest queued messages, oldest first: as many
    /// as fit in `max_bytes` and `max_messages`, and at least one when any
    /// waits, so that a login's flush holds one page at a time.
    async fn take_offline(
        &self,
        user: &BareJid,
        max_messages: u32,
        max_bytes: u64,
    ) -> ApiResult<OfflinePage>;
    /// Remove and return every queued message, oldest first, page by page
    /// into one vector (for tools and tests: a login's flush delivers each
    /// page before it takes the next).
    async fn take_all_offline(&self, user: &BareJid) -> ApiResult<Vec<String>> {
        let mut all = Vec::new();
        loop {
            let page = self.take_offline(user, u32::MAX, u64::MAX).await?;
            all.extend(page.stanzas);
            if !page.more {
                return Ok(all);
            }
        }
    }
    /// How many messages wait for the user.
    async fn count_offline(&self, user: &BareJid) -> ApiResult<u64>;
}

/// XML documents kept on an account's behalf, one per key: private XML
/// storage (XEP-0049, keyed by the fragment's namespace and name; bookmarks
/// of XEP-0048 and roster notes of XEP-0145 live there) and the vCard
/// (XEP-0054). The account's documents together are bounded in bytes
/// (`storage.max_account_data_bytes`).
#[async_trait]
pub trait AccountDataStore: Send + Sync + 'static {
    /// The document stored under `key`, `None` when there is none.
    async fn account_data(&self, user: &BareJid, key: &str) -> ApiResult<Option<String>>;
    /// Store (`Some`) or remove (`None`) the document under `key`;
    /// `LimitReached` when the account's documents would then exceed their
    /// bound in bytes, `NotFound` when there is no such account.
    async fn put_account_data(&self, user: &BareJid, key: &str, xml: Option<&str>)
        -> ApiResult<()>;
}

/// A FAST token (XEP-0484) as stored: never the token itself, its SHA-256,
/// with what the connection-manager derives the token from again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastTokenRecord {
    /// The client's SASL2 `<user-agent id/>` the token is bound to.
    pub agent_id: String,
    /// The mechanism it was issued for (`HT-SHA-256-NONE`).
    pub mechanism: String,
    /// Milliseconds since the Unix epoch.
    pub issued_at_millis: i64,
    pub expires_at_millis: i64,
    /// SHA-256 of the token.
    pub token_hash: Vec<u8>,
}

/// FAST tokens (XEP-0484), per account and client (user agent).
#[async_trait]
pub trait FastTokenStore: Send + Sync + 'static {
    /// Record a token issued to `user`'s client `token.agent_id`; the
    /// client keeps its two newest tokens (XEP-0484 rotation: the one in
    /// use until the new one is used). `NotFound` without the account.
    async fn put_fast_token(&self, user: &BareJid, token: &FastTokenRecord) -> ApiResult<()>;
    /// The tokens of `user`'s client `agent_id`, newest first.
    async fn fast_tokens(&self, user: &BareJid, agent_id: &str) -> ApiResult<Vec<FastTokenRecord>>;
    /// Remove `user`'s tokens: of the client `agent_id` (every client's
    /// when `None`), issued before `issued_before_millis` (all when `None`).
    /// Returns how many were removed.
    async fn remove_fast_tokens(
        &self,
        user: &BareJid,
        agent_id: Option<&str>,
        issued_before_millis: Option<i64>,
    ) -> ApiResult<u64>;
}
