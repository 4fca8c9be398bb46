//! Replica reports shared between control-plane pods. Gateways connect to
//! whichever pod the Service picks, so each pod hears only its own
//! replicas, while the one leader writes every `McpServer`'s status: it
//! must know them all, and so must every pod's `/status`.
//!
//! Each pod publishes what its connected replicas last reported in a
//! ConfigMap of its own (`<lease>-replicas-<pod>`, labelled with the lease
//! name) in the Lease's namespace, and every pod watches all of them. A
//! pod rewrites its ConfigMap when its replicas' state changes and at
//! least every [`HEARTBEAT`]; a report that has not changed for
//! [`STALE_AFTER`] by the reader's own clock is ignored (its pod died
//! without cleaning up), so pods' clocks need not agree. A pod deletes its
//! ConfigMap when it shuts down. Latencies are left out of the reports:
//! they change on every call and no status shows them. Each pod numbers its
//! snapshots itself, so a report carries its pod's snapshot version, and a
//! replica up to date with (or refusing) its own pod's snapshot is read as
//! up to date with (or refusing) the reader's.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use serde::{Deserialize, Serialize};

use crate::{
    push::{ReplicaStatus, Replicas},
    snapshot::SnapshotWatch,
};

/// How often this pod's report is compared with what it last published.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(2);
/// A report is rewritten at least this often, so readers see it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// A report unchanged for this long, by the reader's clock, is ignored.
pub const STALE_AFTER: Duration = Duration::from_secs(30);
/// How long one ConfigMap write or delete may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The label that marks a report, valued with the lease name.
const REPORT_LABEL: &str = "switchboard.dev/replica-reports";
/// The ConfigMap key that holds the replicas, as JSON.
const REPLICAS_KEY: &str = "replicas.json";
/// The ConfigMap key that changes with every heartbeat.
const RENEWED_KEY: &str = "renewed";
/// Field manager of this pod's server-side applies.
const FIELD_MANAGER: &str = "switchboard-control-plane";

/// Where and as whom this pod shares its replicas' reports.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name: pods of one installation share reports.
    pub lease: String,
    /// This pod's identity in the Lease.
    pub identity: String,
}

/// What the other pods' replicas last reported; cheap to clone.
#[derive(Clone, Default)]
pub struct Peers {
    inner: Arc<Mutex<BTreeMap<String, PeerReport>>>,
}

/// One pod's report, and when this pod last saw it change.
struct PeerReport {
    version: Option<String>,
    seen: Instant,
    report: Report,
}

/// What a pod publishes: its snapshot version and its connected replicas.
#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    snapshot_version: u64,
    replicas: BTreeMap<String, ReplicaStatus>,
}

// === impl PeerConfig ===

impl PeerConfig {
    /// This pod's ConfigMap: a DNS subdomain name, whatever the identity.
    fn own_name(&self) -> String {
        let raw = format!("{}-replicas-{}", self.lease, self.identity);
        let mut name: String = raw
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .take(253)
            .collect();
        while name.ends_with(['-', '.']) {
            name.pop();
        }
        name
    }

    /// The label value: at most 63 characters, as label values must be.
    fn label(&self) -> String {
        let mut value: String = self.lease.chars().take(63).collect();
        while value.ends_with(['-', '.', '_']) {
            value.pop();
        }
        value
    }
}

// === impl Peers ===

impl Peers {
    /// Every replica's status: this pod's own, plus, for replicas not
    /// connected here, what live reports of other pods say of them, with
    /// their versions read against `snapshot_version`, this pod's.
    pub fn merged(
        &self,
        mut local: BTreeMap<String, ReplicaStatus>,
        snapshot_version: u64,
    ) -> BTreeMap<String, ReplicaStatus> {
        let peers = self.inner.lock();
        for peer in peers.values().filter(|r| r.seen.elapsed() < STALE_AFTER) {
            let theirs = peer.report.snapshot_version;
            // Current with its own pod is current; anything older is not.
            let translate = |version: u64| {
                if version >= theirs {
                    snapshot_version
                } else {
                    0
                }
            };
            for (id, status) in &peer.report.replicas {
                let here = local.get(id).is_some_and(|mine| mine.connected);
                if here || !status.connected {
                    continue;
                }
                let mut status = status.clone();
                status.acked_version = translate(status.acked_version);
                status.sent_version = translate(status.sent_version);
                if let Some(nack) = status.last_nack.as_mut() {
                    nack.version = translate(nack.version);
                }
                local.insert(id.clone(), status);
            }
        }
        local
    }

    /// Replicas live reports of other pods say are connected, and where
    /// their peers reach them.
    fn elsewhere(&self) -> BTreeMap<String, String> {
        let peers = self.inner.lock();
        peers
            .values()
            .filter(|r| r.seen.elapsed() < STALE_AFTER)
            .flat_map(|r| &r.report.replicas)
            .filter(|(_, status)| status.connected && !status.peer_url.is_empty())
            .map(|(id, status)| (id.clone(), status.peer_url.clone()))
            .collect()
    }

    fn apply(&self, pod: String, map: &ConfigMap) {
        let version = map.metadata.resource_version.clone();
        let report = map
            .data
            .as_ref()
            .and_then(|data| data.get(REPLICAS_KEY))
            .and_then(|json| match serde_json::from_str(json) {
                Ok(report) => Some(report),
                Err(error) => {
                    warn!(%pod, %error, "ignoring an unreadable replica report");
                    None
                }
            })
            .unwrap_or_default();
        let mut peers = self.inner.lock();
        let changed = peers.get(&pod).is_none_or(|r| r.version != version);
        let seen = match peers.get(&pod) {
            Some(report) if !changed => report.seen,
            _ => Instant::now(),
        };
        peers.insert(
            pod,
            PeerReport {
                version,
                seen,
                report,
            },
        );
    }
}

/// Publishes this pod's replicas until `cancel`, then deletes its report.
pub async fn publish(
    client: Client,
    config: PeerConfig,
    replicas: Replicas,
    snapshots: SnapshotWatch,
    cancel: CancellationToken,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &config.namespace);
    let name = config.own_name();
    let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published: Option<(String, Instant)> = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let version = snapshots.borrow().version;
        let report = report_json(&replicas.snapshot(), version);
        let fresh = published
            .as_ref()
            .is_some_and(|(json, at)| *json == report && at.elapsed() < HEARTBEAT);
        if fresh {
            continue;
        }
        let map = report_map(&config, &name, &report);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let written = tokio::time::timeout(
            WRITE_TIMEOUT,
            api.patch(&name, &params, &Patch::Apply(&map)),
        )
        .await;
        match written {
            Ok(Ok(_)) => {
                debug!(configmap = %name, "replica report published");
                published = Some((report, Instant::now()));
            }
            Ok(Err(error)) => warn!(configmap = %name, %error, "cannot publish the replica report"),
            Err(_) => warn!(configmap = %name, "cannot publish the replica report: no answer"),
        }
    }
    let deleted =
        tokio::time::timeout(WRITE_TIMEOUT, api.delete(&name, &DeleteParams::default())).await;
    match deleted {
        Ok(Ok(_)) => info!(configmap = %name, "replica report removed"),
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => {}
        _ => {
            warn!(configmap = %name, "could not remove the replica report; others ignore it once stale")
        }
    }
}

/// Keeps `peers` up to date with the other pods' reports until `cancel`,
/// and tells this pod's replicas where the other pods' replicas are.
pub async fn watch(
    client: Client,
    config: PeerConfig,
    peers: Peers,
    replicas: Replicas,
    cancel: CancellationToken,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &config.namespace);
    let own = config.own_name();
    let label = config.label();
    let selector = format!("{REPORT_LABEL}={label}");
    let mut events = watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    // Reports listed since the last `Init`, swapped in at `InitDone`.
    let mut listing: Option<Vec<ConfigMap>> = None;
    // A pod that died without removing its report sends no more events:
    // its replicas drop out when the report goes stale, checked this often.
    let mut stale_check = tokio::time::interval(STALE_AFTER / 3);
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => return,
            _ = stale_check.tick() => {
                replicas.set_elsewhere(peers.elsewhere());
                continue;
            }
            event = events.next() => match event {
                Some(event) => event,
                None => return,
            },
        };
        // The selector is the API server's to apply; checked here too.
        let report_of = |map: &ConfigMap| {
            let labelled = map
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REPORT_LABEL))
                .is_some_and(|value| *value == label);
            let name = map.metadata.name.clone()?;
            (labelled && name != own).then_some(name)
        };
        match event {
            Ok(watcher::Event::Init) => listing = Some(Vec::new()),
            Ok(watcher::Event::InitApply(map)) => {
                if let Some(listing) = listing.as_mut() {
                    listing.push(map);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let listed = listing.take().unwrap_or_default();
                let names: Vec<String> = listed.iter().filter_map(report_of).collect();
                peers.inner.lock().retain(|pod, _| names.contains(pod));
                for map in &listed {
                    if let Some(pod) = report_of(map) {
                        peers.apply(pod, map);
                    }
                }
            }
            Ok(watcher::Event::Apply(map)) => {
                if let Some(pod) = report_of(&map) {
                    peers.apply(pod, &map);
                }
            }
            Ok(watcher::Event::Delete(map)) => {
                if let Some(pod) = report_of(&map) {
                    peers.inner.lock().remove(&pod);
                }
            }
            Err(error) => warn!(%error, "replica report watch failed; retrying"),
        }
        // Reports are rewritten every heartbeat: stale ones drop out here.
        replicas.set_elsewhere(peers.elsewhere());
    }
}

/// This pod's connected replicas as published: without latencies.
fn report_json(replicas: &BTreeMap<String, ReplicaStatus>, snapshot_version: u64) -> String {
    let report = Report {
        snapshot_version,
        replicas: replicas
            .iter()
            .filter(|(_, status)| status.connected)
            .map(|(id, status)| (id.clone(), status.without_latencies()))
            .collect(),
    };
    serde_json::to_string(&report).unwrap_or_default()
}

fn report_map(config: &PeerConfig, name: &str, report: &str) -> ConfigMap {
    let renewed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(config.namespace.clone()),
            labels: Some([(REPORT_LABEL.to_owned(), config.label())].into()),
            ..Default::default()
        },
        data: Some(
            [
                (REPLICAS_KEY.to_owned(), report.to_owned()),
                (RENEWED_KEY.to_owned(), renewed.to_string()),
            ]
            .into(),
        ),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
