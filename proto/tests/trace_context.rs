//! The trace context crosses gRPC: in the metadata of unary calls (storage
//! here; presence and the router's unary calls share the same client code)
//! and in each `RouteRequest` of the long-lived route stream, so that the
//! serving side's spans are children of the caller's span.

mod support;

use std::sync::Arc;

use async_trait::async_trait;
use starling_api::{
    AccountStore, ApiResult, BindError, Origin, RosterStore, RouterApi, SessionAddr, StorageApi,
};
use starling_jid::{BareJid, FullJid};
use starling_proto::{GrpcRouterClient, GrpcStorageClient};
use starling_storage::{Storage, StorageConfig};
use starling_telemetry::testing::{recording, SpanId};
use starling_telemetry::SPAN_TARGET;
use starling_xmpp::{parse_element, Element, Limits};
use support::TestServer;
use tracing::Instrument;

/// A router whose `route` makes a span named after the stanza's id, as the
/// session-router's `router.route` span is made.
struct SpanningRouter;

#[async_trait]
impl RouterApi for SpanningRouter {
    async fn bind(
        &self,
        user: &BareJid,
        _requested: Option<&str>,
        _addr: &SessionAddr,
    ) -> Result<FullJid, BindError> {
        Ok(user.with_resource("r").expect("resource"))
    }

    async fn unbind(&self, _jid: &FullJid, _addr: &SessionAddr) -> ApiResult<()> {
        Ok(())
    }

    async fn route(
        &self,
        _origin: Origin,
        stanza: Element,
        _routed_at: Option<std::time::SystemTime>,
    ) -> ApiResult<()> {
        let id = stanza.attr("id").unwrap_or_default().to_string();
        async {}
            .instrument(tracing::info_span!(target: SPAN_TARGET, "test.routed", id = %id))
            .await;
        Ok(())
    }

    async fn undeliverable(&self, _stanza: Element, _failed: &SessionAddr) -> ApiResult<()> {
        Ok(())
    }
}

fn message(id: &str) -> Element {
    let xml = format!("<message xmlns='jabber:client' to='b@example.org' id='{id}'/>");
    parse_element(xml.as_bytes(), &Limits::default()).expect("stanza")
}

fn attribute(span: &starling_telemetry::testing::SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|attribute| attribute.key.as_str() == key)
        .map(|attribute| attribute.value.to_string())
}

// One thread: the server's tasks see the test's subscriber too.
#[tokio::test(flavor = "current_thread")]
async fn a_unary_call_carries_the_callers_context_in_its_metadata() {
    let (recorded, subscriber) = recording();
    let _default = tracing::subscriber::set_default(subscriber);
    let config = StorageConfig {
        url: "sqlite::memory:".into(),
        ..Default::default()
    };
    let storage: Arc<dyn StorageApi> =
        Arc::new(Storage::connect(&config).await.expect("sqlite in memory"));
    let server = TestServer::start(Some(storage), None, None).await;
    let client = GrpcStorageClient::connect(vec![server.endpoint()]).expect("client");
    let user: BareJid = "juliet@example.com".parse().unwrap();

    let caller = tracing::info_span!(target: SPAN_TARGET, "test.caller");
    client
        .credentials(&user)
        .instrument(caller.clone())
        .await
        .expect("credentials");
    drop(caller);
    // A call outside any span starts no trace of the earlier caller's.
    client.roster(&user).await.expect("roster");
    server.stop().await;

    let caller = recorded.span("test.caller");
    let served = recorded.span("storage.credentials");
    assert_eq!(served.parent_span_id, caller.span_context.span_id());
    assert_eq!(
        served.span_context.trace_id(),
        caller.span_context.trace_id()
    );
    assert_eq!(attribute(&served, "db.system").as_deref(), Some("sqlite"));
    let unparented = recorded.span("storage.roster");
    assert_eq!(unparented.parent_span_id, SpanId::INVALID);
    assert_ne!(
        unparented.span_context.trace_id(),
        caller.span_context.trace_id()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn each_stanza_on_the_route_stream_carries_its_own_context() {
    let (recorded, subscriber) = recording();
    let _default = tracing::subscriber::set_default(subscriber);
    let server = TestServer::start(None, Some(Arc::new(SpanningRouter)), None).await;
    let client = GrpcRouterClient::connect(vec![server.endpoint()]).expect("client");
    let origin = Origin::Session {
        jid: "romeo@example.org/phone".parse().unwrap(),
        addr: SessionAddr {
            node: "cm1".into(),
            conn: 1,
        },
    };
    // Two stanzas of one session: one stream, two traces.
    for id in ["first", "second"] {
        let sender = tracing::info_span!(target: SPAN_TARGET, "test.sender", id);
        client
            .route(origin.clone(), message(id), None)
            .instrument(sender)
            .await
            .expect("routed");
    }
    server.stop().await;

    let spans = recorded.spans();
    let named = |name: &str, id: &str| {
        spans
            .iter()
            .find(|span| span.name == name && attribute(span, "id").as_deref() == Some(id))
            .unwrap_or_else(|| panic!("no {name} {id}"))
            .clone()
    };
    let (first_sender, second_sender) = (
        named("test.sender", "first"),
        named("test.sender", "second"),
    );
    assert_ne!(
        first_sender.span_context.trace_id(),
        second_sender.span_context.trace_id()
    );
    for (sender, id) in [(first_sender, "first"), (second_sender, "second")] {
        let routed = named("test.routed", id);
        assert_eq!(routed.parent_span_id, sender.span_context.span_id(), "{id}");
        assert_eq!(
            routed.span_context.trace_id(),
            sender.span_context.trace_id()
        );
    }
}
