//! Wires a gateway replica together: config subscriber → servers →
//! catalog → MCP endpoint, plus the health endpoints.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    admin::{self, AdminState},
    catalog,
    downstream::{Launcher, Servers},
    mcp::{self, McpConfig},
    telemetry::{
        Metrics, Telemetry, Tracer,
        export::{self, ExportConfig},
    },
    xds::{ConfigStatus, XdsClient},
};

/// Once shutdown starts, open HTTP streams get this long to finish.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Static configuration of one replica.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address of the MCP and health endpoints.
    pub listen: SocketAddr,
    /// Control-plane gRPC URL, e.g. `http://127.0.0.1:8788`.
    pub control_plane: String,
    /// Identifies this replica to the control plane.
    pub replica_id: String,
    pub mcp: McpConfig,
    /// How stdio servers are started.
    pub launcher: Launcher,
    /// Where spans go over OTLP/gRPC; `None` records none.
    pub otlp_endpoint: Option<String>,
    /// Share of traces this replica starts that are recorded.
    pub trace_sample_ratio: f64,
    /// Log tool arguments and results at debug level.
    pub log_payloads: bool,
}

/// A running replica.
pub struct Bound {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    servers: Servers,
    tasks: JoinSet<()>,
}

/// Binds the listener and starts every task. Servers start once the first
/// snapshot arrives.
pub async fn run(config: Config) -> anyhow::Result<Bound> {
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let metrics = Arc::new(Metrics::new());
    let tracer = match &config.otlp_endpoint {
        Some(endpoint) => {
            let export = ExportConfig {
                endpoint: endpoint.clone(),
                service_name: "switchboard-gateway",
                replica_id: config.replica_id.clone(),
                sample_ratio: config.trace_sample_ratio,
            };
            let (tracer, exporter) =
                export::spawn(export, metrics.spans.clone(), shutdown.clone())?;
            tasks.spawn(async move {
                let _ = exporter.await;
            });
            tracer
        }
        None => Tracer::default(),
    };
    let telemetry = Telemetry {
        tracer,
        metrics: metrics.clone(),
        replica_id: config.replica_id.as_str().into(),
        log_payloads: config.log_payloads,
    };
    let servers = Servers::new(
        shutdown.child_token(),
        config.launcher.clone(),
        telemetry.clone(),
    );
    let catalog = catalog::spawn_builder(servers.clone(), shutdown.clone());
    let status = ConfigStatus::default();

    let xds = XdsClient {
        address: config.control_plane.clone(),
        replica_id: config.replica_id.clone(),
        servers: servers.clone(),
        status: status.clone(),
        metrics: metrics.clone(),
    };
    tasks.spawn(xds.run(shutdown.clone()));

    let body_limit = mcp::guard::BodyLimit(config.mcp.max_body_bytes);
    let router = mcp::router(
        catalog.clone(),
        servers.clone(),
        &config.mcp,
        telemetry.clone(),
        shutdown.child_token(),
    )
    .merge(mcp::sse::router(
        catalog.clone(),
        servers.clone(),
        &config.mcp,
        telemetry,
        shutdown.child_token(),
    ))
    .layer(axum::middleware::from_fn_with_state(
        body_limit,
        mcp::guard::guard,
    ))
    .merge(admin::router(AdminState {
        replica_id: config.replica_id.clone(),
        servers: servers.clone(),
        config: status,
        metrics,
        catalog,
    }));
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the MCP listener on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let cancel = shutdown.clone();
    tasks.spawn(async move {
        let drained = cancel.clone().cancelled_owned();
        // Without TCP_NODELAY, Nagle's algorithm holds the SSE event that
        // follows the response headers for a delayed ACK: ~40 ms per call.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let serve = axum::serve(listener, router).with_graceful_shutdown(drained);
        let deadline = async {
            cancel.cancelled().await;
            tokio::time::sleep(DRAIN_DEADLINE).await;
        };
        tokio::select! {
            served = serve => if let Err(err) = served { warn!(error = %err, "HTTP server stopped") },
            () = deadline => warn!("drain deadline passed, closing open streams"),
        }
    });
    info!(listen = %addr, replica = %config.replica_id, control_plane = %config.control_plane, "gateway listening");
    Ok(Bound {
        addr,
        shutdown,
        servers,
        tasks,
    })
}

// === impl Bound ===

impl Bound {
    pub fn shutdown_trigger(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits for every task, then for every server process to be reaped.
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
        self.servers.wait_stopped().await;
    }
}
