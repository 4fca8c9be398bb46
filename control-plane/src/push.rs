//! Config push: the gRPC `ConfigDiscovery` service. Each gateway replica
//! holds one stream; it gets the current snapshot at once and every later
//! one as it is built, and answers each with ACK or NACK. What every replica
//! last said is kept in [`Replicas`] for status.

use std::{borrow::Cow, collections::BTreeMap, sync::Arc, time::Duration};

use parking_lot::Mutex;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::Counter, gauge::ConstGauge},
};
use proto::config::{
    self as pb, config_discovery_server::ConfigDiscovery, control_message,
    replica_message::Kind as ReplicaKind,
};
use proto::otel::sdk::{self, WORK};
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, field, info, info_span, warn};

use crate::{
    auth::{Replica, ReplicaGate},
    metrics::encode_counters,
    snapshot::SnapshotWatch,
};

/// How often an open stream's credential is checked again: with the
/// review cache's minute, a deleted pod's stream ends within ~90 s.
const READMIT_EVERY: Duration = Duration::from_secs(30);
/// A replica that connects but says nothing is dropped after this long.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Snapshots are sent one at a time and each is the whole config, so a
/// slow replica only ever needs the newest: a tiny buffer is enough.
const OUTBOUND_BUFFER: usize = 2;
/// A replica whose stream ended is shown (disconnected) this long, then
/// forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(10 * 60);

/// The gRPC service; cheap to clone.
#[derive(Clone)]
pub struct ConfigPushService {
    snapshots: SnapshotWatch,
    replicas: Replicas,
    gate: ReplicaGate,
    cancel: CancellationToken,
}

/// Answers to config snapshots, over all replicas.
#[derive(Clone, Debug, Default)]
struct ConfigCounters {
    acks: Counter,
    nacks: Counter,
}

/// What each replica that ever connected last reported, by replica id.
#[derive(Clone, Default)]
pub struct Replicas {
    inner: Arc<Mutex<ReplicaTable>>,
    counters: ConfigCounters,
    /// Bumped when a replica connects or goes: streams send [`pb::Peers`].
    peers_changed: Arc<watch::Sender<u64>>,
}

#[derive(Default)]
struct ReplicaTable {
    /// Bumped on every change to what [`Replicas::snapshot`] shows.
    revision: u64,
    next_connection: u64,
    by_id: BTreeMap<String, ReplicaStatus>,
    /// Replicas connected to other control-plane pods, and where each
    /// takes what its peers hand it (`peers.rs`).
    elsewhere: BTreeMap<String, String>,
}

/// Serialized for `/status` and for the reports control-plane pods share
/// (`peers.rs`), and read back from the latter.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    pub connected: bool,
    pub build_version: String,
    /// Last snapshot version sent on the current or last stream.
    pub sent_version: u64,
    /// Last version the replica applied completely.
    pub acked_version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_nack: Option<NackStatus>,
    /// Per-server health from the replica's last report.
    pub servers: Vec<ServerHealthStatus>,
    /// Client sessions it holds, live and parked, as last reported.
    #[serde(default)]
    pub sessions: u32,
    /// It is stopping: not ready, taking no new requests.
    #[serde(default)]
    pub draining: bool,
    /// Where other replicas hand it a client's answer (its Hello).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub peer_url: String,
    /// When the replica process started (Unix milliseconds; 0: unknown).
    #[serde(default)]
    pub started_at: u64,
    /// When its last health report came (Unix milliseconds; 0: none yet).
    #[serde(default)]
    pub reported_at: u64,
    #[serde(skip)]
    connection: u64,
    /// When its stream ended; it is forgotten [`FORGET_AFTER`] later.
    #[serde(skip)]
    disconnected_at: Option<Instant>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NackStatus {
    pub version: u64,
    pub reason: String,
    pub rejected: BTreeMap<String, String>,
}

/// A server's health probe tool, as clients call it through the gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeTool {
    pub name: String,
    pub arguments: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerHealthStatus {
    pub name: String,
    pub state: Cow<'static, str>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub tool_count: u32,
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol_version: String,
    pub breaker: Cow<'static, str>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    /// Unix milliseconds; 0 when there was none.
    pub last_error_at: u64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub connections: u32,
    pub in_flight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeTool>,
    /// What the server first asked a client on a shared connection: its
    /// connections then carry one client session's calls at a time.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub asked_clients: String,
    #[serde(default)]
    pub prompt_count: u32,
    #[serde(default)]
    pub resource_count: u32,
    /// While the breaker is open: when it lets a trial call through (Unix
    /// milliseconds; 0 otherwise).
    #[serde(default)]
    pub breaker_retry_at: u64,
}

// === impl ConfigPushService ===

impl ConfigPushService {
    pub fn new(
        snapshots: SnapshotWatch,
        replicas: Replicas,
        gate: ReplicaGate,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            snapshots,
            replicas,
            gate,
            cancel,
        }
    }

    pub fn into_server(self) -> pb::config_discovery_server::ConfigDiscoveryServer<Self> {
        pb::config_discovery_server::ConfigDiscoveryServer::new(self)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
    }
}

#[tonic::async_trait]
impl ConfigDiscovery for ConfigPushService {
    type StreamConfigStream = ReceiverStream<Result<pb::ControlMessage, Status>>;

    async fn stream_config(
        &self,
        request: Request<Streaming<pb::ReplicaMessage>>,
    ) -> Result<Response<Self::StreamConfigStream>, Status> {
        let caller = self.gate.admit(&request).await?;
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(pb::ReplicaMessage {
                kind: Some(ReplicaKind::Hello(hello)),
            }))) if !hello.replica_id.is_empty() => hello,
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(Status::deadline_exceeded("no Hello within 10s")),
            Ok(_) => {
                return Err(Status::invalid_argument(
                    "the first message must be Hello with a non-empty replica_id",
                ));
            }
        };
        // Only now is the table touched: a replica id is its credential's.
        caller.may_be(&hello.replica_id)?;
        let connection = self.replicas.connected(&hello);
        let span = info_span!("replica", replica.id = %hello.replica_id, client.addr = %peer);
        span.in_scope(|| {
            info!(
                build = %hello.build_version,
                applied_version = hello.applied_version,
                "replica connected"
            );
        });

        let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
        let stream = ReplicaStream {
            replica_id: hello.replica_id,
            caller,
            gate: self.gate.clone(),
            connection,
            inbound,
            outbound: tx,
            snapshots: self.snapshots.clone(),
            replicas: self.replicas.clone(),
        };
        // Owned by the stream: it ends when the replica goes away or on shutdown.
        tokio::spawn(stream.run(self.cancel.clone()).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One replica's stream, from Hello to disconnect.
struct ReplicaStream {
    replica_id: String,
    /// Who it proved to be, proved again every [`READMIT_EVERY`].
    caller: Replica,
    gate: ReplicaGate,
    connection: u64,
    inbound: Streaming<pb::ReplicaMessage>,
    outbound: mpsc::Sender<Result<pb::ControlMessage, Status>>,
    snapshots: SnapshotWatch,
    replicas: Replicas,
}

// === impl ReplicaStream ===

impl ReplicaStream {
    async fn run(mut self, cancel: CancellationToken) {
        let mut last_sent = 0;
        let mut peers = self.replicas.peers_changed.subscribe();
        peers.mark_changed();
        let mut readmit = tokio::time::interval(READMIT_EVERY);
        readmit.tick().await;
        loop {
            let snapshot = self.snapshots.borrow_and_update().clone();
            if snapshot.version != 0 && snapshot.version != last_sent {
                let version = snapshot.version;
                // Each replica's apply is a child of its own push.
                let push = info_span!(
                    target: WORK,
                    "config.push",
                    version,
                    trace_id = field::Empty,
                    span_id = field::Empty,
                );
                // A replica connecting later starts a trace of its own
                // rather than joining a change long past.
                let change = if last_sent == 0 {
                    ""
                } else {
                    &snapshot.traceparent
                };
                sdk::continue_from(&push, change);
                let mut sent = (*snapshot).clone();
                sent.traceparent = sdk::traceparent(&push);
                let message = pb::ControlMessage {
                    kind: Some(control_message::Kind::Snapshot(sent)),
                };
                let delivered = self.outbound.send(Ok(message)).instrument(push).await;
                if delivered.is_err() {
                    break;
                }
                debug!(version, "snapshot sent");
                self.replicas
                    .update(&self.replica_id, |r| r.sent_version = version);
                last_sent = version;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.outbound.closed() => break,
                changed = self.snapshots.changed() => if changed.is_err() { break },
                changed = peers.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let message = pb::ControlMessage {
                        kind: Some(control_message::Kind::Peers(self.replicas.peers())),
                    };
                    if self.outbound.send(Ok(message)).await.is_err() {
                        break;
                    }
                }
                _ = readmit.tick() => if let Err(status) = self.gate.readmit(&self.caller).await {
                    warn!(error = %status.message(), "closing a replica's stream: its credential no longer holds");
                    let _ = self.outbound.send(Err(status)).await;
                    break;
                },
                message = self.inbound.message() => match message {
                    Ok(Some(message)) => self.handle(message),
                    Ok(None) => break,
                    Err(status) => {
                        warn!(error = %status, "replica stream failed");
                        break;
                    }
                },
            }
        }
        self.replicas
            .disconnected(&self.replica_id, self.connection);
        info!("replica disconnected");
    }

    fn handle(&self, message: pb::ReplicaMessage) {
        match message.kind {
            Some(ReplicaKind::Ack(ack)) => {
                let _received = received(&ack.traceparent, ack.version, "ack").entered();
                debug!(version = ack.version, "ACK");
                self.replicas.counters.acks.inc();
                self.replicas
                    .update(&self.replica_id, |r| r.acked_version = ack.version);
            }
            Some(ReplicaKind::Nack(nack)) => {
                let _received = received(&nack.traceparent, nack.version, "nack").entered();
                warn!(version = nack.version, reason = %nack.reason, "NACK");
                self.replicas.counters.nacks.inc();
                self.replicas.update(&self.replica_id, |r| {
                    r.last_nack = Some(NackStatus {
                        version: nack.version,
                        reason: nack.reason,
                        rejected: nack
                            .rejected
                            .into_iter()
                            .map(|x| (x.name, x.reason))
                            .collect(),
                    });
                });
            }
            Some(ReplicaKind::Health(report)) => {
                let servers = report.servers.into_iter().map(health_status).collect();
                self.replicas.update(&self.replica_id, |r| {
                    r.servers = servers;
                    r.sessions = report.sessions;
                    r.draining = report.draining;
                    r.reported_at = unix_millis_now();
                });
            }
            Some(ReplicaKind::Hello(_)) | None => {
                warn!("unexpected message after Hello, ignored");
            }
        }
    }
}

/// The span of a replica's ACK or NACK, in the trace of its apply.
fn received(traceparent: &str, version: u64, result: &'static str) -> tracing::Span {
    let span = info_span!(
        target: WORK,
        "config.acknowledged",
        version,
        result,
        trace_id = field::Empty,
        span_id = field::Empty,
    );
    sdk::continue_from(&span, traceparent);
    span
}

fn health_status(health: pb::ServerHealth) -> ServerHealthStatus {
    let state = match health.state() {
        pb::ServerState::Unspecified => "unknown",
        pb::ServerState::Starting => "starting",
        pb::ServerState::Ready => "ready",
        pb::ServerState::Failed => "failed",
    };
    let breaker = match health.breaker() {
        pb::BreakerState::Unspecified => "unknown",
        pb::BreakerState::Closed => "closed",
        pb::BreakerState::Open => "open",
        pb::BreakerState::HalfOpen => "halfOpen",
    };
    ServerHealthStatus {
        name: health.name,
        state: state.into(),
        reason: health.reason,
        tool_count: health.tool_count,
        restarts: health.restarts,
        protocol_version: health.protocol_version,
        breaker: breaker.into(),
        last_error: health.last_error,
        last_error_at: health.last_error_at_ms,
        latency_p50_us: health.latency_p50_us,
        latency_p99_us: health.latency_p99_us,
        connections: health.connections,
        in_flight: health.in_flight,
        asked_clients: health.asked_clients,
        prompt_count: health.prompt_count,
        resource_count: health.resource_count,
        breaker_retry_at: health.breaker_retry_at_ms,
        // A replica's report: arguments that are not a JSON object are
        // left out rather than passed on.
        probe: health.probe.and_then(|probe| {
            let arguments = serde_json::from_str::<serde_json::Value>(&probe.arguments_json)
                .ok()
                .filter(serde_json::Value::is_object)?;
            Some(ProbeTool {
                name: probe.name,
                arguments,
            })
        }),
    }
}

impl ReplicaStatus {
    /// The same, with the figures that change on every call (latencies,
    /// calls in flight, sessions) zeroed: what other pods are told.
    pub(crate) fn without_latencies(&self) -> Self {
        let mut status = self.clone();
        status.sessions = 0;
        status.reported_at = 0;
        for server in &mut status.servers {
            server.latency_p50_us = 0;
            server.latency_p99_us = 0;
            server.in_flight = 0;
        }
        status
    }
}

fn unix_millis_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Drops the replicas gone for [`FORGET_AFTER`] or longer.
fn forget_departed(by_id: &mut BTreeMap<String, ReplicaStatus>, now: Instant) {
    by_id.retain(|_, r| {
        r.disconnected_at
            .is_none_or(|at| now.duration_since(at) < FORGET_AFTER)
    });
}

#[cfg(test)]
impl ReplicaStatus {
    /// A connected replica, for status computations in tests.
    pub(crate) fn connected_with(
        acked_version: u64,
        servers: Vec<ServerHealthStatus>,
        last_nack: Option<NackStatus>,
    ) -> Self {
        Self {
            connected: true,
            build_version: String::new(),
            sent_version: acked_version,
            acked_version,
            last_nack,
            servers,
            sessions: 0,
            draining: false,
            peer_url: String::new(),
            started_at: 0,
            reported_at: 0,
            connection: 0,
            disconnected_at: None,
        }
    }
}

// === impl Replicas ===

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Replicas")
    }
}

impl Collector for Replicas {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        encode_counters(
            &mut encoder,
            &[
                (
                    "config_acks",
                    "Snapshots replicas applied (ACK)",
                    &self.counters.acks,
                ),
                (
                    "config_nacks",
                    "Snapshots replicas refused in part (NACK)",
                    &self.counters.nacks,
                ),
            ],
        )?;
        let connected = self
            .inner
            .lock()
            .by_id
            .values()
            .filter(|r| r.connected)
            .count();
        let connected = ConstGauge::new(i64::try_from(connected).unwrap_or(i64::MAX));
        connected.encode(encoder.encode_descriptor(
            "replicas_connected",
            "Gateway replicas holding a config stream",
            None,
            connected.metric_type(),
        )?)
    }
}

impl Replicas {
    /// Records a new stream and returns its connection number; a replica
    /// that reconnects before its old stream is noticed dead gets a new one.
    fn connected(&self, hello: &pb::Hello) -> u64 {
        let mut table = self.inner.lock();
        table.next_connection += 1;
        table.revision += 1;
        let connection = table.next_connection;
        let previous = table.by_id.remove(&hello.replica_id);
        table.by_id.insert(
            hello.replica_id.clone(),
            ReplicaStatus {
                connected: true,
                build_version: hello.build_version.clone(),
                sent_version: 0,
                acked_version: hello.applied_version,
                last_nack: None,
                servers: previous.map(|p| p.servers).unwrap_or_default(),
                sessions: 0,
                draining: false,
                peer_url: hello.peer_url.clone(),
                started_at: hello.started_at_ms,
                reported_at: 0,
                connection,
                disconnected_at: None,
            },
        );
        drop(table);
        self.peers_changed.send_modify(|n| *n += 1);
        connection
    }

    /// Marks the stream ended, and forgets replicas gone long enough: pods
    /// get new names on every rollout, so the table would only grow.
    fn disconnected(&self, replica_id: &str, connection: u64) {
        let now = Instant::now();
        let mut table = self.inner.lock();
        if let Some(status) = table.by_id.get_mut(replica_id)
            && status.connection == connection
        {
            status.connected = false;
            status.disconnected_at = Some(now);
        }
        forget_departed(&mut table.by_id, now);
        table.revision += 1;
        drop(table);
        self.peers_changed.send_modify(|n| *n += 1);
    }

    /// The connected replicas, here and on other pods, and where each
    /// takes what its peers hand it.
    pub(crate) fn peers(&self) -> pb::Peers {
        let table = self.inner.lock();
        let here = table
            .by_id
            .iter()
            .filter(|(_, r)| r.connected && !r.peer_url.is_empty())
            .map(|(id, r)| (id, &r.peer_url));
        let mut peers: BTreeMap<&String, &String> = table.elsewhere.iter().collect();
        peers.extend(here);
        pb::Peers {
            peers: peers
                .into_iter()
                .map(|(id, url)| pb::Peer {
                    replica_id: id.clone(),
                    url: url.clone(),
                })
                .collect(),
        }
    }

    /// The replicas other control-plane pods report connected; streams
    /// tell theirs when that changes.
    pub fn set_elsewhere(&self, elsewhere: BTreeMap<String, String>) {
        let mut table = self.inner.lock();
        if table.elsewhere == elsewhere {
            return;
        }
        table.elsewhere = elsewhere;
        table.revision += 1;
        drop(table);
        self.peers_changed.send_modify(|n| *n += 1);
    }

    fn update(&self, replica_id: &str, f: impl FnOnce(&mut ReplicaStatus)) {
        let mut table = self.inner.lock();
        if let Some(status) = table.by_id.get_mut(replica_id) {
            f(status);
            table.revision += 1;
        }
    }

    /// A number that changes whenever what [`Replicas::snapshot`] shows
    /// does (other pods' replicas aside): a reader that saw it before has
    /// nothing new to read while it stays.
    pub fn revision(&self) -> u64 {
        self.inner.lock().revision
    }

    /// A copy of every replica's status, by replica id: the connected
    /// ones, and those gone for less than [`FORGET_AFTER`].
    pub fn snapshot(&self) -> BTreeMap<String, ReplicaStatus> {
        let now = Instant::now();
        let mut table = self.inner.lock();
        forget_departed(&mut table.by_id, now);
        table.by_id.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(id: &str) -> pb::Hello {
        pb::Hello {
            replica_id: id.to_owned(),
            build_version: "test".to_owned(),
            applied_version: 0,
            peer_url: String::new(),
            started_at_ms: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn departed_replicas_are_shown_a_while_then_forgotten() {
        let replicas = Replicas::default();
        let gone = replicas.connected(&hello("gone"));
        let back = replicas.connected(&hello("back"));
        replicas.connected(&hello("stays"));
        replicas.disconnected("gone", gone);
        replicas.disconnected("back", back);
        tokio::time::advance(FORGET_AFTER / 2).await;
        let shown = replicas.snapshot();
        assert_eq!(shown.len(), 3);
        assert!(!shown["gone"].connected);
        replicas.connected(&hello("back"));
        tokio::time::advance(FORGET_AFTER / 2).await;
        let shown: Vec<String> = replicas.snapshot().into_keys().collect();
        assert_eq!(
            shown,
            ["back", "stays"],
            "reconnected and connected ones stay"
        );
    }
}
