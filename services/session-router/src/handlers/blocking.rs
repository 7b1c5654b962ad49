//! Blocking Command, XEP-0191 version 1.1: the block list get (section
//! 3.2), block (3.3), unblock (3.4) and unblock-all (3.5) requests an
//! account makes, with the pushes to its interested resources; and the
//! XEP-0377 (0.4.1) reports a block item may carry, stored with the item.
//!
//! The lists are durable in storage (`BlockingStore`) and enforced by the
//! router and the presence service from `starling_bus::Blocklists`, which
//! each change here invalidates cluster-wide (`../blocking.rs`).

use std::collections::HashSet;

use async_trait::async_trait;
use starling_api::{AbuseReport, ApiError, BlockedItem, FeatureSpec, Origin, SessionRecord};
use starling_bus::deliver_to_sessions;
use starling_jid::{BareJid, FullJid, Jid};
use starling_xmpp::xep::blocking::{Block, BlockItem, Blocklist, Unblock};
use starling_xmpp::xep::Payload;
use starling_xmpp::{ns, stanza, Element, IqType, StanzaError, StanzaErrorCondition};

use crate::features::{Addressee, IqHandler, IqRequest};
use crate::router::SessionRouter;

/// XEP-0191, with XEP-0377 reports in block items.
pub(crate) const FEATURE: FeatureSpec = FeatureSpec {
    name: "blocking",
    specification: "XEP-0191, XEP-0377",
    disco_features: &[ns::BLOCKING, ns::REPORTING],
    iq_namespaces: &[ns::BLOCKING],
    stream_features: &[],
};

/// Answers `<blocklist/>`, `<block/>` and `<unblock/>`.
pub(crate) struct Blocking;

/// A request about the sender's own block list, read.
enum Command {
    Get,
    Block(Vec<BlockItem>),
    Unblock(Vec<BlockItem>),
}

fn command(request: &IqRequest<'_>) -> Result<Command, StanzaError> {
    let Some(payload) = stanza::iq_payload(&request.iq) else {
        return Err(StanzaError::new(StanzaErrorCondition::BadRequest));
    };
    let result = match (request.iq_type, payload.name()) {
        (IqType::Get, "blocklist") => Blocklist::from_element(payload).map(|_| Command::Get),
        (IqType::Set, "block") => {
            Block::from_element(payload).map(|block| Command::Block(block.items))
        }
        (IqType::Set, "unblock") => {
            Unblock::from_element(payload).map(|unblock| Command::Unblock(unblock.items))
        }
        _ => {
            return Err(StanzaError::new(StanzaErrorCondition::BadRequest)
                .with_text("a get of <blocklist/>, or a set of <block/> or <unblock/>"))
        }
    };
    result.map_err(|error| error.to_stanza_error())
}

/// The items' addresses read as JIDs (normalised, duplicates folded);
/// `jid-malformed` for one that is not a JID (RFC 6120 section 8.3.3.8,
/// the "other standard XMPP stanza errors" of XEP-0191 section 3.3).
fn read_addresses(items: &[BlockItem]) -> Result<Vec<BlockedItem>, StanzaError> {
    let mut seen = HashSet::new();
    let mut read = Vec::with_capacity(items.len());
    for item in items {
        let jid = item.jid.parse::<Jid>().map_err(|error| {
            StanzaError::new(StanzaErrorCondition::JidMalformed)
                .with_text(format!("{:?} is not a JID: {error}", item.jid))
        })?;
        if seen.insert(jid.clone()) {
            read.push(BlockedItem {
                jid,
                report: item.report.as_ref().map(|report| AbuseReport {
                    reason: report.reason.clone(),
                    text: report.text.clone(),
                }),
            });
        }
    }
    Ok(read)
}

/// `policy-violation` (RFC 6120 section 8.3.3.12: a local service policy)
/// for a block that would take the list past `blocking.max_items`.
fn list_full(limit: usize) -> StanzaError {
    StanzaError::new(StanzaErrorCondition::PolicyViolation)
        .with_text(format!("a block list holds at most {limit} items"))
}

/// The error reply without the request's payload (a refused block of many
/// items is not sent back whole).
fn short_error_reply(iq: &Element, error: &StanzaError) -> Option<Element> {
    let mut shallow = Element::new(iq.name(), iq.namespace());
    for (name, value) in iq.attrs() {
        shallow.set_attr(name, value);
    }
    stanza::error_reply(&shallow, error)
}

#[async_trait]
impl IqHandler for Blocking {
    fn feature(&self) -> &'static FeatureSpec {
        &FEATURE
    }

    async fn handle(&self, router: &SessionRouter, request: IqRequest<'_>) -> Option<Element> {
        let routing = request.routing;
        // Section 3: sent with no `to` (or to the account's own bare JID, or
        // to its server): about the sender's own list. Nobody else's list
        // can be read or changed.
        let (jid, addr) = match (request.addressee, routing.origin) {
            (Addressee::OwnAccount { jid, addr }, _)
            | (Addressee::Server, Origin::Session { jid, addr }) => (jid, addr),
            _ if request.iq_type == IqType::Set => {
                return routing.bounce(&request.iq, StanzaErrorCondition::Forbidden)
            }
            _ => return request.unsupported(),
        };
        // The limit is checked on the request's item count before anything
        // of it is read (a 100,000-item block, within the stanza size limit,
        // costs one pass over the parsed tree).
        let limit = router.config.blocking_max_items;
        if let Some(block) = stanza::iq_payload(&request.iq).filter(|payload| Block::is(payload)) {
            let items = block.children().count();
            if items > limit {
                tracing::info!(jid = %jid, items, limit, "block request over the limit refused");
                return routing.bounced(short_error_reply(&request.iq, &list_full(limit)));
            }
        }
        let command = match command(&request) {
            Ok(command) => command,
            Err(error) => return routing.bounced(stanza::error_reply(&request.iq, &error)),
        };
        let user = jid.to_bare();
        match command {
            Command::Get => {
                // The session is now an "interested" resource for pushes.
                if let Err(error) = router.registry.set_blocklist_interest(jid, addr).await {
                    return routing.failure_reply(&request.iq, &error);
                }
                match router.storage.blocklist(&user).await {
                    Ok(items) => {
                        let list = Blocklist {
                            items: items
                                .iter()
                                .map(|item| BlockItem::new(item.jid.to_string()))
                                .collect(),
                        };
                        Some(stanza::iq_result(&request.iq).with_child(list.to_element()))
                    }
                    Err(error) => routing.failure_reply(&request.iq, &error),
                }
            }
            Command::Block(items) => block(router, &request, jid, &user, &items).await,
            Command::Unblock(items) => unblock(router, &request, &user, &items).await,
        }
    }
}

async fn block(
    router: &SessionRouter,
    request: &IqRequest<'_>,
    jid: &FullJid,
    user: &BareJid,
    items: &[BlockItem],
) -> Option<Element> {
    let routing = request.routing;
    let blocked = match read_addresses(items) {
        Ok(blocked) => blocked,
        Err(error) => return routing.bounced(stanza::error_reply(&request.iq, &error)),
    };
    match router.storage.block(user, &blocked).await {
        Ok(()) => {}
        Err(ApiError::LimitReached(reason)) => {
            tracing::info!(user = %user, %reason, "block list full");
            let error = list_full(router.config.blocking_max_items);
            return routing.bounced(short_error_reply(&request.iq, &error));
        }
        Err(ApiError::Invalid(reason)) => {
            let error = StanzaError::new(StanzaErrorCondition::PolicyViolation).with_text(reason);
            return routing.bounced(short_error_reply(&request.iq, &error));
        }
        Err(error) => return routing.failure_reply(&request.iq, &error),
    }
    router.blocklists.changed(user).await;
    let addresses: Vec<Jid> = blocked.into_iter().map(|item| item.jid).collect();
    tracing::debug!(user = %user, from = %jid, items = addresses.len(), "blocked");
    push(router, user, Block::NAME, &addresses).await;
    if let Err(error) = router.presence_after_block(user, &addresses).await {
        tracing::warn!(user = %user, %error, "unavailable presence after a block not sent");
    }
    Some(stanza::iq_result(&request.iq))
}

async fn unblock(
    router: &SessionRouter,
    request: &IqRequest<'_>,
    user: &BareJid,
    items: &[BlockItem],
) -> Option<Element> {
    let routing = request.routing;
    let requested = match read_addresses(items) {
        Ok(requested) => requested,
        Err(error) => return routing.bounced(stanza::error_reply(&request.iq, &error)),
    };
    let requested: Vec<Jid> = requested.into_iter().map(|item| item.jid).collect();
    let removed = match router.storage.unblock(user, &requested).await {
        Ok(removed) => removed,
        Err(error) => return routing.failure_reply(&request.iq, &error),
    };
    router.blocklists.changed(user).await;
    // Section 3.5: an empty unblock is pushed as an empty unblock; section
    // 3.4: otherwise the items as requested.
    push(router, user, Unblock::NAME, &requested).await;
    if let Err(error) = router.presence_after_unblock(user, &removed).await {
        tracing::warn!(user = %user, %error, "presence after an unblock not sent");
    }
    Some(stanza::iq_result(&request.iq))
}

/// Sections 3.3 to 3.5: "The server MUST also send an IQ-set to all of the
/// user's resources that have requested the blocklist, containing the
/// blocked item(s)": one push, one publish per node.
async fn push(router: &SessionRouter, user: &BareJid, name: &str, addresses: &[Jid]) {
    let sessions = match router.registry.sessions(user).await {
        Ok(sessions) => sessions,
        Err(error) => {
            tracing::warn!(user = %user, %error, "block list push targets not read, no push");
            return;
        }
    };
    let targets: Vec<(SessionRecord, Option<String>)> = sessions
        .into_iter()
        .filter(|session| session.blocklist_interest)
        .map(|session| {
            let to = session.jid.to_string();
            (session, Some(to))
        })
        .collect();
    if targets.is_empty() {
        return;
    }
    let mut payload = Element::new(name, ns::BLOCKING);
    for address in addresses {
        payload.append_child(BlockItem::new(address.to_string()).to_element());
    }
    let push = Element::new("iq", ns::CLIENT)
        .with_attr("type", "set")
        .with_attr("id", format!("block-push-{:016x}", rand::random::<u64>()))
        .with_child(payload);
    let unreached =
        deliver_to_sessions(&*router.bus, std::sync::Arc::new(push), &targets, None).await;
    if !unreached.is_empty() {
        tracing::debug!(user = %user, unreached = unreached.len(), "block list push reached no node");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised_and_folded() {
        let read = read_addresses(&[
            BlockItem::new("Romeo@Montague.net"),
            BlockItem::new("romeo@montague.net"),
            BlockItem::new("montague.net/bot"),
        ])
        .expect("valid");
        let texts: Vec<String> = read.iter().map(|item| item.jid.to_string()).collect();
        assert_eq!(texts, vec!["romeo@montague.net", "montague.net/bot"]);
    }

    #[test]
    fn a_bad_address_is_jid_malformed() {
        let error = read_addresses(&[BlockItem::new("@nowhere")]).expect_err("malformed");
        assert_eq!(error.condition, StanzaErrorCondition::JidMalformed);
    }
}
