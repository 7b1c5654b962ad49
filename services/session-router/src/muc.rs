//! Multi-user chat (XEP-0045): every stanza addressed to the MUC service's
//! domain goes to the process's [`MucService`], which applies it to its room
//! under the room's lease (any router replica serves any room, docs/muc.md).
//! What the room sends to entities that are not reachable occupants
//! (invitations, an occupant whose session is gone) goes through the
//! router's own rules, as stanzas from the server.

use std::sync::Arc;

use starling_api::Origin;
use starling_muc::MucService;
use starling_xmpp::Element;

use crate::metrics::Decision;
use crate::router::{note_decision, Routing, SessionRouter};

impl SessionRouter {
    /// Serve the MUC service's domain with `muc`.
    pub fn with_muc(mut self, muc: Arc<MucService>) -> Self {
        self.muc = Some(muc);
        self
    }

    /// Whether `domain` (normalised) is the MUC service's.
    pub(crate) fn is_muc_domain(&self, domain: &str) -> bool {
        self.muc.as_ref().is_some_and(|muc| muc.domain() == domain)
    }

    /// Hand a stanza to the MUC service; the sender gets an error when the
    /// room could not be served (its lease, Redis).
    pub(crate) async fn route_to_muc(
        &self,
        routing: &Routing<'_>,
        stanza_element: Element,
    ) -> Option<Element> {
        let muc = self.muc.as_ref()?;
        match muc.handle(&stanza_element, routing.routed_at).await {
            Ok(unrouted) => {
                note_decision("muc");
                routing.outcome.record(Decision::Server);
                for stanza in unrouted {
                    // Boxed: routing a room's stanza may come back here.
                    if let Err(error) =
                        Box::pin(self.send_reply(&Origin::Server, stanza, routing.routed_at)).await
                    {
                        tracing::warn!(%error, "a room's stanza could not be routed");
                    }
                }
                None
            }
            Err(error) => routing.failure_reply(&stanza_element, &error),
        }
    }
}
