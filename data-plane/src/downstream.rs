//! Downstream servers: the MCP servers this replica runs. [`Servers`] is
//! the set (only [`Servers::apply`] changes it, diffing so unchanged
//! servers are untouched); each [`ServerHandle`] owns one server's
//! connections, circuit breaker and statistics, and routes calls to it.
//! A supervisor task per server (`supervisor.rs`) starts, probes, restarts
//! and tears down its connections.

pub mod breaker;
pub mod gauges;
pub mod http;
mod lines;
mod listen;
pub mod pool;
pub mod relay;
pub mod sse;
pub mod stdio;
mod supervisor;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use proto::otel::sdk::WORK;
use rmcp::{
    ErrorData,
    model::{
        CallToolRequest, CallToolRequestParams, CancelledNotificationParam, ClientCapabilities,
        ClientRequest, ErrorCode, InputRequest, InputRequiredResult, InputResponses, Prompt,
        ProtocolVersion, RequestMetaObject, Resource, ResourceTemplate, ServerCapabilities,
        ServerRequest, ServerResult, Tool,
    },
    service::{ClientInitializeError, ClientLifecycleMode, PeerRequestOptions, ServiceError},
};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug, info, info_span, warn};

pub use crate::clients::SessionKey;
use crate::{
    clients::{Asking, Clients},
    drain::Drain,
    redact,
    spec::{ServerSpec, SessionMode, Transport},
    telemetry::{SpanKind, Telemetry, TraceContext, attr, metrics::MethodLabels},
};
use breaker::{Breaker, BreakerState};
use lines::Answer;
use pool::{AcquireError, Connection, InFlight, Pool};
pub use relay::{DownstreamClient, Origin};
use serde::Serialize;
use serde_json::value::RawValue;
pub use stdio::Launcher;

/// How a connection to a stdio or streamable-HTTP server is opened:
/// MCP 2026-07-28's `server/discover`, or the `initialize` handshake of
/// 2025-11-25 (see `spec::Handshake`; legacy SSE servers predate
/// 2026-07-28 and are only ever initialised).
fn lifecycle(discover: bool) -> ClientLifecycleMode {
    if discover {
        ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::LATEST],
        }
    } else {
        ClientLifecycleMode::Initialize
    }
}

/// A failed handshake of `whom` (a command, a URL) as [`Error::Refused`],
/// if the server refused that lifecycle (worth trying the other one)
/// rather than failing.
fn refused(error: &ClientInitializeError, discover: bool, whom: &str) -> Option<Error> {
    let reason = match error {
        ClientInitializeError::JsonRpcError(error)
            if [
                ErrorCode::UNSUPPORTED_PROTOCOL_VERSION,
                ErrorCode::METHOD_NOT_FOUND,
                ErrorCode::INVALID_REQUEST,
            ]
            .contains(&error.code) =>
        {
            error.message.to_string()
        }
        ClientInitializeError::NoCompatibleProtocolVersion { .. } => error.to_string(),
        _ => return None,
    };
    Some(Error::Refused {
        handshake: if discover {
            "server/discover"
        } else {
            "initialize"
        },
        reason: format!("{whom}: {reason}"),
    })
}

/// Resource URIs (the server's) watched for sessions.
type Watched = BTreeMap<String, BTreeSet<SessionKey>>;

/// Rounds of questions a 2026-07-28 server may ask an older client within
/// one request before the gateway gives up on it.
const MAX_INPUT_ROUNDS: u32 = 16;
/// Calls whose latency the percentiles are computed over.
const LATENCY_SAMPLES: usize = 1024;
/// Supervisor events waiting; senders wait when it is full, nothing is lost.
const EVENT_BUFFER: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("initialize failed: {0}")]
    Initialize(String),
    /// The server refused the lifecycle (`initialize` or
    /// `server/discover`): it may serve the other one only.
    #[error("{handshake} refused: {reason}")]
    Refused {
        handshake: &'static str,
        reason: String,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Why a call did not produce a result from the server.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("server `{server}` is unavailable: its circuit breaker is open (retry in {}s)", retry_in.as_secs().max(1))]
    BreakerOpen {
        server: Arc<str>,
        retry_in: Duration,
    },
    #[error("server `{server}` is unavailable: {reason}")]
    Unavailable { server: Arc<str>, reason: String },
    #[error("server `{server}` did not answer {method} within {after:?}")]
    Timeout {
        server: Arc<str>,
        method: &'static str,
        after: Duration,
    },
    #[error("server `{server}` failed during {method}: {source}")]
    Transport {
        server: Arc<str>,
        method: &'static str,
        #[source]
        source: ServiceError,
    },
    /// A JSON-RPC error the server answered with; relayed as it is.
    #[error("{0}")]
    Downstream(ErrorData),
    #[error("server `{server}` answered {method} with an unexpected result")]
    UnexpectedResult {
        server: Arc<str>,
        method: &'static str,
    },
    #[error("request cancelled by the client")]
    Cancelled,
    /// A 2026-07-28 server's question its client (of an older revision)
    /// could not be asked or did not answer.
    #[error("server `{server}` needed the client to answer {question} first: {why}")]
    Unanswered {
        server: Arc<str>,
        question: Question,
        why: String,
    },
}

/// Sends `item` without waiting and without dropping it: a full channel
/// takes it from a task once there is room (outside a runtime, as in a
/// `Drop` at shutdown, a full channel loses it). For what must follow
/// other messages but must not hold up its sender: cancels, withdrawals.
fn send_soon<T: Send + 'static>(sender: &mpsc::Sender<T>, item: T) {
    if let Err(mpsc::error::TrySendError::Full(item)) = sender.try_send(item)
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        let sender = sender.clone();
        runtime.spawn(async move {
            let _ = sender.send(item).await;
        });
    }
}

/// A network connection's service task, and how it ended.
type ServiceTask =
    tokio::task::JoinHandle<Result<rmcp::service::QuitReason, tokio::task::JoinError>>;

/// Waits for a network connection's service to end and says why, in words
/// fit for `/healthz` and the log; `what` names the connection.
async fn service_ended(service: &mut ServiceTask, what: &str) -> String {
    use rmcp::service::QuitReason;
    match service.await {
        Ok(Ok(QuitReason::Closed)) => format!("{what} closed"),
        Ok(Ok(QuitReason::Cancelled)) => format!("{what} cancelled"),
        Ok(Ok(QuitReason::JoinError(join)) | Err(join)) | Err(join) => {
            format!("connection task failed: {join}")
        }
        Ok(Ok(_)) => format!("{what} ended"),
    }
}

/// An error with every cause, so a TLS or connection failure says why
/// (reqwest's top-level message alone does not).
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

// === impl CallError ===

impl CallError {
    /// A stable label for logs, metrics and the result's error `_meta`.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::BreakerOpen { .. } => "breaker_open",
            CallError::Unavailable { .. } => "unavailable",
            CallError::Timeout { .. } => "timeout",
            CallError::Transport { .. } => "transport",
            CallError::Downstream(_) => "downstream",
            CallError::UnexpectedResult { .. } => "unexpected_result",
            CallError::Cancelled => "cancelled",
            CallError::Unanswered { .. } => "unanswered",
        }
    }

    /// The server the error is about, when there is one.
    pub fn server(&self) -> Option<&str> {
        match self {
            CallError::BreakerOpen { server, .. }
            | CallError::Unavailable { server, .. }
            | CallError::Timeout { server, .. }
            | CallError::Transport { server, .. }
            | CallError::UnexpectedResult { server, .. }
            | CallError::Unanswered { server, .. } => Some(server),
            CallError::Downstream(_) | CallError::Cancelled => None,
        }
    }
}

/// The servers this replica runs; cheap to clone.
#[derive(Clone)]
pub struct Servers {
    inner: Arc<ServersInner>,
}

struct ServersInner {
    by_name: RwLock<BTreeMap<Arc<str>, Arc<ServerHandle>>>,
    /// Bumped on every change of the set or of any server's status.
    changed: watch::Sender<u64>,
    /// Parent of every server's stop token.
    shutdown: CancellationToken,
    tasks: TaskTracker,
    launcher: Launcher,
    telemetry: Telemetry,
    clients: Clients,
    /// Every exchange with a server holds it until answered.
    drain: Drain,
    /// Per-session connections (processes, for stdio servers) one
    /// authenticated client may hold across all servers.
    session_connections_per_client: AtomicUsize,
}

/// One configured server: its connections, breaker and status.
pub struct ServerHandle {
    pub spec: ServerSpec,
    status: RwLock<Lifecycle>,
    pool: Pool,
    /// Per-session connections by client session.
    sessions: Mutex<HashMap<SessionKey, Arc<Connection>>>,
    /// Serialises starting a session's connection (one start per session;
    /// different sessions start theirs side by side).
    session_starts: Mutex<HashMap<SessionKey, Arc<tokio::sync::Mutex<()>>>>,
    breaker: Breaker,
    tool_breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    stats: Stats,
    events: mpsc::Sender<supervisor::Event>,
    /// The process an `sse` server's `command` runs, if any.
    sse_launch: sse::SharedLaunch,
    /// Woken when the server says a list changed.
    lists_changed: Arc<Notify>,
    /// Set once the server asks a client something on a shared connection.
    asked: Arc<AskedClients>,
    /// Whether the server's last connection speaks MCP 2026-07-28 or later
    /// (no `initialize`): how its requests are bridged, and how `auto`
    /// opens its next connection.
    stateless: AtomicBool,
    /// Server URIs clients subscribed to, and which sessions did, where
    /// the server (of 2026-07-28) has no `resources/subscribe`: its
    /// connections listen for them.
    watched: watch::Sender<Watched>,
    stop: CancellationToken,
    servers: Servers,
}

/// Whether a server has asked a client something (sampling, elicitation,
/// roots) on a shared connection, and first what. From then on its
/// connections carry calls of one client session at a time: nothing on a
/// stdio pipe (or a legacy SSE stream) says which client a question is
/// for, so the only session with calls on the connection is the answer.
pub struct AskedClients {
    first: std::sync::OnceLock<&'static str>,
    servers: Servers,
}

/// Where the server is in its life, as the supervisor last set it.
#[derive(Clone, Debug)]
struct Lifecycle {
    state: ServerState,
    reason: String,
    offer: Offer,
    restarts: u32,
    protocol_version: Option<ProtocolVersion>,
}

/// What a ready server offers, as it listed it.
#[derive(Clone, Debug, Default)]
pub struct Offer {
    pub tools: Arc<[Tool]>,
    pub prompts: Arc<[Prompt]>,
    pub resources: Arc<[Resource]>,
    pub templates: Arc<[ResourceTemplate]>,
    pub capabilities: ServerCapabilities,
}

/// A point-in-time view of a server for health and status.
#[derive(Clone, Debug)]
pub struct ServerStatus {
    pub state: ServerState,
    /// Why the server failed; empty otherwise.
    pub reason: String,
    pub tools: Arc<[Tool]>,
    pub restarts: u32,
    pub protocol_version: Option<ProtocolVersion>,
    pub breaker: BreakerState,
    pub last_error: Option<(String, SystemTime)>,
    pub latency_p50: Option<Duration>,
    pub latency_p99: Option<Duration>,
    pub connections: usize,
    pub in_flight: u32,
    /// What the server asked a client first, once it has: its shared
    /// connections then carry one client session's calls at a time.
    pub asked_clients: Option<&'static str>,
    /// Prompts and resources it offers (before filtering).
    pub prompts: usize,
    pub resources: usize,
    /// While the breaker is open: when it lets a trial call through.
    pub breaker_retry_at: Option<SystemTime>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    Starting,
    Ready,
    Failed,
}

#[derive(Default)]
struct Stats {
    latencies: Mutex<VecDeque<Duration>>,
    last_error: Mutex<Option<(String, SystemTime)>>,
}

// === impl AskedClients ===

impl AskedClients {
    /// Notes that the server asked `method` of a client; the first time,
    /// says so and has the change reported.
    pub fn record(&self, server: &str, method: &'static str) {
        if self.first.set(method).is_ok() {
            info!(%server, %method, "server asked a client something: its connections now carry one client session's calls at a time");
            self.servers.notify_changed();
        }
    }
}

// === impl Servers ===

impl Servers {
    pub fn new(
        shutdown: CancellationToken,
        launcher: Launcher,
        telemetry: Telemetry,
        drain: Drain,
    ) -> Self {
        Self {
            inner: Arc::new(ServersInner {
                by_name: RwLock::default(),
                changed: watch::Sender::new(0),
                shutdown,
                tasks: TaskTracker::new(),
                launcher,
                telemetry,
                clients: Clients::default(),
                drain,
                session_connections_per_client: AtomicUsize::new(usize::MAX),
            }),
        }
    }

    /// Caps the per-session connections one authenticated client may hold.
    pub fn limit_session_connections_per_client(&self, max: usize) {
        self.inner
            .session_connections_per_client
            .store(max, Ordering::Relaxed);
    }

    /// Per-session connections the sessions of `owner` hold now.
    fn session_connections_of(&self, owner: &str) -> usize {
        let clients = self.clients();
        self.list()
            .iter()
            .map(|server| {
                server
                    .sessions
                    .lock()
                    .keys()
                    .filter(|key| clients.owner_of(**key).as_deref() == Some(owner))
                    .count()
            })
            .sum()
    }

    /// Makes the running set match `desired`: stops removed servers,
    /// restarts changed ones, starts new ones. Returns at once; servers
    /// start in the background.
    pub fn apply(&self, desired: BTreeMap<Arc<str>, ServerSpec>) {
        let mut by_name = self.inner.by_name.write();
        by_name.retain(|name, handle| {
            let keep = desired.get(name) == Some(&handle.spec);
            if !keep {
                info!(target: WORK, server = %name, "stopping server");
                handle.stop.cancel();
            }
            keep
        });
        for (name, spec) in desired {
            if by_name.contains_key(&name) {
                continue;
            }
            info!(target: WORK, server = %name, "starting server");
            let (events, events_rx) = mpsc::channel(EVENT_BUFFER);
            let handle = Arc::new(ServerHandle {
                breaker: Breaker::new(spec.breaker.clone()),
                spec,
                status: RwLock::new(Lifecycle::starting(0)),
                pool: Pool::default(),
                sessions: Mutex::default(),
                session_starts: Mutex::default(),
                tool_breakers: Mutex::default(),
                stats: Stats::default(),
                events,
                sse_launch: sse::SharedLaunch::default(),
                lists_changed: Arc::new(Notify::new()),
                asked: Arc::new(AskedClients {
                    first: std::sync::OnceLock::new(),
                    servers: self.clone(),
                }),
                stateless: AtomicBool::new(false),
                watched: watch::Sender::default(),
                stop: self.inner.shutdown.child_token(),
                servers: self.clone(),
            });
            // A root span: a server outlives the config stream that started it.
            let span = info_span!(parent: None, "server", server = %name);
            let rollout = tracing::Span::current();
            self.inner
                .tasks
                .spawn(supervisor::supervise(handle.clone(), events_rx, rollout).instrument(span));
            by_name.insert(name, handle);
        }
        drop(by_name);
        self.notify_changed();
    }

    /// The current servers, by name.
    pub fn list(&self) -> Vec<Arc<ServerHandle>> {
        self.inner.by_name.read().values().cloned().collect()
    }

    pub fn spec(&self, name: &str) -> Option<ServerSpec> {
        self.inner.by_name.read().get(name).map(|h| h.spec.clone())
    }

    /// The client sessions connected to this replica.
    pub fn clients(&self) -> &Clients {
        &self.inner.clients
    }

    /// Ticks whenever the set or any server's status changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Closes the per-session connections of a client session that ended.
    pub fn release_session(&self, session: SessionKey) {
        for handle in self.list() {
            if let Some(connection) = handle.sessions.lock().remove(&session) {
                connection.stop.cancel();
            }
            handle.watched.send_if_modified(|watched| {
                let before = watched.len();
                watched.retain(|_, sessions| {
                    sessions.remove(&session);
                    !sessions.is_empty()
                });
                watched.len() != before
            });
        }
    }

    /// Waits until every server task has stopped and every process is
    /// reaped. The shutdown token passed to [`Servers::new`] must be
    /// cancelled first.
    pub async fn wait_stopped(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn notify_changed(&self) {
        self.inner
            .changed
            .send_modify(|generation| *generation += 1);
    }
}

// === impl ServerHandle ===

impl ServerHandle {
    pub fn status(&self) -> ServerStatus {
        let lifecycle = self.status.read().clone();
        let (latency_p50, latency_p99) = self.stats.percentiles();
        let (session_connections, session_in_flight) = {
            let sessions = self.sessions.lock();
            let in_flight = sessions.values().map(|c| c.in_flight()).sum::<u32>();
            (sessions.len(), in_flight)
        };
        ServerStatus {
            state: lifecycle.state,
            reason: lifecycle.reason,
            prompts: lifecycle.offer.prompts.len(),
            resources: lifecycle.offer.resources.len(),
            tools: lifecycle.offer.tools,
            breaker_retry_at: self.breaker.open_until().map(|until| {
                SystemTime::now() + until.saturating_duration_since(tokio::time::Instant::now())
            }),
            restarts: lifecycle.restarts,
            protocol_version: lifecycle.protocol_version,
            breaker: self.breaker.state(),
            last_error: self.stats.last_error.lock().clone(),
            latency_p50,
            latency_p99,
            connections: self.pool.len() + session_connections,
            in_flight: self.pool.in_flight() + session_in_flight,
            asked_clients: self.asked.first.get().copied(),
        }
    }

    /// Whether the server speaks MCP 2026-07-28 or later: its calls may
    /// end in `input_required` results, and it is never asked to `ping`.
    pub fn is_stateless(&self) -> bool {
        self.stateless.load(Ordering::Relaxed)
    }

    /// Starts or stops listening for updates of the server's resource
    /// `uri` (its own URI) for `session`, for a server of 2026-07-28, which
    /// has no `resources/subscribe`: its connections' `subscriptions/listen`
    /// streams are opened again when the set of URIs changes.
    pub fn watch_resource(&self, uri: &str, session: SessionKey, watch: bool) {
        self.watched.send_if_modified(|watched| {
            if watch {
                return watched.entry(uri.to_owned()).or_default().insert(session);
            }
            let Some(sessions) = watched.get_mut(uri) else {
                return false;
            };
            let removed = sessions.remove(&session);
            if sessions.is_empty() {
                watched.remove(uri);
            }
            removed
        });
    }

    /// What requests may be routed to (nothing unless ready), and whether
    /// its tools are listed: not while the breaker is open, if the server
    /// hides them then.
    pub fn routable(&self) -> Option<(Offer, bool)> {
        let lifecycle = self.status.read();
        let hidden =
            self.spec.breaker.hide_tools_when_open && self.breaker.state() == BreakerState::Open;
        (lifecycle.state == ServerState::Ready).then(|| (lifecycle.offer.clone(), !hidden))
    }

    /// Sends a client's request on to this server through rmcp. A
    /// 2026-07-28 server may answer `input_required`: a 2026-07-28 client
    /// gets that as it is (its retry comes back here with the answers), a
    /// client of an older revision is asked each question as the request
    /// of its own revision, and the request is sent again with the answers,
    /// round after round, up to [`MAX_INPUT_ROUNDS`], all within
    /// `timeouts.maxCall`.
    pub async fn request(
        self: &Arc<Self>,
        origin: &Origin,
        request: Request,
        mut meta: RequestMetaObject,
        cancel: &CancellationToken,
    ) -> Result<ServerResult, CallError> {
        let Request {
            mut message,
            method,
            target,
            is_tool,
        } = request;
        let stateless = self.is_stateless();
        if !stateless && retry_state(&message).flatten().is_some() {
            // Only a server of 2026-07-28 issues states to retry with.
            return Err(CallError::Downstream(ErrorData::invalid_params(
                "unknown or expired requestState: send the request again without it",
                None,
            )));
        }
        let asking = self
            .servers
            .clients()
            .get(origin.session)
            .map_or(Asking::Never, |client| client.asking());
        if stateless && let Some(handshake) = &origin.handshake {
            // Told the client's own capabilities, the server asks only
            // for what the client can give.
            meta.set_client_capabilities(handshake.capabilities.clone());
        }
        // Kept to send again with answers: only what can be retried, for a
        // client that can be asked.
        let retryable = stateless && asking == Asking::Directly && retry_state(&message).is_some();
        let template = retryable.then(|| (message.clone(), meta.clone()));
        let give_up = tokio::time::Instant::now() + self.spec.timeouts.max_call;
        let mut round = 0;
        loop {
            round += 1;
            let about = About {
                method,
                target: target.as_deref(),
                tool: target.as_deref().filter(|_| is_tool),
                session: origin.session,
            };
            let left = give_up.saturating_duration_since(tokio::time::Instant::now());
            let result = self
                .exchange(about, meta, async |connection, meta, timeout| {
                    let options = PeerRequestOptions::with_timeout(timeout.min(left))
                        .reset_timeout_on_progress()
                        .with_max_total_timeout(left)
                        .with_meta(meta);
                    self.send(connection, origin, (method, message), options, cancel)
                        .await
                })
                .await?;
            let ServerResult::InputRequiredResult(asked) = &result else {
                return Ok(result);
            };
            let metrics = &self.servers.inner.telemetry.metrics;
            let Some((again, again_meta)) = &template else {
                return match asking {
                    // A 2026-07-28 client answers and retries itself.
                    Asking::InRounds => {
                        metrics.input_relayed.inc();
                        Ok(result)
                    }
                    Asking::Never => Err(self.unanswered(
                        Question::Any,
                        "the client made a one-off request (REST): it cannot be asked anything",
                    )),
                    Asking::Directly => Err(self.unexpected(method)),
                };
            };
            if round > MAX_INPUT_ROUNDS {
                return Err(self.unanswered(
                    Question::Any,
                    format!("it still asked after {MAX_INPUT_ROUNDS} rounds"),
                ));
            }
            let left = give_up.saturating_duration_since(tokio::time::Instant::now());
            let answers = self.answer_for(origin, asked, left, cancel).await?;
            metrics.input_bridged.inc();
            message = again.clone();
            meta = again_meta.clone();
            with_answers(&mut message, asked.request_state.clone(), answers);
        }
    }

    /// The client's answers to what a 2026-07-28 server's `input_required`
    /// result asks, each asked as the request of the client's revision,
    /// together; the others are withdrawn once one fails.
    async fn answer_for(
        &self,
        origin: &Origin,
        asked: &InputRequiredResult,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<InputResponses, CallError> {
        let capabilities = origin.handshake.as_ref().map(|h| &h.capabilities);
        let mut questions = Vec::new();
        // Every question is checked before any is asked.
        for (key, input) in asked.input_requests.iter().flatten() {
            let request = match input.clone() {
                InputRequest::CreateMessage(r) => ServerRequest::CreateMessageRequest(r),
                InputRequest::Elicitation(r) => ServerRequest::ElicitRequest(r),
                InputRequest::ListRoots(r) => ServerRequest::ListRootsRequest(r),
                _ => {
                    return Err(self.unanswered(
                        Question::Any,
                        "it asked for input of a kind this gateway does not know",
                    ));
                }
            };
            let question = Question::of(&request);
            if !capabilities.is_some_and(|c| question.declared_in(c)) {
                return Err(self.unanswered(question, "the client did not declare the capability"));
            }
            questions.push((key, question, request));
        }
        let clients = self.servers.clients();
        let asking = questions
            .into_iter()
            .map(|(key, question, request)| async move {
                let answer =
                    relay::ask_for_input(clients, origin, request, timeout, cancel.clone()).await;
                match answer {
                    Ok(answer) => serde_json::to_value(answer)
                        .map(|answer| (key.clone(), answer))
                        .map_err(|error| self.unanswered(question, error.to_string())),
                    Err(_) if cancel.is_cancelled() => Err(CallError::Cancelled),
                    Err(error) => Err(self.unanswered(question, error.message.into_owned())),
                }
            });
        let answers = futures::future::try_join_all(asking).await?;
        debug!(server = %self.spec.name, questions = answers.len(), "a 2026-07-28 server's input-required result answered by the client");
        Ok(answers.into_iter().collect())
    }

    fn unanswered(&self, question: Question, why: impl Into<String>) -> CallError {
        CallError::Unanswered {
            server: self.spec.name.clone(),
            question,
            why: why.into(),
        }
    }

    /// Calls a tool past rmcp (see `lines.rs`): `tool` is its name on this
    /// server, the arguments go as the client wrote them (on one line) and
    /// the result comes back unparsed. Only stdio servers take direct calls.
    pub async fn call_tool_direct(
        self: &Arc<Self>,
        origin: &Origin,
        tool: &str,
        arguments: Option<&RawValue>,
        meta: RequestMetaObject,
        cancel: &CancellationToken,
    ) -> Result<DirectResult, CallError> {
        let about = About {
            method: "tools/call",
            target: Some(tool),
            tool: Some(tool),
            session: origin.session,
        };
        self.exchange(about, meta, async |connection, meta, timeout| {
            let params = DirectParams {
                name: tool,
                arguments,
                meta,
            };
            self.send_direct(connection, origin, params, timeout, cancel)
                .await
        })
        .await
    }

    /// A request's way to the server, whichever way it is sent: counts the
    /// outcome in the latency statistics and traces it as a CLIENT span
    /// under the `traceparent` in `meta`.
    async fn exchange<A: Answered>(
        self: &Arc<Self>,
        about: About<'_>,
        mut meta: RequestMetaObject,
        send: impl AsyncFnOnce(&Connection, RequestMetaObject, Duration) -> Result<A, CallError>,
    ) -> Result<A, CallError> {
        // Held also by calls the edge admitted before a drain started and
        // that reach a server only now, such as legacy SSE's.
        let _in_flight = self.servers.inner.drain.blocker();
        let telemetry = &self.servers.inner.telemetry;
        let parent = meta.get_traceparent().and_then(TraceContext::parse);
        let name = || match about.target {
            Some(target) => format!("{} {target}", about.method),
            None => about.method.to_owned(),
        };
        let mut span = telemetry.tracer.start(name, SpanKind::Client, parent);
        if let Some(context) = span.context() {
            meta.set_traceparent(context.to_traceparent());
        }
        if span.is_recording() {
            span.set(attr::MCP_METHOD_NAME, about.method);
            if let Some(tool) = about.tool {
                span.set(attr::GEN_AI_TOOL_NAME, tool);
                span.set(attr::GEN_AI_OPERATION_NAME, "execute_tool");
            }
            span.set(attr::SERVER, &self.spec.name);
            let remote = match &self.spec.transport {
                Transport::Stdio(_) => None,
                Transport::Http(http) => Some(http),
                Transport::Sse(sse) => Some(&sse.remote),
            };
            match remote {
                None => span.set(attr::NETWORK_TRANSPORT, "pipe"),
                Some(remote) => {
                    span.set(attr::NETWORK_TRANSPORT, "tcp");
                    if let Some(host) = remote.host() {
                        span.set(attr::SERVER_ADDRESS, &host);
                    }
                }
            }
        }
        let started = tokio::time::Instant::now();
        let outcome = self.guarded(&about, meta, send).await;
        telemetry
            .metrics
            .downstream_duration
            .get_or_create(&MethodLabels {
                server: Some(self.spec.name.clone()),
                method: about.method,
            })
            .observe(started.elapsed().as_secs_f64());
        match &outcome {
            Ok(answer) if answer.is_tool_error() => span.set_error("tool_error", ""),
            Ok(_) => {}
            Err(CallError::Downstream(error)) => {
                let code = error.code.0.to_string();
                span.set(attr::RPC_RESPONSE_STATUS_CODE, &code);
                span.set_error(&code, &error.message);
            }
            Err(err) => span.set_error(err.kind(), &err.to_string()),
        }
        outcome
    }

    /// [`ServerHandle::exchange`] behind the breaker(s), on a connection.
    async fn guarded<A: Answered>(
        self: &Arc<Self>,
        about: &About<'_>,
        meta: RequestMetaObject,
        send: impl AsyncFnOnce(&Connection, RequestMetaObject, Duration) -> Result<A, CallError>,
    ) -> Result<A, CallError> {
        let tool_breaker = match about.tool {
            Some(tool) if self.spec.breaker.per_tool => Some(self.tool_breaker(tool)),
            _ => None,
        };
        let permit = self
            .breaker
            .try_acquire()
            .map_err(|r| self.breaker_open(r))?;
        let tool_permit = match &tool_breaker {
            Some(breaker) => Some(breaker.try_acquire().map_err(|r| self.breaker_open(r))?),
            None => None,
        };
        let started = tokio::time::Instant::now();
        let outcome = async {
            let timeouts = &self.spec.timeouts;
            let timeout = about
                .tool
                .and_then(|tool| timeouts.tools.get(tool))
                .copied()
                .unwrap_or(timeouts.call);
            let connection = self.connection_for(about.session).await?;
            send(&*connection, meta, timeout).await
        }
        .await;
        let failed = self.counts_as_failure(&outcome);
        let mut changed = self.breaker.record(permit, failed);
        if let (Some(breaker), Some(permit)) = (tool_breaker, tool_permit) {
            changed |= breaker.record(permit, failed);
        }
        if changed {
            // A trace of its own: a breaker turns on calls, not rollouts.
            let turned = info_span!(
                target: WORK,
                parent: None,
                "server.breaker",
                server = %self.spec.name,
                breaker = self.breaker.state().as_str(),
                tool = about.tool.unwrap_or_default(),
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
            );
            proto::otel::sdk::correlate(&turned);
            let _turned = turned.enter();
            info!(
                breaker = self.breaker.state().as_str(),
                "circuit breaker changed state"
            );
            self.servers.notify_changed();
        }
        match &outcome {
            Ok(_) => self.stats.record_latency(started.elapsed()),
            Err(CallError::Cancelled) => {}
            Err(err) => self.stats.record_error(err.to_string()),
        }
        outcome
    }

    /// Sends a request through rmcp and relays what the server sends
    /// back for it until the response.
    async fn send(
        &self,
        connection: &Connection,
        origin: &Origin,
        (method, message): (&'static str, ClientRequest),
        options: PeerRequestOptions,
        cancel: &CancellationToken,
    ) -> Result<ServerResult, CallError> {
        let transport = |source| CallError::Transport {
            server: self.spec.name.clone(),
            method,
            source,
        };
        // Cancelled while it waited for a connection: the server never hears of it.
        if cancel.is_cancelled() {
            return Err(CallError::Cancelled);
        }
        let handle = connection
            .peer
            .send_request_with_option(message, options)
            .await
            .map_err(transport)?;
        let registered = connection.relay.register(
            handle.progress_token.clone(),
            Some(handle.id.clone()),
            origin.clone(),
        );
        let (id, peer) = (handle.id.clone(), handle.peer.clone());
        let response = tokio::select! {
            response = handle.await_response() => response,
            _ = cancel.cancelled() => {
                let reason = Some("cancelled by the client".to_owned());
                let _ = peer.notify_cancelled(CancelledNotificationParam::new(Some(id), reason)).await;
                return Err(CallError::Cancelled);
            }
        };
        tokio::select! {
            () = registered.settled() => {}
            _ = cancel.cancelled() => return Err(CallError::Cancelled),
        }
        match response {
            Ok(result) => Ok(result),
            Err(ServiceError::McpError(error)) => Err(CallError::Downstream(error)),
            Err(ServiceError::Timeout { timeout }) => Err(CallError::Timeout {
                server: self.spec.name.clone(),
                method,
                after: timeout,
            }),
            Err(source) => Err(transport(source)),
        }
    }

    /// Sends a `tools/call` past rmcp. It is registered with the relay
    /// like any other, so a server request or log message sent while it
    /// runs is routed as usual, and it asks for progress under its own id
    /// as rmcp does: progress restarts the timeout, up to `maxCall`, and
    /// reaches the client if it asked for it (`origin.stream`).
    async fn send_direct(
        &self,
        connection: &Connection,
        origin: &Origin,
        mut params: DirectParams<'_>,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<DirectResult, CallError> {
        const METHOD: &str = "tools/call";
        let Some(direct) = &connection.direct else {
            return Err(CallError::Unavailable {
                server: self.spec.name.clone(),
                reason: "its connection does not take direct calls".to_owned(),
            });
        };
        let transport = || CallError::Transport {
            server: self.spec.name.clone(),
            method: METHOD,
            source: ServiceError::TransportClosed,
        };
        let timed_out = || CallError::Timeout {
            server: self.spec.name.clone(),
            method: METHOD,
            after: timeout,
        };
        if cancel.is_cancelled() {
            return Err(CallError::Cancelled);
        }
        // Dropped unanswered, the call tells the server it was cancelled.
        let mut call = direct.start();
        let token = call.progress_token();
        params.meta.set_progress_token(token.clone());
        let registered = connection.relay.register(token, None, origin.clone());
        let mut progressed = registered.progress();
        let give_up = tokio::time::Instant::now() + self.spec.timeouts.max_call;
        let deadline = || (tokio::time::Instant::now() + timeout).min(give_up);
        let exchange = async {
            match tokio::time::timeout_at(deadline(), call.send(METHOD, &params, params.len_hint()))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(transport()),
                Err(_) => return Err(timed_out()),
            }
            let mut until = deadline();
            loop {
                tokio::select! {
                    answer = call.answer() => return answer.map_err(|_| transport()),
                    Ok(()) = progressed.changed() => until = deadline(),
                    () = tokio::time::sleep_until(until) => return Err(timed_out()),
                }
            }
        };
        let answer = tokio::select! {
            answer = exchange => answer,
            _ = cancel.cancelled() => return Err(CallError::Cancelled),
        };
        // Progress the server sent before its answer (or before the call
        // failed) goes out first.
        tokio::select! {
            () = registered.settled() => {}
            _ = cancel.cancelled() => return Err(CallError::Cancelled),
        }
        match answer? {
            Answer::Result(result) => {
                DirectResult::new(result).ok_or_else(|| self.unexpected(METHOD))
            }
            Answer::Error(error) => Err(CallError::Downstream(error)),
        }
    }

    pub fn unexpected(&self, method: &'static str) -> CallError {
        CallError::UnexpectedResult {
            server: self.spec.name.clone(),
            method,
        }
    }

    /// A pooled connection (shared mode; one no other session's calls are
    /// on, once the server has asked clients things) or the session's own
    /// (per-session), with the call counted on it.
    async fn connection_for(
        self: &Arc<Self>,
        session: SessionKey,
    ) -> Result<InFlight<'_>, CallError> {
        match self.spec.session_mode {
            SessionMode::PerSession => {
                let connection = self.session_connection(session).await?;
                Ok(self.pool.begin(connection, session))
            }
            SessionMode::Shared => {
                let pool = &self.spec.pool;
                let acquired = self
                    .pool
                    .acquire(
                        session,
                        self.asked.first.get().is_some(),
                        pool.max_concurrency,
                        pool.acquire_timeout,
                        // Only a running server can grow: while it is down or
                        // restarting the supervisor cannot act on the request,
                        // and the call should fail at once with the reason.
                        |count| {
                            count < pool.max as usize
                                && !self.stop.is_cancelled()
                                && self.status.read().state == ServerState::Ready
                        },
                        || {
                            if self.events.try_send(supervisor::Event::Grow).is_err() {
                                self.pool.grow_done();
                            }
                        },
                    )
                    .await;
                acquired.map_err(|err| {
                    let reason = match err {
                        AcquireError::Busy => format!(
                            "all {} connection(s) stayed busy for {:?} (pool.max {}, pool.maxConcurrency {})",
                            self.pool.len(),
                            pool.acquire_timeout,
                            pool.max,
                            pool.max_concurrency
                        ),
                        AcquireError::Down => {
                            let lifecycle = self.status.read();
                            match lifecycle.state {
                                ServerState::Failed => format!("server is down: {}", lifecycle.reason),
                                _ => "server is starting".to_owned(),
                            }
                        }
                    };
                    CallError::Unavailable {
                        server: self.spec.name.clone(),
                        reason,
                    }
                })
            }
        }
    }

    async fn session_connection(
        self: &Arc<Self>,
        session: SessionKey,
    ) -> Result<Arc<Connection>, CallError> {
        let existing = |sessions: &HashMap<SessionKey, Arc<Connection>>| {
            sessions
                .get(&session)
                .filter(|c| !c.stop.is_cancelled())
                .cloned()
        };
        if let Some(connection) = existing(&self.sessions.lock()) {
            return Ok(connection);
        }
        let gate = self
            .session_starts
            .lock()
            .entry(session)
            .or_default()
            .clone();
        let _starting = gate.lock().await;
        if let Some(connection) = existing(&self.sessions.lock()) {
            return Ok(connection);
        }
        // Counted before the start: sessions of one client starting side by
        // side may pass together, so the cap holds to within those.
        let servers = &self.servers;
        if let Some(owner) = servers.clients().owner_of(session) {
            let max = servers
                .inner
                .session_connections_per_client
                .load(Ordering::Relaxed);
            if servers.session_connections_of(&owner) >= max {
                self.session_starts.lock().remove(&session);
                return Err(CallError::Unavailable {
                    server: self.spec.name.clone(),
                    reason: format!(
                        "client `{owner}` holds its limit of {max} per-session server connections: end sessions it no longer uses"
                    ),
                });
            }
        }
        let started = supervisor::start_connection(self, Some(session)).await;
        // Registered before the gate goes, so a later call finds it; a
        // session that ended while it started released nothing yet, so its
        // connection stops here.
        if let Ok(connection) = &started {
            self.sessions.lock().insert(session, connection.clone());
            match servers.clients().get(session) {
                None => {
                    self.sessions.lock().remove(&session);
                    connection.stop.cancel();
                }
                Some(client) if client.moved() => {
                    // Whatever the server held for the session lives on the
                    // replica that opened it: said, never hidden.
                    warn!(server = %self.spec.name, "a session another replica opened got a new per-session connection: what the server held for it there is not here");
                    servers
                        .inner
                        .telemetry
                        .metrics
                        .moved_session_connections
                        .inc();
                }
                Some(_) => {}
            }
        }
        self.session_starts.lock().remove(&session);
        started.map_err(|reason| CallError::Unavailable {
            server: self.spec.name.clone(),
            reason,
        })
    }

    fn tool_breaker(&self, tool: &str) -> Arc<Breaker> {
        self.tool_breakers
            .lock()
            .entry(tool.to_owned())
            .or_insert_with(|| Arc::new(Breaker::new(self.spec.breaker.clone())))
            .clone()
    }

    fn breaker_open(&self, rejected: breaker::Rejected) -> CallError {
        CallError::BreakerOpen {
            server: self.spec.name.clone(),
            retry_in: rejected.retry_in,
        }
    }

    /// The breaker policy: transport failures and timeouts always count;
    /// JSON-RPC errors and `isError` results only when configured.
    fn counts_as_failure(&self, outcome: &Result<impl Answered, CallError>) -> bool {
        let policy = &self.spec.breaker;
        match outcome {
            Ok(answer) => policy.count_tool_errors && answer.is_tool_error(),
            Err(CallError::Downstream(_)) => policy.count_jsonrpc_errors,
            Err(
                CallError::Cancelled | CallError::BreakerOpen { .. } | CallError::Unanswered { .. },
            ) => false,
            Err(
                CallError::Unavailable { .. }
                | CallError::Timeout { .. }
                | CallError::Transport { .. }
                | CallError::UnexpectedResult { .. },
            ) => true,
        }
    }

    fn set_lifecycle(&self, lifecycle: Lifecycle) {
        *self.status.write() = lifecycle;
        self.servers.notify_changed();
    }
}

// === impl Lifecycle ===

impl Lifecycle {
    fn starting(restarts: u32) -> Self {
        Self {
            state: ServerState::Starting,
            reason: String::new(),
            offer: Offer::default(),
            restarts,
            protocol_version: None,
        }
    }
}

// === impl Stats ===

impl Stats {
    fn record_latency(&self, latency: Duration) {
        let mut latencies = self.latencies.lock();
        if latencies.len() == LATENCY_SAMPLES {
            latencies.pop_front();
        }
        latencies.push_back(latency);
    }

    fn record_error(&self, error: String) {
        let error = redact::urls(&error).into_owned();
        *self.last_error.lock() = Some((error, SystemTime::now()));
    }

    fn percentiles(&self) -> (Option<Duration>, Option<Duration>) {
        let mut sorted: Vec<Duration> = self.latencies.lock().iter().copied().collect();
        if sorted.is_empty() {
            return (None, None);
        }
        sorted.sort_unstable();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        (Some(at(0.50)), Some(at(0.99)))
    }
}

// === impl Answered ===

/// What a server answered a forwarded request with.
pub trait Answered {
    /// Whether it is a tool result with `isError` set.
    fn is_tool_error(&self) -> bool;
}

impl Answered for ServerResult {
    fn is_tool_error(&self) -> bool {
        matches!(self, ServerResult::CallToolResult(result) if result.is_error == Some(true))
    }
}

/// `tools/call` params of a direct call as the server gets them: the
/// arguments as the client wrote them, never parsed into a value tree.
#[derive(Serialize)]
struct DirectParams<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<&'a RawValue>,
    #[serde(rename = "_meta")]
    meta: RequestMetaObject,
}

impl DirectParams<'_> {
    /// About how many bytes the params take encoded: the arguments, mostly.
    fn len_hint(&self) -> usize {
        let arguments = self.arguments.map_or(0, |arguments| arguments.get().len());
        self.name.len() + arguments + 256
    }
}

/// A `tools/call` result as the server wrote it (see
/// [`ServerHandle::call_tool_direct`]).
#[derive(Debug)]
pub struct DirectResult {
    /// A JSON object, as the server wrote it.
    pub result: Bytes,
    pub is_error: bool,
}

impl DirectResult {
    /// `None` unless the result is a JSON object and a finished call's, as
    /// rmcp's path requires too (no `input_required` or `task` result).
    fn new(result: Bytes) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Flags<'a> {
            #[serde(rename = "isError")]
            is_error: Option<bool>,
            #[serde(rename = "resultType", borrow)]
            result_type: Option<std::borrow::Cow<'a, str>>,
        }
        let flags: Flags<'_> = serde_json::from_slice(&result).ok()?;
        if flags.result_type.is_some_and(|kind| kind != "complete") {
            return None;
        }
        Some(Self {
            is_error: flags.is_error == Some(true),
            result,
        })
    }
}

impl Answered for DirectResult {
    fn is_tool_error(&self) -> bool {
        self.is_error
    }
}

/// What a server asked a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Question {
    Sampling,
    Elicitation,
    Roots,
    /// Several, or one of a kind the gateway does not know.
    Any,
}

impl Question {
    /// What a server's request asks.
    pub fn of(request: &ServerRequest) -> Self {
        match request {
            ServerRequest::CreateMessageRequest(_) => Question::Sampling,
            ServerRequest::ElicitRequest(_) => Question::Elicitation,
            ServerRequest::ListRootsRequest(_) => Question::Roots,
            _ => Question::Any,
        }
    }

    /// The method that asks it.
    pub fn method(self) -> &'static str {
        match self {
            Question::Sampling => "sampling/createMessage",
            Question::Elicitation => "elicitation/create",
            Question::Roots => "roots/list",
            Question::Any => "a request",
        }
    }

    /// Whether a client with these capabilities may be asked it.
    pub fn declared_in(self, capabilities: &ClientCapabilities) -> bool {
        match self {
            Question::Sampling => capabilities.sampling.is_some(),
            Question::Elicitation => capabilities.elicitation.is_some(),
            Question::Roots => capabilities.roots.is_some(),
            Question::Any => false,
        }
    }
}

impl std::fmt::Display for Question {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Question::Any => f.write_str("its questions"),
            question => f.write_str(question.method()),
        }
    }
}

/// The `requestState` of a request that may carry one (`tools/call`,
/// `prompts/get`, `resources/read`): `Some(None)` where it has none.
fn retry_state(request: &ClientRequest) -> Option<Option<&str>> {
    match request {
        ClientRequest::CallToolRequest(r) => Some(r.params.request_state.as_deref()),
        ClientRequest::GetPromptRequest(r) => Some(r.params.request_state.as_deref()),
        ClientRequest::ReadResourceRequest(r) => Some(r.params.request_state.as_deref()),
        _ => None,
    }
}

/// Makes `request` (one [`retry_state`] knows) the retry that carries the
/// client's answers to a 2026-07-28 server's `input_required` result and
/// the state it gave.
fn with_answers(request: &mut ClientRequest, state: Option<String>, answers: InputResponses) {
    let (request_state, input_responses) = match request {
        ClientRequest::CallToolRequest(r) => {
            (&mut r.params.request_state, &mut r.params.input_responses)
        }
        ClientRequest::GetPromptRequest(r) => {
            (&mut r.params.request_state, &mut r.params.input_responses)
        }
        ClientRequest::ReadResourceRequest(r) => {
            (&mut r.params.request_state, &mut r.params.input_responses)
        }
        _ => return,
    };
    *request_state = state;
    *input_responses = Some(answers);
}

/// What telemetry, breakers and timeouts need to know of a request.
struct About<'a> {
    method: &'static str,
    /// The tool, prompt or resource it is about, as the server names it.
    target: Option<&'a str>,
    tool: Option<&'a str>,
    session: SessionKey,
}

// === impl Request ===

/// A client request on its way to a server, with what telemetry needs.
pub struct Request {
    pub message: ClientRequest,
    pub method: &'static str,
    /// The tool, prompt or resource it is about, as the server names it.
    pub target: Option<String>,
    is_tool: bool,
}

impl Request {
    pub fn new(
        message: impl Into<ClientRequest>,
        method: &'static str,
        target: Option<String>,
    ) -> Self {
        Self {
            message: message.into(),
            method,
            target,
            is_tool: false,
        }
    }

    pub fn call_tool(params: CallToolRequestParams) -> Self {
        let target = Some(params.name.to_string());
        Self {
            message: CallToolRequest::new(params).into(),
            method: "tools/call",
            target,
            is_tool: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(result: &str) -> Option<bool> {
        DirectResult::new(Bytes::copy_from_slice(result.as_bytes())).map(|result| result.is_error)
    }

    #[tokio::test]
    async fn a_message_sent_soon_waits_for_room_on_a_full_channel() {
        let (sender, mut receiver) = mpsc::channel(1);
        send_soon(&sender, 1);
        // The channel is full now: the second waits for room.
        send_soon(&sender, 2);
        drop(sender);
        assert_eq!(receiver.recv().await, Some(1));
        assert_eq!(receiver.recv().await, Some(2));
        assert_eq!(receiver.recv().await, None);
    }

    #[test]
    fn a_direct_result_is_read_for_its_flags_however_they_are_spelled() {
        assert_eq!(flags(r#"{"content":[]}"#), Some(false));
        assert_eq!(flags(r#"{"content":[],"isError":true}"#), Some(true));
        assert_eq!(flags(r#"{"isError":false,"content":[]}"#), Some(false));
        // An escaped key is the same key.
        assert_eq!(flags(r#"{"content":[],"is\u0045rror":true}"#), Some(true));
        // Named only inside a text, it is not a flag.
        assert_eq!(
            flags(r#"{"content":[{"type":"text","text":"isError"}]}"#),
            Some(false)
        );
        assert_eq!(flags(r#"{"content":[],"isError" : false }"#), Some(false));
        // Nested, or the tail of another key, it is not the flag.
        assert_eq!(
            flags(r#"{"structuredContent":{"isError":true},"isError":false}"#),
            Some(false)
        );
        assert_eq!(
            flags(r#"{"content":[{"type":"text","text":"a\"isError"}],"isError":true}"#),
            Some(true)
        );
        assert_eq!(flags(r#"{"isError":false,"isError":true}"#), None);
        assert_eq!(flags(r#"{"x\"isError":true,"content":[]}"#), Some(false));
        assert_eq!(
            flags(r#"{"content":[],"resultType":"complete"}"#),
            Some(false)
        );
        assert_eq!(flags(r#"{"content":[],"resultType":"task"}"#), None);
        assert_eq!(flags(r#"{"content":[],"result\u0054ype":"task"}"#), None);
        assert_eq!(flags(r#"{"content":[],"isError":"yes"}"#), None);
        assert_eq!(flags(r#"["content"]"#), None);
        assert_eq!(flags(r#""text""#), None);
    }
}
