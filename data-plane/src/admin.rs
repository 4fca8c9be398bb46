//! Health endpoints served next to `/mcp`: `/livez` (the process answers),
//! `/readyz` (ready once the first snapshot is applied, servers joining
//! later on their own, and not ready again once the replica drains), the
//! detailed `/healthz` (a JSON view of the config and every server, behind
//! the admin token when one is set: it names servers, hosts and errors),
//! plus Prometheus `/metrics` (scrapeable; the network decides who).

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    collector::Collector, encoding::DescriptorEncoder, metrics::counter::Counter,
};
use proto::auth::Token;
use serde::Serialize;
use serde_json::json;
use tracing::debug;

use crate::{
    catalog::{CatalogReader, Collision},
    downstream::{ServerState, Servers},
    drain::Drain,
    telemetry::{
        Metrics,
        metrics::{OPENMETRICS_CONTENT_TYPE, encode_counters},
    },
    xds::{ConfigStatus, unix_millis},
};

/// Who may read the detailed health: holders of the admin token, or
/// anyone when there is none. Cheap to clone.
#[derive(Clone, Default)]
pub struct AdminGate {
    token: Option<Token>,
    refused: Counter,
}

#[derive(Clone)]
pub struct AdminState {
    pub replica_id: String,
    pub servers: Servers,
    pub config: ConfigStatus,
    pub metrics: Arc<Metrics>,
    pub catalog: CatalogReader,
    pub drain: Drain,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Health {
    status: &'static str,
    replica_id: String,
    config_version: u64,
    control_plane_connected: bool,
    servers: BTreeMap<String, ServerHealth>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    rejected: BTreeMap<String, String>,
    /// Tool names several servers wanted, and how each was resolved.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_name_collisions: Vec<Collision>,
    /// Prompt names several servers wanted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    prompt_name_collisions: Vec<Collision>,
    /// Tool names longer than common LLM providers accept (64).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    long_tool_names: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServerHealth {
    namespace: String,
    state: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    reason: String,
    tools: usize,
    restarts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol_version: Option<String>,
    breaker: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    /// Unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_p99_ms: Option<f64>,
    connections: usize,
    in_flight: u32,
    /// What the server first asked a client, once it has: its shared
    /// connections then carry one client session's calls at a time.
    #[serde(skip_serializing_if = "Option::is_none")]
    asked_clients: Option<&'static str>,
}

pub fn router(state: AdminState, gate: AdminGate) -> Router {
    let detailed = Router::new()
        .route("/healthz", get(healthz))
        .layer(axum::middleware::from_fn_with_state(gate, operators_only));
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(detailed)
        .with_state(state)
}

// === impl AdminGate ===

impl AdminGate {
    pub fn new(token: Option<Token>) -> Self {
        Self {
            token,
            refused: Counter::default(),
        }
    }
}

impl std::fmt::Debug for AdminGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminGate")
    }
}

impl Collector for AdminGate {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        encode_counters(
            &mut encoder,
            &[(
                "admin_auth_failures",
                "Requests for the detailed /healthz refused for a missing or wrong admin token",
                &self.refused,
            )],
        )
    }
}

/// 401 unless the admin token comes along (when there is one).
async fn operators_only(State(gate): State<AdminGate>, request: Request, next: Next) -> Response {
    let Some(token) = &gate.token else {
        return next.run(request).await;
    };
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if token.admits(authorization) {
        return next.run(request).await;
    }
    gate.refused.inc();
    debug!(
        path = request.uri().path(),
        token_sent = authorization.is_some(),
        "refused a detailed health request without the admin token"
    );
    let body = json!({
        "error": "the detailed health needs the gateway's admin token: `authorization: Bearer <token>`; /livez and /readyz need none"
    });
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            r#"Bearer realm="switchboard-gateway""#,
        )],
        Json(body),
    )
        .into_response()
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn healthz(State(state): State<AdminState>) -> Json<Health> {
    let catalog = state.catalog.load();
    let servers = state
        .servers
        .list()
        .into_iter()
        .map(|handle| {
            let status = handle.status();
            let health = ServerHealth {
                namespace: handle.spec.namespace.to_string(),
                state: match status.state {
                    ServerState::Starting => "starting",
                    ServerState::Ready => "ready",
                    ServerState::Failed => "failed",
                },
                reason: status.reason,
                tools: status.tools.len(),
                restarts: status.restarts,
                protocol_version: status.protocol_version.map(|v| v.to_string()),
                breaker: status.breaker.as_str(),
                last_error_at: status.last_error.as_ref().map(|(_, at)| unix_millis(*at)),
                last_error: status.last_error.map(|(error, _)| error),
                latency_p50_ms: status.latency_p50.map(|d| d.as_secs_f64() * 1e3),
                latency_p99_ms: status.latency_p99.map(|d| d.as_secs_f64() * 1e3),
                connections: status.connections,
                in_flight: status.in_flight,
                asked_clients: status.asked_clients,
            };
            (handle.spec.name.to_string(), health)
        })
        .collect();
    Json(Health {
        status: "ok",
        replica_id: state.replica_id.clone(),
        config_version: state.config.applied_version(),
        control_plane_connected: state.config.connected(),
        servers,
        rejected: state.config.rejected(),
        tool_name_collisions: catalog.collisions().to_vec(),
        prompt_name_collisions: catalog.prompt_collisions().to_vec(),
        long_tool_names: catalog.long_names().to_vec(),
    })
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    if state.drain.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining: shutting down\n")
    } else if state.config.applied_version() > 0 {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first config snapshot\n",
        )
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let body = state.metrics.render();
    ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body)
}
