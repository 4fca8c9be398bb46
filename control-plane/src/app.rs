//! Wires the control plane together: registry source → snapshot builder →
//! config push (gRPC) and the HTTP status API.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use proto::config as pb;
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    admin::{self, AdminState},
    metrics::{Metrics, TraceCounters},
    push::{ConfigPushService, Replicas},
    registry::directory::DirectorySource,
    snapshot,
    traces::{TraceReceiver, TraceStore, forward::Forwarder},
};

/// Static configuration of one control-plane process.
#[derive(Clone, Debug)]
pub struct Config {
    /// Directory of `McpServer` YAML files.
    pub registry_dir: PathBuf,
    /// Where gateway replicas connect for config (gRPC).
    pub grpc_listen: SocketAddr,
    /// Status API.
    pub http_listen: SocketAddr,
    /// Collector that received spans are forwarded to (OTLP/gRPC).
    pub otlp_forward: Option<String>,
    /// Traces kept for the `/traces` API.
    pub trace_buffer: usize,
}

/// A running control plane.
pub struct Bound {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

/// Loads the registry, binds both listeners and starts serving.
/// Fails if the registry directory cannot be read or a port cannot be bound.
pub async fn run(config: Config) -> anyhow::Result<Bound> {
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();

    let mut source = DirectorySource::new(&config.registry_dir);
    let first = source.scan().context("loading the registry")?;
    info!(
        dir = %config.registry_dir.display(),
        servers = first.servers.len(),
        issues = first.issues.len(),
        "registry loaded"
    );
    let (registry_tx, registry_rx) = watch::channel(first);
    let cancel = shutdown.clone();
    tasks.spawn(async move {
        if let Err(err) = source.watch(registry_tx, cancel).await {
            warn!(error = %err, "registry watch stopped; the last registry stays in place");
        }
    });

    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(pb::Snapshot::default()));
    tasks.spawn(snapshot::run_builder(
        registry_rx.clone(),
        snapshot_tx,
        shutdown.clone(),
    ));

    let replicas = Replicas::default();
    let trace_counters = TraceCounters::default();
    let metrics = Arc::new(Metrics::new(replicas.counters(), trace_counters.clone()));
    let traces = TraceStore::new(config.trace_buffer);
    let forwarder = match &config.otlp_forward {
        Some(endpoint) => {
            let (forwarder, task) =
                Forwarder::spawn(endpoint, trace_counters.clone(), shutdown.clone())?;
            tasks.spawn(async move {
                let _ = task.await;
            });
            Some(forwarder)
        }
        None => None,
    };
    let receiver = TraceReceiver {
        store: traces.clone(),
        forwarder,
        counters: trace_counters,
    };
    let grpc = TcpListener::bind(config.grpc_listen)
        .await
        .with_context(|| format!("binding the gRPC listener on {}", config.grpc_listen))?;
    let grpc_addr = grpc.local_addr()?;
    let push = ConfigPushService::new(snapshot_rx.clone(), replicas.clone(), shutdown.clone());
    let cancel = shutdown.clone();
    tasks.spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(push.into_server())
            .add_service(receiver.into_server())
            .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), cancel.cancelled_owned())
            .await;
        if let Err(err) = served {
            warn!(error = %err, "gRPC server stopped");
        }
    });

    let http = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("binding the HTTP listener on {}", config.http_listen))?;
    let http_addr = http.local_addr()?;
    let router = admin::router(AdminState {
        registry: registry_rx,
        snapshots: snapshot_rx,
        replicas,
        traces,
        metrics,
    });
    let cancel = shutdown.clone();
    tasks.spawn(async move {
        let served = axum::serve(http, router)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
        if let Err(err) = served {
            warn!(error = %err, "HTTP server stopped");
        }
    });

    info!(grpc = %grpc_addr, http = %http_addr, "control plane listening");
    Ok(Bound {
        grpc_addr,
        http_addr,
        shutdown,
        tasks,
    })
}

// === impl Bound ===

impl Bound {
    /// Cancelling the token stops every task; [`Bound::wait`] then returns.
    pub fn shutdown_trigger(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until every task has stopped (after a shutdown).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}
