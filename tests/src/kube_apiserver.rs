//! A **stand-in** for the Kubernetes API server, because no real one can
//! run here. It speaks the wire protocol the way kube-rs and kubectl use
//! it for the `McpServer` resource: discovery (`/version`, `/api`,
//! `/apis/...`), list with `resourceVersion`, watch as newline-delimited
//! `WatchEvent`s replayed from a global resourceVersion history, create,
//! get, merge and apply patches, delete, the `/status` subresource (which
//! leaves `metadata.generation` alone, while spec changes bump it), server-side
//! `Table` output built from the CRD's printer columns (what `kubectl get`
//! shows), and errors as `metav1.Status`. It does not validate objects
//! against the CRD schema, authenticate, or implement other resources.

use std::{
    collections::BTreeMap,
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
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

const GROUP: &str = "switchboard.dev";
const VERSION: &str = "v1alpha1";
const API_VERSION: &str = "switchboard.dev/v1alpha1";
const KIND: &str = "McpServer";
const PLURAL: &str = "mcpservers";
/// The CRD the chart installs: its printer columns shape `kubectl get`.
const CRD: &str = include_str!("../../charts/switchboard/crds/mcpservers.switchboard.dev.yaml");

pub struct KubeApiServer {
    pub addr: SocketAddr,
    /// A kubeconfig pointing at this server (namespace `default`).
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
    _server: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct ApiState {
    store: Arc<Mutex<Store>>,
    events: broadcast::Sender<WatchEvent>,
    columns: Arc<Vec<Value>>,
}

#[derive(Default)]
struct Store {
    resource_version: u64,
    objects: BTreeMap<(String, String), Value>,
    history: Vec<WatchEvent>,
}

#[derive(Clone, Debug)]
struct WatchEvent {
    resource_version: u64,
    kind: &'static str,
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

/// An error answered as a `metav1.Status`.
#[derive(Debug)]
struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
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
        let state = ApiState {
            store: Arc::default(),
            events,
            columns: Arc::new(columns),
        };
        let base = format!("/apis/{GROUP}/{VERSION}");
        let router = Router::new()
            .route("/version", get(version))
            .route("/api", get(core_versions))
            .route("/api/v1", get(core_resources))
            .route("/apis", get(groups))
            .route(&format!("/apis/{GROUP}"), get(group))
            .route(&base, get(resources))
            .route(&format!("{base}/{PLURAL}"), get(list_all))
            .route(
                &format!("{base}/namespaces/{{ns}}/{PLURAL}"),
                get(list_namespace).post(create),
            )
            .route(
                &format!("{base}/namespaces/{{ns}}/{PLURAL}/{{name}}"),
                get(read).patch(patch).put(replace).delete(delete),
            )
            .route(
                &format!("{base}/namespaces/{{ns}}/{PLURAL}/{{name}}/status"),
                get(read).patch(patch_status).put(replace_status),
            )
            .fallback(|| async {
                status_error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            })
            .with_state(state);
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
            _dir: dir,
            _server: server,
        }
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

async fn core_versions(State(_): State<ApiState>) -> Json<Value> {
    Json(json!({
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1" }]
    }))
}

async fn core_resources() -> Json<Value> {
    Json(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
        "resources": [{
            "name": "namespaces", "singularName": "namespace", "namespaced": false,
            "kind": "Namespace", "verbs": ["get", "list"], "shortNames": ["ns"]
        }]
    }))
}

fn group_body() -> Value {
    let version = json!({ "groupVersion": API_VERSION, "version": VERSION });
    json!({ "name": GROUP, "versions": [version.clone()], "preferredVersion": version })
}

async fn groups() -> Json<Value> {
    Json(json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": [group_body()] }))
}

async fn group() -> Json<Value> {
    let mut body = group_body();
    body["kind"] = json!("APIGroup");
    body["apiVersion"] = json!("v1");
    Json(body)
}

async fn resources() -> Json<Value> {
    Json(json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": API_VERSION,
        "resources": [
            {
                "name": PLURAL, "singularName": "mcpserver", "namespaced": true, "kind": KIND,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                "shortNames": ["mcps"], "categories": ["switchboard"]
            },
            {
                "name": format!("{PLURAL}/status"), "singularName": "", "namespaced": true,
                "kind": KIND, "verbs": ["get", "patch", "update"]
            }
        ]
    }))
}

// --- collections ---

async fn list_all(
    State(state): State<ApiState>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    list_or_watch(state, None, query, &headers)
}

async fn list_namespace(
    State(state): State<ApiState>,
    Path(ns): Path<String>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    list_or_watch(state, Some(ns), query, &headers)
}

fn list_or_watch(
    state: ApiState,
    namespace: Option<String>,
    query: ListQuery,
    headers: &HeaderMap,
) -> Response {
    let name = query
        .field_selector
        .as_deref()
        .and_then(|s| s.strip_prefix("metadata.name="))
        .map(str::to_owned);
    let selected = move |ns: &str, object: &Value| {
        namespace.as_deref().is_none_or(|want| want == ns)
            && name
                .as_deref()
                .is_none_or(|want| object["metadata"]["name"] == want)
    };
    if matches!(query.watch.as_deref(), Some("true" | "1")) {
        return watch(state, query, selected);
    }
    let store = state.store.lock();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((ns, _), object)| selected(ns, object))
        .map(|(_, object)| object.clone())
        .collect();
    let resource_version = store.resource_version.to_string();
    drop(store);
    if wants_table(headers) {
        return Json(table(&state.columns, &items, &resource_version)).into_response();
    }
    Json(json!({
        "apiVersion": API_VERSION,
        "kind": format!("{KIND}List"),
        "metadata": { "resourceVersion": resource_version },
        "items": items,
    }))
    .into_response()
}

/// Streams events after the given resourceVersion (or every current object
/// as ADDED, without one), then live events, as newline-delimited JSON.
fn watch(
    state: ApiState,
    query: ListQuery,
    selected: impl Fn(&str, &Value) -> bool + Send + Sync + 'static,
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
                    .map(|((ns, _), object)| WatchEvent {
                        resource_version: store.resource_version,
                        kind: "ADDED",
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
        for event in replay.iter().filter(|e| selected(&e.namespace, &e.object)) {
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
            if event.resource_version <= last || !selected(&event.namespace, &event.object) {
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

async fn create(State(state): State<ApiState>, Path(ns): Path<String>, body: Bytes) -> Reply {
    let mut object = parse_body(&body)?;
    let name = object["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            status_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.name: Required value",
            )
        })?;
    if object["apiVersion"] != API_VERSION || object["kind"] != KIND {
        return Err(status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "expected apiVersion switchboard.dev/v1alpha1, kind McpServer",
        ));
    }
    let mut store = state.store.lock();
    if store.objects.contains_key(&(ns.clone(), name.clone())) {
        return Err(status_error(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("{PLURAL}.{GROUP} \"{name}\" already exists"),
        ));
    }
    if let Some(object) = object.as_object_mut() {
        object.remove("status");
    }
    let metadata = &mut object["metadata"];
    metadata["namespace"] = json!(ns);
    metadata["uid"] = json!(format!(
        "00000000-0000-0000-0000-{:012}",
        store.resource_version + 1
    ));
    metadata["generation"] = json!(1);
    metadata["creationTimestamp"] = json!(rfc3339_now());
    let object = store.commit(&state.events, "ADDED", &ns, &name, object);
    Ok((StatusCode::CREATED, Json(object)).into_response())
}

async fn read(State(state): State<ApiState>, Path((ns, name)): Path<(String, String)>) -> Reply {
    let store = state.store.lock();
    let object = store
        .objects
        .get(&(ns, name.clone()))
        .ok_or_else(|| not_found(&name))?;
    Ok(Json(object.clone()).into_response())
}

async fn patch(
    State(state): State<ApiState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let patch = patch_body(&headers, &body)?;
    let apply = content_type(&headers).starts_with("application/apply-patch");
    let exists = state
        .store
        .lock()
        .objects
        .contains_key(&(ns.clone(), name.clone()));
    if !exists {
        if !apply {
            return Err(not_found(&name));
        }
        return create(State(state), Path(ns), body).await;
    }
    let mut store = state.store.lock();
    let current = store
        .objects
        .get(&(ns.clone(), name.clone()))
        .cloned()
        .ok_or_else(|| not_found(&name))?;
    let mut next = current.clone();
    merge(&mut next, &patch);
    // The main resource ignores status; the spec decides the generation.
    next["status"] = current["status"].clone();
    if let Some(object) = next
        .as_object_mut()
        .filter(|o| o.get("status").is_some_and(Value::is_null))
    {
        object.remove("status");
    }
    keep_identity(&mut next, &current);
    if next["spec"] != current["spec"] {
        next["metadata"]["generation"] =
            json!(current["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
    }
    let object = store.commit(&state.events, "MODIFIED", &ns, &name, next);
    Ok(Json(object).into_response())
}

async fn replace(
    State(state): State<ApiState>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Reply {
    let mut next = parse_body(&body)?;
    let mut store = state.store.lock();
    let current = store
        .objects
        .get(&(ns.clone(), name.clone()))
        .cloned()
        .ok_or_else(|| not_found(&name))?;
    next["status"] = current["status"].clone();
    keep_identity(&mut next, &current);
    if next["spec"] != current["spec"] {
        next["metadata"]["generation"] =
            json!(current["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
    }
    let object = store.commit(&state.events, "MODIFIED", &ns, &name, next);
    Ok(Json(object).into_response())
}

async fn patch_status(
    State(state): State<ApiState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let patch = patch_body(&headers, &body)?;
    let mut store = state.store.lock();
    let current = store
        .objects
        .get(&(ns.clone(), name.clone()))
        .cloned()
        .ok_or_else(|| not_found(&name))?;
    let mut patched = current.clone();
    merge(&mut patched, &patch);
    // Only the status changes through the subresource.
    let mut next = current;
    next["status"] = patched["status"].clone();
    let object = store.commit(&state.events, "MODIFIED", &ns, &name, next);
    Ok(Json(object).into_response())
}

async fn replace_status(
    State(state): State<ApiState>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Reply {
    let body = parse_body(&body)?;
    let mut store = state.store.lock();
    let mut next = store
        .objects
        .get(&(ns.clone(), name.clone()))
        .cloned()
        .ok_or_else(|| not_found(&name))?;
    next["status"] = body["status"].clone();
    let object = store.commit(&state.events, "MODIFIED", &ns, &name, next);
    Ok(Json(object).into_response())
}

async fn delete(State(state): State<ApiState>, Path((ns, name)): Path<(String, String)>) -> Reply {
    let mut store = state.store.lock();
    let object = store
        .objects
        .remove(&(ns.clone(), name.clone()))
        .ok_or_else(|| not_found(&name))?;
    store.resource_version += 1;
    let mut object = object;
    object["metadata"]["resourceVersion"] = json!(store.resource_version.to_string());
    let event = WatchEvent {
        resource_version: store.resource_version,
        kind: "DELETED",
        namespace: ns,
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
        kind: &'static str,
        namespace: &str,
        name: &str,
        mut object: Value,
    ) -> Value {
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        self.objects
            .insert((namespace.to_owned(), name.to_owned()), object.clone());
        let event = WatchEvent {
            resource_version: self.resource_version,
            kind,
            namespace: namespace.to_owned(),
            object: object.clone(),
        };
        self.history.push(event.clone());
        let _ = events.send(event);
        object
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

fn not_found(name: &str) -> ApiError {
    status_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{PLURAL}.{GROUP} \"{name}\" not found"),
    )
}

fn status_body(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason,
        "details": { "group": GROUP, "kind": PLURAL }, "code": code.as_u16()
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
