//! A **stand-in** for the Kubernetes API server, because no real one can
//! run here: as strict as a real one wherever Switchboard's manifests and
//! clients meet it.
//!
//! # What it serves
//!
//! The wire protocol as kube-rs and kubectl use it, for the resources
//! Switchboard touches: `CustomResourceDefinition`, `McpServer` (with its
//! `/status` subresource and printer columns), `Secret` and `ConfigMap`
//! (env values), `events.k8s.io/v1` `Event` and `coordination.k8s.io/v1`
//! `Lease`, and `ServiceAccount` and `Pod` with the tokens the kubelet
//! mounts (`TokenRequest`) and the `TokenReview`s that check them
//! ([`token`]). Discovery (`/version`, `/api`, `/apis/...`), list with
//! `resourceVersion` and label and field selectors, watch as
//! newline-delimited `WatchEvent`s replayed from a global resourceVersion
//! history, create (also by `generateName`), get, replace and merge/apply
//! patches with `resourceVersion` preconditions (409 on conflict, `/status`
//! writes included), delete, `/status` writes that leave
//! `metadata.generation` alone while spec changes bump it, `stringData`
//! folded into a Secret's `data`, server-side `Table` output from the CRD's
//! printer columns (what `kubectl get mcps` prints), `Warning` headers,
//! `Event`s validated as the real server validates them, and errors as
//! `metav1.Status` in the real server's words.
//!
//! Lists are paginated with `limit` and `continue`, each page from the
//! snapshot at the first page's resourceVersion. Watches send bookmarks
//! when asked (`allowWatchBookmarks=true`, every
//! [`KubeApiServer::bookmark_every`]). History is kept until
//! [`KubeApiServer::compact`], as etcd keeps it until compaction: a watch
//! resuming from before that point gets `410 Expired` "too old resource
//! version", a continued list from before it `410` too.
//!
//! # Faults
//!
//! A test switches on what a real server does on a bad day ([`fault`]):
//! 429 with `Retry-After`, 500, 503, 504, RBAC denials (403) per resource,
//! namespace, object or verb, slow and hung requests, through
//! [`KubeApiServer::fault`]; [`KubeApiServer::end_watches`] closes every
//! open watch, as a restarting server does.
//!
//! # CRDs and custom resources
//!
//! CRDs are reviewed as apiextensions.k8s.io/v1 reviews them ([`crd`]):
//! the chart's when the stand-in starts (one a cluster would refuse makes
//! it panic with the real server's message, as `helm install` would fail),
//! and each one created, replaced or applied server-side through the API.
//! `McpServer`s (and the other Switchboard kinds) follow the stored CRD: defaulted, pruned and validated as
//! the real server does ([`schema`]), `fieldValidation` (`Strict`, `Warn`,
//! the default, `Ignore`) deciding what an unknown field costs.
//!
//! # Differences from a real server
//!
//! CEL rules are neither run nor cost-estimated; server-side apply is a
//! merge patch (no field ownership, so no conflicts); a client-side
//! `kubectl apply` of an existing object sends a strategic merge patch,
//! refused with 415; only Switchboard's CRDs make kinds served; no
//! authentication, and no authorization beyond the denials a test switches
//! on; bookmarks are not sent as a watch's timeout ends; Pods and
//! ServiceAccounts are stored as given (no schema, no scheduling), there
//! only for tokens to be bound to; issued tokens are remembered, not
//! signed.

mod cel;
pub mod crd;
mod event;
pub mod fault;
pub mod field;
mod read;
mod schema;
mod selector;
mod table;
mod token;
mod write;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use axum::{
    Json, Router,
    extract::Path,
    http::{HeaderValue, StatusCode},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

pub use fault::{Fault, FaultHandle};
use field::FieldError;

/// The CRDs the chart installs.
const CRDS: [&str; 4] = [
    include_str!("../../charts/switchboard/crds/mcpservers.switchboard.dev.yaml"),
    include_str!("../../charts/switchboard/crds/mcpclients.switchboard.dev.yaml"),
    include_str!("../../charts/switchboard/crds/mcpaccesspolicies.switchboard.dev.yaml"),
    include_str!("../../charts/switchboard/crds/mcpgatewayconfigs.switchboard.dev.yaml"),
];

/// A resource type this stand-in serves.
#[derive(Debug)]
struct Kind {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    namespaced: bool,
    /// Has a `/status` subresource: status changes only through it, and
    /// `metadata.generation` counts spec changes.
    status: bool,
    /// A custom resource: served while its CRD is stored, and admitted
    /// against that CRD's schema.
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
        categories: &[],
        namespaced: true,
        status: false,
        custom: false,
    },
    Kind {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        short_names: &["cm"],
        categories: &[],
        namespaced: true,
        status: false,
        custom: false,
    },
    Kind {
        group: "",
        version: "v1",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        kind: "ServiceAccount",
        short_names: &["sa"],
        categories: &[],
        namespaced: true,
        status: false,
        custom: false,
    },
    Kind {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        short_names: &["po"],
        categories: &["all"],
        namespaced: true,
        status: false,
        custom: false,
    },
    Kind {
        group: "switchboard.dev",
        version: "v1alpha1",
        plural: "mcpservers",
        singular: "mcpserver",
        kind: "McpServer",
        short_names: &["mcps"],
        categories: &["switchboard"],
        namespaced: true,
        status: true,
        custom: true,
    },
    Kind {
        group: "switchboard.dev",
        version: "v1alpha1",
        plural: "mcpclients",
        singular: "mcpclient",
        kind: "McpClient",
        short_names: &["mcpc"],
        categories: &["switchboard"],
        namespaced: true,
        status: false,
        custom: true,
    },
    Kind {
        group: "switchboard.dev",
        version: "v1alpha1",
        plural: "mcpaccesspolicies",
        singular: "mcpaccesspolicy",
        kind: "McpAccessPolicy",
        short_names: &["mcpap"],
        categories: &["switchboard"],
        namespaced: true,
        status: false,
        custom: true,
    },
    Kind {
        group: "switchboard.dev",
        version: "v1alpha1",
        plural: "mcpgatewayconfigs",
        singular: "mcpgatewayconfig",
        kind: "McpGatewayConfig",
        short_names: &["mcpgc"],
        categories: &["switchboard"],
        namespaced: true,
        status: false,
        custom: true,
    },
    Kind {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        short_names: &["ev"],
        categories: &[],
        namespaced: true,
        status: false,
        custom: false,
    },
    Kind {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        short_names: &[],
        categories: &[],
        namespaced: true,
        status: false,
        custom: false,
    },
    Kind {
        group: "apiextensions.k8s.io",
        version: "v1",
        plural: "customresourcedefinitions",
        singular: "customresourcedefinition",
        kind: "CustomResourceDefinition",
        short_names: &["crd", "crds"],
        categories: &["api-extensions"],
        namespaced: false,
        status: true,
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
    faults: fault::Faults,
    /// Bumped to close every open watch.
    watch_epoch: Arc<watch::Sender<u64>>,
    /// ServiceAccount tokens issued.
    tokens: token::Issued,
}

/// Objects by (plural, namespace, name); cluster-scoped ones have namespace "".
type Key = (&'static str, String, String);

struct Store {
    resource_version: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change after the compaction point, oldest first.
    history: Vec<WatchEvent>,
    /// The resourceVersion history was last compacted at (0: never).
    compacted: u64,
    /// The objects as they were at the compaction point.
    compacted_objects: BTreeMap<Key, Value>,
    /// How often a watch that asked for bookmarks gets one.
    bookmark_every: Duration,
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
    label_selector: Option<String>,
    allow_watch_bookmarks: Option<bool>,
    limit: Option<usize>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

/// The query of a write: `?fieldValidation=Strict|Warn|Ignore`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WriteQuery {
    field_validation: Option<String>,
}

/// What an unknown field costs (`metav1.FieldValidation*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldValidation {
    /// Refused, 400.
    Strict,
    /// Dropped, with a `Warning` header (the default).
    Warn,
    /// Dropped silently (`kubectl --validate=false`).
    Ignore,
}

type Reply = Result<Response, ApiError>;
type Params = Path<HashMap<String, String>>;

/// An error answered as a `metav1.Status`.
#[derive(Debug)]
struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
    details: Value,
}

/// What a request addresses.
struct Target {
    kind: &'static Kind,
    namespace: Option<String>,
    name: Option<String>,
    /// For a custom resource: the served version of its stored CRD.
    crd_version: Option<Value>,
}

impl KubeApiServer {
    /// Starts the stand-in on a loopback port with the chart's CRDs
    /// installed, as after `helm install`.
    ///
    /// # Panics
    ///
    /// When a real API server would refuse one of the chart's CRDs: the
    /// panic carries the real server's message.
    pub async fn start() -> Self {
        let crds = CRDS.map(|crd| serde_yaml::from_str(crd).expect("the chart CRD parses"));
        Self::start_with_crds(crds.into()).await
    }

    /// Starts the stand-in with `crd` as the only CRD installed.
    ///
    /// # Panics
    ///
    /// When a real API server would refuse `crd`.
    pub async fn start_with_crd(crd: Value) -> Self {
        Self::start_with_crds(vec![crd]).await
    }

    async fn start_with_crds(installed: Vec<Value>) -> Self {
        // Whoever talks to the stand-in builds an HTTP client, and the
        // workspace's reqwest wants a process-wide TLS provider for that.
        crate::install_tls_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the API server stand-in");
        let addr = listener.local_addr().expect("address");
        let (events, _) = broadcast::channel(1024);
        let state = ApiState {
            store: Arc::new(Mutex::new(Store::default())),
            events,
            faults: fault::Faults::default(),
            watch_epoch: Arc::new(watch::Sender::new(0)),
            tokens: token::Issued::default(),
        };
        let crds = Target::cluster(kind("customresourcedefinitions"));
        for crd in installed {
            if let Err(refused) = write::insert(&state, &crds, crd, FieldValidation::Strict) {
                panic!(
                    "a real API server refuses this CRD (so `helm install` fails): {}",
                    refused.message
                );
            }
        }
        let server_state = state.clone();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router(server_state)).await;
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

    /// Every change to one resource (plural) since the last compaction,
    /// oldest first: the watch event type and the object as written.
    pub fn history(&self, plural: &str) -> Vec<(&'static str, Value)> {
        self.state
            .store
            .lock()
            .history
            .iter()
            .filter(|e| e.plural == plural)
            .map(|e| (e.kind, e.object.clone()))
            .collect()
    }

    /// Switches `fault` on until [`FaultHandle::lift`] or
    /// [`KubeApiServer::clear_faults`].
    pub fn fault(&self, fault: Fault) -> FaultHandle {
        self.state.faults.add(fault)
    }

    /// Switches every fault off (held requests stay held).
    pub fn clear_faults(&self) {
        self.state.faults.clear();
    }

    /// Compacts history up to now, as etcd compaction does: watches and
    /// continued lists from an older resourceVersion get `410`.
    pub fn compact(&self) {
        let mut store = self.state.store.lock();
        store.compacted = store.resource_version;
        store.compacted_objects = store.objects.clone();
        store.history.clear();
    }

    /// Closes every open watch, as a restarting API server does; clients
    /// resume from the last resourceVersion they saw.
    pub fn end_watches(&self) {
        self.state.watch_epoch.send_modify(|epoch| *epoch += 1);
    }

    /// How often watches that ask for bookmarks get one (default: a
    /// minute, as the real watch cache sends them).
    pub fn bookmark_every(&self, interval: Duration) {
        self.state.store.lock().bookmark_every = interval;
    }
}

fn router(state: ApiState) -> Router {
    let one = || {
        get(read::read)
            .patch(write::patch)
            .put(write::replace)
            .delete(write::delete)
    };
    Router::new()
        .route("/version", get(version))
        .route("/api", get(core_versions))
        .route("/api/v1", get(core_resources))
        .route("/apis", get(groups))
        .route("/apis/{group}", get(group))
        .route("/apis/{group}/{version}", get(group_resources))
        .route("/api/v1/{plural}", get(read::list))
        .route(
            "/apis/{group}/{version}/{plural}",
            get(read::list).post(write::create),
        )
        .route("/apis/{group}/{version}/{plural}/{name}", one())
        .route(
            "/api/v1/namespaces/{ns}/{plural}",
            get(read::list).post(write::create),
        )
        .route(
            "/apis/{group}/{version}/namespaces/{ns}/{plural}",
            get(read::list).post(write::create),
        )
        .route("/api/v1/namespaces/{ns}/{plural}/{name}", one())
        .route(
            "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}",
            one(),
        )
        .route(
            "/api/v1/namespaces/{ns}/serviceaccounts/{name}/token",
            post(token::request),
        )
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(token::review),
        )
        .route(
            "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}/status",
            get(read::read)
                .patch(write::patch_status)
                .put(write::replace_status),
        )
        .fallback(|| async { not_found("the server could not find the requested resource") })
        .layer(middleware::from_fn_with_state(
            state.faults.clone(),
            fault::intercept,
        ))
        .with_state(state)
}

/// The kind with this plural.
fn kind(plural: &str) -> &'static Kind {
    KINDS
        .iter()
        .find(|k| k.plural == plural)
        .expect("a kind the stand-in serves")
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
            "name": self.plural, "singularName": self.singular, "namespaced": self.namespaced,
            "kind": self.kind, "shortNames": self.short_names,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        })];
        if !self.categories.is_empty() {
            resources[0]["categories"] = json!(self.categories);
        }
        if self.plural == "serviceaccounts" {
            resources.push(json!({
                "name": "serviceaccounts/token", "singularName": "", "namespaced": true,
                "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest",
                "verbs": ["create"]
            }));
        }
        if self.status {
            resources.push(json!({
                "name": format!("{}/status", self.plural), "singularName": "",
                "namespaced": self.namespaced, "kind": self.kind, "verbs": ["get", "patch", "update"]
            }));
        }
        resources
    }

    /// The name of the CRD that defines this kind.
    fn crd_name(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }

    /// `GroupResource.String()`, as errors name the resource: `secrets`,
    /// `leases.coordination.k8s.io`.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            self.crd_name()
        }
    }
}

// === impl Target ===

impl Target {
    /// The kind and object a request's path names. A custom kind is found
    /// only while its CRD is stored and serves the version.
    fn from(state: &ApiState, params: &HashMap<String, String>) -> Result<Self, ApiError> {
        let group = params.get("group").map_or("", String::as_str);
        let version = params.get("version").map_or("v1", String::as_str);
        let plural = params.get("plural").map_or("", String::as_str);
        let missing = || not_found("the server could not find the requested resource");
        let kind = Kind::resources(group, version)
            .find(|k| k.plural == plural)
            .ok_or_else(missing)?;
        let namespace = params.get("ns").cloned();
        let crd_version = if kind.custom {
            Some(state.store.lock().crd_version(kind).ok_or_else(missing)?)
        } else {
            None
        };
        Ok(Self {
            kind,
            namespace: namespace.filter(|_| kind.namespaced),
            name: params.get("name").cloned(),
            crd_version,
        })
    }

    /// A cluster-scoped collection.
    fn cluster(kind: &'static Kind) -> Self {
        Self {
            kind,
            namespace: None,
            name: None,
            crd_version: None,
        }
    }

    fn key(&self) -> Key {
        (
            self.kind.plural,
            self.namespace.clone().unwrap_or_default(),
            self.name.clone().unwrap_or_default(),
        )
    }

    fn not_found(&self) -> ApiError {
        not_found(&format!(
            "{} \"{}\" not found",
            self.kind.qualified(),
            self.name.as_deref().unwrap_or("")
        ))
    }

    /// The stored CRD's schema for this custom kind.
    fn schema(&self) -> &Value {
        self.crd_version
            .as_ref()
            .map_or(&Value::Null, |v| &v["schema"]["openAPIV3Schema"])
    }
}

// === impl Store ===

impl Default for Store {
    fn default() -> Self {
        Self {
            resource_version: 0,
            objects: BTreeMap::new(),
            history: Vec::new(),
            compacted: 0,
            compacted_objects: BTreeMap::new(),
            // The watch cache's `bookmarkFrequency`.
            bookmark_every: Duration::from_secs(60),
        }
    }
}

impl Store {
    /// The objects as they were at `resource_version`, replayed from the
    /// compaction point; `None` once compaction has passed it.
    fn objects_at(&self, resource_version: u64) -> Option<BTreeMap<Key, Value>> {
        if resource_version < self.compacted {
            return None;
        }
        let mut objects = self.compacted_objects.clone();
        for event in self
            .history
            .iter()
            .take_while(|e| e.resource_version <= resource_version)
        {
            let name = event.object["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            let key = (event.plural, event.namespace.clone(), name);
            if event.kind == "DELETED" {
                objects.remove(&key);
            } else {
                objects.insert(key, event.object.clone());
            }
        }
        Some(objects)
    }

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

    /// The served version of `kind`'s stored CRD.
    fn crd_version(&self, kind: &Kind) -> Option<Value> {
        let key = ("customresourcedefinitions", String::new(), kind.crd_name());
        self.objects.get(&key)?["spec"]["versions"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == kind.version && v["served"] == true)
            .cloned()
    }
}

// === impl FieldValidation ===

impl FieldValidation {
    fn from(query: &WriteQuery) -> Self {
        match query.field_validation.as_deref() {
            Some("Strict") => Self::Strict,
            Some("Ignore") => Self::Ignore,
            _ => Self::Warn,
        }
    }

    /// What `unknown` fields cost: a 400 when strict, else warnings.
    fn judge(self, kind: &Kind, unknown: &[String]) -> Result<Vec<String>, ApiError> {
        let named: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field {}", field::go_quote(f)))
            .collect();
        match self {
            _ if named.is_empty() => Ok(Vec::new()),
            Self::Strict => Err(status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!(
                    "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
                    named.join(", "),
                    kind = kind.kind,
                    version = kind.version,
                ),
            )),
            Self::Warn => Ok(named),
            Self::Ignore => Ok(Vec::new()),
        }
    }
}

// === impl ApiError ===

impl ApiError {
    /// `errors.NewInvalid`: 422 with every field error as a cause.
    fn invalid(kind: &Kind, name: &str, errors: &[FieldError]) -> Self {
        let causes: Vec<Value> = errors.iter().map(FieldError::cause).collect();
        Self {
            code: StatusCode::UNPROCESSABLE_ENTITY,
            reason: "Invalid",
            message: field::invalid_message(kind.kind, kind.group, name, errors),
            details: json!({
                "name": name, "group": kind.group, "kind": kind.kind, "causes": causes
            }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = status_body(self.code, self.reason, &self.message);
        body["details"] = self.details;
        (self.code, Json(body)).into_response()
    }
}

/// Adds a `Warning: 299 - "<text>"` header per warning, as the API server
/// does (kubectl prints them as `Warning: <text>`).
fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for warning in warnings {
        let escaped = warning.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(value) = HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            response.headers_mut().append("warning", value);
        }
    }
    response
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
        details: json!({}),
    }
}

fn not_found(message: &str) -> ApiError {
    status_error(StatusCode::NOT_FOUND, "NotFound", message)
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
    let mut body = group_body(&name).ok_or_else(|| not_found("no such group"))?;
    body["kind"] = json!("APIGroup");
    body["apiVersion"] = json!("v1");
    Ok(Json(body).into_response())
}

async fn group_resources(Path((group, version)): Path<(String, String)>) -> Reply {
    let resources: Vec<Value> = Kind::resources(&group, &version)
        .flat_map(Kind::discovery)
        .collect();
    if resources.is_empty() {
        return Err(not_found("no such group version"));
    }
    Ok(Json(json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": format!("{group}/{version}"), "resources": resources
    }))
    .into_response())
}

#[cfg(test)]
mod tests;
