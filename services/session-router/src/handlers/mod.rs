//! The IQ payloads the server answers itself, one module per specification.
//! Each module declares its feature ([`starling_api::FeatureSpec`]) and
//! implements [`IqHandler`] for it; the router dispatches to it by payload
//! namespace (`iq.rs`) and advertises it in disco#info.

use starling_api::FeatureSpec;

use crate::features::IqHandler;
use crate::router::RouterConfig;

pub(crate) mod blocking;
pub(crate) mod disco;
pub(crate) mod documents;
pub(crate) mod last;
pub(crate) mod mam;
pub(crate) mod pep;
pub(crate) mod ping;
pub(crate) mod private;
pub(crate) mod push;
pub(crate) mod roster;
pub(crate) mod vcard;
pub(crate) mod version;

/// The router's IQ handlers: adding a feature that answers IQs here means
/// adding its module and one line to this list.
pub(crate) const IQ_HANDLERS: &[&'static dyn IqHandler] = &[
    &disco::Disco,
    &ping::Ping,
    &version::Version,
    &roster::Roster,
    &private::PrivateStorage,
    &vcard::VCard,
    &last::LastActivity,
    &blocking::Blocking,
    &pep::Pep,
];

/// The handlers a router with `config` registers: [`IQ_HANDLERS`] and the
/// features switched on in the configuration (Message Carbons, XEP-0280;
/// Message Archive Management, XEP-0313; Push Notifications, XEP-0357).
pub(crate) fn iq_handlers(config: &RouterConfig) -> Vec<&'static dyn IqHandler> {
    let carbons: Option<&'static dyn IqHandler> =
        config.carbons.then_some(&crate::carbons::Carbons);
    let archive: Option<&'static dyn IqHandler> = config.mam.then_some(&mam::Archive);
    let push: Option<&'static dyn IqHandler> = config.push.is_some().then_some(&push::Push);
    IQ_HANDLERS
        .iter()
        .copied()
        .chain(carbons)
        .chain(archive)
        .chain(push)
        .collect()
}

/// The router's features that answer no IQ.
pub(crate) const WITHOUT_IQ_HANDLER: &[&FeatureSpec] = &[&crate::offline::FEATURE];
