//! A replica's telemetry: OTLP spans (`trace.rs`, written by `otlp.rs`,
//! exported by `export.rs`), Prometheus metrics (`metrics.rs`), and the
//! attribute names of the OpenTelemetry MCP semantic conventions they share.
//! [`Telemetry`] is the handle request paths carry.

pub mod export;
pub mod metrics;
pub mod otlp;
pub mod trace;

use std::sync::Arc;

pub use metrics::Metrics;
pub use otlp::SpanKind;
pub use trace::{ActiveSpan, TraceContext, Tracer};

/// Span attribute names. The MCP ones follow the OpenTelemetry MCP
/// semantic conventions (`gen-ai/mcp.md`); `switchboard.*` are ours.
pub mod attr {
    pub const MCP_METHOD_NAME: &str = "mcp.method.name";
    pub const MCP_SESSION_ID: &str = "mcp.session.id";
    pub const MCP_PROTOCOL_VERSION: &str = "mcp.protocol.version";
    pub const GEN_AI_TOOL_NAME: &str = "gen_ai.tool.name";
    pub const GEN_AI_PROMPT_NAME: &str = "gen_ai.prompt.name";
    pub const MCP_RESOURCE_URI: &str = "mcp.resource.uri";
    pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
    pub const JSONRPC_REQUEST_ID: &str = "jsonrpc.request.id";
    pub const RPC_RESPONSE_STATUS_CODE: &str = "rpc.response.status_code";
    pub const NETWORK_TRANSPORT: &str = "network.transport";
    pub const SERVER_ADDRESS: &str = "server.address";
    pub const SERVER: &str = "switchboard.server";
    pub const CALLER: &str = "switchboard.caller";
    pub const REPLICA: &str = "switchboard.replica";
}

/// What request paths need to report; cheap to clone.
#[derive(Clone, Default)]
pub struct Telemetry {
    pub tracer: Tracer,
    pub metrics: Arc<Metrics>,
    pub replica_id: Arc<str>,
    /// Log tool arguments and results (debug level). Off by default: they
    /// may hold secrets.
    pub log_payloads: bool,
}
