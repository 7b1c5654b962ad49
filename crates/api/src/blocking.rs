//! Block lists (XEP-0191 Blocking Command, with XEP-0377 reports): what the
//! storage service keeps per account, and the JID matching rules of XEP-0191
//! section 3.3 ("JID Matching") that the router and the presence service
//! apply to every stanza.

use async_trait::async_trait;
use starling_jid::{BareJid, Jid};

use crate::error::ApiResult;

/// A XEP-0377 report kept with a block item: the reason URI
/// (`urn:xmpp:reporting:spam`, `urn:xmpp:reporting:abuse`) and the optional text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbuseReport {
    pub reason: String,
    pub text: Option<String>,
}

/// One blocked address (a domain, `domain/resource`, a bare or a full JID),
/// normalised, with the report the user attached when blocking it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedItem {
    pub jid: Jid,
    pub report: Option<AbuseReport>,
}

impl BlockedItem {
    pub fn new(jid: Jid) -> Self {
        BlockedItem { jid, report: None }
    }
}

/// The block lists (XEP-0191), durable in the database.
#[async_trait]
pub trait BlockingStore: Send + Sync + 'static {
    /// The account's blocked items, sorted by address; empty for no account.
    async fn blocklist(&self, user: &BareJid) -> ApiResult<Vec<BlockedItem>>;
    /// Add items (an item already blocked is kept, its report replaced when a
    /// new one is given). `LimitReached` when the list would hold more than
    /// the storage's maximum, in which case nothing is added; `NotFound` for
    /// no such account.
    async fn block(&self, user: &BareJid, items: &[BlockedItem]) -> ApiResult<()>;
    /// Remove these addresses (absent ones are ignored); an empty `jids`
    /// removes every item (XEP-0191 section 3.5). Returns the removed addresses.
    async fn unblock(&self, user: &BareJid, jids: &[Jid]) -> ApiResult<Vec<Jid>>;
}

/// Whether the block item `item` covers `address`, by the rules of
/// XEP-0191 section 3.3 (those of XEP-0016): `user@domain/resource` matches
/// only that resource; `user@domain` any resource of it; `domain/resource`
/// only that resource of the domain; `domain` the domain itself, any
/// `user@domain`, `domain/resource`, and any address of a subdomain.
pub fn item_covers(item: &Jid, address: &Jid) -> bool {
    match (item.node(), item.resource()) {
        (Some(_), Some(_)) | (None, Some(_)) => item == address,
        (Some(_), None) => item.bare() == address.bare(),
        (None, None) => {
            let domain = item.domain();
            let candidate = address.domain();
            candidate == domain
                || (candidate.len() > domain.len()
                    && candidate.ends_with(domain)
                    && candidate.as_bytes()[candidate.len() - domain.len() - 1] == b'.')
        }
    }
}

/// Whether any of `items` covers `address`.
pub fn any_covers<'a>(items: impl IntoIterator<Item = &'a Jid>, address: &Jid) -> bool {
    items.into_iter().any(|item| item_covers(item, address))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(text: &str) -> Jid {
        text.parse().expect("a valid jid")
    }

    fn covers(item: &str, address: &str) -> bool {
        item_covers(&jid(item), &jid(address))
    }

    #[test]
    fn full_jid_matches_only_that_resource() {
        assert!(covers(
            "romeo@montague.net/orchard",
            "romeo@montague.net/orchard"
        ));
        assert!(!covers(
            "romeo@montague.net/orchard",
            "romeo@montague.net/garden"
        ));
        assert!(!covers("romeo@montague.net/orchard", "romeo@montague.net"));
    }

    #[test]
    fn bare_jid_matches_any_resource() {
        assert!(covers("romeo@montague.net", "romeo@montague.net"));
        assert!(covers("romeo@montague.net", "romeo@montague.net/orchard"));
        assert!(!covers("romeo@montague.net", "benvolio@montague.net"));
        assert!(!covers("romeo@montague.net", "montague.net"));
    }

    #[test]
    fn domain_resource_matches_only_that_resource_of_the_domain() {
        assert!(covers("montague.net/bot", "montague.net/bot"));
        assert!(!covers("montague.net/bot", "montague.net"));
        assert!(!covers("montague.net/bot", "romeo@montague.net/bot"));
    }

    #[test]
    fn domain_matches_users_resources_and_subdomains() {
        assert!(covers("montague.net", "montague.net"));
        assert!(covers("montague.net", "romeo@montague.net"));
        assert!(covers("montague.net", "romeo@montague.net/orchard"));
        assert!(covers("montague.net", "montague.net/bot"));
        assert!(covers("montague.net", "chat.montague.net"));
        assert!(covers("montague.net", "room@muc.chat.montague.net/nick"));
        // A domain that merely ends with the same letters is another domain.
        assert!(!covers("montague.net", "evilmontague.net"));
        assert!(!covers("montague.net", "capulet.net"));
    }

    #[test]
    fn matching_compares_normalised_addresses() {
        assert!(covers("Romeo@Montague.NET", "romeo@montague.net/x"));
        assert!(any_covers(
            [&jid("capulet.com"), &jid("romeo@montague.net")],
            &jid("romeo@montague.net/y")
        ));
        assert!(!any_covers([], &jid("romeo@montague.net")));
    }
}
