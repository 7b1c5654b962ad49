//! Message Archive Management, XEP-0313 version 1.1: archive queries
//! (section 4) with their XEP-0059 pages, the form a client discovers
//! (section 4.1.5) and the archive's metadata (section 6), on the account's
//! own archive; with the XEP-0441 (version 0.2.0) preferences. The archive
//! is written by `../archive.rs` as messages are routed.
//!
//! Results go to the querying resource as messages, one bus publish each,
//! before the `<fin/>` IQ result that ends the query (section 4.2): both
//! travel through that resource's node channel, so they arrive in order.

use std::sync::Arc;

use async_trait::async_trait;
use starling_api::{
    ApiError, ArchiveDefault, ArchiveId, ArchivePrefs, ArchiveQuery, FeatureSpec, PageStart,
    SessionAddr, SessionRecord,
};
use starling_bus::deliver_to_session;
use starling_jid::{BareJid, FullJid, Jid};
use starling_xmpp::xep::delay::{parse_datetime_micros, rfc3339_utc, Delay};
use starling_xmpp::xep::forward::Forwarded;
use starling_xmpp::xep::mam::{fin_element, query_form, result_element, DefaultRule, Prefs, Query};
use starling_xmpp::xep::rsm::PageResult;
use starling_xmpp::xep::Payload;
use starling_xmpp::{
    ns, parse_element, stanza, Element, IqType, StanzaError, StanzaErrorCondition,
};

use crate::features::{Addressee, IqHandler, IqRequest};
use crate::router::SessionRouter;

/// XEP-0313 (with XEP-0441 preferences and XEP-0359 stanza ids). Its disco
/// features belong to the account's bare JID (XEP-0313 section 7), not to
/// the server: see [`ACCOUNT_FEATURES`].
pub(crate) const FEATURE: FeatureSpec = FeatureSpec {
    name: "mam",
    specification: "XEP-0313, XEP-0441, XEP-0359",
    disco_features: &[],
    iq_namespaces: &[ns::MAM],
    stream_features: &[],
};

/// What an account's bare JID advertises when archiving is on (XEP-0313
/// section 7; XEP-0359 section 4).
pub(crate) const ACCOUNT_FEATURES: &[&str] = &[ns::MAM, ns::MAM_EXTENDED, ns::SID];

/// Answers archive queries, the query form, metadata and preferences.
pub(crate) struct Archive;

fn error(condition: StanzaErrorCondition, text: impl Into<String>) -> StanzaError {
    StanzaError::new(condition).with_text(text)
}

/// An id the client named that cannot be in the archive: `item-not-found`
/// (XEP-0313 sections 4.1.3 and 4.3.2).
fn read_id(text: &str) -> Result<ArchiveId, StanzaError> {
    ArchiveId::from_text(text).ok_or_else(|| {
        error(
            StanzaErrorCondition::ItemNotFound,
            format!("no message {text:?} in the archive"),
        )
    })
}

/// A `start`/`end` value: an XEP-0082 DateTime or `bad-request` (section 4.1.2).
fn read_datetime(field: &str, text: &str) -> Result<i64, StanzaError> {
    parse_datetime_micros(text.trim()).ok_or_else(|| {
        error(
            StanzaErrorCondition::BadRequest,
            format!("'{field}' is not an XEP-0082 DateTime"),
        )
    })
}

/// The archive query a client's `<query/>` asks for, checked: unknown
/// fields and RSM `<index/>` are `feature-not-implemented` (section 4.1.5),
/// a `<max/>` above `max_page_size` is clamped to it (section 4.3.1).
fn archive_query(query: &Query, max_page_size: u32) -> Result<ArchiveQuery, StanzaError> {
    if let Some(field) = query.unknown_fields.first() {
        return Err(error(
            StanzaErrorCondition::FeatureNotImplemented,
            format!("the field {field:?} is not supported"),
        ));
    }
    let page = query.page.clone().unwrap_or_default();
    if page.index.is_some() {
        return Err(error(
            StanzaErrorCondition::FeatureNotImplemented,
            "RSM <index/> is not supported; page with <after/> and <before/>",
        ));
    }
    let with = match &query.with {
        None => None,
        Some(text) => Some(text.trim().parse::<Jid>().map_err(|parse_error| {
            error(
                StanzaErrorCondition::JidMalformed,
                format!("'with' is not a JID: {parse_error}"),
            )
        })?),
    };
    let start = match &query.start {
        None => None,
        Some(text) => Some(ArchiveId::first_at(read_datetime("start", text)?)),
    };
    let end = match &query.end {
        None => None,
        Some(text) => Some(ArchiveId::last_at(read_datetime("end", text)?)),
    };
    if query.ids.len() > max_page_size as usize {
        return Err(error(
            StanzaErrorCondition::PolicyViolation,
            format!("at most {max_page_size} ids per query (mam.max_page_size)"),
        ));
    }
    let ids = query
        .ids
        .iter()
        .map(|text| read_id(text.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let after_id = query.after_id.as_deref().map(read_id).transpose()?;
    let before_id = query.before_id.as_deref().map(read_id).transpose()?;
    let page_start = match (&page.after, &page.before) {
        (Some(after), _) => PageStart::After(read_id(after)?),
        (None, Some(before)) if before.is_empty() => PageStart::Last,
        (None, Some(before)) => PageStart::Before(read_id(before)?),
        (None, None) => PageStart::First,
    };
    let max = page.max.map_or(max_page_size, |max| {
        max.min(u64::from(max_page_size)) as u32
    });
    Ok(ArchiveQuery {
        with,
        start,
        end,
        after_id,
        before_id,
        ids,
        page: page_start,
        max,
    })
}

/// `2010-07-10T23:08:25.123456Z`: when a message was archived, to the
/// microsecond its id holds (XEP-0082 DateTime with fractions).
fn stamp_of(id: ArchiveId) -> String {
    let seconds = rfc3339_utc(id.time());
    let fraction = id.micros().rem_euclid(1_000_000);
    format!("{}.{fraction:06}Z", seconds.trim_end_matches('Z'))
}

fn parse_archived(xml: &str, limits: &starling_xmpp::Limits) -> Option<Element> {
    let mut element = parse_element(xml.as_bytes(), limits).ok()?;
    if element.namespace().is_empty() {
        element.set_namespace_deep(ns::CLIENT);
    }
    Some(element)
}

impl Archive {
    async fn query(
        &self,
        router: &SessionRouter,
        request: &IqRequest<'_>,
        jid: &FullJid,
        addr: &SessionAddr,
    ) -> Result<Element, StanzaError> {
        let payload = stanza::iq_payload(&request.iq)
            .ok_or_else(|| StanzaError::new(StanzaErrorCondition::BadRequest))?;
        let query = Query::from_element(payload).map_err(|invalid| invalid.to_stanza_error())?;
        let archive_query = archive_query(&query, router.config.mam_max_page_size)?;
        let owner = jid.to_bare();
        let page = router
            .storage
            .query_archive(&owner, &archive_query)
            .await
            .map_err(|failure| match failure {
                ApiError::NotFound(text) => error(StanzaErrorCondition::ItemNotFound, text),
                other => other.to_stanza_error(),
            })?;
        let session = SessionRecord::new(jid.clone(), addr.clone());
        let owner_text = owner.to_string();
        let mut sent: Vec<&starling_api::ArchivedMessage> = page.messages.iter().collect();
        // Section 4.3.3: a flipped page is sent newest first; the page is the same.
        if query.flip_page {
            sent.reverse();
        }
        for archived in sent {
            let Some(original) =
                parse_archived(&archived.stanza_xml, &router.config.stored_stanza_limits)
            else {
                tracing::warn!(user = %owner, id = archived.id.0, "archived message does not parse, skipped");
                continue;
            };
            let id_text = archived.id.to_text();
            let forwarded = Forwarded {
                delay: Some(Delay {
                    stamp: stamp_of(archived.id),
                    from: None,
                    reason: None,
                }),
                stanza: original,
            };
            let result = Element::new("message", ns::CLIENT)
                .with_attr("from", owner_text.clone())
                .with_attr("to", jid.to_string())
                .with_attr("id", format!("mam-{id_text}"))
                .with_child(result_element(
                    query.queryid.as_deref(),
                    &id_text,
                    &forwarded,
                ));
            if !deliver_to_session(&*router.bus, Arc::new(result), &session, None).await {
                // The querying session is gone: nobody reads the rest.
                return Err(StanzaError::new(StanzaErrorCondition::RecipientUnavailable));
            }
        }
        // The size of the whole result set is known when the page reached
        // its end from the start of the set (first or last page, complete).
        let whole_set = matches!(archive_query.page, PageStart::First | PageStart::Last);
        let result_set = PageResult {
            first: page.messages.first().map(|message| message.id.to_text()),
            last: page.messages.last().map(|message| message.id.to_text()),
            count: (whole_set && page.complete).then_some(page.messages.len() as u64),
        };
        Ok(stanza::iq_result(&request.iq).with_child(fin_element(page.complete, &result_set)))
    }

    async fn metadata(
        &self,
        router: &SessionRouter,
        request: &IqRequest<'_>,
        owner: &BareJid,
    ) -> Result<Element, StanzaError> {
        let bounds = router
            .storage
            .archive_bounds(owner)
            .await
            .map_err(|failure| failure.to_stanza_error())?;
        let mut metadata = Element::new("metadata", ns::MAM);
        if let Some((first, last)) = bounds {
            for (name, id) in [("start", first), ("end", last)] {
                metadata.append_child(
                    Element::new(name, ns::MAM)
                        .with_attr("id", id.to_text())
                        .with_attr("timestamp", stamp_of(id)),
                );
            }
        }
        Ok(stanza::iq_result(&request.iq).with_child(metadata))
    }

    async fn prefs(
        &self,
        router: &SessionRouter,
        request: &IqRequest<'_>,
        owner: &BareJid,
    ) -> Result<Element, StanzaError> {
        if request.iq_type == IqType::Set {
            let payload = stanza::iq_payload(&request.iq)
                .ok_or_else(|| StanzaError::new(StanzaErrorCondition::BadRequest))?;
            let asked =
                Prefs::from_element(payload).map_err(|invalid| invalid.to_stanza_error())?;
            let Some(default) = asked.default else {
                return Err(error(
                    StanzaErrorCondition::BadRequest,
                    "a prefs set names its default (XEP-0441)",
                ));
            };
            let limit = router.config.mam_max_page_size as usize;
            if asked.always.len() + asked.never.len() > limit {
                return Err(error(
                    StanzaErrorCondition::PolicyViolation,
                    format!("at most {limit} addresses in <always/> and <never/> together (mam.max_page_size)"),
                ));
            }
            let read = |texts: &[String]| -> Result<Vec<Jid>, StanzaError> {
                texts
                    .iter()
                    .map(|text| {
                        text.parse::<Jid>().map_err(|parse_error| {
                            error(
                                StanzaErrorCondition::JidMalformed,
                                format!("{text:?} is not a JID: {parse_error}"),
                            )
                        })
                    })
                    .collect()
            };
            let prefs = ArchivePrefs {
                default: match default {
                    DefaultRule::Always => ArchiveDefault::Always,
                    DefaultRule::Never => ArchiveDefault::Never,
                    DefaultRule::Roster => ArchiveDefault::Roster,
                },
                always: read(&asked.always)?,
                never: read(&asked.never)?,
            };
            router
                .storage
                .set_archive_prefs(owner, &prefs)
                .await
                .map_err(|failure| failure.to_stanza_error())?;
            // Every router's cached preferences of the account go, at once
            // (in the cluster over the block lists' invalidation channel).
            router.blocklists.changed(owner).await;
        }
        // A get, and the answer to a set: the preferences as stored.
        let stored = router
            .storage
            .archive_prefs(owner)
            .await
            .map_err(|failure| failure.to_stanza_error())?;
        let answer = Prefs {
            default: Some(match stored.default {
                ArchiveDefault::Always => DefaultRule::Always,
                ArchiveDefault::Never => DefaultRule::Never,
                ArchiveDefault::Roster => DefaultRule::Roster,
            }),
            always: stored.always.iter().map(Jid::to_string).collect(),
            never: stored.never.iter().map(Jid::to_string).collect(),
        };
        Ok(stanza::iq_result(&request.iq).with_child(answer.to_element()))
    }
}

#[async_trait]
impl IqHandler for Archive {
    fn feature(&self) -> &'static FeatureSpec {
        &FEATURE
    }

    async fn handle(&self, router: &SessionRouter, request: IqRequest<'_>) -> Option<Element> {
        let routing = request.routing;
        // An account's archive is its own: another account's is `forbidden`
        // (XEP-0313 section 4: the query goes to the account's own JID).
        let (jid, addr) = match request.addressee {
            Addressee::OwnAccount { jid, addr } => (jid, addr),
            Addressee::OtherAccount => {
                return routing.bounce(&request.iq, StanzaErrorCondition::Forbidden)
            }
            Addressee::Server => return request.unsupported(),
        };
        let owner = jid.to_bare();
        let answer = match (request.iq_type, request.payload_name()) {
            (IqType::Get, "query") => Ok(stanza::iq_result(&request.iq).with_child(query_form())),
            (IqType::Set, "query") => self.query(router, &request, jid, addr).await,
            (IqType::Get | IqType::Set, "prefs") => self.prefs(router, &request, &owner).await,
            (IqType::Get, "metadata") => self.metadata(router, &request, &owner).await,
            _ => return request.unsupported(),
        };
        match answer {
            Ok(result) => Some(result),
            Err(stanza_error) => routing.bounced(stanza::error_reply(&request.iq, &stanza_error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_xmpp::xep::rsm::PageRequest;

    #[test]
    fn a_huge_max_is_clamped_and_dates_are_read() {
        let query = Query {
            start: Some("2010-06-07T00:00:00Z".into()),
            end: Some("2010-07-07T13:23:54.5Z".into()),
            page: Some(PageRequest {
                max: Some(u64::MAX),
                before: Some(String::new()),
                ..PageRequest::default()
            }),
            ..Query::default()
        };
        let read = archive_query(&query, 250).unwrap();
        assert_eq!(read.max, 250);
        assert_eq!(read.page, PageStart::Last);
        assert_eq!(read.start, Some(ArchiveId::first_at(1_275_868_800_000_000)));
        assert_eq!(read.end, Some(ArchiveId::last_at(1_278_509_034_500_000)));
    }

    #[test]
    fn broken_values_get_their_errors() {
        let condition = |query: Query| archive_query(&query, 10).unwrap_err().condition;
        assert_eq!(
            condition(Query {
                start: Some("yesterday".into()),
                ..Query::default()
            }),
            StanzaErrorCondition::BadRequest
        );
        assert_eq!(
            condition(Query {
                with: Some("@@".into()),
                ..Query::default()
            }),
            StanzaErrorCondition::JidMalformed
        );
        assert_eq!(
            condition(Query {
                after_id: Some("not-ours".into()),
                ..Query::default()
            }),
            StanzaErrorCondition::ItemNotFound
        );
        assert_eq!(
            condition(Query {
                unknown_fields: vec!["include-groupchat".into()],
                ..Query::default()
            }),
            StanzaErrorCondition::FeatureNotImplemented
        );
        assert_eq!(
            condition(Query {
                ids: vec!["1".into(); 11],
                ..Query::default()
            }),
            StanzaErrorCondition::PolicyViolation
        );
    }

    #[test]
    fn stamps_carry_microseconds() {
        assert_eq!(
            stamp_of(ArchiveId::first_at(1_031_699_305_000_042)),
            "2002-09-10T23:08:25.000042Z"
        );
    }
}
