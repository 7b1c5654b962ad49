//! XEP-0313 (version 1.1) queries, shared by every archive the server
//! hosts (an account's, a room's): reading a client's `<query/>` into an
//! [`ArchiveQuery`] (section 4.1, with its XEP-0059 page), and writing one
//! page back as `<result/>` messages and the `<fin/>` that ends the query
//! (sections 4.2 and 4.3). Who may read which archive is each archive's rule.

use starling_xmpp::xep::delay::{parse_datetime_micros, rfc3339_utc, Delay};
use starling_xmpp::xep::forward::Forwarded;
use starling_xmpp::xep::mam::{fin_element, result_element, Query};
use starling_xmpp::xep::rsm::PageResult;
use starling_xmpp::{ns, parse_element, stanza, Element, StanzaError, StanzaErrorCondition};

use crate::archive::{ArchiveId, ArchivePage, ArchiveQuery, ArchivedMessage, PageStart};
use crate::error::ApiError;

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
pub fn archive_query(query: &Query, max_page_size: u32) -> Result<ArchiveQuery, StanzaError> {
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
    let with =
        match &query.with {
            None => None,
            Some(text) => Some(text.trim().parse::<starling_jid::Jid>().map_err(
                |parse_error| {
                    error(
                        StanzaErrorCondition::JidMalformed,
                        format!("'with' is not a JID: {parse_error}"),
                    )
                },
            )?),
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

/// A storage failure of a query as the client sees it: an id the query
/// names that is not in the archive is `item-not-found`.
pub fn query_failure(failure: ApiError) -> StanzaError {
    match failure {
        ApiError::NotFound(text) => error(StanzaErrorCondition::ItemNotFound, text),
        other => other.to_stanza_error(),
    }
}

/// `2010-07-10T23:08:25.123456Z`: when a message was archived, to the
/// microsecond its id holds (XEP-0082 DateTime with fractions).
pub fn stamp_of(id: ArchiveId) -> String {
    let seconds = rfc3339_utc(id.time());
    let fraction = id.micros().rem_euclid(1_000_000);
    format!("{}.{fraction:06}Z", seconds.trim_end_matches('Z'))
}

/// An archived stanza read back (`None` when it does not parse).
pub fn parse_archived(xml: &str, limits: &starling_xmpp::Limits) -> Option<Element> {
    let mut element = parse_element(xml.as_bytes(), limits).ok()?;
    if element.namespace().is_empty() {
        element.set_namespace_deep(ns::CLIENT);
    }
    Some(element)
}

/// The `<message from=archive to=querier><result><forwarded/></result></message>`
/// of one archived message (section 4.2), `original` as the archive shows it.
pub fn result_message(
    archive: &str,
    querier: &str,
    queryid: Option<&str>,
    id: ArchiveId,
    original: Element,
) -> Element {
    let id_text = id.to_text();
    let forwarded = Forwarded {
        delay: Some(Delay {
            stamp: stamp_of(id),
            from: None,
            reason: None,
        }),
        stanza: original,
    };
    Element::new("message", ns::CLIENT)
        .with_attr("from", archive.to_string())
        .with_attr("to", querier.to_string())
        .with_attr("id", format!("mam-{id_text}"))
        .with_child(result_element(queryid, &id_text, &forwarded))
}

/// The messages of `page` in the order they are sent: a flipped page
/// (section 4.3.3) newest first; the page is the same.
pub fn sending_order(page: &ArchivePage, flip_page: bool) -> Vec<&ArchivedMessage> {
    let mut sent: Vec<&ArchivedMessage> = page.messages.iter().collect();
    if flip_page {
        sent.reverse();
    }
    sent
}

/// The IQ result that ends a query: `<fin complete><set/></fin>` (section 4.3).
pub fn fin_result(request: &Element, query: &ArchiveQuery, page: &ArchivePage) -> Element {
    // The size of the whole result set is known when the page reached
    // its end from the start of the set (first or last page, complete).
    let whole_set = matches!(query.page, PageStart::First | PageStart::Last);
    let result_set = PageResult {
        first: page.messages.first().map(|message| message.id.to_text()),
        last: page.messages.last().map(|message| message.id.to_text()),
        count: (whole_set && page.complete).then_some(page.messages.len() as u64),
    };
    stanza::iq_result(request).with_child(fin_element(page.complete, &result_set))
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
