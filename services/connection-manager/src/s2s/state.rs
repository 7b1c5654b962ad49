//! What the node's s2s side shares (`Shared::s2s`): the connector, the
//! listeners' TLS acceptors, the outbound links by remote domain, and the
//! table of open streams by remote domain, which is the admin API's view
//! (`starling_api::S2sStreamInfo`), the per-domain metrics and the
//! per-domain rate limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use prometheus::IntCounter;
use starling_api::S2sStreamInfo;
use tokio_rustls::TlsAcceptor;

use super::connect::Connector;
use super::tls::{S2sTls, ALPN_XMPP_SERVER};
use crate::config::S2sSettings;
use crate::error::CmError;
use crate::limits::TokenBucket;
use crate::metrics::S2sMetrics;

/// The domain label of the streams of the domains past
/// `s2s.metrics_domains` in the per-domain metrics.
pub(crate) const OTHER_DOMAINS_LABEL: &str = "_other";

/// What the node's s2s side shares.
pub(crate) struct S2s {
    pub connector: Connector,
    pub certificates: Arc<S2sTls>,
    /// The inbound acceptors: after STARTTLS, and on the direct TLS
    /// listener (ALPN `xmpp-server`, XEP-0368); both ask for an optional
    /// client certificate (SASL EXTERNAL, XEP-0178).
    pub starttls: TlsAcceptor,
    pub direct_tls: TlsAcceptor,
    pub links: Mutex<HashMap<String, Link>>,
    pub next_link: AtomicU64,
    pub streams: StreamTable,
}

impl S2s {
    pub(crate) fn new(
        connector: Connector,
        certificates: Arc<S2sTls>,
        metrics: S2sMetrics,
    ) -> Result<Self, CmError> {
        let starttls = TlsAcceptor::from(certificates.server_config(None)?);
        let direct_tls = TlsAcceptor::from(certificates.server_config(Some(ALPN_XMPP_SERVER))?);
        let streams = StreamTable::new(
            metrics,
            connector.settings.metrics_domains,
            connector.settings.max_stanzas_per_sec,
        );
        Ok(S2s {
            connector,
            certificates,
            starttls,
            direct_tls,
            links: Mutex::new(HashMap::new()),
            next_link: AtomicU64::new(1),
            streams,
        })
    }

    pub(crate) fn settings(&self) -> &S2sSettings {
        &self.connector.settings
    }

    /// The open streams, for the admin API: one row per remote domain and
    /// stream (an inbound stream with several authenticated domains has a
    /// row for each), ordered by domain.
    pub(crate) fn stream_views(&self, node: &str) -> Vec<S2sStreamInfo> {
        let entries: Vec<Arc<StreamEntry>> = self
            .streams
            .inner
            .lock()
            .streams
            .values()
            .cloned()
            .collect();
        let links = self.links.lock();
        let mut views: Vec<S2sStreamInfo> = entries
            .iter()
            .map(|entry| {
                let queued = match entry.direction {
                    Direction::Out => links
                        .get(&entry.domain)
                        .map(|link| link.tx.max_capacity() - link.tx.capacity())
                        .unwrap_or(0),
                    Direction::In => 0,
                };
                S2sStreamInfo {
                    node: node.to_string(),
                    domain: entry.domain.clone(),
                    direction: entry.direction.as_str().to_string(),
                    authentication: entry.authentication.to_string(),
                    tls: entry.tls,
                    stanzas_in: entry.stanzas_in.load(Ordering::Relaxed),
                    stanzas_out: entry.stanzas_out.load(Ordering::Relaxed),
                    queued: queued as u64,
                    since_unix_ms: entry
                        .since
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|since| since.as_millis() as u64)
                        .unwrap_or(0),
                }
            })
            .collect();
        views.sort_by(|a, b| (&a.domain, &a.direction).cmp(&(&b.domain, &b.direction)));
        views
    }
}

/// The sending end of a remote domain's task (`super::outbound`).
pub(crate) struct Link {
    pub generation: u64,
    pub tx: tokio::sync::mpsc::Sender<starling_xmpp::Element>,
}

/// Which way a stream goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// A remote server's stream to us (`super::inbound`).
    In,
    /// Ours to a remote domain (`super::outbound`).
    Out,
}

impl Direction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// One remote domain on one open stream.
pub(crate) struct StreamEntry {
    pub domain: String,
    pub direction: Direction,
    /// `external` (SASL EXTERNAL, XEP-0178) or `dialback` (XEP-0220).
    pub authentication: &'static str,
    pub tls: bool,
    since: SystemTime,
    stanzas_in: AtomicU64,
    stanzas_out: AtomicU64,
    /// The domain's series of `starling_s2s_domain_stanzas_total`.
    counter: IntCounter,
}

impl StreamEntry {
    /// A stanza received from the domain on this stream (and routed).
    pub(crate) fn received(&self) {
        self.stanzas_in.fetch_add(1, Ordering::Relaxed);
        self.counter.inc();
    }

    /// Stanzas written to the domain on this stream.
    pub(crate) fn sent(&self, count: u64) {
        self.stanzas_out.fetch_add(count, Ordering::Relaxed);
        self.counter.inc_by(count);
    }
}

/// A remote domain's state on this node while it has an open stream.
struct DomainState {
    open_streams: usize,
    /// The domain itself, or [`OTHER_DOMAINS_LABEL`].
    label: String,
    /// `s2s.max_stanzas_per_sec` over every inbound stream of the domain.
    inbound_rate: Option<TokenBucket>,
}

#[derive(Default)]
struct TableInner {
    streams: HashMap<u64, Arc<StreamEntry>>,
    domains: HashMap<String, DomainState>,
    /// Domains with a label of their own now.
    labelled: usize,
}

/// The open streams by remote domain.
///
/// The per-domain metrics label a domain only while it has an open stream,
/// and at most `s2s.metrics_domains` domains at once: the cardinality of
/// the series is bounded by configuration whatever peers connect, and a
/// domain's series goes with its last stream (the counters then restart
/// from zero, which `rate()` handles as a reset). The rest is summed under
/// [`OTHER_DOMAINS_LABEL`]; the admin API lists every stream by its domain.
#[derive(Clone)]
pub(crate) struct StreamTable {
    inner: Arc<Mutex<TableInner>>,
    metrics: S2sMetrics,
    max_labelled: usize,
    max_stanzas_per_sec: u32,
    next_id: Arc<AtomicU64>,
}

impl StreamTable {
    pub(crate) fn new(metrics: S2sMetrics, max_labelled: usize, max_stanzas_per_sec: u32) -> Self {
        StreamTable {
            inner: Arc::default(),
            metrics,
            max_labelled,
            max_stanzas_per_sec,
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Record an authenticated stream of `domain`; it stays listed until
    /// the returned registration is dropped.
    pub(crate) fn register(
        &self,
        domain: &str,
        direction: Direction,
        authentication: &'static str,
        tls: bool,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.inner.lock();
        let label = match inner.domains.get_mut(domain) {
            Some(state) => {
                state.open_streams += 1;
                state.label.clone()
            }
            None => {
                let label = if inner.labelled < self.max_labelled {
                    inner.labelled += 1;
                    domain.to_string()
                } else {
                    OTHER_DOMAINS_LABEL.to_string()
                };
                inner.domains.insert(
                    domain.to_string(),
                    DomainState {
                        open_streams: 1,
                        label: label.clone(),
                        inbound_rate: None,
                    },
                );
                label
            }
        };
        self.metrics
            .domain_streams
            .with_label_values(&[&label, direction.as_str()])
            .inc();
        let entry = Arc::new(StreamEntry {
            domain: domain.to_string(),
            direction,
            authentication,
            tls,
            since: SystemTime::now(),
            stanzas_in: AtomicU64::new(0),
            stanzas_out: AtomicU64::new(0),
            counter: self
                .metrics
                .domain_stanzas
                .with_label_values(&[&label, direction.as_str()]),
        });
        inner.streams.insert(id, Arc::clone(&entry));
        Registration {
            table: self.clone(),
            id,
            entry,
            label,
        }
    }

    fn unregister(&self, id: u64, label: &str) {
        let mut inner = self.inner.lock();
        let Some(entry) = inner.streams.remove(&id) else {
            return;
        };
        let direction = entry.direction.as_str();
        self.metrics
            .domain_streams
            .with_label_values(&[label, direction])
            .dec();
        let last = match inner.domains.get_mut(&entry.domain) {
            Some(state) => {
                state.open_streams -= 1;
                state.open_streams == 0
            }
            None => false,
        };
        if !last {
            return;
        }
        inner.domains.remove(&entry.domain);
        if label != OTHER_DOMAINS_LABEL {
            inner.labelled -= 1;
            for direction in [Direction::In, Direction::Out] {
                let _ = self
                    .metrics
                    .domain_streams
                    .remove_label_values(&[label, direction.as_str()]);
                let _ = self
                    .metrics
                    .domain_stanzas
                    .remove_label_values(&[label, direction.as_str()]);
            }
        }
    }

    /// Whether one more stanza from `domain` fits in its
    /// `s2s.max_stanzas_per_sec` (over every inbound stream of the domain
    /// on this node, a burst of one second's worth).
    pub(crate) fn admit_inbound(&self, domain: &str) -> bool {
        let rate = self.max_stanzas_per_sec;
        if rate == 0 {
            return true;
        }
        let mut inner = self.inner.lock();
        let Some(state) = inner.domains.get_mut(domain) else {
            return true;
        };
        let now = std::time::Instant::now();
        match &mut state.inbound_rate {
            Some(bucket) => bucket.try_take(now),
            None => {
                let mut bucket =
                    TokenBucket::new(rate, rate, now).expect("a rate above zero has a bucket");
                let admitted = bucket.try_take(now);
                state.inbound_rate = Some(bucket);
                admitted
            }
        }
    }

    #[cfg(test)]
    fn domain_count(&self) -> usize {
        self.inner.lock().domains.len()
    }
}

/// A stream's place in the [`StreamTable`]; dropping it takes it out.
pub(crate) struct Registration {
    table: StreamTable,
    id: u64,
    entry: Arc<StreamEntry>,
    label: String,
}

impl Registration {
    pub(crate) fn entry(&self) -> &StreamEntry {
        &self.entry
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table.unregister(self.id, &self.label);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max_labelled: usize, rate: u32) -> (StreamTable, prometheus::Registry) {
        let registry = prometheus::Registry::new();
        let metrics = S2sMetrics::register(&registry).unwrap();
        (StreamTable::new(metrics, max_labelled, rate), registry)
    }

    /// `(domain, direction, value)` of each series of `name`, from the
    /// text exposition.
    fn series(registry: &prometheus::Registry, name: &str) -> Vec<(String, String, f64)> {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        let label = |line: &str, wanted: &str| {
            let start = line.find(&format!("{wanted}=\"")).unwrap() + wanted.len() + 2;
            line[start..].split('"').next().unwrap().to_string()
        };
        let mut out: Vec<(String, String, f64)> = text
            .lines()
            .filter(|line| line.starts_with(&format!("{name}{{")))
            .map(|line| {
                let value = line.rsplit(' ').next().unwrap().parse().unwrap();
                (label(line, "domain"), label(line, "direction"), value)
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    #[test]
    fn domains_past_the_bound_share_one_label_and_series_go_with_the_last_stream() {
        let (table, registry) = table(2, 0);
        let a_in = table.register("a.example", Direction::In, "dialback", true);
        let a_out = table.register("a.example", Direction::Out, "external", true);
        let b_in = table.register("b.example", Direction::In, "dialback", true);
        let c_in = table.register("c.example", Direction::In, "dialback", true);
        let d_in = table.register("d.example", Direction::In, "external", true);
        a_in.entry().received();
        c_in.entry().received();
        d_in.entry().received();
        a_out.entry().sent(3);
        assert_eq!(
            series(&registry, "starling_s2s_domain_streams"),
            vec![
                ("_other".into(), "in".into(), 2.0),
                ("a.example".into(), "in".into(), 1.0),
                ("a.example".into(), "out".into(), 1.0),
                ("b.example".into(), "in".into(), 1.0),
            ]
        );
        assert_eq!(
            series(&registry, "starling_s2s_domain_stanzas_total"),
            vec![
                ("_other".into(), "in".into(), 2.0),
                ("a.example".into(), "in".into(), 1.0),
                ("a.example".into(), "out".into(), 3.0),
                ("b.example".into(), "in".into(), 0.0),
            ]
        );
        drop(a_in);
        assert!(series(&registry, "starling_s2s_domain_streams").contains(&(
            "a.example".into(),
            "out".into(),
            1.0
        )));
        drop(a_out);
        drop(b_in);
        // a.example and b.example are gone: their labels are free again.
        let names: Vec<String> = series(&registry, "starling_s2s_domain_streams")
            .into_iter()
            .map(|(domain, _, _)| domain)
            .collect();
        assert_eq!(names, vec!["_other".to_string()]);
        let e_in = table.register("e.example", Direction::In, "dialback", true);
        assert!(series(&registry, "starling_s2s_domain_streams").contains(&(
            "e.example".into(),
            "in".into(),
            1.0
        )));
        drop((c_in, d_in, e_in));
        assert_eq!(table.domain_count(), 0);
    }

    #[test]
    fn the_rate_limit_is_per_domain_over_its_streams() {
        let (table, _registry) = table(10, 3);
        let first = table.register("a.example", Direction::In, "dialback", true);
        let second = table.register("a.example", Direction::In, "dialback", true);
        let other = table.register("b.example", Direction::In, "dialback", true);
        let admitted = (0..10).filter(|_| table.admit_inbound("a.example")).count();
        assert_eq!(admitted, 3);
        assert!(table.admit_inbound("b.example"));
        drop((first, second, other));
        let (unlimited, _registry) = self::table(10, 0);
        let _stream = unlimited.register("a.example", Direction::In, "dialback", true);
        assert!((0..10_000).all(|_| unlimited.admit_inbound("a.example")));
    }
}
