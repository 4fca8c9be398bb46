//! The direct path: `tools/call` and the catalog lists on a live session
//! without rmcp's session machinery. A call is read once, routed by the
//! catalog and written to the stdio server with the server's tool name;
//! the server's result goes back to the client as `application/json`,
//! never parsed into types and serialised again. A list is a page of the
//! catalog's items, encoded once per catalog. rmcp's path costs a session
//! worker hop, a service loop, two typed parses and an SSE stream per
//! request, which under load was most of the gateway's time (README,
//! "Performance").
//!
//! Only a call that needs nothing else of the session goes this way: no
//! protocol keys or fields beyond `name`, `arguments` and `_meta`, to a
//! shared stdio server, on a live session rmcp has seen lately, with
//! headers rmcp would take as they are and no `Origin`. Whatever the
//! server sends the client during the call rides the call's own stream:
//! progress (under the client's token) and the server's requests
//! (sampling, elicitation, roots, under ids of the gateway's, whose
//! answers the client POSTs back here). Everything else, and every error
//! the gateway answers itself (unknown tool, malformed request, a refused
//! host), takes rmcp's path, so both answer alike. Spans, metrics, the
//! request log line, breakers, timeouts, cancellation and resuming a
//! stream after a dropped connection (`replay.rs`) are the same on both.

use std::{
    borrow::Cow,
    collections::HashMap,
    convert::Infallible,
    pin::Pin,
    sync::{Arc, OnceLock},
};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures::Stream;
use parking_lot::Mutex;
use rmcp::{
    ErrorData, RoleServer,
    model::{
        CancelledNotification, CancelledNotificationParam, ClientResult, JsonObject,
        ProgressNotificationParam, ProgressToken, ProtocolVersion, RequestId, RequestMetaObject,
        ServerJsonRpcMessage, ServerNotification, ServerRequest,
    },
    service::Peer,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug};

use super::{
    Error,
    answer::Refusal,
    page,
    park::{Book, OpenStream},
    replay::{KEEP_FINISHED, Replay, parse_event_id},
    single::WINDOW,
    sse::{AllowedHosts, check_host},
};
use crate::{
    catalog::{CatalogReader, List, Route},
    clients::SessionKey,
    downstream::{CallError, Origin, ToStream},
    observe::{Arrival, Observation, RequestInfo, Target},
    spec::{SessionMode, Transport},
    telemetry::Telemetry,
};

const LAST_EVENT_ID: &str = "last-event-id";
/// Messages for a slow client's stream queued before the relay waits.
const STREAM_BUFFER: usize = 64;

/// What the direct path needs of the `/mcp` endpoint.
pub struct DirectPath {
    pub book: Arc<Book>,
    pub catalog: CatalogReader,
    pub telemetry: Telemetry,
    pub allowed_hosts: AllowedHosts,
    /// Items per page of a catalog list.
    pub page_size: usize,
}

/// What a direct call needs of its session; the book holds it while the
/// session is live.
pub struct DirectSession {
    key: SessionKey,
    peer: Peer<RoleServer>,
    caller: Arc<OnceLock<String>>,
    /// The client may be asked for something (sampling, elicitation,
    /// roots): every call of its gets a stream for those requests.
    askable: bool,
    calls: Mutex<Calls>,
    /// Cancelled when the session ends.
    ended: CancellationToken,
}

/// A session's direct calls in flight, by the client's request id.
#[derive(Default)]
struct Calls {
    by_id: HashMap<RequestId, CancellationToken>,
    /// Server requests on the streams of direct calls, waiting for the
    /// client's answer, by the id the client was given.
    asked: HashMap<RequestId, Asked>,
    /// Streamed answers, resumable by `Last-Event-ID`.
    replays: HashMap<u64, Arc<Replay>>,
    /// The session ended: no call starts any more.
    closed: bool,
}

/// A server request the client has been sent on a direct call's stream.
struct Asked {
    /// Reads the client's result as the type the request expects.
    read: fn(&str) -> serde_json::Result<ClientResult>,
    answer_to: oneshot::Sender<Result<ClientResult, ErrorData>>,
}

/// A client message, read only as far as choosing its path.
#[derive(Deserialize)]
struct Incoming<'a> {
    id: Option<RequestId>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

impl Incoming<'_> {
    /// An answer to a server request or a cancel: it may concern a call on
    /// the direct path, which rmcp has never seen.
    fn about_direct(&self) -> bool {
        match self.method.as_deref() {
            None => self.id.is_some(),
            Some(method) => method == "notifications/cancelled",
        }
    }
}

/// The params of a list request the direct path takes: rmcp's path
/// judges anything else.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListParams {
    cursor: Option<String>,
    #[serde(rename = "_meta")]
    meta: Option<JsonObject>,
}

/// `value` without line breaks: a stdio server reads each line as a
/// message of its own, so one left in a client's arguments would end the
/// call's line early and could smuggle a message of the client's making to
/// a server other clients share. JSON allows a raw line break only between
/// tokens, where a space means the same.
fn one_line(value: Box<RawValue>) -> Option<Box<RawValue>> {
    if memchr::memchr2(b'\n', b'\r', value.get().as_bytes()).is_none() {
        return Some(value);
    }
    RawValue::from_string(value.get().replace(['\n', '\r'], " ")).ok()
}

/// The params of a `tools/call` the direct path takes: rmcp's path judges
/// anything else (the guard has already refused mistyped ones). The
/// arguments are kept as the client wrote them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallParams {
    name: String,
    arguments: Option<Box<RawValue>>,
    #[serde(rename = "_meta")]
    meta: Option<JsonObject>,
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
    /// The client's, if it asked for progress.
    progress_token: Option<ProgressToken>,
    /// As the client wrote them.
    arguments: Option<Box<RawValue>>,
    meta: RequestMetaObject,
    route: Route,
    session: Arc<DirectSession>,
    cancel: CancellationToken,
    telemetry: Telemetry,
    _open: OpenStream,
    _in_table: InTable,
}

/// Removes a call from its session's table when it ends, however it ends.
struct InTable {
    session: Arc<DirectSession>,
    id: RequestId,
}

/// The middleware on `/mcp`: answers what the direct path takes, passes
/// everything else on to rmcp untouched.
pub async fn direct_path(
    State(path): State<Arc<DirectPath>>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() == Method::GET && request.headers().contains_key(LAST_EVENT_ID) {
        let (parts, body) = request.into_parts();
        return match path.resume(&parts) {
            Some(response) => response,
            None => next.run(Request::from_parts(parts, body)).await,
        };
    }
    if request.method() != Method::POST || !request.headers().contains_key("mcp-session-id") {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    // The guard has read the body already: this takes its one chunk.
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(error) => {
            return Refusal::invalid_request(format!("cannot read the request body: {error}"))
                .into_response();
        }
    };
    let answered = match serde_json::from_slice::<Incoming<'_>>(&bytes) {
        // What only concerns the direct path's own calls (an answer to a
        // server request, a cancel) is taken with whatever headers came.
        Ok(incoming) if path.takes(&parts) || (incoming.about_direct() && path.local(&parts)) => {
            path.answer(parts, incoming).await
        }
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
        let header = |name| parts.headers.get(name).map(|v| v.to_str().ok());
        let json_body = header(header::CONTENT_TYPE)
            .flatten()
            .is_some_and(|v| essence(v).eq_ignore_ascii_case("application/json"));
        // Later revisions add header checks rmcp makes; those go through it.
        let known_version = match header(http::HeaderName::from_static("mcp-protocol-version")) {
            None => true,
            Some(None) => false,
            Some(Some(version)) => {
                ProtocolVersion::known_up_to(&ProtocolVersion::LATEST_WITH_INITIALIZE)
                    .iter()
                    .any(|known| {
                        known.as_str() == version
                            && version < ProtocolVersion::STANDARD_HEADERS.as_str()
                    })
            }
        };
        json_body
            && known_version
            && accepts(&parts.headers, &["application/json", "text/event-stream"])
            && self.local(parts)
    }

    /// Not a browser's request (its origin is rmcp's to judge), and for an
    /// allowed host.
    fn local(&self, parts: &Parts) -> bool {
        !parts.headers.contains_key(header::ORIGIN)
            && check_host(&self.allowed_hosts, parts).is_ok()
    }

    /// A client picking up a streamed direct answer where its connection
    /// broke: what came after the event it names, then the rest live.
    /// `None` sends the request through rmcp (not one of ours, or gone).
    fn resume(&self, parts: &Parts) -> Option<Response> {
        let header = |name| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let (stream, number) = parse_event_id(header(LAST_EVENT_ID)?)?;
        let session = self.book.direct_session(header("mcp-session-id")?)?;
        if !self.local(parts) || !accepts(&parts.headers, &["text/event-stream"]) {
            return None;
        }
        let replay = session.calls.lock().replays.get(&stream)?.clone();
        let events = replay.follow(number.checked_add(1)?)?;
        debug!(
            stream,
            after = number,
            "a client resumed a direct answer's stream"
        );
        Some(stream_response(events))
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
        let answered = match (incoming.method.as_deref(), incoming.id, params) {
            (Some("tools/call"), Some(id), Some(params)) => serde_json::from_str(params)
                .ok()
                .and_then(|params| self.call(session_id, id, params))
                .map(|call| Answered::Call(Box::new(call))),
            (Some(method), Some(id), params) if let Some(list) = List::from_method(method) => {
                let params = match params {
                    None => Some(ListParams::default()),
                    Some(params) => serde_json::from_str(params).ok(),
                };
                params
                    .and_then(|params| self.list(session_id, id, list, params, &parts))
                    .map(Answered::List)
            }
            // The client's answer to a server request on a direct call's
            // stream.
            (None, Some(id), None) => self
                .book
                .direct_session(session_id)
                .and_then(|session| session.answered(&id, incoming.result, incoming.error))
                .map(|()| Answered::Accepted),
            (Some("notifications/cancelled"), None, Some(params)) => {
                serde_json::from_str::<CancelledParams>(params)
                    .ok()
                    .and_then(|params| {
                        let session = self.book.direct_session(session_id)?;
                        let calls = session.calls.lock();
                        Some(calls.by_id.get(&params.request_id)?.clone())
                    })
                    .map(Answered::Cancel)
            }
            _ => None,
        };
        match answered {
            Some(Answered::Call(call)) => Ok(call.respond(parts).await),
            Some(Answered::Cancel(call)) => {
                call.cancel();
                Ok(StatusCode::ACCEPTED.into_response())
            }
            Some(Answered::Accepted) => Ok(StatusCode::ACCEPTED.into_response()),
            Some(Answered::List(body)) => Ok(json_response(body)),
            None => Err(parts),
        }
    }

    /// A `tools/call` the direct path takes, ready to go; `None` if it
    /// must take rmcp's path.
    fn call(&self, session_id: &str, id: RequestId, params: CallParams) -> Option<Call> {
        let CallParams {
            name,
            arguments,
            meta,
        } = params;
        let arguments = match arguments {
            None => None,
            Some(arguments) => Some(one_line(arguments)?),
        };
        let mut meta = meta.unwrap_or_default();
        // The server gets a token of the gateway's; the client's is restored.
        let progress_token = match meta.remove("progressToken") {
            None => None,
            Some(token) => Some(serde_json::from_value::<ProgressToken>(token).ok()?),
        };
        // Protocol keys of this hop: rmcp's path checks them.
        if has_hop_keys(&meta) || self.telemetry.log_payloads {
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
        let cancel = session.begin(&id)?;
        let in_table = InTable {
            session: session.clone(),
            id: id.clone(),
        };
        self.telemetry.metrics.direct_calls.inc();
        Some(Call {
            name,
            id,
            progress_token,
            arguments,
            meta: RequestMetaObject::from(meta),
            route,
            session,
            cancel,
            telemetry: self.telemetry.clone(),
            _open: open,
            _in_table: in_table,
        })
    }

    /// A page of a catalog list, as the JSON-RPC response: its items were
    /// encoded once per catalog, so this copies bytes. `None` sends the
    /// request through rmcp (which also answers an invalid cursor).
    fn list(
        &self,
        session_id: &str,
        id: RequestId,
        list: List,
        params: ListParams,
        parts: &Parts,
    ) -> Option<Bytes> {
        let meta = params.meta.unwrap_or_default();
        if has_hop_keys(&meta) || self.telemetry.log_payloads {
            return None;
        }
        let catalog = self.catalog.load();
        let items = catalog.encoded(list)?;
        let (range, next) = page(items.len(), self.page_size, params.cursor.as_deref()).ok()?;
        let (_open, session) = self.book.open_direct(session_id, &id)?;
        let meta = RequestMetaObject::from(meta);
        let observation = session.observe(&self.telemetry, list.method(), None, &id, parts, &meta);
        let items = &items[range];
        let size = items.iter().map(|item| item.get().len() + 1).sum::<usize>();
        let mut body = json_rpc_head(&id, "result", size + 64);
        body.push(b'{');
        if let Some(next) = next {
            body.extend_from_slice(br#""nextCursor":""#);
            body.extend_from_slice(next.as_bytes());
            body.extend_from_slice(br#"","#);
        }
        body.push(b'"');
        body.extend_from_slice(list.key().as_bytes());
        body.extend_from_slice(b"\":[");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(item.get().as_bytes());
        }
        body.extend_from_slice(b"]}}");
        observation.complete(&Ok::<_, ErrorData>(()), false);
        self.telemetry.metrics.direct_lists.inc();
        self.telemetry.metrics.answered_json.inc();
        Some(body.into())
    }
}

/// How a call's answer begins.
enum Head {
    Done(Option<Bytes>),
    /// Something for the client before the answer.
    Early(Box<ToStream>),
    Slow,
}

/// What the direct path does with a message it takes.
enum Answered {
    Call(Box<Call>),
    Cancel(CancellationToken),
    List(Bytes),
    /// Taken, nothing to answer but 202.
    Accepted,
}

// === impl DirectSession ===

impl DirectSession {
    /// `None` before the client has said who it is.
    pub fn new(
        key: SessionKey,
        peer: Peer<RoleServer>,
        caller: Arc<OnceLock<String>>,
    ) -> Option<Self> {
        let capabilities = &peer.peer_info()?.capabilities;
        let askable = capabilities.sampling.is_some()
            || capabilities.elicitation.is_some()
            || capabilities.roots.is_some();
        Some(Self {
            key,
            peer,
            caller,
            askable,
            calls: Mutex::default(),
            ended: CancellationToken::new(),
        })
    }

    /// Cancels every direct call in flight and refuses new ones: the
    /// session ended.
    pub fn close(&self) {
        let mut calls = self.calls.lock();
        calls.closed = true;
        for call in calls.by_id.values() {
            call.cancel();
        }
        // Nobody is left to answer: the servers' requests fail.
        calls.asked.clear();
        calls.replays.clear();
        self.ended.cancel();
    }

    /// A message for the client as an SSE event; `None` if there is
    /// nothing to say (a question withdrawn before it was asked, or asked
    /// of a session that has ended, which fails it at once). A question's
    /// answer finds its way back by its id ([`Self::answered`]).
    fn event(&self, item: ToStream) -> Option<Bytes> {
        let message = match item {
            ToStream::Progress(update) => return Some(progress_event(update)),
            ToStream::Request {
                id,
                request,
                answer_to,
            } => {
                let read = reader_for(&request);
                let mut calls = self.calls.lock();
                if calls.closed {
                    return None;
                }
                // Questions nobody waits for any more.
                calls.asked.retain(|_, asked| !asked.answer_to.is_closed());
                calls.asked.insert(id.clone(), Asked { read, answer_to });
                ServerJsonRpcMessage::request(request, id)
            }
            ToStream::Withdrawn(id) => {
                self.calls.lock().asked.remove(&id)?;
                let reason = "the server no longer needs an answer".to_owned();
                let cancelled = CancelledNotificationParam::new(Some(id), Some(reason));
                ServerJsonRpcMessage::notification(ServerNotification::CancelledNotification(
                    CancelledNotification::new(cancelled),
                ))
            }
        };
        // rmcp's own types: encoding them cannot fail.
        Some(event(&serde_json::to_vec(&message).unwrap_or_default()))
    }

    /// A new resumable stream for a streamed answer; `None` once the
    /// session has ended.
    fn open_replay(&self) -> Option<Arc<Replay>> {
        let mut calls = self.calls.lock();
        if calls.closed {
            return None;
        }
        let replay = Replay::new();
        calls.replays.insert(replay.stream(), replay.clone());
        Some(replay)
    }

    /// Hands the client's answer to the server request it answers; `None`
    /// if no direct call asked it (rmcp's path takes it then).
    fn answered(
        &self,
        id: &RequestId,
        result: Option<&RawValue>,
        error: Option<&RawValue>,
    ) -> Option<()> {
        let asked = self.calls.lock().asked.remove(id)?;
        let answer = match (result, error) {
            (Some(result), None) => (asked.read)(result.get()).map_err(|error| {
                ErrorData::invalid_params(
                    format!("the client's answer is malformed: {error}"),
                    None,
                )
            }),
            (None, Some(error)) => Err(serde_json::from_str(error.get()).unwrap_or_else(|error| {
                ErrorData::internal_error(format!("the client's error is malformed: {error}"), None)
            })),
            _ => Err(ErrorData::invalid_params(
                "the client's answer has neither a result nor an error",
                None,
            )),
        };
        let _ = asked.answer_to.send(answer);
        Some(())
    }

    /// Enters a call in the table; `None` if the session has ended or the
    /// id is taken.
    fn begin(&self, id: &RequestId) -> Option<CancellationToken> {
        let mut calls = self.calls.lock();
        if calls.closed || calls.by_id.contains_key(id) {
            return None;
        }
        let cancel = CancellationToken::new();
        calls.by_id.insert(id.clone(), cancel.clone());
        Some(cancel)
    }
}

// === impl Call ===

impl Call {
    /// Relays the call and frames its answer as `single.rs` does: JSON if
    /// it is all there is and comes within the window, else a stream that
    /// starts at once, carries its progress, server requests and
    /// keep-alives until the answer, and outlives the connection. A
    /// cancelled call gets no answer (as on rmcp's path): its stream ends
    /// without one.
    async fn respond(self, parts: Parts) -> Response {
        let metrics = self.telemetry.metrics.clone();
        let session = self.session.clone();
        // A stream of its own only for a client that asked for progress or
        // may be asked something.
        let (stream_to, mut early) = match self.progress_token.is_some() || session.askable {
            true => {
                let (stream_to, early) = mpsc::channel(STREAM_BUFFER);
                (Some(stream_to), Some(early))
            }
            false => (None, None),
        };
        let mut answer = Box::pin(self.relay(parts, stream_to));
        let head = tokio::select! {
            biased;
            done = &mut answer => Head::Done(done),
            Some(first) = next_early(&mut early) => Head::Early(Box::new(first)),
            () = tokio::time::sleep(WINDOW) => Head::Slow,
        };
        let (first, done) = match head {
            // What went to the client's stream goes out before the answer:
            // none queued, none came.
            Head::Done(done) => match early.as_mut().and_then(|p| p.try_recv().ok()) {
                Some(first) => (Some(first), Some(done)),
                None => match done {
                    Some(body) => {
                        metrics.answered_json.inc();
                        return json_response(body);
                    }
                    None => return stream_response(futures::stream::empty()),
                },
            },
            Head::Early(first) => (Some(*first), None),
            Head::Slow => (None, None),
        };
        metrics.answered_sse.inc();
        let Some(replay) = session.open_replay() else {
            // The session ended in the window: the call is cancelled.
            return stream_response(futures::stream::empty());
        };
        if let Some(event) = first.and_then(|first| session.event(first)) {
            replay.push(&event);
        }
        let state = Streaming {
            answer,
            done,
            early,
            session,
        };
        // From here the call runs without the connection, as on rmcp's
        // path: a client that loses it resumes with `Last-Event-ID`.
        tokio::spawn(state.run(replay.clone()).in_current_span());
        match replay.follow(0) {
            Some(events) => stream_response(events),
            None => stream_response(futures::stream::empty()),
        }
    }

    /// Sends the call on; the JSON-RPC response for the client, `None` if
    /// the call was cancelled. Dropped before it ends (the client went
    /// away before its answer started), the call is cancelled at the server
    /// and observed as such.
    async fn relay(self, parts: Parts, stream: Option<mpsc::Sender<ToStream>>) -> Option<Bytes> {
        let Call {
            name,
            id,
            progress_token,
            arguments,
            mut meta,
            route,
            session,
            cancel,
            telemetry,
            ..
        } = self;
        let target = Some(Target::Tool(name));
        let mut observation = session.observe(&telemetry, "tools/call", target, &id, &parts, &meta);
        observation.set_server(route.server.spec.name.clone());
        if let Some(trace) = observation.trace() {
            meta.set_traceparent(trace.to_traceparent());
        }
        let origin = Origin {
            session: session.key,
            client: session.peer.clone(),
            request_id: id.clone(),
            progress_token,
            stream,
        };
        let outcome = route
            .server
            .call_tool_direct(&origin, &route.name, arguments.as_deref(), meta, &cancel)
            .await;
        let (key, value) = match outcome {
            Ok(result) => {
                observation.complete(&Ok::<_, ErrorData>(()), result.is_error);
                return Some(json_rpc_response(&id, "result", &result.result));
            }
            Err(CallError::Cancelled) => {
                let error = Error::Call(CallError::Cancelled);
                error.describe(&mut observation);
                observation.complete(&Err::<(), _>(error.into_error()), false);
                return None;
            }
            Err(error) => {
                let error = Error::Call(error);
                error.describe(&mut observation);
                let response = error.into_tool_result();
                observation.complete(&response, response.is_ok());
                match &response {
                    Ok(result) => ("result", serde_json::to_vec(result)),
                    Err(error) => ("error", serde_json::to_vec(error)),
                }
            }
        };
        // rmcp's own types: encoding them cannot fail.
        Some(json_rpc_response(&id, key, &value.unwrap_or_default()))
    }
}

impl DirectSession {
    /// A request's observation, as rmcp's path begins it.
    fn observe(
        &self,
        telemetry: &Telemetry,
        method: &'static str,
        target: Option<Target>,
        id: &RequestId,
        parts: &Parts,
        meta: &RequestMetaObject,
    ) -> Observation {
        let peer_info = self.peer.peer_info();
        let request = RequestInfo {
            method,
            target,
            initialize: None,
            session_caller: &self.caller,
        };
        let arrival = Arrival {
            parts: Some(parts),
            peer: peer_info.as_deref(),
            meta,
            request_id: id.to_string(),
        };
        Observation::begin_at(telemetry, request, arrival)
    }
}

impl Drop for InTable {
    fn drop(&mut self) {
        self.session.calls.lock().by_id.remove(&self.id);
    }
}

/// An SSE response carrying `events`.
fn stream_response(
    events: impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
) -> Response {
    let mut response = Response::new(Body::from_stream(events));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx would otherwise hold the keep-alives back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// What a streamed answer's stream carries next.
struct Streaming<F> {
    answer: Pin<Box<F>>,
    /// The answer, when it came before the stream started.
    done: Option<Option<Bytes>>,
    /// Progress and server requests for the client, in the server's order.
    early: Option<mpsc::Receiver<ToStream>>,
    session: Arc<DirectSession>,
}

impl<F: Future<Output = Option<Bytes>> + Send + 'static> Streaming<F> {
    /// Puts progress and server requests on the stream as they come, then
    /// the answer (after any still queued); keeps the finished stream
    /// resumable for a while.
    async fn run(mut self, replay: Arc<Replay>) {
        let done = match self.done.take() {
            Some(done) => done,
            None => loop {
                tokio::select! {
                    biased;
                    Some(item) = next_early(&mut self.early) => {
                        if let Some(event) = self.session.event(item) {
                            replay.push(&event);
                        }
                    }
                    done = &mut self.answer => break done,
                }
            },
        };
        while let Some(item) = self.early.as_mut().and_then(|p| p.try_recv().ok()) {
            if let Some(event) = self.session.event(item) {
                replay.push(&event);
            }
        }
        if let Some(body) = done {
            replay.push(&event(&body));
        }
        replay.finish();
        let Self { session, .. } = self;
        tokio::select! {
            () = tokio::time::sleep(KEEP_FINISHED) => {}
            () = session.ended.cancelled() => {}
        }
        session.calls.lock().replays.remove(&replay.stream());
    }
}

/// The next message for the client's stream; `None` at once without one.
async fn next_early(early: &mut Option<mpsc::Receiver<ToStream>>) -> Option<ToStream> {
    early.as_mut()?.recv().await
}

/// How the client's result to `request` is read.
fn reader_for(request: &ServerRequest) -> fn(&str) -> serde_json::Result<ClientResult> {
    match request {
        ServerRequest::CreateMessageRequest(_) => {
            |raw| serde_json::from_str(raw).map(|r| ClientResult::CreateMessageResult(Box::new(r)))
        }
        ServerRequest::ListRootsRequest(_) => {
            |raw| serde_json::from_str(raw).map(ClientResult::ListRootsResult)
        }
        ServerRequest::ElicitRequest(_) => {
            |raw| serde_json::from_str(raw).map(ClientResult::ElicitResult)
        }
        _ => |raw| serde_json::from_str(raw).map(ClientResult::CustomResult),
    }
}

/// One SSE event carrying a JSON-RPC message.
fn event(message: &[u8]) -> Bytes {
    [b"event: message\ndata: ".as_slice(), message, b"\n\n"]
        .concat()
        .into()
}

fn progress_event(update: ProgressNotificationParam) -> Bytes {
    let message = serde_json::json!({
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": update,
    });
    event(message.to_string().as_bytes())
}

/// Whether the client takes every one of `types`, as rmcp requires (a zero
/// weight excludes a type). Quoted parameters are left to rmcp.
fn accepts(headers: &HeaderMap, types: &[&str]) -> bool {
    let mut values = Vec::new();
    for value in headers.get_all(header::ACCEPT) {
        match value.to_str() {
            Ok(value) if !value.contains('"') => values.push(value),
            _ => return false,
        }
    }
    let accepted = || {
        values
            .iter()
            .flat_map(|v| v.split(','))
            .filter_map(|range| {
                let mut parts = range.split(';');
                let essence = parts.next()?.trim();
                let refused = parts.any(|parameter| {
                    parameter.split_once('=').is_some_and(|(name, weight)| {
                        name.trim().eq_ignore_ascii_case("q") && is_zero_weight(weight.trim())
                    })
                });
                (!refused).then_some(essence)
            })
    };
    types
        .iter()
        .all(|wanted| accepted().any(|media| media.eq_ignore_ascii_case(wanted)))
}

/// `q=0`, `q=0.0`, … (up to three decimals, as RFC 9110 allows).
fn is_zero_weight(weight: &str) -> bool {
    let (whole, fraction) = weight.split_once('.').unwrap_or((weight, ""));
    whole == "0" && fraction.len() <= 3 && fraction.bytes().all(|digit| digit == b'0')
}

/// A JSON-RPC response whose `result` or `error` (`key`) is JSON already.
fn json_rpc_response(id: &RequestId, key: &str, value: &[u8]) -> Bytes {
    let mut body = json_rpc_head(id, key, value.len());
    body.extend_from_slice(value);
    body.push(b'}');
    body.into()
}

/// A JSON-RPC response up to its `result` or `error` (`key`), with room
/// for `value_len` bytes more.
fn json_rpc_head(id: &RequestId, key: &str, value_len: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(value_len + 48);
    body.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    // A request id is a number or a string: encoding it cannot fail.
    let _ = serde_json::to_writer(&mut body, id);
    body.extend_from_slice(b",\"");
    body.extend_from_slice(key.as_bytes());
    body.extend_from_slice(b"\":");
    body
}

/// A complete answer as plain JSON.
fn json_response(body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Whether a request's `_meta` has protocol keys of this hop, which
/// rmcp's path checks.
fn has_hop_keys(meta: &JsonObject) -> bool {
    meta.keys()
        .any(|key| key.starts_with("io.modelcontextprotocol/"))
}

/// A media type without its parameters.
fn essence(media: &str) -> &str {
    media.split(';').next().unwrap_or(media).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::ACCEPT, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn both_answer_types_must_be_accepted_with_a_weight() {
        let both = |values: &[&'static str]| {
            accepts(&accept(values), &["application/json", "text/event-stream"])
        };
        assert!(both(&["application/json, text/event-stream"]));
        assert!(both(&["Application/JSON;q=0.5", "text/event-stream;q=1"]));
        assert!(!both(&["application/json;q=0, text/event-stream"]));
        assert!(!both(&["application/json, text/event-stream;q=0.000"]));
        assert!(!both(&["application/json"]));
        assert!(!both(&[
            r#"application/json;profile="x", text/event-stream"#
        ]));
        // A resume asks only for the stream.
        assert!(accepts(
            &accept(&["text/event-stream"]),
            &["text/event-stream"]
        ));
    }

    #[test]
    fn answers_splice_the_result_in_as_it_is() {
        let id = RequestId::String("a\"b".into());
        let body = json_rpc_response(&id, "result", br#"{"content":[],"x":1}"#);
        let parsed: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            parsed,
            serde_json::json!({ "jsonrpc": "2.0", "id": "a\"b", "result": { "content": [], "x": 1 } })
        );
    }
}
