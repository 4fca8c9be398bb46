//! The console's Tools page through a gateway: `GET /console/tools` and
//! `POST /console/tools/call` are relayed to a gateway's REST API
//! (`/tools`, `/tools/call`) at `--gateway-url`, or at a connected
//! replica's own address when that cannot be reached (or is not given),
//! so the catalog is the one clients see
//! and a "try it" call is an ordinary call: the gateway authenticates the
//! caller, applies its policies, breakers and limits, and traces it. The
//! caller's credential comes in `x-switchboard-caller-token` (the
//! operator's own session stays in `authorization`, for this API) and goes
//! on as the gateway's `authorization`; without one the call is
//! anonymous, named `console`. Bodies are bounded both ways, a call must
//! be JSON (which another site's page cannot send unasked), and the relay
//! has a deadline. Answers carry `x-switchboard-relayed-from`: a 401 with
//! it is the gateway's verdict on the caller, not the console's session.

use std::time::Duration;

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use tracing::{debug, warn};

use super::Console;
use crate::admin::error_answer;

/// The header carrying the caller's own token to the gateway.
const CALLER_TOKEN: &str = "x-switchboard-caller-token";
/// On every answer that is the gateway's: which gateway gave it.
const RELAYED_FROM: &str = "x-switchboard-relayed-from";
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
pub(super) async fn tools(State(console): State<Console>, headers: HeaderMap) -> Response {
    relay(&console, &headers, None).await
}

/// `POST /console/tools/call`: `{"name", "arguments"}`, called through the
/// gateway.
pub(super) async fn call(
    State(console): State<Console>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Only JSON: what a page of another origin cannot send unasked.
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !json {
        return error_answer(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a call is JSON: content-type: application/json",
        );
    }
    if body.len() > MAX_REQUEST_BYTES {
        return error_answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a call's body may take {MAX_REQUEST_BYTES} bytes"),
        );
    }
    relay(&console, &headers, Some(body)).await
}

async fn relay(console: &Console, headers: &HeaderMap, body: Option<Bytes>) -> Response {
    let targets = targets(console);
    if targets.is_empty() {
        return error_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "no gateway to call: give the control plane --gateway-url, or wait for a replica to connect",
        );
    }
    let path = if body.is_some() {
        "/tools/call"
    } else {
        "/tools"
    };
    let mut refused = Vec::new();
    let mut answered = None;
    for (target, base) in targets {
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
        debug!(%target, path, "relaying a console request to a gateway");
        match request.send().await {
            Ok(answer) => {
                answered = Some((target, answer));
                break;
            }
            // Not connected, so not sent: the next way in is safe to try.
            Err(error) if error.is_connect() => refused.push(format!("{target}: {error}")),
            Err(error) => {
                warn!(%target, %error, "a gateway did not answer the console");
                return error_answer(
                    StatusCode::BAD_GATEWAY,
                    format!("{target} did not answer: {error}"),
                );
            }
        }
    }
    let Some((target, answer)) = answered else {
        warn!(tried = ?refused, "the console could not reach a gateway");
        return error_answer(
            StatusCode::BAD_GATEWAY,
            format!("no gateway could be reached: {}", refused.join("; ")),
        );
    };
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    if answer
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return error_answer(
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
                return error_answer(
                    StatusCode::BAD_GATEWAY,
                    format!("the gateway's answer is over {MAX_ANSWER_BYTES} bytes"),
                );
            }
            Ok(None) => break,
            Err(error) => {
                return error_answer(
                    StatusCode::BAD_GATEWAY,
                    format!("{target} broke off its answer: {error}"),
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
    // The gateway's answer, not the control plane's: a 401 here is about
    // the caller's token, not the console's session.
    let from = target
        .parse()
        .unwrap_or_else(|_| axum::http::HeaderValue::from_static("gateway"));
    response.headers_mut().insert(RELAYED_FROM, from);
    response
}

/// The gateways to ask, in order, each with its base URL: the one given
/// with `--gateway-url` (the Service clients reach, whose name gateways
/// accept as `Host`), then a connected replica's own address (where that
/// URL is for clients elsewhere, as on a host beside containers).
fn targets(console: &Console) -> Vec<(String, String)> {
    let base = |url: &str| {
        let url = url.trim_end_matches('/');
        url.strip_suffix("/mcp").unwrap_or(url).to_owned()
    };
    let configured = console.config.gateway_url.as_deref().map(|url| {
        let base = base(url);
        (base.clone(), base)
    });
    let replica = console
        .replica_url()
        .map(|(id, url)| (format!("replica {id}"), base(&url)));
    configured.into_iter().chain(replica).collect()
}
