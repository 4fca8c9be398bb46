//! Wires the control plane together: registry source → snapshot builder →
//! config push (gRPC) and the HTTP status API.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use proto::{auth::OpenPort, config as pb};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tracing::{info, warn};

use kube::runtime::events::{Recorder, Reporter};

use crate::{
    admin::{self, AdminState},
    auth::{Gate, Logins, ReplicaGate, SameOrigin, ServiceAccountRef, Token, TokenReviewer},
    console::{self, ConsoleConfig},
    leader::{self, LeaseConfig},
    metrics::Metrics,
    peers::{self, PeerConfig, Peers},
    push::{ConfigPushService, Replicas},
    registry::{Registry, directory::DirectorySource, kubernetes::KubernetesSource},
    session_keys::{self, KeySource},
    snapshot::{self, SnapshotGauges},
    status::StatusWriter,
    tls::ServerTls,
    tokens,
    traces::{TraceCounters, TraceReceiver, TraceStore, forward::Forwarder},
};

/// Where `McpServer` resources come from.
#[derive(Clone, Debug)]
pub enum RegistrySource {
    /// A directory of YAML files, watched.
    Directory(PathBuf),
    /// The Kubernetes API (kubeconfig or in-cluster service account);
    /// no namespaces means all of them. Status is written back.
    Kubernetes {
        kubeconfig: Option<PathBuf>,
        namespaces: Vec<String>,
        /// The lease that elects the pod writing status.
        lease: LeaseConfig,
        /// A Secret in the lease's namespace holding the install's tokens,
        /// made on first start ([`tokens`]); its replica and admin tokens
        /// apply where none is given otherwise.
        tokens_secret: Option<String>,
        /// With `tokens_secret`: the names gateways dial the gRPC port by,
        /// for a certificate kept in that Secret (unless `grpc_tls` is
        /// given).
        tls_names: Vec<String>,
    },
}

/// Static configuration of one control-plane process.
#[derive(Clone, Debug)]
pub struct Config {
    pub registry: RegistrySource,
    /// Where gateway replicas connect for config (gRPC).
    pub grpc_listen: SocketAddr,
    /// Status API.
    pub http_listen: SocketAddr,
    /// Collector that received spans are forwarded to.
    pub otlp_forward: Option<proto::otel::Destination>,
    /// Where the OpenTelemetry SDK's spans of this process's work go:
    /// bound here to the trace store and forwarder.
    pub work_spans: proto::otel::sdk::SpanSink,
    /// The OTLP resource this process's spans carry.
    pub resource: Vec<(String, String)>,
    /// Traces kept for the `/traces` API.
    pub trace_buffer: usize,
    /// Bytes the kept traces' spans may take.
    pub trace_buffer_bytes: usize,
    /// What every gRPC call must present; `None` lets any caller in.
    pub replica_token: Option<Token>,
    /// With the Kubernetes source: ServiceAccounts whose pods' projected
    /// tokens (for `replica_audience`) admit them as replicas, each bound
    /// to its pod's name ([`TokenReviewer`]).
    pub replica_accounts: Vec<ServiceAccountRef>,
    pub replica_audience: String,
    /// Serve gRPC beyond loopback without a replica token.
    pub allow_unauthenticated_replicas: bool,
    /// What `/status` and `/traces` callers must present; `None` lets
    /// anyone read them.
    pub admin_token: Option<Token>,
    /// Serve the HTTP API beyond loopback without an admin token.
    pub allow_unauthenticated_api: bool,
    /// What the console shows beyond the registry and replicas.
    pub console: ConsoleConfig,
    /// Make a one-time console login code ([`Bound::console_login`]).
    pub console_login: bool,
    /// What the gRPC port serves TLS with; `None`: plain HTTP/2.
    pub grpc_tls: Option<ServerTls>,
    /// The session key set's file ([`session_keys`]); in a cluster the
    /// tokens Secret holds it; otherwise one is made at start.
    pub session_keys_file: Option<PathBuf>,
}

/// A running control plane.
pub struct Bound {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// A code that logs a browser into the console once (`#login=`).
    pub console_login: Option<Token>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

/// A port beyond loopback needs its token, unless the operator says the
/// network alone keeps others out (then it says so at every start).
fn guard_open_port(
    listen: SocketAddr,
    has_token: bool,
    allowed: bool,
    port: OpenPort,
) -> anyhow::Result<()> {
    if port
        .check(listen, has_token, allowed)
        .map_err(anyhow::Error::msg)?
    {
        warn!(%listen, "serving {} without {}: the network alone keeps others out", port.serves, port.token);
    }
    Ok(())
}

/// Loads the registry, binds both listeners and starts serving.
/// Fails if the registry directory cannot be read or a port cannot be bound.
pub async fn run(mut config: Config) -> anyhow::Result<Bound> {
    let mut reviewer = None;
    let cluster_client = match &config.registry {
        RegistrySource::Kubernetes {
            kubeconfig,
            lease,
            tokens_secret,
            tls_names,
            ..
        } => {
            let client = kube_client(kubeconfig.as_deref()).await?;
            if let Some(name) = tokens_secret {
                // Certificate files of the operator's own win over a made one.
                let names = if config.grpc_tls.is_some() {
                    &[][..]
                } else {
                    &tls_names[..]
                };
                let tokens = tokens::ensure(client.clone(), &lease.namespace, name, names).await?;
                // Pods prove themselves one by one: a token all of them
                // share would let one speak for another.
                if config.replica_accounts.is_empty() {
                    config.replica_token.get_or_insert(tokens.replica);
                }
                config.admin_token.get_or_insert(tokens.admin);
                if let Some(tls) = tokens.tls {
                    config.grpc_tls.get_or_insert(tls);
                }
            }
            if !config.replica_accounts.is_empty() {
                let accounts: Vec<String> = config
                    .replica_accounts
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                info!(accounts = %accounts.join(","), audience = %config.replica_audience, "replicas prove themselves with their pods' ServiceAccount tokens");
                reviewer = Some(TokenReviewer::new(
                    client.clone(),
                    &config.replica_audience,
                    &config.replica_accounts,
                ));
            }
            Some(client)
        }
        RegistrySource::Directory(_) => None,
    };
    guard_open_port(
        config.grpc_listen,
        config.replica_token.is_some() || reviewer.is_some(),
        config.allow_unauthenticated_replicas,
        OpenPort {
            serves: "config",
            token: "a replica token",
            exposes: "every server's config and secrets",
            flags: "--replica-token-file or SWITCHBOARD_REPLICA_TOKEN, or --allow-unauthenticated-replicas",
        },
    )?;
    guard_open_port(
        config.http_listen,
        config.admin_token.is_some(),
        config.allow_unauthenticated_api,
        OpenPort {
            serves: "/status and /traces",
            token: "an admin token",
            exposes: "every server's errors and every call's trace",
            flags: "--admin-token-file or SWITCHBOARD_ADMIN_TOKEN, or --allow-unauthenticated-api",
        },
    )?;
    if config.grpc_tls.is_none() && !config.grpc_listen.ip().is_loopback() {
        warn!(listen = %config.grpc_listen, "serving gRPC without TLS beyond loopback: config (secrets included) and the replica token cross the network in clear");
    }
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();

    let (registry_tx, registry_rx) = watch::channel(Registry::default());
    let mut cluster = None;
    match &config.registry {
        RegistrySource::Directory(dir) => {
            let mut source = DirectorySource::new(dir);
            let first = source.scan().context("loading the registry")?;
            info!(
                dir = %dir.display(),
                servers = first.servers.len(),
                issues = first.issues.len(),
                "registry loaded"
            );
            registry_tx.send_replace(first);
            let cancel = shutdown.clone();
            tasks.spawn(async move {
                if let Err(err) = source.watch(registry_tx, cancel).await {
                    warn!(error = %err, "registry watch stopped; the last registry stays in place");
                }
            });
        }
        RegistrySource::Kubernetes {
            namespaces, lease, ..
        } => {
            let client = cluster_client
                .clone()
                .context("a cluster source has its client")?;
            let (objects_tx, objects_rx) = watch::channel(BTreeMap::new());
            let source =
                KubernetesSource::new(client.clone(), namespaces.clone(), lease.namespace.clone());
            tasks.spawn(source.watch(registry_tx, objects_tx, shutdown.clone()));
            let (leading, campaign) =
                leader::campaign(client.clone(), lease.clone(), shutdown.clone());
            tasks.spawn(campaign);
            let reporter = Reporter {
                controller: "switchboard-control-plane".into(),
                instance: Some(lease.identity.clone()),
            };
            let peer_config = PeerConfig {
                namespace: lease.namespace.clone(),
                lease: lease.name.clone(),
                identity: lease.identity.clone(),
            };
            cluster = Some((client, objects_rx, leading, reporter, peer_config));
        }
    }

    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(pb::Snapshot::default()));
    // From the cluster, the first snapshot waits for the first full list,
    // so replicas never start from an empty config that is not the truth.
    let wait_for_list = matches!(config.registry, RegistrySource::Kubernetes { .. });
    // Ready (`/readyz`) once the registry is the truth: at once from a
    // directory; from the cluster, once every watched namespace is listed.
    let (ready_tx, ready) = watch::channel(!wait_for_list);
    let key_source = match (&config.session_keys_file, &config.registry, &cluster_client) {
        (Some(file), _, _) => KeySource::File(file.clone()),
        (
            None,
            RegistrySource::Kubernetes {
                lease,
                tokens_secret: Some(name),
                ..
            },
            Some(client),
        ) => KeySource::Secret {
            client: client.clone(),
            namespace: lease.namespace.clone(),
            name: name.clone(),
        },
        (None, RegistrySource::Kubernetes { .. }, _) => {
            warn!(
                "no --tokens-secret and no --session-keys-file: this pod makes a session key of its own, so gateways of other control-plane pods cannot open its sessions' ids, and its restart ends every session"
            );
            KeySource::Generated
        }
        _ => KeySource::Generated,
    };
    let session_keys = session_keys::watch(key_source, shutdown.clone()).await?;
    let mut first_registry = registry_rx.clone();
    let builder_cancel = shutdown.clone();
    tasks.spawn(async move {
        if wait_for_list && first_registry.changed().await.is_err() {
            return;
        }
        ready_tx.send_replace(true);
        snapshot::run_builder(first_registry, session_keys, snapshot_tx, builder_cancel).await;
    });

    let replicas = Replicas::default();
    let peers = Peers::default();
    if let Some((client, objects, leading, reporter, peer_config)) = cluster {
        tasks.spawn(peers::publish(
            client.clone(),
            peer_config.clone(),
            replicas.clone(),
            snapshot_rx.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(peers::watch(
            client.clone(),
            peer_config,
            peers.clone(),
            replicas.clone(),
            shutdown.clone(),
        ));
        let writer = StatusWriter {
            recorder: Recorder::new(client.clone(), reporter),
            leading,
            client,
            registry: registry_rx.clone(),
            objects,
            snapshots: snapshot_rx.clone(),
            replicas: replicas.clone(),
            peers: peers.clone(),
        };
        tasks.spawn(writer.run(shutdown.clone()));
    }
    let trace_counters = TraceCounters::default();
    let metrics = Arc::new(Metrics::new());
    let traces = TraceStore::new(config.trace_buffer, config.trace_buffer_bytes);
    let forwarder = match &config.otlp_forward {
        Some(destination) => {
            let (forwarder, task) =
                Forwarder::spawn(destination, trace_counters.clone(), shutdown.clone())?;
            tasks.spawn(async move {
                let _ = task.await;
            });
            Some(forwarder)
        }
        None => None,
    };
    let replica_gate = ReplicaGate::new(config.replica_token.clone(), reviewer);
    let receiver = TraceReceiver {
        gate: replica_gate.clone(),
        store: traces.clone(),
        forwarder,
        counters: trace_counters,
    };
    let own = receiver.clone();
    let resource = config.resource.clone();
    config.work_spans.bind(move |spans| {
        let request = proto::otel::export_request(&resource, "switchboard-control-plane", spans);
        if let Err(error) = own.accept(request, None) {
            warn!(%error, "the control plane's own spans were refused");
        }
    });
    let logins = Logins::default();
    let console_login = match config.console_login && config.admin_token.is_some() {
        true => Some(logins.one_time_code()?),
        false => None,
    };
    let operators = Gate::operators(config.admin_token.clone()).with_logins(logins.clone());
    metrics.register_collector(replica_gate.clone());
    metrics.register_collector(operators.clone());
    metrics.register_collector(replicas.clone());
    metrics.register_collector(receiver.clone());
    metrics.register_collector(SnapshotGauges {
        registry: registry_rx.clone(),
        snapshots: snapshot_rx.clone(),
    });
    let grpc = TcpListener::bind(config.grpc_listen)
        .await
        .with_context(|| format!("binding the gRPC listener on {}", config.grpc_listen))?;
    let grpc_addr = grpc.local_addr()?;
    let push = ConfigPushService::new(
        snapshot_rx.clone(),
        replicas.clone(),
        replica_gate.clone(),
        shutdown.clone(),
    );
    let cancel = shutdown.clone();
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &config.grpc_tls {
        server = server
            .tls_config(tls.server_config())
            .context("the gRPC port's TLS certificate")?;
        info!("serving gRPC over TLS");
    }
    tasks.spawn(async move {
        let served = server
            .add_service(InterceptedService::new(
                push.into_server(),
                replica_gate.clone(),
            ))
            .add_service(InterceptedService::new(
                receiver.into_server(),
                replica_gate,
            ))
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
    let admin_state = AdminState {
        registry: registry_rx,
        ready,
        snapshots: snapshot_rx,
        replicas,
        peers,
        traces,
        metrics,
        registry_dir: match &config.registry {
            RegistrySource::Directory(dir) => Some(dir.clone()),
            RegistrySource::Kubernetes { .. } => None,
        },
    };
    let browsers = SameOrigin::new(config.admin_token.is_none());
    let router =
        admin::router(admin_state.clone(), operators.clone(), browsers).merge(console::router(
            admin_state,
            config.console.clone(),
            logins,
            config.admin_token.is_some(),
            operators,
        ));
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
        console_login,
        shutdown,
        tasks,
    })
}

async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes config: set KUBECONFIG, write ~/.kube/config, or run in a pod with a service account",
        )?,
    };
    kube::Client::try_from(config).context("creating the Kubernetes client")
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
