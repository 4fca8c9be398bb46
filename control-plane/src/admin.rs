//! The control plane's HTTP API: liveness, readiness, the servers
//! ([`servers`]: listed, and in directory mode added, replaced and
//! removed), a JSON status page with the
//! registry (servers and problems), the current snapshot version and what
//! every replica reported, recent traces, and Prometheus `/metrics`. The
//! status page and traces are for operators (`auth.rs`); probes and
//! metrics stay open.

mod servers;

use std::{path::PathBuf, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use serde::Serialize;
use tokio::sync::watch;

use crate::{
    auth::{self, Gate, SameOrigin},
    metrics::{Metrics, OPENMETRICS_CONTENT_TYPE},
    peers::Peers,
    push::{ReplicaStatus, Replicas},
    registry::{Registry, RegistryIssue},
    snapshot::SnapshotWatch,
    traces::{SpanView, TraceQuery, TraceStore, TraceSummary},
};

/// A refusal or failure of the HTTP API: `status` with `{"error": …}`.
pub(crate) fn error_answer(
    status: StatusCode,
    error: impl std::fmt::Display,
) -> axum::response::Response {
    (
        status,
        Json(serde_json::json!({ "error": error.to_string() })),
    )
        .into_response()
}

#[derive(Clone)]
pub struct AdminState {
    pub registry: watch::Receiver<Registry>,
    /// True once the registry is complete (`/readyz`).
    pub ready: watch::Receiver<bool>,
    pub snapshots: SnapshotWatch,
    pub replicas: Replicas,
    /// Other control-plane pods' replicas (in a cluster; empty otherwise).
    pub peers: Peers,
    pub traces: TraceStore,
    pub metrics: Arc<Metrics>,
    /// The registry directory `/servers` writes to; `None` in a cluster.
    pub registry_dir: Option<PathBuf>,
}

#[derive(Serialize)]
struct TraceList {
    traces: Vec<TraceSummary>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TraceBody {
    trace_id: String,
    spans: Vec<SpanView>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusBody {
    snapshot_version: u64,
    servers: Vec<ServerEntry>,
    /// Declared callers, by name and groups (never their token digests).
    clients: Vec<ClientEntry>,
    /// Access policies by name.
    policies: Vec<String>,
    /// The gateway-wide settings in effect, when declared.
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<GatewayEntry>,
    issues: Vec<RegistryIssue>,
    replicas: std::collections::BTreeMap<String, ReplicaStatus>,
}

#[derive(Serialize)]
struct ClientEntry {
    name: String,
    groups: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GatewayEntry {
    name: String,
    allow_anonymous: bool,
    /// Trusted JWT issuers (`iss`).
    jwt_issuers: Vec<String>,
}

#[derive(Serialize)]
struct ServerEntry {
    name: String,
    namespace: String,
    enabled: bool,
}

pub fn router(state: AdminState, operators: Gate, browsers: SameOrigin) -> Router {
    let (read_servers, write_servers) = servers::routers();
    let for_writers = write_servers
        .layer(axum::middleware::from_fn_with_state(
            operators.clone(),
            auth::writers_only,
        ))
        .layer(axum::middleware::from_fn_with_state(
            browsers,
            auth::same_origin,
        ));
    let for_operators = Router::new()
        .route("/status", get(status))
        .route("/traces", get(traces))
        .route("/traces/{trace_id}", get(trace))
        .merge(read_servers)
        .layer(axum::middleware::from_fn_with_state(
            operators,
            auth::operators_only,
        ))
        .layer(axum::middleware::from_fn_with_state(
            browsers,
            auth::same_origin,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(for_operators)
        .merge(for_writers)
        .with_state(state)
}

/// 200 once the registry is complete (from a cluster: every watched
/// namespace listed once), 503 before: a pod that cannot list a namespace
/// (RBAC, say) has no config to give gateways, so the Service must not
/// send them to it.
async fn readyz(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    if *state.ready.borrow() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the first complete list of every watched namespace\n",
        )
    }
}

async fn status(State(state): State<AdminState>) -> Json<StatusBody> {
    let (servers, clients, policies, gateway, issues) = {
        let registry = state.registry.borrow();
        let gateway = registry.gateway.as_ref().map(|config| GatewayEntry {
            name: config.name.clone(),
            allow_anonymous: config.allow_anonymous,
            jwt_issuers: config.issuers.iter().map(|i| i.issuer.clone()).collect(),
        });
        let clients = registry
            .clients
            .values()
            .map(|c| ClientEntry {
                name: c.name.clone(),
                groups: c.groups.clone(),
            })
            .collect();
        let servers = registry
            .servers
            .values()
            .map(|s| ServerEntry {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                enabled: s.enabled,
            })
            .collect();
        let policies = registry.policies.keys().cloned().collect();
        (servers, clients, policies, gateway, registry.issues.clone())
    };
    Json(StatusBody {
        snapshot_version: state.snapshots.borrow().version,
        servers,
        clients,
        policies,
        gateway,
        issues,
        replicas: state
            .peers
            .merged(state.replicas.snapshot(), state.snapshots.borrow().version),
    })
}

async fn traces(
    State(state): State<AdminState>,
    Query(query): Query<TraceQuery>,
) -> Json<TraceList> {
    Json(TraceList {
        traces: state.traces.search(&query),
    })
}

async fn trace(
    State(state): State<AdminState>,
    Path(trace_id): Path<String>,
) -> Result<Json<TraceBody>, (StatusCode, String)> {
    let trace_id = trace_id.to_ascii_lowercase();
    match state.traces.trace(&trace_id) {
        Some(spans) => Ok(Json(TraceBody { trace_id, spans })),
        None => Err((
            StatusCode::NOT_FOUND,
            format!("trace {trace_id} is not in the buffer (never received, or evicted)\n"),
        )),
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let body = state.metrics.render();
    ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body)
}
