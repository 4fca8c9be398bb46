//! Answers a POSTed request whose stream would carry nothing but its
//! response with that response as plain JSON.
//!
//! rmcp answers every request on a session with `text/event-stream`: the
//! headers and a priming event at once, the response later, then the end of
//! the stream, each its own write for both ends. Most calls produce exactly
//! one message, and MCP lets the server pick `application/json` for those
//! (clients must accept both). So the stream is read for up to [`WINDOW`]:
//! if its first message is the response, the client gets that as JSON in
//! one write; if a notification or a server request comes first, or nothing
//! within the window (a long call, which wants early headers and the
//! keep-alives), the stream goes out as it came, nothing lost or reordered.

use std::{ops::Range, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderValue, Method, header},
    middleware::Next,
    response::Response,
};
use futures::StreamExt;
use serde::{Deserialize, de::IgnoredAny};
use tracing::trace;

use crate::telemetry::metrics::Metrics;

/// How long a response may take and still be answered as JSON.
pub(super) const WINDOW: Duration = Duration::from_millis(50);

/// What a stream's first message turned out to be.
#[derive(Debug, PartialEq)]
enum First {
    /// No message yet: only priming events, comments, or a partial event.
    Pending,
    /// The request's response: the stream has nothing else to say.
    Response(Data),
    /// Something the client must see before the response.
    Other,
}

/// An event's data: where it lies in the stream when it is one line (the
/// usual case, copied nowhere), else the lines joined.
#[derive(Debug, PartialEq)]
enum Data {
    Line(Range<usize>),
    Joined(Vec<u8>),
}

/// The fields that tell a JSON-RPC response from other messages.
#[derive(Deserialize)]
struct Envelope {
    id: Option<IgnoredAny>,
    method: Option<IgnoredAny>,
    result: Option<IgnoredAny>,
    error: Option<IgnoredAny>,
}

pub async fn single_response(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let response = next.run(request).await;
    let is_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !is_stream {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let mut stream = body.into_data_stream();
    let mut seen = Vec::new();
    let mut failed = None;
    let window = tokio::time::sleep(WINDOW);
    tokio::pin!(window);
    loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            _ = &mut window => break,
        };
        match frame {
            Some(Ok(bytes)) => seen.extend_from_slice(&bytes),
            Some(Err(error)) => {
                failed = Some(error);
                break;
            }
            None => break,
        }
        match first_message(&seen) {
            First::Pending => {}
            First::Other => break,
            First::Response(data) => {
                let json = match data {
                    Data::Line(range) => Bytes::from(seen).slice(range),
                    Data::Joined(joined) => Bytes::from(joined),
                };
                metrics.answered_json.inc();
                trace!(bytes = json.len(), "answered as JSON");
                let headers = &mut parts.headers;
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                headers.remove(header::CACHE_CONTROL);
                return Response::from_parts(parts, Body::from(json));
            }
        }
    }
    metrics.answered_sse.inc();
    let replay = futures::stream::iter([Ok(Bytes::from(seen))].into_iter().chain(failed.map(Err)));
    Response::from_parts(parts, Body::from_stream(replay.chain(stream)))
}

/// Reads the SSE events in `stream` up to its first message.
fn first_message(stream: &[u8]) -> First {
    let mut data: Option<Data> = None;
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', stream) {
        let line = &stream[start..end];
        let line_start = start;
        start = end + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            match data.take() {
                None => continue, // a comment, or an event without data
                Some(Data::Line(range)) if range.is_empty() => continue, // priming
                Some(data) => {
                    let json = match &data {
                        Data::Line(range) => &stream[range.clone()],
                        Data::Joined(joined) => joined,
                    };
                    return if is_response(json) {
                        First::Response(data)
                    } else {
                        First::Other
                    };
                }
            }
        }
        let Some(value) = line.strip_prefix(b"data:") else {
            continue;
        };
        let skip = if value.starts_with(b" ") { 6 } else { 5 };
        let value = line_start + skip..line_start + line.len();
        data = Some(match data {
            None => Data::Line(value),
            Some(Data::Line(first)) => Data::Joined(join(&stream[first], &stream[value])),
            Some(Data::Joined(joined)) => Data::Joined(join(&joined, &stream[value])),
        });
    }
    First::Pending
}

fn join(before: &[u8], line: &[u8]) -> Vec<u8> {
    [before, b"\n", line].concat()
}

/// Whether a message is a JSON-RPC response (an id and a result or an
/// error, no method). rmcp writes `jsonrpc` and `id` first, so the key
/// after the id settles it without reading a large result; anything
/// written otherwise is parsed in full.
fn is_response(json: &[u8]) -> bool {
    let after_id = json
        .strip_prefix(br#"{"jsonrpc":"2.0","id":"#)
        .and_then(|rest| {
            let id_len = match rest.first() {
                Some(b'"') => memchr::memchr(b'"', &rest[1..]).map(|end| end + 2)?,
                _ => rest
                    .iter()
                    .position(|b| !b.is_ascii_digit() && *b != b'-')?,
            };
            rest.get(id_len..)
        });
    if let Some(after_id) = after_id {
        if after_id.starts_with(br#","result":"#) || after_id.starts_with(br#","error":"#) {
            return true;
        }
        if after_id.starts_with(br#","method":"#) {
            return false;
        }
    }
    serde_json::from_slice::<Envelope>(json).is_ok_and(|m| {
        m.id.is_some() && m.method.is_none() && (m.result.is_some() || m.error.is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESPONSE: &str = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;

    /// The JSON a stream would be answered with, if any.
    fn answer(stream: &str) -> Option<String> {
        match first_message(stream.as_bytes()) {
            First::Response(Data::Line(range)) => Some(stream[range].to_owned()),
            First::Response(Data::Joined(joined)) => String::from_utf8(joined).ok(),
            First::Pending | First::Other => None,
        }
    }

    #[test]
    fn a_response_after_the_priming_event_is_the_answer() {
        let stream = format!("data: \nid: 0/1\nretry: 3000\n\ndata: {RESPONSE}\nid: 1/1\n\n");
        assert_eq!(answer(&stream).as_deref(), Some(RESPONSE));
        let crlf = stream.replace('\n', "\r\n");
        assert_eq!(answer(&crlf).as_deref(), Some(RESPONSE));
        let unspaced = format!("data:{RESPONSE}\n\n");
        assert_eq!(answer(&unspaced).as_deref(), Some(RESPONSE));
    }

    #[test]
    fn error_responses_and_other_key_orders_are_answers_too() {
        for response in [
            r#"{"jsonrpc":"2.0","id":"a","error":{"code":-32602,"message":"no"}}"#,
            r#"{"jsonrpc":"2.0","id":"a\"b","result":{}}"#,
            r#"{"result":{"method":"x"},"id":-7,"jsonrpc":"2.0"}"#,
        ] {
            let stream = format!(": keep-alive\n\ndata: {response}\n\n");
            assert_eq!(answer(&stream).as_deref(), Some(response), "{response}");
        }
    }

    #[test]
    fn notifications_and_server_requests_keep_the_stream() {
        for first in [
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":0,"method":"sampling/createMessage","params":{}}"#,
            r#"{"params":{},"method":"ping","id":3,"jsonrpc":"2.0"}"#,
            "not json",
        ] {
            let stream = format!("data: \n\ndata: {first}\n\ndata: {RESPONSE}\n\n");
            assert_eq!(first_message(stream.as_bytes()), First::Other, "{first}");
        }
    }

    #[test]
    fn an_unfinished_event_waits_for_more() {
        for stream in [
            "data: \nid: 0/1\n\n".to_owned(),
            format!("data: \n\ndata: {RESPONSE}"),
            format!("data: \n\ndata: {RESPONSE}\n"),
        ] {
            assert_eq!(first_message(stream.as_bytes()), First::Pending, "{stream}");
        }
    }

    #[test]
    fn data_lines_of_one_event_are_joined() {
        let stream = "data: {\"jsonrpc\":\"2.0\",\ndata: \"id\":2,\"result\":{}}\n\n";
        assert_eq!(
            answer(stream).as_deref(),
            Some("{\"jsonrpc\":\"2.0\",\n\"id\":2,\"result\":{}}")
        );
    }
}
