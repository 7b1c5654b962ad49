//! Logs and traces of `starling serve`: the `tracing` subscriber with its log
//! output, and, when `telemetry.otlp_endpoint` is set, the OpenTelemetry
//! layer that exports the spans over OTLP/gRPC (docs/operations.md "Traces").
//!
//! The spans meant for export have the target [`SPAN_TARGET`]. The log
//! output never shows that target, and without an endpoint nothing else
//! listens to it: its callsites are disabled once, when first registered, and
//! each span macro is then one cached-interest check that builds no span.
//! Propagation is off as well ([`starling_telemetry::is_enabled`]), so no
//! `traceparent` is formatted or sent.

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use starling_telemetry::SPAN_TARGET;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::Config;

/// How long the last spans may take to leave at shutdown.
const SHUTDOWN_FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// The running trace export, if any; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Export what the batch processor still holds and stop it, for at most
    /// a few seconds (the collector may be gone).
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The processor's shutdown blocks until its worker thread has exported.
        let flushed = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(SHUTDOWN_FLUSH_DEADLINE)
        });
        match tokio::time::timeout(SHUTDOWN_FLUSH_DEADLINE + Duration::from_secs(1), flushed).await
        {
            Ok(Ok(Ok(()))) => tracing::debug!("trace export flushed"),
            Ok(Ok(Err(error))) => tracing::warn!(%error, "flushing the last spans failed"),
            Ok(Err(error)) => tracing::warn!(%error, "flushing the last spans failed"),
            Err(_) => tracing::warn!("flushing the last spans timed out"),
        }
    }
}

/// The `service.name` of this process: configured, or `starling-<target>`.
pub fn service_name(config: &Config, target: &str) -> String {
    if config.telemetry.service_name.is_empty() {
        format!("starling-{target}")
    } else {
        config.telemetry.service_name.clone()
    }
}

/// The span exporter's provider: OTLP/gRPC to `telemetry.otlp_endpoint`,
/// batched, sampled parent-based with `telemetry.sample_ratio` for new traces.
fn tracer_provider(
    config: &Config,
    target: &str,
    node_id: &str,
) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(config.telemetry.otlp_endpoint.clone())
        .build()
        .context("cannot build the OTLP exporter (telemetry.otlp_endpoint)")?;
    let resource = Resource::builder()
        .with_service_name(service_name(config, target))
        .with_attributes([
            KeyValue::new("service.instance.id", node_id.to_string()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.telemetry.sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}

/// The log output's filter: `RUST_LOG` or `log.level`, never the export-only spans.
fn log_filter(config: &Config) -> EnvFilter {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    match format!("{SPAN_TARGET}=off").parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

/// The subscriber: log output, and the span export when `provider` is set.
/// (Without a provider there is no export layer at all: an absent `Option`
/// layer would count as one that wants every span, enabling them all.)
fn subscriber(
    config: &Config,
    provider: Option<&SdkTracerProvider>,
) -> Box<dyn tracing::Subscriber + Send + Sync> {
    let log_output = if config.log.format == "json" {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    let logging = tracing_subscriber::registry().with(log_output.with_filter(log_filter(config)));
    match provider {
        None => Box::new(logging),
        Some(provider) => Box::new(
            logging.with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("starling"))
                    // No per-poll timing or thread attributes: less work per span.
                    .with_tracked_inactivity(false)
                    .with_threads(false)
                    .with_filter(Targets::new().with_target(SPAN_TARGET, tracing::Level::TRACE)),
            ),
        ),
    }
}

/// Install the process's subscriber. Call once, inside the runtime (the
/// exporter's gRPC channel lives on it).
pub fn init(config: &Config, target: &str, node_id: &str) -> Telemetry {
    let provider = if config.telemetry.otlp_endpoint.is_empty() {
        None
    } else {
        match tracer_provider(config, target, node_id) {
            Ok(provider) => Some(provider),
            Err(error) => {
                eprintln!("starling: traces disabled: {error:#}");
                None
            }
        }
    };
    if let Err(error) = subscriber(config, provider.as_ref()).try_init() {
        eprintln!("starling: logging already initialised: {error}");
        return Telemetry { provider: None };
    }
    if provider.is_some() {
        starling_telemetry::enable();
        tracing::info!(
            endpoint = %config.telemetry.otlp_endpoint,
            sample_ratio = config.telemetry.sample_ratio,
            service = %service_name(config, target),
            "exporting traces over otlp"
        );
    }
    Telemetry { provider }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export_span() -> tracing::Span {
        tracing::info_span!(target: SPAN_TARGET, "test.span")
    }

    /// Run `check` under `subscriber` alone. Callsite interest is cached
    /// process-wide across every live dispatcher: tests that install
    /// different subscribers at once would see each other's interest (a
    /// single process-wide subscriber, as `starling serve` has, never does).
    fn with_only(subscriber: impl Into<tracing::Dispatch>, check: impl FnOnce()) {
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _alone = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        tracing::dispatcher::with_default(&subscriber.into(), || {
            tracing::callsite::rebuild_interest_cache();
            check();
        });
    }

    #[test]
    fn without_an_endpoint_export_spans_are_never_built() {
        let config = Config::default();
        with_only(subscriber(&config, None), || {
            assert!(export_span().is_disabled());
            // Ordinary logging is untouched.
            assert!(tracing::enabled!(tracing::Level::INFO));
        });
        // Not even with everything logged.
        let mut config = Config::default();
        config.log.level = "trace".into();
        with_only(subscriber(&config, None), || {
            assert!(export_span().is_disabled());
        });
    }

    #[test]
    fn with_an_exporter_export_spans_are_built() {
        let provider = SdkTracerProvider::builder().build();
        let config = Config::default();
        with_only(subscriber(&config, Some(&provider)), || {
            assert!(!export_span().is_disabled());
            // Below the log level, other spans stay off.
            assert!(tracing::debug_span!("test.log_span").is_disabled());
        });
    }

    /// What tracing costs a stanza when it is off: the four spans a routed
    /// stanza meets (connection-manager, router, bus, delivery) and four
    /// context captures, next to four `trace!` events that the log filter
    /// disables (what any disabled `tracing` call costs). Prints; run with
    /// `cargo test -p starling-server hot_path -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn hot_path_cost_when_off() {
        use std::hint::black_box;
        use std::time::Instant;

        const ROUNDS: u32 = 1_000_000;
        let per_round = |start: Instant| start.elapsed().as_nanos() as f64 / f64::from(ROUNDS);
        let config = Config::default();
        with_only(subscriber(&config, None), || {
            let start = Instant::now();
            for round in 0..ROUNDS {
                for hop in ["route", "router", "publish", "deliver"] {
                    tracing::trace!(hop, round, "disabled event");
                }
            }
            let disabled_events = per_round(start);
            let start = Instant::now();
            for round in 0..ROUNDS {
                for hop in ["route", "router", "publish", "deliver"] {
                    let span = tracing::info_span!(target: SPAN_TARGET, "test.hop", hop, round);
                    black_box(span.is_disabled());
                }
            }
            let spans = per_round(start);
            let start = Instant::now();
            for _ in 0..ROUNDS {
                for _ in 0..4 {
                    black_box(starling_telemetry::TraceContext::current());
                }
            }
            let captures = per_round(start);
            println!(
                "per stanza with tracing off: 4 spans {spans:.1} ns, 4 context captures {captures:.1} ns; \
                 4 disabled trace! events {disabled_events:.1} ns"
            );
        });
    }

    #[test]
    fn service_name_defaults_to_the_target() {
        let mut config = Config::default();
        assert_eq!(
            service_name(&config, "connection-manager"),
            "starling-connection-manager"
        );
        config.telemetry.service_name = "edge".into();
        assert_eq!(service_name(&config, "connection-manager"), "edge");
    }
}
