//! Prometheus metrics of the control plane. Counters are bumped where
//! things happen (config ACK/NACK, spans received, forwarded, dropped);
//! gauges (replicas, registry, snapshot, trace buffer) are read from their
//! owners at scrape time.

use parking_lot::Mutex;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{push::Replicas, registry::Registry as McpRegistry, traces::TraceStore};

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why spans were dropped.
pub const DROP_QUEUE_FULL: &str = "forward_queue_full";
pub const DROP_FORWARD_FAILED: &str = "forward_failed";
/// Refused at the receiver: the export was not OTLP.
pub const DROP_INVALID: &str = "invalid_export";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Spans through the OTLP receiver.
#[derive(Clone)]
pub struct TraceCounters {
    pub received: Counter,
    pub forwarded: Counter,
    dropped: Family<ReasonLabels, Counter>,
}

/// Answers to config snapshots, over all replicas.
#[derive(Clone, Default)]
pub struct ConfigCounters {
    pub acks: Counter,
    pub nacks: Counter,
}

/// What a scrape reads besides the counters.
pub struct ScrapeSources<'a> {
    pub registry: &'a McpRegistry,
    pub snapshot_version: u64,
    pub replicas: &'a Replicas,
    pub traces: &'a TraceStore,
}

pub struct Metrics {
    registry: Registry,
    scrape: Mutex<()>,
    pub traces: TraceCounters,
    pub config: ConfigCounters,
    replicas_connected: Gauge,
    snapshot_version: Gauge,
    registry_servers: Gauge,
    registry_issues: Gauge,
    traces_buffered: Gauge,
}

// === impl TraceCounters ===

impl Default for TraceCounters {
    /// Every drop reason starts at 0, so dashboards and alerts see the
    /// series before the first drop.
    fn default() -> Self {
        let counters = Self {
            received: Counter::default(),
            forwarded: Counter::default(),
            dropped: Family::default(),
        };
        for reason in [DROP_QUEUE_FULL, DROP_FORWARD_FAILED, DROP_INVALID] {
            counters.dropped(reason);
        }
        counters
    }
}

impl TraceCounters {
    pub fn dropped(&self, reason: &'static str) -> Counter {
        self.dropped.get_or_create(&ReasonLabels { reason }).clone()
    }
}

// === impl Metrics ===

impl Metrics {
    pub fn new(config: ConfigCounters, traces: TraceCounters) -> Self {
        let mut registry = Registry::with_prefix("switchboard_control");
        let gauges: [Gauge; 5] = Default::default();
        let [
            replicas_connected,
            snapshot_version,
            registry_servers,
            registry_issues,
            traces_buffered,
        ] = gauges;
        registry.register(
            "config_acks",
            "Snapshots replicas applied (ACK)",
            config.acks.clone(),
        );
        registry.register(
            "config_nacks",
            "Snapshots replicas refused in part (NACK)",
            config.nacks.clone(),
        );
        registry.register(
            "replicas_connected",
            "Gateway replicas holding a config stream",
            replicas_connected.clone(),
        );
        registry.register(
            "snapshot_version",
            "Version of the current config snapshot",
            snapshot_version.clone(),
        );
        registry.register(
            "registry_servers",
            "Valid McpServer resources in the registry",
            registry_servers.clone(),
        );
        registry.register(
            "registry_issues",
            "Registry files or resources that were refused",
            registry_issues.clone(),
        );
        registry.register(
            "spans_received",
            "Spans received from replicas over OTLP",
            traces.received.clone(),
        );
        registry.register(
            "spans_forwarded",
            "Spans forwarded to the configured collector",
            traces.forwarded.clone(),
        );
        registry.register(
            "spans_dropped",
            "Spans not kept or forwarded, by reason (forward_queue_full, forward_failed, invalid_export)",
            traces.dropped.clone(),
        );
        registry.register(
            "traces_buffered",
            "Traces held for the /traces API",
            traces_buffered.clone(),
        );
        Self {
            registry,
            scrape: Mutex::new(()),
            traces,
            config,
            replicas_connected,
            snapshot_version,
            registry_servers,
            registry_issues,
            traces_buffered,
        }
    }

    /// Renders every metric in the OpenMetrics text format.
    pub fn render(&self, sources: ScrapeSources<'_>) -> String {
        let _scrape = self.scrape.lock();
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let connected = sources
            .replicas
            .snapshot()
            .values()
            .filter(|r| r.connected)
            .count();
        self.replicas_connected.set(count(connected));
        self.snapshot_version
            .set(i64::try_from(sources.snapshot_version).unwrap_or(i64::MAX));
        self.registry_servers
            .set(count(sources.registry.servers.len()));
        self.registry_issues
            .set(count(sources.registry.issues.len()));
        self.traces_buffered.set(count(sources.traces.len()));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
