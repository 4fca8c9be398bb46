//! Generated types for the control-plane ⇄ data-plane config stream
//! (`proto/config.proto`). Nothing else lives here.

#[allow(warnings, clippy::all, clippy::pedantic)]
mod generated {
    tonic::include_proto!("switchboard.config.v1");
}

pub mod config {
    //! `switchboard.config.v1`: snapshots, ACK/NACK and health reports.
    pub use super::generated::*;
}
