//! Stream errors (RFC 6120 section 4.9) and stanza errors (RFC 6120 section 8.3).

use crate::element::Element;
use crate::ns;

macro_rules! conditions {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),* }

        impl $name {
            /// Every condition the RFC defines, in its order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The element name the RFC gives this condition.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }

            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($text => Some($name::$variant),)* _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

conditions! {
    /// Stream error conditions, RFC 6120 section 4.9.3.
    StreamErrorCondition {
        BadFormat => "bad-format",
        BadNamespacePrefix => "bad-namespace-prefix",
        Conflict => "conflict",
        ConnectionTimeout => "connection-timeout",
        HostGone => "host-gone",
        HostUnknown => "host-unknown",
        ImproperAddressing => "improper-addressing",
        InternalServerError => "internal-server-error",
        InvalidFrom => "invalid-from",
        InvalidNamespace => "invalid-namespace",
        InvalidXml => "invalid-xml",
        NotAuthorized => "not-authorized",
        NotWellFormed => "not-well-formed",
        PolicyViolation => "policy-violation",
        RemoteConnectionFailed => "remote-connection-failed",
        Reset => "reset",
        ResourceConstraint => "resource-constraint",
        RestrictedXml => "restricted-xml",
        SeeOtherHost => "see-other-host",
        SystemShutdown => "system-shutdown",
        UndefinedCondition => "undefined-condition",
        UnsupportedEncoding => "unsupported-encoding",
        UnsupportedFeature => "unsupported-feature",
        UnsupportedStanzaType => "unsupported-stanza-type",
        UnsupportedVersion => "unsupported-version",
    }
}

conditions! {
    /// Stanza error conditions, RFC 6120 section 8.3.3.
    StanzaErrorCondition {
        BadRequest => "bad-request",
        Conflict => "conflict",
        FeatureNotImplemented => "feature-not-implemented",
        Forbidden => "forbidden",
        Gone => "gone",
        InternalServerError => "internal-server-error",
        ItemNotFound => "item-not-found",
        JidMalformed => "jid-malformed",
        NotAcceptable => "not-acceptable",
        NotAllowed => "not-allowed",
        NotAuthorized => "not-authorized",
        PolicyViolation => "policy-violation",
        RecipientUnavailable => "recipient-unavailable",
        Redirect => "redirect",
        RegistrationRequired => "registration-required",
        RemoteServerNotFound => "remote-server-not-found",
        RemoteServerTimeout => "remote-server-timeout",
        ResourceConstraint => "resource-constraint",
        ServiceUnavailable => "service-unavailable",
        SubscriptionRequired => "subscription-required",
        UndefinedCondition => "undefined-condition",
        UnexpectedRequest => "unexpected-request",
    }
}

/// The `type` attribute of a stanza error, RFC 6120 section 8.3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StanzaErrorType {
    Auth,
    Cancel,
    Continue,
    Modify,
    Wait,
}

impl StanzaErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            StanzaErrorType::Auth => "auth",
            StanzaErrorType::Cancel => "cancel",
            StanzaErrorType::Continue => "continue",
            StanzaErrorType::Modify => "modify",
            StanzaErrorType::Wait => "wait",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "auth" => StanzaErrorType::Auth,
            "cancel" => StanzaErrorType::Cancel,
            "continue" => StanzaErrorType::Continue,
            "modify" => StanzaErrorType::Modify,
            "wait" => StanzaErrorType::Wait,
            _ => return None,
        })
    }
}

impl StanzaErrorCondition {
    /// The error type RFC 6120 section 8.3.3 shows with each condition.
    pub fn default_type(self) -> StanzaErrorType {
        use StanzaErrorCondition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation | Redirect => {
                StanzaErrorType::Modify
            }
            Forbidden | NotAuthorized | RegistrationRequired | SubscriptionRequired => {
                StanzaErrorType::Auth
            }
            InternalServerError
            | ItemNotFound
            | FeatureNotImplemented
            | Gone
            | NotAllowed
            | RemoteServerNotFound
            | ServiceUnavailable
            | UndefinedCondition
            | Conflict => StanzaErrorType::Cancel,
            RecipientUnavailable | RemoteServerTimeout | ResourceConstraint | UnexpectedRequest => {
                StanzaErrorType::Wait
            }
        }
    }
}

/// A stream-level error: the stream is closed after it is sent (RFC 6120 section 4.9.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub condition: StreamErrorCondition,
    pub text: Option<String>,
    /// An application-specific condition (RFC 6120 section 4.9.4), serialised,
    /// e.g. XEP-0198's `<handled-count-too-high/>`.
    pub application: Option<String>,
}

impl StreamError {
    pub fn new(condition: StreamErrorCondition) -> Self {
        StreamError {
            condition,
            text: None,
            application: None,
        }
    }

    /// With an application-specific condition element (section 4.9.4).
    pub fn with_application(mut self, condition: &crate::Element) -> Self {
        self.application = Some(condition.to_xml());
        self
    }

    pub fn with_text(condition: StreamErrorCondition, text: impl Into<String>) -> Self {
        StreamError {
            condition,
            text: Some(text.into()),
            application: None,
        }
    }

    /// `<stream:error>` with the condition and optional text, RFC 6120 section 4.9.2.
    pub fn to_xml(&self) -> String {
        let mut out = String::from("<stream:error><");
        out.push_str(self.condition.as_str());
        out.push_str(" xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>");
        if let Some(text) = &self.text {
            out.push_str("<text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>");
            out.push_str(&crate::escape_text(text));
            out.push_str("</text>");
        }
        if let Some(application) = &self.application {
            out.push_str(application);
        }
        out.push_str("</stream:error>");
        out
    }
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.text {
            Some(text) => write!(f, "{} ({})", self.condition, text),
            None => write!(f, "{}", self.condition),
        }
    }
}

impl std::error::Error for StreamError {}

/// A stanza-level error, RFC 6120 section 8.3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StanzaError {
    pub error_type: StanzaErrorType,
    pub condition: StanzaErrorCondition,
    pub text: Option<String>,
    /// The server or entity that generated the error (`by`), RFC 6120 section 8.3.2.
    pub by: Option<String>,
}

impl StanzaError {
    pub fn new(condition: StanzaErrorCondition) -> Self {
        StanzaError {
            error_type: condition.default_type(),
            condition,
            text: None,
            by: None,
        }
    }

    pub fn with_type(mut self, error_type: StanzaErrorType) -> Self {
        self.error_type = error_type;
        self
    }

    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    pub fn with_by(mut self, by: impl Into<String>) -> Self {
        self.by = Some(by.into());
        self
    }

    /// The `<error/>` child element.
    pub fn to_element(&self) -> Element {
        let mut error =
            Element::new("error", ns::CLIENT).with_attr("type", self.error_type.as_str());
        if let Some(by) = &self.by {
            error.set_attr("by", by.clone());
        }
        error.append_child(Element::new(self.condition.as_str(), ns::STANZAS_ERROR));
        if let Some(text) = &self.text {
            error.append_child(
                Element::new("text", ns::STANZAS_ERROR)
                    .with_attr("xml:lang", "en")
                    .with_text(text.clone()),
            );
        }
        error
    }

    /// Read the `<error/>` child of a stanza of type `error`.
    pub fn from_stanza(stanza: &Element) -> Option<Self> {
        let error = stanza.children().find(|child| child.name() == "error")?;
        let condition = error
            .children()
            .filter(|child| child.namespace() == ns::STANZAS_ERROR)
            .find_map(|child| StanzaErrorCondition::from_name(child.name()))?;
        let error_type = error
            .attr("type")
            .and_then(StanzaErrorType::from_name)
            .unwrap_or_else(|| condition.default_type());
        let text = error
            .get_child("text", ns::STANZAS_ERROR)
            .map(Element::text);
        Some(StanzaError {
            error_type,
            condition,
            text,
            by: error.attr("by").map(str::to_string),
        })
    }
}

impl std::fmt::Display for StanzaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.condition, self.error_type.as_str())
    }
}

impl std::error::Error for StanzaError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_condition_round_trips_by_name() {
        for condition in StreamErrorCondition::ALL {
            assert_eq!(
                StreamErrorCondition::from_name(condition.as_str()),
                Some(*condition)
            );
        }
        for condition in StanzaErrorCondition::ALL {
            assert_eq!(
                StanzaErrorCondition::from_name(condition.as_str()),
                Some(*condition)
            );
        }
        assert_eq!(StreamErrorCondition::ALL.len(), 25);
        assert_eq!(StanzaErrorCondition::ALL.len(), 22);
    }

    #[test]
    fn stream_error_xml() {
        let error = StreamError::with_text(StreamErrorCondition::PolicyViolation, "stanza too big");
        assert_eq!(
            error.to_xml(),
            "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams' xml:lang='en'>stanza too big</text></stream:error>"
        );
    }

    #[test]
    fn stanza_error_xml_round_trips() {
        let error =
            StanzaError::new(StanzaErrorCondition::ServiceUnavailable).with_text("nobody home");
        let stanza = Element::new("iq", ns::CLIENT)
            .with_attr("type", "error")
            .with_child(error.to_element());
        assert_eq!(
            stanza.to_stanza_xml(),
            "<iq type='error'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>nobody home</text></error></iq>"
        );
        assert_eq!(StanzaError::from_stanza(&stanza), Some(error));
    }
}
