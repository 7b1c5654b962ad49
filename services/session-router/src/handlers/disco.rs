//! Service discovery, XEP-0030: `disco#info` (section 3) and `disco#items`
//! (section 4) for the server itself and for accounts.

use async_trait::async_trait;
use starling_api::FeatureSpec;
use starling_xmpp::{ns, stanza, Element, StanzaError, StanzaErrorCondition};

use crate::features::{Addressee, IqHandler, IqRequest};
use crate::handlers::pep;
use crate::router::SessionRouter;
use starling_xmpp::IqType;

/// XEP-0030 version 2.5rc3.
pub(crate) const FEATURE: FeatureSpec = FeatureSpec {
    name: "disco",
    specification: "XEP-0030",
    disco_features: &[ns::DISCO_INFO, ns::DISCO_ITEMS],
    iq_namespaces: &[ns::DISCO_INFO, ns::DISCO_ITEMS],
    stream_features: &[],
};

/// Answers disco#info and disco#items gets for the server (its identity and
/// the features of the router's registry) and for accounts.
pub(crate) struct Disco;

#[async_trait]
impl IqHandler for Disco {
    fn feature(&self) -> &'static FeatureSpec {
        &FEATURE
    }

    async fn handle(&self, router: &SessionRouter, request: IqRequest<'_>) -> Option<Element> {
        if !request.is(IqType::Get, "query") {
            return request.unsupported();
        }
        let iq = &request.iq;
        if let Addressee::OwnAccount { jid, .. } = request.addressee {
            return account_disco(router, &request, &jid.to_bare()).await;
        }
        if let (Addressee::OtherAccount, Some(owner)) = (request.addressee, request.other_account())
        {
            return account_disco(router, &request, &owner).await;
        }
        if queried_node(iq).is_some() {
            return unknown_node(iq);
        }
        if request.namespace() == ns::DISCO_ITEMS {
            return Some(server_items(router, iq));
        }
        let identity = Identity {
            category: "server",
            kind: "im",
            name: Some(&router.config.server_name),
        };
        Some(info_result(
            iq,
            &identity,
            &router.features.disco_features(),
        ))
    }
}

/// disco#info and disco#items on an account's bare JID: the account and
/// its PEP service (XEP-0163 section 6: identity pubsub/pep with the
/// features of `pep::ACCOUNT_PEP_FEATURES`), the nodes the requester may
/// see as items, and a visible node's own info (XEP-0060 section 5.3).
async fn account_disco(
    router: &SessionRouter,
    request: &IqRequest<'_>,
    owner: &starling_jid::BareJid,
) -> Option<Element> {
    let iq = &request.iq;
    let Some(requester) = crate::pep::requester_of(iq) else {
        return request.unsupported();
    };
    let routing = request.routing;
    if let Some(node) = queried_node(iq) {
        return match pep::visible_node(router, owner, node, &requester).await {
            Ok(true) if request.namespace() == ns::DISCO_INFO => {
                let mut reply = info_results(iq, &[PEP_LEAF], &[ns::PUBSUB]);
                if let Some(query) = reply.get_child_mut("query", ns::DISCO_INFO) {
                    query.set_attr("node", node);
                }
                Some(reply)
            }
            // A leaf node has no items of its own in disco (XEP-0060 section 5.5).
            Ok(true) => {
                let mut reply = empty_items_result(iq);
                if let Some(query) = reply.get_child_mut("query", ns::DISCO_ITEMS) {
                    query.set_attr("node", node);
                }
                Some(reply)
            }
            Ok(false) => unknown_node(iq),
            Err(error) => routing.failure_reply(iq, &error),
        };
    }
    if request.namespace() == ns::DISCO_ITEMS {
        return match pep::account_items(router, owner, &requester).await {
            Ok(items) => {
                let mut query = Element::new("query", ns::DISCO_ITEMS);
                for item in items {
                    query.append_child(item);
                }
                Some(stanza::iq_result(iq).with_child(query))
            }
            Err(error) => routing.failure_reply(iq, &error),
        };
    }
    let mut features: Vec<&str> = ACCOUNT_FEATURES
        .iter()
        .chain(pep::ACCOUNT_PEP_FEATURES)
        .copied()
        .collect();
    // XEP-0398 section 2: the avatar conversion is done on the account.
    features.push(ns::PEP_VCARD_CONVERSION);
    // XEP-0411 section 2: so is the bookmarks conversion.
    features.push(crate::bookmarks::CONVERSION_FEATURE);
    // XEP-0402 section 5: the compatibility that holds for this account.
    match router.bookmarks2_features(owner).await {
        Ok(compat) => features.extend(compat),
        Err(error) => return routing.failure_reply(iq, &error),
    }
    // XEP-0313 section 7: the archive is the account's.
    if router.config.mam {
        features.extend_from_slice(super::mam::ACCOUNT_FEATURES);
    }
    // XEP-0357 section 4: push is enabled on the account.
    if router.config.push.is_some() {
        features.extend_from_slice(super::push::ACCOUNT_FEATURES);
    }
    Some(info_results(
        iq,
        &[REGISTERED_ACCOUNT, PEP_SERVICE],
        &features,
    ))
}

/// The identity of an account's PEP service (XEP-0163 section 6).
const PEP_SERVICE: Identity<'static> = Identity {
    category: "pubsub",
    kind: "pep",
    name: None,
};

/// The identity of a PEP node (XEP-0060 section 5.3).
const PEP_LEAF: Identity<'static> = Identity {
    category: "pubsub",
    kind: "leaf",
    name: None,
};

/// An identity of a disco#info answer (XEP-0030 section 3.1).
pub(crate) struct Identity<'a> {
    pub category: &'a str,
    pub kind: &'a str,
    pub name: Option<&'a str>,
}

/// The identity of a registered account on the server (XEP-0030 registry:
/// category `account`, type `registered`).
pub(crate) const REGISTERED_ACCOUNT: Identity<'static> = Identity {
    category: "account",
    kind: "registered",
    name: None,
};

/// The features of an account's bare JID: what the server answers on its behalf.
pub(crate) const ACCOUNT_FEATURES: &[&str] = &[ns::DISCO_INFO, ns::DISCO_ITEMS];

/// The `node` a disco query asks about, if any. The server publishes no
/// nodes of its own, so a query naming one on the server gets
/// `item-not-found` (XEP-0030 section 3.2); an account's nodes are its PEP nodes.
pub(crate) fn queried_node(request: &Element) -> Option<&str> {
    stanza::iq_payload(request).and_then(|query| query.attr("node"))
}

/// The disco#info result: the identities and the features, sorted and
/// without duplicates (XEP-0030 section 3.1).
pub(crate) fn info_result(
    request: &Element,
    identity: &Identity<'_>,
    features: &[&str],
) -> Element {
    info_results(request, std::slice::from_ref(identity), features)
}

/// The disco#info result of several identities.
pub(crate) fn info_results(
    request: &Element,
    identities: &[Identity<'_>],
    features: &[&str],
) -> Element {
    let mut query = Element::new("query", ns::DISCO_INFO);
    for identity in identities {
        let mut identity_element = Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", identity.category)
            .with_attr("type", identity.kind);
        if let Some(name) = identity.name {
            identity_element.set_attr("name", name);
        }
        query.append_child(identity_element);
    }
    let mut sorted_features: Vec<&str> = features.to_vec();
    sorted_features.sort_unstable();
    sorted_features.dedup();
    for feature in sorted_features {
        query.append_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", feature));
    }
    stanza::iq_result(request).with_child(query)
}

/// The server's disco#items: the services of its subdomains (XEP-0363
/// section 3: "A user's server SHOULD include any known entities that
/// provide such services into its service discovery items").
fn server_items(router: &SessionRouter, request: &Element) -> Element {
    let mut query = Element::new("query", ns::DISCO_ITEMS);
    if let Some(upload) = &router.config.upload {
        query.append_child(
            Element::new("item", ns::DISCO_ITEMS)
                .with_attr("jid", upload.domain.clone())
                .with_attr("name", crate::upload::SERVICE_NAME),
        );
    }
    // XEP-0045 section 6.1: the chat service is found among the server's items.
    if let Some(muc) = &router.muc {
        query.append_child(
            Element::new("item", ns::DISCO_ITEMS)
                .with_attr("jid", muc.domain().to_string())
                .with_attr("name", "Chatrooms"),
        );
    }
    // XEP-0030 section 4: the server's items are its services, the
    // external components (XEP-0114) configured for it among them.
    for component in &router.config.components {
        query.append_child(
            Element::new("item", ns::DISCO_ITEMS).with_attr("jid", component.clone()),
        );
    }
    stanza::iq_result(request).with_child(query)
}

/// The disco#items result with no items: the router publishes none yet
/// (XEP-0030 section 4.1).
pub(crate) fn empty_items_result(request: &Element) -> Element {
    stanza::iq_result(request).with_child(Element::new("query", ns::DISCO_ITEMS))
}

/// `item-not-found` for a query about a node that does not exist (XEP-0030 section 3.2).
pub(crate) fn unknown_node(request: &Element) -> Option<Element> {
    stanza::error_reply(
        request,
        &StanzaError::new(StanzaErrorCondition::ItemNotFound),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Element {
        Element::new("iq", ns::CLIENT)
            .with_attr("id", "info1")
            .with_attr("type", "get")
            .with_attr("from", "romeo@example.com/orchard")
            .with_attr("to", "example.com")
            .with_child(Element::new("query", ns::DISCO_INFO))
    }

    #[test]
    fn info_sorts_and_deduplicates_features() {
        let identity = Identity {
            category: "server",
            kind: "im",
            name: Some("Starling"),
        };
        let reply = info_result(&request(), &identity, &[ns::PING, ns::DISCO_INFO, ns::PING]);
        assert_eq!(
            reply.to_stanza_xml(),
            "<iq type='result' id='info1' to='romeo@example.com/orchard' from='example.com'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='server' type='im' name='Starling'/><feature var='http://jabber.org/protocol/disco#info'/><feature var='urn:xmpp:ping'/></query></iq>"
        );
    }

    #[test]
    fn node_queries_are_unknown() {
        let mut request = request();
        assert_eq!(queried_node(&request), None);
        if let Some(query) = request.get_child_mut("query", ns::DISCO_INFO) {
            query.set_attr("node", "http://jabber.org/protocol/commands");
        }
        assert_eq!(
            queried_node(&request),
            Some("http://jabber.org/protocol/commands")
        );
        assert_eq!(
            unknown_node(&request).map(|reply| reply.to_stanza_xml()).as_deref(),
            Some("<iq id='info1' to='romeo@example.com/orchard' from='example.com' type='error'><query xmlns='http://jabber.org/protocol/disco#info' node='http://jabber.org/protocol/commands'/><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")
        );
    }
}
