//! Plain HTTP for scripts and callers that do not speak MCP: `GET /tools`
//! (the merged catalog as this caller sees it) and `POST /tools/call`
//! (`{"name": …, "arguments": {…}}` → the tool's result as MCP returns
//! it). Each request is a one-request session of the gateway's own
//! ([`Sessions::detached`]) going through the same methods as MCP traffic:
//! the same authentication (the layer in front), Host and Origin checks,
//! rate limits, access policies, breakers, timeouts, spans and metrics.
//! What MCP says in a JSON-RPC error or a gateway `isError` result, REST
//! says with a status: unknown tool 404, invalid arguments 400, denied
//! 403, breaker open or server down 503, timeout 504. `GET /openapi.json`
//! describes both, its schemas generated from the types the handlers read
//! and answer with.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Body,
    extract::{Request, State},
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use rmcp::model::{
    ClientRequest, Implementation, InitializeRequestParams, ListToolsRequest,
    PaginatedRequestParams, RequestId,
};
use serde::Deserialize;
use serde_json::{Value, json, value::RawValue};
use tokio_util::sync::CancellationToken;

use super::{
    ERROR_META_KEY,
    answer::Refusal,
    dispatch::{Endpoint, caller},
    methods::{CallParams, Ctx},
    session::OneOff,
    sse::check_host,
};
use crate::{auth::Identity, clients::Asking, drain::Drain, policy::Kind};

/// What a REST request may send, and how long it may take to.
#[derive(Clone)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub read_timeout: Duration,
    pub drain: Drain,
}

struct Rest {
    endpoint: Arc<Endpoint>,
    limits: BodyLimits,
}

/// A REST request's session, and the drain held open while it runs.
struct OneRequest {
    session: OneOff,
    _blocker: crate::drain::Blocker,
}

/// A `POST /tools/call` body.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct CallBody {
    /// The tool, as `GET /tools` names it.
    name: String,
    /// The tool's arguments, as its input schema describes them.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    arguments: Option<Box<RawValue>>,
}

pub fn router(endpoint: Arc<Endpoint>, limits: BodyLimits) -> Router {
    let rest = Arc::new(Rest { endpoint, limits });
    Router::new()
        .route("/tools", get(tools))
        .route("/tools/call", post(call))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .with_state(rest)
}

/// The OpenAPI 3.1 document of this API.
pub fn openapi() -> Value {
    let mut generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|settings| settings.definitions_path = "/components/schemas".into())
        .into_generator();
    let call = generator.subschema_for::<CallBody>();
    let tool = generator.subschema_for::<rmcp::model::Tool>();
    let result = generator.subschema_for::<rmcp::model::CallToolResult>();
    let mut schemas = generator.take_definitions(true);
    schemas.insert(
        "Problem".into(),
        json!({ "type": "object", "required": ["error"], "properties": { "error": {
            "type": "object", "required": ["message"],
            "properties": { "message": { "type": "string" }, "data": {} } } } }),
    );
    let problem = |description: &str| {
        json!({ "description": description, "content": { "application/json": {
            "schema": { "$ref": "#/components/schemas/Problem" } } } })
    };
    let failed_call = |description: &str| {
        json!({ "description": description, "content": { "application/json": {
            "schema": result.clone() } } })
    };
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Switchboard gateway REST API", "version": env!("CARGO_PKG_VERSION") },
        "security": [{ "bearer": [] }, {}],
        "paths": {
            "/tools": { "get": {
                "summary": "Every tool the caller may use, with its input schema",
                "parameters": [{ "name": "caller", "in": "query", "required": false,
                                 "schema": { "type": "string" } }],
                "responses": {
                    "200": { "description": "The tools", "content": { "application/json": {
                        "schema": { "type": "object", "required": ["tools"],
                                    "properties": { "tools": { "type": "array", "items": tool } } } } } },
                    "401": problem("A token is needed"),
                    "429": problem("Over the client's rate"),
                } } },
            "/tools/call": { "post": {
                "summary": "Calls a tool; its result as MCP returns it",
                "parameters": [{ "name": "caller", "in": "query", "required": false,
                                 "schema": { "type": "string" } }],
                "requestBody": { "required": true, "content": { "application/json": { "schema": call } } },
                "responses": {
                    "200": failed_call("The tool's result (its own errors too, with isError)"),
                    "400": problem("Not a call, or arguments the server refuses"),
                    "401": problem("A token is needed"),
                    "403": problem("An McpAccessPolicy denies the tool"),
                    "404": problem("No such tool"),
                    "429": problem("Over the client's rate"),
                    "502": failed_call("The server failed"),
                    "503": failed_call("The server's breaker is open, or it is down"),
                    "504": failed_call("The server did not answer in time"),
                } } },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
        },
    })
}

/// `GET /tools`: every tool this caller may use, as `tools/list` gives
/// them, every page of it.
async fn tools(State(rest): State<Arc<Rest>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let (one, ctx) = match rest.begin(parts) {
        Ok(begun) => begun,
        Err(refused) => return refused.into_response(),
    };
    let mut tools = Vec::new();
    let mut cursor = None;
    let outcome = loop {
        let params = PaginatedRequestParams::default().with_cursor(cursor.take());
        let list = ClientRequest::ListToolsRequest(ListToolsRequest::with_param(params));
        let Some(answer) = rest.endpoint.methods.answer(&one.session, &ctx, list).await else {
            break Err("the gateway is stopping".to_owned());
        };
        let page: Value = serde_json::from_slice(&answer).unwrap_or_default();
        // A page may fail (the catalog changed between pages): no partial list.
        let Some(items) = page["result"]["tools"].as_array() else {
            let message = page["error"]["message"]
                .as_str()
                .unwrap_or("tools/list failed");
            break Err(message.to_owned());
        };
        tools.extend(items.iter().cloned());
        match page["result"]["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break Ok(()),
        }
    };
    match outcome {
        Ok(()) => Json(json!({ "tools": tools })).into_response(),
        Err(message) => problem(StatusCode::SERVICE_UNAVAILABLE, message, None),
    }
}

/// `POST /tools/call`.
async fn call(State(rest): State<Arc<Rest>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    // As `/mcp`: a JSON body only, which a page of another origin cannot
    // send without asking first (CORS).
    let json_body = parts
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json_body {
        return Refusal::unsupported_media_type("Content-Type must be application/json")
            .into_response();
    }
    let body = match rest.read(body).await {
        Ok(body) => body,
        Err(refused) => return refused.into_response(),
    };
    let call: CallBody = match serde_json::from_slice(&body) {
        Ok(call) => call,
        Err(err) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("the body must be {{\"name\": \"<tool>\", \"arguments\": {{…}}}}: {err}"),
                None,
            );
        }
    };
    if call
        .arguments
        .as_ref()
        .is_some_and(|a| !a.get().trim_start().starts_with('{'))
    {
        return problem(
            StatusCode::BAD_REQUEST,
            "`arguments` must be a JSON object".to_owned(),
            None,
        );
    }
    let (one, ctx) = match rest.begin(parts) {
        Ok(begun) => begun,
        Err(refused) => return refused.into_response(),
    };
    if let Some(why) = ctx
        .access
        .as_ref()
        .and_then(|access| access.refuse(Kind::Tool, &call.name))
    {
        return problem(StatusCode::FORBIDDEN, why, None);
    }
    let params = CallParams {
        name: call.name,
        arguments: call.arguments,
        meta: Default::default(),
        params: None,
    };
    let answer = rest.endpoint.methods.call(&one.session, &ctx, params).await;
    match answer {
        Some(answer) => to_response(&answer),
        None => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the call was cancelled: the gateway is stopping".to_owned(),
            None,
        ),
    }
}

impl Rest {
    /// The checks every REST request passes, then its one-request session
    /// and context.
    fn begin(&self, parts: Parts) -> Result<(OneRequest, Ctx), Refusal> {
        let endpoint = &self.endpoint;
        check_host(&endpoint.allowed_hosts, &parts).map_err(Refusal::forbidden)?;
        if self.limits.drain.is_draining() {
            return Err(Refusal::shutting_down());
        }
        let identity = parts.extensions.get::<Identity>();
        if let Some(identity) = identity {
            endpoint
                .rates
                .take(&identity.owner)
                .map_err(|retry_after| {
                    Refusal::rate_limited(&identity.name, endpoint.rates.rate(), retry_after)
                })?;
        }
        let access = match identity {
            Some(identity) => endpoint.policies.access(identity),
            None => endpoint.policies.anonymous_access(),
        };
        let handshake = InitializeRequestParams::new(
            Default::default(),
            Implementation::new("rest", env!("CARGO_PKG_VERSION")),
        );
        let one = OneRequest {
            session: endpoint
                .sessions
                .detached(handshake, caller(&parts), Asking::Never),
            _blocker: self.limits.drain.blocker(),
        };
        let ctx = Ctx {
            id: RequestId::Number(1),
            meta: Default::default(),
            parts: Arc::new(parts),
            access: access.map(Arc::new),
            cancel: CancellationToken::new(),
            stream: None,
        };
        Ok((one, ctx))
    }

    /// The whole body, within the size and time MCP requests get.
    async fn read(&self, body: Body) -> Result<axum::body::Bytes, Refusal> {
        let limits = &self.limits;
        let read = axum::body::to_bytes(body, limits.max_bytes);
        match tokio::time::timeout(limits.read_timeout, read).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(err)) => {
                let too_large = std::error::Error::source(&err)
                    .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
                Err(match too_large {
                    true => Refusal::too_large(limits.max_bytes),
                    false => {
                        Refusal::invalid_request(format!("cannot read the request body: {err}"))
                    }
                })
            }
            Err(_) => Err(Refusal::too_slow(limits.read_timeout)),
        }
    }
}

/// A `tools/call` answer as HTTP: the result (200, a tool's own error
/// included), or the failure with the status that names it.
fn to_response(answer: &[u8]) -> Response {
    let answer: Value = serde_json::from_slice(answer).unwrap_or_default();
    if let Some(error) = answer.get("error") {
        let message = error["message"]
            .as_str()
            .unwrap_or("the call failed")
            .to_owned();
        let status = match (error["code"].as_i64(), error["data"].get("tool")) {
            (Some(-32602), Some(_)) => StatusCode::NOT_FOUND,
            (Some(-32602), None) => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        };
        return problem(status, message, error.get("data").cloned());
    }
    let result = answer.get("result").cloned().unwrap_or_default();
    let kind = result["_meta"][ERROR_META_KEY]["kind"].as_str();
    let status = match kind {
        None => return Json(result).into_response(),
        Some("breaker_open" | "unavailable") => StatusCode::SERVICE_UNAVAILABLE,
        Some("timeout") => StatusCode::GATEWAY_TIMEOUT,
        Some(_) => StatusCode::BAD_GATEWAY,
    };
    (status, Json(result)).into_response()
}

/// An error body: `{"error": {"message": …, "data": …}}`.
fn problem(status: StatusCode, message: String, data: Option<Value>) -> Response {
    let mut error = json!({ "message": message });
    if let Some(data) = data {
        error["data"] = data;
    }
    (status, Json(json!({ "error": error }))).into_response()
}
