//! Writes: create, replace, merge and apply patches, `/status`, delete. A
//! CRD is reviewed ([`super::crd`]) and a custom resource admitted against
//! its CRD ([`super::schema`]) before anything is stored.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine;
use serde_json::{Value, json};

use super::{
    ApiError, ApiState, FieldValidation, Kind, Params, Reply, Target, WatchEvent, WriteQuery, crd,
    event, schema, status_error, table::rfc3339_now, with_warnings,
};

/// A stored object, how it was stored, and the warnings for the client.
pub(super) struct Written {
    code: StatusCode,
    object: Value,
    warnings: Vec<String>,
}

pub(super) async fn create(
    State(state): State<ApiState>,
    Path(params): Params,
    Query(query): Query<WriteQuery>,
    body: Bytes,
) -> Reply {
    let target = Target::from(&state, &params)?;
    if target.kind.namespaced && target.namespace.is_none() {
        return Err(target.not_found());
    }
    let object = parse_body(&body)?;
    Ok(insert(&state, &target, object, FieldValidation::from(&query))?.into_response())
}

/// Stores a new object in `target`'s namespace (or cluster-wide).
pub(super) fn insert(
    state: &ApiState,
    target: &Target,
    mut object: Value,
    validation: FieldValidation,
) -> Result<Written, ApiError> {
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
            &format!("{} \"{name}\" already exists", kind.qualified()),
        ));
    }
    if kind.status {
        if let Some(object) = object.as_object_mut() {
            object.remove("status");
        }
        object["metadata"]["generation"] = json!(1);
    }
    object["metadata"]["name"] = json!(name);
    if kind.namespaced {
        object["metadata"]["namespace"] = json!(ns);
    }
    let warnings = admit(target, &mut object, None, validation)?;
    fold_string_data(kind, &mut object);
    let metadata = &mut object["metadata"];
    metadata["uid"] = json!(format!(
        "00000000-0000-0000-0000-{:012}",
        store.resource_version + 1
    ));
    metadata["creationTimestamp"] = json!(rfc3339_now());
    let object = store.commit(&state.events, kind.plural, "ADDED", &ns, &name, object);
    Ok(Written {
        code: StatusCode::CREATED,
        object,
        warnings,
    })
}

/// What the server checks before storing `object` of `target`'s kind
/// (`current` on an update): a CRD is reviewed (and, accepted, gets the
/// status a real server gives it), an `Event` validated, a custom resource
/// is defaulted, pruned and validated against its CRD. Returns the warnings.
fn admit(
    target: &Target,
    object: &mut Value,
    current: Option<&Value>,
    validation: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    let kind = target.kind;
    let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
    if kind.plural == "customresourcedefinitions" {
        let review = match current {
            None => crd::review(object),
            Some(current) => crd::review_update(object, current),
        };
        if !review.errors.is_empty() {
            return Err(ApiError::invalid(kind, &name, &review.errors));
        }
        if current.is_none() {
            object["status"] = established(object);
        }
        return Ok(review.warnings);
    }
    if kind.plural == "events" {
        let namespace = target.namespace.as_deref().unwrap_or("");
        let errors = match current {
            None => event::validate_create(object, namespace),
            Some(current) => event::validate_update(object, current, namespace),
        };
        if !errors.is_empty() {
            return Err(ApiError::invalid(kind, &name, &errors));
        }
        return Ok(Vec::new());
    }
    if !kind.custom {
        return Ok(Vec::new());
    }
    let admission = schema::admit(target.schema(), object, current);
    let warnings = validation.judge(kind, &admission.unknown_fields)?;
    if !admission.errors.is_empty() {
        return Err(ApiError::invalid(kind, &name, &admission.errors));
    }
    Ok(warnings)
}

/// The status the real server's controllers give an accepted CRD.
fn established(crd: &Value) -> Value {
    let names = &crd["spec"]["names"];
    let kind = names["kind"].as_str().unwrap_or("");
    let mut accepted = names.clone();
    if accepted["singular"].is_null() {
        accepted["singular"] = json!(kind.to_lowercase());
    }
    if accepted["listKind"].is_null() {
        accepted["listKind"] = json!(format!("{kind}List"));
    }
    let stored: Vec<&Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == true)
        .map(|v| &v["name"])
        .collect();
    let now = rfc3339_now();
    json!({
        "acceptedNames": accepted,
        "conditions": [
            { "type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
              "message": "no conflicts found", "lastTransitionTime": now },
            { "type": "Established", "status": "True", "reason": "InitialNamesAccepted",
              "message": "the initial names have been accepted", "lastTransitionTime": now },
        ],
        "storedVersions": stored,
    })
}

pub(super) async fn patch(
    State(state): State<ApiState>,
    Path(params): Params,
    Query(query): Query<WriteQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let target = Target::from(&state, &params)?;
    let validation = FieldValidation::from(&query);
    let patch = patch_body(&headers, &body)?;
    let apply = content_type(&headers).starts_with("application/apply-patch");
    let exists = state.store.lock().objects.contains_key(&target.key());
    if !exists {
        if !apply {
            return Err(target.not_found());
        }
        return Ok(insert(&state, &target, patch, validation)?.into_response());
    }
    let mut next = current(&state, &target)?;
    merge(&mut next, &patch);
    Ok(update(&state, &target, next, &patch, validation)?.into_response())
}

pub(super) async fn replace(
    State(state): State<ApiState>,
    Path(params): Params,
    Query(query): Query<WriteQuery>,
    body: Bytes,
) -> Reply {
    let target = Target::from(&state, &params)?;
    let next = parse_body(&body)?;
    let validation = FieldValidation::from(&query);
    Ok(update(&state, &target, next.clone(), &next, validation)?.into_response())
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
fn update(
    state: &ApiState,
    target: &Target,
    mut next: Value,
    request: &Value,
    validation: FieldValidation,
) -> Result<Written, ApiError> {
    let kind = target.kind;
    let mut store = state.store.lock();
    let key = target.key();
    let current = store
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| target.not_found())?;
    precondition(kind, &key.2, request, &current)?;
    keep_identity(&mut next, &current);
    if kind.status {
        next["status"] = current["status"].clone();
        if let Some(object) = next
            .as_object_mut()
            .filter(|o| o.get("status").is_some_and(Value::is_null))
        {
            object.remove("status");
        }
    }
    let warnings = admit(target, &mut next, Some(&current), validation)?;
    if kind.status {
        let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
        next["metadata"]["generation"] =
            json!(generation + i64::from(next["spec"] != current["spec"]));
    }
    fold_string_data(kind, &mut next);
    let object = store.commit(&state.events, kind.plural, "MODIFIED", &key.1, &key.2, next);
    Ok(Written {
        code: StatusCode::OK,
        object,
        warnings,
    })
}

pub(super) async fn patch_status(
    State(state): State<ApiState>,
    Path(params): Params,
    Query(query): Query<WriteQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let target = Target::from(&state, &params)?;
    let patch = patch_body(&headers, &body)?;
    let mut patched = current(&state, &target)?;
    merge(&mut patched, &patch);
    let validation = FieldValidation::from(&query);
    let status = patched["status"].clone();
    Ok(write_status(&state, &target, &patch, status, validation)?.into_response())
}

pub(super) async fn replace_status(
    State(state): State<ApiState>,
    Path(params): Params,
    Query(query): Query<WriteQuery>,
    body: Bytes,
) -> Reply {
    let target = Target::from(&state, &params)?;
    let body = parse_body(&body)?;
    let validation = FieldValidation::from(&query);
    let status = body["status"].clone();
    Ok(write_status(&state, &target, &body, status, validation)?.into_response())
}

/// A `resourceVersion` in the request must be the stored one (optimistic
/// concurrency): `Conflict`, worded as `errors.NewConflict` with
/// `OptimisticLockErrorMsg`.
fn precondition(kind: &Kind, name: &str, request: &Value, current: &Value) -> Result<(), ApiError> {
    let expected = request["metadata"]["resourceVersion"].as_str();
    if expected.is_none() || expected == current["metadata"]["resourceVersion"].as_str() {
        return Ok(());
    }
    Err(status_error(
        StatusCode::CONFLICT,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            kind.qualified()
        ),
    ))
}

/// Only the status changes through the subresource; the whole object is
/// admitted again, so the status is pruned and validated too. A
/// `resourceVersion` in `request` is a precondition, as on any update.
fn write_status(
    state: &ApiState,
    target: &Target,
    request: &Value,
    status: Value,
    validation: FieldValidation,
) -> Result<Written, ApiError> {
    let mut store = state.store.lock();
    let key = target.key();
    let mut next = store
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| target.not_found())?;
    precondition(target.kind, &key.2, request, &next)?;
    let current = next.clone();
    next["status"] = status;
    let warnings = if target.kind.custom {
        admit(target, &mut next, Some(&current), validation)?
    } else {
        Vec::new()
    };
    let object = store.commit(
        &state.events,
        target.kind.plural,
        "MODIFIED",
        &key.1,
        &key.2,
        next,
    );
    Ok(Written {
        code: StatusCode::OK,
        object,
        warnings,
    })
}

pub(super) async fn delete(State(state): State<ApiState>, Path(params): Params) -> Reply {
    let target = Target::from(&state, &params)?;
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

// === impl Written ===

impl IntoResponse for Written {
    fn into_response(self) -> Response {
        with_warnings(
            (self.code, Json(self.object)).into_response(),
            &self.warnings,
        )
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
        if !current["metadata"][key].is_null() {
            next["metadata"][key] = current["metadata"][key].clone();
        }
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
            "the body of the request was in an unknown format ({kind}); the stand-in accepts merge and apply patches (use `kubectl apply --server-side`)"
        ),
    ))
}

/// JSON, or YAML (apply patches may be either).
pub(super) fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
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
