//! The client-facing MCP endpoint. The gateway owns its client sessions
//! (`session.rs`: one table, live or parked) and reads every message once
//! at the edge (`guard.rs`); `dispatch.rs` routes it within its session
//! and frames every answer one way, over streamable HTTP (`/mcp`) and
//! legacy HTTP+SSE (`sse.rs`) alike; `methods.rs` says what each MCP
//! method does: lists from the catalog, everything else forwarded to the
//! server that owns the name or URI. What servers send back outside a
//! response goes through `downstream/relay.rs`. rmcp provides the model
//! types and the clients to the servers behind.

pub mod answer;
pub mod dispatch;
pub mod guard;
pub mod limits;
pub mod methods;
mod replay;
pub mod rest;
mod rounds;
pub mod seal;
pub mod session;
pub mod sse;
mod stateless;

use std::{ops::Range, sync::Arc, time::Duration};

use rmcp::{
    ErrorData,
    model::{
        CallToolResult, ContentBlock, MetaObject, PromptListChangedNotification, RequestMetaObject,
        ResourceListChangedNotification, ServerNotification, ToolListChangedNotification,
    },
};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

use crate::{
    catalog::CatalogReader,
    downstream::{CallError, Servers},
    mcp::{
        dispatch::Endpoint,
        limits::{ClientLimits, RateLimits},
        methods::Methods,
        seal::SessionKeys,
        session::Sessions,
        sse::AllowedHosts,
    },
    observe::Observation,
    peers::Peers,
    policy::Policies,
    redact,
    telemetry::Telemetry,
};

/// Idle client sessions are forgotten after this long (their ids restore
/// them, within [`SESSION_LIFETIME`]).
const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long a session id opens after it was issued: then the client gets
/// 404 and re-initialises. Long enough for a day's work in one session.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// Resource subscriptions one session may hold: each costs the gateway
/// (and perhaps a server) for as long as the session lives.
const MAX_SUBSCRIPTIONS: usize = 1024;

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
    /// What one declared client may use of the gateway.
    pub limits: ClientLimits,
    /// Items per page of `tools/list`, `prompts/list`, `resources/list`
    /// and `resources/templates/list`.
    pub page_size: usize,
    /// What session ids are sealed with; the config stream replaces the
    /// set with the one every replica shares.
    pub session_keys: SessionKeys,
    /// Where a client's answer to another replica's question goes.
    pub peers: Peers,
    /// Idle streamable-HTTP sessions are parked after this long (`session.rs`);
    /// `None` keeps every session in memory.
    pub park_after: Option<Duration>,
}

// === impl Error ===

impl Error {
    /// How a failed `tools/call` reaches the client. Unknown names and
    /// cancellations are JSON-RPC errors; a server that fails, times out or
    /// is switched off by its breaker answers with an `isError` result, so
    /// the model sees why. Errors the server itself answered are relayed.
    fn into_tool_result(self) -> Result<CallToolResult, ErrorData> {
        let call = match self {
            Error::Call(
                call @ (CallError::BreakerOpen { .. }
                | CallError::Unavailable { .. }
                | CallError::Timeout { .. }
                | CallError::Transport { .. }
                | CallError::UnexpectedResult { .. }
                | CallError::Unanswered { .. }),
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

/// `/mcp`, `/sse` and `/message`, on one table of sessions that ends with
/// `shutdown`.
/// The MCP routes (`/mcp`, `/sse`, `/message`), which the body guard
/// fronts, and the REST ones, which read their own bodies; one endpoint
/// behind both.
pub struct Routers {
    pub mcp: axum::Router,
    pub rest: axum::Router,
    pub sessions: Arc<Sessions>,
}

pub fn router(
    catalog: CatalogReader,
    servers: Servers,
    policies: Policies,
    config: &McpConfig,
    telemetry: Telemetry,
    rest_limits: rest::BodyLimits,
    shutdown: CancellationToken,
) -> Routers {
    let sessions = Sessions::new(
        config.park_after,
        SESSION_IDLE_TIMEOUT,
        config.max_sessions,
        config.limits.sessions,
        servers.clone(),
        config.session_keys.clone(),
    );
    let rates = RateLimits::new(&config.limits);
    servers.limit_session_connections_per_client(config.limits.session_connections);
    telemetry.metrics.register_collector(rates.clone());
    sessions.spawn_sweeper(shutdown.clone());
    telemetry
        .metrics
        .register_collector(session::SessionGauges(sessions.clone()));
    spawn_list_changes(catalog.clone(), servers.clone(), shutdown.clone());
    let closing = sessions.clone();
    let routed_sessions = sessions.clone();
    let closed = shutdown.clone();
    tokio::spawn(async move {
        closed.cancelled().await;
        closing.close_all();
    });
    let rounds = rounds::Rounds::new(config.peers.me());
    telemetry.metrics.register_collector(rounds.clone());
    telemetry.metrics.register_collector(config.peers.clone());
    let endpoint = Arc::new(Endpoint {
        sessions,
        methods: Methods {
            catalog,
            servers,
            telemetry: telemetry.clone(),
            page_size: config.page_size.max(1),
            peers: config.peers.clone(),
        },
        allowed_hosts: AllowedHosts::new(&config.allowed_hosts),
        policies,
        rates,
        metrics: telemetry.metrics.clone(),
        rounds: rounds.clone(),
        shutdown,
    });
    let mcp = axum::Router::new()
        .route(
            "/mcp",
            axum::routing::any(dispatch::mcp).with_state(endpoint.clone()),
        )
        .merge(sse::router(endpoint.clone()));
    Routers {
        mcp,
        rest: rest::router(endpoint, rest_limits),
        sessions: routed_sessions,
    }
}

/// Tells every session when the catalog's tools, prompts or resources
/// change, until `shutdown`.
fn spawn_list_changes(catalog: CatalogReader, servers: Servers, shutdown: CancellationToken) {
    let mut changes = catalog.subscribe();
    let mut seen = *changes.borrow_and_update();
    let announce = async move {
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
            }
            let now = *changes.borrow_and_update();
            let mut notifications = Vec::new();
            if now.tools != seen.tools {
                notifications.push(ServerNotification::ToolListChangedNotification(
                    ToolListChangedNotification::default(),
                ));
            }
            if now.prompts != seen.prompts {
                notifications.push(ServerNotification::PromptListChangedNotification(
                    PromptListChangedNotification::default(),
                ));
            }
            if now.resources != seen.resources {
                notifications.push(ServerNotification::ResourceListChangedNotification(
                    ResourceListChangedNotification::default(),
                ));
            }
            let sessions = servers.clients().all();
            for session in &sessions {
                for notification in &notifications {
                    session.notify(notification.clone());
                }
            }
            debug!(
                tools = now.tools,
                prompts = now.prompts,
                resources = now.resources,
                sessions = sessions.len(),
                "sent list_changed"
            );
            seen = now;
        }
    };
    tokio::spawn(announce.instrument(info_span!("list_changed")));
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
