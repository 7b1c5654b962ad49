//! Last Activity, XEP-0012, answered by the server: its uptime (section 5)
//! and, for an account's bare JID, how long ago the account logged out and
//! with what status (section 3), to the account itself and to contacts with
//! a presence subscription only. A query to a full JID goes to that client.

use async_trait::async_trait;
use starling_api::{last_activity, FeatureSpec, Origin, Subscription};
use starling_xmpp::{ns, stanza, Element, IqType, StanzaErrorCondition};

use super::documents;
use crate::features::{Addressee, IqHandler, IqRequest};
use crate::router::SessionRouter;

/// XEP-0012 version 2.0.
pub(crate) const FEATURE: FeatureSpec = FeatureSpec {
    name: "last-activity",
    specification: "XEP-0012",
    disco_features: &[ns::LAST],
    iq_namespaces: &[ns::LAST],
    stream_features: &[],
};

/// Answers `jabber:iq:last` gets to the server and to local accounts.
pub(crate) struct LastActivity;

#[async_trait]
impl IqHandler for LastActivity {
    fn feature(&self) -> &'static FeatureSpec {
        &FEATURE
    }

    async fn handle(&self, router: &SessionRouter, request: IqRequest<'_>) -> Option<Element> {
        if !request.is(IqType::Get, "query") {
            return request.unsupported();
        }
        let now = (router.clock)();
        let account = match request.addressee {
            // Section 5: the server's uptime, without character data.
            Addressee::Server => {
                let uptime = last_activity::answer(now, router.started_at, "");
                return Some(stanza::iq_result(&request.iq).with_child(uptime));
            }
            Addressee::OwnAccount { jid, .. } => jid.to_bare(),
            Addressee::OtherAccount => {
                let Some(account) = request.other_account() else {
                    return request
                        .routing
                        .bounce(&request.iq, StanzaErrorCondition::JidMalformed);
                };
                // Section 3: only to whom may see the account's presence.
                let requester = match request.routing.origin {
                    Origin::Session { jid, .. } => jid.to_bare(),
                    Origin::Server => return request.unsupported(),
                };
                match router.storage.roster_item(&account, &requester).await {
                    Ok(Some(item))
                        if matches!(item.subscription, Subscription::From | Subscription::Both) => {
                    }
                    Ok(_) => {
                        return request
                            .routing
                            .bounce(&request.iq, StanzaErrorCondition::Forbidden)
                    }
                    Err(error) => return request.routing.failure_reply(&request.iq, &error),
                }
                account
            }
        };
        // Section 3: an account with an available resource is active now.
        match router.registry.sessions(&account).await {
            Ok(sessions) if sessions.iter().any(|session| session.available) => {
                let active = last_activity::answer(now, now, "");
                return Some(stanza::iq_result(&request.iq).with_child(active));
            }
            Ok(_) => {}
            Err(error) => return request.routing.failure_reply(&request.iq, &error),
        }
        match documents::load(router, &account, last_activity::KEY).await {
            Ok(Some(stored)) => match last_activity::parse(&stored) {
                Some((since, status)) => Some(
                    stanza::iq_result(&request.iq)
                        .with_child(last_activity::answer(now, since, &status)),
                ),
                None => request
                    .routing
                    .bounce(&request.iq, StanzaErrorCondition::ItemNotFound),
            },
            // Never logged out since it was created: nothing to tell.
            Ok(None) => request
                .routing
                .bounce(&request.iq, StanzaErrorCondition::ItemNotFound),
            Err(error) => request.routing.failure_reply(&request.iq, &error),
        }
    }
}
