//! A **stand-in** for the Kubernetes API server, because no real one can
//! run here. It speaks the wire protocol the way kube-rs and kubectl use
//! it, for the resources Switchboard touches: `McpServer` (with its
//! `/status` subresource and printer columns), `Secret` and `ConfigMap`
//! (env values), `events.k8s.io/v1` `Event` and `coordination.k8s.io/v1`
//! `Lease`. It serves discovery (`/version`, `/api`, `/apis/...`), list
//! with `resourceVersion`, watch as newline-delimited `WatchEvent`s replayed
//! from a global resourceVersion history, create (also by `generateName`),
//! get, replace and merge/apply patches with `resourceVersion`
//! preconditions (409 on conflict), delete, `/status` writes that leave
//! `metadata.generation` alone while spec changes bump it, `stringData`
//! folded into a Secret's `data`, server-side `Table` output from the CRD's
//! printer columns (what `kubectl get mcps` prints), and errors as
//! `metav1.Status`. `McpServer` specs are checked against the CRD's
//! structural schema as the API server does (types, required fields,
//! patterns, bounds, enums; unknown fields pruned) and refused with 422;
//! the CRD's CEL rules are not evaluated. It does not authenticate or
//! authorize.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::Engine;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

/// The CRD the chart installs: its printer columns shape `kubectl get`.
const CRD: &str = include_str!("../../charts/switchboard/crds/mcpservers.switchboard.dev.yaml");

/// A resource type this stand-in serves (all namespaced).
#[derive(Debug)]
struct Kind {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    short_names: &'static [&'static str],
    /// A custom resource with a status subresource and generations.
    custom: bool,
}

const KINDS: &[Kind] = &[
    Kind {
        group: "",
        version: "v1",
        plural: "secrets",
        singular: "secret",
        kind: "Secret",
        short_names: &[],
        custom: false,
    },
    Kind {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        short_names: &["cm"],
        custom: false,
    },
    Kind {
        group: "switchboard.dev",
        version: "v1alpha1",
        plural: "mcpservers",
        singular: "mcpserver",
        kind: "McpServer",
        short_names: &["mcps"],
        custom: true,
    },
    Kind {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        short_names: &["ev"],
        custom: false,
    },
    Kind {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        short_names: &[],
        custom: false,
    },
];

pub struct KubeApiServer {
    pub addr: SocketAddr,
    /// A kubeconfig pointing at this server (namespace `default`).
    pub kubeconfig: PathBuf,
    state: ApiState,
    _dir: tempfile::TempDir,
    _server: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct ApiState {
    store: Arc<Mutex<Store>>,
    events: broadcast::Sender<WatchEvent>,
    columns: Arc<Vec<Value>>,
    /// `openAPIV3Schema.properties.spec` of the McpServer CRD.
    spec_schema: Arc<Value>,
}

/// Objects by (plural, namespace, name).
type Key = (&'static str, String, String);

#[derive(Default)]
struct Store {
    resource_version: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<WatchEvent>,
}

#[derive(Clone, Debug)]
struct WatchEvent {
    resource_version: u64,
    kind: &'static str,
    plural: &'static str,
    namespace: String,
    object: Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    watch: Option<String>,
    resource_version: Option<String>,
    timeout_seconds: Option<u64>,
    field_selector: Option<String>,
}

type Reply = Result<Response, ApiError>;
type Params = Path<HashMap<String, String>>;

/// An error answered as a `metav1.Status`.
#[derive(Debug)]
struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

/// What a request addresses.
struct Target {
    kind: &'static Kind,
    namespace: Option<String>,
    name: Option<String>,
}

impl KubeApiServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the API server stand-in");
        let addr = listener.local_addr().expect("address");
        let crd: Value = serde_yaml::from_str(CRD).expect("the chart CRD parses");
        let columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let (events, _) = broadcast::channel(1024);
        let spec_schema =
            crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone();
        let state = ApiState {
            store: Arc::default(),
            events,
            columns: Arc::new(columns),
            spec_schema: Arc::new(spec_schema),
        };
        let router = Router::new()
            .route("/version", get(version))
            .route("/api", get(core_versions))
            .route("/api/v1", get(core_resources))
            .route("/apis", get(groups))
            .route("/apis/{group}", get(group))
            .route("/apis/{group}/{version}", get(group_resources))
            .route("/api/v1/{plural}", get(list))
            .route("/apis/{group}/{version}/{plural}", get(list))
            .route("/api/v1/namespaces/{ns}/{plural}", get(list).post(create))
            .route(
                "/apis/{group}/{version}/namespaces/{ns}/{plural}",
                get(list).post(create),
            )
            .route(
                "/api/v1/namespaces/{ns}/{plural}/{name}",
                get(read).patch(patch).put(replace).delete(delete),
            )
            .route(
                "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}",
                get(read).patch(patch).put(replace).delete(delete),
            )
            .route(
                "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}/status",
                get(read).patch(patch_status).put(replace_status),
            )
            .fallback(|| async {
                status_error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            })
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://{addr}\nusers:\n- name: standin\n  user: {{}}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n    namespace: default\ncurrent-context: standin\n"
            ),
        )
        .expect("write kubeconfig");
        Self {
            addr,
            kubeconfig,
            state,
            _dir: dir,
            _server: server,
        }
    }

    /// Every stored object of one resource (plural), for assertions on
    /// what no kubectl command shows (events, leases).
    pub fn objects(&self, plural: &str) -> Vec<Value> {
        self.state
            .store
            .lock()
            .objects
            .iter()
            .filter(|((p, _, _), _)| *p == plural)
            .map(|(_, object)| object.clone())
            .collect()
    }
}

// === impl Kind ===

impl Kind {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn resources(group: &str, version: &str) -> impl Iterator<Item = &'static Kind> {
        KINDS
            .iter()
            .filter(move |k| k.group == group && k.version == version)
    }

    fn discovery(&self) -> Vec<Value> {
        let mut resources = vec![json!({
            "name": self.plural, "singularName": self.singular, "namespaced": true,
            "kind": self.kind, "shortNames": self.short_names,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        })];
        if self.custom {
            resources[0]["categories"] = json!(["switchboard"]);
            resources.push(json!({
                "name": format!("{}/status", self.plural), "singularName": "", "namespaced": true,
                "kind": self.kind, "verbs": ["get", "patch", "update"]
            }));
        }
        resources
    }
}

impl Target {
    fn from(params: &HashMap<String, String>) -> Result<Self, ApiError> {
        let group = params.get("group").map_or("", String::as_str);
        let version = params.get("version").map_or("v1", String::as_str);
        let plural = params.get("plural").map_or("", String::as_str);
        let kind = Kind::resources(group, version)
            .find(|k| k.plural == plural)
            .ok_or_else(|| {
                status_error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            })?;
        Ok(Self {
            kind,
            namespace: params.get("ns").cloned(),
            name: params.get("name").cloned(),
        })
    }

    fn key(&self) -> Key {
        (
            self.kind.plural,
            self.namespace.clone().unwrap_or_default(),
            self.name.clone().unwrap_or_default(),
        )
    }

    fn not_found(&self) -> ApiError {
        status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "{}.{} \"{}\" not found",
                self.kind.plural,
                self.kind.group,
                self.name.as_deref().unwrap_or("")
            ),
        )
    }
}

// --- discovery ---

async fn version() -> Json<Value> {
    Json(json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-switchboard-stand-in",
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "n/a", "compiler": "n/a", "platform": "linux/amd64"
    }))
}

async fn core_versions() -> Json<Value> {
    Json(json!({
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1" }]
    }))
}

async fn core_resources() -> Json<Value> {
    let resources: Vec<Value> = Kind::resources("", "v1")
        .flat_map(Kind::discovery)
        .collect();
    Json(
        json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": resources }),
    )
}

fn group_body(name: &str) -> Option<Value> {
    let kind = KINDS.iter().find(|k| k.group == name && !name.is_empty())?;
    let version = json!({ "groupVersion": kind.api_version(), "version": kind.version });
    Some(json!({ "name": name, "versions": [version.clone()], "preferredVersion": version }))
}

async fn groups() -> Json<Value> {
    let mut names: Vec<&str> = KINDS
        .iter()
        .map(|k| k.group)
        .filter(|g| !g.is_empty())
        .collect();
    names.dedup();
    let groups: Vec<Value> = names.into_iter().filter_map(group_body).collect();
    Json(json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups }))
}

async fn group(Path(name): Path<String>) -> Reply {
    let mut body = group_body(&name)
        .ok_or_else(|| status_error(StatusCode::NOT_FOUND, "NotFound", "no such group"))?;
    body["kind"] = json!("APIGroup");
    body["apiVersion"] = json!("v1");
    Ok(Json(body).into_response())
}

async fn group_resources(Path((group, version)): Path<(String, String)>) -> Reply {
    let resources: Vec<Value> = Kind::resources(&group, &version)
        .flat_map(Kind::discovery)
        .collect();
    if resources.is_empty() {
        return Err(status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no such group version",
        ));
    }
    Ok(Json(json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": format!("{group}/{version}"), "resources": resources
    }))
    .into_response())
}

// --- collections ---

async fn list(
    State(state): State<ApiState>,
    Path(params): Params,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Reply {
    let target = Target::from(&params)?;
    let kind = target.kind;
    let namespace = target.namespace;
    let name = query
        .field_selector
        .as_deref()
        .and_then(|s| s.strip_prefix("metadata.name="))
        .map(str::to_owned);
    let selected = move |plural: &str, ns: &str, object: &Value| {
        plural == kind.plural
            && namespace.as_deref().is_none_or(|want| want == ns)
            && name
                .as_deref()
                .is_none_or(|want| object["metadata"]["name"] == want)
    };
    if matches!(query.watch.as_deref(), Some("true" | "1")) {
        return Ok(watch(state, query, selected));
    }
    let store = state.store.lock();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((plural, ns, _), object)| selected(plural, ns, object))
        .map(|(_, object)| object.clone())
        .collect();
    let resource_version = store.resource_version.to_string();
    drop(store);
    if kind.custom && wants_table(&headers) {
        return Ok(Json(table(&state.columns, &items, &resource_version)).into_response());
    }
    Ok(Json(json!({
        "apiVersion": kind.api_version(),
        "kind": format!("{}List", kind.kind),
        "metadata": { "resourceVersion": resource_version },
        "items": items,
    }))
    .into_response())
}

/// Streams events after the given resourceVersion (or every current object
/// as ADDED, without one), then live events, as newline-delimited JSON.
fn watch(
    state: ApiState,
    query: ListQuery,
    selected: impl Fn(&str, &str, &Value) -> bool + Send + Sync + 'static,
) -> Response {
    let since: Option<u64> = query
        .resource_version
        .as_deref()
        .filter(|rv| !rv.is_empty() && *rv != "0")
        .and_then(|rv| rv.parse().ok());
    let mut live = state.events.subscribe();
    let (replay, mut last) = {
        let store = state.store.lock();
        match since {
            Some(since) => (
                store
                    .history
                    .iter()
                    .filter(|e| e.resource_version > since)
                    .cloned()
                    .collect::<Vec<_>>(),
                since,
            ),
            None => (
                store
                    .objects
                    .iter()
                    .map(|((plural, ns, _), object)| WatchEvent {
                        resource_version: store.resource_version,
                        kind: "ADDED",
                        plural,
                        namespace: ns.clone(),
                        object: object.clone(),
                    })
                    .collect(),
                store.resource_version,
            ),
        }
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    let timeout = Duration::from_secs(query.timeout_seconds.unwrap_or(300));
    tokio::spawn(async move {
        let line = |event: &WatchEvent| {
            let mut text = json!({ "type": event.kind, "object": event.object }).to_string();
            text.push('\n');
            Ok(Bytes::from(text))
        };
        for event in replay
            .iter()
            .filter(|e| selected(e.plural, &e.namespace, &e.object))
        {
            if tx.send(line(event)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            let event = tokio::select! {
                () = &mut deadline => return,
                () = tx.closed() => return,
                event = live.recv() => match event {
                    Ok(event) => event,
                    // A slow watcher is told to relist, as a real server does.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let gone = json!({
                            "type": "ERROR",
                            "object": status_body(StatusCode::GONE, "Expired", "too old resource version"),
                        });
                        let _ = tx.send(Ok(Bytes::from(format!("{gone}\n")))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if event.resource_version <= last
                || !selected(event.plural, &event.namespace, &event.object)
            {
                continue;
            }
            last = event.resource_version;
            if tx.send(line(&event)).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(ReceiverStream::new(rx)))
        .unwrap_or_default()
}

async fn create(State(state): State<ApiState>, Path(params): Params, body: Bytes) -> Reply {
    let target = Target::from(&params)?;
    let object = parse_body(&body)?;
    let (code, object) = insert(&state, &target, object)?;
    Ok((code, Json(object)).into_response())
}

/// Stores a new object in `target`'s namespace.
fn insert(
    state: &ApiState,
    target: &Target,
    mut object: Value,
) -> Result<(StatusCode, Value), ApiError> {
    let kind = target.kind;
    let ns = target.namespace.clone().unwrap_or_default();
    if object["apiVersion"] != kind.api_version().as_str() || object["kind"] != kind.kind {
        return Err(status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!(
                "expected apiVersion {}, kind {}",
                kind.api_version(),
                kind.kind
            ),
        ));
    }
    let mut store = state.store.lock();
    let name = match object["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
    {
        Some(name) => name.to_owned(),
        None => match object["metadata"]["generateName"].as_str() {
            Some(prefix) => format!("{prefix}{:05x}", store.resource_version + 1),
            None => {
                return Err(status_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "metadata.name: Required value",
                ));
            }
        },
    };
    if store
        .objects
        .contains_key(&(kind.plural, ns.clone(), name.clone()))
    {
        return Err(status_error(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("{}.{} \"{name}\" already exists", kind.plural, kind.group),
        ));
    }
    if kind.custom {
        if let Some(object) = object.as_object_mut() {
            object.remove("status");
        }
        object["metadata"]["generation"] = json!(1);
        validate_spec(&state.spec_schema, kind, &mut object)?;
    }
    fold_string_data(kind, &mut object);
    let metadata = &mut object["metadata"];
    metadata["name"] = json!(name);
    metadata["namespace"] = json!(ns);
    metadata["uid"] = json!(format!(
        "00000000-0000-0000-0000-{:012}",
        store.resource_version + 1
    ));
    metadata["creationTimestamp"] = json!(rfc3339_now());
    let object = store.commit(&state.events, kind.plural, "ADDED", &ns, &name, object);
    Ok((StatusCode::CREATED, object))
}

async fn read(State(state): State<ApiState>, Path(params): Params) -> Reply {
    let target = Target::from(&params)?;
    let store = state.store.lock();
    let object = store
        .objects
        .get(&target.key())
        .ok_or_else(|| target.not_found())?;
    Ok(Json(object.clone()).into_response())
}

async fn patch(
    State(state): State<ApiState>,
    Path(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let target = Target::from(&params)?;
    let patch = patch_body(&headers, &body)?;
    let apply = content_type(&headers).starts_with("application/apply-patch");
    let exists = state.store.lock().objects.contains_key(&target.key());
    if !exists {
        if !apply {
            return Err(target.not_found());
        }
        let (code, object) = insert(&state, &target, patch)?;
        return Ok((code, Json(object)).into_response());
    }
    let mut next = current(&state, &target)?;
    merge(&mut next, &patch);
    update(&state, &target, next, &patch)
}

async fn replace(State(state): State<ApiState>, Path(params): Params, body: Bytes) -> Reply {
    let target = Target::from(&params)?;
    let next = parse_body(&body)?;
    update(&state, &target, next.clone(), &next)
}

fn current(state: &ApiState, target: &Target) -> Result<Value, ApiError> {
    state
        .store
        .lock()
        .objects
        .get(&target.key())
        .cloned()
        .ok_or_else(|| target.not_found())
}

/// Writes `next` over the stored object: identity kept, status kept (it
/// changes only through `/status`), generation bumped on a spec change,
/// and a `resourceVersion` in the request must match (optimistic
/// concurrency, as leases use it).
fn update(state: &ApiState, target: &Target, mut next: Value, request: &Value) -> Reply {
    let kind = target.kind;
    let mut store = state.store.lock();
    let key = target.key();
    let current = store
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| target.not_found())?;
    let expected = request["metadata"]["resourceVersion"].as_str();
    if expected.is_some() && expected != current["metadata"]["resourceVersion"].as_str() {
        return Err(status_error(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {}.{} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                kind.plural, kind.group, key.2
            ),
        ));
    }
    keep_identity(&mut next, &current);
    if kind.custom {
        validate_spec(&state.spec_schema, kind, &mut next)?;
        next["status"] = current["status"].clone();
        if let Some(object) = next
            .as_object_mut()
            .filter(|o| o.get("status").is_some_and(Value::is_null))
        {
            object.remove("status");
        }
        let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
        next["metadata"]["generation"] =
            json!(generation + i64::from(next["spec"] != current["spec"]));
    }
    fold_string_data(kind, &mut next);
    let object = store.commit(&state.events, kind.plural, "MODIFIED", &key.1, &key.2, next);
    Ok(Json(object).into_response())
}

async fn patch_status(
    State(state): State<ApiState>,
    Path(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let target = Target::from(&params)?;
    let patch = patch_body(&headers, &body)?;
    let mut patched = current(&state, &target)?;
    merge(&mut patched, &patch);
    write_status(&state, &target, patched["status"].clone())
}

async fn replace_status(State(state): State<ApiState>, Path(params): Params, body: Bytes) -> Reply {
    let target = Target::from(&params)?;
    let body = parse_body(&body)?;
    write_status(&state, &target, body["status"].clone())
}

/// Only the status changes through the subresource.
fn write_status(state: &ApiState, target: &Target, status: Value) -> Reply {
    let mut store = state.store.lock();
    let key = target.key();
    let mut next = store
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| target.not_found())?;
    next["status"] = status;
    let object = store.commit(
        &state.events,
        target.kind.plural,
        "MODIFIED",
        &key.1,
        &key.2,
        next,
    );
    Ok(Json(object).into_response())
}

async fn delete(State(state): State<ApiState>, Path(params): Params) -> Reply {
    let target = Target::from(&params)?;
    let key = target.key();
    let mut store = state.store.lock();
    let mut object = store
        .objects
        .remove(&key)
        .ok_or_else(|| target.not_found())?;
    store.resource_version += 1;
    object["metadata"]["resourceVersion"] = json!(store.resource_version.to_string());
    let event = WatchEvent {
        resource_version: store.resource_version,
        kind: "DELETED",
        plural: target.kind.plural,
        namespace: key.1,
        object: object.clone(),
    };
    store.history.push(event.clone());
    let _ = state.events.send(event);
    Ok(Json(object).into_response())
}

// === impl Store ===

impl Store {
    /// Stamps a new resourceVersion, stores the object and tells watchers.
    fn commit(
        &mut self,
        events: &broadcast::Sender<WatchEvent>,
        plural: &'static str,
        kind: &'static str,
        namespace: &str,
        name: &str,
        mut object: Value,
    ) -> Value {
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        self.objects.insert(
            (plural, namespace.to_owned(), name.to_owned()),
            object.clone(),
        );
        let event = WatchEvent {
            resource_version: self.resource_version,
            kind,
            plural,
            namespace: namespace.to_owned(),
            object: object.clone(),
        };
        self.history.push(event.clone());
        let _ = events.send(event);
        object
    }
}

/// Refuses a spec that breaks the CRD's structural schema (422, listing
/// every problem as the API server words them) and prunes unknown fields.
fn validate_spec(schema: &Value, kind: &Kind, object: &mut Value) -> Result<(), ApiError> {
    let mut problems = Vec::new();
    match object.get_mut("spec") {
        Some(spec) => check_schema(schema, spec, "spec", &mut problems),
        None => problems.push("spec: Required value".to_owned()),
    }
    if problems.is_empty() {
        return Ok(());
    }
    let name = object["metadata"]["name"].as_str().unwrap_or("");
    Err(status_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        &format!(
            "{}.{} \"{name}\" is invalid: {}",
            kind.kind,
            kind.group,
            problems.join(", ")
        ),
    ))
}

fn check_schema(schema: &Value, value: &mut Value, path: &str, problems: &mut Vec<String>) {
    if value.is_null() {
        if schema["nullable"] != true {
            problems.push(format!(
                "{path}: Invalid value: \"null\": {path} in body must not be null"
            ));
        }
        return;
    }
    let expected = schema["type"].as_str().unwrap_or("");
    let matches = match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !matches {
        problems.push(format!(
            "{path}: Invalid value: \"{}\": {path} in body must be of type {expected}",
            value_kind(value)
        ));
        return;
    }
    match value {
        Value::Object(map) => {
            for required in schema["required"].as_array().into_iter().flatten() {
                let field = required.as_str().unwrap_or("");
                if !map.contains_key(field) {
                    problems.push(format!("{path}.{field}: Required value"));
                }
            }
            let properties = schema["properties"].as_object();
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let mut pruned = Vec::new();
            for (key, child) in map.iter_mut() {
                let child_path = format!("{path}.{key}");
                match properties.and_then(|p| p.get(key)).or(additional) {
                    Some(child_schema) => check_schema(child_schema, child, &child_path, problems),
                    None if schema["x-kubernetes-preserve-unknown-fields"] == true => {}
                    None => pruned.push(key.clone()),
                }
            }
            for key in pruned {
                map.remove(&key);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                check_schema(&schema["items"], item, &format!("{path}[{i}]"), problems);
            }
        }
        Value::String(text) => {
            if let Some(pattern) = schema["pattern"].as_str() {
                let matched = regex::Regex::new(pattern).is_ok_and(|re| re.is_match(text));
                if !matched {
                    problems.push(format!(
                        "{path}: Invalid value: \"{text}\": {path} in body should match '{pattern}'"
                    ));
                }
            }
            let allowed = schema["enum"].as_array();
            if allowed.is_some_and(|allowed| !allowed.iter().any(|a| a == text.as_str())) {
                problems.push(format!("{path}: Unsupported value: \"{text}\""));
            }
        }
        Value::Number(number) => {
            let n = number.as_f64().unwrap_or(0.0);
            if let Some(min) = schema["minimum"].as_f64().filter(|min| n < *min) {
                problems.push(format!(
                    "{path}: Invalid value: {number}: {path} in body should be greater than or equal to {min}"
                ));
            }
            if let Some(max) = schema["maximum"].as_f64().filter(|max| n > *max) {
                problems.push(format!(
                    "{path}: Invalid value: {number}: {path} in body should be less than or equal to {max}"
                ));
            }
        }
        _ => {}
    }
}

fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A Secret's `stringData` is write-only: the server folds it into `data`.
fn fold_string_data(kind: &Kind, object: &mut Value) {
    if kind.kind != "Secret" {
        return;
    }
    let Some(string_data) = object.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    for (key, value) in string_data.as_object().into_iter().flatten() {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(value.as_str().unwrap_or(""));
        object["data"][key] = json!(encoded);
    }
}

// --- helpers ---

fn keep_identity(next: &mut Value, current: &Value) {
    next["apiVersion"] = current["apiVersion"].clone();
    next["kind"] = current["kind"].clone();
    for key in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "generation",
    ] {
        next["metadata"][key] = current["metadata"][key].clone();
    }
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn patch_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    let kind = content_type(headers);
    if kind.starts_with("application/merge-patch+json")
        || kind.starts_with("application/apply-patch+yaml")
    {
        return parse_body(body);
    }
    Err(status_error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UnsupportedMediaType",
        &format!(
            "the body of the request was in an unknown format ({kind}); custom resources accept merge and apply patches"
        ),
    ))
}

/// JSON, or YAML (apply patches may be either).
fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .or_else(|_| serde_yaml::from_slice(body))
        .map_err(|e| {
            status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("cannot decode the body: {e}"),
            )
        })
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("as=Table"))
}

/// The server-side table `kubectl get` prints: the name plus the CRD's
/// printer columns, evaluated with the JSONPath subset they use.
fn table(columns: &[Value], items: &[Value], resource_version: &str) -> Value {
    let mut definitions = vec![json!({
        "name": "Name", "type": "string", "format": "name",
        "description": "Name of the resource", "priority": 0
    })];
    definitions.extend(columns.iter().map(|c| {
        json!({
            "name": c["name"], "type": c["type"], "format": c.get("format").cloned().unwrap_or(json!("")),
            "description": c.get("description").cloned().unwrap_or(json!("")), "priority": 0
        })
    }));
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut cells = vec![item["metadata"]["name"].clone()];
            cells.extend(columns.iter().map(|c| {
                let value = json_path(item, c["jsonPath"].as_str().unwrap_or(""));
                match (c["type"].as_str(), value) {
                    (Some("date"), Some(Value::String(at))) => json!(age(&at)),
                    (_, Some(value)) => value,
                    (_, None) => Value::Null,
                }
            }));
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                    "metadata": item["metadata"]
                }
            })
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": resource_version },
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

/// `.a.b` and `.a.list[?(@.key=="value")].field`.
fn json_path(object: &Value, path: &str) -> Option<Value> {
    let mut current = object.clone();
    // Split on dots outside `[...]` filters.
    let mut segments = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    let path = path.trim_start_matches('.');
    for (i, c) in path.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            '.' if depth == 0 => {
                segments.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    segments.push(&path[start..]);
    for segment in segments {
        let (field, filter) = match segment.split_once("[?(@.") {
            Some((field, rest)) => (field, Some(rest.trim_end_matches(")]"))),
            None => (segment, None),
        };
        current = current.get(field)?.clone();
        if let Some(filter) = filter {
            let (key, value) = filter.split_once("==")?;
            let value = value.trim_matches('"');
            current = current
                .as_array()?
                .iter()
                .find(|entry| entry[key] == value)?
                .clone();
        }
    }
    (!current.is_null()).then_some(current)
}

fn age(timestamp: &str) -> String {
    let created = parse_rfc3339(timestamp).unwrap_or(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{}s", now.saturating_sub(created))
}

fn status_body(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason,
        "details": {}, "code": code.as_u16()
    })
}

fn status_error(code: StatusCode, reason: &'static str, message: &str) -> ApiError {
    ApiError {
        code,
        reason,
        message: message.to_owned(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = status_body(self.code, self.reason, &self.message);
        (self.code, Json(body)).into_response()
    }
}

fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn parse_rfc3339(text: &str) -> Option<u64> {
    let (date, time) = text.trim_end_matches('Z').split_once('T')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>());
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let mut time = time.split(':').map(|p| p.parse::<u64>());
    let (hour, minute, second) = (time.next()?.ok()?, time.next()?.ok()?, time.next()?.ok()?);
    let days = days_from_civil(year, month, day);
    Some(u64::try_from(days).ok()? * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Howard Hinnant's civil-from-days (proleptic Gregorian, UTC).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
