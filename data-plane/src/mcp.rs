//! The client-facing MCP endpoint: one [`GatewaySession`] per client
//! session, answering lists from the catalog and forwarding everything
//! else (tool calls, prompts, resource reads and subscriptions,
//! completions, log levels) to the server that owns the name or URI, with
//! the namespace stripped and the result relayed unchanged. What servers
//! send back outside a response goes through `downstream/relay.rs`.
//! `guard.rs` checks request bodies before rmcp sees them; `direct.rs`
//! answers plain tool calls without rmcp's session layer and `single.rs`
//! answers other one-message streams as JSON; `sse.rs` serves the same
//! sessions over legacy HTTP+SSE; `park.rs` takes idle sessions out of
//! memory.

// Logging is deprecated by SEP-2577 but clients on the protocol versions
// this gateway serves still use it.
#![allow(deprecated)]

pub mod answer;
pub mod direct;
pub mod guard;
pub mod park;
mod replay;
pub mod single;
pub mod sse;

use std::{
    borrow::Cow,
    ops::Range,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;
use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequest,
        CompleteRequestParams, CompleteResult, ContentBlock, GetPromptRequest,
        GetPromptRequestParams, GetPromptResponse, Implementation, InitializeRequestParams,
        InitializeResult, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
        ListToolsResult, MetaObject, PaginatedRequestParams, ProtocolVersion, ReadResourceRequest,
        ReadResourceRequestParams, ReadResourceResponse, Reference, RequestMetaObject,
        ResourceContents, ServerConfig, ServerResult, SetLevelRequest, SetLevelRequestParams,
        SubscribeRequest, SubscribeRequestParams, UnsubscribeRequest, UnsubscribeRequestParams,
    },
    service::{NotificationContext, RequestContext},
    transport::{
        StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::{SessionRestoreMarker, session::local::LocalSessionManager},
    },
};
use serde_json::json;
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};
use tracing::{Instrument, debug, info_span};

use crate::{
    catalog::{CatalogReader, Route},
    clients::ClientSession,
    downstream::{CallError, Origin, Request, Servers, SessionKey},
    mcp::direct::{DirectPath, DirectSession},
    observe::{Observation, RequestInfo, Target},
    redact,
    spec::SessionMode,
    telemetry::Telemetry,
};

/// Idle client sessions are closed after this long; clients then get 404
/// and re-initialise. rmcp's default (5 min) drops sessions of clients that
/// sit idle between prompts.
const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Resource subscriptions one session may hold: each costs the gateway
/// (and perhaps a server) for as long as the session lives.
const MAX_SUBSCRIPTIONS: usize = 1024;
/// Messages buffered per session before a slow reader applies back-pressure.
const SESSION_CHANNEL_CAPACITY: usize = 64;

/// Errors this gateway itself answers with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown tool `{0}`")]
    UnknownTool(String),
    #[error("unknown prompt `{0}`")]
    UnknownPrompt(String),
    #[error("no server serves resource `{0}`")]
    UnknownResource(String),
    #[error("invalid cursor `{0}`: use the nextCursor of the previous page")]
    InvalidCursor(String),
    #[error(
        "a session may hold at most {MAX_SUBSCRIPTIONS} resource subscriptions: unsubscribe from some first"
    )]
    TooManySubscriptions,
    #[error(transparent)]
    Call(#[from] CallError),
}

/// Key under which gateway errors are described in a result's `_meta`.
const ERROR_META_KEY: &str = "switchboard.dev/error";

/// Settings of the MCP endpoint.
#[derive(Clone, Debug)]
pub struct McpConfig {
    /// `Host` values accepted (DNS-rebinding protection).
    pub allowed_hosts: Vec<String>,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive (408 beyond), so a slow
    /// upload cannot hold a connection and its buffer forever.
    pub body_read_timeout: Duration,
    /// Client sessions held at most, in memory and parked together (new
    /// ones get 503 beyond), so a flood of sessions cannot exhaust memory.
    pub max_sessions: usize,
    /// Items per page of `tools/list`, `prompts/list`, `resources/list`
    /// and `resources/templates/list`.
    pub page_size: usize,
    /// Idle streamable-HTTP sessions are parked after this long (`park.rs`);
    /// `None` keeps every session in memory.
    pub park_after: Option<Duration>,
}

/// The MCP handler for one client session.
pub struct GatewaySession {
    /// Identifies this session to per-session servers.
    key: SessionKey,
    catalog: CatalogReader,
    servers: Servers,
    telemetry: Telemetry,
    /// The caller this session named first (see `observe.rs`).
    caller: Arc<OnceLock<String>>,
    page_size: usize,
    /// This session as the relay reaches it, from its first request on.
    client: OnceLock<Arc<ClientSession>>,
    /// Forwards catalog changes as `notifications/*/list_changed`.
    list_changed: Mutex<Option<AbortOnDropHandle<()>>>,
    /// Where this session is pinned when it gains state a replayed
    /// handshake would lose, and lent to the direct path; `None` for
    /// legacy SSE sessions, which have neither.
    book: Option<Arc<park::Book>>,
}

// === impl Error ===

impl Error {
    /// How a failed `tools/call` reaches the client. Unknown names and
    /// cancellations are JSON-RPC errors; a server that fails, times out or
    /// is switched off by its breaker answers with an `isError` result, so
    /// the model sees why. Errors the server itself answered are relayed.
    pub fn into_response(self) -> Result<CallToolResponse, ErrorData> {
        self.into_tool_result().map(CallToolResponse::Complete)
    }

    /// [`Error::into_response`] as the result it always is.
    fn into_tool_result(self) -> Result<CallToolResult, ErrorData> {
        let call = match self {
            Error::Call(
                call @ (CallError::BreakerOpen { .. }
                | CallError::Unavailable { .. }
                | CallError::Timeout { .. }
                | CallError::Transport { .. }
                | CallError::UnexpectedResult { .. }),
            ) => call,
            other => return Err(other.into_error()),
        };
        let detail = json!({ "kind": call.kind(), "server": call.server() });
        let message = redact::urls(&call.to_string()).into_owned();
        let mut result = CallToolResult::error(vec![ContentBlock::text(message)]);
        let mut meta = MetaObject::default();
        meta.0.insert(ERROR_META_KEY.to_owned(), detail);
        result.meta = Some(meta);
        Ok(result)
    }

    /// A JSON-RPC error for methods other than `tools/call`, which have
    /// no `isError` result to explain a failure in.
    pub fn into_error(self) -> ErrorData {
        let message = redact::urls(&self.to_string()).into_owned();
        match self {
            Error::UnknownTool(name) => {
                ErrorData::invalid_params(message, Some(json!({ "tool": name })))
            }
            Error::UnknownPrompt(name) => {
                ErrorData::invalid_params(message, Some(json!({ "prompt": name })))
            }
            Error::UnknownResource(uri) => {
                ErrorData::resource_not_found(message, Some(json!({ "uri": uri })))
            }
            Error::InvalidCursor(_) | Error::TooManySubscriptions => {
                ErrorData::invalid_params(message, None)
            }
            Error::Call(CallError::Downstream(error)) => error,
            Error::Call(CallError::Cancelled) => ErrorData::internal_error(message, None),
            Error::Call(call) => {
                let detail =
                    json!({ ERROR_META_KEY: { "kind": call.kind(), "server": call.server() } });
                ErrorData::internal_error(message, Some(detail))
            }
        }
    }

    /// Tells the request's observer why it failed; errors the server
    /// answered itself speak for themselves.
    fn describe(&self, observation: &mut Observation) {
        match self {
            Error::UnknownTool(_) => observation.set_failure("unknown_tool", self.to_string()),
            Error::UnknownPrompt(_) => observation.set_failure("unknown_prompt", self.to_string()),
            Error::UnknownResource(_) => {
                observation.set_failure("unknown_resource", self.to_string())
            }
            Error::InvalidCursor(_) => observation.set_failure("invalid_cursor", self.to_string()),
            Error::TooManySubscriptions => {
                observation.set_failure("too_many_subscriptions", self.to_string())
            }
            Error::Call(CallError::Downstream(_)) => {}
            Error::Call(call) => {
                observation.set_failure(call.kind(), redact::urls(&call.to_string()).into_owned())
            }
        }
    }
}

/// `/mcp`: rmcp's streamable HTTP service behind the direct path and
/// the JSON answers.
pub fn router(
    catalog: CatalogReader,
    servers: Servers,
    config: &McpConfig,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> axum::Router {
    let page_size = config.page_size;
    let mut local = LocalSessionManager::default();
    local.session_config.keep_alive = Some(SESSION_IDLE_TIMEOUT);
    local.session_config.channel_capacity = SESSION_CHANNEL_CAPACITY;
    let mut http = StreamableHttpServerConfig::default();
    // Without parking the book still refuses duplicate request ids and
    // lends sessions to the direct path.
    let book = park::Book::new(
        config.park_after.unwrap_or(Duration::MAX),
        SESSION_IDLE_TIMEOUT,
        telemetry.metrics.clone(),
    );
    let sessions = Arc::new(park::ParkingSessions::new(local, book.clone()));
    if config.park_after.is_some() {
        http.session_store = Some(Arc::new(park::Store::new(book.clone())));
        park::spawn_reaper(sessions.clone(), shutdown.clone());
    }
    http = if config.allowed_hosts.iter().any(|h| h == "*") {
        http.disable_allowed_hosts()
    } else {
        // A browser's `Origin` must name an allowed host too (any port).
        let origins = config.allowed_hosts.iter().flat_map(|host| {
            let authority = if host.parse::<std::net::Ipv6Addr>().is_ok() {
                format!("[{host}]:*")
            } else if host.contains(':') {
                host.clone()
            } else {
                format!("{host}:*")
            };
            [
                format!("http://{authority}"),
                format!("https://{authority}"),
            ]
        });
        http.with_allowed_hosts(config.allowed_hosts.clone())
            .with_allowed_origins(origins)
    };
    let http = http
        .with_max_request_body_bytes(config.max_body_bytes)
        .with_legacy_session_mode(true)
        .with_cancellation_token(shutdown);
    let direct = Arc::new(DirectPath {
        book: book.clone(),
        catalog: catalog.clone(),
        telemetry: telemetry.clone(),
        allowed_hosts: sse::AllowedHosts::new(&config.allowed_hosts),
        page_size: page_size.max(1),
    });
    let metrics = telemetry.metrics.clone();
    let held = book.clone();
    let service = Arc::new(StreamableHttpService::new(
        move || {
            Ok(GatewaySession::new(
                catalog.clone(),
                servers.clone(),
                telemetry.clone(),
                page_size,
            )
            .booked_in(book.clone()))
        },
        sessions,
        http,
    ));
    // Middleware clones the service it wraps for every request; rmcp's
    // clones its whole config (host lists and all), an `Arc` does not.
    let handler =
        move |request: axum::extract::Request| async move { service.handle(request).await };
    axum::Router::new()
        .route("/mcp", axum::routing::any(handler))
        .layer(axum::middleware::from_fn_with_state(
            held,
            park::end_session,
        ))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            single::single_response,
        ))
        .layer(axum::middleware::from_fn_with_state(
            direct,
            direct::direct_path,
        ))
}

// === impl GatewaySession ===

impl GatewaySession {
    pub fn new(
        catalog: CatalogReader,
        servers: Servers,
        telemetry: Telemetry,
        page_size: usize,
    ) -> Self {
        static NEXT_KEY: AtomicU64 = AtomicU64::new(1);
        telemetry.metrics.sessions.inc();
        Self {
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            catalog,
            servers,
            telemetry,
            caller: Arc::default(),
            page_size: page_size.max(1),
            client: OnceLock::new(),
            list_changed: Mutex::new(None),
            book: None,
        }
    }

    fn booked_in(mut self, book: Arc<park::Book>) -> Self {
        self.book = Some(book);
        self
    }

    /// Keeps this session in memory from now on (see `park.rs`); the
    /// request names the session in its header.
    fn pin(&self, context: &RequestContext<RoleServer>) {
        if let (Some(book), Some(id)) = (&self.book, session_id(&context.extensions)) {
            book.pin(id);
        }
    }

    fn observe(
        &self,
        method: &'static str,
        target: Option<Target>,
        initialize: Option<&InitializeRequestParams>,
        context: &RequestContext<RoleServer>,
    ) -> Observation {
        let request = RequestInfo {
            method,
            target,
            initialize,
            session_caller: &self.caller,
        };
        Observation::begin(&self.telemetry, request, context)
    }

    /// The client request a downstream request is made for; registers
    /// the session with the relay on its first request.
    fn origin(&self, context: &RequestContext<RoleServer>) -> Origin {
        self.client.get_or_init(|| {
            self.servers
                .clients()
                .register(self.key, context.peer.clone())
        });
        Origin {
            session: self.key,
            client: context.peer.clone(),
            request_id: context.id.clone(),
            progress_token: context.meta.get_progress_token(),
            stream: None,
        }
    }

    /// Sends a request on to the server a route names, as a child of this
    /// request's span.
    async fn forward(
        &self,
        route: &Route,
        request: Request,
        context: &RequestContext<RoleServer>,
        observation: &mut Observation,
    ) -> Result<ServerResult, Error> {
        let mut meta = forwardable_meta(&context.meta);
        observation.set_server(route.server.spec.name.clone());
        if route.server.spec.session_mode != SessionMode::Shared {
            // Its connection to the server lives as long as the session.
            self.pin(context);
        }
        if let Some(trace) = observation.trace() {
            meta.set_traceparent(trace.to_traceparent());
        }
        let origin = self.origin(context);
        Ok(route
            .server
            .request(&origin, request, meta, &context.ct)
            .await?)
    }

    async fn forward_call(
        &self,
        mut params: CallToolRequestParams,
        context: &RequestContext<RoleServer>,
        observation: &mut Observation,
    ) -> Result<CallToolResult, Error> {
        let route = self
            .catalog
            .load()
            .route(&params.name)
            .cloned()
            .ok_or_else(|| Error::UnknownTool(params.name.to_string()))?;
        params.name = route.name.to_string().into();
        match self
            .forward(&route, Request::call_tool(params), context, observation)
            .await?
        {
            ServerResult::CallToolResult(result) => Ok(result),
            _ => Err(route.server.unexpected("tools/call").into()),
        }
    }

    /// Runs a forwarded request under an observation and turns gateway
    /// errors into JSON-RPC errors.
    async fn observed<T>(
        &self,
        method: &'static str,
        target: Option<Target>,
        context: &RequestContext<RoleServer>,
        request: impl AsyncFnOnce(&mut Observation) -> Result<T, Error>,
    ) -> Result<T, ErrorData> {
        let mut observation = self.observe(method, target, None, context);
        let result = request(&mut observation).await.map_err(|err| {
            err.describe(&mut observation);
            err.into_error()
        });
        observation.complete(&result, false);
        result
    }

    /// One page of a catalog list and the cursor of the next.
    fn page<T: Clone>(
        &self,
        items: &[T],
        request: Option<&PaginatedRequestParams>,
    ) -> Result<(Vec<T>, Option<String>), Error> {
        let cursor = request.and_then(|r| r.cursor.as_deref());
        let (range, next) = page(items.len(), self.page_size, cursor)?;
        Ok((items[range].to_vec(), next))
    }

    /// The server and server-side URI of a client-facing resource URI.
    fn resource_route(&self, uri: &str, template: bool) -> Result<Route, Error> {
        self.catalog
            .load()
            .resource_route(uri, template)
            .ok_or_else(|| Error::UnknownResource(uri.to_owned()))
    }

    /// Forwards (un)subscriptions to the server; a server hears about a
    /// URI once however many sessions subscribe to it.
    async fn resource_subscription(
        &self,
        uri: String,
        subscribe: bool,
        context: &RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let method = if subscribe {
            "resources/subscribe"
        } else {
            "resources/unsubscribe"
        };
        let target = Some(Target::Resource(uri.clone()));
        self.observed(method, target, context, async |observation| {
            let route = self.resource_route(&uri, false)?;
            self.origin(context);
            let Some(session) = self.client.get().cloned() else {
                return Ok(());
            };
            if session.is_subscribed(&uri) == subscribe {
                return Ok(());
            }
            if subscribe && session.subscription_count() >= MAX_SUBSCRIPTIONS {
                return Err(Error::TooManySubscriptions);
            }
            // A shared server hears of a URI once however many sessions
            // subscribe; a per-session server has its own connection each.
            let shared = route.server.spec.session_mode == SessionMode::Shared;
            let others = shared && self.servers.clients().others_subscribed(&uri, self.key);
            if !others {
                let server_uri = route.name.to_string();
                let request = if subscribe {
                    Request::new(
                        SubscribeRequest::new(SubscribeRequestParams::new(server_uri.clone())),
                        method,
                        Some(server_uri),
                    )
                } else {
                    Request::new(
                        UnsubscribeRequest::new(UnsubscribeRequestParams::new(server_uri.clone())),
                        method,
                        Some(server_uri),
                    )
                };
                self.forward(&route, request, context, observation).await?;
            }
            // Recorded once the server accepted, so a failed attempt can be retried.
            if subscribe {
                self.pin(context);
                session.subscribe(&uri);
            } else {
                session.unsubscribe(&uri);
            }
            Ok(())
        })
        .await
    }
}

impl Drop for GatewaySession {
    fn drop(&mut self) {
        self.servers.release_session(self.key);
        self.servers.clients().remove(self.key);
        self.telemetry.metrics.sessions.dec();
    }
}

/// The session a request or notification names in its header.
fn session_id(extensions: &rmcp::model::Extensions) -> Option<&str> {
    extensions
        .get::<http::request::Parts>()?
        .headers
        .get("mcp-session-id")?
        .to_str()
        .ok()
}

/// The client's `_meta` minus what belongs to this hop: rmcp assigns its
/// own progress token, and protocol keys describe the client's session with
/// the gateway, not the gateway's session with the server.
fn forwardable_meta(meta: &RequestMetaObject) -> RequestMetaObject {
    let mut meta = meta.clone();
    meta.0
        .0
        .retain(|key, _| key != "progressToken" && !key.starts_with("io.modelcontextprotocol/"));
    meta
}

/// Where a page of a catalog list of `len` items lies, and the cursor of
/// the next: the cursor is the offset of the page's first item. A list
/// that changes between pages is announced by `list_changed`.
fn page(
    len: usize,
    page_size: usize,
    cursor: Option<&str>,
) -> Result<(Range<usize>, Option<String>), Error> {
    let start = match cursor {
        None => 0,
        Some(cursor) => cursor
            .parse::<usize>()
            .ok()
            .filter(|start| *start <= len)
            .ok_or_else(|| Error::InvalidCursor(cursor.to_owned()))?,
    };
    let end = start.saturating_add(page_size).min(len);
    let next = (end < len).then(|| end.to_string());
    Ok((start..end, next))
}

impl ServerHandler for GatewaySession {
    /// The union of what the servers behind this gateway support.
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(self.catalog.load().capabilities().clone())
            .with_server_info(Implementation::new(
                "switchboard",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    }

    // TODO(#3): the stateless 2026-07-28 revision.
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(
            &ProtocolVersion::LATEST_WITH_INITIALIZE,
        ))
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        if let (Some(book), Some(id)) = (&self.book, session_id(&context.extensions)) {
            let session = DirectSession::new(self.key, context.peer.clone(), self.caller.clone());
            if let Some(session) = session {
                book.attach(id, Arc::new(session));
            }
        }
        // A parked session may have missed changes: its client re-lists.
        let restored = context.extensions.get::<SessionRestoreMarker>().is_some();
        let peer = context.peer;
        let mut changes = self.catalog.subscribe();
        changes.mark_unchanged();
        let mut seen = *changes.borrow_and_update();
        let task = tokio::spawn(
            async move {
                if restored {
                    let _ = peer.notify_tool_list_changed().await;
                    let _ = peer.notify_prompt_list_changed().await;
                    let _ = peer.notify_resource_list_changed().await;
                }
                while changes.changed().await.is_ok() {
                    let now = *changes.borrow_and_update();
                    let sent = if now.tools != seen.tools {
                        peer.notify_tool_list_changed().await.is_ok()
                    } else {
                        true
                    } && if now.prompts != seen.prompts {
                        peer.notify_prompt_list_changed().await.is_ok()
                    } else {
                        true
                    } && if now.resources != seen.resources {
                        peer.notify_resource_list_changed().await.is_ok()
                    } else {
                        true
                    };
                    if !sent {
                        break;
                    }
                    debug!(
                        tools = now.tools,
                        prompts = now.prompts,
                        resources = now.resources,
                        "sent list_changed"
                    );
                    seen = now;
                }
            }
            .instrument(info_span!("list_changed")),
        );
        *self.list_changed.lock() = Some(AbortOnDropHandle::new(task));
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        context.peer.set_peer_info(request.clone());
        // A parked session coming back replays its handshake: not a request.
        if context.extensions.get::<SessionRestoreMarker>().is_some() {
            return self.negotiate_initialize(&request);
        }
        let observation = self.observe("initialize", None, Some(&request), &context);
        let result = self.negotiate_initialize(&request);
        observation.complete(&result, false);
        result
    }

    async fn ping(&self, context: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        let result = Ok(());
        self.observe("ping", None, None, &context)
            .complete(&result, false);
        result
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.observed("tools/list", None, &context, async |_| {
            let (tools, next) = self.page(self.catalog.load().tools(), request.as_ref())?;
            let mut result = ListToolsResult::with_all_items(tools);
            result.next_cursor = next;
            Ok(result)
        })
        .await
    }

    async fn call_tool(
        &self,
        params: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let target = Some(Target::Tool(params.name.to_string()));
        let mut observation = self.observe("tools/call", target, None, &context);
        let arguments = self
            .telemetry
            .log_payloads
            .then(|| params.arguments.clone());
        let response = match self.forward_call(params, &context, &mut observation).await {
            Ok(result) => Ok(CallToolResponse::Complete(result)),
            Err(err) => {
                err.describe(&mut observation);
                err.into_response()
            }
        };
        if let Some(arguments) = arguments {
            let result = response.as_ref().map(|response| match response {
                CallToolResponse::Complete(result) => Some(result),
                _ => None,
            });
            observation.payload(&arguments, &result);
        }
        let tool_error =
            matches!(&response, Ok(CallToolResponse::Complete(r)) if r.is_error == Some(true));
        observation.complete(&response, tool_error);
        response
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        self.observed("prompts/list", None, &context, async |_| {
            let (prompts, next) = self.page(self.catalog.load().prompts(), request.as_ref())?;
            let mut result = ListPromptsResult::with_all_items(prompts);
            result.next_cursor = next;
            Ok(result)
        })
        .await
    }

    async fn get_prompt(
        &self,
        mut request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let target = Some(Target::Prompt(request.name.clone()));
        self.observed("prompts/get", target, &context, async |observation| {
            let route = self
                .catalog
                .load()
                .prompt_route(&request.name)
                .cloned()
                .ok_or_else(|| Error::UnknownPrompt(request.name.clone()))?;
            request.name = route.name.to_string();
            let target = Some(request.name.clone());
            let forwarded = Request::new(GetPromptRequest::new(request), "prompts/get", target);
            match self
                .forward(&route, forwarded, &context, observation)
                .await?
            {
                ServerResult::GetPromptResult(result) => Ok(GetPromptResponse::Complete(result)),
                ServerResult::InputRequiredResult(result) => {
                    Ok(GetPromptResponse::InputRequired(result))
                }
                _ => Err(route.server.unexpected("prompts/get").into()),
            }
        })
        .await
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.observed("resources/list", None, &context, async |_| {
            let catalog = self.catalog.load();
            let (resources, next) = self.page(catalog.resources(), request.as_ref())?;
            let mut result = ListResourcesResult::with_all_items(resources);
            result.next_cursor = next;
            Ok(result)
        })
        .await
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        self.observed("resources/templates/list", None, &context, async |_| {
            let catalog = self.catalog.load();
            let (templates, next) = self.page(catalog.templates(), request.as_ref())?;
            let mut result = ListResourceTemplatesResult::with_all_items(templates);
            result.next_cursor = next;
            Ok(result)
        })
        .await
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let target = Some(Target::Resource(request.uri.clone()));
        self.observed("resources/read", target, &context, async |observation| {
            let client_uri = request.uri.clone();
            let route = self.resource_route(&request.uri, false)?;
            let mut request = request;
            request.uri = route.name.to_string();
            let target = Some(request.uri.clone());
            let forwarded =
                Request::new(ReadResourceRequest::new(request), "resources/read", target);
            match self
                .forward(&route, forwarded, &context, observation)
                .await?
            {
                ServerResult::ReadResourceResult(mut result) => {
                    // Contents name the URI the client asked for.
                    let server_uri = route.name.as_ref();
                    for contents in &mut result.contents {
                        if let ResourceContents::TextResourceContents { uri, .. }
                        | ResourceContents::BlobResourceContents { uri, .. } = contents
                            && uri == server_uri
                        {
                            uri.clone_from(&client_uri);
                        }
                    }
                    Ok(ReadResourceResponse::Complete(result))
                }
                ServerResult::InputRequiredResult(result) => {
                    Ok(ReadResourceResponse::InputRequired(result))
                }
                _ => Err(route.server.unexpected("resources/read").into()),
            }
        })
        .await
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.resource_subscription(request.uri, true, &context)
            .await
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.resource_subscription(request.uri, false, &context)
            .await
    }

    async fn complete(
        &self,
        mut request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let target = match &request.r#ref {
            Reference::Prompt(prompt) => Target::Prompt(prompt.name.clone()),
            Reference::Resource(resource) => Target::Resource(resource.uri.clone()),
            other => {
                let message = format!(
                    "unsupported completion reference `{}`",
                    other.reference_type()
                );
                return Err(ErrorData::invalid_params(message, None));
            }
        };
        self.observed(
            "completion/complete",
            Some(target),
            &context,
            async |observation| {
                let route = match &mut request.r#ref {
                    Reference::Prompt(prompt) => {
                        let route = self
                            .catalog
                            .load()
                            .prompt_route(&prompt.name)
                            .cloned()
                            .ok_or_else(|| Error::UnknownPrompt(prompt.name.clone()))?;
                        prompt.name = route.name.to_string();
                        route
                    }
                    Reference::Resource(resource) => {
                        let route = self.resource_route(&resource.uri, true)?;
                        resource.uri = route.name.to_string();
                        route
                    }
                    other => return Err(Error::UnknownResource(other.reference_type().to_owned())),
                };
                let forwarded =
                    Request::new(CompleteRequest::new(request), "completion/complete", None);
                match self
                    .forward(&route, forwarded, &context, observation)
                    .await?
                {
                    ServerResult::CompleteResult(result) => Ok(result),
                    _ => Err(route.server.unexpected("completion/complete").into()),
                }
            },
        )
        .await
    }

    /// Remembered for this session (log messages are filtered by it) and
    /// passed on to every server that logs: a per-session server gets the
    /// session's level, a shared one the most verbose any session asked
    /// for, so no session gets less than it asked for.
    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.observed("logging/setLevel", None, &context, async |observation| {
            self.origin(&context);
            self.pin(&context);
            if let Some(session) = self.client.get() {
                session.set_log_level(request.level);
            }
            let routes: Vec<Route> = self
                .servers
                .list()
                .into_iter()
                .filter(|server| {
                    server
                        .routable()
                        .is_some_and(|(offer, _)| offer.capabilities.logging.is_some())
                })
                .map(|server| Route {
                    name: server.spec.name.clone(),
                    server,
                })
                .collect();
            let shared_level = self.servers.clients().most_verbose_level();
            for route in routes {
                let mut level = request.clone();
                if route.server.spec.session_mode == SessionMode::Shared
                    && let Some(shared) = shared_level
                {
                    level.level = shared;
                }
                let forwarded =
                    Request::new(SetLevelRequest::new(level), "logging/setLevel", None);
                // One server refusing does not undo the level for the others.
                if let Err(err) = self.forward(&route, forwarded, &context, observation).await {
                    debug!(server = %route.server.spec.name, error = %err, "logging/setLevel not applied");
                }
            }
            Ok(())
        })
        .await
    }
}
