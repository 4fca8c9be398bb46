//! Who may talk to the control plane. Two gates, one rule: with a token
//! configured, a caller must present it as `authorization: Bearer <token>`
//! (compared in constant time), or is refused and counted.
//!
//! - Replicas, on the gRPC port: every call (the config stream, span
//!   exports), before it can receive a snapshot (which holds resolved
//!   secrets), report health or NACKs that become status, or inject spans.
//! - Operators, on the HTTP API: `/status` and `/traces` (what servers run,
//!   their errors, every call's trace), and the console's data. The admin
//!   token or a console session started with a one-time code ([`Logins`]).
//!   Probes, `/metrics` and the console's static files stay open.
//!
//! `up` makes fresh tokens for both on every start: the replica token goes
//! to its gateway, the admin token to a file only its user can read.

use std::fmt;

use axum::{
    Json,
    extract::{Request as HttpRequest, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::counter::Counter,
};
pub use proto::auth::Token;
use serde_json::json;
use tonic::{Request, Status, service::Interceptor};
use tracing::debug;

use crate::admin::error_answer;
pub use logins::{Logins, SESSION_TTL};
use review::Verdict;
pub use review::{ServiceAccountRef, TokenReviewer};

mod logins;
mod review;

/// One surface's token check; cheap to clone.
#[derive(Clone, Debug)]
pub struct Gate {
    token: Option<Token>,
    /// Console sessions, admitted as the token is (operators' gate only).
    logins: Option<Logins>,
    refused: Counter,
    /// The counter's metric name and help.
    metric: (&'static str, &'static str),
}

// === impl Gate ===

impl Gate {
    /// The gRPC port's: `None` lets every caller in (loopback only, or
    /// when told to).
    pub fn replicas(token: Option<Token>) -> Self {
        Self {
            token,
            logins: None,
            refused: Counter::default(),
            metric: (
                "replica_auth_failures",
                "gRPC calls refused for a missing or wrong replica token",
            ),
        }
    }

    /// The HTTP API's.
    pub fn operators(token: Option<Token>) -> Self {
        Self {
            token,
            logins: None,
            refused: Counter::default(),
            metric: (
                "admin_auth_failures",
                "HTTP API requests refused for a missing or wrong admin token",
            ),
        }
    }

    /// Whether `presented` is the configured token itself (`false` when
    /// there is none).
    pub fn is_token(&self, presented: &str) -> bool {
        self.token
            .as_ref()
            .is_some_and(|token| token.matches(presented.as_bytes()))
    }

    /// Whether `authorization` still lets a caller in, without counting a
    /// refusal: for streams opened earlier (a session may have ended).
    pub fn still_admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        token.admits(authorization)
            || self
                .logins
                .as_ref()
                .is_some_and(|logins| logins.admits(authorization))
    }

    /// Admits console sessions started with a code from `logins` too.
    pub fn with_logins(mut self, logins: Logins) -> Self {
        self.logins = Some(logins);
        self
    }

    fn encode_refused(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let (name, help) = self.metric;
        self.refused.encode(encoder.encode_descriptor(
            name,
            help,
            None,
            self.refused.metric_type(),
        )?)
    }

    /// Whether `authorization` (the header's value, if any) lets a caller
    /// in; counts the refusals.
    fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let admitted = self.still_admits(authorization);
        if !admitted {
            self.refused.inc();
        }
        admitted
    }
}

/// Who a replica proved to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replica {
    /// The shared replica token, or a port that asks for none: any
    /// replica id.
    Any,
    /// A ServiceAccount token bound to pod `name`: that replica id only;
    /// the token is kept to review it again while the caller stays.
    Pod { name: String, token: Token },
}

/// The gRPC port's gate: the shared replica token, projected
/// ServiceAccount tokens checked with the Kubernetes API, either, or
/// (loopback only, or when told to) nothing.
#[derive(Clone, Debug)]
pub struct ReplicaGate {
    gate: Gate,
    review: Option<TokenReviewer>,
}

// === impl Replica ===

impl Replica {
    /// Whether this caller may speak as `replica_id`.
    pub fn may_be(&self, replica_id: &str) -> Result<(), Status> {
        match self {
            Self::Pod { name, .. } if name != replica_id => {
                Err(Status::permission_denied(format!(
                    "replica id `{replica_id}` is not the pod this token was issued to (`{name}`): run the gateway with --replica-id set to its pod's name"
                )))
            }
            _ => Ok(()),
        }
    }
}

// === impl ReplicaGate ===

impl ReplicaGate {
    pub fn new(token: Option<Token>, review: Option<TokenReviewer>) -> Self {
        Self {
            gate: Gate::replicas(token),
            review,
        }
    }

    /// Who the caller of `request` is, or its refusal (counted).
    pub async fn admit<T>(&self, request: &Request<T>) -> Result<Replica, Status> {
        let authorization = request
            .metadata()
            .get(proto::auth::METADATA_KEY)
            .map(|value| value.as_bytes());
        let Some(review) = &self.review else {
            return match self.gate.admits(authorization) {
                true => Ok(Replica::Any),
                false => Err(self.refuse(request, authorization.is_some())),
            };
        };
        if self
            .gate
            .token
            .as_ref()
            .is_some_and(|token| token.admits(authorization))
        {
            return Ok(Replica::Any);
        }
        let Some(bearer) = bearer(authorization) else {
            self.gate.refused.inc();
            return Err(self.refuse(request, authorization.is_some()));
        };
        let verdict = review.review(bearer).await;
        match verdict {
            Ok(Verdict::Pod(name)) => match Token::new(bearer) {
                Ok(token) => Ok(Replica::Pod { name, token }),
                Err(_) => Err(self.refuse(request, true)),
            },
            Ok(Verdict::Refused(why)) => {
                self.gate.refused.inc();
                Err(Status::unauthenticated(why))
            }
            Err(_) => Err(unavailable()),
        }
    }

    /// Whether a caller admitted earlier still is: a pod's token is
    /// reviewed again (the pod may be gone, the token expired); the shared
    /// token stays good while the process runs. The API server being
    /// away is not a refusal: the stream goes on until it can say.
    pub async fn readmit(&self, replica: &Replica) -> Result<(), Status> {
        let (Replica::Pod { name, token }, Some(review)) = (replica, &self.review) else {
            return Ok(());
        };
        match review.review(token.expose()).await {
            Ok(Verdict::Pod(pod)) if pod == *name => Ok(()),
            Ok(Verdict::Pod(_)) => Err(Status::unauthenticated("the token now names another pod")),
            Ok(Verdict::Refused(why)) => Err(Status::unauthenticated(format!(
                "this replica's token is no longer valid: {why}"
            ))),
            Err(_) => Ok(()),
        }
    }

    fn refuse<T>(&self, request: &Request<T>, token_sent: bool) -> Status {
        let peer = request.remote_addr().map(|a| a.to_string());
        debug!(
            peer = peer.as_deref().unwrap_or("-"),
            token_sent, "refused a gRPC call without a replica's credential"
        );
        Status::unauthenticated(match self.review {
            Some(_) => {
                "this control plane needs a replica's credential: a projected ServiceAccount token of a gateway's pod, or the replica token"
            }
            None => {
                "this control plane needs the replica token (gateway: --control-plane-token-file or SWITCHBOARD_CONTROL_PLANE_TOKEN)"
            }
        })
    }
}

/// The check every gRPC call passes before its message is read: what
/// cannot pass [`ReplicaGate::admit`] (no token, or the wrong shared token
/// where no other is accepted) costs no decoding.
impl Interceptor for ReplicaGate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let authorization = request
            .metadata()
            .get(proto::auth::METADATA_KEY)
            .map(|value| value.as_bytes());
        let may_pass = match &self.review {
            None => self.gate.admits(authorization),
            Some(_) => bearer(authorization).is_some(),
        };
        if may_pass {
            return Ok(request);
        }
        if self.review.is_some() {
            self.gate.refused.inc();
        }
        Err(self.refuse(&request, authorization.is_some()))
    }
}

fn unavailable() -> Status {
    Status::unavailable(
        "this control plane cannot check tokens with the Kubernetes API right now; try again",
    )
}

/// The token of a `Bearer` authorization value.
fn bearer(authorization: Option<&[u8]>) -> Option<&str> {
    authorization
        .and_then(|v| v.strip_prefix(proto::auth::BEARER_PREFIX.as_bytes()))
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|v| !v.is_empty())
}

impl Collector for ReplicaGate {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        self.gate.encode_refused(&mut encoder)?;
        match &self.review {
            Some(review) => review.encode(&mut encoder),
            None => Ok(()),
        }
    }
}

/// Middleware for the write API: as [`operators_only`], and refused
/// outright while no admin token is configured: a write decides what
/// commands every gateway runs, so being on loopback is not enough.
pub async fn writers_only(State(gate): State<Gate>, request: HttpRequest, next: Next) -> Response {
    if gate.token.is_none() {
        let body = json!({
            "error": "writes need the control plane's admin token: start it with --admin-token-file or SWITCHBOARD_ADMIN_TOKEN (`up` makes one)"
        });
        return (StatusCode::FORBIDDEN, Json(body)).into_response();
    }
    operators_only(State(gate), request, next).await
}

/// Middleware for the operator API: 401 with `WWW-Authenticate` unless the
/// admin token comes along.
pub async fn operators_only(
    State(gate): State<Gate>,
    request: HttpRequest,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if gate.admits(authorization) {
        return next.run(request).await;
    }
    debug!(
        path = request.uri().path(),
        token_sent = authorization.is_some(),
        "refused an API request without the admin token"
    );
    let body = json!({
        "error": "this API needs the control plane's admin token: `authorization: Bearer <token>` (switchboard-control up prints the file that holds it)"
    });
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            r#"Bearer realm="switchboard-control""#,
        )],
        Json(body),
    )
        .into_response()
}

/// What the operator API takes from a browser; see [`same_origin`].
#[derive(Clone, Copy, Debug)]
pub struct SameOrigin {
    /// No admin token guards the API (loopback, or told so).
    open: bool,
}

impl SameOrigin {
    pub fn new(open: bool) -> Self {
        Self { open }
    }
}

/// Middleware for the operator API and the console's data: refuses what
/// another site's page could make a browser send, a request from another
/// origin (`Origin`, `Sec-Fetch-Site`). Without an admin token nothing
/// else stands between a page and the API, so then the host asked for
/// must also be an address, not a name a rebinding DNS could point here.
/// Scripts send neither header, and reach the API as before.
pub async fn same_origin(
    State(guard): State<SameOrigin>,
    request: HttpRequest,
    next: Next,
) -> Response {
    let headers = request.headers();
    // HTTP/2 names the host in `:authority`, HTTP/1.1 in `Host`.
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default();
    let other_origin = headers.get(header::ORIGIN).is_some_and(|origin| {
        origin
            .to_str()
            .map_or(true, |origin| !same_host(origin, host))
    });
    let other_site = headers
        .get("sec-fetch-site")
        .is_some_and(|site| site != "same-origin" && site != "none");
    if other_origin || other_site {
        return error_answer(
            StatusCode::FORBIDDEN,
            "this API answers its own pages and scripts only (the request came from another origin)",
        );
    }
    if guard.open && !is_address(host) {
        return error_answer(
            StatusCode::FORBIDDEN,
            "without an admin token this API answers only at an address (127.0.0.1, [::1]), not at a host name: start the control plane with --admin-token-file",
        );
    }
    next.run(request).await
}

/// Whether `origin` (`scheme://host[:port]`) names `host` (`host[:port]`),
/// default ports and letter case aside.
fn same_host(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    let bare = |authority: &str| {
        let authority = authority.to_ascii_lowercase();
        authority
            .strip_suffix(default)
            .map(str::to_owned)
            .unwrap_or(authority)
    };
    bare(authority) == bare(host)
}

/// `127.0.0.1:8789`, `[::1]:8789`, `localhost:8789`: a host no DNS
/// answers for.
fn is_address(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

impl Collector for Gate {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        self.encode_refused(&mut encoder)
    }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    #[test]
    fn an_origin_is_the_host_asked_for_or_another() {
        assert!(same_host("http://127.0.0.1:8789", "127.0.0.1:8789"));
        assert!(same_host("HTTP://LocalHost", "localhost:80"));
        assert!(same_host("https://cp.example", "cp.example:443"));
        assert!(same_host("http://[::1]:8789", "[::1]:8789"));
        assert!(!same_host("http://evil.example", "127.0.0.1:8789"));
        assert!(!same_host("https://127.0.0.1:8789", "127.0.0.1:8788"));
        assert!(!same_host("null", "127.0.0.1:8789"));
        assert!(is_address("127.0.0.1:8789") && is_address("[::1]:1") && is_address("localhost"));
        assert!(!is_address("rebound.example:8789"));
    }

    fn call(gate: &ReplicaGate, header: Option<&str>) -> Result<Replica, tonic::Code> {
        let mut request = Request::new(());
        if let Some(header) = header {
            let value = MetadataValue::try_from(header).expect("ASCII");
            request
                .metadata_mut()
                .insert(proto::auth::METADATA_KEY, value);
        }
        futures::executor::block_on(gate.admit(&request)).map_err(|status| status.code())
    }

    #[test]
    fn only_the_token_lets_a_call_in() {
        let token = Token::new("0123456789abcdef-token").expect("long enough");
        let auth = ReplicaGate::new(Some(token), None);
        assert_eq!(
            call(&auth, Some("Bearer 0123456789abcdef-token")),
            Ok(Replica::Any)
        );
        for refused in [
            None,
            Some("Bearer 0123456789abcdef-tokem"),
            Some("Bearer 0123456789abcdef-token2"),
            Some("0123456789abcdef-token"),
            Some("Basic 0123456789abcdef-token"),
        ] {
            assert_eq!(
                call(&auth, refused),
                Err(tonic::Code::Unauthenticated),
                "{refused:?}"
            );
        }
        assert_eq!(auth.gate.refused.get(), 5);
        let open = ReplicaGate::new(None, None);
        assert_eq!(call(&open, None), Ok(Replica::Any));
    }

    #[test]
    fn a_pod_bound_replica_speaks_only_as_its_pod() {
        let pod = Replica::Pod {
            name: "gw-1".into(),
            token: Token::new("0123456789abcdef-token").expect("long enough"),
        };
        assert!(pod.may_be("gw-1").is_ok());
        let refused = pod.may_be("gw-2").expect_err("another pod's id");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().contains("`gw-1`"),
            "{}",
            refused.message()
        );
        assert!(Replica::Any.may_be("anything").is_ok());
    }

    #[test]
    fn tokens_are_long_random_and_never_printed() {
        assert!(Token::new("  short \n").is_err());
        let (a, b) = (
            Token::generate().expect("random"),
            Token::generate().expect("random"),
        );
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 64);
        assert_eq!(format!("{a:?}"), "Token(redacted)");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Any header value: accepted exactly when it is the token.
            #[test]
            fn only_the_exact_token_is_accepted(
                token in "[!-~]{16,40}",
                presented in proptest::option::of("[ -~]{0,48}"),
            ) {
                let gate = ReplicaGate::new(Some(Token::new(&token).expect("a valid token")), None);
                let header = presented.clone().map(|p| format!("Bearer {p}"));
                let expected = presented.as_deref() == Some(token.as_str());
                prop_assert_eq!(call(&gate, header.as_deref()).is_ok(), expected);
            }

            /// Any text: refused, or a token of at least 16 visible characters.
            #[test]
            fn token_text_is_refused_or_sound(text in "\\PC{0,40}") {
                if let Ok(token) = Token::new(&text) {
                    prop_assert!(token.expose().len() >= 16);
                    prop_assert!(token.expose().bytes().all(|b| b.is_ascii_graphic()));
                    prop_assert!(token.matches(token.expose().as_bytes()));
                }
            }
        }
    }
}
