//! `switchboard-control`: the control-plane binary.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use control_plane::{app, auth::Token, check, connect, launcher, tls::ServerTls};
use opentelemetry_sdk::trace::SdkTracerProvider;
use proto::otel::{
    Destination, Protocol, Settings as OtelSettings,
    sdk::{self, SpanSink},
};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

#[derive(Parser)]
#[command(
    name = "switchboard-control",
    version,
    about = "Switchboard control plane"
)]
struct Cli {
    /// Log line format on stderr (`up` passes it on to its gateway).
    #[arg(long, global = true, env = "SWITCHBOARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Logfmt)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Source {
    Directory,
    Kubernetes,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Logfmt,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (McpServer, McpClient,
    /// McpAccessPolicy, McpGatewayConfig) as YAML, for `kubectl apply -f -`.
    Crd,
    /// Serve the registry to gateway replicas.
    Serve(ControlArgs),
    /// Prints the config snippet an MCP client needs to reach the gateway
    /// (`--list` names the clients and the files they read).
    Connect {
        /// claude-code, claude-desktop, codex, cursor, vscode, opencode,
        /// openclaw, gemini-cli or windsurf.
        #[arg(required_unless_present = "list")]
        client: Option<String>,
        /// The clients known, and the config file each reads.
        #[arg(long)]
        list: bool,
        /// Who the client is, in the gateway's logs, traces and metrics
        /// (default: `<client>-<user>`).
        #[arg(long)]
        caller: Option<String>,
        /// The gateway's MCP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:8787/mcp")]
        url: String,
        /// The entry's name in the client's config.
        #[arg(long, default_value = "switchboard")]
        name: String,
        /// Present a token: URL clients read it from `SWITCHBOARD_TOKEN` in
        /// their environment, bridge clients from `--token-file`.
        #[arg(long)]
        auth: bool,
        /// The token file bridge clients read (implies `--auth`).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Merge the entry into the client's config file (a backup first);
        /// every other setting stays as it was.
        #[arg(long)]
        write: bool,
        /// With `--write`: print the diff instead of writing.
        #[arg(long, requires = "write")]
        dry_run: bool,
        /// With `--write`: this file instead of the client's own.
        #[arg(long, requires = "write")]
        config: Option<PathBuf>,
        /// A server this client keeps to itself, beside the gateway:
        /// `NAME={...}`, its entry as the client writes one (JSON).
        #[arg(long = "local", value_name = "NAME=JSON")]
        locals: Vec<String>,
        /// A JSON object of such servers by name (default: the registry
        /// directory's `local-servers/<client>.json`, when there is one).
        #[arg(long)]
        local_file: Option<PathBuf>,
    },
    /// Is everything working? Checks the control plane, its replicas, every
    /// server and an MCP round trip through the gateway, in that order;
    /// exits non-zero naming the first thing that fails.
    Check {
        /// The control plane's HTTP API.
        #[arg(long, default_value = "http://127.0.0.1:8789")]
        control_plane: String,
        /// The gateway's MCP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:8787/mcp")]
        gateway: String,
        /// File with the admin token (the value can come in
        /// `SWITCHBOARD_ADMIN_TOKEN`); default: the one `up` keeps.
        #[arg(long)]
        admin_token_file: Option<PathBuf>,
        /// File with an McpClient's token for the MCP round trip (the
        /// value can come in `SWITCHBOARD_TOKEN`).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// One JSON document instead of one line per check.
        #[arg(long)]
        json: bool,
    },
    /// Run the control plane and local gateway replicas (the quick start).
    Up {
        #[command(flatten)]
        control: ControlArgs,
        /// Where the (first) gateway serves MCP.
        #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8787")]
        gateway_listen: SocketAddr,
        /// Gateway replicas to run: replica k (from 0) listens on the
        /// gateway port + 10·k (8787, 8797, 8807, …); any of them serves
        /// any session.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=32))]
        replicas: u16,
    },
}

#[derive(clap::Args)]
struct ControlArgs {
    /// Directory of McpServer YAML files. Default: `./deploy/local/registry`
    /// in a checkout of the repository; else, for `up`,
    /// `$XDG_CONFIG_HOME/switchboard/registry` (created with the demo
    /// servers the first time).
    #[arg(long, env = "SWITCHBOARD_REGISTRY")]
    registry: Option<PathBuf>,
    /// Where McpServer resources come from: a directory (`--registry`) or
    /// the Kubernetes API (kubeconfig or in-cluster), which also gets
    /// status written back.
    #[arg(long, env = "SWITCHBOARD_SOURCE", value_enum, default_value_t = Source::Directory)]
    source: Source,
    /// With `--source kubernetes`: the kubeconfig to use (default: `KUBECONFIG`,
    /// `~/.kube/config`, or the in-cluster service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// With `--source kubernetes`: namespace of the Lease that elects the
    /// pod writing status (every pod serves config).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// With `--source kubernetes`: the Lease's name. One per installation:
    /// the chart names it after the release.
    #[arg(
        long,
        env = "SWITCHBOARD_LEASE_NAME",
        default_value = "switchboard-control-plane"
    )]
    lease_name: String,
    /// With `--source kubernetes`: this pod's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// With `--source kubernetes`: how long a Lease holder may go without
    /// renewing before another pod takes over.
    #[arg(long, default_value = "15s", value_parser = control_plane::resource::resilience::parse_duration)]
    lease_duration: std::time::Duration,
    /// With `--source kubernetes`: a Secret in the lease's namespace that
    /// holds the install's tokens (keys `replica`, `admin`, `client`),
    /// made with random tokens on first start and kept after. Its replica
    /// and admin tokens apply unless given otherwise.
    #[arg(long, env = "SWITCHBOARD_TOKENS_SECRET")]
    tokens_secret: Option<String>,
    /// The key set gateways seal session ids with, so any replica serves
    /// any session: one key per line, 64 hex digits (`openssl rand -hex
    /// 32`), newest first; read again every few seconds, so a new first
    /// line rotates without a restart (keep the old line while its
    /// sessions should last). Default: the tokens Secret's
    /// `session-keys` in a cluster, else a key made at start.
    #[arg(long, env = "SWITCHBOARD_SESSION_KEYS_FILE")]
    session_keys_file: Option<PathBuf>,
    /// With `--tokens-secret`: the names (DNS names or IPs) gateways dial
    /// the gRPC port by. A CA and a server certificate for them are made
    /// on first start, kept in the tokens Secret (`ca.crt` is what
    /// gateways trust), and served.
    #[arg(long, env = "SWITCHBOARD_GRPC_TLS_NAMES", value_delimiter = ',')]
    grpc_tls_names: Vec<String>,
    /// PEM certificate (chain) the gRPC port serves TLS with, e.g. one
    /// cert-manager issues; with `--grpc-tls-key`.
    #[arg(long, env = "SWITCHBOARD_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    grpc_tls_cert: Option<PathBuf>,
    /// PEM private key of `--grpc-tls-cert`.
    #[arg(long, env = "SWITCHBOARD_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    grpc_tls_key: Option<PathBuf>,
    /// With `--source kubernetes`: a ServiceAccount (`namespace/name`)
    /// whose pods are gateways. A gateway then proves itself with a
    /// projected ServiceAccount token for `--replica-token-audience`,
    /// checked with a TokenReview, and may use only its pod's name as its
    /// replica id. The tokens Secret's shared replica token is then not
    /// accepted (`--replica-token-file` still is).
    #[arg(
        long = "replica-service-account",
        env = "SWITCHBOARD_REPLICA_SERVICE_ACCOUNTS",
        value_delimiter = ','
    )]
    replica_service_accounts: Vec<control_plane::auth::ServiceAccountRef>,
    /// The audience gateways' ServiceAccount tokens are minted for.
    #[arg(
        long,
        env = "SWITCHBOARD_REPLICA_TOKEN_AUDIENCE",
        default_value = "switchboard"
    )]
    replica_token_audience: String,
    /// With `--source kubernetes`: namespaces to watch (default: all).
    #[arg(
        long = "watch-namespace",
        env = "SWITCHBOARD_WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    watch_namespaces: Vec<String>,
    /// gRPC address replicas connect to.
    #[arg(
        long,
        env = "SWITCHBOARD_GRPC_LISTEN",
        default_value = "127.0.0.1:8788"
    )]
    grpc_listen: SocketAddr,
    /// HTTP status API address.
    #[arg(
        long,
        env = "SWITCHBOARD_HTTP_LISTEN",
        default_value = "127.0.0.1:8789"
    )]
    http_listen: SocketAddr,
    /// OTLP/gRPC collector (Jaeger, Tempo, an OpenTelemetry collector) that
    /// the replicas' spans are forwarded to; without it spans are only
    /// kept for the `/traces` API.
    #[arg(long, env = "SWITCHBOARD_OTLP_FORWARD")]
    otlp_forward: Option<String>,
    /// Recent traces kept for the `/traces` API.
    #[arg(long, env = "SWITCHBOARD_TRACE_BUFFER", default_value_t = 1000)]
    trace_buffer: usize,
    /// Mebibytes the kept traces may take; the oldest go first beyond it.
    #[arg(long, env = "SWITCHBOARD_TRACE_BUFFER_MIB", default_value_t = 64)]
    trace_buffer_mib: usize,
    /// File holding the token every replica must present on the gRPC port
    /// (the value itself can come in `SWITCHBOARD_REPLICA_TOKEN`). Needed
    /// when gRPC listens beyond loopback.
    #[arg(long, env = "SWITCHBOARD_REPLICA_TOKEN_FILE")]
    replica_token_file: Option<PathBuf>,
    /// Serve gRPC beyond loopback without a replica token: only where the
    /// network alone keeps everyone but the gateways out.
    #[arg(long, env = "SWITCHBOARD_ALLOW_UNAUTHENTICATED_REPLICAS")]
    allow_unauthenticated_replicas: bool,
    /// File holding the token `/status` and `/traces` callers must present
    /// (the value itself can come in `SWITCHBOARD_ADMIN_TOKEN`). Needed when
    /// the HTTP API listens beyond loopback; `up` makes one and prints
    /// where it put it.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Serve the HTTP API beyond loopback without an admin token: only
    /// where the network alone keeps others out.
    #[arg(long, env = "SWITCHBOARD_ALLOW_UNAUTHENTICATED_API")]
    allow_unauthenticated_api: bool,
    /// A trace in your trace UI, for the console's links: `{trace_id}` is
    /// replaced (e.g. `http://jaeger:16686/trace/{trace_id}`).
    #[arg(long, env = "SWITCHBOARD_TRACE_UI_URL")]
    trace_ui_url: Option<String>,
    /// The gateway's MCP endpoint as clients reach it (the Service URL),
    /// for the client configs the console shows.
    #[arg(long, env = "SWITCHBOARD_GATEWAY_URL")]
    gateway_url: Option<String>,
}

impl ControlArgs {
    /// The replica token from `--replica-token-file`, else from
    /// `SWITCHBOARD_REPLICA_TOKEN` (an env value, never a flag: flags show
    /// in `ps`).
    fn replica_token(&self) -> anyhow::Result<Option<Token>> {
        Ok(Token::from_file_or_env(
            self.replica_token_file.as_deref(),
            "SWITCHBOARD_REPLICA_TOKEN",
        )?)
    }
}

impl ControlArgs {
    fn into_config(self, otel: &OtelSettings, work_spans: SpanSink) -> anyhow::Result<app::Config> {
        let replica_token = self.replica_token()?;
        let admin_token =
            Token::from_file_or_env(self.admin_token_file.as_deref(), "SWITCHBOARD_ADMIN_TOKEN")?;
        let grpc_tls = match (&self.grpc_tls_cert, &self.grpc_tls_key) {
            (Some(cert), Some(key)) => Some(ServerTls::read(cert, key)?),
            _ => None,
        };
        if !self.grpc_tls_names.is_empty()
            && (self.tokens_secret.is_none() || self.source != Source::Kubernetes)
        {
            anyhow::bail!(
                "--grpc-tls-names keeps the certificate it makes in the tokens Secret: it needs --source kubernetes and --tokens-secret (elsewhere give --grpc-tls-cert and --grpc-tls-key)"
            );
        }
        if !self.replica_service_accounts.is_empty() && self.source != Source::Kubernetes {
            anyhow::bail!(
                "--replica-service-account checks tokens with the Kubernetes API: it needs --source kubernetes"
            );
        }
        if let Some(account) = self
            .replica_service_accounts
            .iter()
            .find(|a| a.name == "default")
        {
            anyhow::bail!(
                "--replica-service-account {account}: every pod without a ServiceAccount of its own runs as `default`; give the gateways one of their own"
            );
        }
        // A replica id is its pod's name: unique within one namespace only.
        if let [first, rest @ ..] = &self.replica_service_accounts[..]
            && let Some(other) = rest.iter().find(|a| a.namespace != first.namespace)
        {
            anyhow::bail!(
                "--replica-service-account {first} and {other}: gateways' ServiceAccounts must share one namespace (a replica id is its pod's name)"
            );
        }
        let args = self;
        // The flag names an OTLP/gRPC collector (gzip), as it always has;
        // else the OTEL_* settings.
        let otlp_forward = match args.otlp_forward.filter(|e| !e.is_empty()) {
            _ if otel.disabled => None,
            Some(url) => Some(Destination {
                url,
                protocol: Protocol::Grpc,
                gzip: true,
                headers: otel.headers.clone(),
            }),
            None => otel.destination.clone(),
        };
        Ok(app::Config {
            registry: match args.source {
                Source::Directory => app::RegistrySource::Directory(
                    args.registry
                        .unwrap_or_else(|| PathBuf::from("deploy/local/registry")),
                ),
                Source::Kubernetes => app::RegistrySource::Kubernetes {
                    kubeconfig: args.kubeconfig,
                    namespaces: args.watch_namespaces,
                    lease: control_plane::leader::LeaseConfig {
                        namespace: args.lease_namespace,
                        name: args.lease_name,
                        identity: args.identity.unwrap_or_else(default_identity),
                        duration: args.lease_duration,
                    },
                    tokens_secret: args.tokens_secret.filter(|s| !s.is_empty()),
                    tls_names: args.grpc_tls_names,
                },
            },
            grpc_listen: args.grpc_listen,
            http_listen: args.http_listen,
            otlp_forward,
            work_spans,
            resource: otel.resource_with(
                "switchboard-control-plane",
                &[("service.version", env!("CARGO_PKG_VERSION"))],
            ),
            trace_buffer: args.trace_buffer,
            trace_buffer_bytes: args.trace_buffer_mib.saturating_mul(1024 * 1024),
            replica_token,
            replica_accounts: args.replica_service_accounts,
            replica_audience: args.replica_token_audience,
            allow_unauthenticated_replicas: args.allow_unauthenticated_replicas,
            admin_token,
            allow_unauthenticated_api: args.allow_unauthenticated_api,
            grpc_tls,
            session_keys_file: args.session_keys_file,
            console: control_plane::console::ConsoleConfig {
                trace_ui_url: args.trace_ui_url.filter(|u| !u.is_empty()),
                gateway_url: args.gateway_url.filter(|u| !u.is_empty()),
            },
            console_login: false,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One TLS crypto provider for every https client (the API server, an
    // OTLP/HTTP collector).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // The control plane's own work is traced through the OpenTelemetry SDK
    // (`proto::otel::sdk`), its spans kept and forwarded with the replicas'.
    let serving = matches!(cli.command, Command::Serve(_) | Command::Up { .. });
    let otel = match serving {
        true => OtelSettings::from_env()
            .map_err(|e| anyhow::anyhow!("reading the OTEL_* settings: {e}"))?,
        false => OtelSettings::default(),
    };
    let work_spans = SpanSink::default();
    let (work, provider) = match serving && !otel.disabled {
        true => {
            let (layer, provider) =
                sdk::layer(work_spans.clone(), otel.sampling.unwrap_or_default());
            (Some(layer), Some(provider))
        }
        false => (None, None),
    };
    // The log filter (`RUST_LOG`) is the log lines' alone: it never hides
    // the work spans from the SDK.
    let logs = tracing_subscriber::registry().with(work);
    match cli.log_format {
        LogFormat::Logfmt => logs
            .with(
                tracing_logfmt::builder()
                    .layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .init(),
        LogFormat::Json => logs
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .init(),
    }
    let log_format = cli.log_format;
    let outcome = run(cli.command, log_format, otel, work_spans, provider.clone()).await;
    if let Some(provider) = provider {
        let _ = provider.shutdown();
    }
    outcome
}

async fn run(
    command: Command,
    log_format: LogFormat,
    otel: OtelSettings,
    work_spans: SpanSink,
    provider: Option<SdkTracerProvider>,
) -> anyhow::Result<()> {
    match command {
        Command::Crd => {
            print!("{}", control_plane::resource::crd_yaml()?);
            Ok(())
        }
        Command::Connect {
            client,
            list,
            caller,
            url,
            name,
            auth,
            token_file,
            write,
            dry_run,
            config,
            locals,
            local_file,
        } => {
            let home = std::env::var_os("HOME")
                .filter(|home| !home.is_empty())
                .map(PathBuf::from)
                .ok_or_else(|| {
                    anyhow::anyhow!("HOME is not set: nowhere to find the clients' configs")
                })?;
            if list {
                for client in &connect::CLIENTS {
                    println!(
                        "{:<15} {}",
                        client.name,
                        client.config_path(&home).display()
                    );
                }
                return Ok(());
            }
            let client = connect::client(client.as_deref().unwrap_or_default())?;
            let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
            let caller = caller.unwrap_or_else(|| format!("{}-{user}", client.name));
            let bridge = launcher::gateway_binary()
                .map(|path| path.display().to_string())
                .unwrap_or_else(|_| "switchboard-gateway".into());
            // The bridge starts wherever its client runs it: an absolute path.
            let token_file = match token_file {
                Some(path) => Some(std::path::absolute(&path)?.display().to_string()),
                None => None,
            };
            let auth = (auth || token_file.is_some()).then(|| token_file.as_deref().unwrap_or(""));
            let snippet = connect::Snippet {
                endpoint: &url,
                caller: &caller,
                name: &name,
                bridge: &bridge,
                auth,
            };
            let locals = local_servers(client.name, &locals, local_file)?;
            let rendered = connect::with_local(client, &client.render(&snippet)?, &name, &locals)?;
            if !write {
                print!("{rendered}");
                return Ok(());
            }
            let path = config.unwrap_or_else(|| client.config_path(&home));
            let names: Vec<&str> = std::iter::once(name.as_str())
                .chain(locals.iter().map(|(local, _)| local.as_str()))
                .collect();
            match connect::write_into(&path, client, &rendered, &names, dry_run)? {
                connect::Written::Unchanged => {
                    println!(
                        "{}: `{name}` is there as wanted, nothing changed",
                        path.display()
                    );
                }
                connect::Written::Diff(diff) => print!("{diff}"),
                connect::Written::Wrote { backup } => {
                    println!("{}: wrote `{name}`", path.display());
                    if let Some(backup) = backup {
                        println!("backup: {}", backup.display());
                    }
                }
            }
            Ok(())
        }
        Command::Check {
            control_plane,
            gateway,
            admin_token_file,
            token_file,
            json,
        } => {
            let admin_token = match admin_token_file {
                Some(file) => Some(Token::read(&file)?),
                None => match Token::from_file_or_env(None, "SWITCHBOARD_ADMIN_TOKEN")? {
                    Some(token) => Some(token),
                    // Where `up` keeps it, if it is there: only for a
                    // control plane on this machine.
                    None if proto::auth::loopback_url(&control_plane) => {
                        launcher::admin_token_path()
                            .ok()
                            .and_then(|path| Token::read(&path).ok())
                    }
                    None => None,
                },
            };
            let target = check::Target {
                control_plane,
                gateway,
                admin_token,
                client_token: Token::from_file_or_env(token_file.as_deref(), "SWITCHBOARD_TOKEN")?,
            };
            let outcomes = check::run(&target).await;
            let failed = outcomes.iter().any(|o| o.verdict == check::Verdict::Fail);
            if json {
                let report = serde_json::json!({ "ok": !failed, "checks": outcomes });
                println!("{report}");
            } else {
                print!("{}", check::render(&outcomes));
            }
            if failed {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Serve(args) => {
            let stop = shutdown_signal();
            let bound = app::run(args.into_config(&otel, work_spans)?).await?;
            stop.await;
            flush(provider).await;
            bound.shutdown_trigger().cancel();
            bound.wait().await;
            Ok(())
        }
        Command::Up {
            mut control,
            gateway_listen,
            replicas,
        } => {
            if control.registry.is_none() && control.source == Source::Directory {
                let registry = launcher::default_registry()?;
                println!("registry directory: {}", registry.display());
                control.registry = Some(registry);
            }
            let mut control_plane = control.into_config(&otel, work_spans)?;
            // The gateway `up` starts gets a fresh token of its own, and
            // the API one its user alone can read.
            if control_plane.replica_token.is_none() {
                control_plane.replica_token = Some(Token::generate()?);
            }
            // And TLS on gRPC, with a CA made for this run that only that
            // gateway is told about.
            if control_plane.grpc_tls.is_none() {
                let listen = control_plane.grpc_listen.ip().to_string();
                control_plane.grpc_tls = Some(ServerTls::generate(&[listen, "localhost".into()])?);
            }
            // The console's link logs its first opener in.
            control_plane.console_login = true;
            control_plane
                .console
                .gateway_url
                .get_or_insert_with(|| format!("http://{gateway_listen}/mcp"));
            let admin_token_file = match control_plane.admin_token {
                Some(_) => None,
                None => {
                    let token = Token::generate()?;
                    let path = launcher::write_admin_token(&token)?;
                    control_plane.admin_token = Some(token);
                    Some(path)
                }
            };
            let config = launcher::UpConfig {
                control_plane,
                admin_token_file,
                gateway_listen,
                replicas,
                log_format: log_format
                    .to_possible_value()
                    .map(|v| v.get_name().to_owned())
                    .unwrap_or_default(),
            };
            launcher::up(config, shutdown_signal()).await
        }
    }
}

/// Hands what the SDK holds to the trace store and forwarder while they
/// still take spans: on shutdown, before they stop.
async fn flush(provider: Option<SdkTracerProvider>) {
    if let Some(provider) = provider {
        let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
    }
}

/// The servers `client` keeps to itself: from `--local NAME=JSON` flags,
/// then the file (given, or `local-servers/<client>.json` in the user's
/// registry directory when it exists, never one in whatever directory
/// this runs in; the file used is named).
fn local_servers(
    client: &str,
    flags: &[String],
    file: Option<PathBuf>,
) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    use anyhow::Context;
    let mut locals = Vec::new();
    for flag in flags {
        let (name, entry) = flag
            .split_once('=')
            .with_context(|| format!("--local {flag}: write NAME={{...}}"))?;
        let entry: serde_json::Value = serde_json::from_str(entry)
            .with_context(|| format!("--local {name}: the entry is not JSON"))?;
        locals.push((name.to_owned(), entry));
    }
    let file = file.or_else(|| {
        let path = launcher::registry_home()
            .ok()?
            .join("local-servers")
            .join(format!("{client}.json"));
        path.is_file().then_some(path)
    });
    if let Some(file) = file {
        eprintln!("local servers from {}", file.display());
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let entries: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
            .with_context(|| format!("{}: a JSON object of entries by name", file.display()))?;
        locals.extend(entries);
    }
    Ok(locals)
}

/// Outside a pod: the host name and process id.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "control-plane".into());
    format!("{host}-{}", std::process::id())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed at the call,
/// not at the first poll: a signal that comes in between (while `up` waits
/// for the gateway, say) must stop the process gracefully, not kill it.
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
