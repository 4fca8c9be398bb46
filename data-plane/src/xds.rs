//! Config subscriber: holds the replica's stream to the control plane,
//! applies each snapshot to the running servers and answers ACK or NACK,
//! reports server health on the same stream, and reconnects with backoff.
//! When the control plane is away the last applied config keeps serving.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::gauge::ConstGauge,
};
use proto::otel::sdk::{self, WORK};
use proto::{
    auth::{Presenting, Token},
    config::{
        self as pb, config_discovery_client::ConfigDiscoveryClient, control_message,
        replica_message::Kind as ReplicaKind, resource,
    },
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, field, info, info_span, warn};

use crate::{
    auth::{Callers, Declared, GatewaySettings, IssuerConfig},
    catalog::CatalogReader,
    downstream::{ServerState, Servers, breaker::BreakerState},
    drain::Drain,
    mcp::{seal::SessionKeys, session::Sessions},
    peers::Peers,
    policy::{Policies, Policy, Rules},
    spec::{Probe, ServerSpec},
    telemetry::{Metrics, metrics::ResultLabels},
};

/// The name a NACK gives the snapshot's session key set.
const SESSION_KEYS: &str = "sessionKeys";
/// How often the session count and draining are looked at for reports.
const LOAD_REPORT_EVERY: Duration = Duration::from_secs(2);
/// Reconnect backoff, doubling from the first delay up to the cap, and
/// reset by any response from the control plane.
const INITIAL_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Server status flaps in bursts (starting → ready); report once it settles.
const HEALTH_DEBOUNCE: Duration = Duration::from_millis(100);
/// ACKs, NACKs and health reports waiting to be sent.
const OUTBOUND_BUFFER: usize = 8;
/// How often a token file is read again: a projected ServiceAccount token
/// is rotated well before it expires (at 80% of its life), and a new
/// token must be presented before the old one is refused.
const TOKEN_REREAD: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{address}` is not a usable gRPC URL: {source}")]
    Address {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(
        "`{0}` is https: give the CA its certificate is checked against (--control-plane-ca or SWITCHBOARD_CONTROL_PLANE_CA)"
    )]
    NoCa(String),
    #[error("the control plane's CA is not a PEM certificate")]
    BadCa,
    #[error("cannot connect to the control plane (hint: is it running and reachable?): {0}")]
    Connect(#[source] tonic::transport::Error),
    #[error("config stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("config stream closed by this replica")]
    OutboundClosed,
}

/// A control-plane gRPC endpoint: over TLS for an `https` URL, the server
/// checked against `ca_pem` (required there: the config stream carries
/// secrets, so nothing is trusted by default); plain HTTP/2 otherwise,
/// with a warning beyond loopback.
pub fn grpc_endpoint(
    address: &str,
    ca_pem: Option<&str>,
) -> Result<tonic::transport::Endpoint, Error> {
    let invalid = |source| Error::Address {
        address: address.to_owned(),
        source,
    };
    let endpoint = tonic::transport::Endpoint::from_shared(address.to_owned()).map_err(invalid)?;
    let uri = endpoint.uri().clone();
    if uri.scheme_str() != Some("https") {
        if !proto::auth::loopback_url(address) {
            warn!(%address, "talking to the control plane without TLS: config (secrets included) and the replica token cross the network in clear");
        }
        return Ok(endpoint);
    }
    let ca = ca_pem.ok_or_else(|| Error::NoCa(address.to_owned()))?;
    // tonic skips what it cannot parse, which would leave nothing trusted
    // and a gateway that never connects without saying why.
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let parsed = CertificateDer::pem_slice_iter(ca.as_bytes()).collect::<Result<Vec<_>, _>>();
    if !parsed.is_ok_and(|certificates| !certificates.is_empty()) {
        return Err(Error::BadCa);
    }
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca));
    endpoint.tls_config(tls).map_err(invalid)
}

/// Reads the token in `path` again every [`TOKEN_REREAD`] until `cancel`,
/// so a rotated token (a projected ServiceAccount token, a Secret updated
/// in place) is presented from the next call on. A file that cannot be
/// read, or holds no valid token, leaves the last good token in place.
pub async fn reread_token(path: PathBuf, presenting: Presenting, cancel: CancellationToken) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(TOKEN_REREAD) => {}
        }
        let read = tokio::fs::read_to_string(&path)
            .await
            .map_err(|err| err.to_string())
            .and_then(|text| Token::new(&text).map_err(|err| err.to_string()));
        match read {
            Ok(token) => {
                if presenting.replace(token) {
                    info!(file = %path.display(), "the control plane token changed; presenting the new one");
                }
                failing = false;
            }
            Err(error) if !failing => {
                warn!(file = %path.display(), %error, "cannot read the control plane token again; presenting the last one");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// What the replica has applied; read by `/healthz`, `/readyz` and, as
/// gauges, by each metrics scrape.
#[derive(Clone, Debug, Default)]
pub struct ConfigStatus {
    inner: Arc<ConfigStatusInner>,
}

#[derive(Debug, Default)]
struct ConfigStatusInner {
    applied_version: AtomicU64,
    connected: AtomicBool,
    /// Resources of the last snapshot that were refused, with reasons.
    rejected: Mutex<BTreeMap<String, String>>,
}

/// The subscriber task's inputs.
pub struct XdsClient {
    pub address: String,
    /// `address`, with TLS set up ([`grpc_endpoint`]).
    pub endpoint: tonic::transport::Endpoint,
    /// Who may call this gateway, as the snapshots declare.
    pub callers: Callers,
    pub policies: Policies,
    /// Presented on the config stream.
    pub token: Presenting,
    pub replica_id: String,
    pub servers: Servers,
    /// What clients call each server's probe tool, for health reports.
    pub catalog: CatalogReader,
    pub status: ConfigStatus,
    pub metrics: Arc<Metrics>,
    /// Set from each snapshot's key set.
    pub session_keys: SessionKeys,
    /// Counted in health reports, with whether the replica drains.
    pub sessions: Arc<Sessions>,
    pub drain: Drain,
    /// Where other replicas reach this one (sent in Hello), and where they
    /// are (from the control plane).
    pub peer_url: String,
    pub peers: Peers,
    /// When the process started: uptime, in Hello.
    pub started_at: std::time::SystemTime,
}

// === impl ConfigStatus ===

impl ConfigStatus {
    /// 0 until the first snapshot is applied.
    pub fn applied_version(&self) -> u64 {
        self.inner.applied_version.load(Ordering::Acquire)
    }

    pub fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    pub fn rejected(&self) -> BTreeMap<String, String> {
        self.inner.rejected.lock().clone()
    }
}

// === impl XdsClient ===

impl XdsClient {
    /// Runs until `cancel`, reconnecting forever.
    pub async fn run(self, cancel: CancellationToken) {
        let endpoint = self.endpoint.clone().connect_timeout(CONNECT_TIMEOUT);
        let mut backoff = INITIAL_BACKOFF;
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            let mut responded = false;
            let span = info_span!("xds", attempt, control_plane = %self.address);
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                outcome = self.run_stream(&endpoint, &mut responded).instrument(span) => outcome,
            };
            self.status.inner.connected.store(false, Ordering::Relaxed);
            match outcome {
                Ok(()) => info!("control plane closed the config stream"),
                Err(err) => {
                    warn!(error = %err, retry_in = ?backoff, "config stream down; serving the last applied config")
                }
            }
            if responded {
                backoff = INITIAL_BACKOFF;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn run_stream(
        &self,
        endpoint: &tonic::transport::Endpoint,
        responded: &mut bool,
    ) -> Result<(), Error> {
        let channel = endpoint.connect().await.map_err(Error::Connect)?;
        let mut client = ConfigDiscoveryClient::with_interceptor(channel, self.token.clone());
        let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
        let hello = ReplicaKind::Hello(pb::Hello {
            replica_id: self.replica_id.clone(),
            build_version: env!("CARGO_PKG_VERSION").to_owned(),
            applied_version: self.status.applied_version(),
            peer_url: self.peer_url.clone(),
            started_at_ms: unix_millis(self.started_at),
        });
        send(&tx, hello).await?;
        let mut inbound = client
            .stream_config(ReceiverStream::new(rx))
            .await?
            .into_inner();
        self.status.inner.connected.store(true, Ordering::Relaxed);
        info!("connected to the control plane");

        let mut health = self.servers.subscribe();
        // A probe tool's client-facing name comes with the catalog, a
        // moment after its server's state.
        let mut catalog = self.catalog.subscribe();
        let mut load = (self.session_count(), self.drain.is_draining());
        send(&tx, ReplicaKind::Health(self.health_report())).await?;
        // Sessions and draining change without a server changing: looked
        // at now and then, and reported when they did.
        let mut look = tokio::time::interval(LOAD_REPORT_EVERY);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = look.tick() => {
                    let now = (self.session_count(), self.drain.is_draining());
                    if now != load {
                        load = now;
                        send(&tx, ReplicaKind::Health(self.health_report())).await?;
                    }
                }
                message = inbound.message() => {
                    let Some(message) = message? else { return Ok(()) };
                    *responded = true;
                    match message.kind {
                        Some(control_message::Kind::Snapshot(snapshot)) => {
                            // In the trace of the push that sent it.
                            let span = info_span!(
                                target: WORK,
                                "config.apply",
                                version = snapshot.version,
                                resources = snapshot.resources.len(),
                                result = field::Empty,
                                trace_id = field::Empty,
                                span_id = field::Empty,
                            );
                            sdk::continue_from(&span, &snapshot.traceparent);
                            let reply = span.in_scope(|| self.apply(&snapshot, sdk::traceparent(&span)));
                            send(&tx, reply).instrument(span).await?;
                        }
                        Some(control_message::Kind::Peers(peers)) => {
                            debug!(peers = peers.peers.len(), "replicas of this control plane");
                            self.peers.replace(
                                peers.peers.into_iter().map(|p| (p.replica_id, p.url)).collect(),
                            );
                        }
                        None => {}
                    }
                }
                changed = health.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    tokio::time::sleep(HEALTH_DEBOUNCE).await;
                    health.mark_unchanged();
                    catalog.mark_unchanged();
                    send(&tx, ReplicaKind::Health(self.health_report())).await?;
                }
                changed = catalog.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    tokio::time::sleep(HEALTH_DEBOUNCE).await;
                    catalog.mark_unchanged();
                    health.mark_unchanged();
                    send(&tx, ReplicaKind::Health(self.health_report())).await?;
                }
            }
        }
    }

    /// Applies what it can of a snapshot. A rejected resource keeps its last
    /// good version (if any); the rest is applied.
    fn apply(&self, snapshot: &pb::Snapshot, traceparent: String) -> ReplicaKind {
        let Wanted {
            servers: mut desired,
            clients,
            policies,
            gateway,
            rejected,
        } = desired_servers(snapshot);
        for name in rejected.keys() {
            if desired.contains_key(name.as_str()) {
                continue;
            }
            if let Some(previous) = self.servers.spec(name) {
                desired.insert(previous.name.clone(), previous);
            }
        }
        self.servers.apply(desired);
        // Policies first: a client that comes with the policy restricting
        // it is never let in unrestricted, not even for a moment.
        self.policies.replace(policies);
        let mut rejected = with_refused_clients(rejected, self.callers.replace(clients));
        self.callers.configure(gateway);
        if !snapshot.session_keys.is_empty() {
            let usable = self.session_keys.set(&snapshot.session_keys);
            if usable < snapshot.session_keys.len() {
                // The usable ones apply (none: the last good set stays).
                rejected.insert(
                    SESSION_KEYS.to_owned(),
                    format!(
                        "{} of {} keys are not {} bytes",
                        snapshot.session_keys.len() - usable,
                        snapshot.session_keys.len(),
                        crate::mcp::seal::KEY_LEN
                    ),
                );
            }
        }
        self.status
            .inner
            .applied_version
            .store(snapshot.version, Ordering::Release);
        *self.status.inner.rejected.lock() = rejected.clone();
        let result = if rejected.is_empty() { "ack" } else { "nack" };
        tracing::Span::current().record("result", result);
        self.metrics
            .config_updates
            .get_or_create(&ResultLabels { result })
            .inc();
        if rejected.is_empty() {
            info!(
                version = snapshot.version,
                resources = snapshot.resources.len(),
                "snapshot applied, ACK"
            );
            return ReplicaKind::Ack(pb::Ack {
                version: snapshot.version,
                traceparent,
            });
        }
        let reason = rejected
            .iter()
            .map(|(name, why)| format!("{name}: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        warn!(version = snapshot.version, %reason, "snapshot partly rejected, NACK");
        ReplicaKind::Nack(pb::Nack {
            version: snapshot.version,
            reason,
            rejected: rejected
                .into_iter()
                .map(|(name, reason)| pb::RejectedResource { name, reason })
                .collect(),
            traceparent,
        })
    }

    fn session_count(&self) -> u32 {
        u32::try_from(self.sessions.count()).unwrap_or(u32::MAX)
    }

    fn health_report(&self) -> pb::HealthReport {
        let catalog = self.catalog.load();
        let servers = self
            .servers
            .list()
            .into_iter()
            .map(|handle| {
                let status = handle.status();
                let state = match status.state {
                    ServerState::Starting => pb::ServerState::Starting,
                    ServerState::Ready => pb::ServerState::Ready,
                    ServerState::Failed => pb::ServerState::Failed,
                };
                let breaker = match status.breaker {
                    BreakerState::Closed => pb::BreakerState::Closed,
                    BreakerState::Open => pb::BreakerState::Open,
                    BreakerState::HalfOpen => pb::BreakerState::HalfOpen,
                };
                let (last_error, last_error_at_ms) = status
                    .last_error
                    .map(|(error, at)| (error, unix_millis(at)))
                    .unwrap_or_default();
                let micros = |d: Option<Duration>| {
                    d.map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
                };
                pb::ServerHealth {
                    name: handle.spec.name.to_string(),
                    state: state.into(),
                    reason: status.reason,
                    tool_count: u32::try_from(status.tools.len()).unwrap_or(u32::MAX),
                    restarts: status.restarts,
                    protocol_version: status
                        .protocol_version
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                    breaker: breaker.into(),
                    last_error,
                    last_error_at_ms,
                    latency_p50_us: micros(status.latency_p50),
                    latency_p99_us: micros(status.latency_p99),
                    connections: u32::try_from(status.connections).unwrap_or(u32::MAX),
                    in_flight: status.in_flight,
                    probe: match &handle.spec.health.probe {
                        Probe::Tool { name, arguments } => catalog
                            .exposed_tool(&handle.spec.name, name)
                            .map(|exposed| pb::ToolProbe {
                                name: exposed.to_owned(),
                                arguments_json: serde_json::Value::Object(arguments.clone())
                                    .to_string(),
                            }),
                        Probe::Ping | Probe::Initialize => None,
                    },
                    asked_clients: status.asked_clients.unwrap_or_default().to_owned(),
                    prompt_count: u32::try_from(status.prompts).unwrap_or(u32::MAX),
                    resource_count: u32::try_from(status.resources).unwrap_or(u32::MAX),
                    breaker_retry_at_ms: status.breaker_retry_at.map_or(0, unix_millis),
                }
            })
            .collect();
        debug!("sending health report");
        pb::HealthReport {
            applied_version: self.status.applied_version(),
            servers,
            sessions: self.session_count(),
            draining: self.drain.is_draining(),
        }
    }
}

/// Unix time in milliseconds, for reports.
pub fn unix_millis(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn send(tx: &mpsc::Sender<pb::ReplicaMessage>, kind: ReplicaKind) -> Result<(), Error> {
    tx.send(pb::ReplicaMessage { kind: Some(kind) })
        .await
        .map_err(|_| Error::OutboundClosed)
}

type Desired = BTreeMap<Arc<str>, ServerSpec>;

/// What a snapshot declares, and what of it is refused.
struct Wanted {
    servers: Desired,
    clients: Vec<Declared>,
    policies: Vec<Policy>,
    gateway: GatewaySettings,
    /// By resource name.
    rejected: BTreeMap<String, String>,
}

/// Converts every resource, refusing invalid ones and duplicates of a name
/// or namespace (the first one wins).
fn desired_servers(snapshot: &pb::Snapshot) -> Wanted {
    let mut desired = Desired::new();
    let mut clients = Vec::new();
    let mut policies = Vec::new();
    let mut gateway = GatewaySettings::default();
    let mut rejected = BTreeMap::new();
    for resource in &snapshot.resources {
        let server = match &resource.kind {
            Some(resource::Kind::McpServer(server)) => server,
            Some(resource::Kind::McpClient(client)) => {
                clients.push(Declared {
                    name: client.name.clone(),
                    groups: client.groups.clone(),
                    token_sha256: client.token_sha256.clone(),
                });
                continue;
            }
            Some(resource::Kind::McpAccessPolicy(policy)) => {
                policies.push(policy_from(policy));
                continue;
            }
            Some(resource::Kind::McpGatewayConfig(config)) => {
                gateway = settings_from(config);
                continue;
            }
            None => {
                rejected.insert(String::new(), "resource of unknown kind".to_owned());
                continue;
            }
        };
        let spec = match ServerSpec::try_from(server) {
            Ok(spec) => spec,
            Err(err) => {
                rejected.insert(server.name.clone(), err.to_string());
                continue;
            }
        };
        if desired.contains_key(&spec.name) {
            rejected.insert(server.name.clone(), "duplicate name".to_owned());
        } else if let Some(owner) = desired.values().find(|s| s.namespace == spec.namespace) {
            let why = format!(
                "namespace `{}` is already used by `{}`",
                spec.namespace, owner.name
            );
            rejected.insert(server.name.clone(), why);
        } else {
            desired.insert(spec.name.clone(), spec);
        }
    }
    Wanted {
        servers: desired,
        clients,
        policies,
        gateway,
        rejected,
    }
}

fn settings_from(config: &pb::McpGatewayConfig) -> GatewaySettings {
    GatewaySettings {
        allow_anonymous: config.allow_anonymous,
        issuers: config
            .jwt_issuers
            .iter()
            .map(|issuer| IssuerConfig {
                issuer: issuer.issuer.clone(),
                audiences: issuer.audiences.clone(),
                jwks_uri: issuer.jwks_uri.clone(),
                leeway: Duration::from_millis(issuer.leeway_ms),
                name_claim: issuer.name_claim.clone(),
                groups_claim: issuer.groups_claim.clone(),
            })
            .collect(),
    }
}

fn policy_from(policy: &pb::McpAccessPolicy) -> Policy {
    let rules = |rules: &pb::AccessRules| Rules {
        tools: rules.tools.clone(),
        prompts: rules.prompts.clone(),
        resources: rules.resources.clone(),
    };
    Policy {
        name: policy.name.clone(),
        groups: policy.groups.clone(),
        clients: policy.clients.clone(),
        claims: policy
            .claims
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        allow: policy.allow.as_ref().map(rules),
        deny: policy.deny.as_ref().map(rules).unwrap_or_default(),
    }
}

/// Server rejections plus refused clients, the latter named `McpClient
/// <name>` (no server identity has a space), so a client never shadows,
/// or is taken for, a server of the same name.
fn with_refused_clients(
    mut rejected: BTreeMap<String, String>,
    refused: Vec<(String, String)>,
) -> BTreeMap<String, String> {
    rejected.extend(
        refused
            .into_iter()
            .map(|(name, why)| (format!("McpClient {name}"), why)),
    );
    rejected
}

impl Collector for ConfigStatus {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let version = ConstGauge::new(i64::try_from(self.applied_version()).unwrap_or(i64::MAX));
        version.encode(encoder.encode_descriptor(
            "config_version",
            "Version of the last applied config snapshot (0 before the first)",
            None,
            version.metric_type(),
        )?)?;
        let connected = ConstGauge::new(i64::from(self.connected()));
        connected.encode(encoder.encode_descriptor(
            "control_plane_connected",
            "1 while the config stream is up",
            None,
            connected.metric_type(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(name: &str, namespace: &str, command: &str) -> pb::Resource {
        pb::Resource {
            kind: Some(resource::Kind::McpServer(pb::McpServer {
                name: name.into(),
                namespace: namespace.into(),
                transport: Some(pb::mcp_server::Transport::Stdio(pb::StdioTransport {
                    command: command.into(),
                    ..Default::default()
                })),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn invalid_and_duplicate_resources_are_rejected_individually() {
        let snapshot = pb::Snapshot {
            version: 7,
            resources: vec![
                resource("a", "a", "cmd"),
                resource("b", "b", ""),
                resource("a", "x", "cmd"),
                resource("c", "a", "cmd"),
                resource("d", "d", "cmd"),
            ],
            ..Default::default()
        };
        let Wanted {
            servers: desired,
            rejected,
            ..
        } = desired_servers(&snapshot);
        assert_eq!(desired.keys().map(|k| &**k).collect::<Vec<_>>(), ["a", "d"]);
        assert_eq!(rejected["b"], "missing stdio.command");
        assert_eq!(rejected["c"], "namespace `a` is already used by `a`");
        assert!(rejected.contains_key("a"));
    }

    #[test]
    fn a_refused_client_never_stands_for_a_server_of_its_name() {
        let servers = BTreeMap::from([("d".to_owned(), "missing stdio.command".to_owned())]);
        let refused = vec![(
            "d".to_owned(),
            "another client has the same token".to_owned(),
        )];
        let rejected = with_refused_clients(servers, refused);
        assert_eq!(rejected["d"], "missing stdio.command");
        assert_eq!(rejected["McpClient d"], "another client has the same token");
    }
}
