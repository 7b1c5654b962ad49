//! Bookmarks Conversion, XEP-0411 version 1.1.0 (advertised as
//! `urn:xmpp:bookmarks-conversion:0` on the account): the XEP-0048
//! bookmarks of an account are the same through private XML storage
//! (XEP-0049, `<storage xmlns='storage:bookmarks'/>`, what mcabber and
//! profanity use) and through PEP (the `storage:bookmarks` node). The two
//! copies are kept in step whenever either is written:
//!
//! - **Private XML to PEP** (section 3): a private XML set of
//!   `storage:bookmarks` publishes the storage as item `current` of the PEP
//!   node, notifying its subscribers ("the service MUST send out notification
//!   messages to all subscribers"). Security considerations (section 5): the
//!   node must be the owner's alone, so the publish carries the precondition
//!   `pubsub#access_model = whitelist` (a missing node is created so); a node
//!   someone made readable by others is not written (counted `not_private`).
//! - **PEP to private XML**: a publish to the `storage:bookmarks` node
//!   replaces the private XML document.
//! - **Before the first PEP read** (section 4, implementation notes): when
//!   the owner asks for the node's items and it does not exist yet, bookmarks
//!   kept only in private XML are copied to PEP first.
//!
//! Both copies go through storage directly, so a conversion never triggers
//! the other one. Outcomes: `starling_router_conversions_total{conversion="bookmarks"}`.

use starling_api::{AccessModel, ApiResult, PepConfigPatch};
use starling_jid::BareJid;
use starling_xmpp::{ns, Element};

use crate::handlers::documents;
use crate::router::SessionRouter;

/// The namespace of XEP-0048 bookmarks, and the PEP node that holds them.
pub(crate) const NODE: &str = "storage:bookmarks";
/// The XEP-0411 feature.
pub(crate) const CONVERSION_FEATURE: &str = "urn:xmpp:bookmarks-conversion:0";

/// The item id of the one published storage (XEP-0048 section 3.3, XEP-0223).
pub(crate) const ITEM_ID: &str = "current";

const PRIVATE_TO_PEP: &str = "private_to_pep";
const PEP_TO_PRIVATE: &str = "pep_to_private";

/// The private XML document key of the bookmarks (`handlers/private.rs`).
pub(crate) fn private_key() -> String {
    crate::handlers::private::key(NODE)
}

/// The node configuration a conversion publishes with: the owner's alone
/// (XEP-0411 section 5; whitelist access as XEP-0223 section 3 asks for
/// private data). Only the access model is a precondition, so that a node
/// a client created through XEP-0223 with other settings is still written.
fn private_node() -> PepConfigPatch {
    PepConfigPatch {
        access_model: Some(AccessModel::Whitelist),
        ..PepConfigPatch::default()
    }
}

impl SessionRouter {
    /// After a private XML set (`query`, the stored `<query/>`) by
    /// `publisher`: the bookmarks in it go to PEP.
    pub(crate) async fn private_bookmarks_stored(
        &self,
        owner: &BareJid,
        publisher: &str,
        query: &Element,
    ) {
        let outcome = self
            .publish_private_bookmarks(owner, publisher, query)
            .await;
        self.count_bookmarks_conversion(owner, PRIVATE_TO_PEP, outcome);
        // XEP-0402 section 5: and the per-room items.
        if let Some(storage) = query.get_child("storage", NODE) {
            self.legacy_bookmarks_changed(owner, publisher, storage)
                .await;
        }
    }

    async fn publish_private_bookmarks(
        &self,
        owner: &BareJid,
        publisher: &str,
        query: &Element,
    ) -> ApiResult<&'static str> {
        let Some(storage) = query.get_child("storage", NODE) else {
            return Ok("invalid");
        };
        let published = self
            .publish_on_behalf(
                owner,
                publisher,
                NODE,
                ITEM_ID,
                storage.to_xml(),
                private_node(),
            )
            .await?;
        Ok(if published {
            "converted"
        } else {
            "not_private"
        })
    }

    /// After a PEP publish to `storage:bookmarks` (`payload`, the item's):
    /// the private XML copy follows.
    pub(crate) async fn pep_bookmarks_published(
        &self,
        owner: &BareJid,
        publisher: &str,
        payload: &Element,
    ) {
        let outcome = if payload.is("storage", NODE) {
            let query = Element::new("query", ns::PRIVATE).with_child(payload.clone());
            documents::store(self, owner, &private_key(), &query)
                .await
                .map(|()| "converted")
        } else {
            Ok("invalid")
        };
        self.count_bookmarks_conversion(owner, PEP_TO_PRIVATE, outcome);
        // XEP-0402 section 5: and the per-room items.
        if payload.is("storage", NODE) {
            self.legacy_bookmarks_changed(owner, publisher, payload)
                .await;
        }
    }

    /// Before the owner reads the `storage:bookmarks` node: when it does not
    /// exist, the private XML bookmarks (if any) are published to it first
    /// (XEP-0411 section 4).
    pub(crate) async fn bookmarks_before_pep_read(&self, owner: &BareJid, publisher: &str) {
        match self.storage.pep_node(owner, NODE).await {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(owner = %owner, %error, "bookmarks node lookup failed");
                return;
            }
        }
        match documents::load(self, owner, &private_key()).await {
            Ok(Some(query)) => {
                self.private_bookmarks_stored(owner, publisher, &query)
                    .await
            }
            Ok(None) => {}
            Err(error) => self.count_bookmarks_conversion(owner, PRIVATE_TO_PEP, Err(error)),
        }
    }

    fn count_bookmarks_conversion(
        &self,
        owner: &BareJid,
        direction: &str,
        outcome: ApiResult<&'static str>,
    ) {
        self.count_bookmark_conversion("bookmarks", owner, direction, outcome);
    }

    /// Count one bookmark conversion's outcome (a failure logged) under
    /// `conversion` (`bookmarks`: XEP-0411; `bookmarks2`: XEP-0402 section 5).
    pub(crate) fn count_bookmark_conversion(
        &self,
        conversion: &str,
        owner: &BareJid,
        direction: &str,
        outcome: ApiResult<&'static str>,
    ) {
        let label = outcome.unwrap_or_else(|error| {
            tracing::warn!(owner = %owner, conversion, direction, %error, "bookmarks conversion failed");
            "failed"
        });
        self.metrics.count_conversion(conversion, direction, label);
    }
}
