//! What the node's s2s side shares (`Shared::s2s`): the connector and the
//! outbound links by remote domain.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::connect::Connector;
use crate::config::S2sSettings;

/// What the node's s2s side shares.
pub(crate) struct S2s {
    pub connector: Connector,
    pub links: Mutex<HashMap<String, Link>>,
    pub next_link: std::sync::atomic::AtomicU64,
}

impl S2s {
    pub(crate) fn settings(&self) -> &S2sSettings {
        &self.connector.settings
    }
}

/// The sending end of a remote domain's task (`super::outbound`).
pub(crate) struct Link {
    pub generation: u64,
    pub tx: tokio::sync::mpsc::Sender<starling_xmpp::Element>,
}
