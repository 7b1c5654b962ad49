//! The features this connection-manager answers itself and the stream
//! features it offers, both computed from the features' declarations
//! ([`starling_api::FeatureSpec`]).

use starling_api::presence::ROSTER_FEATURE;
use starling_api::{FeatureSpec, Features};

use crate::{csi, register};

/// The features answered at the edge, as the configuration switches them:
/// in-band registration (XEP-0077) when `registration_enabled`, stream
/// management (XEP-0198) when `sm_enabled`. The router advertises them in the
/// server's disco#info.
pub fn edge_features(registration_enabled: bool, sm_enabled: bool) -> Vec<&'static FeatureSpec> {
    let mut features = Vec::new();
    if registration_enabled {
        features.push(&register::FEATURE);
    }
    if sm_enabled {
        features.push(&crate::sm::FEATURE);
    }
    features
}

/// The features whose stream features a stream offers: the edge's own,
/// client state indication (XEP-0352, no disco feature) when `csi_enabled`,
/// and roster versioning (RFC 6121 section 2.6, answered by the presence
/// service).
pub(crate) fn stream_features(
    registration_enabled: bool,
    sm_enabled: bool,
    csi_enabled: bool,
) -> Features {
    let mut features = Features::new([&ROSTER_FEATURE]);
    features.extend(edge_features(registration_enabled, sm_enabled));
    if csi_enabled {
        features.extend([&csi::FEATURE]);
    }
    features
}
