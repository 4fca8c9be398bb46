//! Prometheus metrics of a replica. Request counters and latencies are
//! recorded as requests finish; per-server state (breaker, restarts, pool)
//! and config state are read from their owners at scrape time, so there is
//! one source of truth and nothing to keep in sync. Labels stay
//! low-cardinality: server, method, outcome — never tool, caller or session.

use std::sync::{Arc, atomic::AtomicI64};

use parking_lot::Mutex;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use super::export::ExportCounters;
use crate::{
    downstream::{ServerState, Servers, breaker::BreakerState},
    xds::ConfigStatus,
};

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
pub struct ServerLabels {
    pub server: String,
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
    registry: Registry,
    /// Serialises scrapes: server gauges are rebuilt on each one.
    scrape: Mutex<()>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: HistogramFamily<MethodLabels>,
    pub downstream_duration: HistogramFamily<MethodLabels>,
    pub sessions: Gauge,
    pub sessions_parked: Gauge,
    pub session_parks: Counter,
    pub session_restores: Counter,
    responses: Family<FramingLabels, Counter>,
    /// Answers that went out as the response alone, in JSON.
    pub answered_json: Counter,
    /// Answers that went out as an SSE stream.
    pub answered_sse: Counter,
    /// `tools/call` requests answered past rmcp (`mcp/direct.rs`).
    pub direct_calls: Counter,
    /// Catalog lists answered past rmcp (`mcp/direct.rs`).
    pub direct_lists: Counter,
    pub config_updates: Family<ResultLabels, Counter>,
    pub spans: ExportCounters,
    config_version: Gauge<i64, AtomicI64>,
    control_plane_connected: Gauge,
    server_ready: Family<ServerLabels, Gauge>,
    server_tools: Family<ServerLabels, Gauge>,
    server_restarts: Family<ServerLabels, Gauge>,
    breaker_state: Family<ServerLabels, Gauge>,
    connections: Family<ServerLabels, Gauge>,
    in_flight: Family<ServerLabels, Gauge>,
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
            registry: Registry::default(),
            scrape: Mutex::new(()),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            downstream_duration: Family::new_with_constructor(latency_histogram),
            sessions: Gauge::default(),
            sessions_parked: Gauge::default(),
            session_parks: Counter::default(),
            session_restores: Counter::default(),
            responses,
            answered_json,
            answered_sse,
            direct_calls: Counter::default(),
            direct_lists: Counter::default(),
            config_updates: Family::default(),
            spans: ExportCounters {
                exported: Counter::default(),
                dropped: Family::default(),
            },
            config_version: Gauge::default(),
            control_plane_connected: Gauge::default(),
            server_ready: Family::default(),
            server_tools: Family::default(),
            server_restarts: Family::default(),
            breaker_state: Family::default(),
            connections: Family::default(),
            in_flight: Family::default(),
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
        registry.register("sessions", "Client sessions in memory", m.sessions.clone());
        registry.register(
            "sessions_parked",
            "Idle client sessions parked out of memory",
            m.sessions_parked.clone(),
        );
        registry.register(
            "session_parks",
            "Idle client sessions parked",
            m.session_parks.clone(),
        );
        registry.register(
            "session_restores",
            "Parked client sessions restored by a request",
            m.session_restores.clone(),
        );
        registry.register(
            "responses",
            "Answers to client requests over streamable HTTP, by framing (json: the response alone; sse: a stream)",
            m.responses.clone(),
        );
        registry.register(
            "direct_calls",
            "tools/call requests relayed on the direct path, past the MCP session layer",
            m.direct_calls.clone(),
        );
        registry.register(
            "direct_lists",
            "tools/list, prompts/list, resources/list and resources/templates/list requests answered on the direct path from the catalog's encoded lists",
            m.direct_lists.clone(),
        );
        registry.register(
            "config_updates",
            "Config snapshots answered, by result (ack, nack)",
            m.config_updates.clone(),
        );
        registry.register(
            "config_version",
            "Version of the last applied config snapshot (0 before the first)",
            m.config_version.clone(),
        );
        registry.register(
            "control_plane_connected",
            "1 while the config stream is up",
            m.control_plane_connected.clone(),
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
        registry.register(
            "server_ready",
            "1 when the server is ready",
            m.server_ready.clone(),
        );
        registry.register(
            "server_tools",
            "Tools the server offers",
            m.server_tools.clone(),
        );
        registry.register(
            "server_restarts",
            "Process or connection restarts since the server's spec last changed",
            m.server_restarts.clone(),
        );
        registry.register(
            "server_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
            m.breaker_state.clone(),
        );
        registry.register(
            "server_connections",
            "Open connections (processes for stdio servers), pooled and per-session",
            m.connections.clone(),
        );
        registry.register(
            "server_in_flight",
            "Calls waiting for the server",
            m.in_flight.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// Renders every metric in the OpenMetrics text format, reading server
    /// and config state as it is now.
    pub fn render(&self, servers: &Servers, config: &ConfigStatus) -> String {
        let _scrape = self.scrape.lock();
        let state_families = [
            &self.server_ready,
            &self.server_tools,
            &self.server_restarts,
            &self.breaker_state,
            &self.connections,
            &self.in_flight,
        ];
        // Removed servers must disappear, not linger at their last value.
        for family in state_families {
            family.clear();
        }
        for handle in servers.list() {
            let status = handle.status();
            let labels = ServerLabels {
                server: handle.spec.name.to_string(),
            };
            let set = |family: &Family<ServerLabels, Gauge>, value: i64| {
                family.get_or_create(&labels).set(value);
            };
            set(
                &self.server_ready,
                i64::from(status.state == ServerState::Ready),
            );
            set(&self.server_tools, status.tools.len() as i64);
            set(&self.server_restarts, i64::from(status.restarts));
            set(
                &self.breaker_state,
                match status.breaker {
                    BreakerState::Closed => 0,
                    BreakerState::HalfOpen => 1,
                    BreakerState::Open => 2,
                },
            );
            set(&self.connections, status.connections as i64);
            set(&self.in_flight, i64::from(status.in_flight));
        }
        self.config_version
            .set(i64::try_from(config.applied_version()).unwrap_or(i64::MAX));
        self.control_plane_connected
            .set(i64::from(config.connected()));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ReasonLabels {
    pub fn new(reason: &'static str) -> Self {
        Self { reason }
    }
}
