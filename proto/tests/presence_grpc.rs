//! `GrpcPresenceClient` against a real tonic server backed by a recording
//! `PresenceApi` (RFC 6121 sections 2 to 4 travel as literal XML).

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;
use starling_api::{ApiError, ApiResult, PresenceApi, SessionAddr};
use starling_jid::FullJid;
use starling_proto::presence::v1 as proto;
use starling_proto::presence::v1::presence_client::PresenceClient;
use starling_proto::GrpcPresenceClient;
use starling_xmpp::{parse_element, Element, Limits};
use support::TestServer;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Outbound(FullJid, SessionAddr, String),
    Inbound(String),
    RosterIq(FullJid, SessionAddr, String),
    SessionEnded(FullJid, bool),
}

/// Records each call; a stanza with id `full` fails with LimitReached.
#[derive(Default)]
struct RecordingPresence {
    calls: Mutex<Vec<Call>>,
    /// The origin time of each outbound, inbound and roster call, in order.
    routed_at: Mutex<Vec<Option<SystemTime>>>,
}

fn refuse(stanza: &Element) -> ApiResult<()> {
    if stanza.attr("id") == Some("full") {
        return Err(ApiError::LimitReached("roster full".into()));
    }
    Ok(())
}

#[async_trait]
impl PresenceApi for RecordingPresence {
    async fn outbound_presence(
        &self,
        from: &FullJid,
        addr: &SessionAddr,
        stanza: Element,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<()> {
        refuse(&stanza)?;
        self.routed_at.lock().push(routed_at);
        self.calls
            .lock()
            .push(Call::Outbound(from.clone(), addr.clone(), stanza.to_xml()));
        Ok(())
    }

    async fn inbound_presence(
        &self,
        stanza: Element,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<()> {
        refuse(&stanza)?;
        self.routed_at.lock().push(routed_at);
        self.calls.lock().push(Call::Inbound(stanza.to_xml()));
        Ok(())
    }

    async fn roster_iq(
        &self,
        from: &FullJid,
        addr: &SessionAddr,
        stanza: Element,
        routed_at: Option<SystemTime>,
    ) -> ApiResult<()> {
        refuse(&stanza)?;
        self.routed_at.lock().push(routed_at);
        self.calls
            .lock()
            .push(Call::RosterIq(from.clone(), addr.clone(), stanza.to_xml()));
        Ok(())
    }

    async fn session_ended(&self, jid: &FullJid, was_available: bool) -> ApiResult<()> {
        self.calls
            .lock()
            .push(Call::SessionEnded(jid.clone(), was_available));
        Ok(())
    }
}

fn element(xml: &str) -> Element {
    parse_element(xml.as_bytes(), &Limits::default()).expect("stanza")
}

#[tokio::test]
async fn every_presence_call_travels_with_its_literal_xml() {
    let presence = Arc::new(RecordingPresence::default());
    let server = TestServer::start(None, None, Some(presence.clone())).await;
    let client = GrpcPresenceClient::connect(vec![server.endpoint()]).expect("client");
    let juliet: FullJid = "juliet@example.org/balcony".parse().expect("jid");
    let addr = SessionAddr {
        node: "cm2".into(),
        conn: 42,
    };

    let initial = "<presence xmlns='jabber:client' from='juliet@example.org/balcony'><show>chat</show><priority>1</priority></presence>";
    let subscribed = "<presence xmlns='jabber:client' from='romeo@example.org' to='juliet@example.org' type='subscribed'/>";
    let roster_get = "<iq xmlns='jabber:client' type='get' id='r1' from='juliet@example.org/balcony'><query xmlns='jabber:iq:roster'/></iq>";

    let routed_at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
    client
        .outbound_presence(&juliet, &addr, element(initial), Some(routed_at))
        .await
        .expect("outbound");
    client
        .inbound_presence(element(subscribed), None)
        .await
        .expect("inbound");
    client
        .roster_iq(&juliet, &addr, element(roster_get), Some(routed_at))
        .await
        .expect("roster iq");
    client
        .session_ended(&juliet, true)
        .await
        .expect("session ended");

    assert_eq!(
        presence.calls.lock().clone(),
        vec![
            Call::Outbound(juliet.clone(), addr.clone(), initial.into()),
            Call::Inbound(subscribed.into()),
            Call::RosterIq(juliet.clone(), addr.clone(), roster_get.into()),
            Call::SessionEnded(juliet.clone(), true),
        ]
    );
    // The origin time crosses gRPC with each call.
    assert_eq!(
        presence.routed_at.lock().clone(),
        vec![Some(routed_at), None, Some(routed_at)]
    );

    let refused = "<iq xmlns='jabber:client' type='set' id='full'><query xmlns='jabber:iq:roster'><item jid='nurse@example.org'/></query></iq>";
    assert_eq!(
        client
            .roster_iq(&juliet, &addr, element(refused), None)
            .await,
        Err(ApiError::LimitReached("roster full".into()))
    );
    server.stop().await;
}

#[tokio::test]
async fn server_rejects_malformed_presence_requests() {
    let presence = Arc::new(RecordingPresence::default());
    let server = TestServer::start(None, None, Some(presence.clone())).await;
    let mut raw = PresenceClient::connect(server.endpoint())
        .await
        .expect("raw client");

    let status = raw
        .inbound_presence(proto::InboundPresenceRequest {
            stanza: "<presence xmlns='jabber:client'><show>away</presence>".into(),
            routed_at_unix_micros: 0,
            trace_context: Default::default(),
        })
        .await
        .expect_err("not well-formed");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let status = raw
        .outbound_presence(proto::OutboundPresenceRequest {
            from: "juliet@example.org".into(),
            addr: None,
            stanza: "<presence xmlns='jabber:client'/>".into(),
            routed_at_unix_micros: 0,
            trace_context: Default::default(),
        })
        .await
        .expect_err("bare from");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let status = raw
        .session_ended(proto::SessionEndedRequest {
            full_jid: "@@".into(),
            was_available: false,
        })
        .await
        .expect_err("bad jid");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(presence.calls.lock().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn services_share_one_port_and_a_missing_one_is_an_error() {
    let presence = Arc::new(RecordingPresence::default());
    let storage = starling_storage::Storage::connect(&starling_storage::StorageConfig {
        url: "sqlite::memory:".into(),
        ..Default::default()
    })
    .await
    .expect("sqlite in memory");
    let server = TestServer::start(Some(Arc::new(storage)), None, Some(presence.clone())).await;
    let storage_client =
        starling_proto::GrpcStorageClient::connect(vec![server.endpoint()]).expect("client");
    let presence_client = GrpcPresenceClient::connect(vec![server.endpoint()]).expect("client");
    let juliet = "juliet@example.org".parse().expect("jid");
    assert_eq!(
        starling_api::OfflineStore::count_offline(&storage_client, &juliet)
            .await
            .expect("storage on the shared port"),
        0
    );
    presence_client
        .session_ended(&"juliet@example.org/balcony".parse().expect("jid"), false)
        .await
        .expect("presence on the shared port");
    // The router is not served here: UNIMPLEMENTED, mapped to Internal.
    let router_client =
        starling_proto::GrpcRouterClient::connect(vec![server.endpoint()]).expect("client");
    assert!(matches!(
        starling_api::RouterApi::unbind(
            &router_client,
            &"juliet@example.org/balcony".parse().expect("jid"),
            &SessionAddr {
                node: "cm1".into(),
                conn: 1
            }
        )
        .await,
        Err(ApiError::Internal(_))
    ));
    server.stop().await;
}
