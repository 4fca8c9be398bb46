//! The client-facing MCP endpoint: one [`GatewaySession`] per client
//! session, answering from the catalog and forwarding calls to the server
//! that owns the tool, with the namespace stripped and the result relayed
//! unchanged. `guard.rs` checks request bodies before rmcp sees them.

pub mod guard;

use std::{
    borrow::Cow,
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
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
        InitializeRequestParams, InitializeResult, ListToolsResult, MetaObject,
        PaginatedRequestParams, ProtocolVersion, RequestMetaObject, ServerCapabilities,
        ServerConfig,
    },
    service::{NotificationContext, RequestContext},
    transport::{
        StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::session::local::LocalSessionManager,
    },
};
use serde_json::json;
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};
use tracing::{Instrument, debug, info_span};

use crate::{
    catalog::CatalogReader,
    downstream::{CallError, Servers, SessionKey},
    observe::{Observation, RequestInfo, Target},
    telemetry::Telemetry,
};

/// Idle client sessions are closed after this long; clients then get 404
/// and re-initialise. rmcp's default (5 min) drops sessions of clients that
/// sit idle between prompts.
const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Messages buffered per session before a slow reader applies back-pressure.
const SESSION_CHANNEL_CAPACITY: usize = 64;

/// Errors this gateway itself answers with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown tool `{0}`")]
    UnknownTool(String),
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
}

/// The MCP handler for one client session.
pub struct GatewaySession {
    /// Identifies this session to per-session servers.
    key: SessionKey,
    catalog: CatalogReader,
    servers: Servers,
    telemetry: Telemetry,
    /// The caller this session named first (see `observe.rs`).
    caller: OnceLock<String>,
    /// Forwards catalog changes as `notifications/tools/list_changed`.
    list_changed: Mutex<Option<AbortOnDropHandle<()>>>,
}

// === impl Error ===

impl Error {
    /// The one place gateway errors reach the client. Unknown names and
    /// cancellations are JSON-RPC errors; a server that fails, times out or
    /// is switched off by its breaker answers with an `isError` result, so
    /// the model sees why. Errors the server itself answered are relayed.
    pub fn into_response(self) -> Result<CallToolResponse, ErrorData> {
        let call = match self {
            Error::UnknownTool(name) => {
                let message = format!("unknown tool `{name}`");
                return Err(ErrorData::invalid_params(
                    message,
                    Some(json!({ "tool": name })),
                ));
            }
            Error::Call(CallError::Downstream(error)) => return Err(error),
            Error::Call(CallError::Cancelled) => {
                return Err(ErrorData::internal_error(
                    CallError::Cancelled.to_string(),
                    None,
                ));
            }
            Error::Call(call) => call,
        };
        let detail = json!({ "kind": call.kind(), "server": call.server() });
        let mut result = CallToolResult::error(vec![ContentBlock::text(call.to_string())]);
        let mut meta = MetaObject::default();
        meta.0.insert(ERROR_META_KEY.to_owned(), detail);
        result.meta = Some(meta);
        Ok(CallToolResponse::Complete(result))
    }

    /// Tells the request's observer why it failed; errors the server
    /// answered itself speak for themselves.
    fn describe(&self, observation: &mut Observation) {
        match self {
            Error::UnknownTool(_) => observation.set_failure("unknown_tool", self.to_string()),
            Error::Call(CallError::Downstream(_)) => {}
            Error::Call(call) => observation.set_failure(call.kind(), call.to_string()),
        }
    }
}

/// The streamable HTTP service for `/mcp`.
pub fn service(
    catalog: CatalogReader,
    servers: Servers,
    config: &McpConfig,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> StreamableHttpService<GatewaySession, LocalSessionManager> {
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(SESSION_IDLE_TIMEOUT);
    sessions.session_config.channel_capacity = SESSION_CHANNEL_CAPACITY;
    let http = StreamableHttpServerConfig::default()
        .with_allowed_hosts(config.allowed_hosts.clone())
        .with_max_request_body_bytes(config.max_body_bytes)
        .with_legacy_session_mode(true)
        .with_cancellation_token(shutdown);
    StreamableHttpService::new(
        move || {
            Ok(GatewaySession::new(
                catalog.clone(),
                servers.clone(),
                telemetry.clone(),
            ))
        },
        Arc::new(sessions),
        http,
    )
}

// === impl GatewaySession ===

impl GatewaySession {
    pub fn new(catalog: CatalogReader, servers: Servers, telemetry: Telemetry) -> Self {
        static NEXT_KEY: AtomicU64 = AtomicU64::new(1);
        telemetry.metrics.sessions.inc();
        Self {
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            catalog,
            servers,
            telemetry,
            caller: OnceLock::new(),
            list_changed: Mutex::new(None),
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
        params.name = route.tool.to_string().into();
        let mut meta = forwardable_meta(&context.meta);
        observation.set_server(route.server.spec.name.clone());
        // The downstream call is a child of this request's span.
        if let Some(trace) = observation.trace() {
            meta.set_traceparent(trace.to_traceparent());
        }
        Ok(route
            .server
            .call_tool(self.key, params, meta, &context.ct)
            .await?)
    }
}

impl Drop for GatewaySession {
    fn drop(&mut self) {
        self.servers.release_session(self.key);
        self.telemetry.metrics.sessions.dec();
    }
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

impl ServerHandler for GatewaySession {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
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
        let peer = context.peer;
        let mut changes = self.catalog.subscribe();
        changes.mark_unchanged();
        let task = tokio::spawn(
            async move {
                while changes.changed().await.is_ok() {
                    if peer.notify_tool_list_changed().await.is_err() {
                        break;
                    }
                    debug!("sent tools/list_changed");
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
        let observation = self.observe("initialize", None, Some(&request), &context);
        context.peer.set_peer_info(request.clone());
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
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let observation = self.observe("tools/list", None, None, &context);
        let result = Ok(ListToolsResult::with_all_items(
            self.catalog.load().tools().to_vec(),
        ));
        observation.complete(&result, false);
        result
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
}
