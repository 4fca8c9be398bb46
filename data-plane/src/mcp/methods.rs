//! What each MCP method does for a client session: lists answered from the
//! catalog (a page of items encoded once per catalog), everything else
//! (tool calls, prompts, resource reads and subscriptions, completions,
//! log levels) forwarded to the server that owns the name or URI, with the
//! namespace stripped and the result relayed unchanged. A `tools/call` to
//! a shared stdio server goes as the client wrote its arguments and comes
//! back as the server wrote its result (`downstream/lines.rs`); the rest
//! go through rmcp's client. Every request is observed once (`observe.rs`)
//! and answered with one encoded JSON-RPC response, or none if the client
//! cancelled it.

// Logging is deprecated by SEP-2577 but clients on the protocol versions
// this gateway serves still use it.
#![allow(deprecated)]

use std::sync::Arc;

use axum::body::Bytes;
use http::request::Parts;
use rmcp::{
    ErrorData,
    model::{
        CallToolRequestParams, ClientRequest, CompleteRequest, CompleteRequestParams, ErrorCode,
        GetPromptRequest, GetPromptRequestParams, Implementation, InitializeRequestParams,
        InitializeResult, JsonObject, PaginatedRequestParams, ProtocolVersion, ReadResourceRequest,
        ReadResourceRequestParams, Reference, RequestId, RequestMetaObject, ResourceContents,
        ServerConfig, ServerResult, SetLevelRequest, SetLevelRequestParams, SubscribeRequest,
        SubscribeRequestParams, UnsubscribeRequest, UnsubscribeRequestParams,
    },
};
use serde::Serialize;
use serde_json::{json, value::RawValue};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Error, MAX_SUBSCRIPTIONS, forwardable_meta, page, session::Session};
use crate::{
    catalog::{CatalogReader, List, Route},
    clients::ToStream,
    downstream::{CallError, Origin, Request, Servers},
    observe::{Arrival, Observation, RequestInfo, Target},
    peers::Peers,
    policy::{Access, Kind},
    spec::{SessionMode, Transport},
    telemetry::Telemetry,
};

/// What the methods need of the replica.
pub struct Methods {
    pub catalog: CatalogReader,
    pub servers: Servers,
    pub telemetry: Telemetry,
    /// Items per page of a catalog list.
    pub page_size: usize,
    /// The other replicas, told of what a session keeps on this one.
    pub peers: Peers,
}

/// Keeps `session` in memory: it holds state a fresh start would lose,
/// its client's own or a copy another replica repeated (`peers.rs`).
fn keep(session: &Session, ctx: &Ctx) {
    if ctx.parts.headers.contains_key(crate::peers::SHARED_BY) {
        session.pin_copy();
    } else {
        session.pin();
    }
}

/// One request as a method sees it.
pub struct Ctx {
    pub id: RequestId,
    /// The request's `_meta`, as the client sent it.
    pub meta: RequestMetaObject,
    /// The HTTP request it came in (headers name the caller and trace).
    pub parts: Arc<Parts>,
    /// What the client may use, if an access policy names it.
    pub access: Option<Arc<Access>>,
    /// Cancelled when the client cancels the request or the session ends.
    pub cancel: CancellationToken,
    /// The request's own stream, if it has one (see `downstream/relay.rs`).
    pub stream: Option<mpsc::Sender<ToStream>>,
}

/// A `tools/call` as the edge read it: the arguments as the client wrote
/// them.
#[derive(Clone, Debug)]
pub struct CallParams {
    pub name: String,
    pub arguments: Option<Box<RawValue>>,
    pub meta: JsonObject,
    /// Keys beyond `name`, `arguments` and `_meta` (a later revision's):
    /// the call is read in full and goes through rmcp's client.
    pub params: Option<Box<RawValue>>,
}

// === impl Methods ===

impl Methods {
    /// The server's side of the handshake: the union of what the servers
    /// behind this gateway support, in the version the client asked for if
    /// this gateway speaks it.
    pub fn initialize(
        &self,
        session: &Session,
        request: &InitializeRequestParams,
        ctx: &Ctx,
    ) -> Bytes {
        let observation = self.observe(session, "initialize", None, Some(request), ctx);
        let supported = ProtocolVersion::known_up_to(&ProtocolVersion::LATEST_WITH_INITIALIZE);
        let version = if supported.contains(&request.protocol_version) {
            request.protocol_version.clone()
        } else {
            ProtocolVersion::LATEST_WITH_INITIALIZE
        };
        let result: InitializeResult =
            ServerConfig::new(self.catalog.load().capabilities().clone())
                .with_server_info(Implementation::new(
                    "switchboard",
                    env!("CARGO_PKG_VERSION"),
                ))
                .with_protocol_version(version);
        let result = Ok(result);
        observation.complete(&result, false);
        encode(&ctx.id, result)
    }

    /// Answers one request; `None` if it was cancelled (a cancelled
    /// request gets no answer).
    pub async fn answer(
        &self,
        session: &Session,
        ctx: &Ctx,
        request: ClientRequest,
    ) -> Option<Bytes> {
        let id = &ctx.id;
        let answer = match request {
            ClientRequest::PingRequest(_) => {
                let result = Ok(serde_json::Map::new());
                self.observe(session, "ping", None, None, ctx)
                    .complete(&result, false);
                encode(id, result)
            }
            ClientRequest::InitializeRequest(_) => encode::<()>(
                id,
                Err(ErrorData::invalid_request(
                    "the session is initialised already: start a new one without Mcp-Session-Id",
                    None,
                )),
            ),
            ClientRequest::ListToolsRequest(r) => self.list(session, ctx, List::Tools, r.params),
            ClientRequest::ListPromptsRequest(r) => {
                self.list(session, ctx, List::Prompts, r.params)
            }
            ClientRequest::ListResourcesRequest(r) => {
                self.list(session, ctx, List::Resources, r.params)
            }
            ClientRequest::ListResourceTemplatesRequest(r) => {
                self.list(session, ctx, List::ResourceTemplates, r.params)
            }
            ClientRequest::CallToolRequest(r) => {
                return self.call_tool(session, ctx, r.params).await;
            }
            ClientRequest::GetPromptRequest(r) => {
                encode(id, self.get_prompt(session, ctx, r.params).await)
            }
            ClientRequest::ReadResourceRequest(r) => {
                encode(id, self.read_resource(session, ctx, r.params).await)
            }
            ClientRequest::SubscribeRequest(r) => encode(
                id,
                self.resource_subscription(session, ctx, r.params.uri, true)
                    .await,
            ),
            ClientRequest::UnsubscribeRequest(r) => encode(
                id,
                self.resource_subscription(session, ctx, r.params.uri, false)
                    .await,
            ),
            ClientRequest::CompleteRequest(r) => {
                encode(id, self.complete(session, ctx, r.params).await)
            }
            ClientRequest::SetLevelRequest(r) => {
                encode(id, self.set_level(session, ctx, r.params).await)
            }
            other => {
                let message = not_found(other.method());
                let error = ErrorData::new(ErrorCode::METHOD_NOT_FOUND, message, None);
                encode::<()>(id, Err(error))
            }
        };
        (!ctx.cancel.is_cancelled()).then_some(answer)
    }

    /// A `tools/call`. One to a shared stdio server of an `initialize`
    /// revision with nothing but a name, arguments and `_meta` goes past
    /// rmcp, as written (a 2026-07-28 server's needs rmcp's per-request
    /// client context, and may end in a round).
    pub async fn call(&self, session: &Session, ctx: &Ctx, call: CallParams) -> Option<Bytes> {
        let route = self.catalog.load().route(&call.name).cloned();
        let route = match route {
            Some(route)
                if matches!(route.server.spec.transport, Transport::Stdio(_))
                    && route.server.spec.session_mode == SessionMode::Shared
                    && !route.server.is_stateless()
                    && call.params.is_none()
                    && !self.telemetry.log_payloads =>
            {
                route
            }
            _ => {
                // Read in full, as rmcp's types read it.
                let raw = match &call.params {
                    Some(params) => params.get().to_owned(),
                    None => json!({ "name": call.name, "arguments": call.arguments }).to_string(),
                };
                return match serde_json::from_str::<CallToolRequestParams>(&raw) {
                    Ok(params) => self.call_tool(session, ctx, params).await,
                    Err(err) => Some(encode::<()>(
                        &ctx.id,
                        Err(ErrorData::invalid_params(
                            format!("Invalid params: tools/call: {err}"),
                            None,
                        )),
                    )),
                };
            }
        };
        self.telemetry.metrics.calls_as_written.inc();
        let target = Some(Target::Tool(call.name));
        let mut observation = self.observe(session, "tools/call", target, None, ctx);
        observation.set_server(route.server.spec.name.clone());
        let mut meta = RequestMetaObject::from(call.meta);
        meta.0.0.remove("progressToken");
        meta.0
            .0
            .retain(|key, _| !key.starts_with("io.modelcontextprotocol/"));
        if let Some(trace) = observation.trace() {
            meta.set_traceparent(trace.to_traceparent());
        }
        let origin = self.origin(session, ctx);
        let arguments = call.arguments.map(one_line);
        let outcome = route
            .server
            .call_tool_direct(
                &origin,
                &route.name,
                arguments.as_deref(),
                meta,
                &ctx.cancel,
            )
            .await;
        let id = &ctx.id;
        match outcome {
            Ok(result) => {
                observation.complete(&Ok::<_, ErrorData>(()), result.is_error);
                Some(json_rpc_response(id, "result", &result.result))
            }
            Err(CallError::Cancelled) => {
                let error = Error::Call(CallError::Cancelled);
                error.describe(&mut observation);
                observation.complete(&Err::<(), _>(error.into_error()), false);
                None
            }
            Err(error) => {
                let error = Error::Call(error);
                error.describe(&mut observation);
                let response = error.into_tool_result();
                observation.complete(&response, response.is_ok());
                Some(encode(id, response))
            }
        }
    }

    /// A `tools/call` through rmcp's client.
    async fn call_tool(
        &self,
        session: &Session,
        ctx: &Ctx,
        mut params: CallToolRequestParams,
    ) -> Option<Bytes> {
        let target = Some(Target::Tool(params.name.to_string()));
        let mut observation = self.observe(session, "tools/call", target, None, ctx);
        let arguments = self
            .telemetry
            .log_payloads
            .then(|| params.arguments.clone());
        params.meta = None;
        let forwarded = async {
            let route = self
                .catalog
                .load()
                .route(&params.name)
                .cloned()
                .ok_or_else(|| Error::UnknownTool(params.name.to_string()))?;
            params.name = route.name.to_string().into();
            match self
                .forward(
                    session,
                    &route,
                    Request::call_tool(params),
                    ctx,
                    &mut observation,
                )
                .await?
            {
                // A 2026-07-28 server's round, for a client of that revision.
                result @ (ServerResult::CallToolResult(_)
                | ServerResult::InputRequiredResult(_)) => Ok(result),
                _ => Err(route.server.unexpected("tools/call").into()),
            }
        }
        .await;
        let cancelled = matches!(forwarded, Err(Error::Call(CallError::Cancelled)));
        let response = match forwarded {
            Ok(result) => Ok(result),
            Err(err) => {
                err.describe(&mut observation);
                err.into_tool_result().map(ServerResult::CallToolResult)
            }
        };
        if let Some(arguments) = arguments {
            observation.payload(&arguments, &response);
        }
        let tool_error =
            matches!(&response, Ok(ServerResult::CallToolResult(r)) if r.is_error == Some(true));
        observation.complete(&response, tool_error);
        (!cancelled).then(|| encode(&ctx.id, response))
    }

    /// A page of a catalog list, its items encoded once per catalog.
    fn list(
        &self,
        session: &Session,
        ctx: &Ctx,
        list: List,
        params: Option<PaginatedRequestParams>,
    ) -> Bytes {
        let observation = self.observe(session, list.method(), None, None, ctx);
        let catalog = self.catalog.load();
        let all = catalog.encoded(list).unwrap_or_default();
        // What an access policy hides is not listed: pages are of the rest.
        let permitted: Vec<&RawValue>;
        let items: Vec<&RawValue> = match &ctx.access {
            None => all.iter().map(|item| &**item).collect(),
            Some(access) => {
                let kind = match list {
                    List::Tools => Kind::Tool,
                    List::Prompts => Kind::Prompt,
                    List::Resources | List::ResourceTemplates => Kind::Resource,
                };
                permitted = all
                    .iter()
                    .zip(catalog.names(list))
                    .filter(|(_, name)| access.permits(kind, name))
                    .map(|(item, _)| &**item)
                    .collect();
                permitted
            }
        };
        let cursor = params.as_ref().and_then(|p| p.cursor.as_deref());
        let (range, next) = match page(items.len(), self.page_size, cursor) {
            Ok(page) => page,
            Err(err) => {
                let mut observation = observation;
                err.describe(&mut observation);
                let error = Err::<(), _>(err.into_error());
                observation.complete(&error, false);
                return encode(&ctx.id, error);
            }
        };
        let items = &items[range];
        let size = items.iter().map(|item| item.get().len() + 1).sum::<usize>();
        let mut body = json_rpc_head(&ctx.id, "result", size + 64);
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
        body.into()
    }

    async fn get_prompt(
        &self,
        session: &Session,
        ctx: &Ctx,
        mut request: GetPromptRequestParams,
    ) -> Result<ServerResult, ErrorData> {
        let target = Some(Target::Prompt(request.name.clone()));
        self.observed(session, "prompts/get", target, ctx, async |observation| {
            let route = self
                .catalog
                .load()
                .prompt_route(&request.name)
                .cloned()
                .ok_or_else(|| Error::UnknownPrompt(request.name.clone()))?;
            request.name = route.name.to_string();
            request.meta = None;
            let target = Some(request.name.clone());
            let forwarded = Request::new(GetPromptRequest::new(request), "prompts/get", target);
            match self
                .forward(session, &route, forwarded, ctx, observation)
                .await?
            {
                result @ (ServerResult::GetPromptResult(_)
                | ServerResult::InputRequiredResult(_)) => Ok(result),
                _ => Err(route.server.unexpected("prompts/get").into()),
            }
        })
        .await
    }

    async fn read_resource(
        &self,
        session: &Session,
        ctx: &Ctx,
        request: ReadResourceRequestParams,
    ) -> Result<ServerResult, ErrorData> {
        let target = Some(Target::Resource(request.uri.clone()));
        self.observed(
            session,
            "resources/read",
            target,
            ctx,
            async |observation| {
                let client_uri = request.uri.clone();
                let route = self.resource_route(&request.uri, false)?;
                let mut request = request;
                request.uri = route.name.to_string();
                request.meta = None;
                let target = Some(request.uri.clone());
                let forwarded =
                    Request::new(ReadResourceRequest::new(request), "resources/read", target);
                match self
                    .forward(session, &route, forwarded, ctx, observation)
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
                        Ok(ServerResult::ReadResourceResult(result))
                    }
                    result @ ServerResult::InputRequiredResult(_) => Ok(result),
                    _ => Err(route.server.unexpected("resources/read").into()),
                }
            },
        )
        .await
    }

    async fn complete(
        &self,
        session: &Session,
        ctx: &Ctx,
        mut request: CompleteRequestParams,
    ) -> Result<ServerResult, ErrorData> {
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
        request.meta = None;
        self.observed(
            session,
            "completion/complete",
            Some(target),
            ctx,
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
                    .forward(session, &route, forwarded, ctx, observation)
                    .await?
                {
                    result @ ServerResult::CompleteResult(_) => Ok(result),
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
        session: &Session,
        ctx: &Ctx,
        mut request: SetLevelRequestParams,
    ) -> Result<serde_json::Map<String, serde_json::Value>, ErrorData> {
        request.meta = None;
        self.observed(session, "logging/setLevel", None, ctx, async |observation| {
            keep(session, ctx);
            session.client.set_log_level(request.level);
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
                if let Err(err) = self
                    .forward(session, &route, forwarded, ctx, observation)
                    .await
                {
                    debug!(server = %route.server.spec.name, error = %err, "logging/setLevel not applied");
                }
            }
            self.share(session, ctx, "logging/setLevel", json!({ "level": request.level }));
            Ok(serde_json::Map::new())
        })
        .await
    }

    /// Forwards (un)subscriptions to the server; a server hears about a
    /// URI once however many sessions subscribe to it.
    async fn resource_subscription(
        &self,
        session: &Session,
        ctx: &Ctx,
        uri: String,
        subscribe: bool,
    ) -> Result<serde_json::Map<String, serde_json::Value>, ErrorData> {
        let method = if subscribe {
            "resources/subscribe"
        } else {
            "resources/unsubscribe"
        };
        let target = Some(Target::Resource(uri.clone()));
        self.observed(session, method, target, ctx, async |observation| {
            let route = self.resource_route(&uri, false)?;
            let client = &session.client;
            if client.is_subscribed(&uri) == subscribe {
                // Again to the other replicas: one may have missed it.
                self.share(session, ctx, method, json!({ "uri": uri }));
                return Ok(serde_json::Map::new());
            }
            if subscribe && client.subscription_count() >= MAX_SUBSCRIPTIONS {
                return Err(Error::TooManySubscriptions);
            }
            // A shared server hears of a URI once however many sessions
            // subscribe; a per-session server has its own connection each.
            let shared = route.server.spec.session_mode == SessionMode::Shared;
            let others = shared
                && self
                    .servers
                    .clients()
                    .others_subscribed(&uri, session.key());
            if route.server.is_stateless() {
                // 2026-07-28 has no resources/subscribe: the gateway listens,
                // where the server offers updates at all.
                let offered = route.server.routable().is_some_and(|(offer, _)| {
                    let resources = offer.capabilities.resources.as_ref();
                    resources.and_then(|r| r.subscribe) == Some(true)
                });
                if subscribe && !offered {
                    let message = format!(
                        "server `{}` offers no resource subscriptions",
                        route.server.spec.name
                    );
                    let refused = ErrorData::new(ErrorCode::METHOD_NOT_FOUND, message, None);
                    return Err(Error::Call(CallError::Downstream(refused)));
                }
                route
                    .server
                    .watch_resource(&route.name, session.key(), subscribe);
            } else if !others {
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
                self.forward(session, &route, request, ctx, observation)
                    .await?;
            }
            // Recorded once the server accepted, so a failed attempt can be retried.
            if subscribe {
                keep(session, ctx);
                client.subscribe(&uri);
            } else {
                client.unsubscribe(&uri);
            }
            self.share(session, ctx, method, json!({ "uri": uri }));
            Ok(serde_json::Map::new())
        })
        .await
    }

    /// Tells the other replicas what a session now keeps on this one, so
    /// the replica holding its stream sends it what it asked for.
    fn share(&self, session: &Session, ctx: &Ctx, method: &str, params: serde_json::Value) {
        let has_id = ctx
            .parts
            .headers
            .contains_key(super::dispatch::SESSION_HEADER);
        if session.kind == super::session::Kind::Streamable && has_id {
            self.peers.share_request(&ctx.parts.headers, method, params);
        }
    }

    fn observe(
        &self,
        session: &Session,
        method: &'static str,
        target: Option<Target>,
        initialize: Option<&InitializeRequestParams>,
        ctx: &Ctx,
    ) -> Observation {
        let request = RequestInfo {
            method,
            target,
            initialize,
            session_caller: &session.caller,
        };
        let arrival = Arrival {
            parts: Some(&ctx.parts),
            peer: session.handshake(),
            meta: &ctx.meta,
            request_id: ctx.id.to_string(),
        };
        Observation::begin_at(&self.telemetry, request, arrival)
    }

    /// Runs a forwarded request under an observation and turns gateway
    /// errors into JSON-RPC errors.
    async fn observed<T>(
        &self,
        session: &Session,
        method: &'static str,
        target: Option<Target>,
        ctx: &Ctx,
        request: impl AsyncFnOnce(&mut Observation) -> Result<T, Error>,
    ) -> Result<T, ErrorData> {
        let mut observation = self.observe(session, method, target, None, ctx);
        let result = request(&mut observation).await.map_err(|err| {
            err.describe(&mut observation);
            err.into_error()
        });
        observation.complete(&result, false);
        result
    }

    /// The client request a downstream request is made for.
    fn origin(&self, session: &Session, ctx: &Ctx) -> Origin {
        Origin {
            session: session.key(),
            request_id: ctx.id.clone(),
            progress_token: ctx.meta.get_progress_token(),
            stream: ctx.stream.clone(),
            handshake: session.shared_handshake(),
        }
    }

    /// Sends a request on to the server a route names, as a child of this
    /// request's span.
    async fn forward(
        &self,
        session: &Session,
        route: &Route,
        request: Request,
        ctx: &Ctx,
        observation: &mut Observation,
    ) -> Result<ServerResult, Error> {
        let mut meta = forwardable_meta(&ctx.meta);
        observation.set_server(route.server.spec.name.clone());
        if route.server.spec.session_mode != SessionMode::Shared {
            // Its connection to the server lives as long as the session.
            keep(session, ctx);
        }
        if let Some(trace) = observation.trace() {
            meta.set_traceparent(trace.to_traceparent());
        }
        let origin = self.origin(session, ctx);
        Ok(route
            .server
            .request(&origin, request, meta, &ctx.cancel)
            .await?)
    }

    /// The server and server-side URI of a client-facing resource URI.
    fn resource_route(&self, uri: &str, template: bool) -> Result<Route, Error> {
        self.catalog
            .load()
            .resource_route(uri, template)
            .ok_or_else(|| Error::UnknownResource(uri.to_owned()))
    }
}

/// `value` without line breaks: a stdio server reads each line as a
/// message of its own, so one left in a client's arguments would end the
/// call's line early and could smuggle a message of the client's making to
/// a server other clients share. JSON allows a raw line break only between
/// tokens, where a space means the same.
fn one_line(value: Box<RawValue>) -> Box<RawValue> {
    if memchr::memchr2(b'\n', b'\r', value.get().as_bytes()).is_none() {
        return value;
    }
    let joined = value.get().replace(['\n', '\r'], " ");
    // Spaces for line breaks between tokens: still the same JSON.
    RawValue::from_string(joined).unwrap_or(value)
}

/// Why a method gets `-32601`; the extensions (tasks, skills) are named
/// as such, so a client knows not to look for them here.
pub fn not_found(method: &str) -> String {
    let extension = ["tasks/", "skills/"]
        .iter()
        .find(|prefix| method.starts_with(**prefix));
    match extension {
        Some(prefix) => format!(
            "Method not found: {method} (this gateway does not offer the {} extension)",
            prefix.trim_end_matches('/')
        ),
        None => format!("Method not found: {method}"),
    }
}

/// A JSON-RPC response to `id`: its result, or its error.
pub fn encode<T: Serialize>(id: &RequestId, result: Result<T, ErrorData>) -> Bytes {
    // rmcp's own types and maps: encoding them cannot fail.
    let (key, value) = match &result {
        Ok(result) => ("result", serde_json::to_vec(result)),
        Err(error) => ("error", serde_json::to_vec(error)),
    };
    json_rpc_response(id, key, &value.unwrap_or_default())
}

/// A JSON-RPC response whose `result` or `error` (`key`) is JSON already.
pub fn json_rpc_response(id: &RequestId, key: &str, value: &[u8]) -> Bytes {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn line_breaks_between_tokens_become_spaces() {
        let raw = RawValue::from_string("{\"a\":\n1,\r\n\"b\":\"x\"}".to_owned()).expect("JSON");
        let joined = one_line(raw);
        assert!(!joined.get().contains(['\n', '\r']));
        let value: serde_json::Value = serde_json::from_str(joined.get()).expect("JSON");
        assert_eq!(value, json!({ "a": 1, "b": "x" }));
    }
}
