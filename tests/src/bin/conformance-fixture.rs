//! `conformance-fixture`: the MCP server the official conformance suite
//! (`@modelcontextprotocol/conformance`, npm) calls by fixed names — tools
//! `test_simple_text` …, resources `test://…`, prompts `test_*_prompt` —
//! written against the suite's expectations, since its own reference server
//! is not published. The end-to-end test runs the suite against it directly
//! (`--http ADDR`, streamable HTTP) and behind the gateway (stdio, the
//! default), and compares.

// Sampling and logging are deprecated by SEP-2577; the suite still tests them.
#![allow(deprecated)]

use std::{net::SocketAddr, sync::Arc, time::Duration};

use rmcp::{
    ErrorData, RoleServer, ServerHandler, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ClientResult,
        CompleteRequestParams, CompleteResult, CreateMessageRequestParams, ElicitRequest,
        ElicitRequestParams, GetPromptRequestParams, GetPromptResponse, GetPromptResult,
        Implementation, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
        ListToolsResult, LoggingMessageNotificationParam, PaginatedRequestParams,
        ProgressNotificationParam, ProtocolVersion, ReadResourceRequestParams,
        ReadResourceResponse, ReadResourceResult, Reference, ServerCapabilities, ServerConfig,
        ServerRequest, SetLevelRequestParams, SubscribeRequestParams, UnsubscribeRequestParams,
    },
    service::RequestContext,
    transport::{
        StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::session::local::LocalSessionManager,
    },
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// A 1×1 PNG and a tiny WAV: valid base64 the suite's client decodes.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
const WAV: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=";
/// Spacing of the notifications the logging and progress tools send.
const STEP: Duration = Duration::from_millis(50);

#[derive(Clone, Default)]
struct Fixture;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {
            let service = Fixture.serve(rmcp::transport::stdio()).await?;
            service.waiting().await?;
        }
        [flag, addr] if flag == "--http" => serve_http(addr.parse()?).await?,
        _ => anyhow::bail!("usage: conformance-fixture [--http ADDR]"),
    }
    Ok(())
}

async fn serve_http(addr: SocketAddr) -> anyhow::Result<()> {
    let service = StreamableHttpService::new(
        || Ok(Fixture),
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
    ])
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
        message: &str,
        schema: Value,
    ) -> Result<CallToolResponse, ErrorData> {
        let params: ElicitRequestParams =
            from_json(json!({ "message": message, "requestedSchema": schema }))?;
        let request = ServerRequest::ElicitRequest(ElicitRequest::new(params));
        match context.peer.send_request(request).await {
            Ok(ClientResult::ElicitResult(answer)) => text_result(format!(
                "User response: {}",
                serde_json::to_string(&answer).unwrap_or_default()
            )),
            Ok(other) => text_result(format!("Elicitation answered with {other:?}")),
            Err(err) => text_result(format!("Elicitation failed: {err}")),
        }
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
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    }

    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        std::borrow::Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::LATEST))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        from_json(json!({ "tools": tools() }))
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
                match context.peer.create_message(request).await {
                    Ok(answer) => {
                        let answer = serde_json::to_value(&answer).unwrap_or_default();
                        let text = answer["content"]["text"].as_str().unwrap_or_default();
                        text_result(format!("LLM response: {text}"))
                    }
                    Err(err) => text_result(format!("Sampling failed: {err}")),
                }
            }
            "test_elicitation" => {
                let schema = json!({ "type": "object", "properties": {
                    "username": { "type": "string", "description": "User's response" },
                    "email": { "type": "string", "description": "User's email address" } },
                    "required": ["username", "email"] });
                self.elicit(&context, &argument("message"), schema).await
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
                self.elicit(&context, "Please select options", schema).await
            }
            "test_reconnection" => {
                tokio::time::sleep(STEP * 2).await;
                text_result("Reconnection test completed")
            }
            "json_schema_2020_12_tool" => text_result("JSON Schema 2020-12 tool called"),
            other => Err(ErrorData::invalid_params(
                format!("unknown tool `{other}`"),
                None,
            )),
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
        from_json(json!({ "prompts": [
            { "name": "test_simple_prompt", "description": "A simple prompt" },
            { "name": "test_prompt_with_arguments", "description": "A prompt with arguments",
              "arguments": [required("arg1"), required("arg2")] },
            { "name": "test_prompt_with_embedded_resource", "description": "A prompt with a resource",
              "arguments": [required("resourceUri")] },
            { "name": "test_prompt_with_image", "description": "A prompt with an image" },
        ] }))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
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
