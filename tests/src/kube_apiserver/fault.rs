//! Faults a test switches on: throttling, server errors, RBAC denials, slow
//! and hung requests, each answered in the real API server's words
//! (k8s.io/apiserver `pkg/server/filters`, `pkg/endpoints/handlers/
//! responsewriters`, k8s.io/apimachinery `pkg/api/errors`).
//!
//! A fault applies to the requests it names (resource, namespace, object
//! name, verb), the first switched on first, as often as `times` allows.
//! Requests it does not strike are served as usual.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use parking_lot::Mutex;
use serde_json::json;

use super::{ApiError, status_error};

/// The user a denial names: the stand-in authenticates nobody, and a real
/// server with anonymous auth on calls such a client this.
const USER: &str = "system:anonymous";

/// What the server does to a request a fault strikes.
#[derive(Clone, Debug)]
enum Answer {
    /// An error status, worded as the real server words that code.
    Status(StatusCode),
    /// The RBAC authorizer's denial.
    Forbidden,
    /// No answer, ever: the request is held until the client gives up.
    Hang,
    /// The usual answer, after a delay.
    Slow(Duration),
}

/// A fault to switch on with [`super::KubeApiServer::fault`]. Without
/// [`Fault::on`], [`Fault::in_namespace`], [`Fault::named`] or
/// [`Fault::verb`] it strikes every request, discovery included.
#[derive(Clone, Debug)]
#[must_use]
pub struct Fault {
    answer: Answer,
    resource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    verbs: Vec<String>,
    times: Option<u32>,
    retry_after: Option<u64>,
    message: Option<String>,
}

/// A fault that is on: how often it struck, how many requests it holds,
/// and a way to switch it off. Dropping the handle leaves the fault on.
#[derive(Clone)]
pub struct FaultHandle {
    rule: Arc<Rule>,
    faults: Faults,
}

struct Rule {
    fault: Fault,
    hits: AtomicU32,
    /// Requests held by a hang (or a delay) right now.
    held: AtomicU32,
}

/// The faults that are on, in the order they were switched on.
#[derive(Clone, Default)]
pub(super) struct Faults {
    rules: Arc<Mutex<Vec<Arc<Rule>>>>,
}

/// What authorization sees of a request (`authorizer.Attributes`).
#[derive(Debug, PartialEq)]
struct Attributes {
    verb: &'static str,
    /// `None` for a non-resource request (`/version`, `/apis`).
    resource: Option<ResourceAttributes>,
    path: String,
}

#[derive(Debug, PartialEq)]
struct ResourceAttributes {
    group: String,
    /// The plural, with `/<subresource>` for a subresource.
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

/// Releases a held request's count however the request ends.
struct Held<'a>(&'a AtomicU32);

// === impl Fault ===

impl Fault {
    /// Answers with `code`, as the real server does for it: 429 as the
    /// priority-and-fairness filter throttles (plain text, `Retry-After`),
    /// 503 as a server shutting down, 500 as an etcd timeout, 504 as the
    /// request timeout filter; other codes as a `Status` with their reason.
    pub fn status(code: u16) -> Self {
        let code = StatusCode::from_u16(code).expect("an HTTP status code");
        Self::new(Answer::Status(code))
    }

    /// Denies as RBAC does (403 `Forbidden`, naming user, verb, resource,
    /// group and namespace).
    pub fn forbidden() -> Self {
        Self::new(Answer::Forbidden)
    }

    /// Never answers: the request stays open until the client drops it.
    pub fn hang() -> Self {
        Self::new(Answer::Hang)
    }

    /// Answers as usual, after `delay`.
    pub fn slow(delay: Duration) -> Self {
        Self::new(Answer::Slow(delay))
    }

    fn new(answer: Answer) -> Self {
        Self {
            answer,
            resource: None,
            namespace: None,
            name: None,
            verbs: Vec::new(),
            times: None,
            retry_after: None,
            message: None,
        }
    }

    /// Only requests for this resource: a plural (`secrets`), or a plural
    /// and subresource (`mcpservers/status`).
    pub fn on(mut self, resource: &str) -> Self {
        self.resource = Some(resource.to_owned());
        self
    }

    /// Only requests in this namespace (a cluster-wide list is not in it).
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_owned());
        self
    }

    /// Only requests for the object with this name.
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Only requests with this verb, as RBAC names them: `get`, `list`,
    /// `watch`, `create`, `update`, `patch`, `delete`. Repeatable.
    pub fn verb(mut self, verb: &str) -> Self {
        self.verbs.push(verb.to_owned());
        self
    }

    /// Strikes the first `n` matching requests only.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    /// The `Retry-After` header, in seconds (429 and 503 send 1 without it,
    /// as the real filters do).
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The message (for 500, the cause) in place of the default wording.
    pub fn message(mut self, message: &str) -> Self {
        self.message = Some(message.to_owned());
        self
    }

    fn strikes(&self, request: &Attributes) -> bool {
        let resource = request.resource.as_ref();
        let scoped = self.resource.is_some() || self.namespace.is_some() || self.name.is_some();
        if scoped && resource.is_none() {
            return false;
        }
        let wanted = |want: &Option<String>, have: Option<&String>| {
            want.as_ref().is_none_or(|want| Some(want) == have)
        };
        (self.verbs.is_empty() || self.verbs.iter().any(|v| v == request.verb))
            && wanted(&self.resource, resource.map(|r| &r.resource))
            && wanted(&self.namespace, resource.and_then(|r| r.namespace.as_ref()))
            && wanted(&self.name, resource.and_then(|r| r.name.as_ref()))
    }

    /// The answer to a request struck with `code`.
    fn status_answer(&self, code: StatusCode) -> Response {
        let retry_after = self.retry_after.unwrap_or(1).to_string();
        let mut response = match code.as_u16() {
            // `tooManyRequests` in filters/maxinflight.go, which priority
            // and fairness uses too: `http.Error`, so plain text.
            429 => (
                code,
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                    (
                        header::HeaderName::from_static("x-content-type-options"),
                        "nosniff",
                    ),
                ],
                format!(
                    "{}\n",
                    self.message
                        .as_deref()
                        .unwrap_or("Too many requests, please try again later.")
                ),
            )
                .into_response(),
            // `NewServiceUnavailable("apiserver is shutting down")` in
            // filters/waitgroup.go.
            503 => status_error(
                code,
                "ServiceUnavailable",
                self.message
                    .as_deref()
                    .unwrap_or("apiserver is shutting down"),
            )
            .into_response(),
            // `NewInternalError`: the cause as message and as the one cause.
            500 => {
                let cause = self
                    .message
                    .as_deref()
                    .unwrap_or("etcdserver: request timed out");
                let mut error = status_error(
                    code,
                    "InternalError",
                    &format!("Internal error occurred: {cause}"),
                );
                error.details = json!({ "causes": [{ "message": cause }] });
                error.into_response()
            }
            // `NewTimeoutError` from the request timeout filter.
            504 => {
                let mut error = status_error(
                    code,
                    "Timeout",
                    &format!(
                        "Timeout: {}",
                        self.message.as_deref().unwrap_or(
                            "request did not complete within requested timeout - context deadline exceeded"
                        )
                    ),
                );
                if let Some(seconds) = self.retry_after {
                    error.details = json!({ "retryAfterSeconds": seconds });
                }
                error.into_response()
            }
            _ => status_error(
                code,
                reason(code),
                self.message
                    .as_deref()
                    .unwrap_or(code.canonical_reason().unwrap_or("")),
            )
            .into_response(),
        };
        if (matches!(code.as_u16(), 429 | 503) || self.retry_after.is_some())
            && let Ok(value) = HeaderValue::from_str(&retry_after)
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

// === impl FaultHandle ===

impl FaultHandle {
    /// Requests this fault has struck so far.
    pub fn hits(&self) -> u32 {
        self.rule.hits.load(Ordering::SeqCst)
    }

    /// Requests it holds open right now (a hang, or a delay under way).
    pub fn held(&self) -> u32 {
        self.rule.held.load(Ordering::SeqCst)
    }

    /// Switches the fault off. Requests it holds stay held until their
    /// clients give up; new ones are served as usual.
    pub fn lift(&self) {
        self.faults
            .rules
            .lock()
            .retain(|rule| !Arc::ptr_eq(rule, &self.rule));
    }
}

// === impl Faults ===

impl Faults {
    pub(super) fn add(&self, fault: Fault) -> FaultHandle {
        let rule = Arc::new(Rule {
            fault,
            hits: AtomicU32::new(0),
            held: AtomicU32::new(0),
        });
        self.rules.lock().push(rule.clone());
        FaultHandle {
            rule,
            faults: self.clone(),
        }
    }

    pub(super) fn clear(&self) {
        self.rules.lock().clear();
    }

    /// The first fault that strikes `request` and has strikes left,
    /// counting the strike.
    fn strike(&self, request: &Attributes) -> Option<Arc<Rule>> {
        let rules = self.rules.lock();
        let rule = rules.iter().find(|rule| {
            rule.fault.strikes(request)
                && rule
                    .fault
                    .times
                    .is_none_or(|n| rule.hits.load(Ordering::SeqCst) < n)
        })?;
        rule.hits.fetch_add(1, Ordering::SeqCst);
        Some(rule.clone())
    }
}

/// The middleware in front of every route: a struck request gets the
/// fault's answer; any other is served.
pub(super) async fn intercept(
    State(faults): State<Faults>,
    request: Request,
    next: Next,
) -> Response {
    let attributes = Attributes::of(&request);
    let Some(rule) = faults.strike(&attributes) else {
        return next.run(request).await;
    };
    match &rule.fault.answer {
        Answer::Hang => {
            let _held = Held::new(&rule.held);
            std::future::pending::<Response>().await
        }
        Answer::Slow(delay) => {
            {
                let _held = Held::new(&rule.held);
                tokio::time::sleep(*delay).await;
            }
            next.run(request).await
        }
        Answer::Status(code) => rule.fault.status_answer(*code),
        Answer::Forbidden => forbidden(&attributes).into_response(),
    }
}

// === impl Attributes ===

impl Attributes {
    /// What `RequestInfoFactory.NewRequestInfo` makes of a request.
    fn of(request: &Request<Body>) -> Self {
        let path = request.uri().path().to_owned();
        let watch = request.uri().query().is_some_and(|q| {
            q.split('&')
                .any(|pair| pair == "watch=true" || pair == "watch=1")
        });
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match segments.as_slice() {
            ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest),
            ["apis", group, _version, rest @ ..] if !rest.is_empty() => (*group, rest),
            _ => {
                let verb = match *request.method() {
                    Method::GET | Method::HEAD => "get",
                    Method::POST => "post",
                    Method::PUT => "put",
                    Method::PATCH => "patch",
                    Method::DELETE => "delete",
                    _ => "options",
                };
                return Self {
                    verb,
                    resource: None,
                    path,
                };
            }
        };
        let (namespace, parts) = match rest {
            ["namespaces", namespace, parts @ ..] if !parts.is_empty() => {
                (Some((*namespace).to_owned()), parts)
            }
            parts => (None, parts),
        };
        let name = parts.get(1).map(|n| (*n).to_owned());
        let resource = match parts.get(2) {
            Some(sub) => format!("{}/{sub}", parts[0]),
            None => parts[0].to_owned(),
        };
        let verb = match (request.method().clone(), &name) {
            (Method::GET | Method::HEAD, Some(_)) => "get",
            (Method::GET | Method::HEAD, None) if watch => "watch",
            (Method::GET | Method::HEAD, None) => "list",
            (Method::POST, _) => "create",
            (Method::PUT, _) => "update",
            (Method::PATCH, _) => "patch",
            (Method::DELETE, Some(_)) => "delete",
            (Method::DELETE, None) => "deletecollection",
            _ => "options",
        };
        Self {
            verb,
            resource: Some(ResourceAttributes {
                group: group.to_owned(),
                resource,
                namespace,
                name,
            }),
            path,
        }
    }
}

// === impl Held ===

impl<'a> Held<'a> {
    fn new(count: &'a AtomicU32) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `responsewriters.Forbidden` with RBAC's empty reason: `forbiddenMessage`
/// inside `errors.NewForbidden`.
fn forbidden(request: &Attributes) -> ApiError {
    let Some(resource) = &request.resource else {
        return status_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "forbidden: User \"{USER}\" cannot {} path \"{}\"",
                request.verb, request.path
            ),
        );
    };
    let scope = match &resource.namespace {
        Some(namespace) => format!("in the namespace \"{namespace}\""),
        None => "at the cluster scope".to_owned(),
    };
    let because = format!(
        "User \"{USER}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
        request.verb, resource.resource, resource.group
    );
    // `GroupResource.String()`: the resource without its subresource.
    let plural = resource.resource.split('/').next().unwrap_or("");
    let qualified = if resource.group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{}", resource.group)
    };
    let message = match &resource.name {
        Some(name) => format!("{qualified} \"{name}\" is forbidden: {because}"),
        None => format!("{qualified} is forbidden: {because}"),
    };
    let mut error = status_error(StatusCode::FORBIDDEN, "Forbidden", &message);
    error.details = json!({ "group": resource.group, "kind": plural });
    if let Some(name) = &resource.name {
        error.details["name"] = json!(name);
    }
    error
}

/// `metav1.StatusReason` for a code without a wording of its own.
fn reason(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Expired",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    }
}
