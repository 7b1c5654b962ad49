//! The stream-level XML the server writes: the response stream header (RFC
//! 6120 section 4.7), stream features (section 4.3.2), and the STARTTLS
//! (section 5.4) and SASL (section 6.4) nonzas.

use starling_api::{Features, StreamFeature, StreamStage};
use starling_sasl::{encode_xmpp_payload, Mechanism, SaslFailureCondition};
use starling_xmpp::{escape_attr, ns, Element};

/// `</stream:stream>`, RFC 6120 section 4.4.
pub(crate) const STREAM_CLOSE: &str = "</stream:stream>";

/// The response stream header (RFC 6120 section 4.7): our stream id, our
/// domain in `from`, the client's address in `to` when it gave a valid one,
/// version 1.0, and the stream's language.
pub(crate) fn stream_header(id: &str, domain: &str, to: Option<&str>, lang: &str) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='");
    out.push_str(&escape_attr(id));
    out.push_str("' from='");
    out.push_str(&escape_attr(domain));
    out.push('\'');
    if let Some(to) = to {
        out.push_str(" to='");
        out.push_str(&escape_attr(to));
        out.push('\'');
    }
    out.push_str(" version='1.0' xml:lang='");
    out.push_str(&escape_attr(lang));
    out.push_str("'>");
    out
}

/// Which features a stream offers at its current stage (RFC 6120 section 4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FeatureSet {
    /// STARTTLS, and whether it is `<required/>` (section 5.4.1).
    pub starttls: Option<bool>,
    pub mechanisms: Vec<Mechanism>,
    /// Resource binding (section 7) and legacy session.
    pub bind: bool,
    /// The stream features the server's features declare for this stage
    /// (in-band registration, roster versioning).
    pub offered: Vec<&'static StreamFeature>,
}

impl FeatureSet {
    pub fn for_stage(
        tls_active: bool,
        require_tls: bool,
        authenticated: bool,
        features: &Features,
    ) -> Self {
        if authenticated {
            return FeatureSet {
                starttls: None,
                mechanisms: Vec::new(),
                bind: true,
                offered: features
                    .stream_features(StreamStage::AfterAuthentication)
                    .collect(),
            };
        }
        if !tls_active {
            if require_tls {
                // RFC 6120 section 5.3.1: with TLS mandatory-to-negotiate, no
                // other feature is advertised before it.
                return FeatureSet {
                    starttls: Some(true),
                    mechanisms: Vec::new(),
                    bind: false,
                    offered: Vec::new(),
                };
            }
            // PLAIN would send the password in the clear (RFC 6120 section
            // 13.8.3), and so would XEP-0077: neither outside TLS.
            return FeatureSet {
                starttls: Some(false),
                mechanisms: Mechanism::ALL
                    .iter()
                    .copied()
                    .filter(|mechanism| !mechanism.requires_encryption())
                    .collect(),
                bind: false,
                offered: Vec::new(),
            };
        }
        FeatureSet {
            starttls: None,
            mechanisms: Mechanism::ALL.to_vec(),
            bind: false,
            offered: features
                .stream_features(StreamStage::BeforeAuthenticationInsideTls)
                .collect(),
        }
    }

    /// `<stream:features>` with every offered feature.
    pub fn to_xml(&self) -> String {
        let mut features: Vec<Element> = Vec::new();
        if let Some(required) = self.starttls {
            let mut starttls = Element::new("starttls", ns::TLS);
            if required {
                starttls.append_child(Element::new("required", ns::TLS));
            }
            features.push(starttls);
        }
        if !self.mechanisms.is_empty() {
            let mut mechanisms = Element::new("mechanisms", ns::SASL);
            for mechanism in &self.mechanisms {
                mechanisms.append_child(
                    Element::new("mechanism", ns::SASL).with_text(mechanism.as_str()),
                );
            }
            features.push(mechanisms);
        }
        if self.bind {
            features.push(Element::new("bind", ns::BIND));
            // RFC 6121 has no session establishment; old clients look for it
            // (draft-cridland-xmpp-session-01: optional).
            features.push(
                Element::new("session", ns::SESSION)
                    .with_child(Element::new("optional", ns::SESSION)),
            );
        }
        for feature in &self.offered {
            features.push(Element::new(feature.name, feature.namespace));
        }
        let mut out = String::from("<stream:features>");
        for feature in &features {
            // Inside the prefixed <stream:features>, the default namespace is still jabber:client.
            feature.write_to(&mut out, ns::CLIENT);
        }
        out.push_str("</stream:features>");
        out
    }
}

/// `<proceed/>`, RFC 6120 section 5.4.2.3.
pub(crate) const STARTTLS_PROCEED: &str = "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
/// `<failure/>` of STARTTLS, RFC 6120 section 5.4.2.2: the stream is closed after it.
pub(crate) const STARTTLS_FAILURE: &str = "<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";

/// A SASL `<failure/>` with its condition, RFC 6120 section 6.4.5.
pub(crate) fn sasl_failure(condition: SaslFailureCondition) -> String {
    format!(
        "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><{}/></failure>",
        condition.as_str()
    )
}

/// A SASL `<challenge/>`, RFC 6120 section 6.4.3; `None` is the empty challenge
/// asking for the initial response the client did not send.
pub(crate) fn sasl_challenge(data: Option<&[u8]>) -> String {
    match data {
        Some(data) => format!(
            "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</challenge>",
            encode_xmpp_payload(data)
        ),
        None => "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".to_string(),
    }
}

/// SASL `<success/>` with additional data, RFC 6120 section 6.4.6.
pub(crate) fn sasl_success(data: &[u8]) -> String {
    if data.is_empty() {
        return "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".to_string();
    }
    format!(
        "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</success>",
        encode_xmpp_payload(data)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream features of a server with registration on or off.
    fn server_features(registration_enabled: bool) -> Features {
        crate::features::stream_features(registration_enabled)
    }

    #[test]
    fn response_header() {
        assert_eq!(
            stream_header("s1", "example.com", Some("juliet@example.com"), "en"),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='example.com' to='juliet@example.com' version='1.0' xml:lang='en'>"
        );
        assert_eq!(
            stream_header("s'1", "example.com", None, "d<e"),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='s&apos;1' from='example.com' version='1.0' xml:lang='d&lt;e'>"
        );
    }

    #[test]
    fn starttls_required_alone_before_tls() {
        let features = FeatureSet::for_stage(false, true, false, &server_features(true));
        assert_eq!(
            features.to_xml(),
            "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>"
        );
    }

    #[test]
    fn plaintext_allowed_offers_scram_only() {
        let features = FeatureSet::for_stage(false, false, false, &server_features(true));
        assert_eq!(
            features.to_xml(),
            "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism></mechanisms></stream:features>"
        );
    }

    #[test]
    fn inside_tls_all_mechanisms_and_registration() {
        assert_eq!(
            FeatureSet::for_stage(true, true, false, &server_features(true)).to_xml(),
            "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms><register xmlns='http://jabber.org/features/iq-register'/></stream:features>"
        );
        assert_eq!(
            FeatureSet::for_stage(true, true, false, &server_features(false)).to_xml(),
            "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms></stream:features>"
        );
    }

    #[test]
    fn after_authentication_bind_session_and_roster_versioning() {
        assert_eq!(
            FeatureSet::for_stage(true, true, true, &server_features(true)).to_xml(),
            "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session><ver xmlns='urn:xmpp:features:rosterver'/></stream:features>"
        );
    }

    #[test]
    fn sasl_nonzas() {
        assert_eq!(
            sasl_failure(SaslFailureCondition::NotAuthorized),
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>"
        );
        assert_eq!(
            sasl_challenge(None),
            "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
        );
        assert_eq!(
            sasl_challenge(Some(b"r=abc,s=c2FsdA==,i=4096")),
            "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>cj1hYmMscz1jMkZzZEE9PSxpPTQwOTY=</challenge>"
        );
        assert_eq!(
            sasl_success(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="),
            "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>dj1ybUY5cHFWOFM3c3VBb1pXamE0ZEpSa0ZzS1E9</success>"
        );
        assert_eq!(
            sasl_success(b""),
            "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
        );
    }
}
