//! The console's Tools page through a gateway: `GET /console/tools` and
//! `POST /console/tools/call` are relayed to a connected replica's REST
//! API (`/tools`, `/tools/call`), so the catalog is the one clients see
//! and a "try it" call is an ordinary call: the gateway authenticates the
//! caller, applies its policies, breakers and limits, and traces it. The
//! caller's credential comes in `x-switchboard-caller-token` (the
//! operator's own session stays in `authorization`, for this API) and goes
//! on as the gateway's `authorization`; without one the call is
//! anonymous, named `console`. Bodies are bounded both ways and the relay
//! has a deadline.

use std::time::Duration;

use axum::{
    Json,
    body::Bytes,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;
use tracing::{debug, warn};

use super::Console;

/// The header carrying the caller's own token to the gateway.
const CALLER_TOKEN: &str = "x-switchboard-caller-token";
/// A "try it" call's arguments.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// A catalog or a tool's result.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;
/// Longer than the gateway's own default call timeout, so its 504 says why.
const DEADLINE: Duration = Duration::from_secs(65);

/// Relays to replicas; cheap to clone.
#[derive(Clone)]
pub(super) struct GatewayClient {
    http: reqwest::Client,
}

#[derive(Deserialize)]
pub(super) struct Through {
    /// The replica to ask; the first connected one otherwise.
    replica: Option<String>,
}

impl GatewayClient {
    pub(super) fn new() -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(DEADLINE)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self { http }
    }
}

/// `GET /console/tools`: the merged catalog as the caller sees it.
pub(super) async fn tools(
    State(console): State<Console>,
    Query(through): Query<Through>,
    headers: HeaderMap,
) -> Response {
    relay(&console, through, &headers, None).await
}

/// `POST /console/tools/call`: `{"name", "arguments"}`, called through the
/// gateway.
pub(super) async fn call(
    State(console): State<Console>,
    Query(through): Query<Through>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if body.len() > MAX_REQUEST_BYTES {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a call's body may take {MAX_REQUEST_BYTES} bytes"),
        );
    }
    relay(&console, through, &headers, Some(body)).await
}

async fn relay(
    console: &Console,
    through: Through,
    headers: &HeaderMap,
    body: Option<Bytes>,
) -> Response {
    let replicas = console.admin.replicas.snapshot();
    let chosen = replicas.iter().find(|(id, r)| {
        r.connected
            && !r.peer_url.is_empty()
            && through.replica.as_ref().is_none_or(|wanted| wanted == *id)
    });
    let Some((replica, status)) = chosen else {
        let which = through
            .replica
            .map_or("no replica".into(), |id| format!("replica `{id}`"));
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{which} is connected with an address to reach it"),
        );
    };
    let base = status
        .peer_url
        .strip_suffix("/mcp")
        .unwrap_or(&status.peer_url);
    let path = if body.is_some() {
        "/tools/call"
    } else {
        "/tools"
    };
    let url = format!("{base}{path}?caller=console");
    let mut request = match &body {
        Some(body) => console
            .gateway
            .http
            .post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.clone()),
        None => console.gateway.http.get(&url),
    };
    if let Some(token) = headers.get(CALLER_TOKEN).and_then(|v| v.to_str().ok()) {
        request = request.bearer_auth(token.trim());
    }
    debug!(%replica, path, "relaying a console request to a gateway");
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(error) => {
            warn!(%replica, %error, "the console could not reach a gateway");
            return problem(
                StatusCode::BAD_GATEWAY,
                format!("replica `{replica}` did not answer: {error}"),
            );
        }
    };
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    if answer
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return problem(
            StatusCode::BAD_GATEWAY,
            format!("the gateway's answer is over {MAX_ANSWER_BYTES} bytes"),
        );
    }
    let mut answer = answer;
    let mut bytes = Vec::new();
    loop {
        match answer.chunk().await {
            Ok(Some(chunk)) if bytes.len() + chunk.len() <= MAX_ANSWER_BYTES => {
                bytes.extend_from_slice(&chunk);
            }
            Ok(Some(_)) => {
                return problem(
                    StatusCode::BAD_GATEWAY,
                    format!("the gateway's answer is over {MAX_ANSWER_BYTES} bytes"),
                );
            }
            Ok(None) => break,
            Err(error) => {
                return problem(
                    StatusCode::BAD_GATEWAY,
                    format!("replica `{replica}` broke off its answer: {error}"),
                );
            }
        }
    }
    let mut response = (status, bytes).into_response();
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    if let Ok(value) = replica.parse() {
        response
            .headers_mut()
            .insert("x-switchboard-replica", value);
    }
    response
}

fn problem(status: StatusCode, error: String) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}
