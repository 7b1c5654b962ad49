//! The contracts between Starling's four services.
//!
//! Each trait here has a direct in-process implementation (used by
//! `starling serve`) and, in the cluster, a gRPC client or a Redis-backed one.
//! No feature may exist only behind one of them: services are written against
//! these traits alone.

pub mod archive;
pub mod blocking;
pub mod error;
pub mod feature;
pub mod last_activity;
pub mod mam;
pub mod muc;
pub mod origin_time;
pub mod pep;
pub mod presence;
pub mod push;
pub mod registry;
pub mod resumption;
pub mod router;
pub mod s2s;
pub mod storage;
pub mod upload;

pub use archive::{
    ArchiveDefault, ArchiveEntry, ArchiveId, ArchivePage, ArchivePrefs, ArchiveQuery, ArchiveStore,
    ArchivedMessage, PageStart, RoomArchiveStore, ARCHIVE_ID_NODE_BITS,
};
pub use blocking::{AbuseReport, BlockedItem, BlockingStore};
pub use error::{ApiError, ApiResult};
pub use feature::{FeatureSpec, Features, StreamFeature, StreamStage};
pub use muc::{ListedMucRoom, MucAffiliation, MucRoomRecord, MucRoomStore, MUC_AFFILIATIONS};
pub use pep::{
    roster_groups, AccessModel, CapsRecord, MaxItems, PepConfigPatch, PepItem, PepLimits, PepNode,
    PepNodeConfig, PepPublish, PepPublishOutcome, PepStore, PepSubscribedNode, PepSubscription,
    PepSubscriptionState, SendLastPublished,
};
pub use presence::PresenceApi;
pub use push::{PushRegistration, PushStore};
pub use registry::{BindOutcome, ConnId, NodeId, SessionAddr, SessionRecord, SessionRegistry};
pub use resumption::{ResumptionStore, DETACHED_NODE};
pub use router::{
    BindError, Origin, RouterApi, COMPONENT_RESOURCE, S2S_OUTBOUND_CONN, S2S_RESOURCE_PREFIX,
};
pub use s2s::S2sStreamInfo;
pub use storage::{
    AccountDataStore, AccountStore, FastTokenRecord, FastTokenStore, OfflinePage, OfflineStore,
    RosterItem, RosterStore, ScramCredentials, StorageApi, StoredCredentials, Subscription,
    SubscriptionEntry,
};
pub use upload::{UploadQuota, UploadSlotGrant, UploadSlotRecord, UploadStore};
