//! The client-facing MCP endpoint: one [`GatewaySession`] per client
//! session, answering from the catalog and forwarding calls to the server
//! that owns the tool, with the namespace stripped and the result relayed
//! unchanged.

use std::{borrow::Cow, sync::Arc, time::Duration};

use parking_lot::Mutex;
use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    model::{
        CallToolRequest, CallToolRequestParams, CallToolResponse, CancelledNotificationParam,
        ClientRequest, Implementation, ListToolsResult, PaginatedRequestParams, ProtocolVersion,
        RequestMetaObject, ServerCapabilities, ServerConfig, ServerResult,
    },
    service::{NotificationContext, PeerRequestOptions, RequestContext, ServiceError},
    transport::{
        StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::session::local::LocalSessionManager,
    },
};
use serde_json::json;
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};
use tracing::{Instrument, debug, info_span};

use crate::catalog::CatalogReader;

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
    /// The server that owns the tool cannot be reached right now.
    #[error("server `{server}` is unavailable: {source}")]
    Unavailable {
        server: Arc<str>,
        #[source]
        source: ServiceError,
    },
    #[error("server `{server}` answered {method} with an unexpected result")]
    UnexpectedResult {
        server: Arc<str>,
        method: &'static str,
    },
    #[error("request cancelled by the client")]
    Cancelled,
}

/// Settings of the MCP endpoint.
#[derive(Clone, Debug)]
pub struct McpConfig {
    /// `Host` values accepted (DNS-rebinding protection).
    pub allowed_hosts: Vec<String>,
}

/// The MCP handler for one client session.
pub struct GatewaySession {
    catalog: CatalogReader,
    /// Forwards catalog changes as `notifications/tools/list_changed`.
    list_changed: Mutex<Option<AbortOnDropHandle<()>>>,
}

// === impl Error ===

impl Error {
    /// The one place gateway errors become JSON-RPC errors. Errors a
    /// downstream server answered with are relayed as they are, not here.
    pub fn to_jsonrpc(&self) -> ErrorData {
        match self {
            Error::UnknownTool(name) => {
                ErrorData::invalid_params(self.to_string(), Some(json!({ "tool": name })))
            }
            Error::Unavailable { server, .. } | Error::UnexpectedResult { server, .. } => {
                ErrorData::internal_error(self.to_string(), Some(json!({ "server": server })))
            }
            Error::Cancelled => ErrorData::internal_error(self.to_string(), None),
        }
    }
}

impl From<Error> for ErrorData {
    fn from(err: Error) -> Self {
        err.to_jsonrpc()
    }
}

/// The streamable HTTP service for `/mcp`.
pub fn service(
    catalog: CatalogReader,
    config: &McpConfig,
    shutdown: CancellationToken,
) -> StreamableHttpService<GatewaySession, LocalSessionManager> {
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(SESSION_IDLE_TIMEOUT);
    sessions.session_config.channel_capacity = SESSION_CHANNEL_CAPACITY;
    let http = StreamableHttpServerConfig::default()
        .with_allowed_hosts(config.allowed_hosts.clone())
        .with_legacy_session_mode(true)
        .with_cancellation_token(shutdown);
    StreamableHttpService::new(
        move || Ok(GatewaySession::new(catalog.clone())),
        Arc::new(sessions),
        http,
    )
}

// === impl GatewaySession ===

impl GatewaySession {
    pub fn new(catalog: CatalogReader) -> Self {
        Self {
            catalog,
            list_changed: Mutex::new(None),
        }
    }

    async fn forward_call(
        &self,
        mut params: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let catalog = self.catalog.load();
        let route = catalog
            .route(&params.name)
            .ok_or_else(|| Error::UnknownTool(params.name.to_string()))?;
        params.name = route.tool.to_string().into();
        let options = PeerRequestOptions::no_options().with_meta(forwardable_meta(&context.meta));
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        let unavailable = |source| Error::Unavailable {
            server: route.server.clone(),
            source,
        };
        let handle = route
            .peer
            .send_request_with_option(request, options)
            .await
            .map_err(unavailable)?;
        let (id, peer) = (handle.id.clone(), handle.peer.clone());
        tokio::select! {
            response = handle.await_response() => match response {
                Ok(ServerResult::CallToolResult(result)) => Ok(CallToolResponse::Complete(result)),
                Ok(_) => Err(Error::UnexpectedResult { server: route.server.clone(), method: "tools/call" }.into()),
                Err(ServiceError::McpError(downstream)) => Err(downstream),
                Err(source) => Err(unavailable(source).into()),
            },
            _ = context.ct.cancelled() => {
                let reason = Some("cancelled by the client".to_owned());
                let _ = peer.notify_cancelled(CancelledNotificationParam::new(Some(id), reason)).await;
                Err(Error::Cancelled.into())
            }
        }
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

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(
            self.catalog.load().tools().to_vec(),
        ))
    }

    async fn call_tool(
        &self,
        params: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.forward_call(params, context).await
    }
}
