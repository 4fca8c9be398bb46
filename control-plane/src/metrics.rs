//! Prometheus metrics of the control plane: one registry, filled by each
//! subsystem's collector (config push and replicas in `push.rs`, spans and
//! the trace buffer in `traces.rs`, registry and snapshot in
//! `snapshot.rs`), which counts where things happen and reads its gauges
//! from itself at scrape time.

use parking_lot::Mutex;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, text::encode},
    metrics::counter::Counter,
    registry::Registry,
};

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub struct Metrics {
    registry: Mutex<Registry>,
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            registry: Mutex::new(Registry::with_prefix("switchboard_control")),
        }
    }

    /// Adds a subsystem's metrics, read from it at each scrape.
    pub fn register_collector(&self, collector: impl Collector) {
        self.registry.lock().register_collector(Box::new(collector));
    }

    /// Renders every metric in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry.lock());
        out
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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
