//! Trace context across Starling's processes (DESIGN.md "Operating it":
//! OpenTelemetry traces whose context crosses gRPC and the bus).
//!
//! Spans are ordinary `tracing` spans with the target [`SPAN_TARGET`]; the
//! process that exports them (`starling serve` with `telemetry.otlp_endpoint`
//! set) turns them into OpenTelemetry spans with `tracing-opentelemetry` and
//! calls [`enable`]. Between processes the context travels as a W3C Trace
//! Context (`traceparent`, `tracestate`; <https://www.w3.org/TR/trace-context/>)
//! in a [`TraceContext`]: in gRPC metadata for unary calls ([`grpc`]), in the
//! `trace_context` map of each `RouteRequest` on the long-lived route stream,
//! and in the `trace_context` map of each bus envelope.
//!
//! When tracing is off (the default) nothing here allocates: the spans'
//! callsites are disabled by the log filter, [`TraceContext::current`] returns
//! an empty map without looking at the span, and [`with_remote_parent`] passes
//! the future through.

pub mod grpc;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every span meant for export. The log output
/// leaves this target out, so that spans cost nothing unless traces are on.
/// (`#[tracing::instrument]` needs a literal: it spells the same string.)
pub const SPAN_TARGET: &str = "starling_trace";

/// The W3C Trace Context header and map keys.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

static PROPAGATION_ENABLED: AtomicBool = AtomicBool::new(false);

/// Turn propagation on: called once the OpenTelemetry layer is installed.
pub fn enable() {
    PROPAGATION_ENABLED.store(true, Ordering::Release);
}

/// Whether trace context is captured and propagated in this process.
pub fn is_enabled() -> bool {
    PROPAGATION_ENABLED.load(Ordering::Acquire)
}

/// A W3C trace context as string pairs (`traceparent`, and `tracestate`
/// when there is one): the carrier in gRPC metadata, route requests and bus
/// envelopes. Empty when tracing is off. (A list, not a map: at most two
/// entries, and an empty one costs nothing to make, unlike a `HashMap`.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    entries: Vec<(String, String)>,
}

impl TraceContext {
    /// An empty context (no parent).
    pub fn empty() -> Self {
        TraceContext::default()
    }

    /// The context of the current `tracing` span, to hand to another
    /// process or task. Empty when tracing is off.
    pub fn current() -> Self {
        if !is_enabled() {
            return TraceContext::empty();
        }
        Self::of_otel(&tracing::Span::current().context())
    }

    /// The context of `span`. Empty when tracing is off or `span` is disabled.
    pub fn of(span: &tracing::Span) -> Self {
        if !is_enabled() || span.is_disabled() {
            return TraceContext::empty();
        }
        Self::of_otel(&span.context())
    }

    fn of_otel(context: &Context) -> Self {
        if !context.span().span_context().is_valid() {
            return TraceContext::empty();
        }
        let mut map = HashMap::new();
        TraceContextPropagator::new().inject_context(context, &mut map);
        Self::from_map(map)
    }

    /// From a received map (a protobuf `map<string, string>`).
    pub fn from_map(map: HashMap<String, String>) -> Self {
        let mut entries: Vec<(String, String)> = map.into_iter().collect();
        entries.sort();
        TraceContext { entries }
    }

    /// From a received carrier: gRPC metadata or HTTP headers.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        if !is_enabled() {
            return TraceContext::empty();
        }
        let entries = [TRACEPARENT, TRACESTATE]
            .into_iter()
            .filter_map(|key| {
                let value = headers.get(key)?.to_str().ok()?;
                Some((key.to_string(), value.to_string()))
            })
            .collect();
        TraceContext { entries }
    }

    /// Into a protobuf `map<string, string>`.
    pub fn into_map(self) -> HashMap<String, String> {
        self.entries.into_iter().collect()
    }

    /// The entries, for a carrier such as gRPC metadata.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(entry_key, _)| entry_key == key)
            .map(|(_, value)| value.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The OpenTelemetry context it describes; `None` when it has no valid
    /// `traceparent` (absent or malformed: the receiver starts a new trace).
    fn otel_context(&self) -> Option<Context> {
        if self.entries.is_empty() || !is_enabled() {
            return None;
        }
        let carrier: HashMap<String, String> = self.entries.iter().cloned().collect();
        let context = TraceContextPropagator::new().extract(&carrier);
        context.span().span_context().is_valid().then_some(context)
    }

    /// Make this context the parent of `span` (a span on the receiving side
    /// of a process boundary). Call before the span is first entered.
    pub fn set_parent_of(&self, span: &tracing::Span) {
        if span.is_disabled() {
            return;
        }
        if let Some(context) = self.otel_context() {
            // Fails only when the span was already started or the layer is
            // missing; the span then stays a root, which is all we can do.
            let _ = span.set_parent(context);
        }
    }
}

/// Run `make()` and the future it returns with `parent` as the current
/// OpenTelemetry context, so that the spans the callee creates (eagerly when
/// called, or when first polled) are children of the remote `parent`. When
/// tracing is off or `parent` is empty the future runs as it is.
pub fn with_remote_parent<F: Future>(
    parent: &TraceContext,
    make: impl FnOnce() -> F,
) -> WithRemoteParent<F> {
    let context = parent.otel_context();
    let inner = match &context {
        Some(context) => {
            let _attached = context.clone().attach();
            make()
        }
        None => make(),
    };
    WithRemoteParent { inner, context }
}

pin_project_lite::pin_project! {
    /// The future of [`with_remote_parent`].
    pub struct WithRemoteParent<F> {
        #[pin]
        inner: F,
        context: Option<Context>,
    }
}

impl<F: Future> Future for WithRemoteParent<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _attached = this
            .context
            .as_ref()
            .map(|context| context.clone().attach());
        this.inner.poll(task)
    }
}

#[cfg(test)]
mod tests;
