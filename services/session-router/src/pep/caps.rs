//! Entity Capabilities, XEP-0115 version 1.6.0, as the PEP service uses
//! them: the `<c/>` of a session's available presence names a `ver`; an
//! unknown one is asked for with a disco#info query to that full JID
//! (section 6.2), the answer is verified against the `ver` (section 5.4:
//! the SHA-1 of its verification string) and remembered in storage
//! (`PepStore::put_caps`), where every router of the cluster finds it.
//!
//! A `ver` is the hash of its feature set, so a verified record never
//! changes: each router keeps the records it used in a bounded local memo
//! in front of storage; what it does not know it reads from storage, never
//! from a node-local guess (DESIGN.md "Knowledge the whole cluster needs").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use starling_api::{ApiResult, CapsRecord, PepStore, SessionAddr, SessionRecord};
use starling_bus::deliver_to_session;
use starling_jid::{FullJid, Jid};
use starling_xmpp::xep::caps::{features, sha1_ver, Caps, SHA_1};
use starling_xmpp::{ns, stanza, Element};

use crate::metrics::CapsOutcome;
use crate::router::SessionRouter;

/// The id prefix of the server's caps queries: `caps-RANDOM-VER`, so that
/// the answer names the `ver` it must hash to on whichever router it
/// reaches, with no state kept between the query and the answer.
pub(crate) const CAPS_QUERY_ID_PREFIX: &str = "caps-";

/// How many verified records a router keeps in memory.
const LOCAL_RECORDS: usize = 4096;

/// The largest feature set remembered (count, and bytes together): a
/// client's answer is what it says, so its size is bounded before storage
/// keeps it.
const MAX_CAPS_FEATURES: usize = 1024;
const MAX_CAPS_BYTES: usize = 64 * 1024;

/// How often this router tells storage that a session announced a record
/// it remembers (storage writes it at most once a day too): the sighting
/// keeps the record from the `pep.caps_retention_days` prune.
const SIGHTING_EVERY: Duration = Duration::from_secs(86_400);

/// A verified record's key: the hash function and the ver.
type CapsKey = (String, String);

/// A verified record this router used, and when it last reported a
/// sighting of it to storage (`None`: not yet).
struct Known {
    features: Arc<Vec<String>>,
    reported: Option<Instant>,
}

/// The verified records this router used.
#[derive(Default)]
pub(crate) struct CapsCache {
    known: Mutex<HashMap<CapsKey, Known>>,
}

impl CapsCache {
    fn local(&self, caps: &Caps) -> Option<Arc<Vec<String>>> {
        let known = self
            .known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        known
            .get(&(caps.hash.clone(), caps.ver.clone()))
            .map(|known| known.features.clone())
    }

    /// Whether a session's announcement of `caps` is to be reported to
    /// storage now (not within `SIGHTING_EVERY` of the last report); if so
    /// the report is counted as made.
    fn sighting_due(&self, caps: &Caps) -> bool {
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(entry) = known.get_mut(&(caps.hash.clone(), caps.ver.clone())) else {
            return false;
        };
        let now = Instant::now();
        if entry
            .reported
            .is_some_and(|reported| now.duration_since(reported) < SIGHTING_EVERY)
        {
            return false;
        }
        entry.reported = Some(now);
        true
    }

    fn remember(&self, hash: &str, ver: &str, features: Arc<Vec<String>>) {
        self.remember_reported(hash, ver, features, None);
    }

    fn remember_reported(
        &self,
        hash: &str,
        ver: &str,
        features: Arc<Vec<String>>,
        reported: Option<Instant>,
    ) {
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if known.len() >= LOCAL_RECORDS {
            // Records are cheap to read again from storage: start over
            // rather than track recency.
            known.clear();
        }
        known.insert(
            (hash.to_string(), ver.to_string()),
            Known { features, reported },
        );
    }

    /// The features of `caps` if a router verified them (here or in storage).
    pub(crate) async fn features<S: PepStore + ?Sized>(
        &self,
        store: &S,
        caps: &Caps,
    ) -> ApiResult<Option<Arc<Vec<String>>>> {
        if let Some(features) = self.local(caps) {
            return Ok(Some(features));
        }
        let Some(features) = store.caps_features(&caps.hash, &caps.ver).await? else {
            return Ok(None);
        };
        let features = Arc::new(features);
        self.remember(&caps.hash, &caps.ver, features.clone());
        Ok(Some(features))
    }
}

/// The `ver` a caps query's answer must hash to, read from its id.
fn expected_ver(id: &str) -> Option<&str> {
    let rest = id.strip_prefix(CAPS_QUERY_ID_PREFIX)?;
    let (_random, ver) = rest.split_once('-')?;
    (!ver.is_empty()).then_some(ver)
}

/// Whether an IQ result or error answers one of the server's caps queries.
pub(crate) fn is_caps_answer(iq: &Element) -> bool {
    iq.attr("id").and_then(expected_ver).is_some()
}

/// The disco#info query for `caps` to `to` (XEP-0115 section 6.2).
pub(crate) fn caps_query(domain: &str, to: &FullJid, caps: &Caps) -> Element {
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "get")
        .with_attr("from", domain)
        .with_attr("to", to.to_string())
        .with_attr(
            "id",
            format!(
                "{CAPS_QUERY_ID_PREFIX}{:016x}-{}",
                rand::random::<u64>(),
                caps.ver
            ),
        )
        .with_child(Element::new("query", ns::DISCO_INFO).with_attr("node", caps.disco_node()))
}

/// The capabilities of a serialised presence, if any.
fn caps_of_stored(presence: Option<&str>) -> Option<Caps> {
    let presence = presence?;
    let limits = starling_xmpp::Limits {
        max_stanza_bytes: presence.len().max(1),
        ..starling_xmpp::Limits::default()
    };
    let element = starling_xmpp::parse_element(presence.as_bytes(), &limits).ok()?;
    Caps::of_presence(&element)
}

impl SessionRouter {
    /// The session record of `jid` before its presence is processed, when
    /// the presence carries capabilities (to tell a new `ver` or a first
    /// available presence from a repeated one).
    pub(crate) async fn session_before_caps_presence(
        &self,
        jid: &FullJid,
        presence: &Element,
    ) -> Option<SessionRecord> {
        if !is_broadcast_available(presence) || Caps::of_presence(presence).is_none() {
            return None;
        }
        match self.registry.session(jid).await {
            Ok(session) => session,
            Err(error) => {
                tracing::debug!(jid = %jid, %error, "session lookup before a caps presence failed");
                None
            }
        }
    }

    /// Tell storage that a session announces (or uses, for a notification)
    /// `caps`, at most once per `SIGHTING_EVERY` per record and router: the
    /// record's `last_seen` keeps it from the `pep.caps_retention_days`
    /// prune, and a record pruned meanwhile is stored again.
    pub(crate) async fn report_caps_sighting(&self, caps: &Caps, features: &[String]) {
        if !self.caps.sighting_due(caps) {
            return;
        }
        let record = CapsRecord {
            hash: caps.hash.clone(),
            ver: caps.ver.clone(),
            features: features.to_vec(),
        };
        if let Err(error) = self.storage.put_caps(&record).await {
            tracing::debug!(ver = %caps.ver, %error, "reporting a caps sighting failed");
        }
    }

    /// After a session's available presence was processed: learn its
    /// capabilities, or send it the last published items it asks for
    /// (XEP-0163 section 4.3.4) when they are known and new for it.
    pub(crate) async fn caps_on_presence(
        &self,
        jid: &FullJid,
        addr: &SessionAddr,
        presence: &Element,
        previous: Option<SessionRecord>,
    ) {
        if !is_broadcast_available(presence) {
            return;
        }
        let Some(caps) = Caps::of_presence(presence) else {
            return;
        };
        if let Some(previous) = &previous {
            if previous.available
                && caps_of_stored(previous.presence.as_deref()).as_ref() == Some(&caps)
            {
                return;
            }
        }
        let features = match self.caps.features(&*self.storage, &caps).await {
            Ok(features) => features,
            Err(error) => {
                tracing::warn!(jid = %jid, %error, "caps lookup failed");
                return;
            }
        };
        match features {
            Some(features) => {
                self.report_caps_sighting(&caps, &features).await;
                // The record as the presence service left it (with its
                // resumption id, so that what is sent is journaled, XEP-0198).
                let session = match super::available_session(self, jid).await {
                    Ok(Some(session)) => session,
                    Ok(None) => return,
                    Err(error) => {
                        tracing::warn!(jid = %jid, %error, "session lookup after a caps presence failed");
                        return;
                    }
                };
                if let Err(error) = self.send_last_published_items(&session, &features).await {
                    tracing::warn!(jid = %jid, %error, "sending the last published items failed");
                }
            }
            // Section 5.4: only a hash function the server implements can be
            // verified; other records are never trusted, so never asked for.
            None if caps.hash == SHA_1 => {
                let query = caps_query(&self.config.domain, jid, &caps);
                let session = SessionRecord::new(jid.clone(), addr.clone());
                if deliver_to_session(&*self.bus, Arc::new(query), &session, None).await {
                    self.metrics.count_caps_query(CapsOutcome::Sent);
                } else {
                    tracing::debug!(jid = %jid, "caps query unreached");
                }
            }
            None => {
                tracing::debug!(jid = %jid, hash = %caps.hash, "caps with an unsupported hash ignored")
            }
        }
    }

    /// The answer to a caps query: verified, remembered for the cluster, and
    /// the answering session gets the last items its `+notify` features ask for.
    pub(crate) async fn caps_answer(&self, iq: &Element) {
        let Some(ver) = iq.attr("id").and_then(expected_ver) else {
            return;
        };
        let Ok(Some(Jid::Full(from))) = stanza::from(iq) else {
            return;
        };
        if stanza::stanza_type(iq) != "result" {
            tracing::debug!(jid = %from, "caps query answered with an error");
            self.metrics.count_caps_query(CapsOutcome::Refused);
            return;
        }
        let Some(query) = iq
            .children()
            .find(|child| child.is("query", ns::DISCO_INFO))
        else {
            self.metrics.count_caps_query(CapsOutcome::Refused);
            return;
        };
        match sha1_ver(query) {
            Ok(computed) if computed == ver => {}
            Ok(computed) => {
                tracing::info!(jid = %from, claimed = ver, computed, "caps answer does not hash to its ver, ignored");
                self.metrics.count_caps_query(CapsOutcome::Refused);
                return;
            }
            Err(error) => {
                tracing::info!(jid = %from, %error, "invalid caps answer ignored");
                self.metrics.count_caps_query(CapsOutcome::Refused);
                return;
            }
        }
        let record = CapsRecord {
            hash: SHA_1.to_string(),
            ver: ver.to_string(),
            features: features(query)
                .into_iter()
                .filter(|feature| !feature.contains('\n') && !feature.contains('\0'))
                .collect(),
        };
        let bytes: usize = record.features.iter().map(String::len).sum();
        if record.features.len() > MAX_CAPS_FEATURES || bytes > MAX_CAPS_BYTES {
            tracing::info!(jid = %from, features = record.features.len(), bytes, "caps answer too large, ignored");
            self.metrics.count_caps_query(CapsOutcome::Refused);
            return;
        }
        if let Err(error) = self.storage.put_caps(&record).await {
            tracing::warn!(jid = %from, %error, "storing a caps record failed");
            return;
        }
        self.metrics.count_caps_query(CapsOutcome::Verified);
        let features = Arc::new(record.features);
        self.caps
            .remember_reported(SHA_1, ver, features.clone(), Some(Instant::now()));
        match super::available_session(self, &from).await {
            Ok(Some(session)) => {
                if let Err(error) = self.send_last_published_items(&session, &features).await {
                    tracing::warn!(jid = %from, %error, "sending the last published items failed");
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(jid = %from, %error, "session lookup after caps failed"),
        }
    }
}

/// An available presence broadcast (no `to`, no `type`, RFC 6121 section 4.2).
fn is_broadcast_available(presence: &Element) -> bool {
    presence.attr("to").is_none() && presence.attr("type").is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_id_names_the_ver() {
        let caps = Caps {
            hash: SHA_1.into(),
            node: "http://psi-im.org".into(),
            ver: "q07IKJEyjvHSyhy//CH0CxmKi8w=".into(),
        };
        let to: FullJid = "juliet@capulet.lit/balcony".parse().unwrap();
        let query = caps_query("capulet.lit", &to, &caps);
        assert!(is_caps_answer(&query));
        assert_eq!(
            query.attr("id").and_then(expected_ver),
            Some("q07IKJEyjvHSyhy//CH0CxmKi8w=")
        );
        let payload = stanza::iq_payload(&query).unwrap();
        assert_eq!(
            payload.to_xml(),
            "<query xmlns='http://jabber.org/protocol/disco#info' node='http://psi-im.org#q07IKJEyjvHSyhy//CH0CxmKi8w='/>"
        );
        assert_eq!(expected_ver("caps-"), None);
        assert_eq!(expected_ver("purple1"), None);
    }
}
