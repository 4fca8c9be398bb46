//! End-to-end tests: real binaries, real MCP over real sockets and child
//! processes. One test binary; each scenario file covers one concern.

#[path = "scenarios/bad_input.rs"]
mod bad_input;
#[path = "scenarios/chart.rs"]
mod chart;
#[path = "scenarios/check.rs"]
mod check;
#[path = "scenarios/conformance.rs"]
mod conformance;
#[path = "scenarios/connect.rs"]
mod connect;
#[path = "scenarios/console.rs"]
mod console;
#[path = "scenarios/control_plane_outage.rs"]
mod control_plane_outage;
#[path = "scenarios/kubernetes.rs"]
mod kubernetes;
#[path = "scenarios/naming.rs"]
mod naming;
#[path = "scenarios/observability.rs"]
mod observability;
#[path = "scenarios/one_path.rs"]
mod one_path;
#[path = "scenarios/protocol_eras.rs"]
mod protocol_eras;
#[path = "scenarios/quick_start.rs"]
mod quick_start;
#[path = "scenarios/registry_changes.rs"]
mod registry_changes;
#[path = "scenarios/relay.rs"]
mod relay;
#[path = "scenarios/replicas.rs"]
mod replicas;
#[path = "scenarios/resilience.rs"]
mod resilience;
#[path = "scenarios/rest.rs"]
mod rest;
#[path = "scenarios/security.rs"]
mod security;
#[path = "scenarios/servers_api.rs"]
mod servers_api;
#[path = "scenarios/sessions.rs"]
mod sessions;
#[path = "scenarios/third_party.rs"]
mod third_party;
#[path = "scenarios/up.rs"]
mod up;
