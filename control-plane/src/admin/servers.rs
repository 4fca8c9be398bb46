//! `/servers`: the registry's McpServers for scripts and the console.
//! `GET` lists every accepted server with where it came from and how each
//! replica reports it, and the registry's problems (what was refused, the
//! field and why). In directory mode `POST`, `PUT /{name}`
//! and `DELETE /{name}` add, replace and remove servers as files in the
//! registry directory (`<name>.yaml`, written to a temporary file and
//! renamed into place, so the watcher never reads half a file); the
//! watcher then pushes them like any edit. A document is validated as the
//! watcher would before anything is written (422 naming the field), and a
//! server defined in a file of another name is left to that file (409).
//! In a cluster the API server is the source of truth: writes get 409
//! pointing at `kubectl`.

use std::{
    collections::BTreeMap,
    path::{Path as FsPath, PathBuf},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use serde_json::{Value, json};
use tracing::info;

use super::AdminState;
use crate::registry::{
    Document, ResourceError, UnknownFields, directory::without_references, parse_document,
};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServerEntry {
    name: String,
    namespace: String,
    enabled: bool,
    transport: &'static str,
    source: String,
    /// What each replica reports of it, by replica id.
    replicas: BTreeMap<String, Value>,
}

/// A refusal: its status and JSON body.
struct ApiError {
    status: StatusCode,
    body: Value,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

type Answer = Result<Response, ApiError>;

/// The read routes and the write routes, for their own gates.
pub fn routers() -> (Router<AdminState>, Router<AdminState>) {
    let read = Router::new()
        .route("/servers", get(list))
        .route("/openapi.json", get(|| async { Json(openapi()) }));
    let write = Router::new()
        .route("/servers", axum::routing::post(create))
        .route("/servers/{name}", get(document).put(replace).delete(remove));
    (read, write)
}

/// The OpenAPI 3.1 document of `/servers`, the request schema generated
/// from the `McpServer` type the handlers validate against.
pub fn openapi() -> Value {
    let mut generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|settings| settings.definitions_path = "/components/schemas".into())
        .into_generator();
    // A CRD's root schema comes inline: it gets a name of its own here.
    let inline = generator.subschema_for::<crate::resource::McpServer>();
    let mut schemas = generator.take_definitions(true);
    schemas.insert("McpServer".into(), inline.to_value());
    let server = json!({ "$ref": "#/components/schemas/McpServer" });
    schemas.insert(
        "Problem".into(),
        json!({ "type": "object", "required": ["error"], "properties": {
            "error": { "type": "string" },
            "field": { "type": ["string", "null"], "description": "The field that is wrong" } } }),
    );
    let problem = |description: &str| {
        json!({ "description": description, "content": { "application/json": {
            "schema": { "$ref": "#/components/schemas/Problem" } } } })
    };
    let written = json!({ "type": "object", "required": ["name", "file"], "properties": {
        "name": { "type": "string" }, "file": { "type": "string" } } });
    let body = json!({ "required": true, "content": {
        "application/json": { "schema": server.clone() },
        "application/yaml": { "schema": server } } });
    let name = json!([{ "name": "name", "in": "path", "required": true,
        "schema": { "type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63 } }]);
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Switchboard control plane /servers API", "version": env!("CARGO_PKG_VERSION") },
        "security": [{ "bearer": [] }],
        "paths": {
            "/servers": {
                "get": { "summary": "Every accepted McpServer and the registry's problems",
                    "responses": { "200": { "description": "The servers" }, "401": problem("The admin token is needed") } },
                "post": { "summary": "Adds a server (directory mode)", "requestBody": body.clone(),
                    "responses": {
                        "201": { "description": "Written", "content": { "application/json": { "schema": written.clone() } } },
                        "401": problem("The admin token is needed"),
                        "403": problem("The control plane takes no writes without an admin token"),
                        "409": problem("The server exists, or the registry is a cluster's"),
                        "422": problem("The document is not a valid McpServer"),
                    } },
            },
            "/servers/{name}": {
                "put": { "summary": "Replaces a server (directory mode)", "parameters": name.clone(), "requestBody": body,
                    "responses": {
                        "200": { "description": "Written", "content": { "application/json": { "schema": written } } },
                        "400": problem("Not a server's name"),
                        "401": problem("The admin token is needed"),
                        "409": problem("Defined in another file, or the registry is a cluster's"),
                        "422": problem("The document is not a valid McpServer, or names another"),
                    } },
                "delete": { "summary": "Removes a server (directory mode)", "parameters": name,
                    "responses": {
                        "204": { "description": "Removed" },
                        "400": problem("Not a server's name"),
                        "401": problem("The admin token is needed"),
                        "404": problem("No such server"),
                        "409": problem("Defined in another file, or the registry is a cluster's"),
                    } },
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
        },
    })
}

async fn list(State(state): State<AdminState>) -> Json<Value> {
    let replicas = state
        .peers
        .merged(state.replicas.snapshot(), state.snapshots.borrow().version);
    let registry = state.registry.borrow().clone();
    let health = |name: &str| -> BTreeMap<String, Value> {
        replicas
            .iter()
            .filter_map(|(id, replica)| {
                let server = replica.servers.iter().find(|s| s.name == name)?;
                Some((id.clone(), serde_json::to_value(server).unwrap_or_default()))
            })
            .collect()
    };
    let servers: Vec<ServerEntry> = registry
        .servers
        .values()
        .map(|server| ServerEntry {
            name: server.name.clone(),
            namespace: server.namespace.clone(),
            enabled: server.enabled,
            transport: server.transport.kind(),
            source: registry
                .origins
                .get(&server.name)
                .cloned()
                .unwrap_or_default(),
            replicas: health(&server.name),
        })
        .collect();
    // Problems are per document, of any kind: all of them, as /status has.
    Json(json!({ "servers": servers, "issues": registry.issues }))
}

/// `POST /servers`: a new server, as `<name>.yaml`.
async fn create(State(state): State<AdminState>, body: Bytes) -> Answer {
    let dir = writable(&state)?;
    let name = validate(&body)?;
    free_prefix(&state, &name, &body)?;
    let _writing = WRITES.lock();
    let path = file_of(&dir, &name);
    let known = state.registry.borrow().origins.get(&name).cloned();
    if known.is_some() || path.exists() {
        let source = known.unwrap_or_else(|| path.display().to_string());
        return Err(conflict(format!(
            "McpServer `{name}` exists ({source}): PUT /servers/{name} replaces it"
        )));
    }
    write(&path, &body).map_err(|err| unwritable(&path, &err))?;
    info!(server = %name, file = %path.display(), "added a server through the API");
    Ok(created(StatusCode::CREATED, &name, &path))
}

/// `GET /servers/{name}`: the server's file as written, for editing. With
/// the writes' gate: a file may hold values (`env`, headers) that only
/// those who may change it should read.
async fn document(State(state): State<AdminState>, Path(name): Path<String>) -> Answer {
    let dir = writable(&state)?;
    named(&name)?;
    let path = file_of(&dir, &name);
    own_file(&state, &name, &path)?;
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(([(http::header::CONTENT_TYPE, "application/yaml")], text).into_response()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(problem(
            StatusCode::NOT_FOUND,
            json!({ "error": format!("no McpServer `{name}` in the registry directory") }),
        )),
        Err(error) => Err(problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": format!("cannot read {}: {error}", path.display()) }),
        )),
    }
}

/// `PUT /servers/{name}`: the server's file, replaced (or made).
async fn replace(State(state): State<AdminState>, Path(name): Path<String>, body: Bytes) -> Answer {
    let dir = writable(&state)?;
    named(&name)?;
    let written = validate(&body)?;
    if written != name {
        return Err(unprocessable(
            Some("metadata.name".into()),
            format!("the document names `{written}`, the path `{name}`"),
        ));
    }
    free_prefix(&state, &name, &body)?;
    let _writing = WRITES.lock();
    let path = file_of(&dir, &name);
    own_file(&state, &name, &path)?;
    write(&path, &body).map_err(|err| unwritable(&path, &err))?;
    info!(server = %name, file = %path.display(), "replaced a server through the API");
    Ok(created(StatusCode::OK, &name, &path))
}

/// `DELETE /servers/{name}`: its file, removed.
async fn remove(State(state): State<AdminState>, Path(name): Path<String>) -> Answer {
    let dir = writable(&state)?;
    named(&name)?;
    let _writing = WRITES.lock();
    let path = file_of(&dir, &name);
    own_file(&state, &name, &path)?;
    if !path.exists() {
        return Err(problem(
            StatusCode::NOT_FOUND,
            json!({ "error": format!("no McpServer `{name}` in the registry directory") }),
        ));
    }
    std::fs::remove_file(&path).map_err(|err| unwritable(&path, &err))?;
    info!(server = %name, file = %path.display(), "removed a server through the API");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// One write at a time: a check and the write it allows are one step.
static WRITES: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// The registry directory, unless the registry is a cluster's.
fn writable(state: &AdminState) -> Result<PathBuf, ApiError> {
    state.registry_dir.clone().ok_or_else(|| {
        conflict(
            "the registry is the cluster's McpServer resources: change them with `kubectl apply -f` and `kubectl delete mcps`"
                .into(),
        )
    })
}

/// A path's name must be a server's: a DNS label, so never a path.
fn named(name: &str) -> Result<(), ApiError> {
    crate::resource::check_dns_label(name)
        .map_err(|reason| problem(StatusCode::BAD_REQUEST, json!({ "error": reason })))
}

/// `name`, when it is defined at all, must be defined by `path`, and
/// `path`, when it exists, must hold that server alone: the API never
/// touches a file with anything else in it (clients, policies, other
/// servers).
fn own_file(state: &AdminState, name: &str, path: &FsPath) -> Result<(), ApiError> {
    if let Some(source) = state.registry.borrow().origins.get(name)
        && FsPath::new(source) != path
    {
        return Err(conflict(format!(
            "McpServer `{name}` is defined in {source}: edit that file"
        )));
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(unwritable(path, &err)),
    };
    let documents: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|document| serde::Deserialize::deserialize(document).ok())
        .filter(|value: &serde_yaml::Value| !value.is_null())
        .collect();
    let alone = matches!(&documents[..], [document]
        if document.get("kind").and_then(|k| k.as_str()).is_none_or(|k| k == "McpServer")
            && document["metadata"]["name"].as_str() == Some(name));
    if alone {
        Ok(())
    } else {
        Err(conflict(format!(
            "{} holds more than McpServer `{name}`: edit it by hand",
            path.display()
        )))
    }
}

/// No other enabled server may hold the prefix `name`'s document asks for:
/// the registry would keep the first and drop the other.
fn free_prefix(state: &AdminState, name: &str, body: &[u8]) -> Result<(), ApiError> {
    let Ok(value) = serde_yaml::from_slice::<serde_yaml::Value>(body) else {
        return Ok(());
    };
    let Ok(Document::Server(server)) = parse_document(value, UnknownFields::Refuse) else {
        return Ok(());
    };
    let registry = state.registry.borrow();
    match registry
        .enabled()
        .find(|other| other.name != name && other.namespace == server.namespace)
    {
        Some(other) if server.enabled => Err(conflict(format!(
            "the prefix `{}` is McpServer `{}`'s: give spec.namespace another",
            server.namespace, other.name
        ))),
        _ => Ok(()),
    }
}

/// Parses and validates a document as the directory watcher will; its
/// server's name.
fn validate(body: &[u8]) -> Result<String, ApiError> {
    let value: serde_yaml::Value = serde_yaml::from_slice(body)
        .map_err(|err| unprocessable(None, format!("not a YAML or JSON document: {err}")))?;
    let refused = |(_, field, message): ResourceError| unprocessable(field, message);
    match parse_document(value, UnknownFields::Refuse).map_err(refused)? {
        Document::Server(server) => {
            let server = without_references(*server).map_err(refused)?;
            Ok(server.name)
        }
        _ => Err(unprocessable(
            Some("kind".into()),
            "this API takes McpServer documents".into(),
        )),
    }
}

fn file_of(dir: &FsPath, name: &str) -> PathBuf {
    dir.join(format!("{name}.yaml"))
}

/// Writes `body` to `path` whole: a temporary file (which the watcher
/// ignores) renamed into place.
fn write(path: &FsPath, body: &[u8]) -> std::io::Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique, so a crashed write never leaves a name the next one trips on.
    let temporary = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    std::fs::write(&temporary, body)?;
    std::fs::rename(&temporary, path)
}

fn created(status: StatusCode, name: &str, path: &FsPath) -> Response {
    let body = json!({ "name": name, "file": path.display().to_string() });
    (status, Json(body)).into_response()
}

fn unprocessable(field: Option<String>, message: String) -> ApiError {
    problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({ "error": message, "field": field }),
    )
}

fn conflict(message: String) -> ApiError {
    problem(StatusCode::CONFLICT, json!({ "error": message }))
}

fn unwritable(path: &FsPath, err: &std::io::Error) -> ApiError {
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({ "error": format!("cannot write {}: {err}", path.display()) }),
    )
}

fn problem(status: StatusCode, body: Value) -> ApiError {
    ApiError { status, body }
}
