//! The MUC service: a stanza addressed to the service or to a room goes
//! through [`MucService::handle`]: the room's lease is taken, the room
//! loaded, the engine applied, the room written back, the room's stanzas
//! delivered (one bus publish per connection-manager), the lease released.

use std::sync::Arc;
use std::time::SystemTime;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use starling_api::{ApiError, ApiResult, MucRoomStore, SessionRecord, SessionRegistry};
use starling_bus::{deliver_to_sessions, Bus};
use starling_jid::{normalize_localpart, FullJid, Jid};
use starling_xmpp::{ns, stanza, Element, StanzaError, StanzaErrorCondition};

use crate::durable::{durable_part, durable_record, parse_room, room_of_durable, Durable};
use crate::engine::{self, ArchiveRequest, Known, Outbound, Settings, MUC};
use crate::occupancy::{MemoryOccupancy, OccupancyIndex};
use crate::state::{HistoryEntry, Room};
use crate::store::{HistoryLimits, Lease, Loaded, RecordWrite, RoomStore};

mod archive;
mod bounds;

pub use archive::RoomArchive;

/// The service's Prometheus metrics (docs/operations.md).
#[derive(Clone)]
pub struct MucMetrics {
    /// `starling_muc_stanzas_total{outcome}`: accepted, refused (the
    /// sender got an error), failed (a dependency failed).
    stanzas: IntCounterVec,
    /// `starling_muc_deliveries_total`: room stanzas published to occupants.
    deliveries: IntCounter,
    /// `starling_muc_undelivered_total`: room stanzas for an occupant whose
    /// session was not found or whose node was unreachable (handed to the
    /// router's rules for an absent session).
    undelivered: IntCounter,
    /// `starling_muc_archive_total{outcome}`: room archive entries written,
    /// failed (a storage write failed: not archived), retracted
    /// (tombstoned), removed (a destroyed room's), queries answered
    /// (queried) and abandoned (the querier's session went).
    archive: IntCounterVec,
}

impl Default for MucMetrics {
    fn default() -> Self {
        MucMetrics {
            stanzas: IntCounterVec::new(
                Opts::new(
                    "starling_muc_stanzas_total",
                    "Stanzas the MUC service applied to a room, by outcome",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            deliveries: IntCounter::new(
                "starling_muc_deliveries_total",
                "Room stanzas published to occupants' sessions",
            )
            .expect("valid metric"),
            undelivered: IntCounter::new(
                "starling_muc_undelivered_total",
                "Room stanzas for occupants whose session could not be reached",
            )
            .expect("valid metric"),
            archive: IntCounterVec::new(
                Opts::new(
                    "starling_muc_archive_total",
                    "Room archive (XEP-0313) entries and queries, by outcome",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
        }
    }
}

impl MucMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = MucMetrics::default();
        registry.register(Box::new(metrics.stanzas.clone()))?;
        registry.register(Box::new(metrics.deliveries.clone()))?;
        registry.register(Box::new(metrics.undelivered.clone()))?;
        registry.register(Box::new(metrics.archive.clone()))?;
        Ok(metrics)
    }
}

/// The most rooms the service's disco#items lists (XEP-0045 section 6.3).
const MAX_LISTED_ROOMS: usize = 200;

pub struct MucService {
    settings: Settings,
    store: Arc<dyn RoomStore>,
    /// Where persistent rooms outlive the room store (the storage service).
    durable: Option<Arc<dyn MucRoomStore>>,
    registry: Arc<dyn SessionRegistry>,
    bus: Arc<dyn Bus>,
    metrics: MucMetrics,
    /// Rooms' archives (`None`: `mam.enabled` is off, no room archives).
    archive: Option<RoomArchive>,
    /// Who occupies which rooms, for `muc.max_rooms_per_user` (0: no bound).
    occupancy: Arc<dyn OccupancyIndex>,
    max_rooms_per_user: u32,
}

/// What applying one stanza left to do once the room's lease is released.
struct Applied {
    unrouted: Vec<Element>,
    refused: bool,
    archive_query: Option<ArchiveRequest>,
}

/// A room from its record and its history entries, as the store holds them.
fn room_of_record(room_jid: &str, record: &str, history: &[String]) -> ApiResult<Room> {
    let unreadable = |error: serde_json::Error| {
        ApiError::Internal(format!("room {room_jid} unreadable: {error}"))
    };
    let mut room = serde_json::from_str::<Room>(record).map_err(unreadable)?;
    // A record written before the history had a list of its own holds the
    // history: moved to the list with the room's next write.
    room.appended_history = room.history.iter().cloned().collect();
    room.history_bytes = room.history.iter().map(|entry| entry.xml.len()).sum();
    for entry in history {
        let entry = serde_json::from_str::<HistoryEntry>(entry).map_err(unreadable)?;
        room.history_bytes += entry.xml.len();
        room.history.push_back(entry);
    }
    Ok(room)
}

impl MucService {
    pub fn new(
        settings: Settings,
        store: Arc<dyn RoomStore>,
        registry: Arc<dyn SessionRegistry>,
        bus: Arc<dyn Bus>,
    ) -> Self {
        MucService {
            settings: Settings {
                archives: false,
                ..settings
            },
            store,
            durable: None,
            registry,
            bus,
            metrics: MucMetrics::default(),
            archive: None,
            occupancy: Arc::new(MemoryOccupancy::default()),
            max_rooms_per_user: 0,
        }
    }

    /// Keep rooms' archives (XEP-0313) in `archive`.
    pub fn with_archive(mut self, archive: RoomArchive) -> Self {
        self.settings.archives = true;
        self.archive = Some(archive);
        self
    }

    /// Bound the rooms one user occupies at once (`muc.max_rooms_per_user`,
    /// 0: no bound), with who occupies what in `occupancy`.
    pub fn with_room_limit(
        mut self,
        occupancy: Arc<dyn OccupancyIndex>,
        max_rooms_per_user: u32,
    ) -> Self {
        self.occupancy = occupancy;
        self.max_rooms_per_user = max_rooms_per_user;
        self
    }

    fn count_archive(&self, outcome: &str, count: usize) {
        if count > 0 {
            self.metrics
                .archive
                .with_label_values(&[outcome])
                .inc_by(count as u64);
        }
    }

    /// Keep persistent rooms in `durable` (the storage service): their
    /// configuration, affiliations and subject, read back when the room
    /// store does not have the room (docs/muc.md).
    pub fn with_durable_rooms(mut self, durable: Arc<dyn MucRoomStore>) -> Self {
        self.durable = Some(durable);
        self
    }

    pub fn with_metrics(mut self, metrics: MucMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn domain(&self) -> &str {
        &self.settings.domain
    }

    /// Apply one stanza whose `to` is at the service's domain and whose
    /// `from` the server stamped. Returns the stanzas the caller routes by
    /// its own rules: those for entities that are not occupants
    /// (invitations, errors to a non-occupant) and those whose occupant's
    /// session could not be reached.
    pub async fn handle(
        &self,
        stanza_element: &Element,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<Vec<Element>> {
        let Some(sender) = stanza_element
            .attr("from")
            .and_then(|from| from.parse::<Jid>().ok())
            .and_then(|from| from.as_full().cloned())
        else {
            tracing::debug!("muc stanza without a full from, dropped");
            self.metrics.stanzas.with_label_values(&["refused"]).inc();
            return Ok(Vec::new());
        };
        let Some(Ok(to)) = stanza_element.attr("to").map(str::parse::<Jid>) else {
            return Ok(self.refuse(stanza_element, StanzaErrorCondition::JidMalformed));
        };
        let Some(localpart) = to.node() else {
            return Ok(self.service_stanza(stanza_element, &sender).await);
        };
        if normalize_localpart(localpart).is_err() {
            return Ok(self.refuse(stanza_element, StanzaErrorCondition::JidMalformed));
        }
        let room_jid = to.bare().to_string();
        // Only a join reads the history (section 7.2.15).
        let with_history = stanza_element.name() == "presence";
        let (lease, loaded) = self.store.acquire(&room_jid, with_history).await?;
        let applied = self
            .apply(
                &lease,
                loaded,
                &room_jid,
                stanza_element,
                &sender,
                routed_at,
            )
            .await;
        self.store.release(lease).await;
        let outcome = match &applied {
            Ok(Applied { refused: true, .. }) => "refused",
            Ok(Applied { refused: false, .. }) => "accepted",
            Err(_) => "failed",
        };
        self.metrics.stanzas.with_label_values(&[outcome]).inc();
        let Applied {
            mut unrouted,
            archive_query,
            ..
        } = applied?;
        if let Some(request) = archive_query {
            unrouted.extend(
                self.run_archive_query(&room_jid, &sender, request, routed_at)
                    .await,
            );
        }
        Ok(unrouted)
    }

    async fn apply(
        &self,
        lease: &Lease,
        loaded: Loaded,
        room_jid: &str,
        stanza_element: &Element,
        sender: &FullJid,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<Applied> {
        let mut room = match &loaded.record {
            Some(record) => Some(room_of_record(room_jid, record, &loaded.history)?),
            // Not in the room store: a persistent room exists in the
            // database with no occupant (XEP-0045 section 10.1.3).
            None => self.stored_room(room_jid).await?,
        };
        if let Some(room) = room.as_mut() {
            room.last_stanza_id = loaded.last_stanza_id;
        }
        let before = room.as_ref().and_then(durable_part);
        let known = Known {
            target: self
                .archived_target(room_jid, room.as_ref(), stanza_element)
                .await?,
            at_room_limit: self
                .at_room_limit(room_jid, room.as_ref(), stanza_element, sender)
                .await?,
        };
        let occupants_before = self.users_before(stanza_element, room.as_ref());
        let mut effects = engine::handle(
            &mut room,
            room_jid,
            stanza_element,
            sender,
            SystemTime::now(),
            &self.settings,
            &known,
        );
        if effects.changed {
            self.write(lease, &loaded, &mut room, before).await?;
            if let Some(before) = &occupants_before {
                self.note_occupancy(room_jid, before, room.as_ref()).await;
            }
        }
        // Archived before the room's stanzas go out (XEP-0313 section 5.1.2:
        // what the occupants received).
        self.write_archive(room_jid, &effects).await;
        let refused = effects.refused.is_some();
        let mut unrouted = Vec::new();
        for outbound in std::mem::take(&mut effects.outbound) {
            unrouted.extend(self.deliver(outbound, routed_at).await);
        }
        Ok(Applied {
            unrouted,
            refused,
            archive_query: effects.archive_query,
        })
    }

    /// Write the changed room, before anything goes out (a replica that
    /// takes the room over sees what its occupants were told): to the room
    /// store, the record only when it changed and the messages the stanza
    /// added to the history; then, when a persistent room's durable part
    /// changed, to the database. When the database refuses, the room store
    /// gets the room back as it was and the stanza fails.
    async fn write(
        &self,
        lease: &Lease,
        loaded: &Loaded,
        room: &mut Option<Room>,
        before: Option<Durable>,
    ) -> ApiResult<()> {
        let after = room.as_ref().and_then(durable_part);
        // Revision 0: a persistent room never written to the database (one
        // from before it kept rooms) is written at its first change.
        let durable_change = after.is_some()
            && (after != before || room.as_ref().is_some_and(|room| room.revision == 0));
        if durable_change {
            if let Some(room) = room.as_mut() {
                room.revision += 1;
            }
        }
        let appended: Vec<String> = match room.as_mut() {
            Some(room) => std::mem::take(&mut room.appended_history)
                .iter()
                .map(serde_json::to_string)
                .collect::<Result<_, _>>()
                .map_err(|error| ApiError::Internal(format!("room history: {error}")))?,
            None => Vec::new(),
        };
        let record = room
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|error| ApiError::Internal(format!("room record: {error}")))?;
        let record_write = match (&record, &loaded.record) {
            (Some(new), Some(old)) if new == old => RecordWrite::Keep,
            (Some(new), _) => RecordWrite::Put(new),
            (None, _) => RecordWrite::Delete,
        };
        let last_stanza_id = room
            .as_ref()
            .map(|room| room.last_stanza_id)
            .filter(|id| *id != loaded.last_stanza_id);
        self.store
            .save(
                lease,
                record_write,
                &appended,
                last_stanza_id,
                self.history_limits(),
            )
            .await?;
        let Some(durable) = self.durable.as_ref() else {
            return Ok(());
        };
        let written = match room.as_mut() {
            Some(room) if durable_change => self.put_durable(lease, durable.as_ref(), room).await,
            // No longer persistent, or destroyed (section 10.9).
            _ if before.is_some() && after.is_none() => match parse_room(&lease.room) {
                Ok(jid) => durable.remove_muc_room(&jid).await.map(|_| ()),
                Err(error) => Err(error),
            },
            _ => Ok(()),
        };
        if let Err(error) = written {
            tracing::warn!(room = %lease.room, %error, "the room's durable change was not written, it is undone");
            let restore = match &loaded.record {
                Some(old) => RecordWrite::Put(old),
                None => RecordWrite::Delete,
            };
            if let Err(undo) = self
                .store
                .save(lease, restore, &[], None, self.history_limits())
                .await
            {
                tracing::warn!(room = %lease.room, error = %undo, "the room could not be put back");
            }
            return Err(error);
        }
        Ok(())
    }

    /// Write a persistent room to the database. When the database holds a
    /// revision as high (a write that timed out but was made, or a room
    /// written before the room store lost it), the lease holder's room is
    /// the room: once the room store confirmed the lease (a stalled
    /// replica's lapsed lease fails here, its write stays ignored), the room
    /// takes the revision after the stored one.
    async fn put_durable(
        &self,
        lease: &Lease,
        durable: &dyn MucRoomStore,
        room: &mut Room,
    ) -> ApiResult<()> {
        if durable.put_muc_room(&durable_record(room)?).await? {
            return Ok(());
        }
        let stored = durable
            .muc_room(&parse_room(&room.jid)?)
            .await?
            .map_or(0, |stored| stored.revision);
        room.revision = stored.max(room.revision) + 1;
        let record = serde_json::to_string(room)
            .map_err(|error| ApiError::Internal(format!("room record: {error}")))?;
        self.store
            .save(
                lease,
                RecordWrite::Put(&record),
                &[],
                None,
                self.history_limits(),
            )
            .await?;
        if durable.put_muc_room(&durable_record(room)?).await? {
            return Ok(());
        }
        Err(ApiError::Unavailable(format!(
            "room {} is being written by another replica",
            room.jid
        )))
    }

    /// A persistent room from the database, as its room store would hold it.
    async fn stored_room(&self, room_jid: &str) -> ApiResult<Option<Room>> {
        let Some(durable) = self.durable.as_ref() else {
            return Ok(None);
        };
        let Some(record) = durable.muc_room(&parse_room(room_jid)?).await? else {
            return Ok(None);
        };
        room_of_durable(room_jid, record).map(Some)
    }

    fn history_limits(&self) -> HistoryLimits {
        HistoryLimits {
            max_stanzas: self.settings.history_max_stanzas,
            max_bytes: self.settings.history_max_bytes,
        }
    }

    /// Publish a room stanza to its recipients' sessions, one envelope per
    /// node; what no session takes is handed back to the caller.
    async fn deliver(&self, outbound: Outbound, routed_at: Option<SystemTime>) -> Vec<Element> {
        let Outbound { stanza, recipients } = outbound;
        let lookups = recipients.iter().map(|recipient| async move {
            let session = match recipient.parse::<Jid>() {
                Ok(Jid::Full(full)) => self.registry.session(&full).await.ok().flatten(),
                _ => None,
            };
            (recipient, session)
        });
        let mut targets: Vec<(SessionRecord, Option<String>)> = Vec::new();
        let mut unrouted = Vec::new();
        for (recipient, session) in futures::future::join_all(lookups).await {
            match session {
                Some(session) => targets.push((session, Some(recipient.clone()))),
                None => unrouted.push(recipient.clone()),
            }
        }
        let shared = Arc::new(stanza);
        let unreached = deliver_to_sessions(&*self.bus, shared.clone(), &targets, routed_at).await;
        self.metrics
            .deliveries
            .inc_by((targets.len() - unreached.len()) as u64);
        unrouted.extend(unreached.iter().map(|session| session.jid.to_string()));
        unrouted
            .into_iter()
            .map(|recipient| {
                if recipient.contains('/') {
                    self.metrics.undelivered.inc();
                }
                let mut copy = (*shared).clone();
                copy.set_attr("to", recipient);
                copy
            })
            .collect()
    }

    fn refuse(&self, stanza_element: &Element, condition: StanzaErrorCondition) -> Vec<Element> {
        self.metrics.stanzas.with_label_values(&["refused"]).inc();
        stanza::error_reply(stanza_element, &StanzaError::new(condition))
            .into_iter()
            .collect()
    }

    /// Stanzas to the service itself (XEP-0045 section 6.1 and 6.3): its
    /// disco#info and the list of public rooms.
    async fn service_stanza(&self, stanza_element: &Element, sender: &FullJid) -> Vec<Element> {
        if stanza_element.name() != "iq"
            || !matches!(stanza::stanza_type(stanza_element), "get" | "set")
        {
            if stanza_element.name() == "presence" {
                return Vec::new();
            }
            return self.refuse(stanza_element, StanzaErrorCondition::ServiceUnavailable);
        }
        let payload = stanza::iq_payload(stanza_element);
        let query = match payload.map(|payload| {
            (
                payload.name(),
                payload.namespace(),
                stanza::stanza_type(stanza_element),
            )
        }) {
            Some(("query", ns::DISCO_INFO, "get")) => Some(
                Element::new("query", ns::DISCO_INFO)
                    .with_child(
                        Element::new("identity", ns::DISCO_INFO)
                            .with_attr("category", "conference")
                            .with_attr("type", "text")
                            .with_attr("name", "Chatrooms"),
                    )
                    .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", MUC))
                    .with_child(
                        Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_INFO),
                    )
                    .with_child(
                        Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_ITEMS),
                    )
                    .with_child(
                        Element::new("feature", ns::DISCO_INFO)
                            .with_attr("var", engine::OCCUPANT_ID),
                    )
                    .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::PING)),
            ),
            Some(("query", ns::DISCO_ITEMS, "get")) => match self.public_rooms().await {
                Ok(items) => Some(items),
                Err(error) => {
                    tracing::warn!(%error, "rooms unreadable for disco#items");
                    self.metrics.stanzas.with_label_values(&["failed"]).inc();
                    return stanza::error_reply(stanza_element, &error.to_stanza_error())
                        .into_iter()
                        .collect();
                }
            },
            // XEP-0199 section 4: an empty result.
            Some(("ping", ns::PING, "get")) => None,
            _ => return self.refuse(stanza_element, StanzaErrorCondition::ServiceUnavailable),
        };
        self.metrics.stanzas.with_label_values(&["accepted"]).inc();
        let mut reply = stanza::iq_result(stanza_element);
        reply.set_attr("from", self.settings.domain.clone());
        reply.set_attr("to", sender.to_string());
        if let Some(query) = query {
            reply.append_child(query);
        }
        vec![reply]
    }

    /// Section 6.3: public rooms only; hidden and locked rooms are not
    /// listed. The rooms of the room store, and the persistent rooms of the
    /// database that it does not hold (no occupant since it lost them).
    async fn public_rooms(&self) -> ApiResult<Element> {
        let mut listed = std::collections::BTreeMap::new();
        let mut held = std::collections::HashSet::new();
        for room_jid in self.store.rooms(MAX_LISTED_ROOMS).await? {
            let Some(record) = self.store.peek(&room_jid).await? else {
                continue;
            };
            let Ok(room) = serde_json::from_str::<Room>(&record) else {
                continue;
            };
            held.insert(room_jid.clone());
            if room.config.public && !room.locked {
                listed.insert(room.jid.clone(), room.config.name.clone());
            }
        }
        if let Some(durable) = &self.durable {
            let limit = u32::try_from(MAX_LISTED_ROOMS).unwrap_or(u32::MAX);
            for room in durable
                .listed_muc_rooms(&self.settings.domain, limit)
                .await?
            {
                let jid = room.jid.to_string();
                if !held.contains(&jid) {
                    listed.insert(jid, room.name);
                }
            }
        }
        let mut query = Element::new("query", ns::DISCO_ITEMS);
        for (jid, name) in listed.into_iter().take(MAX_LISTED_ROOMS) {
            let name = if name.is_empty() {
                jid.split('@').next().unwrap_or(&jid).to_string()
            } else {
                name
            };
            query.append_child(
                Element::new("item", ns::DISCO_ITEMS)
                    .with_attr("jid", jid)
                    .with_attr("name", name),
            );
        }
        Ok(query)
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
