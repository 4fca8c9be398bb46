//! Checks every body POSTed to `/mcp` before the MCP service parses it:
//! over the size limit is 413, not JSON is a JSON-RPC parse error (-32700),
//! JSON that is not a JSON-RPC 2.0 message (or a batch, which MCP dropped)
//! is an invalid request (-32600), and a `tools/call` without a string
//! `name` or with `arguments` or `_meta` that are not objects has invalid
//! params (-32602, with the request's id; rmcp would call the method
//! unknown). Each answer is a JSON-RPC error object,
//! so clients and people both see what was wrong; the session, if any, is
//! untouched. The check borrows from the body and allocates nothing for
//! well-formed messages.

use std::borrow::Cow;

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, de::IgnoredAny};
use serde_json::json;
use serde_json::value::RawValue;
use tracing::debug;

/// Largest request body accepted, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// Why a body was refused, answered as a JSON-RPC error object.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: i64,
    message: String,
    /// The refused request's id, when it had one to answer.
    id: Option<Box<RawValue>>,
}

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const INVALID_PARAMS: i64 = -32602;

/// What a JSON-RPC message must look like, read without copying.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    result: Option<IgnoredAny>,
    error: Option<IgnoredAny>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

/// The parts of `tools/call` params whose type rmcp needs to dispatch it.
#[derive(Deserialize)]
struct CallParams<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
    #[serde(borrow, rename = "_meta")]
    meta: Option<&'a RawValue>,
}

pub async fn guard(State(limit): State<BodyLimit>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, limit.0).await {
        Ok(bytes) => bytes,
        Err(err) => {
            let too_large = std::error::Error::source(&err)
                .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
            let refusal = if too_large {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    INVALID_REQUEST,
                    format!("request body exceeds the limit of {} bytes", limit.0),
                )
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    INVALID_REQUEST,
                    format!("cannot read the request body: {err}"),
                )
            };
            return refusal.into_response();
        }
    };
    if let Err(refusal) = check(&bytes) {
        debug!(status = %refusal.status, code = refusal.code, "refused a malformed MCP request");
        return refusal.into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn check(bytes: &Bytes) -> Result<(), Refusal> {
    let envelope: Envelope<'_> = match serde_json::from_slice(bytes) {
        Ok(envelope) => envelope,
        Err(err) if err.is_syntax() || err.is_eof() => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                PARSE_ERROR,
                format!("Parse error: {err}"),
            ));
        }
        Err(_) => {
            let message = if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
                "Invalid Request: JSON-RPC batches are not supported by MCP; send one message per request".to_owned()
            } else {
                "Invalid Request: expected a JSON-RPC 2.0 object with `jsonrpc`, and `method` or `result`/`error`".to_owned()
            };
            return Err(error(StatusCode::BAD_REQUEST, INVALID_REQUEST, message));
        }
    };
    if envelope.jsonrpc.as_deref() != Some("2.0") {
        return Err(error(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "Invalid Request: `jsonrpc` must be \"2.0\"".to_owned(),
        ));
    }
    let is_response =
        envelope.id.is_some() && (envelope.result.is_some() || envelope.error.is_some());
    if envelope.method.is_none() && !is_response {
        return Err(error(
            StatusCode::BAD_REQUEST,
            INVALID_REQUEST,
            "Invalid Request: a message needs a `method` (request, notification) or an `id` with `result` or `error` (response)".to_owned(),
        ));
    }
    if envelope.method.as_deref() == Some("tools/call")
        && let Some(id) = envelope.id
        && let Err(problem) = check_call_params(envelope.params)
    {
        let mut refusal = error(
            StatusCode::BAD_REQUEST,
            INVALID_PARAMS,
            format!("Invalid params: tools/call {problem}"),
        );
        // Only a valid id (a string or a number) is echoed, as it came.
        let valid_id = matches!(id.get().as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'));
        refusal.id = valid_id.then(|| id.to_owned());
        return Err(refusal);
    }
    Ok(())
}

/// What is wrong with `tools/call` params, if anything.
fn check_call_params(params: Option<&RawValue>) -> Result<(), &'static str> {
    let is = |value: Option<&RawValue>, first: u8| {
        value.is_some_and(|v| v.get().as_bytes().first() == Some(&first))
    };
    let is_null = |value: Option<&RawValue>| value.is_some_and(|v| v.get() == "null");
    let params = params.ok_or("needs `params` with a `name`")?;
    let call: CallParams<'_> =
        serde_json::from_str(params.get()).map_err(|_| "needs `params` as an object")?;
    if !is(call.name, b'"') {
        return Err("needs `params.name` as a string");
    }
    if call.arguments.is_some() && !is(call.arguments, b'{') && !is_null(call.arguments) {
        return Err("needs `params.arguments` as an object");
    }
    if call.meta.is_some() && !is(call.meta, b'{') && !is_null(call.meta) {
        return Err("needs `params._meta` as an object");
    }
    Ok(())
}

fn error(status: StatusCode, code: i64, message: String) -> Refusal {
    Refusal {
        status,
        code,
        message,
        id: None,
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        // Written as it came: turning the raw id into a `Value` could fail.
        let id = self.id.as_deref().map_or("null", RawValue::get);
        let error = json!({ "code": self.code, "message": self.message });
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{error}}}"#);
        let content_type = [(http::header::CONTENT_TYPE, "application/json")];
        (self.status, content_type, body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The HTTP status and JSON-RPC error code `check` answers with.
    fn refusal(body: &str) -> Option<(StatusCode, i64)> {
        let refusal = check(&Bytes::from(body.to_owned())).err()?;
        assert!(!refusal.message.is_empty());
        Some((refusal.status, refusal.code))
    }

    #[test]
    fn well_formed_messages_pass() {
        for ok in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":"a","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":3,"error":{"code":1,"message":"x"}}"#,
        ] {
            assert!(check(&Bytes::from(ok)).is_ok(), "{ok}");
        }
    }

    #[test]
    fn tool_calls_need_a_name_and_object_arguments() {
        for ok in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":null,"_meta":null}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"x":[1]},"_meta":{}}}"#,
        ] {
            assert!(check(&Bytes::from(ok)).is_ok(), "{ok}");
        }
        for bad in [
            r#"{"jsonrpc":"2.0","id":"q","method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":"q","method":"tools/call","params":[]}"#,
            r#"{"jsonrpc":"2.0","id":"q","method":"tools/call","params":{"name":5}}"#,
            r#"{"jsonrpc":"2.0","id":"q","method":"tools/call","params":{"arguments":{}}}"#,
            r#"{"jsonrpc":"2.0","id":"q","method":"tools/call","params":{"name":"a","arguments":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":"q","method":"tools/call","params":{"name":"a","_meta":[]}}"#,
        ] {
            let refused = check(&Bytes::from(bad)).expect_err(bad);
            assert_eq!(
                (refused.status, refused.code),
                (StatusCode::BAD_REQUEST, INVALID_PARAMS),
                "{bad}"
            );
            assert_eq!(
                refused.id.map(|id| id.get().to_owned()).as_deref(),
                Some(r#""q""#)
            );
        }
    }

    #[test]
    fn only_a_valid_id_is_echoed() {
        let nested = format!(
            r#"{{"jsonrpc":"2.0","id":{}1{},"method":"tools/call","params":{{"name":5}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let refused = check(&Bytes::from(nested)).expect_err("invalid params");
        assert!(refused.id.is_none());
        let body = refused.into_response();
        assert_eq!(body.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn malformed_messages_get_the_json_rpc_code() {
        let parse_error = Some((StatusCode::BAD_REQUEST, PARSE_ERROR));
        assert_eq!(refusal(r#"{"jsonrpc":"2.0","#), parse_error);
        assert_eq!(refusal("not json"), parse_error);
        for invalid in [
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            r#"{"id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
            r#""just a string""#,
        ] {
            let invalid_request = Some((StatusCode::BAD_REQUEST, INVALID_REQUEST));
            assert_eq!(refusal(invalid), invalid_request, "{invalid}");
        }
    }
}
