//! ServiceAccount tokens, as the real server issues and reviews them
//! (k8s.io/kubernetes `pkg/registry/core/serviceaccount/storage/token.go`,
//! `pkg/registry/authentication/tokenreview`, `pkg/serviceaccount`):
//!
//! - `TokenRequest` (`POST .../serviceaccounts/<name>/token`, what the
//!   kubelet does for a projected token volume and `kubectl create token`
//!   does): the ServiceAccount must exist, `expirationSeconds` is at least
//!   ten minutes (default an hour) and below 2^32 seconds, the bound pod
//!   must exist with the UID given, if any, and run as that account. The token is JWT-shaped; the stand-in remembers
//!   what it issued instead of signing, so a token it did not issue, or
//!   one altered in any byte, is unknown.
//! - `TokenReview` (`POST /apis/authentication.k8s.io/v1/tokenreviews`):
//!   authenticated only for a token it issued that has not expired, whose
//!   audiences meet the review's (status carries the intersection), whose
//!   ServiceAccount and bound pod still exist with the UIDs they had; the
//!   user is `system:serviceaccount:<ns>:<name>` with the ServiceAccount
//!   groups and the bound pod's name and UID in `extra`. A refusal is
//!   `authenticated: false` with the reason in `status.error`, never an
//!   HTTP error; an empty `spec.token` is a 400.
//!
//! RBAC denials for both go through the fault layer like any request
//! (`create` on `serviceaccounts/token` and on `tokenreviews`).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::IntoResponse,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::{ApiError, ApiState, Reply, status_error, table::rfc3339, write::parse_body};

/// The audiences a token gets when its request names none (the real
/// server's `--api-audiences`, defaulting to its issuer).
const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
const MIN_EXPIRATION: u64 = 600;
const MAX_EXPIRATION: u64 = u32::MAX as u64;
const DEFAULT_EXPIRATION: u64 = 3600;

/// Tokens issued, by value.
#[derive(Clone, Default)]
pub(super) struct Issued {
    tokens: Arc<Mutex<HashMap<String, Grant>>>,
}

/// What one token was issued for.
#[derive(Clone)]
struct Grant {
    namespace: String,
    account: String,
    account_uid: String,
    /// The pod it is bound to: name and UID.
    pod: Option<(String, String)>,
    audiences: Vec<String>,
    /// Unix seconds.
    expires: u64,
    id: String,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn uid_of(object: &Value) -> String {
    object["metadata"]["uid"].as_str().unwrap_or("").to_owned()
}

/// `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`.
pub(super) async fn request(
    State(state): State<ApiState>,
    Path((namespace, account)): Path<(String, String)>,
    body: Bytes,
) -> Reply {
    let mut request = match body.strip_prefix(PROTOBUF_MAGIC) {
        Some(envelope) => from_protobuf(envelope)?,
        None => parse_body(&body)?,
    };
    if request["apiVersion"] != "authentication.k8s.io/v1" || request["kind"] != "TokenRequest" {
        return Err(status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf",
        ));
    }
    let invalid = |field: &str, value: &Value, why: &str| {
        status_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            &format!(
                "TokenRequest.authentication.k8s.io \"{account}\" is invalid: {field}: Invalid value: {value}: {why}"
            ),
        )
    };
    let spec = &mut request["spec"];
    let expiration = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_EXPIRATION,
        value => match value.as_u64() {
            Some(n) if n < MIN_EXPIRATION => {
                return Err(invalid(
                    "spec.expirationSeconds",
                    value,
                    "may not specify a duration less than 10 minutes",
                ));
            }
            Some(n) if n > MAX_EXPIRATION => {
                return Err(invalid(
                    "spec.expirationSeconds",
                    value,
                    "may not specify a duration larger than 2^32 seconds",
                ));
            }
            Some(n) => n,
            None => {
                return Err(invalid("spec.expirationSeconds", value, "must be a number"));
            }
        },
    };
    let audiences: Vec<String> = match spec["audiences"].as_array() {
        Some(list) if !list.is_empty() => list
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        _ => vec![API_AUDIENCE.to_owned()],
    };
    let store = state.store.lock();
    let find = |plural: &'static str, name: &str| {
        store
            .objects
            .get(&(plural, namespace.clone(), name.to_owned()))
            .cloned()
    };
    let service_account = find("serviceaccounts", &account).ok_or_else(|| {
        status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("serviceaccounts \"{account}\" not found"),
        )
    })?;
    let pod = match &spec["boundObjectRef"] {
        Value::Null => None,
        bound => {
            let kind = bound["kind"].as_str().unwrap_or("");
            let api_version = bound["apiVersion"].as_str().unwrap_or("");
            // Core-group Pods (and Secrets and Nodes, which nothing here
            // binds to) only.
            if kind != "Pod" || api_version.contains('/') {
                return Err(status_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("cannot bind token to object of type {api_version}, Kind={kind}"),
                ));
            }
            let name = bound["name"].as_str().unwrap_or("");
            let pod = find("pods", name).ok_or_else(|| {
                status_error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("pods \"{name}\" not found"),
                )
            })?;
            let runs_as = pod["spec"]["serviceAccountName"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or("default");
            if runs_as != account {
                return Err(status_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!(
                        "cannot bind token for serviceaccount \"{account}\" to pod running with different serviceaccount name."
                    ),
                ));
            }
            let uid = uid_of(&pod);
            if let Some(asked) = bound["uid"].as_str().filter(|u| !u.is_empty())
                && asked != uid
            {
                return Err(status_error(
                    StatusCode::CONFLICT,
                    "Conflict",
                    &format!(
                        "the UID in the bound object reference ({asked}) does not match the UID in record. The object might have been deleted and then recreated"
                    ),
                ));
            }
            Some((name.to_owned(), uid))
        }
    };
    drop(store);

    let issued_at = now();
    let grant = Grant {
        namespace: namespace.clone(),
        account: account.clone(),
        account_uid: uid_of(&service_account),
        pod: pod.clone(),
        audiences: audiences.clone(),
        expires: issued_at + expiration,
        id: proto::auth::Token::generate()
            .expect("random bytes")
            .expose()
            .chars()
            .take(32)
            .collect(),
    };
    let token = jwt(&grant, issued_at);
    state
        .tokens
        .tokens
        .lock()
        .insert(token.clone(), grant.clone());

    spec["audiences"] = json!(audiences);
    spec["expirationSeconds"] = json!(expiration);
    if let Some((_, uid)) = &pod {
        spec["boundObjectRef"]["uid"] = json!(uid);
        spec["boundObjectRef"]["apiVersion"] = json!("v1");
    }
    request["metadata"] = json!({
        "name": account, "namespace": namespace, "creationTimestamp": rfc3339(issued_at)
    });
    request["status"] = json!({ "token": token, "expirationTimestamp": rfc3339(grant.expires) });
    Ok((StatusCode::CREATED, Json(request)).into_response())
}

/// How a Kubernetes protobuf body starts (kubectl's typed clients send
/// built-in kinds, a `TokenRequest` among them, as protobuf).
const PROTOBUF_MAGIC: &[u8] = b"k8s\0";

/// `runtime.Unknown`, the envelope of a protobuf body.
#[derive(prost::Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", tag = "2")]
    raw: Vec<u8>,
}

#[derive(prost::Message)]
struct TypeMeta {
    #[prost(string, tag = "1")]
    api_version: String,
    #[prost(string, tag = "2")]
    kind: String,
}

/// `authentication.k8s.io/v1` `TokenRequest`, as `generated.proto` numbers
/// its fields (metadata, 1, is not read: the path names the account).
#[derive(prost::Message)]
struct TokenRequestMessage {
    #[prost(message, optional, tag = "2")]
    spec: Option<TokenRequestSpec>,
}

#[derive(prost::Message)]
struct TokenRequestSpec {
    #[prost(string, repeated, tag = "1")]
    audiences: Vec<String>,
    #[prost(message, optional, tag = "3")]
    bound_object_ref: Option<BoundObjectReference>,
    #[prost(int64, optional, tag = "4")]
    expiration_seconds: Option<i64>,
}

#[derive(prost::Message)]
struct BoundObjectReference {
    #[prost(string, tag = "1")]
    kind: String,
    #[prost(string, tag = "2")]
    api_version: String,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    uid: String,
}

/// A protobuf `TokenRequest` as the JSON one it stands for.
fn from_protobuf(envelope: &[u8]) -> Result<Value, ApiError> {
    use prost::Message;
    let undecodable = |e: prost::DecodeError| {
        status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("cannot decode the protobuf body: {e}"),
        )
    };
    let unknown = Unknown::decode(envelope).map_err(undecodable)?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    if type_meta.kind != "TokenRequest" {
        return Err(status_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "the stand-in decodes protobuf only for TokenRequest",
        ));
    }
    let message = TokenRequestMessage::decode(unknown.raw.as_slice()).map_err(undecodable)?;
    let spec = message.spec.unwrap_or_default();
    let mut json = json!({
        "apiVersion": type_meta.api_version, "kind": type_meta.kind,
        "spec": { "audiences": spec.audiences },
    });
    if let Some(seconds) = spec.expiration_seconds {
        json["spec"]["expirationSeconds"] = json!(seconds);
    }
    if let Some(bound) = spec.bound_object_ref {
        json["spec"]["boundObjectRef"] = json!({
            "kind": bound.kind, "apiVersion": bound.api_version,
            "name": bound.name, "uid": bound.uid,
        });
    }
    Ok(json)
}

/// A JWT-shaped token carrying the real one's claims; its last part is
/// random, not a signature.
fn jwt(grant: &Grant, issued_at: u64) -> String {
    let header = json!({ "alg": "RS256", "kid": "stand-in" });
    let mut kubernetes = json!({
        "namespace": grant.namespace,
        "serviceaccount": { "name": grant.account, "uid": grant.account_uid },
    });
    if let Some((name, uid)) = &grant.pod {
        kubernetes["pod"] = json!({ "name": name, "uid": uid });
    }
    let claims = json!({
        "aud": grant.audiences, "exp": grant.expires, "iat": issued_at, "nbf": issued_at,
        "iss": API_AUDIENCE, "jti": grant.id,
        "sub": format!("system:serviceaccount:{}:{}", grant.namespace, grant.account),
        "kubernetes.io": kubernetes,
    });
    let part = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
    let random = proto::auth::Token::generate().expect("random bytes");
    format!(
        "{}.{}.{}",
        part(&header),
        part(&claims),
        URL_SAFE_NO_PAD.encode(random.expose())
    )
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`.
pub(super) async fn review(State(state): State<ApiState>, body: Bytes) -> Reply {
    let mut review = parse_body(&body)?;
    if review["apiVersion"] != "authentication.k8s.io/v1" || review["kind"] != "TokenReview" {
        return Err(status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf",
        ));
    }
    let token = review["spec"]["token"].as_str().unwrap_or("").to_owned();
    if token.is_empty() {
        return Err(status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "token is required for TokenReview in authentication",
        ));
    }
    let wanted: Vec<String> = match review["spec"]["audiences"].as_array() {
        Some(list) if !list.is_empty() => list
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        _ => vec![API_AUDIENCE.to_owned()],
    };
    review["status"] = match authenticate(&state, &token, &wanted) {
        Ok(status) => status,
        Err(why) => json!({ "user": {}, "error": format!("[invalid bearer token, {why}]") }),
    };
    review["metadata"] = json!({ "creationTimestamp": null });
    Ok((StatusCode::CREATED, Json(review)).into_response())
}

/// The review's status for an authenticated token, or why it is not.
fn authenticate(state: &ApiState, token: &str, wanted: &[String]) -> Result<Value, String> {
    let grant = state
        .tokens
        .tokens
        .lock()
        .get(token)
        .cloned()
        .ok_or("square/go-jose: error in cryptographic primitive")?;
    if grant.expires <= now() {
        return Err("service account token has expired".into());
    }
    let audiences: Vec<&String> = grant
        .audiences
        .iter()
        .filter(|a| wanted.contains(a))
        .collect();
    if audiences.is_empty() {
        return Err(format!(
            "token audiences {:?} is invalid for the target audiences {wanted:?}",
            grant.audiences
        ));
    }
    let store = state.store.lock();
    let current = |plural: &'static str, name: &str| {
        store
            .objects
            .get(&(plural, grant.namespace.clone(), name.to_owned()))
            .map(uid_of)
    };
    match current("serviceaccounts", &grant.account) {
        Some(uid) if uid == grant.account_uid => {}
        Some(now) => {
            return Err(format!(
                "service account UID ({now}) does not match claim ({})",
                grant.account_uid
            ));
        }
        None => {
            return Err(format!(
                "service account {}/{} has been deleted",
                grant.namespace, grant.account
            ));
        }
    }
    let mut extra =
        json!({ "authentication.kubernetes.io/credential-id": [format!("JTI={}", grant.id)] });
    if let Some((pod, uid)) = &grant.pod {
        match current("pods", pod) {
            Some(now) if &now == uid => {}
            Some(now) => {
                return Err(format!("pod UID ({now}) does not match claim ({uid})"));
            }
            None => return Err(format!("pod \"{pod}\" not found")),
        }
        extra["authentication.kubernetes.io/pod-name"] = json!([pod]);
        extra["authentication.kubernetes.io/pod-uid"] = json!([uid]);
    }
    Ok(json!({
        "authenticated": true,
        "audiences": audiences,
        "user": {
            "username": format!("system:serviceaccount:{}:{}", grant.namespace, grant.account),
            "uid": grant.account_uid,
            "groups": [
                "system:serviceaccounts",
                format!("system:serviceaccounts:{}", grant.namespace),
                "system:authenticated",
            ],
            "extra": extra,
        },
    }))
}
