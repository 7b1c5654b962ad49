//! For tests of the crates that create spans: a subscriber that exports
//! every span to memory, as `starling serve` exports them over OTLP.

use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;

pub use opentelemetry::trace::SpanId;
pub use opentelemetry_sdk::trace::SpanData;

/// The exported spans of a [`recording`] subscriber.
pub struct Recording {
    exporter: InMemorySpanExporter,
    // Kept alive: shutting the provider down would empty the exporter.
    _provider: SdkTracerProvider,
}

impl Recording {
    /// Every span ended so far.
    pub fn spans(&self) -> Vec<SpanData> {
        self.exporter
            .get_finished_spans()
            .expect("the in-memory exporter answers")
    }

    /// The one ended span called `name`; panics listing the spans otherwise.
    pub fn span(&self, name: &str) -> SpanData {
        let spans = self.spans();
        let mut named = spans.iter().filter(|span| span.name == name);
        match (named.next(), named.next()) {
            (Some(span), None) => span.clone(),
            _ => panic!(
                "expected one span {name}, got: {:?}",
                spans.iter().map(|span| &span.name).collect::<Vec<_>>()
            ),
        }
    }
}

/// A subscriber that records every span (propagation is turned on), and
/// the handle to read them back. Install it with `tracing::subscriber::set_default`.
pub fn recording() -> (Recording, impl tracing::Subscriber + Send + Sync) {
    crate::enable();
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    (
        Recording {
            exporter,
            _provider: provider,
        },
        subscriber,
    )
}
