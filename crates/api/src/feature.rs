//! How a protocol feature (an RFC section or a XEP) declares itself, once,
//! in the module of the service that implements it: the disco features it
//! adds to the server's `disco#info` (XEP-0030 section 3.1), the IQ payload
//! namespaces it answers and the stream features it offers (RFC 6120 section
//! 4.3.2). The services compute what they advertise from these declarations;
//! no list of features is kept by hand anywhere else.
//!
//! docs/architecture.md ("Adding a feature") walks through adding one.

/// The declaration of one feature.
#[derive(Debug, PartialEq, Eq)]
pub struct FeatureSpec {
    /// A short name for logs and docs: "ping", "roster".
    pub name: &'static str,
    /// The specification it implements, with its section or version: "XEP-0199".
    pub specification: &'static str,
    /// The `<feature var='...'/>` values of the server's disco#info.
    pub disco_features: &'static [&'static str],
    /// The namespaces of the IQ payloads it answers (RFC 6120 section 8.2.3).
    pub iq_namespaces: &'static [&'static str],
    /// The stream features it offers during stream negotiation.
    pub stream_features: &'static [StreamFeature],
}

/// A child of `<stream:features/>` (RFC 6120 section 4.3.2) a feature offers.
#[derive(Debug, PartialEq, Eq)]
pub struct StreamFeature {
    /// The element name: `register`, `ver`.
    pub name: &'static str,
    pub namespace: &'static str,
    /// When it is offered.
    pub stage: StreamStage,
}

/// The stage of stream negotiation at which a stream feature is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStage {
    /// Before SASL, and only on an encrypted stream (the feature carries a
    /// password, as in-band registration does: RFC 6120 section 13.8.3).
    BeforeAuthenticationInsideTls,
    /// After SASL, beside resource binding.
    AfterAuthentication,
}

/// The features a service runs, in the order they were given. A feature
/// that is switched off is simply not in the set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    specs: Vec<&'static FeatureSpec>,
}

impl Features {
    pub fn new(specs: impl IntoIterator<Item = &'static FeatureSpec>) -> Self {
        let mut features = Features::default();
        features.extend(specs);
        features
    }

    /// Add features; one already in the set is not added twice.
    pub fn extend(&mut self, specs: impl IntoIterator<Item = &'static FeatureSpec>) {
        for spec in specs {
            if !self.contains(spec) {
                self.specs.push(spec);
            }
        }
    }

    pub fn contains(&self, spec: &FeatureSpec) -> bool {
        self.specs.contains(&spec)
    }

    pub fn iter(&self) -> impl Iterator<Item = &'static FeatureSpec> + '_ {
        self.specs.iter().copied()
    }

    /// Every disco feature of the set, sorted and without duplicates
    /// (XEP-0030 section 3.1).
    pub fn disco_features(&self) -> Vec<&'static str> {
        let mut features: Vec<&'static str> = self
            .specs
            .iter()
            .flat_map(|spec| spec.disco_features.iter().copied())
            .collect();
        features.sort_unstable();
        features.dedup();
        features
    }

    /// The stream features of the set offered at `stage`, in declaration order.
    pub fn stream_features(
        &self,
        stage: StreamStage,
    ) -> impl Iterator<Item = &'static StreamFeature> + '_ {
        self.specs
            .iter()
            .flat_map(|spec| spec.stream_features.iter())
            .filter(move |feature| feature.stage == stage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PING: FeatureSpec = FeatureSpec {
        name: "ping",
        specification: "XEP-0199",
        disco_features: &["urn:xmpp:ping"],
        iq_namespaces: &["urn:xmpp:ping"],
        stream_features: &[],
    };

    const REGISTRATION: FeatureSpec = FeatureSpec {
        name: "registration",
        specification: "XEP-0077",
        disco_features: &["jabber:iq:register"],
        iq_namespaces: &["jabber:iq:register"],
        stream_features: &[StreamFeature {
            name: "register",
            namespace: "http://jabber.org/features/iq-register",
            stage: StreamStage::BeforeAuthenticationInsideTls,
        }],
    };

    const DISCO: FeatureSpec = FeatureSpec {
        name: "disco",
        specification: "XEP-0030",
        disco_features: &[
            "http://jabber.org/protocol/disco#items",
            "http://jabber.org/protocol/disco#info",
            "urn:xmpp:ping",
        ],
        iq_namespaces: &[],
        stream_features: &[],
    };

    #[test]
    fn disco_features_are_sorted_and_unique() {
        let features = Features::new([&PING, &DISCO, &PING]);
        assert_eq!(features.iter().count(), 2);
        assert_eq!(
            features.disco_features(),
            vec![
                "http://jabber.org/protocol/disco#info",
                "http://jabber.org/protocol/disco#items",
                "urn:xmpp:ping",
            ]
        );
    }

    #[test]
    fn stream_features_by_stage() {
        let features = Features::new([&PING, &REGISTRATION]);
        let before: Vec<&str> = features
            .stream_features(StreamStage::BeforeAuthenticationInsideTls)
            .map(|feature| feature.name)
            .collect();
        assert_eq!(before, vec!["register"]);
        assert_eq!(
            features
                .stream_features(StreamStage::AfterAuthentication)
                .count(),
            0
        );
        assert!(!Features::new([&PING]).contains(&REGISTRATION));
    }
}
