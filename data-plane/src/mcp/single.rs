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

use std::{sync::Arc, time::Duration};

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

use crate::telemetry::metrics::{FRAMING_JSON, FRAMING_SSE, Metrics};

/// How long a response may take and still be answered as JSON.
const WINDOW: Duration = Duration::from_millis(50);

/// What a stream's first message turned out to be.
#[derive(Debug, PartialEq)]
enum First {
    /// No message yet: only priming events, comments, or a partial event.
    Pending,
    /// The request's response: the stream has nothing else to say.
    Response(Bytes),
    /// Something the client must see before the response.
    Other,
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
            First::Response(json) => {
                metrics.framing(FRAMING_JSON).inc();
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
    metrics.framing(FRAMING_SSE).inc();
    let replay = futures::stream::iter([Ok(Bytes::from(seen))].into_iter().chain(failed.map(Err)));
    Response::from_parts(parts, Body::from_stream(replay.chain(stream)))
}

/// Reads the SSE events in `stream` up to its first message.
fn first_message(stream: &[u8]) -> First {
    let mut data: Option<Vec<u8>> = None;
    for line in stream.split_inclusive(|b| *b == b'\n') {
        let Some(line) = line.strip_suffix(b"\n") else {
            break; // still being written
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            match data.take() {
                Some(data) if !data.is_empty() => return classify(data),
                _ => continue, // a priming event or a comment
            }
        }
        if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            match &mut data {
                Some(data) => {
                    data.push(b'\n');
                    data.extend_from_slice(value);
                }
                None => data = Some(value.to_vec()),
            }
        }
    }
    First::Pending
}

fn classify(data: Vec<u8>) -> First {
    match serde_json::from_slice::<Envelope>(&data) {
        Ok(m)
            if m.id.is_some()
                && m.method.is_none()
                && (m.result.is_some() || m.error.is_some()) =>
        {
            First::Response(Bytes::from(data))
        }
        _ => First::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESPONSE: &str = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;

    #[test]
    fn a_response_after_the_priming_event_is_the_answer() {
        let stream = format!("data: \nid: 0/1\nretry: 3000\n\ndata: {RESPONSE}\nid: 1/1\n\n");
        assert_eq!(
            first_message(stream.as_bytes()),
            First::Response(Bytes::from(RESPONSE))
        );
        let crlf = stream.replace('\n', "\r\n");
        assert_eq!(
            first_message(crlf.as_bytes()),
            First::Response(Bytes::from(RESPONSE))
        );
    }

    #[test]
    fn an_error_response_is_the_answer_too() {
        let error = r#"{"jsonrpc":"2.0","id":"a","error":{"code":-32602,"message":"no"}}"#;
        let stream = format!(": keep-alive\n\ndata: {error}\n\n");
        assert_eq!(
            first_message(stream.as_bytes()),
            First::Response(Bytes::from(error))
        );
    }

    #[test]
    fn notifications_and_server_requests_keep_the_stream() {
        for first in [
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":0,"method":"sampling/createMessage","params":{}}"#,
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
            first_message(stream.as_bytes()),
            First::Response(Bytes::from(
                "{\"jsonrpc\":\"2.0\",\n\"id\":2,\"result\":{}}"
            ))
        );
    }
}
