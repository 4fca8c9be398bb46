//! The bench's own ceiling server (`switchboard-bench --serve-ceiling ADDR`):
//! an echo tool on rmcp's `StreamableHttpService` in its stateless mode,
//! answering each call as one JSON body, with no gateway in front.
//!
//! The demo server's HTTP mode (`demo-server --http`) keeps sessions and
//! answers every call as an SSE stream; it has no flag for rmcp's JSON
//! answers, which rmcp offers only without sessions. This server is the
//! same rmcp and the same echo result, served the cheapest way rmcp
//! serves it, so the ratio against it is the strictest one.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
        ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    },
    service::RequestContext,
    transport::{
        StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::session::local::LocalSessionManager,
    },
};
use serde_json::{Value, json};

#[derive(Clone)]
struct EchoServer {
    tools: Arc<[Tool]>,
}

/// Serves until the process is killed.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let schema = json!({
        "type": "object",
        "properties": { "text": { "type": "string", "description": "Text to echo" } },
        "required": ["text"],
    });
    let schema = Arc::new(schema.as_object().cloned().unwrap_or_default());
    let server = EchoServer {
        tools: vec![Tool::new("echo", "Returns its text unchanged.", schema)].into(),
    };
    // Stateless (no `Mcp-Session-Id`), so rmcp may answer a call that
    // emits nothing before its result as `application/json`.
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true);
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the ceiling server to {addr}"))?;
    // As the gateway and the demo server do.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let router = axum::Router::new().nest_service("/mcp", service);
    axum::serve(listener, router).await?;
    Ok(())
}

// === impl EchoServer ===

impl ServerHandler for EchoServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_server_info(
            Implementation::new("switchboard-bench-ceiling", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools.to_vec()))
    }

    /// The demo server's echo: the text as content and as `{"text": ..}`.
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.name != "echo" {
            return Err(ErrorData::invalid_params(
                format!("unknown tool `{}`", request.name),
                None,
            ));
        }
        let text = request
            .arguments
            .as_ref()
            .and_then(|args| args.get("text"))
            .and_then(Value::as_str)
            .ok_or_else(|| ErrorData::invalid_params("`text` must be a string", None))?;
        let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
        result.structured_content = Some(json!({ "text": text }));
        Ok(CallToolResponse::Complete(result))
    }
}
