//! Who may call the gateway: the `McpClient`s of the current snapshot, and
//! callers with a JWT from an issuer its `McpGatewayConfig` trusts
//! ([`jwt`]). Once there is a client or an issuer, every MCP request
//! (streamable HTTP, legacy SSE) needs `Authorization: Bearer <token>`:
//! a token whose SHA-256 a client declares, or a valid JWT; the caller's
//! name is then the caller in logs, spans and metrics. Anyone else gets 401
//! with `WWW-Authenticate` pointing at the protected-resource metadata
//! (RFC 9728), as MCP clients expect, unless the gateway config lets
//! callers without a token in as anonymous. With neither declared the
//! gateway is open only where that is safe: on loopback (the local quick
//! start), or when told `--allow-unauthenticated`; listening anywhere else
//! it refuses every MCP request until the registry declares a client.

mod jwt;

pub use jwt::IssuerConfig;

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::Counter, gauge::ConstGauge},
};
use proto::auth::BEARER_PREFIX;
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::debug;

use crate::{mcp::answer::Refusal, telemetry::metrics::encode_counters};

/// Where the protected-resource metadata is served (RFC 9728 §3).
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// An authenticated caller; put into the request's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The caller in logs, spans, metrics and policies.
    pub name: Arc<str>,
    /// What the caller's sessions and limits are keyed by: the client's
    /// name, or for a JWT its issuer and subject, so a token's `sub` can
    /// never pass for an `McpClient` (or another issuer's user).
    pub owner: Arc<str>,
    pub groups: Arc<[String]>,
    /// A JWT caller's string claims (each value of a list on its own),
    /// for policy subjects; none for an `McpClient`.
    pub claims: Arc<[(String, String)]>,
}

/// The clients of the current snapshot, by their token's digest; cheap to
/// clone.
#[derive(Clone)]
pub struct Callers {
    by_digest: Arc<RwLock<HashMap<[u8; 32], Identity>>>,
    issuers: jwt::Issuers,
    /// Anyone may call while no client or issuer is declared.
    open_without_clients: bool,
    /// The gateway config lets callers without a token in.
    anonymous: Arc<AtomicBool>,
    refused: Counter,
}

/// The snapshot's `McpGatewayConfig`, as far as callers go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewaySettings {
    pub allow_anonymous: bool,
    pub issuers: Vec<IssuerConfig>,
}

/// A client as the snapshot declares it.
pub struct Declared {
    pub name: String,
    pub groups: Vec<String>,
    pub token_sha256: String,
}

// === impl Callers ===

impl Callers {
    /// No client yet; `open_without_clients` lets anyone in until there is
    /// one.
    pub fn new(open_without_clients: bool) -> Self {
        Self {
            by_digest: Arc::default(),
            issuers: jwt::Issuers::default(),
            open_without_clients,
            anonymous: Arc::default(),
            refused: Counter::default(),
        }
    }

    /// Applies the gateway-wide settings (JWT issuers, anonymous callers).
    pub fn configure(&self, settings: GatewaySettings) {
        self.anonymous
            .store(settings.allow_anonymous, Ordering::Relaxed);
        self.issuers.replace(settings.issuers);
    }

    /// Replaces the clients; returns the names of those refused, with why.
    pub fn replace(&self, declared: Vec<Declared>) -> Vec<(String, String)> {
        let mut by_digest = HashMap::new();
        let mut refused = Vec::new();
        for client in declared {
            let Some(digest) = parse_digest(&client.token_sha256) else {
                refused.push((client.name, "token_sha256 is not 64 hex digits".to_owned()));
                continue;
            };
            let name: Arc<str> = client.name.as_str().into();
            let identity = Identity {
                owner: name.clone(),
                name,
                groups: client.groups.into(),
                claims: Arc::new([]),
            };
            // The first client keeps a token; a copy never takes it over.
            match by_digest.entry(digest) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    refused.push((client.name, "another client has the same token".to_owned()));
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(identity);
                }
            }
        }
        *self.by_digest.write() = by_digest;
        refused
    }

    /// Whether requests need a token.
    pub fn required(&self) -> bool {
        !(self.open_without_clients && self.none_declared())
    }

    /// No client and no issuer: nobody could present a token.
    fn none_declared(&self) -> bool {
        self.by_digest.read().is_empty() && self.issuers.is_empty()
    }

    /// Who a bearer token proves, or why it proves nobody.
    async fn authenticate(&self, token: &[u8]) -> Result<Identity, Option<jwt::Rejection>> {
        if let Some(identity) = self.identify(token) {
            return Ok(identity);
        }
        // A JWT has three dot-separated parts; anything else is a client
        // token nobody declared.
        let jwt = std::str::from_utf8(token)
            .ok()
            .filter(|t| t.split('.').count() == 3 && !self.issuers.is_empty());
        match jwt {
            Some(jwt) => self.issuers.verify(jwt).await.map_err(Some),
            None => Err(None),
        }
    }

    fn identify(&self, token: &[u8]) -> Option<Identity> {
        let digest: [u8; 32] = Sha256::digest(token).into();
        self.by_digest.read().get(&digest).cloned()
    }
}

impl std::fmt::Debug for Callers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Callers")
    }
}

impl Collector for Callers {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        encode_counters(
            &mut encoder,
            &[(
                "auth_failures",
                "MCP requests refused for a missing or unknown bearer token",
                &self.refused,
            )],
        )?;
        self.issuers.encode(&mut encoder)?;
        let issuers = ConstGauge::new(i64::try_from(self.issuers.count()).unwrap_or(i64::MAX));
        issuers.encode(encoder.encode_descriptor(
            "jwt_issuers",
            "JWT issuers the gateway config trusts",
            None,
            issuers.metric_type(),
        )?)?;
        let clients =
            ConstGauge::new(i64::try_from(self.by_digest.read().len()).unwrap_or(i64::MAX));
        clients.encode(encoder.encode_descriptor(
            "clients",
            "McpClients declared (0: the gateway is open)",
            None,
            clients.metric_type(),
        )?)
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(digest)
}

/// Middleware for the MCP routes: lets a known client's request in, with
/// its [`Identity`]; answers anyone else 401.
pub async fn authenticate(
    State(callers): State<Callers>,
    mut request: Request,
    next: Next,
) -> Response {
    if !callers.required() {
        return next.run(request).await;
    }
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()));
    let Some(token) = token else {
        if callers.anonymous.load(Ordering::Relaxed) {
            return next.run(request).await;
        }
        return refuse(&callers, &request, Refused::NoToken);
    };
    match callers.authenticate(token).await {
        Ok(identity) => {
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        Err(rejection) => refuse(&callers, &request, Refused::BadToken(rejection)),
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme's
/// name is case-insensitive (RFC 7235), so `bearer x` is a token too.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let scheme = BEARER_PREFIX.len();
    (value.len() > scheme && value[..scheme].eq_ignore_ascii_case(BEARER_PREFIX.as_bytes()))
        .then(|| &value[scheme..])
}

/// Why a request gets 401.
enum Refused {
    NoToken,
    /// Sent, and unknown; with why, for a JWT.
    BadToken(Option<jwt::Rejection>),
}

fn refuse(callers: &Callers, request: &Request, refused: Refused) -> Response {
    callers.refused.inc();
    let (presented, rejection) = match refused {
        Refused::NoToken => (false, None),
        Refused::BadToken(rejection) => (true, rejection),
    };
    debug!(
        token_sent = presented,
        jwt_rejected = rejection.map(jwt::Rejection::describe),
        path = request.uri().path(),
        "refused an MCP request without a known token"
    );
    unauthorized(
        request.headers(),
        presented,
        callers.none_declared(),
        rejection,
    )
}

/// 401 with the header MCP clients read to find how to authenticate.
fn unauthorized(
    headers: &HeaderMap,
    presented: bool,
    none_declared: bool,
    rejection: Option<jwt::Rejection>,
) -> Response {
    let message = if none_declared {
        "this gateway listens beyond loopback and the registry declares no McpClient: \
         declare clients, or start the gateway with --allow-unauthenticated"
    } else if let Some(rejection) = rejection {
        rejection.describe()
    } else if presented {
        "the bearer token is not one this gateway knows"
    } else {
        "this gateway needs `Authorization: Bearer <token>` (an McpClient's token or a JWT)"
    };
    let mut challenge = format!(
        r#"Bearer resource_metadata="{}{METADATA_PATH}""#,
        origin(headers)
    );
    if presented {
        challenge.push_str(r#", error="invalid_token""#);
        if let Some(rejection) = rejection {
            challenge.push_str(&format!(
                r#", error_description="{}""#,
                rejection.describe()
            ));
        }
    }
    let mut response = Refusal::unauthorized(message).into_response();
    if let Ok(value) = HeaderValue::try_from(challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// This gateway's origin as the client addressed it.
fn origin(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|p| p.to_str().ok())
        .filter(|p| *p == "https")
        .unwrap_or("http");
    format!("{scheme}://{host}")
}

/// The protected-resource metadata document (RFC 9728): what the MCP
/// endpoint is, how to present a token to it, and which authorization
/// servers issue the JWTs it accepts.
pub fn router(callers: Callers) -> Router {
    Router::new().route(
        METADATA_PATH,
        get(|headers: HeaderMap| async move {
            let mut document = json!({
                "resource": format!("{}/mcp", origin(&headers)),
                "bearer_methods_supported": ["header"],
                "resource_name": "Switchboard MCP gateway",
            });
            let issuers = callers.issuers.names();
            if !issuers.is_empty() {
                document["authorization_servers"] = json!(issuers);
            }
            Json(document)
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(name: &str, token: &str) -> Declared {
        let digest = Sha256::digest(token.as_bytes());
        Declared {
            name: name.to_owned(),
            groups: vec!["dev".to_owned()],
            token_sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    #[test]
    fn a_token_identifies_its_client_only() {
        assert!(
            Callers::new(false).required(),
            "closed beyond loopback until a client is declared"
        );
        let callers = Callers::new(true);
        assert!(!callers.required(), "open until a client is declared");
        let refused = callers.replace(vec![
            declared("alice", "alice-token"),
            declared("bob", "bob-token"),
            declared("copycat", "alice-token"),
            Declared {
                name: "broken".into(),
                groups: vec![],
                token_sha256: "xyz".into(),
            },
        ]);
        let refused: Vec<&str> = refused.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(refused, ["copycat", "broken"]);
        assert!(callers.required());
        assert_eq!(
            callers.identify(b"bob-token").map(|i| i.name),
            Some("bob".into())
        );
        assert_eq!(callers.identify(b"bob-token ").map(|i| i.name), None);
        assert_eq!(
            callers.identify(b"alice-token").map(|i| i.name),
            Some("alice".into()),
            "a copy of a token never takes it over"
        );
        assert_eq!(bearer(b"bearer tok"), Some(&b"tok"[..]));
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Basic dG9r"), None);
        assert_eq!(callers.identify(b"nobody").map(|i| i.name), None);
        callers.replace(vec![]);
        assert!(!callers.required(), "open again once none is declared");
    }
}
