//! The MUC service: a stanza addressed to the service or to a room goes
//! through [`MucService::handle`]: the room's lease is taken, the room
//! loaded, the engine applied, the room written back, the room's stanzas
//! delivered (one bus publish per connection-manager), the lease released.

use std::sync::Arc;
use std::time::SystemTime;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use starling_api::{ApiError, ApiResult, SessionRecord, SessionRegistry};
use starling_bus::{deliver_to_sessions, Bus};
use starling_jid::{normalize_localpart, FullJid, Jid};
use starling_xmpp::{ns, stanza, Element, StanzaError, StanzaErrorCondition};

use crate::engine::{self, ArchiveRequest, Known, Outbound, Settings, MUC};
use crate::occupancy::{MemoryOccupancy, OccupancyIndex};
use crate::state::Room;
use crate::store::RoomStore;

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
    pub fn with_room_limit(mut self, occupancy: Arc<dyn OccupancyIndex>, max_rooms_per_user: u32) -> Self {
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
        let lease = self.store.acquire(&room_jid).await?;
        let applied = self
            .apply(&lease, &room_jid, stanza_element, &sender, routed_at)
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
        lease: &crate::store::Lease,
        room_jid: &str,
        stanza_element: &Element,
        sender: &FullJid,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<Applied> {
        let mut room = match self.store.load(lease).await? {
            Some(record) => Some(serde_json::from_str::<Room>(&record).map_err(|error| {
                ApiError::Internal(format!("room {room_jid} unreadable: {error}"))
            })?),
            None => None,
        };
        let known = Known {
            target: self
                .archived_target(room_jid, room.as_ref(), stanza_element)
                .await?,
            at_room_limit: self
                .at_room_limit(room_jid, room.as_ref(), stanza_element, sender)
                .await?,
        };
        let occupants_before = bounds::users(room.as_ref());
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
            // Written before anything goes out: a replica that takes the
            // room over sees what its occupants were told.
            let record = room
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|error| ApiError::Internal(format!("room {room_jid}: {error}")))?;
            self.store.save(lease, record.as_deref()).await?;
            self.note_occupancy(room_jid, &occupants_before, room.as_ref())
                .await;
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

    /// Section 6.3: public rooms only; hidden and locked rooms are not listed.
    async fn public_rooms(&self) -> ApiResult<Element> {
        let mut query = Element::new("query", ns::DISCO_ITEMS);
        for room_jid in self.store.rooms(MAX_LISTED_ROOMS).await? {
            let Some(record) = self.store.peek(&room_jid).await? else {
                continue;
            };
            let Ok(room) = serde_json::from_str::<Room>(&record) else {
                continue;
            };
            if room.config.public && !room.locked {
                let name = if room.config.name.is_empty() {
                    room.localpart().to_string()
                } else {
                    room.config.name.clone()
                };
                query.append_child(
                    Element::new("item", ns::DISCO_ITEMS)
                        .with_attr("jid", room.jid.clone())
                        .with_attr("name", name),
                );
            }
        }
        Ok(query)
    }
}
