//! Switchboard control plane: holds the registry of `McpServer` resources,
//! builds versioned config snapshots and pushes them to gateway replicas
//! over gRPC, and reports what the replicas say back; receives the
//! replicas' traces and forwards them to a collector.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod check;
pub mod connect;
pub mod console;
pub mod launcher;
pub mod leader;
pub mod metrics;
pub mod peers;
pub mod push;
pub mod registry;
pub mod resource;
pub mod session_keys;
pub mod snapshot;
pub mod status;
pub mod tls;
pub mod tokens;
pub mod traces;
