//! Push Notifications, XEP-0357 version 0.4.1: a client enables (section 5)
//! and disables (section 6) notifications to an app server on its account.
//! Registrations are the account's, keyed by the app server's JID and node
//! (section 5: the same JID may be enabled for several nodes; enabling a
//! pair again replaces its publish options), and kept in storage as one
//! document under the account ([`KEY`]), so that every router replica and
//! a restart see them. The notifications themselves are `crate::push`.

use async_trait::async_trait;
use starling_api::FeatureSpec;
use starling_jid::{BareJid, Jid};
use starling_xmpp::xep::push::{Disable, Enable};
use starling_xmpp::xep::{Payload, PayloadError};
use starling_xmpp::{ns, stanza, Element, IqType, StanzaError, StanzaErrorCondition};

use super::documents;
use crate::features::{Addressee, IqHandler, IqRequest};
use crate::router::SessionRouter;

/// XEP-0357: the enable and disable IQs. The account advertises the
/// namespace (section 4: "the user's server MUST include the feature"
/// in the account's disco#info), not the server: see [`ACCOUNT_FEATURES`].
pub(crate) const FEATURE: FeatureSpec = FeatureSpec {
    name: "push",
    specification: "XEP-0357",
    disco_features: &[],
    iq_namespaces: &[ns::PUSH],
    stream_features: &[],
};

/// What an account's bare JID advertises when push is on (section 4).
pub(crate) const ACCOUNT_FEATURES: &[&str] = &[ns::PUSH];

/// The account document holding the registrations:
/// `<push xmlns='urn:xmpp:push:0'>` with one `<enable/>` per (JID, node).
pub(crate) const KEY: &str = "push";

/// The most registrations one account keeps (one per app client and
/// device, in practice a handful); one more `enable` gets `policy-violation`.
pub(crate) const MAX_REGISTRATIONS: usize = 32;

/// Answers `<enable/>` and `<disable/>` sets on the sender's own account.
pub(crate) struct Push;

#[async_trait]
impl IqHandler for Push {
    fn feature(&self) -> &'static FeatureSpec {
        &FEATURE
    }

    async fn handle(&self, router: &SessionRouter, request: IqRequest<'_>) -> Option<Element> {
        let routing = request.routing;
        // Sections 5 and 6: the client sends the IQ to its own bare JID.
        let account = match request.addressee {
            Addressee::OwnAccount { jid, .. } => jid.to_bare(),
            Addressee::OtherAccount => {
                router.metrics.count_push_registration("refused");
                return routing.bounce(&request.iq, StanzaErrorCondition::Forbidden);
            }
            Addressee::Server => return request.unsupported(),
        };
        if request.iq_type != IqType::Set {
            router.metrics.count_push_registration("refused");
            return request.unsupported();
        }
        let Some(payload) = stanza::iq_payload(&request.iq) else {
            return request.unsupported();
        };
        let changed = if Enable::is(payload) {
            match Enable::from_element(payload) {
                Ok(enable) => enable_registration(router, &account, enable).await,
                Err(error) => Err(bad_request(&error)),
            }
        } else if Disable::is(payload) {
            match Disable::from_element(payload) {
                Ok(disable) => disable_registrations(router, &account, &disable).await,
                Err(error) => Err(bad_request(&error)),
            }
        } else {
            router.metrics.count_push_registration("refused");
            return request.unsupported();
        };
        match changed {
            Ok(event) => {
                router.metrics.count_push_registration(event);
                Some(stanza::iq_result(&request.iq))
            }
            Err(error) => {
                router.metrics.count_push_registration("refused");
                routing.bounced(stanza::error_reply(&request.iq, &error))
            }
        }
    }
}

fn bad_request(error: &PayloadError) -> StanzaError {
    error.to_stanza_error()
}

/// The app server's address, normalised (RFC 7622), or `jid-malformed`.
fn service_jid(raw: &str) -> Result<String, StanzaError> {
    raw.parse::<Jid>()
        .map(|jid| jid.to_string())
        .map_err(|_| StanzaError::new(StanzaErrorCondition::JidMalformed))
}

async fn enable_registration(
    router: &SessionRouter,
    account: &BareJid,
    mut enable: Enable,
) -> Result<&'static str, StanzaError> {
    enable.jid = service_jid(&enable.jid)?;
    let mut registrations = load_registrations(router, account)
        .await
        .map_err(|error| error.to_stanza_error())?;
    // Section 5: enabling a (JID, node) again keeps the last publish options.
    registrations.retain(|known| !(known.jid == enable.jid && known.node == enable.node));
    if registrations.len() >= MAX_REGISTRATIONS {
        return Err(
            StanzaError::new(StanzaErrorCondition::PolicyViolation).with_text(format!(
                "at most {MAX_REGISTRATIONS} push registrations per account"
            )),
        );
    }
    registrations.push(enable);
    store_registrations(router, account, &registrations)
        .await
        .map_err(|error| error.to_stanza_error())?;
    Ok("enabled")
}

async fn disable_registrations(
    router: &SessionRouter,
    account: &BareJid,
    disable: &Disable,
) -> Result<&'static str, StanzaError> {
    let jid = service_jid(&disable.jid)?;
    remove_registrations(router, account, &jid, disable.node.as_deref())
        .await
        .map_err(|error| error.to_stanza_error())?;
    Ok("disabled")
}

/// Remove the registrations of `jid` (only the one of `node` when given,
/// section 6); returns how many went.
pub(crate) async fn remove_registrations(
    router: &SessionRouter,
    account: &BareJid,
    jid: &str,
    node: Option<&str>,
) -> starling_api::ApiResult<usize> {
    let mut registrations = load_registrations(router, account).await?;
    let before = registrations.len();
    registrations.retain(|known| !(known.jid == jid && node.is_none_or(|node| known.node == node)));
    let removed = before - registrations.len();
    if removed > 0 {
        store_registrations(router, account, &registrations).await?;
    }
    Ok(removed)
}

/// The account's registrations, in the order they were enabled.
pub(crate) async fn load_registrations(
    router: &SessionRouter,
    account: &BareJid,
) -> starling_api::ApiResult<Vec<Enable>> {
    let Some(document) = documents::load(router, account, KEY).await? else {
        return Ok(Vec::new());
    };
    Ok(document
        .children()
        .filter_map(|child| Enable::from_element(child).ok())
        .collect())
}

async fn store_registrations(
    router: &SessionRouter,
    account: &BareJid,
    registrations: &[Enable],
) -> starling_api::ApiResult<()> {
    if registrations.is_empty() {
        return router.storage.put_account_data(account, KEY, None).await;
    }
    let mut document = Element::new("push", ns::PUSH);
    for registration in registrations {
        document.append_child(registration.to_element());
    }
    documents::store(router, account, KEY, &document).await
}
