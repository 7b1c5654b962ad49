//! Avatars: User Avatar (XEP-0084) on PEP, the vCard photo (XEP-0054,
//! XEP-0153) and the server's conversion between them (XEP-0398 version
//! 0.2.1, advertised as `urn:xmpp:pep-vcard-conversion:0` on the account).
//!
//! - **PEP to vCard** (section 3.1, a MUST): a publish to
//!   `urn:xmpp:avatar:metadata` through the PEP service makes the router
//!   look up the item of the `<info/>` without `url` in
//!   `urn:xmpp:avatar:data`, check that its SHA-1 is the id (a SHOULD), and
//!   store it as the vCard's `PHOTO` (the other vCard fields kept). An empty
//!   `<metadata/>` (the avatar disabled, XEP-0084 section 4.2.1) removes it.
//! - **vCard to PEP** (section 3.2): a vCard set with a photo publishes the
//!   image to `urn:xmpp:avatar:data` (item id: its SHA-1), then one `<info/>`
//!   to `urn:xmpp:avatar:metadata`, each notified to the node's subscribers
//!   like any publish. A vCard without a photo leaves the PEP avatar alone;
//!   a photo that is already the published avatar is not published again.
//! - **Presence** (section 4): every available presence a session sends,
//!   broadcast or directed, gets `<x xmlns='vcard-temp:x:update'><photo>`
//!   with the hash of the vCard photo, unless the client sent an empty
//!   `<photo/>`. The hash is cached per account in each router
//!   (`account_cache.rs`) and invalidated cluster-wide on every vCard change
//!   (through `Blocklists::changed`, the invalidation channel of per-account
//!   routing knowledge), so a presence costs no database read. As the XEP
//!   says, a presence already sent is not sent again when the avatar changes:
//!   contacts learn the new avatar from the metadata notification, or from
//!   the hash of the next presence.
//!
//! The two conversions write through storage directly, never through the
//! IQ handlers, so one never triggers the other. Outcomes are counted in
//! `starling_router_avatar_conversions_total{direction, outcome}`.

use std::sync::Arc;

use starling_api::{ApiResult, PepConfigPatch};
use starling_jid::{BareJid, FullJid};
use starling_xmpp::xep::avatar::{
    stamp_photo_hash, vcard_photo, with_vcard_photo, AvatarImage, AvatarMetadata,
};
use starling_xmpp::{ns, Element};

use crate::handlers::documents;
use crate::handlers::vcard;
use crate::pep::stored_payload;
use crate::router::SessionRouter;

const PEP_TO_VCARD: &str = "pep_to_vcard";
const VCARD_TO_PEP: &str = "vcard_to_pep";

/// What a conversion did (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conversion {
    Converted,
    Removed,
    Unchanged,
    Invalid,
    TooLarge,
}

impl Conversion {
    fn label(self) -> &'static str {
        match self {
            Conversion::Converted => "converted",
            Conversion::Removed => "removed",
            Conversion::Unchanged => "unchanged",
            Conversion::Invalid => "invalid",
            Conversion::TooLarge => "too_large",
        }
    }
}

impl SessionRouter {
    /// The hash of `owner`'s vCard photo (XEP-0153 section 4.1), `None`
    /// without one; cached (see the module documentation).
    pub(crate) async fn avatar_hash(&self, owner: &BareJid) -> ApiResult<Option<Arc<str>>> {
        self.avatar_hashes
            .get_or_load(owner, || async {
                let Some(stored) = documents::load(self, owner, vcard::KEY).await? else {
                    return Ok(None);
                };
                Ok(vcard_photo(&stored)
                    .ok()
                    .flatten()
                    .map(|image| Arc::from(image.id())))
            })
            .await
    }

    /// XEP-0398 section 4: stamp the photo hash on an available presence
    /// `jid` sends. A failed lookup leaves the presence as it is (logged).
    pub(crate) async fn stamp_avatar_hash(&self, jid: &FullJid, presence: &mut Element) {
        if presence.attr("type").is_some() {
            return;
        }
        match self.avatar_hash(&jid.to_bare()).await {
            Ok(Some(hash)) => {
                stamp_photo_hash(presence, &hash);
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(jid = %jid, %error, "avatar hash lookup failed, presence sent unstamped");
            }
        }
    }

    /// After `owner`'s vCard was stored (by `publisher`, a full JID):
    /// forget the cached hash everywhere, and publish its photo to PEP
    /// (XEP-0398 section 3.2).
    pub(crate) async fn vcard_stored(&self, owner: &BareJid, publisher: &str, stored: &Element) {
        self.blocklists.changed(owner).await;
        let outcome = self.publish_vcard_photo(owner, publisher, stored).await;
        self.count_conversion(VCARD_TO_PEP, owner, outcome);
    }

    /// After a publish to `owner`'s `urn:xmpp:avatar:metadata` node through
    /// PEP: the vCard follows (XEP-0398 section 3.1).
    pub(crate) async fn avatar_metadata_published(&self, owner: &BareJid, metadata: &Element) {
        let outcome = self.store_avatar_in_vcard(owner, metadata).await;
        if matches!(outcome, Ok(Conversion::Converted | Conversion::Removed)) {
            self.blocklists.changed(owner).await;
        }
        self.count_conversion(PEP_TO_VCARD, owner, outcome);
    }

    fn count_conversion(&self, direction: &str, owner: &BareJid, outcome: ApiResult<Conversion>) {
        let label = match outcome {
            Ok(converted) => converted.label(),
            Err(error) => {
                tracing::warn!(owner = %owner, direction, %error, "avatar conversion failed");
                "failed"
            }
        };
        self.metrics.count_conversion("avatar", direction, label);
    }

    async fn publish_vcard_photo(
        &self,
        owner: &BareJid,
        publisher: &str,
        stored: &Element,
    ) -> ApiResult<Conversion> {
        let image = match vcard_photo(stored) {
            Ok(Some(image)) => image,
            // No photo: the PEP avatar stays as it is.
            Ok(None) => return Ok(Conversion::Unchanged),
            Err(error) => {
                tracing::debug!(owner = %owner, %error, "vcard photo not converted");
                return Ok(Conversion::Invalid);
            }
        };
        let id = image.id();
        if self.published_avatar_id(owner).await?.as_deref() == Some(id.as_str()) {
            return Ok(Conversion::Unchanged);
        }
        let data = image.data_payload().to_xml();
        if data.len() > self.config.pep.max_item_bytes {
            return Ok(Conversion::TooLarge);
        }
        // Section 3.2: the data first, then the metadata.
        let defaults = PepConfigPatch::default();
        self.publish_on_behalf(
            owner,
            publisher,
            ns::AVATAR_DATA,
            &id,
            data,
            defaults.clone(),
        )
        .await?;
        self.publish_on_behalf(
            owner,
            publisher,
            ns::AVATAR_METADATA,
            &id,
            image.metadata_payload().to_xml(),
            defaults,
        )
        .await?;
        Ok(Conversion::Converted)
    }

    /// The id of the avatar `owner`'s metadata node announces now, if any.
    async fn published_avatar_id(&self, owner: &BareJid) -> ApiResult<Option<String>> {
        let items = self
            .storage
            .pep_items(owner, ns::AVATAR_METADATA, &[], Some(1))
            .await?;
        Ok(items
            .first()
            .and_then(stored_payload)
            .and_then(|payload| AvatarMetadata::from_payload(&payload).ok())
            .and_then(|metadata| match metadata {
                AvatarMetadata::Stored { id, .. } => Some(id),
                AvatarMetadata::Disabled | AvatarMetadata::External => None,
            }))
    }

    async fn store_avatar_in_vcard(
        &self,
        owner: &BareJid,
        metadata: &Element,
    ) -> ApiResult<Conversion> {
        let image = match AvatarMetadata::from_payload(metadata) {
            Ok(AvatarMetadata::Disabled) => None,
            // Only external images: the vCard has nothing to hold.
            Ok(AvatarMetadata::External) => return Ok(Conversion::Unchanged),
            Ok(AvatarMetadata::Stored { id, mime_type }) => {
                let items = self
                    .storage
                    .pep_items(owner, ns::AVATAR_DATA, std::slice::from_ref(&id), None)
                    .await?;
                let Some(image) = items
                    .iter()
                    .find(|item| item.id == id)
                    .and_then(stored_payload)
                    .and_then(|data| AvatarImage::from_data_payload(&data, &mime_type).ok())
                else {
                    return Ok(Conversion::Invalid);
                };
                // Section 3.1: "Services SHOULD verify that the SHA-1 hash
                // of the image matches the id."
                if image.id() != id {
                    return Ok(Conversion::Invalid);
                }
                Some(image)
            }
            Err(_) => return Ok(Conversion::Invalid),
        };
        let current = documents::load(self, owner, vcard::KEY).await?;
        let current_image = current
            .as_ref()
            .and_then(|stored| vcard_photo(stored).ok().flatten());
        if current_image.as_ref().map(AvatarImage::id) == image.as_ref().map(AvatarImage::id) {
            return Ok(Conversion::Unchanged);
        }
        let base = current.unwrap_or_else(|| Element::new("vCard", ns::VCARD));
        let updated = with_vcard_photo(&base, image.as_ref());
        documents::store(self, owner, vcard::KEY, &updated).await?;
        Ok(if image.is_some() {
            Conversion::Converted
        } else {
            Conversion::Removed
        })
    }
}
