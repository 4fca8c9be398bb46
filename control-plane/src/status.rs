//! Status write-back in a cluster: each `McpServer` gets `Accepted` (its
//! spec validated, or why not) and `Ready` (from the replicas' health
//! reports on the config stream), the replicas that applied the current
//! snapshot, tool count, breaker, protocol version and last error. Only
//! changed statuses are patched, and only the status subresource, which
//! leaves `generation` alone: a status write never produces a new snapshot.
//! What is not known yet is `Unknown`, never `False` (API conventions), and
//! publishes no event. A patch that fails is retried with backoff, each
//! call bounded by a timeout, and leadership is checked before every one,
//! so a pod that lost the lease stops writing mid-pass.

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
use proto::otel::sdk::{self, WORK};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, field, info_span, warn};

use crate::{
    peers::Peers,
    push::{ReplicaStatus, Replicas},
    registry::{
        Registry,
        kubernetes::{ObjectKey, identity, source_of},
    },
    resource::{McpServer, McpServerStatus, ValidTransport},
    snapshot::SnapshotWatch,
};

/// How often statuses are recomputed from the replicas' reports.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// How long one status patch may take (kube sets no timeout).
const PATCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Status writes this long after a new snapshot are part of its rollout's
/// trace (replicas ACK, the counts change); later ones are not.
const ROLLOUT_WINDOW: Duration = Duration::from_secs(30);
/// After a failed patch of a resource, the wait before the next; it
/// doubles with each failure up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// The longest event note a real API server accepts, in bytes.
const MAX_NOTE_BYTES: usize = 1024;

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
    /// What replicas connected to other control-plane pods reported.
    pub peers: Peers,
}

/// A condition's status, as the API conventions spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    True,
    False,
    /// Not known yet: not validated, or no replica has reported.
    Unknown,
}

/// Failed patches of one resource, and when to try again.
struct Backoff {
    failures: u32,
    next: tokio::time::Instant,
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
        let mut failing: HashMap<ObjectKey, Backoff> = HashMap::new();
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rollout = (0, tokio::time::Instant::now());
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
            let (snapshot_version, traceparent) = {
                let snapshot = self.snapshots.borrow();
                (snapshot.version, snapshot.traceparent.clone())
            };
            if snapshot_version != rollout.0 {
                rollout = (snapshot_version, tokio::time::Instant::now());
            }
            let change = match rollout.1.elapsed() < ROLLOUT_WINDOW {
                true => traceparent.as_str(),
                false => "",
            };
            let replicas = self
                .peers
                .merged(self.replicas.snapshot(), snapshot_version);
            let inputs = Inputs {
                registry: &registry,
                replicas: &replicas,
                snapshot_version,
            };
            written.retain(|key, _| objects.contains_key(key));
            failing.retain(|key, _| objects.contains_key(key));
            for (key, object) in &objects {
                if !*self.leading.borrow() {
                    break;
                }
                if failing
                    .get(key)
                    .is_some_and(|b| tokio::time::Instant::now() < b.next)
                {
                    continue;
                }
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
                let patch = Patch::Merge(json!({ "status": merge_patch(&desired) }));
                let write = info_span!(
                    target: WORK,
                    "status.write",
                    namespace = %key.0,
                    name = %key.1,
                    version = snapshot_version,
                    trace_id = field::Empty,
                    span_id = field::Empty,
                );
                sdk::continue_from(&write, change);
                let patched = tokio::time::timeout(
                    PATCH_TIMEOUT,
                    api.patch_status(&key.1, &PatchParams::default(), &patch),
                )
                .instrument(write)
                .await;
                match patched {
                    Ok(Ok(_)) => {
                        debug!(namespace = %key.0, name = %key.1, "status written");
                        failing.remove(key);
                        self.announce(object, &resource, previous.as_ref(), &desired)
                            .await;
                        written.insert(key.clone(), desired);
                    }
                    failed => {
                        let backoff = failing.entry(key.clone()).or_insert(Backoff {
                            failures: 0,
                            next: tokio::time::Instant::now(),
                        });
                        let delay = FIRST_RETRY_DELAY
                            .saturating_mul(1 << backoff.failures.min(6))
                            .min(MAX_RETRY_DELAY);
                        backoff.failures += 1;
                        backoff.next = tokio::time::Instant::now() + delay;
                        let error = match failed {
                            Ok(Err(err)) => err.to_string(),
                            _ => format!("no answer within {}s", PATCH_TIMEOUT.as_secs()),
                        };
                        warn!(namespace = %key.0, name = %key.1, %error, retry_in = ?delay, "cannot write status");
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
            // Not knowing yet is news to nobody.
            if before == Some(condition.status.as_str()) || condition.status == "Unknown" {
                continue;
            }
            let event = Event {
                type_: if condition.status == "True" {
                    EventType::Normal
                } else {
                    EventType::Warning
                },
                reason: condition.reason.clone(),
                note: Some(note(&condition.type_, &condition.message)),
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
        let name = &identity(key);
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
        // A replica that refused the resource in the current snapshot.
        let refused = self
            .replicas
            .iter()
            .filter(|(_, r)| r.connected)
            .find_map(|(id, r)| {
                let nack = r.last_nack.as_ref()?;
                let reason = nack.rejected.get(name)?;
                (nack.version >= self.snapshot_version).then(|| format!("replica {id}: {reason}"))
            });
        let accepted = match issue {
            Some(issue) => condition(
                "Accepted",
                Known::False,
                "Invalid",
                match &issue.field {
                    Some(field) => format!("{field}: {}", issue.message),
                    None => issue.message.clone(),
                },
            ),
            None => match (&refused, server) {
                (Some(refused), Some(_)) => {
                    condition("Accepted", Known::False, "Rejected", refused.clone())
                }
                (None, Some(_)) => {
                    condition("Accepted", Known::True, "Valid", "the spec is valid".into())
                }
                (_, None) => condition(
                    "Accepted",
                    Known::Unknown,
                    "Pending",
                    "not validated yet".into(),
                ),
            },
        };
        let ready_condition = match server {
            None if issue.is_none() => condition(
                "Ready",
                Known::Unknown,
                "Pending",
                "not validated yet".into(),
            ),
            None => condition(
                "Ready",
                Known::False,
                "NotAccepted",
                "the spec was not accepted".into(),
            ),
            Some(server) if !server.enabled => condition(
                "Ready",
                Known::False,
                "Disabled",
                "spec.enabled is false".into(),
            ),
            Some(_) if connected.is_empty() => condition(
                "Ready",
                Known::False,
                "NoReplicas",
                "no gateway replica is connected".into(),
            ),
            Some(_) if health.is_empty() => condition(
                "Ready",
                Known::Unknown,
                "Pending",
                "no replica has reported on it yet".into(),
            ),
            Some(_) if ready == 0 => {
                let why = health
                    .iter()
                    .find(|h| !h.reason.is_empty())
                    .map_or_else(|| "starting".to_owned(), |h| h.reason.clone());
                condition(
                    "Ready",
                    Known::False,
                    "NotReady",
                    format!("not ready on any replica: {why}"),
                )
            }
            Some(_) => condition(
                "Ready",
                Known::True,
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
                    ValidTransport::Sse { .. } => "sse",
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

/// The status as a merge patch: fields that are unset now are sent as
/// `null`, so values from before (a last error, a tool count) are removed
/// rather than left in place.
fn merge_patch(status: &McpServerStatus) -> serde_json::Value {
    let mut patch = serde_json::to_value(status).unwrap_or_default();
    if let Some(fields) = patch.as_object_mut() {
        for field in [
            "observedGeneration",
            "prefix",
            "transport",
            "replicaSummary",
            "tools",
            "breaker",
            "protocolVersion",
            "lastError",
        ] {
            fields.entry(field).or_insert(serde_json::Value::Null);
        }
    }
    patch
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn condition(type_: &str, status: Known, reason: &str, message: String) -> Condition {
    let status = match status {
        Known::True => "True",
        Known::False => "False",
        Known::Unknown => "Unknown",
    };
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: None,
        last_transition_time: Time(Timestamp::now()),
    }
}

/// An event's note for a condition, cut to what the API server accepts
/// (a longer note is refused, and the event lost).
fn note(type_: &str, message: &str) -> String {
    let mut note = format!("{type_}: {message}");
    if note.len() > MAX_NOTE_BYTES {
        const MORE: &str = "…";
        let mut end = MAX_NOTE_BYTES - MORE.len();
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str(MORE);
    }
    note
}

/// A condition keeps its transition time while its status stays the same.
fn keep_transition_time(mut condition: Condition, status: Option<&McpServerStatus>) -> Condition {
    let previous = status.and_then(|s| s.conditions.iter().find(|c| c.type_ == condition.type_));
    if let Some(previous) = previous.filter(|p| p.status == condition.status) {
        condition.last_transition_time = previous.last_transition_time.clone();
    }
    condition
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        push::{NackStatus, ServerHealthStatus},
        registry::RegistryIssue,
        resource::McpServer,
    };

    fn object(name: &str, generation: i64) -> (ObjectKey, DynamicObject) {
        let mut object = DynamicObject::new(name, &ApiResource::erase::<McpServer>(&()));
        object.metadata.namespace = Some("default".into());
        object.metadata.generation = Some(generation);
        (("default".into(), name.into()), object)
    }

    fn registry_with(name: &str) -> Registry {
        let yaml = format!(
            "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: {name}}}\nspec: {{transport: {{stdio: {{command: x}}}}}}"
        );
        let server: McpServer = serde_yaml::from_str(&yaml).expect("yaml");
        let mut server = server.validate().expect("valid");
        server.name = format!("default/{name}");
        Registry::assemble([("src".to_owned(), server)], vec![])
    }

    /// A replica's report on the server `name` in namespace `default`.
    fn health(name: &str, state: &'static str, tools: u32) -> ServerHealthStatus {
        ServerHealthStatus {
            name: format!("default/{name}"),
            state: state.into(),
            reason: if state == "ready" {
                String::new()
            } else {
                "exit status 1".into()
            },
            tool_count: tools,
            restarts: 0,
            protocol_version: "2025-06-18".into(),
            breaker: "closed".into(),
            last_error: String::new(),
            last_error_at: 0,
            latency_p50_us: 0,
            latency_p99_us: 0,
            connections: 1,
            in_flight: 0,
            probe: None,
            asked_clients: String::new(),
            prompt_count: 0,
            resource_count: 0,
            breaker_retry_at: 0,
        }
    }

    fn condition<'a>(status: &'a McpServerStatus, kind: &str) -> &'a Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == kind)
            .expect("condition")
    }

    #[test]
    fn ready_on_some_replicas_reports_counts_and_tools() {
        let registry = registry_with("demo");
        let replicas = BTreeMap::from([
            (
                "r1".to_owned(),
                ReplicaStatus::connected_with(7, vec![health("demo", "ready", 5)], None),
            ),
            (
                "r2".to_owned(),
                ReplicaStatus::connected_with(6, vec![health("demo", "failed", 0)], None),
            ),
        ]);
        let inputs = Inputs {
            registry: &registry,
            replicas: &replicas,
            snapshot_version: 7,
        };
        let (key, object) = object("demo", 3);
        let status = inputs.status(&key, &object, None);
        assert_eq!(condition(&status, "Accepted").status, "True");
        assert_eq!(condition(&status, "Ready").status, "True");
        assert_eq!(
            condition(&status, "Ready").message,
            "ready on 1 of 2 replicas"
        );
        assert_eq!(condition(&status, "Ready").observed_generation, Some(3));
        assert_eq!(
            (
                status.replicas,
                status.updated_replicas,
                status.ready_replicas
            ),
            (2, 1, 1)
        );
        assert_eq!(status.replica_summary.as_deref(), Some("1/2"));
        assert_eq!(status.tools, Some(5));
        assert_eq!(status.transport.as_deref(), Some("stdio"));
        assert_eq!(status.prefix.as_deref(), Some("demo"));
    }

    #[test]
    fn a_replica_nack_or_a_registry_issue_is_not_accepted() {
        let registry = registry_with("demo");
        let nack = NackStatus {
            version: 7,
            reason: "demo: bad".into(),
            rejected: BTreeMap::from([("default/demo".to_owned(), "unsupported field".to_owned())]),
        };
        let replicas = BTreeMap::from([(
            "r1".to_owned(),
            ReplicaStatus::connected_with(6, vec![], Some(nack)),
        )]);
        let inputs = Inputs {
            registry: &registry,
            replicas: &replicas,
            snapshot_version: 7,
        };
        let (key, object) = object("demo", 1);
        let accepted = condition(&inputs.status(&key, &object, None), "Accepted").clone();
        assert_eq!(
            (accepted.status.as_str(), accepted.reason.as_str()),
            ("False", "Rejected")
        );
        assert_eq!(accepted.message, "replica r1: unsupported field");

        let mut invalid = Registry::default();
        invalid.issues.push(RegistryIssue {
            source: source_of(&key),
            resource: Some("demo".into()),
            field: Some("spec.transport".into()),
            message: "exactly one transport must be set".into(),
        });
        let inputs = Inputs {
            registry: &invalid,
            replicas: &BTreeMap::new(),
            snapshot_version: 7,
        };
        let status = inputs.status(&key, &object, None);
        assert_eq!(
            condition(&status, "Accepted").message,
            "spec.transport: exactly one transport must be set"
        );
        assert_eq!(condition(&status, "Ready").reason, "NotAccepted");
    }

    #[test]
    fn cleared_fields_are_sent_as_null() {
        let patch = merge_patch(&McpServerStatus::default());
        assert_eq!(patch["lastError"], serde_json::Value::Null);
        assert!(
            patch
                .as_object()
                .is_some_and(|p| p.contains_key("lastError"))
        );
    }

    #[test]
    fn transition_times_hold_while_a_condition_keeps_its_status() {
        let registry = registry_with("demo");
        let no_replicas = BTreeMap::new();
        let inputs = Inputs {
            registry: &registry,
            replicas: &no_replicas,
            snapshot_version: 1,
        };
        let (key, object) = object("demo", 1);
        let mut first = inputs.status(&key, &object, None);
        assert_eq!(condition(&first, "Ready").reason, "NoReplicas");
        let long_ago = Time(Timestamp::UNIX_EPOCH);
        for c in &mut first.conditions {
            c.last_transition_time = long_ago.clone();
        }
        let again = inputs.status(&key, &object, Some(&first));
        assert_eq!(again, first, "nothing changed, nothing to write");
    }

    #[test]
    fn what_is_not_known_yet_is_unknown() {
        let (key, object) = object("demo", 1);
        let replicas = BTreeMap::from([(
            "r1".to_owned(),
            ReplicaStatus::connected_with(7, vec![], None),
        )]);
        // Not validated yet.
        let empty = Registry::default();
        let inputs = Inputs {
            registry: &empty,
            replicas: &replicas,
            snapshot_version: 7,
        };
        let status = inputs.status(&key, &object, None);
        assert_eq!(condition(&status, "Accepted").status, "Unknown");
        assert_eq!(condition(&status, "Ready").status, "Unknown");
        // Valid, but no replica has said anything about it yet.
        let registry = registry_with("demo");
        let inputs = Inputs {
            registry: &registry,
            ..inputs
        };
        let status = inputs.status(&key, &object, None);
        assert_eq!(condition(&status, "Accepted").status, "True");
        assert_eq!(
            (
                condition(&status, "Ready").status.as_str(),
                condition(&status, "Ready").reason.as_str()
            ),
            ("Unknown", "Pending")
        );
    }

    #[test]
    fn event_notes_fit_what_the_api_server_accepts() {
        let short = note("Ready", "ready on 1 of 1 replicas");
        assert_eq!(short, "Ready: ready on 1 of 1 replicas");
        let long = note("Ready", &"é".repeat(2000));
        assert!(long.len() <= MAX_NOTE_BYTES, "{}", long.len());
        assert!(long.starts_with("Ready: éé") && long.ends_with('…'));
    }
}
