//! `switchboard-gateway`: the gateway replica binary, plus the bundled
//! demo MCP server.

use std::{net::SocketAddr, ops::RangeInclusive, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use data_plane::{
    app,
    bridge::{self, BridgeConfig},
    demo_server::{self, DemoOptions},
    downstream::Launcher,
    mcp::{McpConfig, limits::ClientLimits, seal::SessionKeys},
    peers::Peers,
    redact,
};
use proto::{
    auth::Token,
    otel::{
        Destination, Protocol, Sampling, Settings as OtelSettings,
        sdk::{self, SpanSink},
    },
};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// rmcp logs every handshake at INFO; that belongs at debug for a gateway.
const DEFAULT_LOG_FILTER: &str = "info,rmcp=warn";

#[derive(Parser)]
#[command(
    name = "switchboard-gateway",
    version,
    about = "Switchboard gateway replica"
)]
struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, env = "SWITCHBOARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Logfmt)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Logfmt,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve MCP with the servers the control plane configures.
    Run(Box<RunArgs>),
    /// Speak MCP on stdin/stdout for a client that can only start a command,
    /// relaying every message to a gateway's `/mcp` endpoint.
    Bridge {
        /// The gateway's MCP endpoint.
        #[arg(
            long,
            env = "SWITCHBOARD_URL",
            default_value = "http://127.0.0.1:8787/mcp"
        )]
        url: String,
        /// Who is calling (the client's name), for the gateway's logs and traces.
        #[arg(long, env = "SWITCHBOARD_CALLER")]
        caller: Option<String>,
        /// File holding an McpClient's bearer token (the value itself can
        /// come in `SWITCHBOARD_TOKEN`).
        #[arg(long, env = "SWITCHBOARD_TOKEN_FILE")]
        token_file: Option<PathBuf>,
    },
    /// Internal: supervises one stdio server process for the gateway.
    #[command(hide = true)]
    StdioShim {
        /// The gateway's pid; the shim exits if it is already gone.
        #[arg(long)]
        parent: i32,
        command: std::ffi::OsString,
        args: Vec<std::ffi::OsString>,
    },
    /// A demo MCP server on stdin/stdout (echo, add, now, env, info, fail, sleep).
    DemoServer {
        /// Label of this copy, shown by its `info` tool and in `serverInfo.title`.
        #[arg(long)]
        instance: Option<String>,
        /// Never start serving (fault injection).
        #[arg(long)]
        hang_on_start: bool,
        /// Write this many non-MCP lines to stdout first (fault injection).
        #[arg(long, default_value_t = 0)]
        garbage_lines: u32,
        /// Serve streamable HTTP at `/mcp` on this address instead of stdio.
        #[arg(long)]
        http: Option<SocketAddr>,
        /// Add this many echo tools named `extra_<n>` (large catalogs).
        #[arg(long, default_value_t = 0)]
        extra_tools: u32,
        /// List tools this many per page (pagination tests).
        #[arg(long)]
        page_size: Option<usize>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the MCP endpoint (`/mcp`) and health endpoints.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// On SIGTERM the replica turns not ready and refuses new requests at
    /// once, and waits up to this many seconds for calls in flight before
    /// it stops its servers (a cluster's termination grace period should
    /// be longer, with the pod's preStop wait).
    #[arg(long, env = "SWITCHBOARD_DRAIN_TIMEOUT", default_value_t = 25.0, value_parser = drain_timeout)]
    drain_timeout: f64,
    /// Where the other replicas reach this one's MCP endpoint, to hand it
    /// a client's answer to a question it asked (a balancer may send the
    /// answer to any replica). Default: `http://<listen address>/mcp`, or
    /// with `--listen 0.0.0.0:…` the pod's `POD_IP`.
    #[arg(long, env = "SWITCHBOARD_PEER_URL")]
    peer_url: Option<String>,
    /// Control-plane gRPC URL.
    #[arg(
        long,
        env = "SWITCHBOARD_CONTROL_PLANE",
        default_value = "http://127.0.0.1:8788"
    )]
    control_plane: String,
    /// File holding the control plane's replica token (the value itself
    /// can come in `SWITCHBOARD_CONTROL_PLANE_TOKEN`; `up` sets that).
    #[arg(long, env = "SWITCHBOARD_CONTROL_PLANE_TOKEN_FILE")]
    control_plane_token_file: Option<PathBuf>,
    /// For an `https` control plane: PEM file of the CA its certificate is
    /// checked against (the PEM itself can come in
    /// `SWITCHBOARD_CONTROL_PLANE_CA`; the chart and `up` set that).
    #[arg(long, env = "SWITCHBOARD_CONTROL_PLANE_CA_FILE")]
    control_plane_ca: Option<PathBuf>,
    /// Replica name reported to the control plane (the pod name in a cluster).
    #[arg(long, env = "SWITCHBOARD_REPLICA_ID", default_value = "gateway-0")]
    replica_id: String,
    /// Accepted `Host` header values (DNS-rebinding protection); `*` accepts any.
    #[arg(
        long = "allowed-host",
        env = "SWITCHBOARD_ALLOWED_HOSTS",
        value_delimiter = ',',
        default_values = ["localhost", "127.0.0.1", "::1"]
    )]
    allowed_hosts: Vec<String>,
    /// OTLP/gRPC endpoint for spans; defaults to the control plane, which
    /// receives and forwards them. `none` turns tracing off.
    #[arg(long, env = "SWITCHBOARD_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Share (0–1) of the traces this replica starts that are recorded;
    /// requests that arrive with a `traceparent` follow its sampled flag.
    #[arg(long, env = "SWITCHBOARD_TRACE_SAMPLE_RATIO", default_value_t = 1.0, value_parser = sample_ratio)]
    trace_sample_ratio: f64,
    /// Largest request body accepted on `/mcp`, in bytes (413 beyond).
    #[arg(long, env = "SWITCHBOARD_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Seconds a request body may take to arrive (408 beyond).
    #[arg(long, env = "SWITCHBOARD_BODY_READ_TIMEOUT", default_value_t = 30.0, value_parser = read_timeout)]
    body_read_timeout: f64,
    /// Client sessions held at most, in memory and parked together; new
    /// ones get 503 beyond.
    #[arg(long, env = "SWITCHBOARD_MAX_SESSIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    max_sessions: u32,
    /// Sessions one declared client may hold at once; beyond, its new ones
    /// get 429.
    #[arg(long, env = "SWITCHBOARD_MAX_SESSIONS_PER_CLIENT", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_sessions_per_client: u32,
    /// Per-session server connections (processes, for stdio servers with
    /// `sessionMode: PerSession`) the sessions of one declared client may
    /// hold together; beyond, its calls to such servers fail saying so.
    #[arg(long, env = "SWITCHBOARD_MAX_SESSION_PROCESSES_PER_CLIENT", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    max_session_processes_per_client: u32,
    /// Requests per second one declared client may make, on average
    /// (token bucket); beyond, 429 with `Retry-After`. 0: no limit.
    #[arg(long, env = "SWITCHBOARD_CLIENT_REQUESTS_PER_SECOND", default_value_t = 50.0, value_parser = request_rate)]
    client_requests_per_second: f64,
    /// Requests one declared client may make at once above its rate.
    #[arg(long, env = "SWITCHBOARD_CLIENT_BURST", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    client_burst: u32,
    /// File holding the admin token the detailed `/healthz` needs (the
    /// value itself can come in `SWITCHBOARD_ADMIN_TOKEN`); without one it
    /// is open, which beyond loopback needs --allow-unauthenticated-api.
    /// `/livez`, `/readyz` and `/metrics` never need it.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Serve the detailed `/healthz` beyond loopback without an admin
    /// token (a warning is logged at every start).
    #[arg(long, env = "SWITCHBOARD_ALLOW_UNAUTHENTICATED_API")]
    allow_unauthenticated_api: bool,
    /// Give each stdio server a HOME and a TMPDIR of its own under this
    /// directory (`<dir>/<server>/home`, `…/tmp`, mode 0700), so servers
    /// sharing the gateway do not share caches, credentials or temp files;
    /// unset, they inherit the gateway's. A server's own `env` wins.
    #[arg(long, env = "SWITCHBOARD_SERVER_HOME")]
    server_home: Option<PathBuf>,
    /// Serve MCP without authentication while the registry declares no
    /// McpClient even when listening beyond loopback (a warning is logged
    /// at every start). Without it such a gateway refuses MCP requests
    /// until a client is declared; on loopback it is open either way.
    #[arg(long, env = "SWITCHBOARD_ALLOW_UNAUTHENTICATED")]
    allow_unauthenticated: bool,
    /// Items per page of tools/list, prompts/list, resources/list and
    /// resources/templates/list (clients follow `nextCursor`).
    #[arg(long, env = "SWITCHBOARD_LIST_PAGE_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    list_page_size: u32,
    /// Seconds a streamable-HTTP session may sit idle (no open stream, no
    /// request) before it is parked out of memory; its next request
    /// restores it. Sessions with their own state are never parked. 0 never parks.
    #[arg(long, env = "SWITCHBOARD_PARK_IDLE_SESSIONS_AFTER", default_value_t = 30.0, value_parser = park_after)]
    park_idle_sessions_after: f64,
    /// Log tool arguments and results (at debug level). They may hold secrets.
    #[arg(long, env = "SWITCHBOARD_LOG_PAYLOADS")]
    log_payloads: bool,
    /// Stop (as on SIGTERM) when the process with this pid, which started
    /// this one, exits, even if it is killed; `switchboard-control up`
    /// passes its own.
    #[arg(long)]
    parent: Option<i32>,
    /// Threads serving MCP. With 1, everything runs on one thread, which
    /// under load costs far less than handing each call between threads;
    /// scale out with replicas, or give a replica with cores to spare more
    /// (0: one per core).
    #[arg(long, env = "SWITCHBOARD_WORKER_THREADS", default_value_t = 1)]
    worker_threads: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The shim runs before any runtime or logging: it only waits on signals.
    if let Command::StdioShim {
        parent,
        command,
        args,
    } = cli.command
    {
        std::process::exit(data_plane::shim::run(parent, command, args));
    }
    if let Command::Run(args) = &cli.command
        && let Some(parent) = args.parent
        && !data_plane::shim::exit_with_parent(parent)
    {
        anyhow::bail!("the process that started this gateway (pid {parent}) has exited");
    }
    // One TLS crypto provider for every https client (downstream servers).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match &cli.command {
        Command::Run(args) if args.worker_threads == 1 => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
        }
        Command::Run(args) => {
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            if args.worker_threads > 0 {
                runtime.worker_threads(args.worker_threads);
            }
            runtime.enable_all().build()?
        }
        _ => tokio::runtime::Runtime::new()?,
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // The demo server's stderr ends up in the gateway's log: keep it terse.
    let default_filter = match cli.command {
        Command::DemoServer { .. } | Command::Bridge { .. } => "warn",
        Command::Run(_) | Command::StdioShim { .. } => DEFAULT_LOG_FILTER,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    // A replica's own work is traced through the OpenTelemetry SDK
    // (`proto::otel::sdk`); its spans join the request spans' exporter.
    let otel = match &cli.command {
        Command::Run(_) => OtelSettings::from_env().context("reading the OTEL_* settings")?,
        _ => OtelSettings::default(),
    };
    let sampling = match &cli.command {
        Command::Run(args) => otel.sampling.unwrap_or(Sampling {
            ratio: args.trace_sample_ratio,
            parent_based: true,
        }),
        _ => Sampling::default(),
    };
    let work_spans = SpanSink::default();
    let (work, provider) = match &cli.command {
        Command::Run(args) if !otel.disabled && args.otlp_endpoint.as_deref() != Some("none") => {
            let (layer, provider) = sdk::layer(work_spans.clone(), sampling);
            (Some(layer), Some(provider))
        }
        _ => (None, None),
    };
    // The log filter (`RUST_LOG`) is the log lines' alone: it never hides
    // the work spans from the SDK.
    let logs = tracing_subscriber::registry().with(work);
    match cli.log_format {
        LogFormat::Logfmt => logs
            .with(
                tracing_logfmt::builder()
                    .layer()
                    .with_writer(|| redact::Lines(std::io::stderr()))
                    .with_filter(filter),
            )
            .init(),
        LogFormat::Json => logs
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(|| redact::Lines(std::io::stderr()))
                    .with_filter(filter),
            )
            .init(),
    }
    match cli.command {
        Command::DemoServer {
            instance,
            hang_on_start,
            garbage_lines,
            http,
            extra_tools,
            page_size,
        } => {
            let options = DemoOptions {
                instance,
                hang_on_start,
                garbage_lines,
                http,
                extra_tools,
                page_size,
            };
            demo_server::run(options).await
        }
        Command::StdioShim { .. } => anyhow::bail!("stdio-shim runs before the runtime starts"),
        Command::Bridge {
            url,
            caller,
            token_file,
        } => {
            let token = Token::from_file_or_env(token_file.as_deref(), "SWITCHBOARD_TOKEN")?;
            bridge::run(BridgeConfig { url, caller, token }).await
        }
        Command::Run(args) => {
            // The flag names an OTLP/gRPC endpoint, as it always has; else
            // the OTEL_* settings; else the control plane.
            let otlp = match args.otlp_endpoint.as_deref() {
                _ if otel.disabled => None,
                Some("none") => None,
                // Headers and compression still come from the settings.
                Some(url) if !url.is_empty() => Some(Destination {
                    url: url.to_owned(),
                    protocol: Protocol::Grpc,
                    headers: otel.headers.clone(),
                    gzip: otel.gzip,
                }),
                _ => Some(
                    otel.destination
                        .clone()
                        .unwrap_or_else(|| Destination::grpc(&args.control_plane)),
                ),
            };
            let resource = otel.resource_with(
                "switchboard-gateway",
                &[
                    ("service.version", env!("CARGO_PKG_VERSION")),
                    ("service.instance.id", &args.replica_id),
                ],
            );
            let stop = shutdown_signal();
            let control_plane_token = Token::from_file_or_env(
                args.control_plane_token_file.as_deref(),
                "SWITCHBOARD_CONTROL_PLANE_TOKEN",
            )?;
            let admin_token = Token::from_file_or_env(
                args.admin_token_file.as_deref(),
                "SWITCHBOARD_ADMIN_TOKEN",
            )?;
            let control_plane_ca = match &args.control_plane_ca {
                Some(path) => Some(std::fs::read_to_string(path).with_context(|| {
                    format!("reading the control plane's CA {}", path.display())
                })?),
                None => std::env::var("SWITCHBOARD_CONTROL_PLANE_CA")
                    .ok()
                    .filter(|pem| !pem.trim().is_empty()),
            };
            let bound = app::run(app::Config {
                listen: args.listen,
                drain_timeout: Duration::from_secs_f64(args.drain_timeout),
                peer_url: args.peer_url.filter(|url| !url.is_empty()),
                control_plane: args.control_plane,
                control_plane_token,
                control_plane_token_file: args.control_plane_token_file,
                control_plane_ca,
                replica_id: args.replica_id.clone(),
                mcp: McpConfig {
                    allowed_hosts: args.allowed_hosts,
                    max_body_bytes: args.max_body_bytes,
                    body_read_timeout: Duration::from_secs_f64(args.body_read_timeout),
                    max_sessions: args.max_sessions as usize,
                    limits: ClientLimits {
                        sessions: args.max_sessions_per_client as usize,
                        session_connections: args.max_session_processes_per_client as usize,
                        requests_per_second: args.client_requests_per_second,
                        burst: args.client_burst,
                    },
                    page_size: args.list_page_size as usize,
                    // Until the control plane sends the set every replica
                    // shares, ids are sealed with a key of this one's own.
                    session_keys: SessionKeys::local(data_plane::mcp::SESSION_LIFETIME),
                    peers: Peers::new(&args.replica_id),
                    park_after: (args.park_idle_sessions_after > 0.0)
                        .then(|| Duration::from_secs_f64(args.park_idle_sessions_after)),
                },
                launcher: Launcher {
                    shim: Some(std::env::current_exe().context("locating switchboard-gateway")?),
                    server_homes: args.server_home,
                },
                otlp,
                sampling,
                resource,
                work_spans,
                log_payloads: args.log_payloads,
                allow_unauthenticated: args.allow_unauthenticated,
                admin_token,
                allow_unauthenticated_api: args.allow_unauthenticated_api,
            })
            .await?;
            stop.await;
            tracing::info!("shutting down");
            if let Some(provider) = provider.clone() {
                // What the SDK holds goes to the exporter while it still
                // takes spans.
                let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
            }
            bound.shutdown_trigger().cancel();
            let force = bound.force_trigger();
            let again = shutdown_signal();
            tokio::spawn(async move {
                again.await;
                force.cancel();
            });
            bound.wait().await;
            if let Some(provider) = provider {
                let _ = provider.shutdown();
            }
            Ok(())
        }
    }
}

fn park_after(text: &str) -> Result<f64, String> {
    number_in(text, 0.0..=86_400.0, "a number of seconds from 0 to 86400")
}

fn drain_timeout(text: &str) -> Result<f64, String> {
    number_in(text, 0.0..=3_600.0, "a number of seconds from 0 to 3600")
}

fn read_timeout(text: &str) -> Result<f64, String> {
    number_in(text, 0.1..=3_600.0, "a number of seconds from 0.1 to 3600")
}

fn request_rate(text: &str) -> Result<f64, String> {
    number_in(
        text,
        0.0..=1_000_000.0,
        "a number of requests per second from 0 to 1000000",
    )
}

fn sample_ratio(text: &str) -> Result<f64, String> {
    number_in(text, 0.0..=1.0, "a number from 0 to 1")
}

fn number_in(text: &str, range: RangeInclusive<f64>, what: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(number) if range.contains(&number) => Ok(number),
        _ => Err(format!("`{text}` is not {what}")),
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed at the call,
/// not at the first poll: a signal that comes while the gateway starts
/// must stop it gracefully (servers and all), not kill it.
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).expect("installing a SIGTERM handler at start-up");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler at start-up");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}
