//! The control plane's HTTP API: liveness and a JSON status page with the
//! registry (servers and problems), the current snapshot version and what
//! every replica reported.

use axum::{Json, Router, extract::State, routing::get};
use serde::Serialize;
use tokio::sync::watch;

use crate::{
    push::{ReplicaStatus, Replicas},
    registry::{Registry, RegistryIssue},
    snapshot::SnapshotWatch,
};

#[derive(Clone)]
pub struct AdminState {
    pub registry: watch::Receiver<Registry>,
    pub snapshots: SnapshotWatch,
    pub replicas: Replicas,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusBody {
    snapshot_version: u64,
    servers: Vec<ServerEntry>,
    issues: Vec<RegistryIssue>,
    replicas: std::collections::BTreeMap<String, ReplicaStatus>,
}

#[derive(Serialize)]
struct ServerEntry {
    name: String,
    namespace: String,
    enabled: bool,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/status", get(status))
        .with_state(state)
}

async fn status(State(state): State<AdminState>) -> Json<StatusBody> {
    let (servers, issues) = {
        let registry = state.registry.borrow();
        let servers = registry
            .servers
            .values()
            .map(|s| ServerEntry {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                enabled: s.enabled,
            })
            .collect();
        (servers, registry.issues.clone())
    };
    Json(StatusBody {
        snapshot_version: state.snapshots.borrow().version,
        servers,
        issues,
        replicas: state.replicas.snapshot(),
    })
}
