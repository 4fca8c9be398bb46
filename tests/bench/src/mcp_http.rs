//! A minimal MCP streamable-HTTP client for load generation: one shared
//! connection pool, the real handshake and session header, responses read
//! as SSE or JSON. Lighter than a full SDK client, so the numbers are about
//! the server side.

use anyhow::{Context, bail};
use serde_json::{Value, json};

const PROTOCOL_VERSION: &str = "2025-06-18";

#[derive(Clone)]
pub struct HttpClient {
    http: reqwest::Client,
}

pub struct Session {
    id: String,
}

impl HttpClient {
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(1024)
                .build()
                .expect("HTTP client"),
        }
    }

    /// `initialize` then `notifications/initialized`.
    pub async fn initialize(&self, url: &str) -> anyhow::Result<Session> {
        let body = json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": { "name": "switchboard-bench", "version": "0" }
            }
        });
        let response = self.post(url, None, &body).await?;
        let id = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .context("no Mcp-Session-Id header")?
            .to_owned();
        read_result(response).await?;
        let session = Session { id };
        let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
        let status = self.post(url, Some(&session), &initialized).await?.status();
        if !status.is_success() {
            bail!("notifications/initialized: HTTP {status}");
        }
        Ok(session)
    }

    pub async fn call_tool(
        &self,
        url: &str,
        session: &Session,
        tool: &str,
        arguments: &Value,
    ) -> anyhow::Result<Value> {
        let body = json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": { "name": tool, "arguments": arguments }
        });
        let result = read_result(self.post(url, Some(session), &body).await?).await?;
        if result["isError"] == true {
            bail!("tool error: {result}");
        }
        Ok(result)
    }

    /// Number of tools in `tools/list`, and the time until the whole
    /// response arrived (parsing the body here is not the server's cost).
    pub async fn list_tools(
        &self,
        url: &str,
        session: &Session,
    ) -> anyhow::Result<(usize, std::time::Duration)> {
        let body = json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {} });
        let started = std::time::Instant::now();
        let response = self.post(url, Some(session), &body).await?;
        let sse = is_sse(&response);
        let text = response.text().await?;
        let took = started.elapsed();
        let result = parse_result(sse, &text)?;
        Ok((result["tools"].as_array().map_or(0, Vec::len), took))
    }

    pub async fn delete(&self, url: &str, session: &Session) -> anyhow::Result<()> {
        let status = self
            .http
            .delete(url)
            .header("mcp-session-id", &session.id)
            .header("mcp-protocol-version", PROTOCOL_VERSION)
            .send()
            .await?
            .status();
        if !status.is_success() {
            bail!("DELETE: HTTP {status}");
        }
        Ok(())
    }

    async fn post(
        &self,
        url: &str,
        session: Option<&Session>,
        body: &Value,
    ) -> anyhow::Result<reqwest::Response> {
        let mut request = self
            .http
            .post(url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(session) = session {
            request = request
                .header("mcp-session-id", &session.id)
                .header("mcp-protocol-version", PROTOCOL_VERSION);
        }
        let response = request.send().await?;
        if !response.status().is_success() {
            bail!("HTTP {}", response.status());
        }
        Ok(response)
    }
}

fn is_sse(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/event-stream"))
}

/// The `result` of the JSON-RPC response in a JSON or SSE body.
async fn read_result(response: reqwest::Response) -> anyhow::Result<Value> {
    let sse = is_sse(&response);
    let text = response.text().await?;
    parse_result(sse, &text)
}

fn parse_result(sse: bool, text: &str) -> anyhow::Result<Value> {
    let messages: Vec<Value> = if sse {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect()
    } else {
        vec![serde_json::from_str(text)?]
    };
    let response = messages
        .into_iter()
        .find(|m| m.get("result").is_some() || m.get("error").is_some())
        .context("no JSON-RPC response in the body")?;
    if let Some(error) = response.get("error") {
        bail!("JSON-RPC error: {error}");
    }
    Ok(response["result"].clone())
}
