//! Reads every body POSTed to `/mcp` (and legacy `/message`) once, into the
//! [`Incoming`] message the dispatch (`dispatch.rs`) routes, so every
//! invalid message gets one kind of answer, a JSON-RPC error object:
//! over the size limit is 413; not JSON is a parse error (-32700); JSON
//! that is not a JSON-RPC 2.0 message (a batch, which MCP dropped, an `id`
//! that is not a string or an integer) is an invalid request (-32600); and
//! a request whose params do not parse is invalid params (-32602, with the
//! request's id). `tools/call`, the hot path, is read without parsing its
//! arguments into a tree: its params' shape is checked, the arguments are
//! kept as the client wrote them, and the whole message is read as a
//! strict parser reads it (serde_json's 128-level nesting limit, escapes
//! that decode, numbers in range), since the arguments go to the server as
//! written and a server that cannot parse a line never answers it. Every
//! other message is read into rmcp's model types. Sessions are the
//! dispatch's business: nothing here touches one.
//!
//! It is also where draining (`drain.rs`) is enforced: once the replica
//! drains, a new request or stream is refused with 503 while answers,
//! notifications and cancellations still reach the calls in flight, and
//! every admitted POST holds the drain until its answer is written.

use std::{
    borrow::Cow,
    collections::HashMap,
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
use rmcp::model::{ClientJsonRpcMessage, ClientNotification, ClientRequest, JsonObject, RequestId};
use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, SeqAccess, Visitor},
};
use serde_json::value::RawValue;
use tracing::debug;

use super::{answer::Refusal, methods::CallParams};
use crate::drain::{Blocker, Drain};

/// What the guard needs: the largest request body accepted, in bytes, how
/// long it may take to arrive, and the replica's drain.
#[derive(Clone, Debug)]
pub struct GuardState {
    pub body_limit: usize,
    pub read_timeout: Duration,
    pub drain: Drain,
}

/// A client message as the edge read it.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// `tools/call`, its arguments as the client wrote them.
    Call {
        id: RequestId,
        params: CallParams,
    },
    Request {
        id: RequestId,
        request: Box<ClientRequest>,
    },
    Notification(ClientNotification),
    /// The client's answer to a server request: its result or its error.
    Answer {
        id: RequestId,
        answer: Result<Box<RawValue>, Box<RawValue>>,
    },
    /// An error the client could not say which message it is about.
    Unaddressed,
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
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

pub async fn guard(State(state): State<GuardState>, request: Request, next: Next) -> Response {
    let limit = state.body_limit;
    if request.method() != Method::POST {
        if request.method() == Method::GET && state.drain.is_draining() {
            return Refusal::shutting_down().into_response();
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
    let incoming = match check(&bytes) {
        Err(refusal) => {
            debug!(status = %refusal.status, code = refusal.code, "refused a malformed MCP request");
            return refusal.into_response();
        }
        Ok(incoming) => incoming,
    };
    if state.drain.is_draining()
        && let Incoming::Call { id, .. } | Incoming::Request { id, .. } = &incoming
    {
        debug!("refused a request: draining");
        return Refusal::shutting_down().answering(id).into_response();
    }
    let blocker = state.drain.blocker();
    let mut parts = parts;
    parts.extensions.insert(incoming);
    let response = next.run(Request::from_parts(parts, Body::empty())).await;
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

/// Reads one message.
fn check(bytes: &Bytes) -> Result<Incoming, Refusal> {
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
    let raw_id = envelope.id.filter(|id| !(is_error && id.get() == "null"));
    let id = match raw_id {
        None => None,
        Some(raw) => Some(serde_json::from_str::<RequestId>(raw.get()).map_err(|err| {
            invalid(format!(
                "Invalid Request: `id` must be a string or an integer ({err})"
            ))
        })?),
    };
    let invalid_params = |message: String| Refusal::invalid_params(message).to(raw_id);
    if let (Some("tools/call"), Some(id)) = (envelope.method.as_deref(), &id) {
        let params = read_call_params(envelope.params)
            .map_err(|problem| format!("Invalid params: tools/call {problem}"))
            .map_err(invalid_params)?;
        serde_json::from_slice::<Parsable>(bytes).map_err(|err| {
            invalid_params(format!(
                "Invalid params: tools/call cannot be parsed as a server would: {err}"
            ))
        })?;
        return Ok(Incoming::Call {
            id: id.clone(),
            params,
        });
    }
    let message = serde_json::from_slice::<ClientJsonRpcMessage>(bytes).map_err(|err| {
        match (envelope.method.as_deref(), raw_id) {
            (Some(method), Some(_)) => invalid_params(format!("Invalid params: {method}: {err}")),
            _ => invalid(format!("Invalid Request: {err}")),
        }
    })?;
    Ok(match message {
        ClientJsonRpcMessage::Request(request) => Incoming::Request {
            id: request.id,
            request: Box::new(request.request),
        },
        ClientJsonRpcMessage::Notification(notification) => {
            Incoming::Notification(notification.notification)
        }
        ClientJsonRpcMessage::Response(_) | ClientJsonRpcMessage::Error(_) => {
            // Read by the type the server's request expects, later.
            let answer = match (envelope.result, envelope.error) {
                (Some(result), _) => Ok(result.to_owned()),
                (None, Some(error)) => Err(error.to_owned()),
                (None, None) => {
                    return Err(invalid(
                        "Invalid Request: an answer needs `result` or `error`".to_owned(),
                    ));
                }
            };
            match id {
                Some(id) => Incoming::Answer { id, answer },
                None => Incoming::Unaddressed,
            }
        }
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

/// `tools/call` params, or what is wrong with them.
fn read_call_params(params: Option<&RawValue>) -> Result<CallParams, &'static str> {
    let is = |value: &RawValue, first: u8| value.get().as_bytes().first() == Some(&first);
    let params = params.ok_or("needs `params` with a `name`")?;
    let mut fields: HashMap<String, Box<RawValue>> =
        serde_json::from_str(params.get()).map_err(|_| "needs `params` as an object")?;
    let name = fields
        .remove("name")
        .filter(|name| is(name, b'"'))
        .and_then(|name| serde_json::from_str::<String>(name.get()).ok())
        .ok_or("needs `params.name` as a string")?;
    let arguments = match fields.remove("arguments") {
        Some(arguments) if arguments.get() == "null" => None,
        Some(arguments) if is(&arguments, b'{') => Some(arguments),
        Some(_) => return Err("needs `params.arguments` as an object"),
        None => None,
    };
    let meta = match fields.remove("_meta") {
        Some(meta) if meta.get() == "null" => JsonObject::default(),
        Some(meta) if is(&meta, b'{') => {
            serde_json::from_str(meta.get()).map_err(|_| "needs `params._meta` as an object")?
        }
        Some(_) => return Err("needs `params._meta` as an object"),
        None => JsonObject::default(),
    };
    // Keys of a later revision: the call is read in full downstream.
    let params = (!fields.is_empty()).then(|| params.to_owned());
    Ok(CallParams {
        name,
        arguments,
        meta,
        params,
    })
}

#[cfg(test)]
mod tests;
