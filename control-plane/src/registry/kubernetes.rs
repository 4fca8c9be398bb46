//! Registry source for a cluster: `McpServer` resources watched through
//! the Kubernetes API (all namespaces, or a configured list). Objects are
//! watched untyped and parsed one by one, so one malformed resource is an
//! issue on that resource instead of a failed list. `valueFrom` env values
//! are read from Secrets and ConfigMaps in the resource's namespace, again
//! every [`REFRESH`] so rotated secrets reach the gateways; the values are
//! never logged. Only a missing Secret, ConfigMap or key is a problem with
//! the resource: a read that fails otherwise (429, 5xx, a timeout, RBAC)
//! keeps the value read last and is retried with backoff, so an API server
//! having a bad moment never takes a server off the gateways. Reads run
//! concurrently, each with a timeout, so a hung one cannot hold up the
//! registry. Status writes do not change any spec, so they never produce a
//! new registry.

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
/// How long one Secret or ConfigMap read may take (kube sets no timeout).
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Secret and ConfigMap reads in flight at once.
const PARALLEL_READS: usize = 8;
/// After a failed read, the first retry; it doubles up to [`REFRESH`].
const FIRST_RETRY: Duration = Duration::from_secs(1);

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
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut values = Values::default();
        info!(namespaces = %self.namespaces.join(","), "watching McpServer resources");
        loop {
            let event = tokio::select! {
                () = cancel.cancelled() => return,
                _ = refresh.tick() => None,
                () = values.retry_due() => None,
                event = streams.next() => match event {
                    Some(event) => Some(event),
                    None => return,
                },
            };
            let Some((scope, event)) = event else {
                // Re-read referenced values once the first list is in.
                if published {
                    let next = assemble(&self.client, &current, &mut values).await;
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
                let next = assemble(&self.client, &current, &mut values).await;
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

/// A referenced value: (namespace, kind, object name, key).
type ValueKey = (String, &'static str, String, String);

/// What reading a value gave: the value (`None`: the object or key does
/// not exist), or why it could not be read.
type ReadOutcome = Result<Option<String>, String>;

/// The values read last, kept through failed reads, and when to retry.
#[derive(Default)]
struct Values {
    last: BTreeMap<ValueKey, Option<String>>,
    /// Failed reads in a row, for the retry backoff.
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
}

// === impl Values ===

impl Values {
    /// Resolves when a retry of failed reads is due; never without one.
    async fn retry_due(&self) {
        match self.retry_at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Reads every key in `wanted` at once; a failed read keeps the value
    /// read last, and schedules a retry.
    async fn read_all(&mut self, client: &Client, wanted: Vec<(ValueKey, ValueRef)>) {
        // Boxed: a stream over an iterator's closure trips rustc's `Send`
        // inference for the task awaiting it.
        let reads: Vec<futures::future::BoxFuture<'static, (ValueKey, ReadOutcome)>> = wanted
            .into_iter()
            .map(|(key, reference)| {
                let client = client.clone();
                Box::pin(async move {
                    let read = read_value(&client, &key.0, &reference);
                    let outcome = match tokio::time::timeout(READ_TIMEOUT, read).await {
                        Ok(outcome) => outcome,
                        Err(_) => Err(format!("no answer within {}s", READ_TIMEOUT.as_secs())),
                    };
                    (key, outcome)
                }) as futures::future::BoxFuture<'static, _>
            })
            .collect();
        let outcomes: Vec<(ValueKey, ReadOutcome)> = futures::stream::iter(reads)
            .buffer_unordered(PARALLEL_READS)
            .collect()
            .await;
        let mut failed = false;
        self.last
            .retain(|key, _| outcomes.iter().any(|(k, _)| k == key));
        for (key, outcome) in outcomes {
            match outcome {
                Ok(value) => {
                    self.last.insert(key, value);
                }
                Err(error) => {
                    failed = true;
                    let (namespace, kind, name, _) = &key;
                    let kept = self.last.contains_key(&key);
                    warn!(%namespace, kind, %name, %error, kept_last_value = kept, "cannot read a referenced value; retrying");
                }
            }
        }
        if failed {
            let delay = FIRST_RETRY
                .saturating_mul(1 << self.failures.min(5))
                .min(REFRESH);
            self.failures += 1;
            self.retry_at = Some(tokio::time::Instant::now() + delay);
        } else {
            self.failures = 0;
            self.retry_at = None;
        }
    }
}

/// Validates every object and reads its referenced values; the oldest
/// resource keeps a contested name or prefix, as the first file does in
/// directory mode.
async fn assemble(
    client: &Client,
    objects: &BTreeMap<ObjectKey, DynamicObject>,
    values: &mut Values,
) -> Registry {
    let mut ordered: Vec<(&ObjectKey, &DynamicObject)> = objects.iter().collect();
    ordered
        .sort_by_key(|(key, object)| (object.metadata.creation_timestamp.clone(), (*key).clone()));
    let mut parsed = Vec::new();
    let mut issues = Vec::new();
    for (key, object) in ordered {
        match parse_object(key, object) {
            Ok(server) => parsed.push((key, server)),
            Err((resource, field, message)) => issues.push(RegistryIssue {
                source: source_of(key),
                resource,
                field,
                message,
            }),
        }
    }
    let wanted: Vec<(ValueKey, ValueRef)> = parsed
        .iter()
        .flat_map(|(key, server)| {
            references(server).map(|reference| (value_key(&key.0, reference), reference.clone()))
        })
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect();
    values.read_all(client, wanted).await;
    let mut candidates = Vec::new();
    for (key, server) in parsed {
        match resolve(&key.0, server, values) {
            Ok(server) => candidates.push((source_of(key), server)),
            Err((resource, field, message)) => issues.push(RegistryIssue {
                source: source_of(key),
                resource,
                field,
                message,
            }),
        }
    }
    Registry::assemble(candidates, issues)
}

/// One object as a validated server (its values not read yet).
fn parse_object(key: &ObjectKey, object: &DynamicObject) -> Result<ValidServer, ResourceError> {
    let mut object = object.clone();
    // List items may leave out their type; it is known here.
    object.types.get_or_insert_with(|| kube::api::TypeMeta {
        api_version: API_VERSION.to_owned(),
        kind: KIND.to_owned(),
    });
    let value = serde_json::to_value(&object)
        .map_err(|e| e.to_string())
        .and_then(|json| serde_yaml::to_value(json).map_err(|e| e.to_string()))
        .map_err(|message| (Some(key.1.clone()), None, message))?;
    parse_resource(value)
}

/// The values a server's env takes from the cluster.
fn references(server: &ValidServer) -> impl Iterator<Item = &ValueRef> {
    let env_from = match &server.transport {
        ValidTransport::Stdio { env_from, .. } => Some(env_from),
        _ => None,
    };
    env_from.into_iter().flat_map(|refs| refs.values())
}

fn value_key(namespace: &str, reference: &ValueRef) -> ValueKey {
    (
        namespace.to_owned(),
        kind_name(reference.kind),
        reference.name.clone(),
        reference.key.clone(),
    )
}

fn kind_name(kind: RefKind) -> &'static str {
    match kind {
        RefKind::Secret => "Secret",
        RefKind::ConfigMap => "ConfigMap",
    }
}

/// Replaces every `valueFrom` with the value read last.
fn resolve(
    namespace: &str,
    mut server: ValidServer,
    values: &Values,
) -> Result<ValidServer, ResourceError> {
    let name = server.name.clone();
    let ValidTransport::Stdio { env, env_from, .. } = &mut server.transport else {
        return Ok(server);
    };
    for (variable, reference) in std::mem::take(env_from) {
        let field = Some(format!("spec.transport.stdio.env[{variable}].valueFrom"));
        let what = kind_name(reference.kind);
        match values.last.get(&value_key(namespace, &reference)) {
            Some(Some(value)) => {
                env.insert(variable, value.clone());
            }
            Some(None) if reference.optional => {}
            Some(None) => {
                let message = format!(
                    "{what} `{}` or its key `{}` does not exist in namespace `{namespace}` (set optional: true to allow that)",
                    reference.name, reference.key
                );
                return Err((Some(name), field, message));
            }
            // Never read: every read of it failed so far (and is retried).
            None => {
                let message = format!(
                    "{what} `{}` could not be read yet (retrying; see the control plane's log)",
                    reference.name
                );
                return Err((Some(name), field, message));
            }
        }
    }
    Ok(server)
}

/// The value, `None` when the object or key is missing (the API server's
/// 404); any other failure is an error, to be retried.
async fn read_value(client: &Client, namespace: &str, reference: &ValueRef) -> ReadOutcome {
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

#[cfg(test)]
mod tests {
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock;

    use super::*;

    fn token_ref() -> ValueRef {
        ValueRef {
            kind: RefKind::Secret,
            name: "creds".into(),
            key: "token".into(),
            optional: false,
        }
    }

    fn wanted() -> Vec<(ValueKey, ValueRef)> {
        vec![(value_key("team", &token_ref()), token_ref())]
    }

    /// An API server that answers each read of the Secret with the next
    /// of `answers` (`None`: never answers).
    fn api_server(answers: Vec<Option<(u16, Value)>>) -> Client {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(async move {
            let mut unanswered = Vec::new();
            for answer in answers {
                let Some((request, respond)) = handle.next_request().await else {
                    return;
                };
                assert_eq!(
                    request.uri().path(),
                    "/api/v1/namespaces/team/secrets/creds"
                );
                match answer {
                    Some((status, body)) => {
                        let body = Body::from(body.to_string().into_bytes());
                        let response = Response::builder().status(status).body(body);
                        respond.send_response(response.expect("a valid response"));
                    }
                    None => unanswered.push(respond),
                }
            }
            // Hung reads stay hung until the test ends.
            std::future::pending::<()>().await;
        });
        Client::new(service, "default")
    }

    fn status(code: u16, reason: &str) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{reason} (test)"), "reason": reason, "code": code
        })
    }

    fn last_token(values: &Values) -> Option<&Option<String>> {
        values.last.get(&value_key("team", &token_ref()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_read_keeps_the_last_value_and_only_not_found_removes_it() {
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": "creds", "namespace": "team" },
            "data": { "token": "czNjcjN0" }
        });
        let client = api_server(vec![
            Some((200, secret)),
            Some((503, status(503, "ServiceUnavailable"))),
            Some((429, status(429, "TooManyRequests"))),
            None,
            Some((404, status(404, "NotFound"))),
        ]);
        let mut values = Values::default();
        values.read_all(&client, wanted()).await;
        assert_eq!(last_token(&values), Some(&Some("s3cr3t".to_owned())));
        assert!(values.retry_at.is_none());

        // 503, 429, then no answer at all: the value stays, and retries
        // come sooner than the refresh, each later than the one before.
        let mut delays = Vec::new();
        for _ in 0..3 {
            let started = tokio::time::Instant::now();
            values.read_all(&client, wanted()).await;
            assert_eq!(last_token(&values), Some(&Some("s3cr3t".to_owned())));
            let retry_at = values.retry_at.expect("a retry is scheduled");
            delays.push(retry_at - tokio::time::Instant::now());
            assert!(retry_at - started <= READ_TIMEOUT + REFRESH);
        }
        assert!(delays.windows(2).all(|d| d[0] < d[1]), "{delays:?}");
        assert!(delays[0] < REFRESH, "{delays:?}");

        // Only the API server saying it does not exist makes it missing.
        values.read_all(&client, wanted()).await;
        assert_eq!(last_token(&values), Some(&None));
        assert!(values.retry_at.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_value_never_read_is_an_issue_that_says_it_is_retried() {
        let client = api_server(vec![Some((500, status(500, "InternalError")))]);
        let mut values = Values::default();
        values.read_all(&client, wanted()).await;
        assert!(values.retry_at.is_some());
        let yaml = "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata: {name: s}\nspec: {transport: {stdio: {command: x, env: [{name: TOKEN, valueFrom: {secretKeyRef: {name: creds, key: token}}}]}}}\n";
        let server = parse_resource(serde_yaml::from_str(yaml).expect("YAML")).expect("valid");
        let (_, field, message) = resolve("team", server, &values).expect_err("not read yet");
        assert_eq!(
            field.as_deref(),
            Some("spec.transport.stdio.env[TOKEN].valueFrom")
        );
        assert!(message.contains("could not be read yet"), "{message}");
    }
}
