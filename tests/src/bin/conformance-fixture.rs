//! `conformance-fixture`: the MCP server the official conformance suite
//! (`@modelcontextprotocol/conformance`, npm) calls by fixed names — tools
//! `test_simple_text` …, resources `test://…`, prompts `test_*_prompt` —
//! written against the suite's expectations, since its own reference server
//! is not published. The end-to-end test runs the suite against it directly
//! (`--http ADDR`, streamable HTTP) and behind the gateway (stdio, the
//! default), and compares. It asks its client things within the call on
//! `initialize` revisions and in input-required rounds on 2026-07-28;
//! `--only-2026` makes it refuse `initialize`. It also has the pre-release
//! suite's 2026-07-28 diagnostics: `test_input_required_result_*` tools and
//! prompt (input-required rounds, several at once, over several rounds,
//! with a signed `requestState`), `test_missing_capability` (-32021),
//! `test_logging_tool` (logs only at a requested `logLevel`),
//! `test_streaming_elicitation` and `test_trigger_{tool,prompt}_change`.

// Sampling and logging are deprecated by SEP-2577; the suite still tests them.
#![allow(deprecated)]

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{hmac, rand::SystemRandom};
use rmcp::{
    ErrorData, RoleServer, ServerHandler, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams,
        CompleteResult, CreateMessageRequest, CreateMessageRequestParams, ElicitRequest,
        ElicitRequestParams, GetPromptRequestParams, GetPromptResponse, GetPromptResult,
        Implementation, InputRequest, InputRequests, InputRequiredResult, InputResponses,
        ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
        LoggingLevel, LoggingMessageNotificationParam, PaginatedRequestParams,
        ProgressNotificationParam, PromptListChangedNotification, ProtocolVersion,
        ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Reference,
        ResourceUpdatedNotification, ResourceUpdatedNotificationParam, ServerCapabilities,
        ServerConfig, ServerNotification, ServerRequest, SetLevelRequestParams,
        SubscribeRequestParams, SubscriptionFilter, ToolListChangedNotification,
        UnsubscribeRequestParams,
    },
    service::{RequestContext, SubscriptionContext},
    transport::{
        StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::session::local::LocalSessionManager,
    },
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// A 1×1 PNG and a tiny WAV: valid base64 the suite's client decodes.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
const WAV: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=";
/// Spacing of the notifications the logging and progress tools send.
const STEP: Duration = Duration::from_millis(50);

#[derive(Clone)]
struct Fixture {
    /// Serves MCP 2026-07-28 only: `initialize` is refused.
    only_2026: bool,
    /// Whether `test_add_tool` was called: `test_added_tool` is listed.
    added: Arc<AtomicBool>,
    /// Flipped by `test_trigger_tool_change`: `test_triggered_tool` is listed.
    triggered_tool: Arc<AtomicBool>,
    /// Flipped by `test_trigger_prompt_change`: `test_triggered_prompt` is listed.
    triggered_prompt: Arc<AtomicBool>,
    /// What listening 2026-07-28 clients are told: list changes, updates.
    changes: broadcast::Sender<ServerNotification>,
    /// Signs the `requestState` of input-required rounds.
    seal: Seal,
}

impl Fixture {
    fn new(only_2026: bool) -> anyhow::Result<Self> {
        Ok(Self {
            only_2026,
            added: Arc::default(),
            triggered_tool: Arc::default(),
            triggered_prompt: Arc::default(),
            changes: broadcast::channel(8).0,
            seal: Seal::new()?,
        })
    }
}

/// HMAC over a `requestState`: the client echoes it back, so unsigned it
/// would be whatever the client liked. The key is made at start, so states
/// die with the process, which a test fixture can afford.
#[derive(Clone)]
struct Seal(hmac::Key);

impl Seal {
    fn new() -> anyhow::Result<Self> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("no randomness for the requestState key"))?;
        Ok(Self(key))
    }

    /// `payload.tag`, both base64url: readable, not secret, but unforgeable.
    fn seal(&self, payload: &Value) -> String {
        let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
        let tag = hmac::sign(&self.0, payload.as_bytes());
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The payload, if `state` is one this process sealed, untouched.
    fn open(&self, state: &str) -> Option<Value> {
        let (payload, tag) = state.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        hmac::verify(&self.0, payload.as_bytes(), &tag).ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only_2026 = args.first().is_some_and(|flag| flag == "--only-2026");
    let fixture = Fixture::new(only_2026)?;
    match &args[usize::from(only_2026)..] {
        [] => {
            let service = fixture.serve(rmcp::transport::stdio()).await?;
            service.waiting().await?;
        }
        [flag, addr] if flag == "--http" => serve_http(fixture, addr.parse()?).await?,
        _ => anyhow::bail!("usage: conformance-fixture [--only-2026] [--http ADDR]"),
    }
    Ok(())
}

async fn serve_http(fixture: Fixture, addr: SocketAddr) -> anyhow::Result<()> {
    let service = StreamableHttpService::new(
        move || Ok(fixture.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let router = axum::Router::new().nest_service("/mcp", service);
    axum::serve(listener, router).await?;
    Ok(())
}

/// Builds an rmcp type from the JSON the suite expects, so the literal
/// values stay readable.
fn from_json<T: DeserializeOwned>(value: Value) -> Result<T, ErrorData> {
    serde_json::from_value(value).map_err(|e| ErrorData::internal_error(e.to_string(), None))
}

fn text_result(text: impl Into<String>) -> Result<CallToolResponse, ErrorData> {
    let text: String = text.into();
    Ok(CallToolResponse::Complete(from_json(
        json!({ "content": [{ "type": "text", "text": text }] }),
    )?))
}

fn tools() -> Value {
    let no_args = json!({ "type": "object", "properties": {} });
    let tool = |name: &str, description: &str| json!({ "name": name, "description": description, "inputSchema": no_args });
    let with_string = |name: &str, description: &str, arg: &str| {
        json!({ "name": name, "description": description, "inputSchema": {
            "type": "object", "properties": { arg: { "type": "string" } }, "required": [arg] } })
    };
    json!([
        tool("test_simple_text", "Returns a simple text response"),
        tool("test_image_content", "Returns an image"),
        tool("test_audio_content", "Returns audio"),
        tool("test_embedded_resource", "Returns an embedded resource"),
        tool("test_multiple_content_types", "Returns text, an image and a resource"),
        tool("test_tool_with_logging", "Logs three messages while it runs"),
        tool("test_tool_with_progress", "Reports progress three times while it runs"),
        tool("test_error_handling", "Always fails with an error result"),
        tool("test_add_tool", "Adds test_added_tool to the list and says the list changed"),
        tool("test_touch_resource", "Tells subscribers test://watched-resource changed"),
        with_string("test_sampling", "Asks the client's LLM", "prompt"),
        with_string("test_elicitation", "Asks the user for information", "message"),
        tool("test_elicitation_sep1034_defaults", "Elicitation with default values"),
        tool("test_elicitation_sep1330_enums", "Elicitation with every enum shape"),
        tool("test_reconnection", "Answers after a short pause"),
        { "name": "json_schema_2020_12_tool", "description": "Tool with JSON Schema 2020-12 features",
          "inputSchema": { "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
            "$defs": { "address": { "$anchor": "address", "type": "object", "properties": {
              "street": { "type": "string" }, "city": { "type": "string" } } } },
            "properties": { "name": { "type": "string" }, "address": { "$ref": "#/$defs/address" } },
            "allOf": [{ "anyOf": [{ "required": ["name"] }, { "required": ["address"] }] }],
            "if": { "properties": { "name": { "const": "home" } } },
            "then": { "required": ["address"] },
            "else": { "properties": { "address": true } },
            "additionalProperties": false } },
        // SEP-2243: the argument a client must also send as `Mcp-Param-Region`.
        { "name": "test_custom_header", "description": "Echoes a region sent in a header too",
          "inputSchema": { "type": "object", "properties": {
            "region": { "type": "string", "x-mcp-header": "Region" } }, "required": ["region"] } },
        // The pre-release suite's 2026-07-28 diagnostics.
        tool("test_input_required_result_elicitation", "Asks the user's name, then greets them"),
        tool("test_input_required_result_sampling", "Asks the client's LLM a question"),
        tool("test_input_required_result_list_roots", "Asks the client for its roots"),
        tool("test_input_required_result_capabilities",
             "Asks only what the request's declared client capabilities allow (2026-07-28)"),
        tool("test_input_required_result_multiple_inputs",
             "Asks for a name, an LLM greeting and the roots in one round (2026-07-28)"),
        tool("test_input_required_result_request_state",
             "Asks for confirmation under a signed requestState (2026-07-28)"),
        tool("test_input_required_result_tampered_state",
             "Asks for confirmation; refuses a requestState that was tampered with (2026-07-28)"),
        tool("test_input_required_result_multi_round",
             "Asks a name, then a colour, in two rounds (2026-07-28)"),
        tool("test_missing_capability", "Samples, so refuses (-32021) a client without sampling"),
        tool("test_logging_tool",
             "Logs while it runs: on 2026-07-28 only at the _meta logLevel, without one not at all"),
        tool("test_streaming_elicitation",
             "Asks the user: on 2026-07-28 as an input-required result, never a request on the stream"),
        tool("test_trigger_tool_change",
             "Adds test_triggered_tool, or removes it, and says the tool list changed"),
        tool("test_trigger_prompt_change",
             "Adds test_triggered_prompt, or removes it, and says the prompt list changed"),
    ])
}

/// The questions the diagnostic tools ask, as the JSON of an input request.
fn elicitation(message: &str, property: &str, kind: &str) -> Value {
    json!({ "method": "elicitation/create", "params": { "message": message, "requestedSchema": {
        "type": "object", "properties": { property: { "type": kind } }, "required": [property] } } })
}

fn sampling(text: &str, max_tokens: u32) -> Value {
    json!({ "method": "sampling/createMessage", "params": { "messages": [
        { "role": "user", "content": { "type": "text", "text": text } }], "maxTokens": max_tokens } })
}

fn list_roots() -> Value {
    json!({ "method": "roots/list" })
}

/// The answer under `key`, if the retry brings one: a result object,
/// anything else is no answer and is asked again.
fn answer<'a>(responses: Option<&'a InputResponses>, key: &str) -> Option<&'a Value> {
    responses.and_then(|r| r.get(key)).filter(|a| a.is_object())
}

/// A text field of an elicitation's or sampling's answer.
fn field<'a>(answer: &'a Value, name: &str) -> &'a str {
    answer["content"][name].as_str().unwrap_or_default()
}

/// The URIs of a `roots/list` answer.
fn root_uris(answer: &Value) -> String {
    let roots = answer["roots"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let uris: Vec<&str> = roots.iter().filter_map(|r| r["uri"].as_str()).collect();
    uris.join(", ")
}

/// Whether the request is of a revision without `initialize` (2026-07-28),
/// so questions go in input-required rounds.
fn stateless(context: &RequestContext<RoleServer>) -> bool {
    context
        .protocol_version()
        .is_some_and(|version| !version.has_initialize())
}

/// Refuses (-32021, as 2026-07-28 requires) a call that needs client
/// capabilities the request, or an older client's `initialize`, did not
/// declare.
fn require(context: &RequestContext<RoleServer>, capabilities: &[&str]) -> Result<(), ErrorData> {
    let declared = context
        .client_capabilities()
        .and_then(|c| serde_json::to_value(c).ok())
        .unwrap_or_default();
    let missing: serde_json::Map<String, Value> = capabilities
        .iter()
        .filter(|c| declared.get(**c).is_none())
        .map(|c| ((*c).to_owned(), json!({})))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(ErrorData::missing_required_client_capability(from_json(
        Value::Object(missing),
    )?))
}

// === impl Fixture ===

impl Fixture {
    async fn log_three(&self, context: &RequestContext<RoleServer>) -> Result<(), ErrorData> {
        for message in [
            "Tool execution started",
            "Tool processing data",
            "Tool execution completed",
        ] {
            let param: LoggingMessageNotificationParam =
                from_json(json!({ "level": "info", "logger": "fixture", "data": message }))?;
            let _ = context.peer.notify_logging_message(param).await;
            tokio::time::sleep(STEP).await;
        }
        Ok(())
    }

    async fn progress_three(&self, context: &RequestContext<RoleServer>) -> Result<(), ErrorData> {
        if let Some(token) = context.meta.get_progress_token() {
            for progress in [0, 50, 100] {
                let param: ProgressNotificationParam = from_json(
                    json!({ "progressToken": token, "progress": progress, "total": 100 }),
                )?;
                let _ = context.peer.notify_progress(param).await;
                tokio::time::sleep(STEP).await;
            }
        }
        Ok(())
    }

    async fn elicit(
        &self,
        context: &RequestContext<RoleServer>,
        call: &CallToolRequestParams,
        message: &str,
        schema: Value,
    ) -> Result<CallToolResponse, ErrorData> {
        let params: ElicitRequestParams =
            from_json(json!({ "message": message, "requestedSchema": schema }))?;
        let request = InputRequest::Elicitation(ElicitRequest::new(params));
        let responses = call.input_responses.as_ref();
        match ask(context, responses, "elicitation", request).await {
            Asked::Answer(answer) => text_result(format!("User response: {answer}")),
            Asked::Failed(err) => text_result(format!("Elicitation failed: {err}")),
            Asked::Round(round) => Ok(round.into()),
        }
    }

    /// Tells of a change: listening 2026-07-28 clients on their streams,
    /// an older client as a notification on its session.
    async fn announce(&self, context: &RequestContext<RoleServer>, change: ServerNotification) {
        let _ = self.changes.send(change.clone());
        if !stateless(context) {
            let _ = context.peer.send_notification(change).await;
        }
    }

    /// An input-required round of `tool` asking `questions`, under a
    /// signed `state` naming the tool, so no other tool takes it.
    fn round(
        &self,
        tool: &str,
        questions: &[(&str, Value)],
        mut state: Value,
    ) -> Result<InputRequiredResult, ErrorData> {
        let mut requests = InputRequests::new();
        for (key, question) in questions {
            requests.insert((*key).to_owned(), from_json(question.clone())?);
        }
        state["tool"] = json!(tool);
        let state = self.seal.seal(&state);
        Ok(InputRequiredResult::new(Some(requests), Some(state)))
    }

    /// The state a retry of `tool` echoes back, checked: none on a first
    /// call, an error if it is not one this process sealed for `tool`.
    fn state(&self, tool: &str, call: &CallToolRequestParams) -> Result<Option<Value>, ErrorData> {
        let Some(state) = &call.request_state else {
            return Ok(None);
        };
        match self.seal.open(state) {
            Some(state) if state["tool"] == tool => Ok(Some(state)),
            _ => Err(ErrorData::invalid_params(
                "requestState failed its integrity check (tampered, or another tool's)",
                None,
            )),
        }
    }

    /// The answers to all `questions` (an object by key). On 2026-07-28
    /// once a retry under this tool's state brings them, until then a round
    /// asking those still missing; on older revisions asked within the call,
    /// one after another.
    async fn gather(
        &self,
        tool: &str,
        call: &CallToolRequestParams,
        context: &RequestContext<RoleServer>,
        questions: &[(&str, Value)],
    ) -> Result<Asked, ErrorData> {
        if !stateless(context) {
            let mut answers = serde_json::Map::new();
            for (key, question) in questions {
                match ask(context, None, key, from_json(question.clone())?).await {
                    Asked::Answer(answer) => answers.insert((*key).to_owned(), answer),
                    asked => return Ok(asked),
                };
            }
            return Ok(Asked::Answer(Value::Object(answers)));
        }
        let responses = call.input_responses.as_ref();
        // Answers without our state belong to no round of ours: ask anew.
        if self.state(tool, call)?.is_none() {
            return Ok(Asked::Round(self.round(tool, questions, json!({}))?));
        }
        let missing: Vec<(&str, Value)> = questions
            .iter()
            .filter(|(key, _)| answer(responses, key).is_none())
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Ok(Asked::Round(self.round(tool, &missing, json!({}))?));
        }
        let answers: serde_json::Map<String, Value> = questions
            .iter()
            .filter_map(|(key, _)| Some(((*key).to_owned(), answer(responses, key)?.clone())))
            .collect();
        Ok(Asked::Answer(Value::Object(answers)))
    }

    /// The `test_input_required_result_*` tools. Made for 2026-07-28's
    /// rounds, they ask within the call on older revisions.
    async fn input_required(
        &self,
        tool: &str,
        call: &CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let responses = call.input_responses.as_ref();
        let one = |capability: &'static str, key: &'static str, question: Value| async move {
            require(context, &[capability])?;
            Ok::<_, ErrorData>(ask(context, responses, key, from_json(question)?).await)
        };
        let name = elicitation("What is your name?", "name", "string");
        match tool {
            "test_input_required_result_elicitation" => {
                match one("elicitation", "user_name", name).await? {
                    Asked::Answer(answer) if answer["action"] == "accept" => {
                        text_result(format!("Hello, {}!", field(&answer, "name")))
                    }
                    Asked::Answer(answer) => {
                        text_result(format!("No name: the user chose {}", answer["action"]))
                    }
                    asked => unanswered(asked),
                }
            }
            "test_input_required_result_sampling" => {
                let question = sampling("What is the capital of France?", 100);
                match one("sampling", "capital_question", question).await? {
                    Asked::Answer(answer) => {
                        text_result(format!("LLM response: {}", field(&answer, "text")))
                    }
                    asked => unanswered(asked),
                }
            }
            "test_input_required_result_list_roots" => {
                match one("roots", "client_roots", list_roots()).await? {
                    Asked::Answer(answer) => text_result(format!("Roots: {}", root_uris(&answer))),
                    asked => unanswered(asked),
                }
            }
            "test_input_required_result_request_state"
            | "test_input_required_result_tampered_state" => {
                require(context, &["elicitation"])?;
                let confirm = elicitation("Please confirm", "ok", "boolean");
                // On an older revision the call never left: nothing to tamper with.
                match self
                    .gather(tool, call, context, &[("confirm", confirm)])
                    .await?
                {
                    Asked::Answer(answers) => text_result(format!(
                        "state-ok: confirmed, ok={}",
                        answers["confirm"]["content"]["ok"]
                    )),
                    asked => unanswered(asked),
                }
            }
            "test_input_required_result_multiple_inputs" => {
                require(context, &["elicitation", "sampling", "roots"])?;
                let questions = [
                    ("user_name", name),
                    ("greeting", sampling("Generate a greeting", 50)),
                    ("client_roots", list_roots()),
                ];
                match self.gather(tool, call, context, &questions).await? {
                    Asked::Answer(answers) => text_result(format!(
                        "Name {}; greeting {}; roots {}",
                        field(&answers["user_name"], "name"),
                        field(&answers["greeting"], "text"),
                        root_uris(&answers["client_roots"])
                    )),
                    asked => unanswered(asked),
                }
            }
            "test_input_required_result_capabilities" => {
                // Only what the request declared it can answer is asked.
                let declared = context
                    .client_capabilities()
                    .and_then(|c| serde_json::to_value(c).ok())
                    .unwrap_or_default();
                let questions: Vec<(&str, Value)> = [
                    ("elicitation", "user_name", name),
                    ("sampling", "greeting", sampling("Generate a greeting", 50)),
                    ("roots", "client_roots", list_roots()),
                ]
                .into_iter()
                .filter(|(capability, _, _)| declared.get(capability).is_some())
                .map(|(_, key, question)| (key, question))
                .collect();
                if questions.is_empty() {
                    return text_result(
                        "Nothing asked: the client declared no capability to answer",
                    );
                }
                match self.gather(tool, call, context, &questions).await? {
                    Asked::Answer(answers) => {
                        let keys: Vec<&String> = answers
                            .as_object()
                            .map(|a| a.keys().collect())
                            .unwrap_or_default();
                        text_result(format!("Answered: {keys:?}"))
                    }
                    asked => unanswered(asked),
                }
            }
            "test_input_required_result_multi_round" => {
                require(context, &["elicitation"])?;
                self.multi_round(tool, call, context).await
            }
            other => Err(ErrorData::invalid_params(
                format!("unknown tool `{other}`"),
                None,
            )),
        }
    }

    /// A name in round one, a colour in round two (the name carried in the
    /// signed state), then the result; a round unanswered is asked again.
    /// Older revisions are asked both within the call.
    async fn multi_round(
        &self,
        tool: &str,
        call: &CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let step1 = [(
            "step1",
            elicitation("Step 1: What is your name?", "name", "string"),
        )];
        let step2 = [(
            "step2",
            elicitation("Step 2: What is your favorite color?", "color", "string"),
        )];
        let favorite =
            |name: &str, color: &str| text_result(format!("{name}'s favorite color is {color}"));
        if !stateless(context) {
            let both = [step1[0].clone(), step2[0].clone()];
            return match self.gather(tool, call, context, &both).await? {
                Asked::Answer(a) => {
                    favorite(field(&a["step1"], "name"), field(&a["step2"], "color"))
                }
                asked => unanswered(asked),
            };
        }
        let responses = call.input_responses.as_ref();
        let state = self.state(tool, call)?.unwrap_or_default();
        let round = match state["round"].as_u64() {
            Some(1) => match answer(responses, "step1") {
                Some(answer) => {
                    let name = &answer["content"]["name"];
                    self.round(tool, &step2, json!({ "round": 2, "name": name }))?
                }
                None => self.round(tool, &step1, json!({ "round": 1 }))?,
            },
            Some(2) => match answer(responses, "step2") {
                Some(answer) => {
                    let name = state["name"].as_str().unwrap_or_default();
                    return favorite(name, field(answer, "color"));
                }
                None => self.round(tool, &step2, json!({ "round": 2, "name": state["name"] }))?,
            },
            _ => self.round(tool, &step1, json!({ "round": 1 }))?,
        };
        Ok(round.into())
    }

    /// Three messages of rising severity. On 2026-07-28 only those at or
    /// above the request's `_meta` logLevel are sent, none without one;
    /// an older client gets all of them.
    async fn log_leveled(&self, context: &RequestContext<RoleServer>) -> Result<(), ErrorData> {
        let threshold = if stateless(context) {
            context.meta.log_level()
        } else {
            Some(LoggingLevel::Debug)
        };
        let Some(threshold) = threshold else {
            return Ok(());
        };
        for (level, message) in [
            (LoggingLevel::Debug, "Logging tool: starting"),
            (LoggingLevel::Info, "Logging tool: working"),
            (LoggingLevel::Warning, "Logging tool: done"),
        ] {
            // The variants are declared in order of severity.
            if (level as u8) < (threshold as u8) {
                continue;
            }
            let param: LoggingMessageNotificationParam =
                from_json(json!({ "level": level, "logger": "fixture", "data": message }))?;
            let _ = context.peer.notify_logging_message(param).await;
            tokio::time::sleep(STEP).await;
        }
        Ok(())
    }
}

/// How a question to the client went.
enum Asked {
    Answer(Value),
    Failed(String),
    /// Asked of a 2026-07-28 client: the call ends in this round, and its
    /// retry brings the answer.
    Round(InputRequiredResult),
}

/// What a call comes to while its question is unanswered: the round that
/// asks it, or word that asking failed.
fn unanswered(asked: Asked) -> Result<CallToolResponse, ErrorData> {
    match asked {
        Asked::Round(round) => Ok(round.into()),
        Asked::Failed(err) => text_result(format!("Asking failed: {err}")),
        Asked::Answer(_) => Err(ErrorData::internal_error("an answer left unread", None)),
    }
}

/// Asks the client: within the call on an `initialize` revision; on
/// 2026-07-28, in an input-required round under `key`, whose answer the
/// retry carries in `inputResponses`.
async fn ask(
    context: &RequestContext<RoleServer>,
    responses: Option<&InputResponses>,
    key: &str,
    request: InputRequest,
) -> Asked {
    if stateless(context) {
        if let Some(answer) = answer(responses, key) {
            return Asked::Answer(answer.clone());
        }
        let requests = InputRequests::from([(key.to_owned(), request)]);
        let round = InputRequiredResult::new(Some(requests), Some(format!("fixture-{key}")));
        return Asked::Round(round);
    }
    let request = match request {
        InputRequest::CreateMessage(r) => ServerRequest::CreateMessageRequest(r),
        InputRequest::Elicitation(r) => ServerRequest::ElicitRequest(r),
        InputRequest::ListRoots(r) => ServerRequest::ListRootsRequest(r),
        _ => return Asked::Failed("an input request this fixture does not know".into()),
    };
    match context.peer.send_request(request).await {
        Ok(answer) => Asked::Answer(serde_json::to_value(answer).unwrap_or_default()),
        Err(err) => Asked::Failed(err.to_string()),
    }
}

impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_resources_list_changed()
                .enable_prompts()
                .enable_prompts_list_changed()
                .enable_logging()
                .enable_completions()
                .build(),
        )
        .with_server_info(Implementation::new(
            "switchboard-conformance-fixture",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_protocol_version(if self.only_2026 {
            ProtocolVersion::LATEST
        } else {
            ProtocolVersion::LATEST_WITH_INITIALIZE
        })
    }

    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        if self.only_2026 {
            return std::borrow::Cow::Owned(vec![ProtocolVersion::LATEST]);
        }
        std::borrow::Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::LATEST))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut tools = tools();
        let no_args = json!({ "type": "object", "properties": {} });
        if let Some(tools) = tools.as_array_mut() {
            if self.added.load(Ordering::Relaxed) {
                tools.push(json!({ "name": "test_added_tool",
                    "description": "Added by test_add_tool", "inputSchema": no_args }));
            }
            if self.triggered_tool.load(Ordering::Relaxed) {
                tools.push(json!({ "name": "test_triggered_tool",
                    "description": "Added by test_trigger_tool_change", "inputSchema": no_args }));
            }
        }
        from_json(json!({ "tools": tools }))
    }

    async fn call_tool(
        &self,
        params: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let argument = |name: &str| {
            params
                .arguments
                .as_ref()
                .and_then(|a| a.get(name))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let content = |content: Value| -> Result<CallToolResponse, ErrorData> {
            Ok(CallToolResponse::Complete(from_json(
                json!({ "content": content }),
            )?))
        };
        match params.name.as_ref() {
            "test_simple_text" => text_result("This is a simple text response for testing."),
            "test_custom_header" => text_result(format!("region {}", argument("region"))),
            "test_image_content" => {
                content(json!([{ "type": "image", "data": PNG, "mimeType": "image/png" }]))
            }
            "test_audio_content" => {
                content(json!([{ "type": "audio", "data": WAV, "mimeType": "audio/wav" }]))
            }
            "test_embedded_resource" => content(json!([{ "type": "resource", "resource": {
                "uri": "test://embedded-resource", "mimeType": "text/plain",
                "text": "This is an embedded resource content." } }])),
            "test_multiple_content_types" => content(json!([
                { "type": "text", "text": "Multiple content types test:" },
                { "type": "image", "data": PNG, "mimeType": "image/png" },
                { "type": "resource", "resource": { "uri": "test://mixed-content-resource",
                  "mimeType": "application/json", "text": "{\"test\":\"data\",\"value\":123}" } },
            ])),
            "test_tool_with_logging" => {
                self.log_three(&context).await?;
                text_result("Logging test completed")
            }
            "test_tool_with_progress" => {
                self.progress_three(&context).await?;
                text_result("Progress test completed")
            }
            "test_error_handling" => {
                let result: CallToolResult = from_json(json!({ "isError": true, "content": [
                    { "type": "text", "text": "This tool intentionally returns an error for testing" }] }))?;
                Ok(CallToolResponse::Complete(result))
            }
            "test_sampling" => {
                let request: CreateMessageRequestParams = from_json(json!({
                    "messages": [{ "role": "user", "content": { "type": "text", "text": argument("prompt") } }],
                    "maxTokens": 100 }))?;
                let request = InputRequest::CreateMessage(CreateMessageRequest::new(request));
                let responses = params.input_responses.as_ref();
                match ask(&context, responses, "sampling", request).await {
                    Asked::Answer(answer) => {
                        let text = answer["content"]["text"].as_str().unwrap_or_default();
                        text_result(format!("LLM response: {text}"))
                    }
                    Asked::Failed(err) => text_result(format!("Sampling failed: {err}")),
                    Asked::Round(round) => Ok(round.into()),
                }
            }
            "test_elicitation" => {
                let schema = json!({ "type": "object", "properties": {
                    "username": { "type": "string", "description": "User's response" },
                    "email": { "type": "string", "description": "User's email address" } },
                    "required": ["username", "email"] });
                self.elicit(&context, &params, &argument("message"), schema)
                    .await
            }
            "test_elicitation_sep1034_defaults" => {
                let schema = json!({ "type": "object", "properties": {
                    "name": { "type": "string", "description": "User name", "default": "John Doe" },
                    "age": { "type": "integer", "description": "User age", "default": 30 },
                    "score": { "type": "number", "description": "User score", "default": 95.5 },
                    "status": { "type": "string", "description": "User status",
                                "enum": ["active", "inactive", "pending"], "default": "active" },
                    "verified": { "type": "boolean", "description": "Verified", "default": true } },
                    "required": [] });
                self.elicit(
                    &context,
                    &params,
                    "Please review and update the form fields with defaults",
                    schema,
                )
                .await
            }
            "test_elicitation_sep1330_enums" => {
                let schema = json!({ "type": "object", "properties": {
                    "untitledSingle": { "type": "string", "enum": ["option1", "option2", "option3"] },
                    "titledSingle": { "type": "string", "oneOf": [
                        { "const": "value1", "title": "First Option" },
                        { "const": "value2", "title": "Second Option" },
                        { "const": "value3", "title": "Third Option" }] },
                    "legacyEnum": { "type": "string", "enum": ["opt1", "opt2", "opt3"],
                                    "enumNames": ["Option One", "Option Two", "Option Three"] },
                    "untitledMulti": { "type": "array", "minItems": 1, "maxItems": 3,
                                       "items": { "type": "string", "enum": ["option1", "option2", "option3"] } },
                    "titledMulti": { "type": "array", "minItems": 1, "maxItems": 3, "items": { "anyOf": [
                        { "const": "value1", "title": "First Choice" },
                        { "const": "value2", "title": "Second Choice" },
                        { "const": "value3", "title": "Third Choice" }] } } },
                    "required": [] });
                self.elicit(&context, &params, "Please select options", schema)
                    .await
            }
            "test_reconnection" => {
                tokio::time::sleep(STEP * 2).await;
                text_result("Reconnection test completed")
            }
            "json_schema_2020_12_tool" => text_result("JSON Schema 2020-12 tool called"),
            "test_add_tool" => {
                self.added.store(true, Ordering::Relaxed);
                let changed = ToolListChangedNotification::default();
                self.announce(
                    &context,
                    ServerNotification::ToolListChangedNotification(changed),
                )
                .await;
                text_result("test_added_tool added")
            }
            "test_touch_resource" => {
                // Subscribers (listeners, on 2026-07-28) hear it changed.
                let uri = "test://watched-resource";
                let updated =
                    ResourceUpdatedNotification::new(ResourceUpdatedNotificationParam::new(uri));
                self.announce(
                    &context,
                    ServerNotification::ResourceUpdatedNotification(updated),
                )
                .await;
                text_result("test://watched-resource touched")
            }
            "test_added_tool" if self.added.load(Ordering::Relaxed) => {
                text_result("the added tool answers")
            }
            // Flipping, not setting, so that every call changes the list.
            "test_trigger_tool_change" => {
                let listed = !self.triggered_tool.fetch_xor(true, Ordering::Relaxed);
                let changed = ToolListChangedNotification::default();
                self.announce(
                    &context,
                    ServerNotification::ToolListChangedNotification(changed),
                )
                .await;
                text_result(format!("test_triggered_tool listed: {listed}"))
            }
            "test_trigger_prompt_change" => {
                let listed = !self.triggered_prompt.fetch_xor(true, Ordering::Relaxed);
                let changed = PromptListChangedNotification::default();
                self.announce(
                    &context,
                    ServerNotification::PromptListChangedNotification(changed),
                )
                .await;
                text_result(format!("test_triggered_prompt listed: {listed}"))
            }
            "test_triggered_tool" if self.triggered_tool.load(Ordering::Relaxed) => {
                text_result("the triggered tool answers")
            }
            "test_missing_capability" => {
                require(&context, &["sampling"])?;
                let question = sampling("Say hello", 20);
                let responses = params.input_responses.as_ref();
                match ask(&context, responses, "sampling", from_json(question)?).await {
                    Asked::Answer(answer) => {
                        let text = field(&answer, "text");
                        text_result(format!("LLM response: {text}"))
                    }
                    Asked::Failed(err) => text_result(format!("Sampling failed: {err}")),
                    Asked::Round(round) => Ok(round.into()),
                }
            }
            "test_logging_tool" => {
                self.log_leveled(&context).await?;
                text_result("Logging test completed")
            }
            "test_streaming_elicitation" => {
                require(&context, &["elicitation"])?;
                let schema = json!({ "type": "object", "properties": {
                    "answer": { "type": "string" } }, "required": ["answer"] });
                self.elicit(&context, &params, "Anything to add?", schema)
                    .await
            }
            name if name.starts_with("test_input_required_result_") => {
                self.input_required(name, &params, &context).await
            }
            other => Err(ErrorData::invalid_params(
                format!("unknown tool `{other}`"),
                None,
            )),
        }
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.clone())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let mut changes = self.changes.subscribe();
        loop {
            tokio::select! {
                () = context.cancelled() => return Ok(()),
                changed = changes.recv() => {
                    let Ok(notification) = changed else {
                        return Ok(());
                    };
                    // The sink passes on only what the listener asked for.
                    let _ = context.sink().send(notification).await;
                }
            }
        }
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let resource = |uri: &str, name: &str, mime: &str| json!({ "uri": uri, "name": name, "description": format!("The {name} resource"), "mimeType": mime });
        from_json(json!({ "resources": [
            resource("test://static-text", "static-text", "text/plain"),
            resource("test://static-binary", "static-binary", "image/png"),
            resource("test://watched-resource", "watched-resource", "text/plain"),
        ] }))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        from_json(
            json!({ "resourceTemplates": [{ "uriTemplate": "test://template/{id}/data",
            "name": "template", "description": "Data by id", "mimeType": "application/json" }] }),
        )
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri.as_str();
        let contents = match uri {
            "test://static-text" => json!({ "uri": uri, "mimeType": "text/plain",
                "text": "This is the content of the static text resource." }),
            "test://static-binary" => json!({ "uri": uri, "mimeType": "image/png", "blob": PNG }),
            "test://watched-resource" => {
                json!({ "uri": uri, "mimeType": "text/plain", "text": "Watched resource content." })
            }
            _ => match uri
                .strip_prefix("test://template/")
                .and_then(|rest| rest.strip_suffix("/data"))
            {
                Some(id) => json!({ "uri": uri, "mimeType": "application/json",
                    "text": json!({ "id": id, "templateTest": true, "data": format!("Data for ID: {id}") }).to_string() }),
                None => {
                    let message = format!("resource `{uri}` not found");
                    return Err(ErrorData::resource_not_found(message, None));
                }
            },
        };
        let result: ReadResourceResult = from_json(json!({ "contents": [contents] }))?;
        Ok(ReadResourceResponse::Complete(result))
    }

    async fn subscribe(
        &self,
        _request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Ok(())
    }

    async fn unsubscribe(
        &self,
        _request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let required = |name: &str| json!({ "name": name, "description": name, "required": true });
        let mut prompts = json!([
            { "name": "test_simple_prompt", "description": "A simple prompt" },
            { "name": "test_prompt_with_arguments", "description": "A prompt with arguments",
              "arguments": [required("arg1"), required("arg2")] },
            { "name": "test_prompt_with_embedded_resource", "description": "A prompt with a resource",
              "arguments": [required("resourceUri")] },
            { "name": "test_prompt_with_image", "description": "A prompt with an image" },
            { "name": "test_input_required_result_prompt",
              "description": "Asks the user for the context first" },
        ]);
        if self.triggered_prompt.load(Ordering::Relaxed)
            && let Some(prompts) = prompts.as_array_mut()
        {
            prompts.push(json!({ "name": "test_triggered_prompt",
                "description": "Added by test_trigger_prompt_change" }));
        }
        from_json(json!({ "prompts": prompts }))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let argument = |name: &str| {
            request
                .arguments
                .as_ref()
                .and_then(|a| a.get(name))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let user = |content: Value| json!({ "role": "user", "content": content });
        let text = |text: String| user(json!({ "type": "text", "text": text }));
        let messages = match request.name.as_str() {
            "test_simple_prompt" => json!([text("This is a simple prompt for testing.".into())]),
            "test_prompt_with_arguments" => json!([text(format!(
                "Prompt with arguments: arg1='{}', arg2='{}'",
                argument("arg1"),
                argument("arg2")
            ))]),
            "test_prompt_with_embedded_resource" => json!([
                user(
                    json!({ "type": "resource", "resource": { "uri": argument("resourceUri"),
                    "mimeType": "text/plain", "text": "Embedded resource content for testing." } })
                ),
                text("Please process the embedded resource above.".into()),
            ]),
            "test_prompt_with_image" => json!([
                user(json!({ "type": "image", "data": PNG, "mimeType": "image/png" })),
                text("Please analyze the image above.".into()),
            ]),
            "test_input_required_result_prompt" => {
                require(&context, &["elicitation"])?;
                let question =
                    elicitation("What context should the prompt use?", "context", "string");
                let responses = request.input_responses.as_ref();
                match ask(&context, responses, "user_context", from_json(question)?).await {
                    Asked::Answer(answer) => json!([text(format!(
                        "Answer with this context in mind: {}",
                        field(&answer, "context")
                    ))]),
                    Asked::Failed(err) => {
                        return Err(ErrorData::internal_error(
                            format!("asking for the context failed: {err}"),
                            None,
                        ));
                    }
                    Asked::Round(round) => return Ok(round.into()),
                }
            }
            "test_triggered_prompt" if self.triggered_prompt.load(Ordering::Relaxed) => {
                json!([text("Added by test_trigger_prompt_change.".into())])
            }
            other => {
                return Err(ErrorData::invalid_params(
                    format!("unknown prompt `{other}`"),
                    None,
                ));
            }
        };
        let result: GetPromptResult = from_json(json!({ "messages": messages }))?;
        Ok(GetPromptResponse::Complete(result))
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let values: Vec<&str> = match &request.r#ref {
            Reference::Prompt(prompt) if prompt.name == "test_prompt_with_arguments" => {
                ["paris", "park", "party"]
                    .into_iter()
                    .filter(|v| v.starts_with(request.argument.value.as_str()))
                    .collect()
            }
            _ => Vec::new(),
        };
        from_json(
            json!({ "completion": { "values": values, "total": values.len(), "hasMore": false } }),
        )
    }

    async fn set_level(
        &self,
        _request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Ok(())
    }
}
