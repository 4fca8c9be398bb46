//! Switchboard gateway replica: subscribes to the control plane's config,
//! runs the configured MCP servers, and serves them to clients as one MCP
//! endpoint with namespaced tools.

#![deny(unsafe_code)]
#![deny(rust_2018_idioms, clippy::disallowed_methods, clippy::disallowed_types)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod bridge;
pub mod catalog;
pub mod clients;
pub mod demo_server;
pub mod downstream;
pub mod drain;
pub mod mcp;
pub mod observe;
pub mod peers;
pub mod policy;
pub mod redact;
pub mod shim;
pub mod spec;
pub mod telemetry;
pub mod xds;
