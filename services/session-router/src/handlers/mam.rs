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
use starling_api::{mam, ArchiveDefault, ArchivePrefs, FeatureSpec, SessionAddr, SessionRecord};
use starling_bus::deliver_to_session;
use starling_jid::{BareJid, FullJid, Jid};
use starling_xmpp::xep::mam::{query_form, DefaultRule, Prefs, Query};
use starling_xmpp::xep::Payload;
use starling_xmpp::{ns, stanza, Element, IqType, StanzaError, StanzaErrorCondition};

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
        let archive_query = mam::archive_query(&query, router.config.mam_max_page_size)?;
        let owner = jid.to_bare();
        let page = router
            .storage
            .query_archive(&owner, &archive_query)
            .await
            .map_err(mam::query_failure)?;
        let session = SessionRecord::new(jid.clone(), addr.clone());
        let owner_text = owner.to_string();
        for archived in mam::sending_order(&page, query.flip_page) {
            let Some(original) =
                mam::parse_archived(&archived.stanza_xml, &router.config.stored_stanza_limits)
            else {
                tracing::warn!(user = %owner, id = archived.id.0, "archived message does not parse, skipped");
                continue;
            };
            let result = mam::result_message(
                &owner_text,
                &jid.to_string(),
                query.queryid.as_deref(),
                archived.id,
                original,
            );
            if !deliver_to_session(&*router.bus, Arc::new(result), &session, None).await {
                // The querying session is gone: nobody reads the rest.
                return Err(StanzaError::new(StanzaErrorCondition::RecipientUnavailable));
            }
        }
        Ok(mam::fin_result(&request.iq, &archive_query, &page))
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
                        .with_attr("timestamp", mam::stamp_of(id)),
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
