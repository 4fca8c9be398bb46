//! Generated types for what the two planes exchange: the config stream
//! (`proto/config.proto`) and span export (`proto/otlp_trace.proto`).
//! Nothing else lives here.

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
