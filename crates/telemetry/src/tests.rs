use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use tracing::Instrument;

use super::*;
use crate::testing::{recording, SpanData, SpanId};

fn span_named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|span| span.name == name)
        .unwrap_or_else(|| panic!("no span {name} in {spans:?}"))
}

#[test]
fn a_context_handed_over_makes_the_receiver_a_child() {
    let (recorded, subscriber) = recording();
    let carried = tracing::subscriber::with_default(subscriber, || {
        let sender = tracing::info_span!(target: SPAN_TARGET, "test.send");
        let carried = sender.in_scope(TraceContext::current);
        assert_eq!(carried, TraceContext::of(&sender));
        // What a bus envelope or a route request carries is a plain map.
        let received = TraceContext::from_map(carried.clone().into_map());
        let receiver = tracing::info_span!(target: SPAN_TARGET, "test.receive");
        received.set_parent_of(&receiver);
        receiver.in_scope(|| {});
        carried
    });
    let spans = recorded.spans();
    let (sender, receiver) = (
        span_named(&spans, "test.send"),
        span_named(&spans, "test.receive"),
    );
    assert_eq!(receiver.parent_span_id, sender.span_context.span_id());
    assert_eq!(
        receiver.span_context.trace_id(),
        sender.span_context.trace_id()
    );
    let traceparent = carried.get(TRACEPARENT).expect("traceparent");
    // version-traceid-parentid-flags, sampled (W3C Trace Context section 3.2).
    assert_eq!(
        traceparent,
        format!(
            "00-{}-{}-01",
            sender.span_context.trace_id(),
            sender.span_context.span_id()
        )
    );
}

#[test]
fn without_a_valid_parent_the_receiver_starts_a_trace() {
    let (recorded, subscriber) = recording();
    tracing::subscriber::with_default(subscriber, || {
        assert!(TraceContext::current().is_empty(), "no span, no context");
        for (index, received) in [
            TraceContext::empty(),
            TraceContext::from_map(HashMap::from([(
                TRACEPARENT.to_string(),
                "00-not-a-trace-01".to_string(),
            )])),
        ]
        .into_iter()
        .enumerate()
        {
            let span = tracing::info_span!(target: SPAN_TARGET, "test.root", index);
            received.set_parent_of(&span);
            span.in_scope(|| {});
        }
    });
    let spans = recorded.spans();
    assert_eq!(spans.len(), 2);
    for span in &spans {
        assert_eq!(span.parent_span_id, SpanId::INVALID, "{span:?}");
    }
}

#[test]
fn the_trace_state_travels_too() {
    let (_recorded, subscriber) = recording();
    tracing::subscriber::with_default(subscriber, || {
        let upstream = TraceContext::from_map(HashMap::from([
            (
                TRACEPARENT.to_string(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string(),
            ),
            (TRACESTATE.to_string(), "vendor=opaque".to_string()),
        ]));
        let span = tracing::info_span!(target: SPAN_TARGET, "test.hop");
        upstream.set_parent_of(&span);
        let forwarded = TraceContext::of(&span);
        assert!(forwarded
            .get(TRACEPARENT)
            .unwrap()
            .starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert_eq!(forwarded.get(TRACESTATE), Some("vendor=opaque"));
    });
}

async fn callee() {
    // Created when called, before the first poll, like an `async_trait` method's span.
    let span = tracing::info_span!(target: SPAN_TARGET, "test.callee");
    async {}.instrument(span).await
}

#[tokio::test(flavor = "current_thread")]
async fn a_remote_parent_covers_spans_made_when_called_and_when_polled() {
    let (recorded, subscriber) = recording();
    let _default = tracing::subscriber::set_default(subscriber);
    let caller = tracing::info_span!(target: SPAN_TARGET, "test.caller");
    let carried = TraceContext::of(&caller);
    with_remote_parent(&carried, callee).await;
    with_remote_parent(&carried, || async { callee().await }).await;
    drop(caller);
    let spans = recorded.spans();
    let caller = span_named(&spans, "test.caller");
    let callees: Vec<&SpanData> = spans
        .iter()
        .filter(|span| span.name == "test.callee")
        .collect();
    assert_eq!(callees.len(), 2);
    for callee in callees {
        assert_eq!(callee.parent_span_id, caller.span_context.span_id());
    }
}

/// A gRPC handler: makes a span, as the service implementations do.
#[derive(Clone)]
struct Handler;

impl tower_service::Service<http::Request<()>> for Handler {
    type Response = ();
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<(), Infallible>>>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        Box::pin(async {
            callee().await;
            Ok(())
        })
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_grpc_server_layer_parents_the_handler_on_the_metadata() {
    use tower_layer::Layer;
    use tower_service::Service;

    let (recorded, subscriber) = recording();
    let _default = tracing::subscriber::set_default(subscriber);
    let client = tracing::info_span!(target: SPAN_TARGET, "test.client");
    let mut request = http::Request::new(());
    for (key, value) in TraceContext::of(&client).iter() {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(key.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    let mut service = grpc::RemoteParentLayer.layer(Handler);
    service.call(request).await.unwrap();
    service.call(http::Request::new(())).await.unwrap();
    drop(client);
    let spans = recorded.spans();
    let client = span_named(&spans, "test.client");
    let parents: Vec<SpanId> = spans
        .iter()
        .filter(|span| span.name == "test.callee")
        .map(|span| span.parent_span_id)
        .collect();
    assert_eq!(
        parents,
        vec![client.span_context.span_id(), SpanId::INVALID]
    );
}

#[test]
fn without_the_exporting_layer_nothing_is_carried() {
    enable();
    let subscriber = tracing_subscriber::registry();
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!(target: SPAN_TARGET, "test.unexported");
        assert!(span.in_scope(TraceContext::current).is_empty());
        assert!(TraceContext::of(&span).is_empty());
    });
}
