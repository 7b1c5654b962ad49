//! XEP-0030: Service Discovery, version 2.5rc3: the `disco#info` query with
//! its identities and features (section 3) and the `disco#items` query with
//! its items (section 4), each optionally about a `node`.

use crate::element::Element;
use crate::ns;
use crate::xep::{expect, Payload, PayloadError};

/// An identity (section 3.1): category and type from the XEP-0030 registry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Identity {
    pub category: String,
    pub kind: String,
    pub name: Option<String>,
    pub lang: Option<String>,
}

impl Identity {
    pub fn new(category: impl Into<String>, kind: impl Into<String>) -> Self {
        Identity {
            category: category.into(),
            kind: kind.into(),
            name: None,
            lang: None,
        }
    }

    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// A `disco#info` query: empty in a get, identities and features in a result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiscoInfo {
    pub node: Option<String>,
    pub identities: Vec<Identity>,
    pub features: Vec<String>,
}

impl DiscoInfo {
    /// The result for `identities` and `features`, the features sorted and
    /// without duplicates (section 3.1 lists each feature once).
    pub fn result(identities: Vec<Identity>, features: &[&str]) -> Self {
        let mut features: Vec<String> =
            features.iter().map(|feature| feature.to_string()).collect();
        features.sort_unstable();
        features.dedup();
        DiscoInfo {
            node: None,
            identities,
            features,
        }
    }
}

impl Payload for DiscoInfo {
    const NAME: &'static str = "query";
    const NAMESPACE: &'static str = ns::DISCO_INFO;

    fn from_element(element: &Element) -> Result<Self, PayloadError> {
        expect::<Self>(element)?;
        let mut info = DiscoInfo {
            node: element.attr("node").map(str::to_string),
            ..DiscoInfo::default()
        };
        for child in element
            .children()
            .filter(|child| child.namespace() == ns::DISCO_INFO)
        {
            match child.name() {
                "identity" => {
                    let (Some(category), Some(kind)) = (child.attr("category"), child.attr("type"))
                    else {
                        return Err(PayloadError("an identity needs a category and a type"));
                    };
                    info.identities.push(Identity {
                        category: category.to_string(),
                        kind: kind.to_string(),
                        name: child.attr("name").map(str::to_string),
                        lang: child.attr("xml:lang").map(str::to_string),
                    });
                }
                "feature" => {
                    let Some(var) = child.attr("var") else {
                        return Err(PayloadError("a feature needs a var"));
                    };
                    info.features.push(var.to_string());
                }
                _ => {}
            }
        }
        Ok(info)
    }

    fn to_element(&self) -> Element {
        let mut query = Element::new(Self::NAME, Self::NAMESPACE);
        if let Some(node) = &self.node {
            query.set_attr("node", node.clone());
        }
        for identity in &self.identities {
            let mut element = Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", identity.category.clone())
                .with_attr("type", identity.kind.clone());
            if let Some(name) = &identity.name {
                element.set_attr("name", name.clone());
            }
            if let Some(lang) = &identity.lang {
                element.set_attr("xml:lang", lang.clone());
            }
            query.append_child(element);
        }
        for feature in &self.features {
            query.append_child(
                Element::new("feature", ns::DISCO_INFO).with_attr("var", feature.clone()),
            );
        }
        query
    }
}

/// An item of a `disco#items` result (section 4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoItem {
    pub jid: String,
    pub node: Option<String>,
    pub name: Option<String>,
}

/// A `disco#items` query: empty in a get, the items in a result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiscoItems {
    pub node: Option<String>,
    pub items: Vec<DiscoItem>,
}

impl Payload for DiscoItems {
    const NAME: &'static str = "query";
    const NAMESPACE: &'static str = ns::DISCO_ITEMS;

    fn from_element(element: &Element) -> Result<Self, PayloadError> {
        expect::<Self>(element)?;
        let mut items = DiscoItems {
            node: element.attr("node").map(str::to_string),
            items: Vec::new(),
        };
        for child in element
            .children()
            .filter(|child| child.is("item", ns::DISCO_ITEMS))
        {
            let Some(jid) = child.attr("jid") else {
                return Err(PayloadError("an item needs a jid"));
            };
            items.items.push(DiscoItem {
                jid: jid.to_string(),
                node: child.attr("node").map(str::to_string),
                name: child.attr("name").map(str::to_string),
            });
        }
        Ok(items)
    }

    fn to_element(&self) -> Element {
        let mut query = Element::new(Self::NAME, Self::NAMESPACE);
        if let Some(node) = &self.node {
            query.set_attr("node", node.clone());
        }
        for item in &self.items {
            let mut element =
                Element::new("item", ns::DISCO_ITEMS).with_attr("jid", item.jid.clone());
            if let Some(node) = &item.node {
                element.set_attr("node", node.clone());
            }
            if let Some(name) = &item.name {
                element.set_attr("name", name.clone());
            }
            query.append_child(element);
        }
        query
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xep::testing::{rejected, round_trip};

    #[test]
    fn an_info_request_round_trips_with_its_node() {
        let info = round_trip::<DiscoInfo>(
            "<query xmlns='http://jabber.org/protocol/disco#info' node='urn:example#caps'/>",
        );
        assert_eq!(info.node.as_deref(), Some("urn:example#caps"));
        assert!(info.identities.is_empty() && info.features.is_empty());
    }

    #[test]
    fn an_info_result_round_trips() {
        let info = round_trip::<DiscoInfo>(
            "<query xmlns='http://jabber.org/protocol/disco#info'><identity category='server' type='im' name='Starling'/><identity category='pubsub' type='pep' xml:lang='en'/><feature var='http://jabber.org/protocol/disco#info'/><feature var='urn:xmpp:ping'/></query>",
        );
        assert_eq!(
            info.identities[0],
            Identity::new("server", "im").with_name("Starling")
        );
        assert_eq!(info.features.len(), 2);
    }

    #[test]
    fn a_result_lists_each_feature_once_in_order() {
        let info = DiscoInfo::result(
            vec![Identity::new("account", "registered")],
            &[ns::PING, ns::DISCO_INFO, ns::PING],
        );
        assert_eq!(
            info.to_element().to_xml(),
            "<query xmlns='http://jabber.org/protocol/disco#info'><identity category='account' type='registered'/><feature var='http://jabber.org/protocol/disco#info'/><feature var='urn:xmpp:ping'/></query>"
        );
    }

    #[test]
    fn an_identity_without_type_or_a_feature_without_var_is_rejected() {
        assert_eq!(
            rejected::<DiscoInfo>(
                "<query xmlns='http://jabber.org/protocol/disco#info'><identity category='server'/></query>"
            ),
            "an identity needs a category and a type"
        );
        assert_eq!(
            rejected::<DiscoInfo>(
                "<query xmlns='http://jabber.org/protocol/disco#info'><feature/></query>"
            ),
            "a feature needs a var"
        );
    }

    #[test]
    fn items_round_trip() {
        let items = round_trip::<DiscoItems>(
            "<query xmlns='http://jabber.org/protocol/disco#items'><item jid='muc.example.com' name='Rooms'/><item jid='example.com' node='announcements'/></query>",
        );
        assert_eq!(items.items.len(), 2);
        round_trip::<DiscoItems>(
            "<query xmlns='http://jabber.org/protocol/disco#items' node='n'/>",
        );
    }

    #[test]
    fn an_item_without_jid_is_rejected() {
        assert_eq!(
            rejected::<DiscoItems>(
                "<query xmlns='http://jabber.org/protocol/disco#items'><item name='x'/></query>"
            ),
            "an item needs a jid"
        );
    }

    #[test]
    fn info_is_not_items() {
        assert_eq!(
            rejected::<DiscoItems>("<query xmlns='http://jabber.org/protocol/disco#info'/>"),
            "unexpected payload element"
        );
    }
}
