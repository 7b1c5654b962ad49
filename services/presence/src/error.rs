//! The presence service's error enum: the rejections of RFC 6121 section 2
//! (roster get/set error cases, sections 2.1.5, 2.3.3 and 2.5.3) and the
//! failures of the services it depends on.

use starling_api::ApiError;
use starling_xmpp::{StanzaError, StanzaErrorCondition};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// The request breaks a syntax rule of the protocol (`bad-request`).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request is understood but refused by a server limit or rule (`not-acceptable`).
    #[error("not acceptable: {0}")]
    NotAcceptable(String),
    /// An address in the request is not a valid JID of the expected form (`jid-malformed`).
    #[error("malformed jid: {0}")]
    JidMalformed(String),
    /// The requester may not do this (`forbidden`).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The roster item the request names does not exist (`item-not-found`).
    #[error("item not found: {0}")]
    ItemNotFound(String),
    /// A dependency (storage, registry, bus, router) failed.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl PresenceError {
    /// The stanza error the requesting client receives.
    pub fn to_stanza_error(&self) -> StanzaError {
        match self {
            PresenceError::BadRequest(text) => {
                StanzaError::new(StanzaErrorCondition::BadRequest).with_text(text.clone())
            }
            PresenceError::NotAcceptable(text) => {
                StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text(text.clone())
            }
            PresenceError::JidMalformed(text) => {
                StanzaError::new(StanzaErrorCondition::JidMalformed).with_text(text.clone())
            }
            PresenceError::Forbidden(_) => StanzaError::new(StanzaErrorCondition::Forbidden),
            PresenceError::ItemNotFound(_) => StanzaError::new(StanzaErrorCondition::ItemNotFound),
            PresenceError::Api(error) => error.to_stanza_error(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_xmpp::{ns, Element};

    fn error_xml(error: PresenceError) -> String {
        Element::new("iq", ns::CLIENT)
            .with_child(error.to_stanza_error().to_element())
            .to_stanza_xml()
    }

    #[test]
    fn rejections_use_the_rfc_condition_names() {
        assert_eq!(
            error_xml(PresenceError::Forbidden("other user".into())),
            "<iq><error type='auth'><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        );
        assert_eq!(
            error_xml(PresenceError::ItemNotFound("x".into())),
            "<iq><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        );
        assert_eq!(
            error_xml(PresenceError::NotAcceptable("empty group".into())),
            "<iq><error type='modify'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>empty group</text></error></iq>"
        );
        assert_eq!(
            error_xml(PresenceError::Api(ApiError::Unavailable("db".into()))),
            "<iq><error type='wait'><internal-server-error xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        );
    }
}
