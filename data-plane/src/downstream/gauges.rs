//! The servers' state as Prometheus gauges (`switchboard_server_*`), read
//! from the servers themselves at each scrape: one source of truth, and a
//! removed server's series disappear with it.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, gauge::ConstGauge},
};

use super::{ServerState, ServerStatus, Servers, breaker::BreakerState};

/// Registered once with the replica's metrics.
pub struct ServerGauges(pub Servers);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: String,
}

/// One gauge: its name, help, and value for a server.
type Gauge = (&'static str, &'static str, fn(&ServerStatus) -> i64);

const GAUGES: [Gauge; 7] = [
    ("server_ready", "1 when the server is ready", |s| {
        i64::from(s.state == ServerState::Ready)
    }),
    ("server_tools", "Tools the server offers", |s| {
        s.tools.len() as i64
    }),
    (
        "server_restarts",
        "Process or connection restarts since the server's spec last changed",
        |s| i64::from(s.restarts),
    ),
    (
        "server_breaker_state",
        "Circuit breaker: 0 closed, 1 half-open, 2 open",
        |s| match s.breaker {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        },
    ),
    (
        "server_connections",
        "Open connections (processes for stdio servers), pooled and per-session",
        |s| s.connections as i64,
    ),
    ("server_in_flight", "Calls waiting for the server", |s| {
        i64::from(s.in_flight)
    }),
    (
        "server_one_session_per_connection",
        "1 once the (shared) server has asked a client something: its connections carry one client session's calls at a time",
        |s| i64::from(s.asked_clients.is_some()),
    ),
];

impl std::fmt::Debug for ServerGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerGauges")
    }
}

impl Collector for ServerGauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let statuses: Vec<(ServerLabels, ServerStatus)> = self
            .0
            .list()
            .into_iter()
            .map(|handle| {
                let labels = ServerLabels {
                    server: handle.spec.name.to_string(),
                };
                (labels, handle.status())
            })
            .collect();
        for (name, help, value) in GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, status) in &statuses {
                ConstGauge::new(value(status)).encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}
