//! `switchboard-gateway demo-server`: a small MCP server over stdio, so the
//! quick start and the tests need nothing outside this repository.
//!
//! Tools: `echo`, `add`, `now`, `env`, `info`, `fail`, `sleep`, `progress`,
//! `roots` (asks the client), plus fault injection for tests and demos:
//! `hang` (never answers, ignores cancellation), `crash` (exits at once)
//! and `stats` (cancellations seen). Start-up faults: `--hang-on-start`,
//! `--garbage-lines N`.

// Roots are deprecated by SEP-2577 but clients on the protocol versions
// this server speaks still use them.
#![allow(deprecated)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rmcp::{
    ErrorData, RoleServer, ServerHandler, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ClientResult, ContentBlock,
        Implementation, JsonObject, ListRootsRequest, ListToolsResult, MetaObject,
        PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, ServerConfig,
        ServerRequest, Tool,
    },
    service::{PeerRequestOptions, RequestContext},
};
use serde_json::{Value, json};

/// Longest `sleep` a caller may ask for.
const MAX_SLEEP: Duration = Duration::from_secs(600);

/// How the demo server starts.
#[derive(Clone, Debug, Default)]
pub struct DemoOptions {
    /// Labels this copy in `serverInfo` and the `info` tool.
    pub instance: Option<String>,
    /// Never start serving (a server that hangs at start).
    pub hang_on_start: bool,
    /// Lines of non-MCP output written to stdout before serving.
    pub garbage_lines: u32,
    /// Serve streamable HTTP at `/mcp` on this address instead of stdio.
    pub http: Option<std::net::SocketAddr>,
    /// Extra echo tools `extra_0` … to make large catalogs (benchmarks).
    pub extra_tools: u32,
    /// List tools this many per page (all at once when unset).
    pub page_size: Option<usize>,
}

/// Serves the demo tools on stdin/stdout until stdin closes.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    if options.hang_on_start {
        std::future::pending::<()>().await;
    }
    if options.garbage_lines > 0 {
        use tokio::io::AsyncWriteExt;
        let mut stdout = tokio::io::stdout();
        for i in 0..options.garbage_lines {
            stdout
                .write_all(format!("not json-rpc, line {i}\n").as_bytes())
                .await?;
        }
        stdout.flush().await?;
    }
    let mut tools = tools();
    let echo_schema = tools[0].input_schema.clone();
    tools.extend((0..options.extra_tools).map(|i| {
        Tool::new(
            format!("extra_{i}"),
            "Echo, under another name.",
            echo_schema.clone(),
        )
    }));
    let server = DemoServer {
        instance: options.instance.unwrap_or_else(|| "demo".to_owned()),
        cancellations: Arc::default(),
        tools: tools.into(),
        page_size: options.page_size.filter(|n| *n > 0),
    };
    match options.http {
        Some(addr) => serve_http(server, addr).await,
        None => {
            let service = server.serve(rmcp::transport::stdio()).await?;
            service.waiting().await?;
            Ok(())
        }
    }
}

/// Streamable HTTP with sessions, one `DemoServer` per session.
async fn serve_http(server: DemoServer, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    use rmcp::transport::{
        StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::session::local::LocalSessionManager,
    };
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!(
        "demo server listening on http://{}/mcp",
        listener.local_addr()?
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    // As the gateway does: no Nagle delay between headers and the SSE event.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router).await?;
    Ok(())
}

#[derive(Clone)]
pub struct DemoServer {
    instance: String,
    cancellations: Arc<AtomicU64>,
    tools: Arc<[Tool]>,
    page_size: Option<usize>,
}

fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::default(),
    }
}

fn tools() -> Vec<Tool> {
    let string_arg = |name: &str, description: &str| {
        schema(json!({
            "type": "object",
            "properties": { name: { "type": "string", "description": description } },
            "required": [name],
        }))
    };
    vec![
        Tool::new(
            "echo",
            "Returns its text unchanged (and `meta`, if given, as the result's `_meta`).",
            schema(json!({
                "type": "object",
                "properties": {
                    "text": { "type": "string", "description": "Text to echo" },
                    "meta": { "type": "object", "description": "Returned as the result's _meta" },
                },
                "required": ["text"],
            })),
        ),
        Tool::new(
            "add",
            "Adds two numbers.",
            schema(json!({
                "type": "object",
                "properties": { "a": { "type": "number" }, "b": { "type": "number" } },
                "required": ["a", "b"],
            })),
        ),
        Tool::new(
            "now",
            "The current time in UTC.",
            schema(json!({ "type": "object" })),
        ),
        Tool::new(
            "env",
            "The value of one environment variable of this server process.",
            string_arg("name", "Variable name"),
        ),
        Tool::new(
            "info",
            "This server's instance label, process id, and the `traceparent` the request carried.",
            schema(json!({ "type": "object" })),
        ),
        Tool::new(
            "fail",
            "Always fails with the given message (a tool error, isError = true).",
            string_arg("message", "Error message"),
        ),
        Tool::new(
            "progress",
            "Works for `steps` × `stepMs` milliseconds, reporting progress after each step.",
            schema(json!({
                "type": "object",
                "properties": {
                    "steps": { "type": "integer", "minimum": 1 },
                    "stepMs": { "type": "integer", "minimum": 0 },
                },
                "required": ["steps", "stepMs"],
            })),
        ),
        Tool::new(
            "hang",
            "Never answers and ignores cancellation (fault injection).",
            schema(json!({ "type": "object" })),
        ),
        Tool::new(
            "crash",
            "Exits the server process at once (fault injection).",
            schema(json!({ "type": "object" })),
        ),
        Tool::new(
            "stats",
            "How many notifications/cancelled this server has received.",
            schema(json!({ "type": "object" })),
        ),
        Tool::new(
            "sleep",
            "Waits the given number of milliseconds, then answers.",
            schema(json!({
                "type": "object",
                "properties": { "ms": { "type": "integer", "minimum": 0 } },
                "required": ["ms"],
            })),
        ),
        Tool::new(
            "roots",
            "Asks the client for its roots, waiting `waitMs` for the answer (then cancels the question, and answers `thenMs` later).",
            schema(json!({
                "type": "object",
                "properties": {
                    "waitMs": { "type": "integer", "minimum": 0 },
                    "thenMs": { "type": "integer", "minimum": 0 },
                },
                "required": ["waitMs"],
            })),
        ),
    ]
}

fn argument<'a>(args: &'a JsonObject, name: &str) -> Result<&'a Value, ErrorData> {
    args.get(name)
        .ok_or_else(|| ErrorData::invalid_params(format!("missing argument `{name}`"), None))
}

/// A duration in milliseconds, at most [`MAX_SLEEP`].
fn millis_argument(args: &JsonObject, name: &str) -> Result<Duration, ErrorData> {
    let ms = argument(args, name)?.as_u64().ok_or_else(|| {
        ErrorData::invalid_params(format!("`{name}` must be a non-negative integer"), None)
    })?;
    Ok(Duration::from_millis(ms).min(MAX_SLEEP))
}

fn string_argument<'a>(args: &'a JsonObject, name: &str) -> Result<&'a str, ErrorData> {
    argument(args, name)?
        .as_str()
        .ok_or_else(|| ErrorData::invalid_params(format!("`{name}` must be a string"), None))
}

fn number_argument(args: &JsonObject, name: &str) -> Result<f64, ErrorData> {
    argument(args, name)?
        .as_f64()
        .ok_or_else(|| ErrorData::invalid_params(format!("`{name}` must be a number"), None))
}

/// Structured result with the same JSON as text, as the spec recommends.
fn structured(value: Value) -> CallToolResult {
    CallToolResult::structured(value)
}

// === impl DemoServer ===

impl DemoServer {
    async fn call(
        &self,
        name: &str,
        args: &JsonObject,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(match name {
            tool if tool == "echo" || tool.starts_with("extra_") => {
                let text = string_argument(args, "text")?;
                let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
                result.structured_content = Some(json!({ "text": text }));
                if let Some(Value::Object(meta)) = args.get("meta") {
                    result.meta = Some(MetaObject(meta.clone()));
                }
                result
            }
            "add" => {
                let sum = number_argument(args, "a")? + number_argument(args, "b")?;
                structured(json!({ "sum": sum }))
            }
            "now" => {
                let since_epoch = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                structured(json!({
                    "unixMillis": since_epoch.as_millis() as u64,
                    "utc": rfc3339_utc(since_epoch),
                }))
            }
            "env" => {
                let name = string_argument(args, "name")?;
                structured(json!({ "name": name, "value": std::env::var(name).ok() }))
            }
            "info" => structured(json!({
                "instance": self.instance,
                "pid": std::process::id(),
                "traceparent": context.meta.get_traceparent(),
            })),
            "progress" => {
                let count = |name| {
                    argument(args, name)?.as_u64().ok_or_else(|| {
                        ErrorData::invalid_params(
                            format!("`{name}` must be a non-negative integer"),
                            None,
                        )
                    })
                };
                let (steps, step) = (count("steps")?, Duration::from_millis(count("stepMs")?));
                let token = context.meta.get_progress_token();
                for done in 1..=steps {
                    tokio::time::sleep(step.min(MAX_SLEEP)).await;
                    if let Some(token) = &token {
                        let mut update = ProgressNotificationParam::new(token.clone(), done as f64);
                        update.total = Some(steps as f64);
                        let _ = context.peer.notify_progress(update).await;
                    }
                }
                structured(json!({ "steps": steps }))
            }
            "hang" => std::future::pending().await,
            "crash" => std::process::exit(3),
            "stats" => {
                structured(json!({ "cancellations": self.cancellations.load(Ordering::Relaxed) }))
            }
            "fail" => {
                CallToolResult::error(vec![ContentBlock::text(string_argument(args, "message")?)])
            }
            "roots" => {
                let wait = millis_argument(args, "waitMs")?;
                let then = args
                    .get("thenMs")
                    .map_or(Ok(Duration::ZERO), |_| millis_argument(args, "thenMs"))?;
                let request = ServerRequest::ListRootsRequest(ListRootsRequest::default());
                let options = PeerRequestOptions::with_timeout(wait);
                let answer = match context
                    .peer
                    .send_request_with_option(request, options)
                    .await
                {
                    Ok(handle) => handle.await_response().await,
                    Err(error) => Err(error),
                };
                match answer {
                    Ok(ClientResult::ListRootsResult(result)) => {
                        structured(json!({ "roots": result.roots.len() }))
                    }
                    Ok(_) => {
                        return Err(ErrorData::internal_error("not a roots/list answer", None));
                    }
                    Err(error) => {
                        tokio::time::sleep(then).await;
                        structured(json!({ "answered": false, "error": error.to_string() }))
                    }
                }
            }
            "sleep" => {
                let wait = millis_argument(args, "ms")?;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => structured(json!({ "sleptMs": wait.as_millis() as u64 })),
                    _ = context.ct.cancelled() => return Err(ErrorData::internal_error("cancelled", None)),
                }
            }
            other => {
                return Err(ErrorData::invalid_params(
                    format!("unknown tool `{other}`"),
                    None,
                ));
            }
        })
    }
}

impl ServerHandler for DemoServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("switchboard-demo", env!("CARGO_PKG_VERSION"))
                    .with_title(self.instance.clone()),
            )
            .with_instructions("Demo tools bundled with Switchboard.")
    }

    async fn on_cancelled(
        &self,
        _notification: rmcp::model::CancelledNotificationParam,
        _context: rmcp::service::NotificationContext<RoleServer>,
    ) {
        self.cancellations.fetch_add(1, Ordering::Relaxed);
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let Some(page_size) = self.page_size else {
            return Ok(ListToolsResult::with_all_items(self.tools.to_vec()));
        };
        let start = match request.and_then(|r| r.cursor) {
            None => 0,
            Some(cursor) => cursor
                .parse::<usize>()
                .map_err(|_| ErrorData::invalid_params(format!("bad cursor `{cursor}`"), None))?,
        };
        let end = (start + page_size).min(self.tools.len());
        let mut result = ListToolsResult::with_all_items(self.tools[start.min(end)..end].to_vec());
        result.next_cursor = (end < self.tools.len()).then(|| end.to_string());
        Ok(result)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        let result = self.call(&request.name, &args, &context).await?;
        Ok(CallToolResponse::Complete(result))
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time since the Unix epoch.
fn rfc3339_utc(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(rfc3339_utc(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_utc(Duration::from_millis(951_782_400_123)),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            rfc3339_utc(Duration::from_secs(1_795_305_599)),
            "2026-11-21T23:59:59.000Z"
        );
    }
}
