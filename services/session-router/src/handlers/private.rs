//! Private XML Storage, XEP-0049: an account keeps arbitrary XML fragments
//! on the server, one document per namespace (bookmarks of XEP-0048,
//! `storage:bookmarks`, and roster notes of XEP-0145, `storage:rosternotes`,
//! are kept this way by clients such as mcabber, profanity and poezio).

use async_trait::async_trait;
use starling_api::FeatureSpec;
use starling_xmpp::{ns, stanza, Element, IqType, StanzaErrorCondition};

use super::documents;
use crate::features::{Addressee, IqHandler, IqRequest};
use crate::router::SessionRouter;

/// XEP-0049 version 1.2.
pub(crate) const FEATURE: FeatureSpec = FeatureSpec {
    name: "private-xml-storage",
    specification: "XEP-0049",
    disco_features: &[ns::PRIVATE],
    iq_namespaces: &[ns::PRIVATE],
    stream_features: &[],
};

/// Answers `jabber:iq:private` gets and sets of the sender's own account.
pub(crate) struct PrivateStorage;

/// The document key of a fragment namespace.
pub(crate) fn key(namespace: &str) -> String {
    format!("private {namespace}")
}

/// Section 3: namespaces a fragment may not be stored in ("Not Acceptable"):
/// the stanza namespaces, this one, and the reserved `jabber:`,
/// `http://jabber.org/` and `vcard-temp` ones.
fn is_reserved(namespace: &str) -> bool {
    namespace.is_empty()
        || namespace.starts_with("jabber:")
        || namespace.starts_with("http://jabber.org/")
        || namespace == ns::VCARD
}

#[async_trait]
impl IqHandler for PrivateStorage {
    fn feature(&self) -> &'static FeatureSpec {
        &FEATURE
    }

    async fn handle(&self, router: &SessionRouter, request: IqRequest<'_>) -> Option<Element> {
        let (user, requester) = match request.addressee {
            Addressee::OwnAccount { jid, .. } => (jid.to_bare(), jid.to_string()),
            // Section 3: another entity's private data is forbidden.
            Addressee::Server | Addressee::OtherAccount => {
                return request
                    .routing
                    .bounce(&request.iq, StanzaErrorCondition::Forbidden)
            }
        };
        let Some(query) = stanza::iq_payload(&request.iq).filter(|query| query.name() == "query")
        else {
            return request
                .routing
                .bounce(&request.iq, StanzaErrorCondition::BadRequest);
        };
        let fragments: Vec<&Element> = query.children().collect();
        let Some(first) = fragments.first() else {
            // Section 3: a get without a child is "Bad Format", a set "Not Acceptable".
            let condition = match request.iq_type {
                IqType::Get => StanzaErrorCondition::BadRequest,
                _ => StanzaErrorCondition::NotAcceptable,
            };
            return request.routing.bounce(&request.iq, condition);
        };
        let namespace = first.namespace().to_string();
        if is_reserved(&namespace) {
            return request
                .routing
                .bounce(&request.iq, StanzaErrorCondition::NotAcceptable);
        }
        match request.iq_type {
            IqType::Get => {
                // Section 3: one namespace per get.
                if fragments.len() > 1 {
                    return request
                        .routing
                        .bounce(&request.iq, StanzaErrorCondition::BadRequest);
                }
                match documents::load(router, &user, &key(&namespace)).await {
                    Ok(stored) => {
                        // Nothing stored: the empty fragment asked for.
                        let stored = stored.unwrap_or_else(|| {
                            Element::new("query", ns::PRIVATE).with_child((*first).clone())
                        });
                        Some(stanza::iq_result(&request.iq).with_child(stored))
                    }
                    Err(error) => request.routing.failure_reply(&request.iq, &error),
                }
            }
            _ => {
                // A set may hold several elements, all of one namespace.
                if fragments
                    .iter()
                    .any(|fragment| fragment.namespace() != namespace)
                {
                    return request
                        .routing
                        .bounce(&request.iq, StanzaErrorCondition::NotAcceptable);
                }
                match documents::store(router, &user, &key(&namespace), query).await {
                    Ok(()) => {
                        // XEP-0411 section 3: the PEP copy follows.
                        if namespace == crate::bookmarks::NODE {
                            router
                                .private_bookmarks_stored(&user, &requester, query)
                                .await;
                        }
                        Some(stanza::iq_result(&request.iq))
                    }
                    Err(error) => request.routing.failure_reply(&request.iq, &error),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_namespaces_are_refused() {
        assert!(is_reserved("jabber:client"));
        assert!(is_reserved("jabber:iq:private"));
        assert!(is_reserved("http://jabber.org/protocol/muc"));
        assert!(is_reserved("vcard-temp"));
        assert!(!is_reserved("storage:bookmarks"));
        assert!(!is_reserved("storage:rosternotes"));
        assert_eq!(key("storage:bookmarks"), "private storage:bookmarks");
    }
}
