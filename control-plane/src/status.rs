//! Status write-back in a cluster: each `McpServer` gets `Accepted` (its
//! spec validated, or why not) and `Ready` (from the replicas' health
//! reports on the config stream), the replicas that applied the current
//! snapshot, tool count, breaker, protocol version and last error. Only
//! changed statuses are patched, and only the status subresource, which
//! leaves `generation` alone: a status write never produces a new snapshot.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder},
};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    push::{ReplicaStatus, Replicas},
    registry::{
        Registry,
        kubernetes::{ObjectKey, source_of},
    },
    resource::{McpServer, McpServerStatus, ValidTransport},
    snapshot::SnapshotWatch,
};

/// How often statuses are recomputed from the replicas' reports.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

pub struct StatusWriter {
    pub client: Client,
    /// Publishes an event when a condition changes.
    pub recorder: Recorder,
    /// Only the leader writes.
    pub leading: watch::Receiver<bool>,
    pub registry: watch::Receiver<Registry>,
    pub objects: watch::Receiver<BTreeMap<ObjectKey, DynamicObject>>,
    pub snapshots: SnapshotWatch,
    pub replicas: Replicas,
}

/// The facts a status is computed from, for one pass.
struct Inputs<'a> {
    registry: &'a Registry,
    replicas: &'a BTreeMap<String, ReplicaStatus>,
    snapshot_version: u64,
}

impl StatusWriter {
    pub async fn run(self, cancel: CancellationToken) {
        let resource = ApiResource::erase::<McpServer>(&());
        let mut written: HashMap<ObjectKey, McpServerStatus> = HashMap::new();
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !*self.leading.borrow() {
                // Another pod writes; start from the objects' own status
                // when leadership comes here.
                written.clear();
                continue;
            }
            let objects = self.objects.borrow().clone();
            let registry = self.registry.borrow().clone();
            let replicas = self.replicas.snapshot();
            let inputs = Inputs {
                registry: &registry,
                replicas: &replicas,
                snapshot_version: self.snapshots.borrow().version,
            };
            written.retain(|key, _| objects.contains_key(key));
            for (key, object) in &objects {
                let current: Option<McpServerStatus> = object
                    .data
                    .get("status")
                    .and_then(|s| serde_json::from_value(s.clone()).ok());
                // Transition times carry over from what was last written
                // (the watch may not have shown it yet) or else from the object.
                let previous = written.get(key).cloned().or(current.clone());
                let desired = inputs.status(key, object, previous.as_ref());
                if current.as_ref() == Some(&desired) || written.get(key) == Some(&desired) {
                    continue;
                }
                let api: Api<DynamicObject> =
                    Api::namespaced_with(self.client.clone(), &key.0, &resource);
                let patch = Patch::Merge(json!({ "status": desired }));
                match api
                    .patch_status(&key.1, &PatchParams::default(), &patch)
                    .await
                {
                    Ok(_) => {
                        debug!(namespace = %key.0, name = %key.1, "status written");
                        self.announce(object, &resource, previous.as_ref(), &desired)
                            .await;
                        written.insert(key.clone(), desired);
                    }
                    Err(err) => {
                        warn!(namespace = %key.0, name = %key.1, error = %err, "cannot write status");
                    }
                }
            }
        }
    }
}

impl StatusWriter {
    /// An event per condition whose status changed (or first appeared).
    async fn announce(
        &self,
        object: &DynamicObject,
        resource: &ApiResource,
        previous: Option<&McpServerStatus>,
        status: &McpServerStatus,
    ) {
        let reference = object.object_ref(resource);
        for condition in &status.conditions {
            let before = previous
                .and_then(|p| p.conditions.iter().find(|c| c.type_ == condition.type_))
                .map(|c| c.status.as_str());
            if before == Some(condition.status.as_str()) {
                continue;
            }
            let event = Event {
                type_: if condition.status == "True" {
                    EventType::Normal
                } else {
                    EventType::Warning
                },
                reason: condition.reason.clone(),
                note: Some(format!("{}: {}", condition.type_, condition.message)),
                action: condition.type_.clone(),
                secondary: None,
            };
            if let Err(err) = self.recorder.publish(&event, &reference).await {
                warn!(error = %err, "cannot publish event");
            }
        }
    }
}

impl Inputs<'_> {
    fn status(
        &self,
        key: &ObjectKey,
        object: &DynamicObject,
        previous: Option<&McpServerStatus>,
    ) -> McpServerStatus {
        let generation = object.metadata.generation;
        let name = &key.1;
        let source = source_of(key);
        let issue = self.registry.issues.iter().find(|i| i.source == source);
        let server = self.registry.servers.get(name).filter(|_| issue.is_none());
        let connected: Vec<&ReplicaStatus> =
            self.replicas.values().filter(|r| r.connected).collect();
        let health: Vec<_> = connected
            .iter()
            .flat_map(|r| r.servers.iter().filter(|s| &s.name == name))
            .collect();
        let ready = health.iter().filter(|h| h.state == "ready").count();
        let accepted = match issue {
            Some(issue) => condition(
                "Accepted",
                false,
                "Invalid",
                match &issue.field {
                    Some(field) => format!("{field}: {}", issue.message),
                    None => issue.message.clone(),
                },
            ),
            None if server.is_some() => {
                condition("Accepted", true, "Valid", "the spec is valid".into())
            }
            None => condition("Accepted", false, "Pending", "not validated yet".into()),
        };
        let ready_condition = match server {
            None => condition(
                "Ready",
                false,
                "NotAccepted",
                "the spec was not accepted".into(),
            ),
            Some(server) if !server.enabled => {
                condition("Ready", false, "Disabled", "spec.enabled is false".into())
            }
            Some(_) if connected.is_empty() => condition(
                "Ready",
                false,
                "NoReplicas",
                "no gateway replica is connected".into(),
            ),
            Some(_) if ready == 0 => {
                let why = health
                    .iter()
                    .find(|h| !h.reason.is_empty())
                    .map_or_else(|| "starting".to_owned(), |h| h.reason.clone());
                condition(
                    "Ready",
                    false,
                    "NotReady",
                    format!("not ready on any replica: {why}"),
                )
            }
            Some(_) => condition(
                "Ready",
                true,
                "Ready",
                format!("ready on {ready} of {} replicas", connected.len()),
            ),
        };
        let conditions = [accepted, ready_condition]
            .into_iter()
            .map(|mut c| {
                c.observed_generation = generation;
                keep_transition_time(c, previous)
            })
            .collect();
        let breaker = ["open", "halfOpen", "closed"]
            .into_iter()
            .find(|state| health.iter().any(|h| h.breaker == *state));
        McpServerStatus {
            observed_generation: generation,
            conditions,
            prefix: server.map(|s| s.namespace.clone()),
            transport: server.map(|s| {
                match s.transport {
                    ValidTransport::Stdio { .. } => "stdio",
                    ValidTransport::Http { .. } => "http",
                }
                .to_owned()
            }),
            replicas: count(connected.len()),
            updated_replicas: count(
                connected
                    .iter()
                    .filter(|r| r.acked_version >= self.snapshot_version)
                    .count(),
            ),
            ready_replicas: count(ready),
            replica_summary: Some(format!("{ready}/{}", connected.len())),
            tools: health
                .iter()
                .map(|h| h.tool_count)
                .max()
                .map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
            breaker: breaker.map(str::to_owned),
            protocol_version: health
                .iter()
                .map(|h| h.protocol_version.clone())
                .find(|v| !v.is_empty()),
            last_error: health
                .iter()
                .filter(|h| !h.last_error.is_empty())
                .max_by_key(|h| h.last_error_at)
                .map(|h| h.last_error.clone()),
        }
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: None,
        last_transition_time: Time(Timestamp::now()),
    }
}

/// A condition keeps its transition time while its status stays the same.
fn keep_transition_time(mut condition: Condition, status: Option<&McpServerStatus>) -> Condition {
    let previous = status.and_then(|s| s.conditions.iter().find(|c| c.type_ == condition.type_));
    if let Some(previous) = previous.filter(|p| p.status == condition.status) {
        condition.last_transition_time = previous.last_transition_time.clone();
    }
    condition
}
