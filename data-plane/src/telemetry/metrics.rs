//! Prometheus metrics of a replica. Request counters and latencies are
//! recorded as requests finish; state (servers, config, drain) is read by
//! its owner's collector at scrape time (`downstream/gauges.rs`, `xds.rs`,
//! `drain.rs`), so there is one source of truth and nothing to keep in
//! sync. Labels stay low-cardinality: server, method, outcome — never
//! tool, caller or session.

use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

use super::export::ExportCounters;

/// Latency buckets in seconds: the MCP semantic conventions' buckets with
/// sub-10 ms resolution added, where a gateway's own cost shows.
const LATENCY_BUCKETS: [f64; 18] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// Why spans were dropped.
pub const DROP_QUEUE_FULL: &str = "queue_full";
pub const DROP_EXPORT_FAILED: &str = "export_failed";

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Request labels are built on every request: nothing in them is allocated.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Empty for requests no server answers (`initialize`, `tools/list`).
    pub server: Option<Arc<str>>,
    pub method: &'static str,
    /// `ok`, `tool_error`, or why it failed (`timeout`, `unknown_tool`, …).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub server: Option<Arc<str>>,
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FramingLabels {
    pub framing: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of a replica, and the registry that exposes them.
pub struct Metrics {
    /// Locked to add a subsystem's collector, and by each scrape.
    registry: Mutex<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: HistogramFamily<MethodLabels>,
    pub downstream_duration: HistogramFamily<MethodLabels>,
    responses: Family<FramingLabels, Counter>,
    /// Answers that went out as the response alone, in JSON.
    pub answered_json: Counter,
    /// Answers that went out as an SSE stream.
    pub answered_sse: Counter,
    /// `tools/call` requests relayed to a stdio server as written
    /// (`downstream/lines.rs`).
    pub calls_as_written: Counter,
    /// Input-required results of 2026-07-28 servers passed on to clients
    /// of that revision, and those the gateway answered by asking an
    /// older client (`downstream.rs`).
    pub input_relayed: Counter,
    pub input_bridged: Counter,
    /// Per-session server connections started for a session another
    /// replica opened (`downstream.rs`).
    pub moved_session_connections: Counter,
    pub config_updates: Family<ResultLabels, Counter>,
    pub spans: ExportCounters,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Metrics {
    pub fn new() -> Self {
        // Counted on every request: looked up in the family once, here.
        let responses = Family::<FramingLabels, Counter>::default();
        let framed = |framing| responses.get_or_create_owned(&FramingLabels { framing });
        let (answered_json, answered_sse) = (framed("json"), framed("sse"));
        let metrics = Self {
            // Replaced below, once every metric is registered.
            registry: Mutex::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            downstream_duration: Family::new_with_constructor(latency_histogram),
            responses,
            answered_json,
            answered_sse,
            calls_as_written: Counter::default(),
            input_relayed: Counter::default(),
            input_bridged: Counter::default(),
            moved_session_connections: Counter::default(),
            config_updates: Family::default(),
            spans: ExportCounters {
                exported: Counter::default(),
                dropped: Family::default(),
            },
        };
        // Series that dashboards and alerts watch start at 0.
        for reason in [DROP_QUEUE_FULL, DROP_EXPORT_FAILED] {
            metrics
                .spans
                .dropped
                .get_or_create_owned(&ReasonLabels::new(reason));
        }
        for result in ["ack", "nack"] {
            metrics
                .config_updates
                .get_or_create_owned(&ResultLabels { result });
        }
        let mut registry = Registry::with_prefix("switchboard");
        let m = &metrics;
        registry.register(
            "requests",
            "MCP requests answered, by server, method and outcome",
            m.requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from a client request to its answer",
            Unit::Seconds,
            m.request_duration.clone(),
        );
        registry.register_with_unit(
            "downstream_duration",
            "Time a downstream server took to answer a forwarded call",
            Unit::Seconds,
            m.downstream_duration.clone(),
        );
        registry.register(
            "responses",
            "Answers to client requests over streamable HTTP, by framing (json: the response alone; sse: a stream)",
            m.responses.clone(),
        );
        registry.register(
            "calls_as_written",
            "tools/call requests relayed to a shared stdio server with the arguments as the client wrote them, past rmcp's client",
            m.calls_as_written.clone(),
        );
        registry.register(
            "input_required_relayed",
            "Input-required results of 2026-07-28 servers passed on to 2026-07-28 clients",
            m.input_relayed.clone(),
        );
        registry.register(
            "input_required_bridged",
            "Input-required results of 2026-07-28 servers answered by asking a client of an older revision its questions as requests",
            m.input_bridged.clone(),
        );
        registry.register(
            "moved_session_connections",
            "Per-session server connections started for a client session another replica opened: what the server held for it on that replica is not here",
            m.moved_session_connections.clone(),
        );
        registry.register(
            "config_updates",
            "Config snapshots answered, by result (ack, nack)",
            m.config_updates.clone(),
        );
        registry.register(
            "spans_exported",
            "Spans accepted by the OTLP receiver",
            m.spans.exported.clone(),
        );
        registry.register(
            "spans_dropped",
            "Spans dropped, by reason (queue_full, export_failed)",
            m.spans.dropped.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            ..metrics
        }
    }

    /// Adds a subsystem's metrics, read from it at each scrape.
    pub fn register_collector(&self, collector: impl Collector) {
        self.registry.lock().register_collector(Box::new(collector));
    }

    /// Renders every metric in the OpenMetrics text format, collectors'
    /// state as it is now.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry.lock());
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Encodes counters a collector keeps, each with its name and help.
pub fn encode_counters(
    encoder: &mut DescriptorEncoder<'_>,
    counters: &[(&str, &str, &Counter)],
) -> std::fmt::Result {
    for (name, help, counter) in counters {
        counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
    }
    Ok(())
}

impl ReasonLabels {
    pub fn new(reason: &'static str) -> Self {
        Self { reason }
    }
}
