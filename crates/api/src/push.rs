//! Push registrations (XEP-0357 section 5): the app servers an account
//! enabled, one row per (app server JID, node), in a table of their own so
//! that the router can learn cheaply whether an account has any.

use async_trait::async_trait;
use starling_jid::BareJid;

use crate::error::ApiResult;

/// One registration as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRegistration {
    /// The app server's address (normalised by the router).
    pub service_jid: String,
    /// The node the app server provisioned.
    pub node: String,
    /// The `pubsub#publish-options` form the client gave, serialised, kept
    /// opaque and sent back with each notification.
    pub publish_options_xml: Option<String>,
}

/// The push registrations of accounts.
#[async_trait]
pub trait PushStore: Send + Sync + 'static {
    /// `user`'s registrations, in the order they were (last) enabled.
    async fn push_registrations(&self, user: &BareJid) -> ApiResult<Vec<PushRegistration>>;
    /// Enable `registration` for `user`: a (JID, node) enabled again is
    /// replaced (its options, and it becomes the newest). `LimitReached`
    /// when the account has `max_per_account` other registrations;
    /// `NotFound` without the account.
    async fn put_push_registration(
        &self,
        user: &BareJid,
        registration: &PushRegistration,
        max_per_account: u32,
    ) -> ApiResult<()>;
    /// Remove `user`'s registrations of `service_jid` (only the one of
    /// `node` when given, XEP-0357 section 6); returns how many went.
    async fn remove_push_registrations(
        &self,
        user: &BareJid,
        service_jid: &str,
        node: Option<&str>,
    ) -> ApiResult<u64>;
}
