//! The stdio bridge, for clients that can only start a command
//! (`switchboard-gateway bridge --url … --caller …`). It relays JSON-RPC
//! messages unchanged: each line on stdin is POSTed to the gateway's
//! `/mcp`, and every message of the answer (JSON or an SSE stream) becomes
//! one line on stdout. Once the session exists, a GET stream carries what
//! the gateway sends on its own (list changes, server requests). Every
//! request names the caller in `x-switchboard-caller`, so the gateway's
//! logs and traces say who it was. When the gateway forgets the session
//! (idle expiry, a restart), the bridge opens a new one by replaying the
//! client's `initialize` and retries, since a stdio client never sees the
//! 404 that would tell it to. Nothing but protocol goes to stdout.

use proto::auth::Token;
use std::{sync::Arc, time::Duration};

use anyhow::Context;
use futures::StreamExt;
use parking_lot::Mutex;
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use sse_stream::SseStream;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

const SESSION_HEADER: &str = "mcp-session-id";
const PROTOCOL_HEADER: &str = "mcp-protocol-version";
const CALLER_HEADER: &str = "x-switchboard-caller";
/// Lines waiting for stdout before readers of the gateway wait.
const OUTPUT_BUFFER: usize = 256;
/// The GET stream reconnects after this, doubling up to the cap.
const FIRST_RECONNECT: Duration = Duration::from_millis(200);
const MAX_RECONNECT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// The gateway's MCP endpoint, e.g. `http://127.0.0.1:8787/mcp`.
    pub url: String,
    /// Who is calling, for the gateway's logs, metrics and traces.
    pub caller: Option<String>,
    /// An `McpClient`'s bearer token, sent with every request.
    pub token: Option<Token>,
}

/// What the bridge learned from `initialize`.
#[derive(Default)]
struct Session {
    id: Option<String>,
    protocol_version: Option<String>,
}

#[derive(Clone)]
struct Bridge {
    config: Arc<BridgeConfig>,
    http: reqwest::Client,
    session: Arc<Mutex<Session>>,
    /// The client's `initialize`, replayed to open a new session.
    initialize: Arc<Mutex<Option<Value>>>,
    /// One new session at a time, however many requests found it gone.
    resuming: Arc<tokio::sync::Mutex<()>>,
    output: mpsc::Sender<String>,
    stop: CancellationToken,
}

/// Runs until stdin closes, then ends the gateway session.
pub async fn run(config: BridgeConfig) -> anyhow::Result<()> {
    let (output, mut lines_out) = mpsc::channel::<String>(OUTPUT_BUFFER);
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = lines_out.recv().await {
            stdout.write_all(line.as_bytes()).await?;
            stdout.write_all(b"\n").await?;
            stdout.flush().await?;
        }
        anyhow::Ok(())
    });
    let bridge = Bridge {
        config: Arc::new(config),
        http: reqwest::Client::builder()
            .build()
            .context("building the HTTP client")?,
        session: Arc::default(),
        initialize: Arc::default(),
        resuming: Arc::default(),
        output,
        stop: CancellationToken::new(),
    };
    info!(url = %bridge.config.url, caller = bridge.config.caller.as_deref(), "bridge started");
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = stdin.next_line().await.context("reading stdin")? {
        let message: Value = match serde_json::from_str(&line) {
            Ok(message) => message,
            Err(err) if !line.trim().is_empty() => {
                let error = rpc_error(&Value::Null, -32700, format!("parse error: {err}"));
                bridge.emit(error).await;
                continue;
            }
            Err(_) => continue,
        };
        // The session must exist before anything else is sent.
        if message["method"] == "initialize" {
            *bridge.initialize.lock() = Some(message.clone());
            bridge.clone().post(message).await;
            bridge.start_listening();
        } else {
            tokio::spawn(bridge.clone().post(message));
        }
    }
    bridge.stop.cancel();
    bridge.end_session().await;
    drop(bridge);
    writer.await.context("stdout writer")??;
    info!("stdin closed; bridge stopped");
    Ok(())
}

// === impl Bridge ===

impl Bridge {
    fn request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, &self.config.url)
            .header(header::ACCEPT, "application/json, text/event-stream");
        let session = self.session.lock();
        if let Some(id) = &session.id {
            request = request.header(SESSION_HEADER, id);
        }
        if let Some(version) = &session.protocol_version {
            request = request.header(PROTOCOL_HEADER, version);
        }
        if let Some(token) = &self.config.token {
            request = request.bearer_auth(token.expose());
        }
        if let Some(caller) = &self.config.caller {
            request = request.header(CALLER_HEADER, caller);
        }
        request
    }

    fn send(&self, message: &Value) -> impl Future<Output = reqwest::Result<reqwest::Response>> {
        self.request(reqwest::Method::POST)
            .header(header::CONTENT_TYPE, "application/json")
            .body(message.to_string())
            .send()
    }

    /// POSTs one message and relays whatever comes back. A request the
    /// gateway could not answer gets a JSON-RPC error, never silence.
    async fn post(self, message: Value) {
        let id = message
            .get("id")
            .filter(|_| message.get("method").is_some())
            .cloned();
        let initialize = message["method"] == "initialize";
        for attempt in 0..2 {
            let sent_with = self.session.lock().id.clone();
            let response = match self.send(&message).await {
                Ok(response) => response,
                Err(err) => {
                    warn!(error = %err, "gateway unreachable");
                    if let Some(id) = id {
                        let message = format!(
                            "switchboard gateway at {} is unreachable: {err}",
                            self.config.url
                        );
                        self.emit(rpc_error(&id, -32603, message)).await;
                    }
                    return;
                }
            };
            let expired = response.status() == StatusCode::NOT_FOUND && sent_with.is_some();
            if expired && !initialize && attempt == 0 && self.resume(sent_with).await {
                continue;
            }
            self.relay_response(response, id.as_ref(), initialize, false)
                .await;
            return;
        }
    }

    /// Relays one POST's answer (unless `quiet`), remembering the session
    /// an `initialize` opened.
    async fn relay_response(
        &self,
        response: reqwest::Response,
        id: Option<&Value>,
        initialize: bool,
        quiet: bool,
    ) {
        if initialize && let Some(session) = response.headers().get(SESSION_HEADER) {
            self.session.lock().id = session.to_str().ok().map(str::to_owned);
        }
        let status = response.status();
        let is_sse = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if is_sse {
            self.relay_stream(response, initialize, quiet).await;
            return;
        }
        let body = response.text().await.unwrap_or_default();
        match serde_json::from_str::<Value>(&body) {
            Ok(answer) if answer.is_object() => {
                self.remember_version(initialize, &answer);
                if !quiet {
                    self.emit(answer).await;
                }
            }
            _ if status.is_success() || quiet => {}
            _ => {
                if let Some(id) = id {
                    let message = format!(
                        "switchboard gateway answered HTTP {status}: {}",
                        body.trim()
                    );
                    self.emit(rpc_error(id, -32603, message)).await;
                }
            }
        }
    }

    /// Opens a new session in place of `stale` by replaying the client's
    /// `initialize`; `true` once a session is there to retry on.
    async fn resume(&self, stale: Option<String>) -> bool {
        let _one = self.resuming.lock().await;
        if self.session.lock().id != stale {
            return true;
        }
        let Some(mut initialize) = self.initialize.lock().clone() else {
            return false;
        };
        initialize["id"] = json!("switchboard-bridge-resume");
        *self.session.lock() = Session::default();
        match self.send(&initialize).await {
            Ok(response) if response.status().is_success() => {
                self.relay_response(response, None, true, true).await;
            }
            Ok(response) => {
                warn!(status = %response.status(), "could not open a new gateway session");
                return false;
            }
            Err(err) => {
                warn!(error = %err, "could not open a new gateway session");
                return false;
            }
        }
        if self.session.lock().id.is_none() {
            return false;
        }
        let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
        if let Err(err) = self.send(&initialized).await {
            debug!(error = %err, "notifications/initialized not delivered");
        }
        self.start_listening();
        info!("the gateway forgot the session; opened a new one");
        true
    }

    async fn relay_stream(&self, response: reqwest::Response, initialize: bool, quiet: bool) {
        let mut events = SseStream::from_bytes_stream(response.bytes_stream());
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(err) => {
                    debug!(error = %err, "event stream ended");
                    return;
                }
            };
            let Some(data) = event.data.filter(|d| !d.trim().is_empty()) else {
                continue;
            };
            match serde_json::from_str::<Value>(&data) {
                Ok(message) => {
                    self.remember_version(initialize, &message);
                    if !quiet {
                        self.emit(message).await;
                    }
                }
                Err(err) => warn!(error = %err, "gateway sent an event that is not JSON"),
            }
        }
    }

    fn remember_version(&self, initialize: bool, answer: &Value) {
        if let Some(version) = answer["result"]["protocolVersion"]
            .as_str()
            .filter(|_| initialize)
        {
            self.session.lock().protocol_version = Some(version.to_owned());
        }
    }

    /// Keeps a GET stream open for messages the gateway sends on its own.
    fn start_listening(&self) {
        if self.session.lock().id.is_none() {
            return;
        }
        let bridge = self.clone();
        tokio::spawn(async move {
            let mut delay = FIRST_RECONNECT;
            loop {
                let opened = tokio::select! {
                    _ = bridge.stop.cancelled() => return,
                    opened = bridge.request(reqwest::Method::GET).send() => opened,
                };
                match opened {
                    Ok(response) if response.status().is_success() => {
                        delay = FIRST_RECONNECT;
                        tokio::select! {
                            _ = bridge.stop.cancelled() => return,
                            _ = bridge.relay_stream(response, false, false) => {}
                        }
                    }
                    // The gateway offers no such stream, or the session is gone.
                    Ok(response)
                        if matches!(
                            response.status(),
                            StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_FOUND
                        ) =>
                    {
                        debug!(status = %response.status(), "no event stream");
                        return;
                    }
                    Ok(response) => debug!(status = %response.status(), "event stream refused"),
                    Err(err) => debug!(error = %err, "event stream failed"),
                }
                tokio::select! {
                    _ = bridge.stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_RECONNECT);
            }
        });
    }

    async fn end_session(&self) {
        if self.session.lock().id.is_none() {
            return;
        }
        if let Err(err) = self.request(reqwest::Method::DELETE).send().await {
            debug!(error = %err, "could not end the session");
        }
    }

    async fn emit(&self, message: Value) {
        let _ = self.output.send(message.to_string()).await;
    }
}

fn rpc_error(id: &Value, code: i64, message: String) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}
