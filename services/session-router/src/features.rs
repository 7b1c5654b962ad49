//! The features the router answers IQs for, and the one registry that both
//! dispatches IQ requests by payload namespace and computes the server's
//! disco#info features (XEP-0030 section 3.1): a feature is advertised
//! exactly when it is registered, and an IQ whose namespace no registered
//! handler declared gets `service-unavailable` (RFC 6120 section 8.3.3.19).

use std::collections::HashMap;

use async_trait::async_trait;
use starling_api::{FeatureSpec, Features, SessionAddr};
use starling_jid::FullJid;
use starling_xmpp::{stanza, Element, StanzaErrorCondition};

use crate::router::{Routing, SessionRouter};
use starling_xmpp::IqType;

/// Who an IQ request the server answers is addressed to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Addressee<'a> {
    /// The server itself (RFC 6120 section 10.5.1).
    Server,
    /// The sender's own account: no `to`, or its own bare JID (RFC 6120
    /// section 10.3.3), answered on the account's behalf.
    OwnAccount {
        jid: &'a FullJid,
        addr: &'a SessionAddr,
    },
    /// Another local account's bare JID, known to exist (RFC 6121 section
    /// 8.5.2.1.3): answered by the server, never delivered to its resources.
    OtherAccount,
}

/// An IQ request (a get or a set with exactly one payload, checked by the
/// router) handed to the handler of its payload's namespace.
pub(crate) struct IqRequest<'a> {
    pub iq: Element,
    pub iq_type: IqType,
    pub addressee: Addressee<'a>,
    /// The stanza being routed: its origin time and the decision taken for it.
    pub routing: &'a Routing<'a>,
}

impl IqRequest<'_> {
    /// The payload's element name.
    pub fn payload_name(&self) -> &str {
        stanza::iq_payload(&self.iq).map_or("", Element::name)
    }

    /// The payload's namespace.
    pub fn namespace(&self) -> &str {
        stanza::iq_payload(&self.iq).map_or("", Element::namespace)
    }

    /// A request of this type whose payload has this name.
    pub fn is(&self, iq_type: IqType, payload_name: &str) -> bool {
        self.iq_type == iq_type && self.payload_name() == payload_name
    }

    /// The account a request to [`Addressee::OtherAccount`] is addressed to
    /// (its `to`, a bare JID the router found to be a local account).
    pub fn other_account(&self) -> Option<starling_jid::BareJid> {
        self.iq.attr("to")?.parse().ok()
    }

    /// `service-unavailable`: what the server answers a request it does not
    /// implement (RFC 6120 section 8.3.3.19, RFC 6121 section 8.5).
    pub fn unsupported(&self) -> Option<Element> {
        self.routing
            .bounce(&self.iq, StanzaErrorCondition::ServiceUnavailable)
    }
}

/// The IQ side of a feature: answers the requests whose payload namespace is
/// one of its feature's `iq_namespaces`.
#[async_trait]
pub(crate) trait IqHandler: Send + Sync {
    /// The feature's declaration: the namespaces it is dispatched by and the
    /// disco features it adds.
    fn feature(&self) -> &'static FeatureSpec;

    /// The reply to the request for its sender; `None` when the request was
    /// handed on to the service that answers it.
    async fn handle(&self, router: &SessionRouter, request: IqRequest<'_>) -> Option<Element>;
}

/// The registered features, built once when the router is.
pub(crate) struct FeatureRegistry {
    advertised: Features,
    handlers: HashMap<&'static str, &'static dyn IqHandler>,
}

impl FeatureRegistry {
    /// The registry of `handlers` and of `without_iq_handler`: features the
    /// server implements that take no IQ here. A namespace claimed by two
    /// handlers goes to the first (a test keeps the router's own list free of that).
    pub fn new(
        handlers: &[&'static dyn IqHandler],
        without_iq_handler: &[&'static FeatureSpec],
    ) -> Self {
        let mut registry = FeatureRegistry {
            advertised: Features::default(),
            handlers: HashMap::new(),
        };
        for handler in handlers {
            let feature = handler.feature();
            for namespace in feature.iq_namespaces {
                registry.handlers.entry(namespace).or_insert(*handler);
            }
            registry.advertised.extend([feature]);
        }
        registry.advertise(without_iq_handler);
        registry
    }

    /// Advertise features whose IQs another service answers before they reach
    /// the router (the connection-manager's in-band registration).
    pub fn advertise(&mut self, features: &[&'static FeatureSpec]) {
        self.advertised.extend(features.iter().copied());
    }

    /// The handler of an IQ payload namespace.
    pub fn handler(&self, namespace: &str) -> Option<&'static dyn IqHandler> {
        self.handlers.get(namespace).copied()
    }

    /// The server's disco#info features: those of every registered feature.
    pub fn disco_features(&self) -> Vec<&'static str> {
        self.advertised.disco_features()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::{ping, version};
    use starling_xmpp::ns;

    #[test]
    fn a_registered_feature_is_dispatched_and_advertised() {
        let registry = FeatureRegistry::new(&[&ping::Ping], &[]);
        assert_eq!(registry.disco_features(), vec![ns::PING]);
        assert!(registry.handler(ns::PING).is_some());
        assert!(registry.handler(ns::VERSION).is_none());

        let registry = FeatureRegistry::new(&[&ping::Ping, &version::Version], &[]);
        assert_eq!(registry.disco_features(), vec![ns::VERSION, ns::PING]);
        assert_eq!(
            registry
                .handler(ns::VERSION)
                .map(|handler| handler.feature().name),
            Some("version")
        );
    }
}
