//! `/mcp` over streamable HTTP, and the one way every client message goes
//! once the edge has read it (`guard.rs`): into its session
//! (`session.rs`), then by kind: a request to its method (`methods.rs`),
//! a cancel to the request it names, an answer to the server request it
//! answers.
//!
//! Every answer is framed one way: as `application/json` when it is all
//! there is and comes within [`WINDOW`] (most calls: one write for both
//! ends), otherwise as a stream that starts at once and carries, in order,
//! what the request's servers send the client (progress, their requests),
//! keep-alives, then the answer. A streamed answer runs on without its
//! connection and is resumable by `Last-Event-ID` (`replay.rs`). A request
//! whose client leaves before its answer starts is cancelled at the server.
//!
//! `GET` opens the session's own stream (what belongs to no request) or
//! resumes an answer's; `DELETE` ends the session.

use std::{convert::Infallible, pin::Pin, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use futures::Stream;
use rmcp::model::{
    ClientNotification, ClientRequest, ErrorData, GetMeta, JsonRpcRequest, ProtocolVersion,
    Reference, RequestId, RequestMetaObject,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug};

use super::{
    answer::Refusal,
    guard::Incoming,
    methods::{CallParams, Ctx, Methods, encode},
    replay::{KEEP_ALIVE, KEEP_FINISHED, Replay, parse_event_id},
    rounds::{self, Retry, Rounds},
    session::{Holding, Kind, Open, OwnStream, Session, Sessions},
    sse::{AllowedHosts, check_host},
    stateless,
};
use crate::{
    auth::Identity,
    clients::{Asking, ToStream},
    mcp::limits::RateLimits,
    policy::{Access, Kind as PolicyKind, Policies},
    telemetry::metrics::Metrics,
};

/// How long an answer may take and still be answered as JSON.
const WINDOW: Duration = Duration::from_millis(50);
/// Messages for a slow client's request stream queued before the relay
/// waits.
const STREAM_BUFFER: usize = 64;
pub(super) const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
const LAST_EVENT_ID: &str = "last-event-id";

/// Everything `/mcp`, `/sse` and `/message` share.
pub struct Endpoint {
    pub sessions: Arc<Sessions>,
    pub methods: Methods,
    pub allowed_hosts: AllowedHosts,
    /// What each authenticated client may use.
    pub policies: Policies,
    /// Each authenticated client's requests per second.
    pub rates: RateLimits,
    pub metrics: Arc<Metrics>,
    /// 2026-07-28 calls waiting for their clients' answers.
    pub rounds: Rounds,
    /// Cancelled when the replica stops serving: streams end.
    pub shutdown: CancellationToken,
}

/// Where a session's answers go.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// In the HTTP response of the request (streamable HTTP).
    Response,
    /// On the session's one stream; the POST gets 202 (legacy SSE).
    OwnStream,
}

/// `/mcp`.
pub async fn mcp(State(endpoint): State<Arc<Endpoint>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    if let Err(refused) = check_host(&endpoint.allowed_hosts, &parts) {
        return Refusal::forbidden(refused).into_response();
    }
    match parts.method {
        Method::POST => endpoint.post(parts).await,
        Method::GET => endpoint.get(&parts),
        Method::DELETE => endpoint.delete(&parts),
        _ => Refusal::method_not_allowed("GET, POST, DELETE").into_response(),
    }
}

// === impl Endpoint ===

impl Endpoint {
    async fn post(self: &Arc<Self>, mut parts: Parts) -> Response {
        if !accepts(&parts.headers, &["application/json", "text/event-stream"]) {
            return Refusal::not_acceptable(
                "the client must accept both application/json and text/event-stream",
            )
            .into_response();
        }
        let json_body = header(&parts.headers, header::CONTENT_TYPE.as_str())
            .is_some_and(|v| essence(v).eq_ignore_ascii_case("application/json"));
        if !json_body {
            return Refusal::unsupported_media_type("Content-Type must be application/json")
                .into_response();
        }
        let Some(incoming) = parts.extensions.remove::<Incoming>() else {
            return Refusal::invalid_request("no JSON-RPC message in the body").into_response();
        };
        if let Err(refused) = self.admit(&parts, &incoming) {
            return refused.into_response();
        }
        if header(&parts.headers, SESSION_HEADER).is_none()
            && stateless::applies(&parts.headers, &incoming)
        {
            return self.stateless(parts, incoming).await;
        }
        if let Err(refusal) = check_version(&parts.headers) {
            return refusal.into_response();
        }
        let Some(session_id) = header(&parts.headers, SESSION_HEADER).map(str::to_owned) else {
            return match incoming {
                Incoming::Request { id, request } => match *request {
                    ClientRequest::InitializeRequest(initialize) => {
                        self.initialize(id, initialize.params, parts)
                    }
                    _ => Refusal::invalid_request(
                        "Bad Request: Mcp-Session-Id is required: start a session with initialize",
                    )
                    .into_response(),
                },
                _ => Refusal::invalid_request(
                    "Bad Request: Mcp-Session-Id is required: start a session with initialize",
                )
                .into_response(),
            };
        };
        let caller = caller(&parts);
        let Some((session, open)) =
            self.sessions
                .enter(&session_id, Kind::Streamable, caller.as_deref())
        else {
            return Refusal::unknown_session("session not found: start a new one with initialize")
                .into_response();
        };
        self.receive(
            session,
            Holding::Open(open),
            Arc::new(parts),
            incoming,
            Framing::Response,
        )
        .await
    }

    /// A request of MCP 2026-07-28: checked as that revision checks it,
    /// then run in a session of its own that ends with it.
    async fn stateless(self: &Arc<Self>, parts: Parts, incoming: Incoming) -> Response {
        let handshake = match stateless::admit(&parts.headers, &incoming) {
            Ok(handshake) => handshake,
            Err(refused) => return *refused,
        };
        let catalog = self.methods.catalog.load();
        let schema = |tool: &str| {
            let tool = catalog.tools().iter().find(|t| t.name == tool)?;
            Some(tool.input_schema.clone())
        };
        if let Err(refused) = stateless::check_params(&parts.headers, &incoming, schema) {
            return *refused;
        }
        if let Incoming::Request { id, request } = &incoming {
            match &**request {
                ClientRequest::DiscoverRequest(_) => {
                    let capabilities = self.methods.catalog.load().capabilities().clone();
                    return stateless::discover(id, capabilities);
                }
                ClientRequest::SubscriptionsListenRequest(listen) => {
                    let params = serde_json::to_value(&listen.params).unwrap_or_default();
                    let changes = self.methods.catalog.subscribe();
                    return stateless::listen(id, &params, changes, self.shutdown.clone());
                }
                _ => {}
            }
        }
        if let Some((id, retry)) = resumable(&incoming) {
            let peers = &self.methods.peers;
            if let Some(holder) = rounds::holder(&retry.request_state).filter(|r| *r != peers.me())
            {
                let handed = match written(&incoming) {
                    Some(body) => peers.hand_retry(holder, body, &parts.headers).await,
                    None => Err("it cannot be written again".to_owned()),
                };
                return handed.unwrap_or_else(|why| {
                    let lost = ErrorData::invalid_params(
                        format!("the call this requestState resumes is on another replica, which cannot take the retry ({why}): send the request again without requestState"),
                        None,
                    );
                    json_response(encode::<()>(id, Err(lost)))
                });
            }
            let owner = caller(&parts);
            let answer = self.rounds.resume(id, &retry, owner.as_ref()).await;
            let answer = answer.unwrap_or_else(|| {
                let cancelled = ErrorData::internal_error("the call was cancelled", None);
                encode::<()>(id, Err(cancelled))
            });
            return json_response(answer);
        }
        let one_off = self
            .sessions
            .detached(handshake, caller(&parts), Asking::InRounds);
        self.receive(
            Arc::clone(&one_off),
            Holding::OneOff(one_off),
            Arc::new(parts),
            incoming,
            Framing::Response,
        )
        .await
    }

    /// Holds an authenticated client to its requests per second; what
    /// concerns work in flight (cancels, answers) always gets in.
    pub fn admit(&self, parts: &Parts, incoming: &Incoming) -> Result<(), Refusal> {
        let (Incoming::Call { id, .. } | Incoming::Request { id, .. }) = incoming else {
            return Ok(());
        };
        let Some(identity) = parts.extensions.get::<Identity>() else {
            return Ok(());
        };
        self.rates.take(&identity.owner).map_err(|retry_after| {
            debug!(client = %identity.name, ?retry_after, "refused a request: over the client's rate");
            Refusal::rate_limited(&identity.name, self.rates.rate(), retry_after).answering(id)
        })
    }

    /// A new session's handshake, answered with its id.
    fn initialize(
        &self,
        id: RequestId,
        params: rmcp::model::InitializeRequestParams,
        parts: Parts,
    ) -> Response {
        let owner = caller(&parts);
        let (session, _open) =
            match self
                .sessions
                .create(Kind::Streamable, Some(params.clone()), owner)
            {
                Ok(created) => created,
                Err(refusal) => return refusal.answering(&id).into_response(),
            };
        let ctx = Ctx {
            id,
            meta: RequestMetaObject::default(),
            parts: Arc::new(parts),
            access: None,
            cancel: CancellationToken::new(),
            stream: None,
        };
        let body = self.methods.initialize(&session, &params, &ctx);
        self.metrics.answered_json.inc();
        let mut response = json_response(body);
        let id = HeaderValue::from_str(&session.wire_id);
        if let Ok(id) = id {
            response.headers_mut().insert(SESSION_HEADER, id);
        }
        response
    }

    /// One message in its session.
    pub async fn receive(
        self: &Arc<Self>,
        session: Arc<Session>,
        open: Holding,
        parts: Arc<Parts>,
        incoming: Incoming,
        framing: Framing,
    ) -> Response {
        let access = match parts.extensions.get::<Identity>() {
            Some(identity) => self.policies.access(identity),
            None => self.policies.anonymous_access(),
        }
        .map(Arc::new);
        if let Some(access) = &access
            && let Some((id, kind, name)) = named(&incoming)
            && let Some(why) = self.refused_by(access, kind, name)
        {
            debug!(kind = kind.as_str(), "refused by an access policy");
            let refusal = Refusal::forbidden(why).answering(id);
            return self.refuse(&session, refusal, framing).await;
        }
        match incoming {
            Incoming::Call { id, params } => {
                let meta = RequestMetaObject::from(params.meta.clone());
                let call = Work::Call(params);
                self.request(session, open, parts, access, id, meta, call, framing)
                    .await
            }
            Incoming::Request { id, mut request } => {
                if let ClientRequest::InitializeRequest(initialize) = &*request
                    && framing == Framing::OwnStream
                    && session.handshake().is_none()
                {
                    // Legacy SSE's handshake, on the session its stream opened.
                    self.sessions.set_handshake(&session, &initialize.params);
                    let ctx = Ctx {
                        id,
                        meta: RequestMetaObject::default(),
                        parts,
                        access: None,
                        cancel: CancellationToken::new(),
                        stream: None,
                    };
                    let body = self.methods.initialize(&session, &initialize.params, &ctx);
                    session.answer_on_own_stream(body).await;
                    return StatusCode::ACCEPTED.into_response();
                }
                let meta = std::mem::take(request.get_meta_mut());
                let work = Work::Request(request);
                self.request(session, open, parts, access, id, meta, work, framing)
                    .await
            }
            Incoming::Notification(ClientNotification::CancelledNotification(cancelled)) => {
                if let Some(id) = &cancelled.params.request_id {
                    debug!(request_id = %id, "the client cancelled a request");
                    session.cancel(id);
                }
                StatusCode::ACCEPTED.into_response()
            }
            // `initialized`, roots changes, progress: nothing to do.
            Incoming::Notification(_) | Incoming::Unaddressed => {
                StatusCode::ACCEPTED.into_response()
            }
            Incoming::Answer { id, answer } => {
                let answer = answer.as_ref().map(|v| &**v).map_err(|e| &**e);
                // Not this replica's question: the one that asked gets it.
                if !session.answered(&id, answer)
                    && !self.methods.peers.hand_on(&id, answer, &parts.headers)
                {
                    debug!(request_id = %id, "an answer nobody waits for");
                }
                StatusCode::ACCEPTED.into_response()
            }
        }
    }

    /// Why an access policy refuses a request naming `name`, if it does.
    /// Resource URIs are judged as they route, and, since `*` spans path
    /// segments, one with a dot segment is refused outright.
    fn refused_by(&self, access: &Access, kind: PolicyKind, name: &str) -> Option<String> {
        if kind != PolicyKind::Resource {
            return access.refuse(kind, name);
        }
        let catalog = self.methods.catalog.load();
        let uri = catalog.canonical_uri(name);
        if has_dot_segment(&uri) {
            return Some(format!(
                "resource `{uri}` has a `.` or `..` path segment, which access policies do not judge: name it without"
            ));
        }
        access.refuse(kind, &uri)
    }

    /// A refusal, answered as the session's framing answers: in the
    /// response, or on the session's stream (legacy SSE, whose clients read
    /// answers only there) with 202 for the POST.
    pub async fn refuse(&self, session: &Session, refusal: Refusal, framing: Framing) -> Response {
        match framing {
            Framing::Response => refusal.into_response(),
            Framing::OwnStream => {
                session.answer_on_own_stream(refusal.body()).await;
                StatusCode::ACCEPTED.into_response()
            }
        }
    }

    /// Runs a request and frames its answer.
    #[allow(clippy::too_many_arguments)]
    async fn request(
        self: &Arc<Self>,
        session: Arc<Session>,
        open: Holding,
        parts: Arc<Parts>,
        access: Option<Arc<Access>>,
        id: RequestId,
        meta: RequestMetaObject,
        work: Work,
        framing: Framing,
    ) -> Response {
        let Some(in_flight) = session.begin(&id) else {
            let duplicate = Err::<(), _>(ErrorData::invalid_request(
                format!(
                    "request id {id} is already in flight in this session; use a new id for each request"
                ),
                None,
            ));
            let body = encode(&id, duplicate);
            return match framing {
                Framing::Response => json_response(body),
                Framing::OwnStream => {
                    session.answer_on_own_stream(body).await;
                    StatusCode::ACCEPTED.into_response()
                }
            };
        };
        // A stream of its own only for a request that may need one.
        let (stream, early) = match framing {
            Framing::OwnStream => (Some(session.client.outbox.clone()), None),
            Framing::Response if meta.get_progress_token().is_some() || session.askable() => {
                let (stream, early) = mpsc::channel(STREAM_BUFFER);
                (Some(stream), Some(early))
            }
            Framing::Response => (None, None),
        };
        let cancel = in_flight.cancel.clone();
        let ctx = Ctx {
            id,
            meta,
            parts,
            access,
            cancel: cancel.clone(),
            stream,
        };
        let endpoint = self.clone();
        let answering = session.clone();
        // A 2026-07-28 request's answer is written as that revision writes
        // it, and its servers' questions become input-required rounds.
        let request_id = ctx.id.clone();
        let shaped = (session.client.asking() == Asking::InRounds).then(|| match &work {
            Work::Request(request) => match &**request {
                ClientRequest::ReadResourceRequest(read) => Some(read.params.uri.clone()),
                _ => None,
            },
            Work::Call(_) => None,
        });
        // A round's session lives as long as its call, which may wait
        // across several requests; any other as long as this request.
        let (open, rounds_hold) = match shaped {
            Some(_) => (None, Some(open)),
            None => (Some(open), None),
        };
        let answer = tokio::spawn(
            async move {
                let _in_flight = in_flight;
                let _open = open;
                let methods = &endpoint.methods;
                let answer = match work {
                    Work::Call(call) => methods.call(&answering, &ctx, call).await,
                    Work::Request(request) => methods.answer(&answering, &ctx, *request).await,
                };
                if framing == Framing::OwnStream
                    && let Some(body) = answer
                {
                    answering.answer_on_own_stream(body).await;
                    return None;
                }
                answer
            }
            .in_current_span(),
        );
        let answer = match shaped.zip(rounds_hold) {
            Some((uri, holding)) => {
                let call = rounds::Call {
                    answer,
                    questions: session.take_questions(),
                    _session: holding,
                    owner: session.client.owner.clone(),
                    capabilities: session
                        .handshake()
                        .map(|h| h.capabilities.clone())
                        .unwrap_or_default(),
                    uri,
                };
                let endpoint = self.clone();
                tokio::spawn(
                    async move { endpoint.rounds.next(&request_id, call).await }.in_current_span(),
                )
            }
            _ => answer,
        };
        match framing {
            Framing::OwnStream => StatusCode::ACCEPTED.into_response(),
            Framing::Response => self.frame(session, cancel, answer, early).await,
        }
    }

    /// Frames an answer: JSON if it is all there is and comes within the
    /// window, else a resumable stream that starts at once, carries what
    /// the servers send the client for the request and keep-alives until
    /// the answer, and outlives the connection. A cancelled request gets no
    /// answer: its stream ends without one.
    async fn frame(
        &self,
        session: Arc<Session>,
        cancel: CancellationToken,
        answer: tokio::task::JoinHandle<Option<Bytes>>,
        mut early: Option<mpsc::Receiver<ToStream>>,
    ) -> Response {
        // The client leaving before its answer starts cancels the request:
        // nobody could pick the answer up.
        let left = cancel.drop_guard();
        let mut answer = Box::pin(async move { answer.await.ok().flatten() });
        let head = tokio::select! {
            biased;
            done = &mut answer => Head::Done(done),
            Some(first) = next_early(&mut early) => Head::Early(Box::new(first)),
            () = tokio::time::sleep(WINDOW) => Head::Slow,
        };
        let _ = left.disarm();
        let (first, done) = match head {
            // What went to the request's stream goes out before the
            // answer: none queued, none came.
            Head::Done(done) => match early.as_mut().and_then(|e| e.try_recv().ok()) {
                Some(first) => (Some(first), Some(done)),
                None => match done {
                    Some(body) => {
                        self.metrics.answered_json.inc();
                        // MCP 2026-07-28 also says some errors in the status.
                        let status = (session.client.asking() == Asking::InRounds)
                            .then(|| stateless::status_of(&body));
                        let mut response = json_response(body);
                        if let Some(status) = status {
                            *response.status_mut() = status;
                        }
                        return response;
                    }
                    None => return stream_response(futures::stream::empty()),
                },
            },
            Head::Early(first) => (Some(*first), None),
            Head::Slow => (None, None),
        };
        self.metrics.answered_sse.inc();
        let Some(replay) = session.open_replay() else {
            // The session ended in the window: the request is cancelled.
            return stream_response(futures::stream::empty());
        };
        if let Some(event) = first.and_then(|first| session.event(first)) {
            replay.push(&event);
        }
        let streaming = Streaming {
            answer,
            done,
            early,
            session,
        };
        tokio::spawn(streaming.run(replay.clone()).in_current_span());
        match replay.follow(0) {
            Some(events) => stream_response(events),
            None => stream_response(futures::stream::empty()),
        }
    }

    /// The session's own stream, or an answer's stream resumed.
    fn get(self: &Arc<Self>, parts: &Parts) -> Response {
        if !accepts(&parts.headers, &["text/event-stream"]) {
            return Refusal::not_acceptable("the client must accept text/event-stream")
                .into_response();
        }
        let Some(session_id) = header(&parts.headers, SESSION_HEADER) else {
            return Refusal::invalid_request("Bad Request: Mcp-Session-Id is required")
                .into_response();
        };
        let caller = caller(parts);
        let Some((session, open)) =
            self.sessions
                .enter(session_id, Kind::Streamable, caller.as_deref())
        else {
            return Refusal::unknown_session("session not found: start a new one with initialize")
                .into_response();
        };
        if let Err(refusal) = check_version(&parts.headers) {
            return refusal.into_response();
        }
        if let Some(last) = header(&parts.headers, LAST_EVENT_ID) {
            // An id not (or no longer) ours ends the stream at once: an
            // error would make an EventSource retry it forever.
            let resumed = parse_event_id(last).and_then(|(stream, number)| {
                let events = session.replay(stream)?.follow(number.checked_add(1)?)?;
                debug!(
                    stream,
                    after = number,
                    "a client resumed an answer's stream"
                );
                Some(events)
            });
            return match resumed {
                Some(events) => stream_response(events),
                None => stream_response(futures::stream::empty()),
            };
        }
        let Some(own) = session.own_stream() else {
            return Refusal::conflict("this session's stream is open already: one at a time")
                .into_response();
        };
        stream_response(own_events(own, open, None, self.shutdown.clone()))
    }

    fn delete(&self, parts: &Parts) -> Response {
        let Some(session_id) = header(&parts.headers, SESSION_HEADER) else {
            return Refusal::invalid_request("Bad Request: Mcp-Session-Id is required")
                .into_response();
        };
        if self
            .sessions
            .end(session_id, Kind::Streamable, caller(parts).as_deref())
        {
            debug!("a client ended its session");
            self.methods.peers.share_delete(&parts.headers);
            StatusCode::OK.into_response()
        } else {
            Refusal::unknown_session("session not found: start a new one with initialize")
                .into_response()
        }
    }
}

/// The request's id and the tool, prompt or resource it names, if any.
fn named(incoming: &Incoming) -> Option<(&RequestId, PolicyKind, &str)> {
    let (id, request) = match incoming {
        Incoming::Call { id, params } => return Some((id, PolicyKind::Tool, &params.name)),
        Incoming::Request { id, request } => (id, request),
        _ => return None,
    };
    let (kind, name) = match &**request {
        ClientRequest::GetPromptRequest(r) => (PolicyKind::Prompt, r.params.name.as_str()),
        ClientRequest::ReadResourceRequest(r) => (PolicyKind::Resource, r.params.uri.as_str()),
        ClientRequest::SubscribeRequest(r) => (PolicyKind::Resource, r.params.uri.as_str()),
        ClientRequest::UnsubscribeRequest(r) => (PolicyKind::Resource, r.params.uri.as_str()),
        ClientRequest::CompleteRequest(r) => match &r.params.r#ref {
            Reference::Prompt(prompt) => (PolicyKind::Prompt, prompt.name.as_str()),
            Reference::Resource(resource) => (PolicyKind::Resource, resource.uri.as_str()),
            _ => return None,
        },
        _ => return None,
    };
    Some((id, kind, name))
}

/// Whether a URI's path has a `.` or `..` segment, spelt out or
/// percent-encoded.
fn has_dot_segment(uri: &str) -> bool {
    let path = uri.split(['?', '#']).next().unwrap_or(uri);
    path.split('/').any(|segment| {
        let lower = segment.to_ascii_lowercase();
        let decoded = lower.replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

/// What a request asks for.
enum Work {
    Call(CallParams),
    Request(Box<ClientRequest>),
}

/// How an answer begins.
enum Head {
    Done(Option<Bytes>),
    /// Something for the client before the answer.
    Early(Box<ToStream>),
    Slow,
}

/// What a streamed answer's stream carries next.
struct Streaming<F> {
    answer: Pin<Box<F>>,
    /// The answer, when it came before the stream started.
    done: Option<Option<Bytes>>,
    /// Progress and server requests for the client, in the server's order.
    early: Option<mpsc::Receiver<ToStream>>,
    session: Arc<Session>,
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
        while let Some(item) = self.early.as_mut().and_then(|e| e.try_recv().ok()) {
            if let Some(event) = self.session.event(item) {
                replay.push(&event);
            }
        }
        if let Some(body) = done {
            replay.push(&super::session::event(&body));
        }
        replay.finish();
        let Self { session, .. } = self;
        tokio::select! {
            () = tokio::time::sleep(KEEP_FINISHED) => {}
            () = session.ended.cancelled() => {}
        }
        session.forget_replay(replay.stream());
    }
}

/// The next message for a request's stream; `None` at once without one.
async fn next_early(early: &mut Option<mpsc::Receiver<ToStream>>) -> Option<ToStream> {
    early.as_mut()?.recv().await
}

/// The last event of a stream the replica ends as it stops: reconnect in
/// a second (SSE `retry`), which lands on a replica still running.
const RECONNECT_SOON: &[u8] = b"retry: 1000\n\n";

/// A session's own stream as SSE events, `first` ahead of them, with
/// keep-alives, until the session or the replica ends; the session counts
/// as busy while it is open.
pub fn own_events(
    own: OwnStream,
    open: Open,
    first: Option<Bytes>,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    let state = (own, open, first, keep_alive, Some(shutdown));
    futures::stream::unfold(
        state,
        |(mut own, open, mut first, mut keep_alive, shutdown)| async move {
            // Told to come back soon, the stream has ended.
            let shutdown = shutdown?;
            if let Some(first) = first.take() {
                return Some((Ok(first), (own, open, None, keep_alive, Some(shutdown))));
            }
            let ended = own.session().ended.clone();
            loop {
                let event = tokio::select! {
                    // Stopping also ends the sessions: the hint goes first.
                    biased;
                    // The replica stops: the client reconnects, to another.
                    () = shutdown.cancelled() => {
                        return Some((Ok(Bytes::from_static(RECONNECT_SOON)), (own, open, None, keep_alive, None)));
                    }
                    () = ended.cancelled() => return None,
                    item = own.recv() => match item {
                        Some(item) => match own.session().event(item) {
                            Some(event) => event,
                            None => continue,
                        },
                        None => return None,
                    },
                    _ = keep_alive.tick() => Bytes::from_static(b":\n\n"),
                };
                return Some((Ok(event), (own, open, None, keep_alive, Some(shutdown))));
            }
        },
    )
}

/// A retry resuming a call parked between input-required rounds
/// (`tools/call`, `prompts/get`, `resources/read` with a `requestState`
/// of the gateway's making); a 2026-07-28 server's own rounds go on to it.
fn resumable(incoming: &Incoming) -> Option<(&RequestId, Retry)> {
    let (id, retry) = retry_in(incoming)?;
    retry
        .request_state
        .starts_with(rounds::STATE_PREFIX)
        .then_some((id, retry))
}

/// A request as JSON-RPC again, to hand it to another replica.
fn written(incoming: &Incoming) -> Option<String> {
    match incoming {
        Incoming::Call { id, params } => {
            let params = params.params.as_ref()?;
            let id = serde_json::to_string(id).ok()?;
            Some(format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{}}}"#,
                params.get()
            ))
        }
        Incoming::Request { id, request } => {
            serde_json::to_string(&JsonRpcRequest::new(id.clone(), (**request).clone())).ok()
        }
        _ => None,
    }
}

fn retry_in(incoming: &Incoming) -> Option<(&RequestId, Retry)> {
    match incoming {
        // Keys beyond name and arguments are kept whole, as written.
        Incoming::Call { id, params } => {
            let raw = params.params.as_ref()?;
            Some((id, serde_json::from_str(raw.get()).ok()?))
        }
        Incoming::Request { id, request } => {
            let retry = match &**request {
                ClientRequest::CallToolRequest(r) => {
                    Retry::of(&r.params.request_state, &r.params.input_responses)
                }
                ClientRequest::GetPromptRequest(r) => {
                    Retry::of(&r.params.request_state, &r.params.input_responses)
                }
                ClientRequest::ReadResourceRequest(r) => {
                    Retry::of(&r.params.request_state, &r.params.input_responses)
                }
                _ => None,
            };
            Some((id, retry?))
        }
        _ => None,
    }
}

/// A known `MCP-Protocol-Version`, if the client names one.
fn check_version(headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(value) = headers.get(VERSION_HEADER) else {
        return Ok(());
    };
    let known = value.to_str().ok().is_some_and(|version| {
        ProtocolVersion::KNOWN_VERSIONS
            .iter()
            .any(|known| known.as_str() == version)
    });
    if known {
        Ok(())
    } else {
        Err(Refusal::invalid_request(format!(
            "Bad Request: Unsupported MCP-Protocol-Version: {}",
            String::from_utf8_lossy(value.as_bytes())
        )))
    }
}

/// Whose sessions a request's are: the authenticated caller's owner key
/// (`auth.rs`), if the request has one.
pub fn caller(parts: &Parts) -> Option<Arc<str>> {
    parts
        .extensions
        .get::<Identity>()
        .map(|identity| identity.owner.clone())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// An SSE response carrying `events`.
pub fn stream_response(
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

/// A complete answer as plain JSON.
pub fn json_response(body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Whether the client takes every one of `types` (a zero weight excludes a
/// type).
fn accepts(headers: &HeaderMap, types: &[&str]) -> bool {
    let values: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
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

/// A media type without its parameters.
fn essence(media: &str) -> &str {
    media.split(';').next().unwrap_or(media).trim()
}

#[cfg(test)]
mod tests;
