//! Push Notifications, XEP-0357 version 0.4.1: a client enables (section 5)
//! and disables (section 6) notifications to an app server on its account.
//! Registrations are the account's, keyed by the app server's JID and node
//! (section 5: the same JID may be enabled for several nodes; enabling a
//! pair again replaces its publish options), and kept in storage
//! ([`starling_api::PushStore`], one row per registration), so that every
//! router replica and a restart see them. Whether an account has any is
//! cached per router and invalidated cluster-wide on every change
//! ([`SessionRouter::has_push_registrations`]). The notifications
//! themselves are `crate::push`.

use async_trait::async_trait;
use starling_api::{ApiError, FeatureSpec, PushRegistration};
use starling_jid::{BareJid, Jid};
use starling_xmpp::xep::push::{Disable, Enable};
use starling_xmpp::xep::{Payload, PayloadError};
use starling_xmpp::{
    ns, parse_element, stanza, Element, IqType, Limits, StanzaError, StanzaErrorCondition,
};

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

/// The most registrations one account keeps (one per app client and
/// device, in practice a handful); one more `enable` gets `policy-violation`.
pub(crate) const MAX_REGISTRATIONS: u32 = 32;

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
    let registration = PushRegistration {
        service_jid: enable.jid.clone(),
        node: enable.node.clone(),
        publish_options_xml: enable.publish_options.as_ref().map(Element::to_xml),
    };
    // Section 5: enabling a (JID, node) again keeps the last publish options.
    router
        .storage
        .put_push_registration(account, &registration, MAX_REGISTRATIONS)
        .await
        .map_err(|error| match error {
            ApiError::LimitReached(_) => StanzaError::new(StanzaErrorCondition::PolicyViolation)
                .with_text(format!(
                    "at most {MAX_REGISTRATIONS} push registrations per account"
                )),
            other => other.to_stanza_error(),
        })?;
    router.push_registrations_changed(account).await;
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
) -> starling_api::ApiResult<u64> {
    let removed = router
        .storage
        .remove_push_registrations(account, jid, node)
        .await?;
    if removed > 0 {
        router.push_registrations_changed(account).await;
    }
    Ok(removed)
}

/// The account's registrations, in the order they were enabled. A stored
/// publish-options form that no longer parses is left out of its
/// registration (logged); the registration stays.
pub(crate) async fn load_registrations(
    router: &SessionRouter,
    account: &BareJid,
) -> starling_api::ApiResult<Vec<Enable>> {
    let stored = router.storage.push_registrations(account).await?;
    Ok(stored
        .into_iter()
        .map(|registration| Enable {
            publish_options: registration.publish_options_xml.as_deref().and_then(|xml| {
                let limits = Limits {
                    max_stanza_bytes: xml.len().max(1),
                    ..Limits::default()
                };
                parse_element(xml.as_bytes(), &limits)
                    .inspect_err(|error| {
                        tracing::warn!(user = %account, %error, "stored push publish-options do not parse");
                    })
                    .ok()
            }),
            jid: registration.service_jid,
            node: registration.node,
        })
        .collect())
}

impl SessionRouter {
    /// Whether `account` has push registrations: cached per router,
    /// invalidated cluster-wide on every enable and disable (see
    /// `account_cache.rs`), so that a message for an account without any
    /// costs no database read.
    pub(crate) async fn has_push_registrations(
        &self,
        account: &BareJid,
    ) -> starling_api::ApiResult<bool> {
        self.push_accounts
            .get_or_load(account, || async {
                Ok(!self.storage.push_registrations(account).await?.is_empty())
            })
            .await
    }

    /// `account`'s registrations changed in storage: every router forgets
    /// what it knew (over the block lists' invalidation channel).
    async fn push_registrations_changed(&self, account: &BareJid) {
        self.blocklists.changed(account).await;
    }
}
