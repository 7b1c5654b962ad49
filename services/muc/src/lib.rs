//! Multi-user chat (XEP-0045): rooms at the `muc.domain` service, served
//! by every session-router replica. The room engine ([`engine`]) is pure:
//! a room's state and one stanza in, the new state and the room's stanzas
//! out. The service ([`MucService`]) applies each stanza under the room's
//! lease, with the room's record in a [`RoomStore`] (in the process for
//! `starling serve`, in Redis for the cluster), so that any replica takes
//! over the rooms of one that died without an occupant leaving; a persistent
//! room's configuration and affiliations are also kept in the database
//! ([`durable`], through the storage service). See docs/muc.md.

pub mod durable;
pub mod engine;
pub mod form;
pub mod occupancy;
pub mod service;
pub mod state;
pub mod store;

pub use engine::{valid_nick, Settings};
pub use occupancy::{MemoryOccupancy, OccupancyIndex, RedisOccupancy};
pub use service::{MucMetrics, MucService, RoomArchive};
pub use store::{HistoryLimits, Loaded, MemoryRoomStore, RecordWrite, RedisRoomStore, RoomStore};
