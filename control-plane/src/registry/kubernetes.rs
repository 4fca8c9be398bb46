//! Registry source for a cluster: `McpServer` resources watched through
//! the Kubernetes API (all namespaces, or a configured list). Objects are
//! watched untyped and parsed one by one, so one malformed resource is an
//! issue on that resource instead of a failed list. `valueFrom` env values
//! are read from Secrets and ConfigMaps in the resource's namespace, again
//! every [`REFRESH`] so rotated secrets reach the gateways; the values are
//! never logged. Status writes do not change any spec, so they never
//! produce a new registry.

use std::{collections::BTreeMap, time::Duration};

use futures::{StreamExt, stream::SelectAll};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject},
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{API_VERSION, KIND, Registry, RegistryIssue, ResourceError, parse_resource};
use crate::resource::{McpServer, RefKind, ValidServer, ValidTransport, ValueRef};

/// How often Secret and ConfigMap values are read again.
pub const REFRESH: Duration = Duration::from_secs(30);

/// Objects by (Kubernetes namespace, name).
pub type ObjectKey = (String, String);

/// Watches `McpServer`s and publishes the registry they make.
pub struct KubernetesSource {
    client: Client,
    /// Kubernetes namespaces to watch; empty watches all.
    namespaces: Vec<String>,
}

impl KubernetesSource {
    pub fn new(client: Client, namespaces: Vec<String>) -> Self {
        Self { client, namespaces }
    }

    /// Runs until `cancel`; the watcher retries with backoff on its own,
    /// and the last registry stays in place meanwhile.
    pub async fn watch(
        self,
        registry: watch::Sender<Registry>,
        objects: watch::Sender<BTreeMap<ObjectKey, DynamicObject>>,
        cancel: CancellationToken,
    ) {
        let resource = ApiResource::erase::<McpServer>(&());
        // One watch per namespace (`None`: all of them), its events tagged
        // with the namespace so each relist replaces only its own objects.
        let scopes: Vec<Option<String>> = if self.namespaces.is_empty() {
            vec![None]
        } else {
            self.namespaces.iter().cloned().map(Some).collect()
        };
        let mut streams = SelectAll::new();
        for scope in &scopes {
            let api: Api<DynamicObject> = match scope {
                None => Api::all_with(self.client.clone(), &resource),
                Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            };
            let scope = scope.clone();
            streams.push(
                watcher(api, watcher::Config::default())
                    .default_backoff()
                    .map(move |event| (scope.clone(), event))
                    .boxed(),
            );
        }
        // Per scope, objects listed since its last `Init`, swapped in at `InitDone`.
        let mut listings: BTreeMap<Option<String>, BTreeMap<ObjectKey, DynamicObject>> =
            BTreeMap::new();
        let mut listed_once: std::collections::BTreeSet<Option<String>> = Default::default();
        let all_listed =
            |listed: &std::collections::BTreeSet<Option<String>>| listed.len() == scopes.len();
        let mut current: BTreeMap<ObjectKey, DynamicObject> = BTreeMap::new();
        // The first complete listing of every scope is published even when
        // empty: it is what the snapshot builder waits for.
        let mut published = false;
        let mut refresh = tokio::time::interval(REFRESH);
        info!(namespaces = %self.namespaces.join(","), "watching McpServer resources");
        loop {
            let event = tokio::select! {
                () = cancel.cancelled() => return,
                _ = refresh.tick() => None,
                event = streams.next() => match event {
                    Some(event) => Some(event),
                    None => return,
                },
            };
            let Some((scope, event)) = event else {
                // Re-read referenced values once the first list is in.
                if published {
                    let next = assemble(&self.client, &current).await;
                    registry.send_if_modified(|registry| {
                        let modified = *registry != next;
                        *registry = next;
                        modified
                    });
                }
                continue;
            };
            let changed = match event {
                Ok(watcher::Event::Init) => {
                    listings.insert(scope, BTreeMap::new());
                    false
                }
                Ok(watcher::Event::InitApply(object)) => {
                    if let (Some(listing), Some(key)) = (listings.get_mut(&scope), key(&object)) {
                        listing.insert(key, object);
                    }
                    false
                }
                Ok(watcher::Event::InitDone) => {
                    let listed = listings.remove(&scope).unwrap_or_default();
                    match &scope {
                        None => current = listed,
                        Some(ns) => {
                            current.retain(|(object_ns, _), _| object_ns != ns);
                            current.extend(listed);
                        }
                    }
                    listed_once.insert(scope);
                    all_listed(&listed_once)
                }
                // Only a new or changed spec matters: status writes (ours)
                // come back as events too and must not cost a re-read of
                // every referenced Secret.
                Ok(watcher::Event::Apply(object)) => match key(&object) {
                    Some(key) => {
                        let spec_changed = current
                            .get(&key)
                            .is_none_or(|old| old.data.get("spec") != object.data.get("spec"));
                        current.insert(key, object);
                        spec_changed && all_listed(&listed_once)
                    }
                    None => false,
                },
                Ok(watcher::Event::Delete(object)) => {
                    key(&object).and_then(|key| current.remove(&key)).is_some()
                        && all_listed(&listed_once)
                }
                Err(err) => {
                    warn!(error = %err, "McpServer watch failed; retrying");
                    false
                }
            };
            if changed {
                let next = assemble(&self.client, &current).await;
                registry.send_if_modified(|registry| {
                    let modified = *registry != next || !published;
                    if modified {
                        debug!(
                            servers = next.servers.len(),
                            issues = next.issues.len(),
                            "registry changed"
                        );
                        *registry = next;
                    }
                    modified
                });
                published = true;
            }
            // The status writer needs every object's latest status and
            // generation, status-only changes included.
            if published {
                objects.send_replace(current.clone());
            }
        }
    }
}

fn key(object: &DynamicObject) -> Option<ObjectKey> {
    Some((
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone()?,
    ))
}

/// Where an object's issues are reported from.
pub fn source_of((namespace, name): &ObjectKey) -> String {
    format!("mcpservers/{namespace}/{name}")
}

/// Validates every object and reads its referenced values; the oldest
/// resource keeps a contested name or prefix, as the first file does in
/// directory mode.
async fn assemble(client: &Client, objects: &BTreeMap<ObjectKey, DynamicObject>) -> Registry {
    let mut ordered: Vec<(&ObjectKey, &DynamicObject)> = objects.iter().collect();
    ordered
        .sort_by_key(|(key, object)| (object.metadata.creation_timestamp.clone(), (*key).clone()));
    let mut candidates = Vec::new();
    let mut issues = Vec::new();
    for (key, object) in ordered {
        let source = source_of(key);
        let mut object = object.clone();
        // List items may leave out their type; it is known here.
        object.types.get_or_insert_with(|| kube::api::TypeMeta {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
        });
        let parsed = serde_json::to_value(&object)
            .map_err(|e| e.to_string())
            .and_then(|json| serde_yaml::to_value(json).map_err(|e| e.to_string()));
        let outcome = match parsed {
            Ok(value) => match parse_resource(value) {
                Ok(server) => resolve(client, &key.0, server).await,
                Err(error) => Err(error),
            },
            Err(message) => Err((Some(key.1.clone()), None, message)),
        };
        match outcome {
            Ok(server) => candidates.push((source, server)),
            Err((resource, field, message)) => issues.push(RegistryIssue {
                source,
                resource,
                field,
                message,
            }),
        }
    }
    Registry::assemble(candidates, issues)
}

/// Replaces every `valueFrom` with the value it names.
async fn resolve(
    client: &Client,
    namespace: &str,
    mut server: ValidServer,
) -> Result<ValidServer, ResourceError> {
    let name = server.name.clone();
    let ValidTransport::Stdio { env, env_from, .. } = &mut server.transport else {
        return Ok(server);
    };
    for (variable, reference) in std::mem::take(env_from) {
        let field = Some(format!("spec.transport.stdio.env[{variable}].valueFrom"));
        match read_value(client, namespace, &reference).await {
            Ok(Some(value)) => {
                env.insert(variable, value);
            }
            Ok(None) if reference.optional => {}
            Ok(None) => {
                let what = match reference.kind {
                    RefKind::Secret => "Secret",
                    RefKind::ConfigMap => "ConfigMap",
                };
                let message = format!(
                    "{what} `{}` or its key `{}` does not exist in namespace `{namespace}` (set optional: true to allow that)",
                    reference.name, reference.key
                );
                return Err((Some(name), field, message));
            }
            Err(message) => return Err((Some(name), field, message)),
        }
    }
    Ok(server)
}

/// The value, `None` when the object or key is missing.
async fn read_value(
    client: &Client,
    namespace: &str,
    reference: &ValueRef,
) -> Result<Option<String>, String> {
    let cannot_read = |e: kube::Error| format!("cannot read `{}`: {e}", reference.name);
    match reference.kind {
        RefKind::Secret => {
            let secret = Api::<Secret>::namespaced(client.clone(), namespace)
                .get_opt(&reference.name)
                .await
                .map_err(cannot_read)?;
            let Some(bytes) = secret.and_then(|s| s.data?.remove(&reference.key)) else {
                return Ok(None);
            };
            String::from_utf8(bytes.0).map(Some).map_err(|_| {
                format!(
                    "key `{}` of Secret `{}` is not UTF-8 text",
                    reference.key, reference.name
                )
            })
        }
        RefKind::ConfigMap => Ok(Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .get_opt(&reference.name)
            .await
            .map_err(cannot_read)?
            .and_then(|c| c.data?.remove(&reference.key))),
    }
}
