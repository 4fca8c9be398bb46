//! A streamable-HTTP client session spoken by hand: no GET stream, as a
//! simple client (or a script) leaves it, and every message of a response
//! stream visible in the order it came.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use futures::{StreamExt, stream::BoxStream};
use serde_json::{Value, json};

use crate::EVENTUALLY;

pub struct RawSession {
    http: reqwest::Client,
    url: String,
    id: String,
    /// JSON-RPC ids: unique among a session's requests in flight.
    next_request: Arc<AtomicU64>,
    /// Sent with every POST, as a browser-based client does.
    origin: Option<String>,
}

impl RawSession {
    /// The session id the gateway gave.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Initializes a session at `url` (protocol 2025-06-18).
    pub async fn open(url: &str) -> Self {
        Self::open_with(url, json!({})).await
    }

    /// [`Self::open`] for a client declaring `capabilities`.
    pub async fn open_with(url: &str, capabilities: Value) -> Self {
        // A request the gateway never answers fails the test, not hangs it.
        let http = reqwest::Client::builder()
            .timeout(EVENTUALLY)
            .build()
            .expect("HTTP client");
        let response = http
            .post(url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(
                json!({
                    "jsonrpc": "2.0", "id": 0, "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-06-18", "capabilities": capabilities,
                        "clientInfo": { "name": "raw-session", "version": "1" }
                    }
                })
                .to_string(),
            )
            .send()
            .await
            .expect("initialize");
        assert_eq!(response.status(), 200);
        let id = response.headers()["mcp-session-id"]
            .to_str()
            .expect("session id")
            .to_owned();
        let session = Self {
            http,
            url: url.to_owned(),
            id,
            next_request: Arc::new(AtomicU64::new(1)),
            origin: None,
        };
        let (status, _) = session
            .post(json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }))
            .await;
        assert_eq!(status, 202);
        session
    }

    /// The HTTP status and every JSON-RPC message answered, in order (one
    /// for a JSON body, each `data:` event of an SSE stream).
    pub async fn post_all(&self, message: Value) -> (u16, Vec<Value>) {
        let (status, _, messages) = self.post_framed(message).await;
        (status, messages)
    }

    /// [`Self::post_all`], with the answer's content type.
    pub async fn post_framed(&self, message: Value) -> (u16, String, Vec<Value>) {
        let response = self.send(message).await;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.text().await.unwrap_or_default();
        let messages = match serde_json::from_str(&body) {
            Ok(message) => vec![message],
            Err(_) => body
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
                .collect(),
        };
        (status, content_type, messages)
    }

    /// The same session, its requests sent to `url` (another replica).
    pub fn at(&self, url: &str) -> Self {
        Self {
            http: self.http.clone(),
            url: url.to_owned(),
            id: self.id.clone(),
            next_request: self.next_request.clone(),
            origin: self.origin.clone(),
        }
    }

    /// Opens the session's own stream (a `GET` without `Last-Event-ID`).
    pub async fn own_stream(&self) -> Events {
        // No overall timeout: the stream is read event by event.
        let response = reqwest::Client::new()
            .get(&self.url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &self.id)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
            .await
            .expect("GET /mcp");
        assert_eq!(response.status(), 200, "the session's own stream opens");
        Events::new(response)
    }

    /// Sends `Origin: origin` with every POST from now on.
    #[must_use]
    pub fn with_origin(mut self, origin: &str) -> Self {
        self.origin = Some(origin.to_owned());
        self
    }

    /// POSTs `message`; the response as soon as its headers are in.
    pub async fn send(&self, message: Value) -> reqwest::Response {
        self.send_text(message.to_string()).await
    }

    /// [`Self::send`] with a body as written (pretty-printed, malformed).
    pub async fn send_text(&self, body: String) -> reqwest::Response {
        let mut request = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &self.id)
            .header("mcp-protocol-version", "2025-06-18");
        if let Some(origin) = &self.origin {
            request = request.header("origin", origin);
        }
        request.body(body).send().await.expect("POST /mcp")
    }

    /// The HTTP status and the response among the messages answered.
    pub async fn post(&self, message: Value) -> (u16, Value) {
        let (status, messages) = self.post_all(message).await;
        let response = messages.into_iter().find(|m| m.get("id").is_some());
        (status, response.unwrap_or(Value::Null))
    }

    /// A `tools/call` under a fresh request id.
    pub async fn call(&self, tool: &str, arguments: Value) -> (u16, Value) {
        self.post(self.call_message(tool, arguments, Value::Null))
            .await
    }

    /// The message of a `tools/call` under a fresh request id, with `meta`
    /// as its `_meta` unless null.
    pub fn call_message(&self, tool: &str, arguments: Value, meta: Value) -> Value {
        let mut params = json!({ "name": tool, "arguments": arguments });
        if !meta.is_null() {
            params["_meta"] = meta;
        }
        json!({
            "jsonrpc": "2.0", "id": self.next_request.fetch_add(1, Ordering::Relaxed),
            "method": "tools/call", "params": params
        })
    }

    /// Picks a response stream up again after `last_event_id` (a GET with
    /// `Last-Event-ID`, as a client whose connection broke does).
    pub async fn resume(&self, last_event_id: &str) -> reqwest::Response {
        self.http
            .get(&self.url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &self.id)
            .header("mcp-protocol-version", "2025-06-18")
            .header("last-event-id", last_event_id)
            .send()
            .await
            .expect("GET /mcp")
    }

    pub async fn delete(&self) -> u16 {
        self.http
            .delete(&self.url)
            .header("mcp-session-id", &self.id)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
            .await
            .expect("DELETE /mcp")
            .status()
            .as_u16()
    }
}

/// The JSON-RPC messages of an SSE response, read as they come.
pub struct Events {
    stream: BoxStream<'static, reqwest::Result<Vec<u8>>>,
    /// Bytes, not text: a character may be split between chunks.
    buffer: Vec<u8>,
}

impl Events {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            stream: response
                .bytes_stream()
                .map(|chunk| chunk.map(|bytes| bytes.to_vec()))
                .boxed(),
            buffer: Vec::new(),
        }
    }

    /// The next message, within [`EVENTUALLY`]; events without data
    /// (priming, keep-alives) are skipped.
    pub async fn next(&mut self) -> Value {
        tokio::time::timeout(EVENTUALLY, self.read())
            .await
            .expect("a message in time")
    }

    /// The next message with `method`, within [`EVENTUALLY`], skipping the
    /// others.
    pub async fn next_of(&mut self, method: &str) -> Value {
        let wanted = async {
            loop {
                let message = self.read().await;
                if message["method"] == method {
                    return message;
                }
            }
        };
        tokio::time::timeout(EVENTUALLY, wanted)
            .await
            .unwrap_or_else(|_| panic!("no {method} in time"))
    }

    async fn read(&mut self) -> Value {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let event = String::from_utf8_lossy(&event);
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .collect();
                if data.is_empty() {
                    continue;
                }
                return serde_json::from_str(&data.join("\n")).expect("a JSON-RPC message");
            }
            let chunk = self
                .stream
                .next()
                .await
                .expect("the stream goes on")
                .expect("bytes");
            // CRLF line ends read as LF.
            self.buffer
                .extend(chunk.into_iter().filter(|b| *b != b'\r'));
        }
    }
}
