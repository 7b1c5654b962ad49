//! The router's side of rosters (RFC 6121 section 2): the presence service
//! owns and answers them ([`starling_api::presence::ROSTER_FEATURE`]); the
//! router hands it the requests an account makes about its own roster and
//! refuses the others.

use async_trait::async_trait;
use starling_api::presence::ROSTER_FEATURE;
use starling_api::FeatureSpec;
use starling_xmpp::{Element, StanzaErrorCondition};

use crate::features::{Addressee, IqHandler, IqRequest};
use crate::router::SessionRouter;
use starling_xmpp::IqType;

/// Forwards an account's roster requests to the presence service.
pub(crate) struct Roster;

#[async_trait]
impl IqHandler for Roster {
    fn feature(&self) -> &'static FeatureSpec {
        &ROSTER_FEATURE
    }

    async fn handle(&self, router: &SessionRouter, request: IqRequest<'_>) -> Option<Element> {
        if request.payload_name() != "query" {
            return request.unsupported();
        }
        match request.addressee {
            Addressee::OwnAccount { jid, addr } => {
                let request_copy = request.iq.clone();
                let routing = request.routing;
                match router
                    .presence()
                    .roster_iq(jid, addr, request.iq, routing.routed_at)
                    .await
                {
                    Ok(()) => None,
                    Err(error) => routing.failure_reply(&request_copy, &error),
                }
            }
            // RFC 6121 section 2.3.3: only the account itself may change its
            // roster, and the server has none a client may change.
            Addressee::Server | Addressee::OtherAccount if request.iq_type == IqType::Set => {
                request
                    .routing
                    .bounce(&request.iq, StanzaErrorCondition::Forbidden)
            }
            Addressee::Server | Addressee::OtherAccount => request.unsupported(),
        }
    }
}
