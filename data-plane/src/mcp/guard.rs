//! Checks every body POSTed to `/mcp` before the MCP service parses it, so
//! every invalid message gets one kind of answer, a JSON-RPC error object:
//! over the size limit is 413; not JSON is a parse error (-32700); JSON
//! that is not a JSON-RPC 2.0 message (a batch, which MCP dropped, an `id`
//! that is not a string or an integer) is an invalid request (-32600); and
//! a request whose params do not parse is invalid params (-32602, with the
//! request's id). `tools/call`, the hot path, is read without allocating:
//! its params' shape is checked (rmcp would call the method unknown), and
//! the whole message is read as a strict parser reads it (serde_json's
//! 128-level nesting limit, escapes that decode, numbers in range), since
//! its arguments go to the server as written and a server that cannot parse
//! a line never answers it. Every other message is parsed as rmcp parses
//! it, so rmcp never refuses one with its own plain-text 415. The session,
//! if any, is untouched.
//!
//! It is also where draining (`drain.rs`) is enforced: once the replica
//! drains, a new request or stream is refused with 503 while answers,
//! notifications and cancellations still reach the calls in flight, and
//! every admitted POST holds the drain until its answer is written.

use std::{
    borrow::Cow,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::Method,
    middleware::Next,
    response::{IntoResponse, Response},
};
use prometheus_client::metrics::gauge::Gauge;
use rmcp::model::{ClientJsonRpcMessage, RequestId};
use serde::{
    Deserialize, Deserializer,
    de::{IgnoredAny, MapAccess, SeqAccess, Visitor},
};
use serde_json::value::RawValue;
use tracing::debug;

use super::answer::Refusal;
use crate::drain::{Blocker, Drain};

/// What the guard needs: the largest request body accepted, in bytes, and
/// the replica's drain.
#[derive(Clone, Debug)]
pub struct GuardState {
    pub body_limit: usize,
    pub read_timeout: Duration,
    /// Sessions held, in memory and parked (the metrics' gauges), and how
    /// many may be.
    pub sessions: Gauge,
    pub sessions_parked: Gauge,
    pub max_sessions: usize,
    pub drain: Drain,
}

/// What a JSON-RPC message must look like, read without copying.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    /// `Some("null")` for an explicit null, which a request may not carry.
    #[serde(borrow, default, deserialize_with = "present")]
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

pub async fn guard(State(state): State<GuardState>, request: Request, next: Next) -> Response {
    let limit = state.body_limit;
    if request.method() != Method::POST {
        if request.method() == Method::GET && state.drain.is_draining() {
            return Refusal::shutting_down().into_response();
        }
        // A legacy SSE stream is a new session.
        if request.method() == Method::GET && request.uri().path() == "/sse" && state.full() {
            return Refusal::too_many_sessions(state.max_sessions).into_response();
        }
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(state.read_timeout, axum::body::to_bytes(body, limit));
    let bytes = match read.await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(err)) => {
            let too_large = std::error::Error::source(&err)
                .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
            let refusal = if too_large {
                Refusal::too_large(limit)
            } else {
                Refusal::invalid_request(format!("cannot read the request body: {err}"))
            };
            return refusal.into_response();
        }
        Err(_) => {
            debug!(timeout = ?state.read_timeout, "refused a request body that did not arrive in time");
            return Refusal::too_slow(state.read_timeout).into_response();
        }
    };
    match check(&bytes) {
        Err(refusal) => {
            debug!(status = %refusal.status, code = refusal.code, "refused a malformed MCP request");
            return refusal.into_response();
        }
        Ok(Admitted { id: Some(id), .. }) if state.drain.is_draining() => {
            debug!("refused a request: draining");
            return Refusal::shutting_down().to(Some(id)).into_response();
        }
        Ok(Admitted {
            id,
            initialize: true,
        }) if !parts.headers.contains_key("mcp-session-id") && state.full() => {
            debug!(
                max = state.max_sessions,
                "refused a new session: at the limit"
            );
            return Refusal::too_many_sessions(state.max_sessions)
                .to(id)
                .into_response();
        }
        Ok(_) => {}
    }
    let blocker = state.drain.blocker();
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    response.map(|body| {
        Body::new(Held {
            body,
            _blocker: blocker,
        })
    })
}

/// A response body that holds the drain until it has been written.
struct Held {
    body: Body,
    _blocker: Blocker,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// What the guard learnt of a message it let through.
#[derive(Debug)]
struct Admitted<'a> {
    /// A request's id (notifications and answers have none to refuse).
    id: Option<&'a RawValue>,
    /// It is an `initialize` request.
    initialize: bool,
}

impl GuardState {
    /// No session more may open.
    fn full(&self) -> bool {
        let held = self.sessions.get() + self.sessions_parked.get();
        usize::try_from(held).unwrap_or(0) >= self.max_sessions
    }
}

/// Checks one message.
fn check(bytes: &Bytes) -> Result<Admitted<'_>, Refusal> {
    let envelope = read_envelope(bytes)?;
    let invalid = Refusal::invalid_request;
    if envelope.jsonrpc.as_deref() != Some("2.0") {
        return Err(invalid(
            "Invalid Request: `jsonrpc` must be \"2.0\"".to_owned(),
        ));
    }
    let is_error = envelope.error.is_some() && envelope.method.is_none();
    let is_response = envelope.id.is_some() && (envelope.result.is_some() || is_error);
    if envelope.method.is_none() && !is_response {
        return Err(invalid("Invalid Request: a message needs a `method` (request, notification) or an `id` with `result` or `error` (response)".to_owned()));
    }
    // An error response may say `"id": null` (it could not read the id).
    let id = envelope.id.filter(|id| !(is_error && id.get() == "null"));
    if let Some(id) = id
        && let Err(err) = serde_json::from_str::<RequestId>(id.get())
    {
        return Err(invalid(format!(
            "Invalid Request: `id` must be a string or an integer ({err})"
        )));
    }
    let invalid_params = |message: String| Refusal::invalid_params(message).to(id);
    match envelope.method.as_deref() {
        Some("tools/call") if id.is_some() => {
            check_call_params(envelope.params)
                .map_err(|problem| format!("Invalid params: tools/call {problem}"))
                .map_err(invalid_params)?;
            serde_json::from_slice::<Parsable>(bytes).map_err(|err| {
                invalid_params(format!(
                    "Invalid params: tools/call cannot be parsed as a server would: {err}"
                ))
            })?;
        }
        method => {
            if let Err(err) = serde_json::from_slice::<ClientJsonRpcMessage>(bytes) {
                return Err(match (method, id) {
                    (Some(method), Some(_)) => {
                        invalid_params(format!("Invalid params: {method}: {err}"))
                    }
                    _ => invalid(format!("Invalid Request: {err}")),
                });
            }
        }
    }
    Ok(Admitted {
        id: id.filter(|_| envelope.method.is_some()),
        initialize: envelope.method.as_deref() == Some("initialize"),
    })
}

/// The message's envelope, or why it is not a JSON-RPC message at all.
fn read_envelope(bytes: &Bytes) -> Result<Envelope<'_>, Refusal> {
    serde_json::from_slice(bytes).map_err(|err| {
        if err.is_syntax() || err.is_eof() {
            return Refusal::parse_error(format!("Parse error: {err}"));
        }
        let message = if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            "Invalid Request: JSON-RPC batches are not supported by MCP; send one message per request".to_owned()
        } else {
            "Invalid Request: expected a JSON-RPC 2.0 object with `jsonrpc`, and `method` or `result`/`error`".to_owned()
        };
        Refusal::invalid_request(message)
    })
}

/// A field that is there, `null` included (serde reads a null `Option` as
/// absent).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Any JSON value, read as a strict parser reads it into a tree (nesting
/// limit, escapes, number range) and kept nowhere.
struct Parsable;

impl<'de> Deserialize<'de> for Parsable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Parsable)
    }
}

impl<'de> Visitor<'de> for Parsable {
    type Value = Parsable;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(Parsable)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(Parsable)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(Parsable)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(Parsable)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(Parsable)
    }

    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(Parsable)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<Parsable>()?.is_some() {}
        Ok(Parsable)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<Parsable, Parsable>()?.is_some() {}
        Ok(Parsable)
    }
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

#[cfg(test)]
mod tests;
