//! Generated types for what the two planes exchange: the config stream
//! (`proto/config.proto`) and span export (`proto/otlp_trace.proto`), and
//! the defaults both planes assume for what a message leaves out. Nothing
//! else lives here.

#[allow(warnings, clippy::all, clippy::pedantic)]
mod generated {
    tonic::include_proto!("switchboard.config.v1");
}

pub mod config {
    //! `switchboard.config.v1`: snapshots, ACK/NACK and health reports.
    pub use super::generated::*;
}

#[allow(warnings, clippy::all, clippy::pedantic)]
mod generated_otlp {
    tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
}

pub mod otlp {
    //! OTLP trace export with spans left encoded: the gateways' exporter,
    //! the control plane's receiver and its forwarder.
    pub use super::generated_otlp::*;
}

pub mod defaults {
    //! The resilience defaults, defined once: what the control plane fills
    //! in for a field a resource leaves out, and what a replica assumes for
    //! a field an older control plane does not send (zero on the wire).

    use std::time::Duration;

    /// Connections kept per replica; the pool's maximum defaults to it too.
    pub const POOL_MIN: u32 = 1;
    pub const POOL_MAX_CONCURRENCY: u32 = 32;
    pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
    pub const POOL_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

    pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
    pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(10 * 60);
    pub const INITIALIZE_TIMEOUT: Duration = Duration::from_secs(30);

    pub const BREAKER_CONSECUTIVE_FAILURES: u32 = 5;
    pub const BREAKER_FAILURE_RATE_PERCENT: u32 = 50;
    pub const BREAKER_MIN_REQUESTS: u32 = 20;
    pub const BREAKER_WINDOW: Duration = Duration::from_secs(30);
    pub const BREAKER_OPEN: Duration = Duration::from_secs(30);
    pub const BREAKER_HALF_OPEN_PROBES: u32 = 1;

    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(30);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
    pub const HEALTH_FAILURE_THRESHOLD: u32 = 3;
}
