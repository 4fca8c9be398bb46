//! One observation per client request: [`Observation`] turns a request
//! into exactly one SERVER span, one metric sample and one log line that
//! carries the caller. The session handler begins one per request, tells it
//! what only the handler knows (the server a call went to, why it failed)
//! and completes it with the response; one dropped unanswered (the client
//! went away) is reported as `cancelled`.

use std::{
    borrow::Cow,
    sync::{Arc, OnceLock},
    time::Instant,
};

use rmcp::{
    ErrorData,
    model::{InitializeRequestParams, RequestMetaObject},
};
use serde::Serialize;
use tracing::{debug, info};

use crate::{
    auth::Identity,
    telemetry::{
        ActiveSpan, SpanKind, Telemetry, TraceContext, attr,
        metrics::{MethodLabels, RequestLabels},
    },
};

/// A session id is its session's bearer credential: logs and spans carry
/// this short hash of it instead, enough to follow one session across
/// lines and spans, useless to join it.
pub fn session_tag(id: &str) -> String {
    use sha2::{Digest, Sha256};
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // On every request's path: one allocation, no formatting machinery.
    let mut tag = String::with_capacity(16);
    for byte in &Sha256::digest(id.as_bytes())[..8] {
        tag.push(char::from(HEX[usize::from(byte >> 4)]));
        tag.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    tag
}

/// Header naming the calling agent or team, for logs and traces.
pub const CALLER_HEADER: &str = "x-switchboard-caller";
/// The same as a query parameter, for clients that cannot set headers.
const CALLER_QUERY: &str = "caller";
const MAX_CALLER_LEN: usize = 128;

/// What a request is, as far as observation cares.
pub struct RequestInfo<'a> {
    pub method: &'static str,
    /// The tool (`tools/call`) or prompt (`prompts/get`) named.
    pub target: Option<Target>,
    /// For `initialize`, which carries what later requests read from the
    /// session.
    pub initialize: Option<&'a InitializeRequestParams>,
    /// The caller the session named first; a client that names itself only
    /// when it connects stays named.
    pub session_caller: &'a OnceLock<String>,
}

/// Where a request came from.
pub struct Arrival<'a> {
    /// The HTTP request it arrived in.
    pub parts: Option<&'a http::request::Parts>,
    /// The session's `initialize`.
    pub peer: Option<&'a InitializeRequestParams>,
    pub meta: &'a RequestMetaObject,
    pub request_id: String,
}

pub enum Target {
    Tool(String),
    Prompt(String),
    Resource(String),
}

/// One request in flight; reports when dropped.
pub struct Observation {
    telemetry: Telemetry,
    span: ActiveSpan,
    started: Instant,
    method: &'static str,
    target: Option<String>,
    request_id: String,
    session: Option<String>,
    caller: String,
    server: Option<Arc<str>>,
    /// Why it failed, when the response alone does not say.
    failure: Option<(&'static str, String)>,
    outcome: Option<Outcome>,
}

struct Outcome {
    label: &'static str,
    /// `error.type`, JSON-RPC code (for error responses) and message.
    error: Option<(Cow<'static, str>, Option<i32>, String)>,
}

// === impl Observation ===

impl Observation {
    pub fn begin_at(telemetry: &Telemetry, request: RequestInfo<'_>, arrival: Arrival<'_>) -> Self {
        let parts = arrival.parts;
        let header = |name: &str| {
            parts
                .and_then(|p| p.headers.get(name))
                .and_then(|v| v.to_str().ok())
        };
        let client = request.initialize.or(arrival.peer);
        // An authenticated caller is who it is, whatever it calls itself.
        let identity = parts
            .and_then(|p| p.extensions.get::<Identity>())
            .map(|identity| identity.name.to_string());
        let named = identity
            .or_else(|| header(CALLER_HEADER).map(str::to_owned))
            .or_else(|| parts.and_then(|p| query_caller(p.uri.query()?)))
            .map(|c| truncate(c, MAX_CALLER_LEN));
        let caller = match named {
            Some(named) => {
                let _ = request.session_caller.set(named.clone());
                named
            }
            None => request
                .session_caller
                .get()
                .cloned()
                .or_else(|| client.map(|c| truncate(c.client_info.name.clone(), MAX_CALLER_LEN)))
                .unwrap_or_else(|| "unknown".to_owned()),
        };
        let method = request.method;
        // `_meta` is the MCP-level parent (SEP-414); the HTTP header is the
        // fallback for clients that only trace their HTTP calls.
        let parent = arrival
            .meta
            .get_traceparent()
            .or_else(|| header("traceparent"))
            .and_then(TraceContext::parse);
        let (target, target_attr) = match request.target {
            Some(Target::Tool(name)) => (Some(name), attr::GEN_AI_TOOL_NAME),
            Some(Target::Prompt(name)) => (Some(name), attr::GEN_AI_PROMPT_NAME),
            Some(Target::Resource(uri)) => (Some(uri), attr::MCP_RESOURCE_URI),
            None => (None, attr::GEN_AI_TOOL_NAME),
        };
        let name = || match &target {
            Some(target) => format!("{method} {target}"),
            None => method.to_owned(),
        };
        let mut span = telemetry.tracer.start(name, SpanKind::Server, parent);
        let request_id = arrival.request_id;
        let session = header("mcp-session-id").map(session_tag);
        if span.is_recording() {
            span.set(attr::MCP_METHOD_NAME, method);
            span.set(attr::JSONRPC_REQUEST_ID, &request_id);
            span.set(attr::NETWORK_TRANSPORT, "tcp");
            span.set(attr::CALLER, &caller);
            span.set(attr::REPLICA, &telemetry.replica_id);
            if let Some(session) = &session {
                span.set(attr::MCP_SESSION_ID, session);
            }
            if let Some(client) = client {
                span.set(attr::MCP_PROTOCOL_VERSION, client.protocol_version.as_str());
            }
            if let Some(target) = &target {
                span.set(target_attr, target);
                if target_attr == attr::GEN_AI_TOOL_NAME {
                    span.set(attr::GEN_AI_OPERATION_NAME, "execute_tool");
                }
            }
        }
        Self {
            telemetry: telemetry.clone(),
            span,
            started: Instant::now(),
            method,
            target,
            request_id,
            session,
            caller,
            server: None,
            failure: None,
            outcome: None,
        }
    }

    /// The context downstream calls are made under: this request's span
    /// (or the client's context when tracing is off).
    pub fn trace(&self) -> Option<TraceContext> {
        self.span.context()
    }

    /// The server the request was routed to.
    pub fn set_server(&mut self, server: Arc<str>) {
        self.server = Some(server);
    }

    /// Why the request failed, when the response alone does not say (an
    /// `isError` result written by the gateway, an unknown name).
    pub fn set_failure(&mut self, kind: &'static str, message: String) {
        self.failure = Some((kind, message));
    }

    /// Logs request and response bodies when payload logging is on.
    pub fn payload(&self, request: &impl Serialize, response: &impl Serialize) {
        if self.telemetry.log_payloads {
            debug!(
                request_id = %self.request_id,
                request = %serde_json::to_string(request).unwrap_or_default(),
                response = %serde_json::to_string(response).unwrap_or_default(),
                "request payload"
            );
        }
    }

    /// Reports the response; `tool_error` says it is an `isError` result.
    pub fn complete<T>(mut self, result: &Result<T, ErrorData>, tool_error: bool) {
        let outcome = match (result, self.failure.take()) {
            (_, Some((kind, message))) => Outcome {
                label: kind,
                error: Some((
                    kind.into(),
                    result.as_ref().err().map(|e| e.code.0),
                    message,
                )),
            },
            (Ok(_), None) if tool_error => Outcome {
                label: "tool_error",
                error: Some(("tool_error".into(), None, String::new())),
            },
            (Ok(_), None) => Outcome {
                label: "ok",
                error: None,
            },
            (Err(error), None) => Outcome {
                label: jsonrpc_outcome(error.code.0),
                error: Some((
                    error.code.0.to_string().into(),
                    Some(error.code.0),
                    error.message.to_string(),
                )),
            },
        };
        self.outcome = Some(outcome);
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        let outcome = self.outcome.take().unwrap_or(Outcome {
            label: "cancelled",
            error: Some(("cancelled".into(), None, "abandoned by the client".into())),
        });
        let elapsed = self.started.elapsed();
        let server = self.server.take();
        if let Some(server) = &server {
            self.span.set(attr::SERVER, server);
        }
        if let Some((error_type, code, message)) = &outcome.error {
            if let Some(code) = code {
                self.span
                    .set(attr::RPC_RESPONSE_STATUS_CODE, &code.to_string());
            }
            self.span.set_error(error_type, message);
        }
        let metrics = &self.telemetry.metrics;
        metrics
            .requests
            .get_or_create(&RequestLabels {
                server: server.clone(),
                method: self.method,
                outcome: outcome.label,
            })
            .inc();
        metrics
            .request_duration
            .get_or_create(&MethodLabels {
                server: server.clone(),
                method: self.method,
            })
            .observe(elapsed.as_secs_f64());
        let error = outcome
            .error
            .as_ref()
            .map(|(_, _, message)| message.as_str());
        info!(
            caller = %self.caller,
            request_id = %self.request_id,
            session = self.session.as_deref().unwrap_or(""),
            method = self.method,
            server = server.as_deref().unwrap_or(""),
            tool = self.target.as_deref().unwrap_or(""),
            duration_ms = elapsed.as_secs_f64() * 1e3,
            outcome = outcome.label,
            error = error.filter(|e| !e.is_empty()),
            trace_id = self
                .span
                .context()
                .map(|t| t.trace_id_hex())
                .unwrap_or_default(),
            "request"
        );
    }
}

/// A stable outcome label for a JSON-RPC error code.
fn jsonrpc_outcome(code: i32) -> &'static str {
    match code {
        -32700 => "parse_error",
        -32600 => "invalid_request",
        -32601 => "method_not_found",
        -32602 => "invalid_params",
        -32603 => "internal_error",
        _ => "error",
    }
}

fn query_caller(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == CALLER_QUERY)
        .map(|(_, value)| value.into_owned())
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_tags_are_short_stable_and_not_the_id() {
        let id = "4f8c2b1e-9d3a-4c6b-8e2f-1a2b3c4d5e6f";
        let tag = session_tag(id);
        assert_eq!(tag.len(), 16);
        assert!(tag.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(tag, session_tag(id), "one session, one tag");
        assert_ne!(tag, session_tag("4f8c2b1e-9d3a-4c6b-8e2f-1a2b3c4d5e60"));
        assert!(!id.contains(&tag));
    }

    #[test]
    fn caller_from_query_string() {
        assert_eq!(
            query_caller("x=1&caller=team%20a%2Fbot"),
            Some("team a/bot".into())
        );
        assert_eq!(query_caller("x=1"), None);
    }

    #[test]
    fn long_callers_are_cut_on_a_char_boundary() {
        let cut = truncate("é".repeat(100), 7);
        assert_eq!(cut, "ééé");
    }
}
