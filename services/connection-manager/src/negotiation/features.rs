//! Stream features (RFC 6120 section 4.3.2): what a stream offers at each
//! stage of its negotiation, assembled in this one place from the steps'
//! elements: STARTTLS (section 5.4.1), SASL mechanisms (section 6.4.1) and
//! SASL2 with what it negotiates inline (XEP-0388, XEP-0386 Bind 2, XEP-0198),
//! resource binding (section 7.4), the legacy session
//! (draft-cridland-xmpp-session-01), and the stream features the server's
//! features declare for the stage (`crate::features`: XEP-0077 in-band
//! registration, RFC 6121 section 2.6 roster versioning, XEP-0352 client
//! state indication).

use starling_api::{Features, StreamFeature, StreamStage};
use starling_sasl::{ChannelBindingType, Mechanism};
use starling_xmpp::{ns, Element};

/// Which features a stream offers at its current stage (RFC 6120 section 4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FeatureSet {
    /// STARTTLS, and whether it is `<required/>` (section 5.4.1).
    pub starttls: Option<bool>,
    pub mechanisms: Vec<Mechanism>,
    /// The channel binding types of the `-PLUS` mechanisms (XEP-0440
    /// `<sasl-channel-binding/>`); empty: none offered.
    pub channel_binding_types: Vec<ChannelBindingType>,
    /// Resource binding (section 7) and legacy session.
    pub bind: bool,
    /// The stream features the server's features declare for this stage.
    pub offered: Vec<&'static StreamFeature>,
    /// SASL2 (XEP-0388), offered with the same mechanisms.
    pub sasl2: Option<Sasl2Offer>,
}

/// What SASL2 offers inline (XEP-0388 `<inline/>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sasl2Offer {
    /// Bind 2 (XEP-0386) and the session features it enables inline, by
    /// namespace (XEP-0386 section "Discovering support").
    pub bind_inline: Vec<&'static str>,
    /// Stream resumption inside `<authenticate/>` (XEP-0198 section 5).
    pub sm_resume: bool,
    /// FAST (XEP-0484): its `<fast/>` with the token mechanisms.
    pub fast: Option<Element>,
}

/// Where a stream is in its negotiation, as far as its features go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stage {
    /// TLS protects the stream.
    pub tls_active: bool,
    /// STARTTLS is possible on the transport: a plain TCP stream (a WebSocket
    /// or BOSH leaves TLS to the HTTP layer, RFC 7395 section 3.1).
    pub starttls_possible: bool,
    /// TLS is mandatory before anything else (`require_tls`; it applies to
    /// TCP streams only).
    pub tls_required: bool,
    /// SASL succeeded on this stream.
    pub authenticated: bool,
}

impl FeatureSet {
    /// The features of `stage`, with those that `declared` offers at it.
    pub fn for_stage(stage: Stage, declared: &Features) -> Self {
        if stage.authenticated {
            return FeatureSet {
                starttls: None,
                mechanisms: Vec::new(),
                channel_binding_types: Vec::new(),
                bind: true,
                offered: declared
                    .stream_features(StreamStage::AfterAuthentication)
                    .collect(),
                sasl2: None,
            };
        }
        if !stage.tls_active {
            let starttls = |required: bool| stage.starttls_possible.then_some(required);
            if stage.tls_required {
                // RFC 6120 section 5.3.1: with TLS mandatory-to-negotiate, no
                // other feature is advertised before it.
                return FeatureSet {
                    starttls: starttls(true),
                    mechanisms: Vec::new(),
                    channel_binding_types: Vec::new(),
                    bind: false,
                    offered: Vec::new(),
                    sasl2: None,
                };
            }
            // PLAIN would send the password in the clear (RFC 6120 section
            // 13.8.3), and so would XEP-0077: neither outside TLS.
            return FeatureSet {
                starttls: starttls(false),
                mechanisms: Mechanism::ALL
                    .iter()
                    .copied()
                    .filter(|mechanism| {
                        !mechanism.requires_encryption() && !mechanism.requires_channel_binding()
                    })
                    .collect(),
                channel_binding_types: Vec::new(),
                bind: false,
                offered: Vec::new(),
                sasl2: None,
            };
        }
        FeatureSet {
            starttls: None,
            mechanisms: Mechanism::ALL
                .iter()
                .copied()
                .filter(|mechanism| !mechanism.requires_channel_binding())
                .collect(),
            channel_binding_types: Vec::new(),
            bind: false,
            offered: declared
                .stream_features(StreamStage::BeforeAuthenticationInsideTls)
                .collect(),
            sasl2: None,
        }
    }

    /// Offer the `-PLUS` mechanisms, first, and the channel binding types
    /// `types` (XEP-0440) where mechanisms are offered and the stream has
    /// channel binding data: only on a TLS session that ends here, never on
    /// a plain stream (RFC 5802 section 6). Before [`Self::with_sasl2`].
    pub fn with_channel_binding(mut self, types: Vec<ChannelBindingType>) -> Self {
        if self.mechanisms.is_empty() || types.is_empty() {
            return self;
        }
        let plus = Mechanism::ALL
            .iter()
            .copied()
            .filter(|mechanism| mechanism.requires_channel_binding());
        self.mechanisms = plus.chain(self.mechanisms).collect();
        self.channel_binding_types = types;
        self
    }

    /// Offer SASL2 too, with the SASL mechanisms of this stage (XEP-0388
    /// section "Discovering Support": never without a mechanism).
    pub fn with_sasl2(mut self, offer: Option<Sasl2Offer>) -> Self {
        if !self.mechanisms.is_empty() {
            self.sasl2 = offer;
        }
        self
    }

    /// The features of a stream bound by Bind 2, sent right after the SASL2
    /// `<success/>` (XEP-0388 section "Success": no stream restart): those
    /// declared for after authentication, without stream management when it
    /// is on already.
    pub fn after_bind2(declared: &Features, sm_enabled: bool) -> Self {
        FeatureSet {
            starttls: None,
            mechanisms: Vec::new(),
            channel_binding_types: Vec::new(),
            bind: false,
            offered: declared
                .stream_features(StreamStage::AfterAuthentication)
                .filter(|feature| !(sm_enabled && feature.namespace == ns::SM))
                .collect(),
            sasl2: None,
        }
    }

    /// `<stream:features>` with every offered feature.
    pub fn to_xml(&self) -> String {
        let mut out = String::from("<stream:features>");
        for feature in &self.elements() {
            // Inside the prefixed <stream:features>, the default namespace is still jabber:client.
            feature.write_to(&mut out, ns::CLIENT);
        }
        out.push_str("</stream:features>");
        out
    }

    /// `<features xmlns='http://etherx.jabber.org/streams'>` as an element
    /// (for a connection's queue).
    pub fn to_element(&self) -> Element {
        let mut features = Element::new("features", ns::STREAM);
        for feature in self.elements() {
            features.append_child(feature);
        }
        features
    }

    fn elements(&self) -> Vec<Element> {
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
        if !self.channel_binding_types.is_empty() {
            // XEP-0440 section 2: a top-level stream feature beside the
            // mechanisms of either SASL profile.
            let mut channel_binding = Element::new("sasl-channel-binding", ns::SASL_CB);
            for binding in &self.channel_binding_types {
                channel_binding.append_child(
                    Element::new("channel-binding", ns::SASL_CB)
                        .with_attr("type", binding.as_str()),
                );
            }
            features.push(channel_binding);
        }
        if let Some(offer) = &self.sasl2 {
            features.push(self.sasl2_feature(offer));
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
        features
    }

    /// `<authentication xmlns='urn:xmpp:sasl:2'>` (XEP-0388 section
    /// "Discovering Support"), with Bind 2 and stream resumption `<inline/>`
    /// (XEP-0386 section "Discovering support", XEP-0198 section 5).
    fn sasl2_feature(&self, offer: &Sasl2Offer) -> Element {
        let mut authentication = Element::new("authentication", ns::SASL2);
        for mechanism in &self.mechanisms {
            authentication
                .append_child(Element::new("mechanism", ns::SASL2).with_text(mechanism.as_str()));
        }
        let mut bind_features = Element::new("inline", ns::BIND2);
        for namespace in &offer.bind_inline {
            bind_features
                .append_child(Element::new("feature", ns::BIND2).with_attr("var", *namespace));
        }
        let mut inline = Element::new("inline", ns::SASL2)
            .with_child(Element::new("bind", ns::BIND2).with_child(bind_features));
        if offer.sm_resume {
            inline.append_child(Element::new("sm", ns::SM));
        }
        if let Some(fast) = &offer.fast {
            inline.append_child(fast.clone());
        }
        authentication.append_child(inline);
        authentication
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The features of a TCP stream (STARTTLS is possible until TLS is
    /// active) on a server with registration on or off.
    fn tcp(
        tls_active: bool,
        tls_required: bool,
        authenticated: bool,
        registration_enabled: bool,
    ) -> FeatureSet {
        let stage = Stage {
            tls_active,
            starttls_possible: !tls_active,
            tls_required,
            authenticated,
        };
        FeatureSet::for_stage(
            stage,
            &crate::features::stream_features(registration_enabled, false, true),
        )
    }

    #[test]
    fn starttls_required_alone_before_tls() {
        let features = tcp(false, true, false, true);
        assert_eq!(
            features.to_xml(),
            "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>"
        );
    }

    #[test]
    fn plaintext_allowed_offers_scram_only() {
        let features = tcp(false, false, false, true);
        assert_eq!(
            features.to_xml(),
            "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism></mechanisms></stream:features>"
        );
    }

    #[test]
    fn inside_tls_all_mechanisms_and_registration() {
        assert_eq!(
            tcp(true, true, false, true).to_xml(),
            "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms><register xmlns='http://jabber.org/features/iq-register'/></stream:features>"
        );
        assert_eq!(
            tcp(true, true, false, false).to_xml(),
            "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms></stream:features>"
        );
    }

    #[test]
    fn after_authentication_bind_session_roster_versioning_and_csi() {
        assert_eq!(
            tcp(true, true, true, true).to_xml(),
            "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session><ver xmlns='urn:xmpp:features:rosterver'/><csi xmlns='urn:xmpp:csi:0'/></stream:features>"
        );
        // XEP-0352 switched off: not offered.
        let authenticated = Stage {
            tls_active: true,
            starttls_possible: false,
            tls_required: true,
            authenticated: true,
        };
        assert_eq!(
            FeatureSet::for_stage(authenticated, &crate::features::stream_features(true, false, false)).to_xml(),
            "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session><ver xmlns='urn:xmpp:features:rosterver'/></stream:features>"
        );
    }

    #[test]
    fn sasl2_with_bind2_and_resumption_inline() {
        let offer = Sasl2Offer {
            bind_inline: vec![ns::CARBONS, ns::CSI, ns::SM],
            sm_resume: true,
            fast: Some(Element::new("fast", ns::FAST)),
        };
        assert_eq!(
            tcp(true, true, false, false).with_sasl2(Some(offer.clone())).to_xml(),
            "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>\
<authentication xmlns='urn:xmpp:sasl:2'><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism>\
<inline><bind xmlns='urn:xmpp:bind:0'><inline><feature var='urn:xmpp:carbons:2'/><feature var='urn:xmpp:csi:0'/><feature var='urn:xmpp:sm:3'/></inline></bind><sm xmlns='urn:xmpp:sm:3'/><fast xmlns='urn:xmpp:fast:0'/></inline></authentication></stream:features>"
        );
        // Never without a mechanism: not before a mandatory STARTTLS, not once authenticated.
        assert_eq!(
            tcp(false, true, false, false)
                .with_sasl2(Some(offer.clone()))
                .sasl2,
            None
        );
        assert_eq!(
            tcp(true, true, true, false).with_sasl2(Some(offer)).sasl2,
            None
        );
        let declared = crate::features::stream_features(false, true, true);
        assert_eq!(
            FeatureSet::after_bind2(&declared, true).to_element().to_xml(),
            "<features xmlns='http://etherx.jabber.org/streams'><ver xmlns='urn:xmpp:features:rosterver'/><csi xmlns='urn:xmpp:csi:0'/></features>"
        );
        assert_eq!(
            FeatureSet::after_bind2(&declared, false).to_element().to_xml(),
            "<features xmlns='http://etherx.jabber.org/streams'><ver xmlns='urn:xmpp:features:rosterver'/><sm xmlns='urn:xmpp:sm:3'/><csi xmlns='urn:xmpp:csi:0'/></features>"
        );
    }

    #[test]
    fn plus_mechanisms_and_channel_binding_types_only_with_channel_binding() {
        let both = vec![
            ChannelBindingType::TlsExporter,
            ChannelBindingType::TlsServerEndPoint,
        ];
        let offer = Sasl2Offer {
            bind_inline: Vec::new(),
            sm_resume: false,
            fast: None,
        };
        assert_eq!(
            tcp(true, true, false, false)
                .with_channel_binding(both.clone())
                .with_sasl2(Some(offer))
                .to_xml(),
            "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>\
<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/><channel-binding type='tls-server-end-point'/></sasl-channel-binding>\
<authentication xmlns='urn:xmpp:sasl:2'><mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism>\
<inline><bind xmlns='urn:xmpp:bind:0'><inline/></bind></inline></authentication></stream:features>"
        );
        // TLS 1.2: the end-point type alone.
        assert_eq!(
            tcp(true, true, false, false)
                .with_channel_binding(vec![ChannelBindingType::TlsServerEndPoint])
                .to_xml(),
            "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms><sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-server-end-point'/></sasl-channel-binding></stream:features>"
        );
        // No channel binding data (a plain stream): no -PLUS, no XEP-0440.
        let plain = tcp(false, false, false, false).with_channel_binding(Vec::new());
        assert!(!plain.to_xml().contains("PLUS"));
        assert!(!plain.to_xml().contains("sasl-channel-binding"));
        assert_eq!(plain, tcp(false, false, false, false));
        // Nothing to bind where no mechanism is offered (before a required
        // STARTTLS, after authentication).
        assert_eq!(
            tcp(false, true, false, false).with_channel_binding(both.clone()),
            tcp(false, true, false, false)
        );
        assert_eq!(
            tcp(true, true, true, false).with_channel_binding(both),
            tcp(true, true, true, false)
        );
    }

    #[test]
    fn websocket_and_bosh_offer_scram_without_starttls_or_registration() {
        let web = Stage {
            tls_active: false,
            starttls_possible: false,
            tls_required: false,
            authenticated: false,
        };
        let declared = crate::features::stream_features(true, false, true);
        assert_eq!(
            FeatureSet::for_stage(web, &declared).to_xml(),
            "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism></mechanisms></stream:features>"
        );
        let bound = Stage {
            authenticated: true,
            ..web
        };
        assert_eq!(
            FeatureSet::for_stage(bound, &declared),
            tcp(true, true, true, true)
        );
    }
}
