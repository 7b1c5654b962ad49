//! vcard-temp, XEP-0054: an account's vCard, set by the account and read by
//! anyone (section 3: a user's vCard is public, retrieved from the bare JID).

use async_trait::async_trait;
use starling_api::FeatureSpec;
use starling_jid::BareJid;
use starling_xmpp::{ns, stanza, Element, IqType, StanzaErrorCondition};

use super::documents;
use crate::features::{Addressee, IqHandler, IqRequest};
use crate::router::SessionRouter;

/// XEP-0054 version 1.2.
pub(crate) const FEATURE: FeatureSpec = FeatureSpec {
    name: "vcard-temp",
    specification: "XEP-0054",
    disco_features: &[ns::VCARD],
    iq_namespaces: &[ns::VCARD],
    stream_features: &[],
};

/// The document key of the vCard.
pub(crate) const KEY: &str = "vcard";

/// Answers vCard gets for any local account and sets of the sender's own.
pub(crate) struct VCard;

#[async_trait]
impl IqHandler for VCard {
    fn feature(&self) -> &'static FeatureSpec {
        &FEATURE
    }

    async fn handle(&self, router: &SessionRouter, request: IqRequest<'_>) -> Option<Element> {
        if request.payload_name() != "vCard" {
            return request
                .routing
                .bounce(&request.iq, StanzaErrorCondition::BadRequest);
        }
        match (request.addressee, request.iq_type) {
            (Addressee::OwnAccount { jid, .. }, IqType::Get) => {
                get(router, &request, &jid.to_bare()).await
            }
            (Addressee::OtherAccount, IqType::Get) => {
                // The router classified `to` as an existing local account.
                let Some(owner) = request.other_account() else {
                    return request
                        .routing
                        .bounce(&request.iq, StanzaErrorCondition::JidMalformed);
                };
                get(router, &request, &owner).await
            }
            (Addressee::OwnAccount { jid, .. }, _) => {
                let Some(vcard) = stanza::iq_payload(&request.iq) else {
                    return request
                        .routing
                        .bounce(&request.iq, StanzaErrorCondition::BadRequest);
                };
                let owner = jid.to_bare();
                match documents::store(router, &owner, KEY, vcard).await {
                    Ok(()) => {
                        // XEP-0398 section 3.2 (and the hash of section 4).
                        router.vcard_stored(&owner, &jid.to_string(), vcard).await;
                        Some(stanza::iq_result(&request.iq))
                    }
                    Err(error) => request.routing.failure_reply(&request.iq, &error),
                }
            }
            // Section 3.2: only the account itself updates its vCard.
            (Addressee::OtherAccount, _) => request
                .routing
                .bounce(&request.iq, StanzaErrorCondition::Forbidden),
            // The server has no vCard of its own.
            (Addressee::Server, _) => request.unsupported(),
        }
    }
}

/// Section 3.1: the stored vCard, or an empty one when there is none.
async fn get(router: &SessionRouter, request: &IqRequest<'_>, owner: &BareJid) -> Option<Element> {
    match documents::load(router, owner, KEY).await {
        Ok(stored) => Some(
            stanza::iq_result(&request.iq)
                .with_child(stored.unwrap_or_else(|| Element::new("vCard", ns::VCARD))),
        ),
        Err(error) => request.routing.failure_reply(&request.iq, &error),
    }
}
