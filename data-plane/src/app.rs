//! Wires a gateway replica together: config subscriber → servers →
//! catalog → MCP endpoint, plus the health endpoints.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::time::Instant;

use anyhow::Context;
use axum::serve::ListenerExt;
use proto::{
    auth::{OpenPort, Presenting, Token},
    otel::{Destination, Sampling, sdk::SpanSink},
};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    admin::{self, AdminGate, AdminState},
    auth::{self, Callers},
    catalog,
    downstream::{Launcher, Servers, gauges::ServerGauges},
    drain::Drain,
    mcp::{self, McpConfig},
    policy::Policies,
    telemetry::{
        Metrics, Telemetry, Tracer,
        export::{self, ExportConfig},
    },
    xds::{self, ConfigStatus, XdsClient},
};

/// Once the drain is over, connections left open (idle streams, whose
/// sessions have ended) get this long to close.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// Static configuration of one replica.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address of the MCP and health endpoints.
    pub listen: SocketAddr,
    /// Once stopping starts, calls in flight get this long to finish.
    pub drain_timeout: Duration,
    /// Where other replicas reach this one's `/mcp` (see [`peer_url`]).
    pub peer_url: Option<String>,
    /// Control-plane gRPC URL, e.g. `http://127.0.0.1:8788`.
    pub control_plane: String,
    /// Presented to the control plane on the config stream, and on span
    /// exports when they go to it.
    pub control_plane_token: Option<Token>,
    /// The file `control_plane_token` came from, read again as it rotates.
    pub control_plane_token_file: Option<PathBuf>,
    /// The CA of the control plane's certificate (PEM), for an `https`
    /// control plane.
    pub control_plane_ca: Option<String>,
    /// Identifies this replica to the control plane.
    pub replica_id: String,
    pub mcp: McpConfig,
    /// How stdio servers are started.
    pub launcher: Launcher,
    /// Where spans go over OTLP; `None` records none.
    pub otlp: Option<Destination>,
    /// Which traces are recorded.
    pub sampling: Sampling,
    /// The OTLP resource spans are exported with.
    pub resource: Vec<(String, String)>,
    /// Where the OpenTelemetry SDK's spans of this replica's work go:
    /// bound here to the request spans' exporter.
    pub work_spans: SpanSink,
    /// Log tool arguments and results at debug level.
    pub log_payloads: bool,
    /// Serve MCP without authentication while no client is declared, even
    /// beyond loopback.
    pub allow_unauthenticated: bool,
    /// What detailed `/healthz` callers must present; `None` lets anyone
    /// read it.
    pub admin_token: Option<Token>,
    /// Serve the detailed `/healthz` beyond loopback without an admin token.
    pub allow_unauthenticated_api: bool,
}

/// A running replica.
pub struct Bound {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    force: CancellationToken,
    servers: Servers,
    tasks: JoinSet<()>,
}

/// Binds the listener and starts every task. Servers start once the first
/// snapshot arrives.
///
/// Stopping goes in order: the trigger starts the drain (not ready, new
/// requests refused, calls in flight finish); then client sessions end and
/// the HTTP server closes; only then do servers, the config stream and the
/// span exporter stop, so nothing a drained call needs goes first.
pub async fn run(config: Config) -> anyhow::Result<Bound> {
    let detailed_health = OpenPort {
        serves: "the detailed /healthz",
        token: "an admin token",
        exposes: "every server's state, hosts and errors",
        flags: "--admin-token-file or SWITCHBOARD_ADMIN_TOKEN, or --allow-unauthenticated-api",
    };
    let open = detailed_health
        .check(
            config.listen,
            config.admin_token.is_some(),
            config.allow_unauthenticated_api,
        )
        .map_err(anyhow::Error::msg)?;
    if open {
        warn!(listen = %config.listen, "serving the detailed /healthz without an admin token: the network alone keeps others out");
    }
    let admin_gate = AdminGate::new(config.admin_token.clone());
    // Checked before anything starts: a gateway that cannot reach its
    // control plane safely should not run without config.
    let control_plane =
        xds::grpc_endpoint(&config.control_plane, config.control_plane_ca.as_deref())
            .context("the control plane's address (--control-plane)")?;
    let shutdown = CancellationToken::new();
    let force = CancellationToken::new();
    let stop_http = CancellationToken::new();
    let stop = CancellationToken::new();
    let drain = Drain::default();
    let mut tasks = JoinSet::new();
    let metrics = Arc::new(Metrics::new());
    let replica_token = Presenting::new(config.control_plane_token.clone());
    if let Some(path) = &config.control_plane_token_file {
        tasks.spawn(xds::reread_token(
            path.clone(),
            replica_token.clone(),
            stop.clone(),
        ));
    }
    let tracer = match &config.otlp {
        Some(destination)
            if destination.url != config.control_plane && destination.url.starts_with("https:") =>
        {
            anyhow::bail!(
                "OTLP endpoint {}: spans go over TLS only to the control plane; send them there (the default), which forwards them (--otlp-forward), or to a collector over http",
                destination.url
            );
        }
        Some(destination) => {
            let to_control_plane = destination.url == config.control_plane;
            let export = ExportConfig {
                destination: destination.clone(),
                resource: config.resource.clone(),
                sampling: config.sampling,
                token: match to_control_plane {
                    true => replica_token.clone(),
                    false => Presenting::default(),
                },
                ca_pem: to_control_plane
                    .then(|| config.control_plane_ca.clone())
                    .flatten(),
            };
            let (tracer, exporter) = export::spawn(export, metrics.spans.clone(), stop.clone())?;
            tasks.spawn(async move {
                let _ = exporter.await;
            });
            let work = tracer.clone();
            config.work_spans.bind(move |spans| {
                for span in spans {
                    work.export_encoded(span);
                }
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
        stop.child_token(),
        config.launcher.clone(),
        telemetry.clone(),
        drain.clone(),
    );
    let catalog = catalog::spawn_builder(servers.clone(), stop.clone());
    let status = ConfigStatus::default();
    metrics.register_collector(ServerGauges(servers.clone()));
    metrics.register_collector(status.clone());
    metrics.register_collector(drain.clone());

    let open_without_clients = config.listen.ip().is_loopback() || config.allow_unauthenticated;
    if config.allow_unauthenticated && !config.listen.ip().is_loopback() {
        warn!(listen = %config.listen, "serving MCP without authentication beyond loopback while no McpClient is declared (--allow-unauthenticated)");
    } else if !open_without_clients {
        info!(listen = %config.listen, "listening beyond loopback: MCP requests are refused until the registry declares an McpClient (or start with --allow-unauthenticated)");
    }
    let callers = Callers::new(open_without_clients);
    metrics.register_collector(admin_gate.clone());
    metrics.register_collector(callers.clone());
    let policies = Policies::default();
    metrics.register_collector(policies.clone());

    let guard = mcp::guard::GuardState {
        body_limit: config.mcp.max_body_bytes,
        read_timeout: config.mcp.body_read_timeout,
        drain: drain.clone(),
    };
    let rest_limits = mcp::rest::BodyLimits {
        max_bytes: config.mcp.max_body_bytes,
        read_timeout: config.mcp.body_read_timeout,
        drain: drain.clone(),
    };
    // The ids of this replica's questions name it (`peers.rs`).
    crate::downstream::relay::name_questions(&config.replica_id);
    let routers = mcp::router(
        catalog.clone(),
        servers.clone(),
        policies.clone(),
        &config.mcp,
        telemetry,
        rest_limits,
        stop_http.child_token(),
    );
    let xds = XdsClient {
        address: config.control_plane.clone(),
        callers: callers.clone(),
        policies: policies.clone(),
        token: replica_token,
        endpoint: control_plane,
        replica_id: config.replica_id.clone(),
        servers: servers.clone(),
        catalog: catalog.clone(),
        status: status.clone(),
        metrics: metrics.clone(),
        session_keys: config.mcp.session_keys.clone(),
        sessions: routers.sessions.clone(),
        drain: drain.clone(),
        peer_url: peer_url(config.peer_url.as_deref(), config.listen),
        peers: config.mcp.peers.clone(),
        started_at: std::time::SystemTime::now(),
    };
    tasks.spawn(xds.run(stop.clone()));
    let router = routers
        .mcp
        .layer(axum::middleware::from_fn_with_state(
            guard,
            mcp::guard::guard,
        ))
        .merge(routers.rest)
        // Before anything reads the body.
        .layer(axum::middleware::from_fn_with_state(
            callers.clone(),
            auth::authenticate,
        ))
        .merge(auth::router(callers))
        .merge(admin::router(
            AdminState {
                replica_id: config.replica_id.clone(),
                servers: servers.clone(),
                config: status,
                metrics,
                catalog,
                drain: drain.clone(),
            },
            admin_gate,
        ));
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the MCP listener on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let closing = stop_http.clone();
    let stopping = stop.clone();
    tasks.spawn(async move {
        // Without TCP_NODELAY, Nagle's algorithm holds the SSE event that
        // follows the response headers for a delayed ACK: ~40 ms per call.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let serve =
            axum::serve(listener, router).with_graceful_shutdown(closing.clone().cancelled_owned());
        let deadline = async {
            closing.cancelled().await;
            tokio::time::sleep(CLOSE_DEADLINE).await;
        };
        tokio::select! {
            served = serve => if let Err(err) = served { warn!(error = %err, "HTTP server stopped") },
            () = deadline => warn!("connections still open after the drain; closing them"),
        }
        stopping.cancel();
    });
    tasks.spawn(drain_then_stop(
        shutdown.clone(),
        force.clone(),
        drain,
        config.drain_timeout,
        stop_http,
    ));
    info!(listen = %addr, replica = %config.replica_id, control_plane = %config.control_plane, "gateway listening");
    Ok(Bound {
        addr,
        shutdown,
        force,
        servers,
        tasks,
    })
}

/// Where other replicas reach this one's `/mcp`: as configured, else the
/// address it listens on, or (listening on every address) the pod's IP
/// (`POD_IP`); empty when there is none to give.
fn peer_url(configured: Option<&str>, listening: SocketAddr) -> String {
    if let Some(url) = configured {
        return url.to_owned();
    }
    let host = if listening.ip().is_unspecified() {
        match std::env::var("POD_IP") {
            Ok(ip) if !ip.is_empty() => ip,
            _ => return String::new(),
        }
    } else {
        listening.ip().to_string()
    };
    let host = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host,
    };
    format!("http://{host}:{}/mcp", listening.port())
}

/// On the trigger: drains, then ends the client sessions and the HTTP
/// server (which then stops the rest). `force` cuts the drain short.
async fn drain_then_stop(
    trigger: CancellationToken,
    force: CancellationToken,
    drain: Drain,
    deadline: Duration,
    stop_http: CancellationToken,
) {
    trigger.cancelled().await;
    drain.start();
    info!(
        in_flight = drain.in_flight(),
        "draining: not ready, refusing new requests"
    );
    let started = Instant::now();
    tokio::select! {
        drained = tokio::time::timeout(deadline, drain.wait()) => match drained {
            Ok(()) => info!(elapsed_ms = started.elapsed().as_millis() as u64, "drained"),
            Err(_) => warn!(in_flight = drain.in_flight(), "drain deadline passed; stopping the calls left"),
        },
        () = force.cancelled() => warn!(in_flight = drain.in_flight(), "asked again to stop; not waiting for the drain"),
    }
    stop_http.cancel();
}

// === impl Bound ===

impl Bound {
    /// Starts stopping: drain, then stop.
    pub fn shutdown_trigger(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops without waiting for the drain to end.
    pub fn force_trigger(&self) -> CancellationToken {
        self.force.clone()
    }

    /// Waits for every task, then for every server process to be reaped.
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
        self.servers.wait_stopped().await;
    }
}
