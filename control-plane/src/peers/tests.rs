use std::collections::BTreeMap;

use super::*;
use crate::push::{NackStatus, ServerHealthStatus};

fn config(identity: &str) -> PeerConfig {
    PeerConfig {
        namespace: "ops".into(),
        lease: "switchboard-control-plane".into(),
        identity: identity.into(),
    }
}

fn health(state: &'static str) -> ServerHealthStatus {
    ServerHealthStatus {
        name: "demo".into(),
        state: state.into(),
        reason: String::new(),
        tool_count: 3,
        restarts: 0,
        protocol_version: "2025-11-25".into(),
        breaker: "halfOpen".into(),
        last_error: String::new(),
        last_error_at: 0,
        latency_p50_us: 120,
        latency_p99_us: 900,
        connections: 1,
        in_flight: 2,
        probe: None,
        asked_clients: String::new(),
        prompt_count: 0,
        resource_count: 0,
        breaker_retry_at: 0,
    }
}

/// The ConfigMap a pod publishes for `replicas`, as another pod reads it.
fn published(
    identity: &str,
    version: &str,
    replicas: &BTreeMap<String, ReplicaStatus>,
) -> ConfigMap {
    let config = config(identity);
    let mut map = report_map(&config, &config.own_name(), &report_json(replicas, 70));
    map.metadata.resource_version = Some(version.into());
    map
}

#[tokio::test(start_paused = true)]
async fn replicas_on_other_pods_are_merged_until_their_report_goes_stale() {
    let nack = NackStatus {
        version: 70,
        reason: "bad".into(),
        rejected: [("demo".to_owned(), "no such command".to_owned())].into(),
    };
    let theirs = BTreeMap::from([
        (
            "gw-b".to_owned(),
            ReplicaStatus::connected_with(70, vec![health("ready")], Some(nack)),
        ),
        (
            "gw-a".to_owned(),
            ReplicaStatus::connected_with(6, vec![health("failed")], None),
        ),
    ]);
    let ours = BTreeMap::from([(
        "gw-a".to_owned(),
        ReplicaStatus::connected_with(7, vec![health("starting")], None),
    )]);
    let peers = Peers::default();
    peers.apply("pod-b".into(), &published("pod-b", "1", &theirs));

    let merged = peers.merged(ours.clone(), 5);
    assert_eq!(merged.len(), 2);
    // A replica connected here is described by this pod, not by a report.
    assert_eq!(merged["gw-a"].servers[0].state, "starting");
    // One connected elsewhere comes whole, NACK included, without latencies;
    // current with its own pod's snapshot (70) reads as current with this
    // pod's (5).
    let b = &merged["gw-b"];
    assert_eq!((b.acked_version, &*b.servers[0].state), (5, "ready"));
    assert_eq!(b.servers[0].breaker, "halfOpen");
    assert_eq!(b.last_nack.as_ref().map(|n| n.version), Some(5));
    assert_eq!(
        (b.servers[0].latency_p99_us, b.servers[0].in_flight),
        (0, 0)
    );

    // Renewed (a new resourceVersion) before it goes stale: still counted.
    tokio::time::advance(STALE_AFTER - HEARTBEAT).await;
    peers.apply("pod-b".into(), &published("pod-b", "2", &theirs));
    tokio::time::advance(HEARTBEAT * 2).await;
    assert_eq!(peers.merged(ours.clone(), 5).len(), 2);
    // The same version seen again does not count as a renewal: the pod
    // stopped writing, and its report is ignored once stale.
    peers.apply("pod-b".into(), &published("pod-b", "2", &theirs));
    tokio::time::advance(STALE_AFTER).await;
    assert_eq!(peers.merged(ours, 5).len(), 1);
}

#[test]
fn report_names_and_labels_are_valid_whatever_the_identity() {
    let config = PeerConfig {
        namespace: "ops".into(),
        lease: "release-name-control-plane".into(),
        identity: "Host_Name-1234/".into(),
    };
    let name = config.own_name();
    assert_eq!(name, "release-name-control-plane-replicas-host-name-1234");
    assert!(
        name.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    );
    let long = PeerConfig {
        lease: "x".repeat(100),
        ..config
    };
    assert_eq!(long.label().len(), 63);
    assert!(long.own_name().len() <= 253);
}

#[test]
fn state_names_from_a_newer_pod_are_read_as_they_are() {
    let json = r#"{"snapshotVersion":3,"replicas":{"gw":{"connected":true,"buildVersion":"9","sentVersion":1,"ackedVersion":1,
        "servers":[{"name":"s","state":"hibernating","toolCount":0,"restarts":0,"breaker":"closed",
        "lastErrorAt":0,"latencyP50Us":0,"latencyP99Us":0,"connections":0,"inFlight":0}]}}}"#;
    let report: Report = serde_json::from_str(json).expect("readable");
    assert_eq!(report.replicas["gw"].servers[0].state, "hibernating");
    assert_eq!(report.replicas["gw"].servers[0].breaker, "closed");
}

#[tokio::test(start_paused = true)]
async fn replicas_hear_where_the_other_pods_replicas_are_until_their_report_goes_stale() {
    let mut theirs = ReplicaStatus::connected_with(70, vec![health("ready")], None);
    theirs.peer_url = "http://10.0.0.9:8787/mcp".into();
    let mut gone = ReplicaStatus::connected_with(70, Vec::new(), None);
    gone.peer_url = "http://10.0.0.8:8787/mcp".into();
    gone.connected = false;
    let report = BTreeMap::from([("gw-b".to_owned(), theirs), ("gw-c".to_owned(), gone)]);
    let peers = Peers::default();
    peers.apply("pod-b".into(), &published("pod-b", "1", &report));
    let replicas = Replicas::default();
    replicas.set_elsewhere(peers.elsewhere());
    let told: Vec<(String, String)> = replicas
        .peers()
        .peers
        .into_iter()
        .map(|p| (p.replica_id, p.url))
        .collect();
    assert_eq!(
        told,
        [("gw-b".to_owned(), "http://10.0.0.9:8787/mcp".to_owned())],
        "only connected replicas, from live reports"
    );
    tokio::time::advance(STALE_AFTER).await;
    replicas.set_elsewhere(peers.elsewhere());
    assert!(
        replicas.peers().peers.is_empty(),
        "a stale report names none"
    );
}
