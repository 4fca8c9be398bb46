//! `switchboard-control check`: "is everything working?" in one command.
//! It checks, in order, what a user would: the control plane answers and
//! has its registry; every replica is connected and has applied the
//! current config; every server is ready on every replica; and a real MCP
//! round trip through the gateway (`initialize`, `tools/list`, and each
//! server's declared probe tool, `health.tool`, as clients call it) works.
//! It stops at the first failure and names it; the rest are skipped.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;
use serde_json::{Value, json};

use crate::auth::Token;

/// How long one check's HTTP request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the planes are, and what to prove oneself with.
pub struct Target {
    /// The control plane's HTTP API, e.g. `http://127.0.0.1:8789`.
    pub control_plane: String,
    /// The gateway's MCP endpoint, e.g. `http://127.0.0.1:8787/mcp`.
    pub gateway: String,
    pub admin_token: Option<Token>,
    /// An `McpClient`'s token (or a JWT), once the registry declares any.
    pub client_token: Option<Token>,
}

/// One check's outcome.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Fail,
    Skipped,
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub check: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

const CHECKS: [&str; 4] = [
    "control plane answers",
    "replicas connected and current",
    "servers ready",
    "MCP round trip through the gateway",
];

/// Runs every check in order, up to the first failure.
pub async fn run(target: &Target) -> Vec<Outcome> {
    let http = match reqwest::Client::builder().timeout(TIMEOUT).build() {
        Ok(http) => http,
        Err(err) => {
            return vec![Outcome {
                check: CHECKS[0],
                verdict: Verdict::Fail,
                detail: format!("cannot make an HTTP client: {err}"),
            }];
        }
    };
    let mut outcomes = Vec::new();
    let mut status = Value::Null;
    for (n, check) in CHECKS.into_iter().enumerate() {
        if outcomes
            .iter()
            .any(|o: &Outcome| o.verdict == Verdict::Fail)
        {
            outcomes.push(Outcome {
                check,
                verdict: Verdict::Skipped,
                detail: String::new(),
            });
            continue;
        }
        let result = match n {
            0 => control_plane(&http, target).await.map(|(detail, fetched)| {
                status = fetched;
                detail
            }),
            1 => replicas(&status),
            2 => servers(&status),
            _ => round_trip(&http, target, &probes(&status)).await,
        };
        outcomes.push(match result {
            Ok(detail) => Outcome {
                check,
                verdict: Verdict::Ok,
                detail,
            },
            Err(detail) => Outcome {
                check,
                verdict: Verdict::Fail,
                detail,
            },
        });
    }
    outcomes
}

/// One line per check, as a person reads them.
pub fn render(outcomes: &[Outcome]) -> String {
    outcomes
        .iter()
        .map(|o| {
            let mark = match o.verdict {
                Verdict::Ok => "ok  ",
                Verdict::Fail => "FAIL",
                Verdict::Skipped => "skip",
            };
            match o.detail.is_empty() {
                true => format!("{mark} {}\n", o.check),
                false => format!("{mark} {}: {}\n", o.check, o.detail),
            }
        })
        .collect()
}

/// The control plane is up, its registry loaded, and its status readable.
async fn control_plane(http: &reqwest::Client, target: &Target) -> Result<(String, Value), String> {
    let base = target.control_plane.trim_end_matches('/');
    let ready = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map_err(|e| format!("no answer from {base}: {}", e.without_url()))?;
    if !ready.status().is_success() {
        let body = ready.text().await.unwrap_or_default();
        return Err(format!("{base} is not ready: {}", body.trim()));
    }
    let mut request = http.get(format!("{base}/status"));
    if let Some(token) = &target.admin_token {
        request = request.bearer_auth(token.expose());
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("no answer from {base}/status: {}", e.without_url()))?;
    if response.status() == reqwest::StatusCode::UNAUTHORIZED {
        return Err(
            "its /status needs the admin token: --admin-token-file (`up` prints where it keeps it), or SWITCHBOARD_ADMIN_TOKEN".into(),
        );
    }
    if !response.status().is_success() {
        return Err(format!("{base}/status answered {}", response.status()));
    }
    let body = response
        .text()
        .await
        .map_err(|e| format!("{base}/status: {}", e.without_url()))?;
    let status: Value =
        serde_json::from_str(&body).map_err(|e| format!("{base}/status is not JSON: {e}"))?;
    let issues = status["issues"].as_array().map_or(0, Vec::len);
    let detail = match issues {
        0 => format!("{base}, registry without problems"),
        n => format!("{base}; {n} registry problem(s), see `issues` in its /status"),
    };
    Ok((detail, status))
}

/// Every connected replica has applied the current snapshot.
fn replicas(status: &Value) -> Result<String, String> {
    let version = status["snapshotVersion"].as_u64().unwrap_or_default();
    let replicas = status["replicas"].as_object().cloned().unwrap_or_default();
    let connected: Vec<(&String, &Value)> = replicas
        .iter()
        .filter(|(_, r)| r["connected"] == true)
        .collect();
    if connected.is_empty() {
        return Err("no gateway replica is connected to the control plane".into());
    }
    let behind: Vec<String> = connected
        .iter()
        .filter(|(_, r)| r["ackedVersion"].as_u64() != Some(version))
        .map(|(id, r)| match r["lastNack"]["reason"].as_str() {
            Some(reason) => format!("{id} refused version {version}: {reason}"),
            None => format!("{id} has not applied version {version} yet"),
        })
        .collect();
    if !behind.is_empty() {
        return Err(behind.join("; "));
    }
    Ok(format!(
        "{} replica(s) on config version {version}",
        connected.len()
    ))
}

/// Every server is ready on every connected replica.
fn servers(status: &Value) -> Result<String, String> {
    let replicas = status["replicas"].as_object().cloned().unwrap_or_default();
    let mut ready = 0;
    let mut problems = Vec::new();
    for (id, replica) in replicas.iter().filter(|(_, r)| r["connected"] == true) {
        for server in replica["servers"].as_array().into_iter().flatten() {
            let name = server["name"].as_str().unwrap_or("?");
            match server["state"].as_str() {
                Some("ready") => ready += 1,
                state => {
                    let why = server["reason"]
                        .as_str()
                        .or(server["lastError"].as_str())
                        .filter(|why| !why.is_empty())
                        .map(|why| format!(": {why}"))
                        .unwrap_or_default();
                    problems.push(format!(
                        "{name} is {} on {id}{why}",
                        state.unwrap_or("unknown")
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(format!("{ready} server(s) ready"))
    } else {
        Err(problems.join("; "))
    }
}

/// Each server's probe tool (client-facing name and arguments) as its
/// replicas report it, by server.
fn probes(status: &Value) -> BTreeMap<String, (String, Value)> {
    let replicas = status["replicas"].as_object().cloned().unwrap_or_default();
    replicas
        .values()
        .filter(|r| r["connected"] == true)
        .flat_map(|r| r["servers"].as_array().cloned().unwrap_or_default())
        .filter_map(|server| {
            let name = server["name"].as_str()?.to_owned();
            let tool = server["probe"]["name"].as_str()?.to_owned();
            Some((name, (tool, server["probe"]["arguments"].clone())))
        })
        .collect()
}

/// `initialize`, `tools/list`, each probe tool and the session's end, as
/// a client would.
async fn round_trip(
    http: &reqwest::Client,
    target: &Target,
    probes: &BTreeMap<String, (String, Value)>,
) -> Result<String, String> {
    let url = &target.gateway;
    let post = |body: Value, session: Option<&str>| {
        let mut request = http
            .post(url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("x-switchboard-caller", "switchboard-check")
            .body(body.to_string());
        if let Some(token) = &target.client_token {
            request = request.bearer_auth(token.expose());
        }
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let initialize = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": { "name": "switchboard-check", "version": env!("CARGO_PKG_VERSION") } } });
    let response = post(initialize, None)
        .await
        .map_err(|e| format!("no answer from {url}: {}", e.without_url()))?;
    match response.status().as_u16() {
        200 => {}
        401 => {
            return Err(format!(
                "{url} needs a client's token: --token-file or SWITCHBOARD_TOKEN"
            ));
        }
        other => return Err(format!("initialize answered HTTP {other}")),
    }
    let session = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or("initialize gave no Mcp-Session-Id")?;
    let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
    let _ = post(initialized, Some(&session)).await;
    let ask = |what: String, request: Value| {
        let post = &post;
        let session = &session;
        async move {
            let response = post(request, Some(session))
                .await
                .map_err(|e| format!("{what}: {}", e.without_url()))?;
            let status = response.status();
            let text = response
                .text()
                .await
                .map_err(|e| format!("{what}: {}", e.without_url()))?;
            if !status.is_success() {
                return Err(format!("{what} answered HTTP {status}: {text}"));
            }
            json_or_event(&text).ok_or_else(|| format!("{what} answered {text}"))
        }
    };
    let answer = async {
        let list = json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" });
        let reply = ask("tools/list".to_owned(), list).await?;
        let tools = reply["result"]["tools"]
            .as_array()
            .ok_or_else(|| format!("tools/list answered {reply}"))?
            .len();
        let mut probed = Vec::new();
        for (n, (server, (tool, arguments))) in probes.iter().enumerate() {
            let what = format!("server {server}'s probe tool {tool}");
            let call = json!({ "jsonrpc": "2.0", "id": 3 + n, "method": "tools/call",
                "params": { "name": tool, "arguments": arguments } });
            let reply = ask(what.clone(), call).await?;
            if let Some(message) = reply["error"]["message"].as_str() {
                return Err(format!("{what}: {message}"));
            }
            if reply["result"]["isError"] == true {
                let said: Vec<&str> = reply["result"]["content"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["text"].as_str())
                    .collect();
                return Err(format!("{what} failed: {}", said.join(" ")));
            }
            probed.push(tool.as_str());
        }
        Ok((tools, probed.join(", ")))
    }
    .await;
    // The session ends whatever tools/list did.
    let mut delete = http.delete(url).header("mcp-session-id", &session);
    if let Some(token) = &target.client_token {
        delete = delete.bearer_auth(token.expose());
    }
    let _ = delete.send().await;
    let (tools, probed) = answer?;
    Ok(match probed.is_empty() {
        true => format!("{url}: {tools} tool(s) listed"),
        false => format!("{url}: {tools} tool(s) listed; probe tools answered: {probed}"),
    })
}

/// A JSON-RPC reply, sent as JSON or as the data of an SSE event.
fn json_or_event(body: &str) -> Option<Value> {
    serde_json::from_str(body).ok().or_else(|| {
        body.lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
            .find(|message| message.get("id").is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_behind_and_servers_not_ready_are_named() {
        let status = json!({
            "snapshotVersion": 7,
            "replicas": {
                "a": { "connected": true, "ackedVersion": 7, "servers": [
                    { "name": "time", "state": "ready" },
                    { "name": "git", "state": "failed", "reason": "exited with status 1" },
                ] },
                "b": { "connected": true, "ackedVersion": 6,
                       "lastNack": { "version": 7, "reason": "rejected 1 resource" }, "servers": [] },
                "gone": { "connected": false, "ackedVersion": 1, "servers": [] },
            },
        });
        let behind = replicas(&status).expect_err("b is behind");
        assert!(
            behind.contains("b refused version 7: rejected 1 resource"),
            "{behind}"
        );
        assert!(!behind.contains("gone"), "{behind}");
        let failed = servers(&status).expect_err("git failed");
        assert_eq!(failed, "git is failed on a: exited with status 1");
        let none = json!({ "snapshotVersion": 1, "replicas": {} });
        assert!(replicas(&none).is_err());
    }

    #[test]
    fn the_report_has_one_line_per_check() {
        let outcomes = vec![
            Outcome {
                check: CHECKS[0],
                verdict: Verdict::Ok,
                detail: "up".into(),
            },
            Outcome {
                check: CHECKS[1],
                verdict: Verdict::Fail,
                detail: "no replica".into(),
            },
            Outcome {
                check: CHECKS[2],
                verdict: Verdict::Skipped,
                detail: String::new(),
            },
        ];
        assert_eq!(
            render(&outcomes),
            "ok   control plane answers: up\nFAIL replicas connected and current: no replica\nskip servers ready\n"
        );
    }
}
