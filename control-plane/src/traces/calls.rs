//! Tool calls read off the spans replicas export: the console's traffic
//! view. A call is a replica's SERVER span of `tools/call`; its caller,
//! server, tool, duration and outcome are that span's. Arriving calls are
//! decoded only while someone watches ([`super::TraceStore::watch_calls`]);
//! the recent ones come from the trace buffer.

use serde::Serialize;

use super::{CALLER_ATTR, SERVER_ATTR, SpanView, TOOL_ATTR};

const METHOD_ATTR: &str = "mcp.method.name";

/// One tool call, as the console lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Call {
    pub trace_id: String,
    /// The call's own span: what tells two calls of one trace apart.
    pub span_id: String,
    /// Unix milliseconds.
    pub start_ms: u64,
    pub duration_ms: f64,
    pub caller: String,
    pub server: String,
    pub tool: String,
    /// The replica that served it.
    pub replica: String,
    pub error: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl Call {
    /// The call `span` records, if it is a gateway's `tools/call`.
    pub fn of(span: &SpanView) -> Option<Self> {
        let attribute = |key: &str| {
            span.attributes
                .get(key)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        (span.kind == "server" && attribute(METHOD_ATTR) == "tools/call").then(|| Self {
            trace_id: span.trace_id.clone(),
            span_id: span.span_id.clone(),
            start_ms: span.start_time_unix_nano / 1_000_000,
            duration_ms: span.duration_ms,
            caller: attribute(CALLER_ATTR),
            server: attribute(SERVER_ATTR),
            tool: attribute(TOOL_ATTR),
            replica: span.instance.clone(),
            error: span.error,
            message: span.status_message.clone(),
        })
    }
}
