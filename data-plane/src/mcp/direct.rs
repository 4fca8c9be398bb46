//! The direct path: `tools/call` on a live session without rmcp's session
//! machinery. The request is read once, routed by the catalog and written
//! to the stdio server with the server's tool name; the server's result goes
//! back to the client as `application/json`, never parsed into types and
//! serialised again. rmcp's path costs a session worker hop, a service
//! loop, two typed parses and an SSE stream per call, which under load
//! was most of the gateway's time (README, "Performance").
//!
//! Only a call that needs nothing else of the session goes this way: no
//! progress token and no protocol keys in its `_meta`, from a client that
//! cannot be asked for sampling or elicitation, to a shared stdio server,
//! on a live session rmcp has seen lately, with headers rmcp would take as
//! they are. Everything else, and every error the gateway answers itself
//! (unknown tool, malformed request, a refused host), takes rmcp's path, so
//! both answer alike. Spans, metrics, the request log line, breakers,
//! timeouts and cancellation (the client's `notifications/cancelled`, or
//! it going away) are the same on both.

use std::{
    borrow::Cow,
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderValue, Method, StatusCode, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use parking_lot::Mutex;
use rmcp::{
    ErrorData, RoleServer,
    model::{JsonObject, ProtocolVersion, RequestId, RequestMetaObject},
    service::Peer,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::{
    Error,
    park::{Book, OpenStream},
    single::WINDOW,
    sse::check_host,
};
use crate::{
    catalog::{CatalogReader, Route},
    clients::SessionKey,
    downstream::Origin,
    observe::{Arrival, Observation, RequestInfo, Target},
    spec::{SessionMode, Transport},
    telemetry::Telemetry,
};

/// Keep-alive comments on a stream waiting for a slow answer (as rmcp's).
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What the direct path needs of the `/mcp` endpoint.
pub struct DirectPath {
    pub book: Arc<Book>,
    pub catalog: CatalogReader,
    pub telemetry: Telemetry,
    pub allowed_hosts: Arc<[String]>,
}

/// What a direct call needs of its session; the book holds it while the
/// session is live.
pub struct DirectSession {
    key: SessionKey,
    peer: Peer<RoleServer>,
    caller: Arc<OnceLock<String>>,
    /// Direct calls in flight, by the client's request id.
    calls: Mutex<HashMap<RequestId, CancellationToken>>,
}

/// A client message, read only as far as choosing its path.
#[derive(Deserialize)]
struct Incoming<'a> {
    id: Option<RequestId>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CancelledParams {
    #[serde(rename = "requestId")]
    request_id: RequestId,
}

/// A `tools/call` on its way, owning all it needs: the response may
/// outlive the handler as a stream.
struct Call {
    /// The tool as the client named it.
    name: String,
    id: RequestId,
    params: JsonObject,
    meta: RequestMetaObject,
    route: Route,
    session: Arc<DirectSession>,
    cancel: CancellationToken,
    _open: OpenStream,
    _in_table: InTable,
}

/// Removes a call from its session's table when it ends, however it ends.
struct InTable {
    session: Arc<DirectSession>,
    id: RequestId,
}

// === impl DirectSession ===

impl DirectSession {
    /// `None` for a client that may be asked for sampling or elicitation:
    /// those ride the response stream of the call they serve, which the
    /// direct path does not open.
    pub fn new(
        key: SessionKey,
        peer: Peer<RoleServer>,
        caller: Arc<OnceLock<String>>,
    ) -> Option<Self> {
        let capabilities = &peer.peer_info()?.capabilities;
        if capabilities.sampling.is_some() || capabilities.elicitation.is_some() {
            return None;
        }
        Some(Self {
            key,
            peer,
            caller,
            calls: Mutex::default(),
        })
    }

    /// Cancels every direct call in flight: the session ended.
    pub fn cancel_all(&self) {
        for call in self.calls.lock().values() {
            call.cancel();
        }
    }
}

impl Drop for InTable {
    fn drop(&mut self) {
        self.session.calls.lock().remove(&self.id);
    }
}

/// The middleware on `/mcp`: answers what the direct path takes, passes
/// everything else on to rmcp untouched.
pub async fn direct_path(
    State(path): State<Arc<DirectPath>>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST || !request.headers().contains_key("mcp-session-id") {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    // The guard has read the body already: this takes its one chunk.
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    let answered = match serde_json::from_slice::<Incoming<'_>>(&bytes) {
        Ok(incoming) if path.takes(&parts) => path.answer(parts, incoming).await,
        _ => Err(parts),
    };
    match answered {
        Ok(response) => response,
        Err(parts) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    }
}

// === impl DirectPath ===

impl DirectPath {
    /// Whether rmcp would take the request's headers as they are.
    fn takes(&self, parts: &Parts) -> bool {
        let header = |name| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let accepts = |wanted: &str| {
            parts
                .headers
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|media| essence(media).eq_ignore_ascii_case(wanted))
        };
        let json_body = header(header::CONTENT_TYPE.as_str())
            .is_some_and(|v| essence(v).eq_ignore_ascii_case("application/json"));
        // Later revisions add header checks rmcp makes; those go through it.
        let known_version = header("mcp-protocol-version").is_none_or(|version| {
            ProtocolVersion::known_up_to(&ProtocolVersion::LATEST_WITH_INITIALIZE)
                .iter()
                .any(|known| {
                    known.as_str() == version
                        && version < ProtocolVersion::STANDARD_HEADERS.as_str()
                })
        });
        json_body
            && known_version
            && accepts("application/json")
            && accepts("text/event-stream")
            && check_host(&self.allowed_hosts, parts).is_ok()
    }

    /// The answer to a message the direct path takes; the request's parts
    /// back if it goes to rmcp.
    async fn answer(&self, parts: Parts, incoming: Incoming<'_>) -> Result<Response, Parts> {
        let Some(session_id) = parts
            .headers
            .get("mcp-session-id")
            .and_then(|id| id.to_str().ok())
        else {
            return Err(parts);
        };
        let params = incoming.params.map(RawValue::get);
        match (&*incoming.method, incoming.id, params) {
            ("tools/call", Some(id), Some(params)) => {
                let Ok(params) = serde_json::from_str(params) else {
                    return Err(parts);
                };
                match self.call(session_id, id, params) {
                    Some(call) => Ok(call.respond(parts, &self.telemetry).await),
                    None => Err(parts),
                }
            }
            ("notifications/cancelled", None, Some(params)) => {
                let cancelled = serde_json::from_str::<CancelledParams>(params)
                    .ok()
                    .and_then(|params| {
                        let session = self.book.direct_session(session_id)?;
                        let call = session.calls.lock().get(&params.request_id)?.clone();
                        Some(call)
                    });
                match cancelled {
                    Some(call) => {
                        call.cancel();
                        Ok(StatusCode::ACCEPTED.into_response())
                    }
                    None => Err(parts),
                }
            }
            _ => Err(parts),
        }
    }

    /// A `tools/call` the direct path takes, ready to go; `None` if it
    /// must take rmcp's path.
    fn call(&self, session_id: &str, id: RequestId, mut params: JsonObject) -> Option<Call> {
        let name = params.get("name")?.as_str()?.to_owned();
        // Arguments rmcp would refuse get its refusal.
        if params
            .get("arguments")
            .is_some_and(|arguments| !arguments.is_object() && !arguments.is_null())
        {
            return None;
        }
        let meta = match params.remove("_meta") {
            None => JsonObject::new(),
            Some(serde_json::Value::Object(meta)) => meta,
            Some(_) => return None,
        };
        // Keys of this hop (rmcp's path strips or checks them).
        if meta
            .keys()
            .any(|key| key == "progressToken" || key.starts_with("io.modelcontextprotocol/"))
            || self.telemetry.log_payloads
        {
            return None;
        }
        let route = self.catalog.load().route(&name).cloned()?;
        let spec = &route.server.spec;
        if !matches!(spec.transport, Transport::Stdio(_))
            || spec.session_mode != SessionMode::Shared
        {
            return None;
        }
        let (open, session) = self.book.open_direct(session_id, &id)?;
        let cancel = CancellationToken::new();
        if session
            .calls
            .lock()
            .insert(id.clone(), cancel.clone())
            .is_some()
        {
            return None;
        }
        let in_table = InTable {
            session: session.clone(),
            id: id.clone(),
        };
        self.telemetry.metrics.direct_calls.inc();
        Some(Call {
            name,
            id,
            params,
            meta: RequestMetaObject::from(meta),
            route,
            session,
            cancel,
            _open: open,
            _in_table: in_table,
        })
    }
}

// === impl Call ===

impl Call {
    /// Relays the call and frames its answer as `single.rs` does: JSON if
    /// it comes within the window, else a stream that starts at once and
    /// carries keep-alives until the answer.
    async fn respond(self, parts: Parts, telemetry: &Telemetry) -> Response {
        let metrics = telemetry.metrics.clone();
        let mut answer = Box::pin(self.relay(parts, telemetry.clone()));
        tokio::select! {
            body = &mut answer => {
                metrics.answered_json.inc();
                let mut response = Response::new(Body::from(body));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            () = tokio::time::sleep(WINDOW) => {
                metrics.answered_sse.inc();
                let start = tokio::time::Instant::now() + SSE_KEEP_ALIVE;
                let keep_alive = tokio::time::interval_at(start, SSE_KEEP_ALIVE);
                let events = futures::stream::unfold(Some((answer, keep_alive)), |state| async move {
                    let (mut answer, mut keep_alive) = state?;
                    tokio::select! {
                        body = &mut answer => {
                            let event = [b"event: message\ndata: ".as_slice(), &body, b"\n\n"].concat();
                            Some((Ok::<_, Infallible>(Bytes::from(event)), None))
                        }
                        _ = keep_alive.tick() => {
                            Some((Ok(Bytes::from_static(b":\n\n")), Some((answer, keep_alive))))
                        }
                    }
                });
                let mut response = Response::new(Body::from_stream(events));
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                response
            }
        }
    }

    /// Sends the call on and returns the JSON-RPC response for the client.
    /// Dropped before it ends (the client went away), the call is
    /// cancelled at the server and observed as cancelled.
    async fn relay(self, parts: Parts, telemetry: Telemetry) -> Bytes {
        let Call {
            name,
            id,
            mut params,
            mut meta,
            route,
            session,
            cancel,
            ..
        } = self;
        let server = &route.server;
        let peer_info = session.peer.peer_info();
        let request = RequestInfo {
            method: "tools/call",
            target: Some(Target::Tool(name)),
            initialize: None,
            session_caller: &session.caller,
        };
        let arrival = Arrival {
            parts: Some(&parts),
            peer: peer_info.as_deref(),
            meta: &meta,
            request_id: id.to_string(),
        };
        let mut observation = Observation::begin_at(&telemetry, request, arrival);
        observation.set_server(server.spec.name.clone());
        if let Some(trace) = observation.trace() {
            meta.set_traceparent(trace.to_traceparent());
        }
        let origin = Origin {
            session: session.key,
            client: session.peer.clone(),
            request_id: id.clone(),
            progress_token: None,
        };
        params.insert("name".to_owned(), route.name.to_string().into());
        let outcome = server
            .call_tool_direct(&origin, &route.name, params, meta, &cancel)
            .await;
        match outcome {
            Ok(result) => {
                observation.complete(&Ok::<_, ErrorData>(()), result.is_error);
                answer(&id, "result", result.result.get().as_bytes())
            }
            Err(error) => {
                let error = Error::Call(error);
                error.describe(&mut observation);
                let response = error.into_tool_result();
                observation.complete(&response, response.is_ok());
                // rmcp's own types: encoding them cannot fail.
                let (key, value) = match &response {
                    Ok(result) => ("result", serde_json::to_vec(result)),
                    Err(error) => ("error", serde_json::to_vec(error)),
                };
                answer(&id, key, &value.unwrap_or_default())
            }
        }
    }
}

/// A JSON-RPC response whose `result` or `error` (`key`) is JSON already.
fn answer(id: &RequestId, key: &str, value: &[u8]) -> Bytes {
    let mut body = Vec::with_capacity(value.len() + 48);
    body.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    // A request id is a number or a string: encoding it cannot fail.
    let _ = serde_json::to_writer(&mut body, id);
    body.extend_from_slice(b",\"");
    body.extend_from_slice(key.as_bytes());
    body.extend_from_slice(b"\":");
    body.extend_from_slice(value);
    body.push(b'}');
    body.into()
}

/// A media type without its parameters.
fn essence(media: &str) -> &str {
    media.split(';').next().unwrap_or(media).trim()
}
