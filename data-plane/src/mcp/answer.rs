//! The one place a refusal becomes an HTTP answer: a JSON-RPC error object
//! (the code, a message saying what to do, the request's id when there was
//! one to read) under the HTTP status that says the same. The guard, the
//! drain, the dispatch, legacy SSE and ending a session all answer
//! through it, so a client meets one shape of error however it connects.

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use rmcp::model::RequestId;
use serde_json::{json, value::RawValue};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC's implementation-defined server error.
pub const SERVER_ERROR: i64 = -32000;

/// Why a message was not taken.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: i64,
    pub message: String,
    /// The refused request's id, when it had one to answer.
    pub id: Option<Box<RawValue>>,
    /// A header the status calls for (`Allow` for 405, `Retry-After` for
    /// 429).
    header: Option<Box<(header::HeaderName, http::HeaderValue)>>,
}

impl Refusal {
    fn new(status: StatusCode, code: i64, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            id: None,
            header: None,
        }
    }

    /// Answers the request `id` names.
    pub fn to(mut self, id: Option<&RawValue>) -> Self {
        self.id = id.map(RawValue::to_owned);
        self
    }

    /// Answers the request `id`.
    pub fn answering(mut self, id: &RequestId) -> Self {
        // A request id is a number or a string: encoding it cannot fail.
        self.id = serde_json::value::to_raw_value(id).ok();
        self
    }

    /// Not JSON.
    pub fn parse_error(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, PARSE_ERROR, message)
    }

    /// JSON, but not a JSON-RPC message MCP takes.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, INVALID_REQUEST, message)
    }

    /// A request whose params do not parse.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, INVALID_PARAMS, message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            INVALID_REQUEST,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    }

    /// A body that did not arrive within `timeout`.
    pub fn too_slow(timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            INVALID_REQUEST,
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs_f64()
            ),
        )
    }

    /// No token, or one no client has.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, SERVER_ERROR, message)
    }

    /// An `Accept` header without a type the answer may come in.
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_ACCEPTABLE, INVALID_REQUEST, message)
    }

    /// A body that is not JSON by its `Content-Type`.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, INVALID_REQUEST, message)
    }

    /// A second stream where one at a time is allowed.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, INVALID_REQUEST, message)
    }

    /// An HTTP method the endpoint does not take; `allow` lists those it does.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut refusal = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            INVALID_REQUEST,
            format!("method not allowed: use {allow}"),
        );
        refusal.header = Some(Box::new((
            header::ALLOW,
            http::HeaderValue::from_static(allow),
        )));
        refusal
    }

    /// A client over its requests per second; `retry_after` is when a
    /// request would be let in.
    pub fn rate_limited(client: &str, rate: f64, retry_after: std::time::Duration) -> Self {
        let seconds = retry_after.as_secs_f64().ceil().max(1.0);
        let mut refusal = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            SERVER_ERROR,
            format!(
                "client `{client}` is over its limit of {rate} requests per second: retry in {seconds} s"
            ),
        );
        let seconds = http::HeaderValue::from(seconds as u64);
        refusal.header = Some(Box::new((header::RETRY_AFTER, seconds)));
        refusal
    }

    /// A new session of a client that holds as many as one client may.
    pub fn too_many_client_sessions(client: &str, max: usize) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            SERVER_ERROR,
            format!(
                "client `{client}` holds its limit of {max} sessions: end sessions it no longer uses (DELETE)"
            ),
        )
    }

    /// A `Host` or `Origin` this gateway does not serve.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, INVALID_REQUEST, message)
    }

    /// A session id this gateway does not hold (any more): the client
    /// starts a new session.
    pub fn unknown_session(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, INVALID_REQUEST, message)
    }

    /// A new session when the gateway holds as many as it may.
    pub fn too_many_sessions(max: usize) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            SERVER_ERROR,
            format!(
                "the gateway holds its limit of {max} sessions: end sessions you no longer use (DELETE), or retry later"
            ),
        )
    }

    /// New work while the replica drains.
    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            SERVER_ERROR,
            "the gateway is shutting down: retry on another replica",
        )
    }
}

impl Refusal {
    /// The JSON-RPC error object alone, for a stream.
    pub fn body(&self) -> axum::body::Bytes {
        // Written as it came: turning the raw id into a `Value` could fail.
        let id = self.id.as_deref().map_or("null", RawValue::get);
        let error = json!({ "code": self.code, "message": self.message });
        format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{error}}}"#).into()
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = self.body();
        let content_type = [(header::CONTENT_TYPE, "application/json")];
        let mut response = (self.status, content_type, body).into_response();
        if let Some(header) = self.header {
            let (name, value) = *header;
            response.headers_mut().insert(name, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(refusal: Refusal) -> (u16, serde_json::Value) {
        let response = refusal.into_response();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).expect("JSON"))
    }

    #[tokio::test]
    async fn refusals_are_json_rpc_errors_with_the_request_id_as_written() {
        let id = RawValue::from_string(r#""a\"b""#.to_owned()).expect("raw id");
        let (status, answer) = body(Refusal::invalid_params("no").to(Some(&id))).await;
        assert_eq!(status, 400);
        assert_eq!(
            answer,
            json!({ "jsonrpc": "2.0", "id": "a\"b", "error": { "code": -32602, "message": "no" } })
        );
        let (status, answer) = body(Refusal::shutting_down()).await;
        assert_eq!((status, &answer["id"]), (503, &serde_json::Value::Null));
        assert_eq!(answer["error"]["code"], SERVER_ERROR);
    }
}
