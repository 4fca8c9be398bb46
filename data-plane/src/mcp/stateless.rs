//! MCP 2026-07-28 beside the older revisions on the same `/mcp`. A client
//! of that revision sends no `initialize` and holds no session: each POST
//! carries its protocol version, capabilities and identity in `_meta`
//! (SEP-2575/2567) and names its method, and the tool, prompt or resource
//! it is about, in headers that must agree with the body (SEP-2243). Such
//! a request is checked here in the order and with the errors the revision
//! defines, then runs in a one-request session built from its `_meta`,
//! and its answer is shaped for the revision ([`shape`]): `resultType` on
//! every result, cache hints on lists and reads (those of the merged
//! catalog: none, `private`; SEP-2549), an unknown resource as `-32602`
//! (SEP-2164). What only sessions had (`initialize`, `ping`,
//! `logging/setLevel`, `resources/subscribe`) is `-32601`. A server's
//! question to such a client becomes an input-required round
//! (`rounds.rs`).

use axum::{
    body::Bytes,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use rmcp::model::{
    ClientCapabilities, ClientRequest, DiscoverResult, ErrorCode, ErrorData, GetMeta,
    Implementation, InitializeRequestParams, JsonObject, ProtocolVersion, RequestId,
    ServerCapabilities,
};
use serde::Deserialize;
use serde_json::{Value, json};

use std::{convert::Infallible, sync::Arc};

use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::{
    dispatch::{json_response, stream_response},
    guard::Incoming,
    methods::{encode, not_found},
    replay::KEEP_ALIVE,
    session::event,
};
use crate::catalog::Changes;

pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
const VERSION_HEADER: &str = "mcp-protocol-version";
const METHOD_HEADER: &str = "mcp-method";
const NAME_HEADER: &str = "mcp-name";
/// How a header value that is not plain ASCII is written (SEP-2243).
const BASE64_PREFIX: &str = "=?base64?";
const BASE64_SUFFIX: &str = "?=";

/// What the request is, read once.
struct Read<'a> {
    method: &'a str,
    meta: Option<&'a JsonObject>,
    /// The `Mcp-Name` the body calls for, if the method has one.
    name: Option<&'a str>,
}

/// The versions this endpoint serves, oldest first.
pub fn served() -> Vec<ProtocolVersion> {
    ProtocolVersion::known_up_to(&ProtocolVersion::LATEST).to_vec()
}

/// Whether a POST without a session id is one of this revision's:
/// `server/discover`, or a request whose `_meta` or `MCP-Protocol-Version`
/// names a revision without `initialize`.
pub fn applies(headers: &HeaderMap, incoming: &Incoming) -> bool {
    let Some(read) = read(incoming) else {
        return false;
    };
    if read.method == "server/discover" {
        return true;
    }
    let stateless = |version: &str| !version_of(version).has_initialize();
    read.meta
        .and_then(|meta| meta.get(META_VERSION))
        .and_then(Value::as_str)
        .is_some_and(stateless)
        || header(headers, VERSION_HEADER).is_some_and(stateless)
}

/// The revision's checks, in its order: `_meta` holds what it must
/// (`-32602`), the version header agrees with it (`-32020`), the version
/// is served (`-32022`), the method and name headers agree with the body
/// (`-32020`), the method exists in this revision (`-32601`). Passed, the
/// handshake of its one-request session, from its `_meta`.
pub fn admit(
    headers: &HeaderMap,
    incoming: &Incoming,
) -> Result<InitializeRequestParams, Box<Response>> {
    let (Some(read), Some(id)) = (read(incoming), id(incoming)) else {
        return Err(refuse(
            None,
            StatusCode::BAD_REQUEST,
            ErrorData::invalid_request("not a request", None),
        ));
    };
    let refuse = |status, error| refuse(Some(id), status, error);
    let meta = read.meta.cloned().unwrap_or_default();
    let missing: Vec<&str> = [META_VERSION, META_CAPABILITIES]
        .into_iter()
        .filter(|key| !meta.contains_key(*key))
        .collect();
    if !missing.is_empty() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            ErrorData::invalid_params(
                format!(
                    "a request without a session needs _meta.{}",
                    missing.join(", _meta.")
                ),
                None,
            ),
        ));
    }
    let requested = meta.get(META_VERSION).and_then(Value::as_str).unwrap_or("");
    let in_header = header(headers, VERSION_HEADER);
    if in_header != Some(requested) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            ErrorData::header_mismatch(
                format!(
                    "MCP-Protocol-Version ({}) must name the version in _meta.{META_VERSION} ({requested})",
                    in_header.unwrap_or("missing"),
                ),
                None,
            ),
        ));
    }
    let version = version_of(requested);
    if !served().contains(&version) || version.has_initialize() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            ErrorData::unsupported_protocol_version(version, &served()),
        ));
    }
    check_header(headers, METHOD_HEADER, Some(read.method))
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, e))?;
    check_header(headers, NAME_HEADER, read.name)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, e))?;
    if !served_method(incoming) {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            ErrorData::new(
                ErrorCode::METHOD_NOT_FOUND,
                format!(
                    "{} (`initialize`, `ping`, `logging/setLevel` and subscribe belonged to sessions, which {requested} has not)",
                    not_found(read.method)
                ),
                None,
            ),
        ));
    }
    let capabilities: ClientCapabilities = meta
        .get(META_CAPABILITIES)
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    let info = meta
        .get(META_CLIENT_INFO)
        .and_then(|i| serde_json::from_value(i.clone()).ok())
        .unwrap_or_else(|| Implementation::new("unnamed 2026-07-28 client", "0"));
    Ok(InitializeRequestParams::new(capabilities, info).with_protocol_version(version))
}

/// SEP-2243's custom headers: each argument of a `tools/call` whose
/// property the tool's `inputSchema` marks with `x-mcp-header: <Name>`
/// comes with the header `Mcp-Param-<Name>` too, equal to it (as text,
/// base64 where written so); one missing, extra or different is refused
/// with `-32020`.
pub fn check_params(
    headers: &HeaderMap,
    incoming: &Incoming,
    schema: impl FnOnce(&str) -> Option<Arc<JsonObject>>,
) -> Result<(), Box<Response>> {
    let (id, name, arguments) = match incoming {
        Incoming::Call { id, params } => {
            let arguments = params
                .arguments
                .as_ref()
                .and_then(|raw| serde_json::from_str::<JsonObject>(raw.get()).ok());
            (id, params.name.as_str(), arguments)
        }
        Incoming::Request { id, request } => match &**request {
            ClientRequest::CallToolRequest(call) => {
                (id, &*call.params.name, call.params.arguments.clone())
            }
            _ => return Ok(()),
        },
        _ => return Ok(()),
    };
    let Some(schema) = schema(name) else {
        return Ok(());
    };
    let arguments = arguments.unwrap_or_default();
    let properties = schema.get("properties").and_then(Value::as_object);
    for (property, spec) in properties.into_iter().flatten() {
        let Some(header_name) = spec.get("x-mcp-header").and_then(Value::as_str) else {
            continue;
        };
        let header_name = format!("mcp-param-{}", header_name.to_ascii_lowercase());
        let wanted = arguments.get(property).map(|value| match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        });
        let sent = headers.get(&header_name);
        let agrees = match (&wanted, sent) {
            (None, None) => true,
            (Some(wanted), Some(_)) => check_header(headers, &header_name, Some(wanted)).is_ok(),
            _ => false,
        };
        if !agrees {
            let error = ErrorData::header_mismatch(
                format!(
                    "the {header_name} header must carry argument `{property}` as the body has it ({})",
                    wanted.as_deref().unwrap_or("absent")
                ),
                None,
            );
            return Err(refuse(Some(id), StatusCode::BAD_REQUEST, error));
        }
    }
    Ok(())
}

/// `server/discover`: the versions served, and what the servers behind
/// the gateway offer together.
pub fn discover(id: &RequestId, capabilities: ServerCapabilities) -> Response {
    let mut result = DiscoverResult::new(served(), capabilities);
    result.set_server_info(Implementation::new(
        "switchboard",
        env!("CARGO_PKG_VERSION"),
    ));
    json_response(encode(id, Ok(result)))
}

/// `subscriptions/listen`: the merged catalog's list changes the client
/// asked for, each tagged with the subscription (the request's id), on a
/// stream that lasts until the client leaves or the gateway stops, which
/// ends it with the request's result. Resource subscriptions are not
/// offered this way (the acknowledgement leaves them out).
pub fn listen(
    id: &RequestId,
    params: &Value,
    mut changes: watch::Receiver<Changes>,
    shutdown: CancellationToken,
) -> Response {
    let wanted = |key: &str| params["notifications"][key] == true;
    let (tools, prompts, resources) = (
        wanted("toolsListChanged"),
        wanted("promptsListChanged"),
        wanted("resourcesListChanged"),
    );
    let mut accepted = serde_json::Map::new();
    for (key, on) in [
        ("toolsListChanged", tools),
        ("promptsListChanged", prompts),
        ("resourcesListChanged", resources),
    ] {
        if on {
            accepted.insert(key.into(), json!(true));
        }
    }
    let id = serde_json::to_value(id).unwrap_or(Value::Null);
    let meta = json!({ SUBSCRIPTION_ID: id });
    let message = |method: &str, params: Value| {
        let body = json!({ "jsonrpc": "2.0", "method": method, "params": params });
        Ok::<_, Infallible>(event(body.to_string().as_bytes()))
    };
    let (tx, rx) = mpsc::channel(8);
    let acknowledged = message(
        "notifications/subscriptions/acknowledged",
        json!({ "notifications": accepted, "_meta": meta }),
    );
    tokio::spawn(async move {
        if tx.send(acknowledged).await.is_err() {
            return;
        }
        let mut seen = *changes.borrow_and_update();
        let mut keep_alive = tokio::time::interval_at(Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        loop {
            tokio::select! {
                () = tx.closed() => return,
                () = shutdown.cancelled() => break,
                _ = keep_alive.tick() => {
                    if tx.send(Ok(Bytes::from_static(b":\n\n"))).await.is_err() {
                        return;
                    }
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let now = *changes.borrow_and_update();
                    for (on, was, is, method) in [
                        (tools, seen.tools, now.tools, "notifications/tools/list_changed"),
                        (prompts, seen.prompts, now.prompts, "notifications/prompts/list_changed"),
                        (resources, seen.resources, now.resources, "notifications/resources/list_changed"),
                    ] {
                        if on && is != was && tx.send(message(method, json!({ "_meta": meta }))).await.is_err() {
                            return;
                        }
                    }
                    seen = now;
                }
            }
        }
        let done = json!({ "jsonrpc": "2.0", "id": id, "result": { "resultType": "complete", "_meta": meta } });
        let _ = tx.send(Ok(event(done.to_string().as_bytes()))).await;
    });
    stream_response(ReceiverStream::new(rx))
}

/// An answer as this revision writes it: `resultType` on a result, cache
/// hints on a list or a read (the merged catalog's answers are true for
/// this request only), `-32602` with the URI for an unknown resource.
/// Written for request `id`: a resumed call answers the retry.
pub fn shape(body: Bytes, id: &RequestId, uri: Option<&str>) -> Bytes {
    let Ok(mut answer) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    if let Some(object) = answer.as_object_mut() {
        object.insert("id".into(), serde_json::to_value(id).unwrap_or(Value::Null));
    }
    if let Some(result) = answer.get_mut("result").and_then(Value::as_object_mut) {
        result
            .entry("resultType")
            .or_insert_with(|| json!("complete"));
        let cacheable = [
            "tools",
            "prompts",
            "resources",
            "resourceTemplates",
            "contents",
        ]
        .iter()
        .any(|list| result.contains_key(*list));
        if cacheable {
            result.entry("ttlMs").or_insert_with(|| json!(0));
            result
                .entry("cacheScope")
                .or_insert_with(|| json!("private"));
        }
    } else if let Some(error) = answer.get_mut("error").and_then(Value::as_object_mut)
        && error.get("code").and_then(Value::as_i64) == Some(ErrorCode::RESOURCE_NOT_FOUND.0.into())
    {
        error.insert("code".into(), json!(ErrorCode::INVALID_PARAMS.0));
        if let Some(uri) = uri {
            let data = error.entry("data").or_insert_with(|| json!({}));
            if let Some(data) = data.as_object_mut() {
                data.entry("uri").or_insert_with(|| json!(uri));
            }
        }
    }
    serde_json::to_vec(&answer).map_or(body, Bytes::from)
}

/// The HTTP status of an answer sent alone as JSON: an error of the
/// revision's own that says the request itself was wrong (unsupported
/// version, a capability the client lacks, headers that disagree) is 400,
/// an unknown method 404, anything else 200 (a server's too: it is relayed
/// as the server's own transport would send it).
pub fn status_of(body: &[u8]) -> StatusCode {
    #[derive(Deserialize)]
    struct Answer {
        error: Option<Code>,
    }
    #[derive(Deserialize)]
    struct Code {
        code: i32,
    }
    // Results, the most of what passes here, are not read again.
    if memchr::memmem::find(body, b"\"error\"").is_none() {
        return StatusCode::OK;
    }
    let code = serde_json::from_slice::<Answer>(body)
        .ok()
        .and_then(|answer| answer.error)
        .map(|error| ErrorCode(error.code));
    match code {
        Some(
            ErrorCode::UNSUPPORTED_PROTOCOL_VERSION
            | ErrorCode::MISSING_REQUIRED_CLIENT_CAPABILITY
            | ErrorCode::HEADER_MISMATCH,
        ) => StatusCode::BAD_REQUEST,
        Some(ErrorCode::METHOD_NOT_FOUND) => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    }
}

/// The methods a request of this revision may call here.
fn served_method(incoming: &Incoming) -> bool {
    match incoming {
        Incoming::Call { .. } => true,
        Incoming::Request { request, .. } => matches!(
            **request,
            ClientRequest::DiscoverRequest(_)
                | ClientRequest::SubscriptionsListenRequest(_)
                | ClientRequest::CallToolRequest(_)
                | ClientRequest::ListToolsRequest(_)
                | ClientRequest::ListPromptsRequest(_)
                | ClientRequest::GetPromptRequest(_)
                | ClientRequest::ListResourcesRequest(_)
                | ClientRequest::ListResourceTemplatesRequest(_)
                | ClientRequest::ReadResourceRequest(_)
                | ClientRequest::CompleteRequest(_)
        ),
        _ => false,
    }
}

fn read(incoming: &Incoming) -> Option<Read<'_>> {
    Some(match incoming {
        Incoming::Call { params, .. } => Read {
            method: "tools/call",
            meta: Some(&params.meta),
            name: Some(&params.name),
        },
        Incoming::Request { request, .. } => Read {
            method: request.method(),
            meta: Some(&request.get_meta().0),
            name: match &**request {
                ClientRequest::GetPromptRequest(r) => Some(r.params.name.as_str()),
                ClientRequest::ReadResourceRequest(r) => Some(r.params.uri.as_str()),
                ClientRequest::SubscribeRequest(r) => Some(r.params.uri.as_str()),
                ClientRequest::UnsubscribeRequest(r) => Some(r.params.uri.as_str()),
                ClientRequest::CallToolRequest(r) => Some(&*r.params.name),
                _ => None,
            },
        },
        _ => return None,
    })
}

fn id(incoming: &Incoming) -> Option<&RequestId> {
    match incoming {
        Incoming::Call { id, .. } | Incoming::Request { id, .. } => Some(id),
        _ => None,
    }
}

fn version_of(text: &str) -> ProtocolVersion {
    serde_json::from_value(Value::from(text)).unwrap_or(ProtocolVersion::LATEST_WITH_INITIALIZE)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A SEP-2243 header agrees with the body: present exactly once when the
/// body calls for it, and equal (once decoded) to what the body says.
fn check_header(headers: &HeaderMap, name: &str, wanted: Option<&str>) -> Result<(), ErrorData> {
    let Some(wanted) = wanted else {
        return Ok(());
    };
    let mut values = headers.get_all(name).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(ErrorData::header_mismatch(
            format!("the {name} header must be sent once, as `{wanted}`"),
            None,
        ));
    };
    let value = value.to_str().ok().map(str::trim);
    // Base64 only between both markers; anything else is the text itself.
    let decoded = value.and_then(|v| {
        match v
            .strip_prefix(BASE64_PREFIX)
            .and_then(|rest| rest.strip_suffix(BASE64_SUFFIX))
        {
            Some(encoded) => STANDARD
                .decode(encoded)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok()),
            None => Some(v.to_owned()),
        }
    });
    if decoded.as_deref() == Some(wanted) {
        Ok(())
    } else {
        Err(ErrorData::header_mismatch(
            format!(
                "the {name} header ({}) does not match the body (`{wanted}`)",
                value.unwrap_or("not text")
            ),
            None,
        ))
    }
}

fn refuse(id: Option<&RequestId>, status: StatusCode, error: ErrorData) -> Box<Response> {
    let body = match id {
        Some(id) => encode::<()>(id, Err(error)),
        None => serde_json::to_vec(&json!({ "jsonrpc": "2.0", "id": null, "error": error }))
            .map(Bytes::from)
            .unwrap_or_default(),
    };
    Box::new((status, json_response(body)).into_response())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "mcp-param-region",
            HeaderValue::from_str(value).expect("ASCII"),
        );
        headers
    }

    #[test]
    fn header_values_are_text_or_base64_between_both_markers() {
        let agrees = |sent: &str, body: &str| {
            check_header(&headers(sent), "mcp-param-region", Some(body)).is_ok()
        };
        assert!(agrees("eu-west", "eu-west"));
        assert!(agrees("  eu-west ", "eu-west"), "surrounding whitespace");
        assert!(agrees("=?base64?SGVsbG8=?=", "Hello"));
        assert!(!agrees("=?base64?SGVsbG8?=", "Hello"), "padding missing");
        assert!(!agrees("=?base64?SGVs!!!bG8=?=", "Hello"), "not base64");
        assert!(
            agrees("SGVsbG8=", "SGVsbG8="),
            "no markers: the text itself"
        );
        assert!(
            agrees("=?base64?SGVsbG8=", "=?base64?SGVsbG8="),
            "one marker: text"
        );
        assert!(!agrees("us-east", "eu-west"));
        assert!(check_header(&HeaderMap::new(), "mcp-param-region", Some("x")).is_err());
        assert!(check_header(&HeaderMap::new(), "mcp-param-region", None).is_ok());
    }

    #[test]
    fn errors_that_say_the_request_was_wrong_say_it_in_the_status_too() {
        let error = |code: i32| {
            format!(r#"{{"jsonrpc":"2.0","id":1,"error":{{"code":{code},"message":"m"}}}}"#)
        };
        assert_eq!(status_of(error(-32021).as_bytes()), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(error(-32022).as_bytes()), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(error(-32020).as_bytes()), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(error(-32601).as_bytes()), StatusCode::NOT_FOUND);
        assert_eq!(status_of(error(-32602).as_bytes()), StatusCode::OK);
        assert_eq!(status_of(error(-32603).as_bytes()), StatusCode::OK);
        let result = br#"{"jsonrpc":"2.0","id":1,"result":{"error":{"code":-32021}}}"#;
        assert_eq!(status_of(result), StatusCode::OK);
    }

    #[test]
    fn answers_are_written_as_the_revision_writes_them() {
        let id = RequestId::Number(9);
        let listed = shape(
            br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#.as_slice().into(),
            &id,
            None,
        );
        let listed: Value = serde_json::from_slice(&listed).expect("JSON");
        assert_eq!(listed["id"], 9, "the retry's id");
        assert_eq!(listed["result"]["resultType"], "complete");
        assert_eq!(listed["result"]["ttlMs"], 0);
        assert_eq!(listed["result"]["cacheScope"], "private");
        let missing = shape(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32002,"message":"no"}}"#
                .as_slice()
                .into(),
            &id,
            Some("x://gone"),
        );
        let missing: Value = serde_json::from_slice(&missing).expect("JSON");
        assert_eq!(missing["error"]["code"], -32602);
        assert_eq!(missing["error"]["data"]["uri"], "x://gone");
    }
}
