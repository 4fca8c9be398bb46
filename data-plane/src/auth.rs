//! Who may call the gateway: the `McpClient`s of the current snapshot.
//! Once there is one, every MCP request (streamable HTTP, legacy SSE) needs
//! `Authorization: Bearer <token>` whose SHA-256 a client declares; the
//! client's name is then the caller in logs, spans and metrics. Anyone else
//! gets 401 with `WWW-Authenticate` pointing at the protected-resource
//! metadata (RFC 9728), as MCP clients expect. With no client declared the
//! gateway is open only where that is safe: on loopback (the local quick
//! start), or when told `--allow-unauthenticated`; listening anywhere else
//! it refuses every MCP request until the registry declares a client.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
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
    pub name: Arc<str>,
    pub groups: Arc<[String]>,
}

/// The clients of the current snapshot, by their token's digest; cheap to
/// clone.
#[derive(Clone)]
pub struct Callers {
    by_digest: Arc<RwLock<HashMap<[u8; 32], Identity>>>,
    /// Anyone may call while no client is declared.
    open_without_clients: bool,
    refused: Counter,
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
            open_without_clients,
            refused: Counter::default(),
        }
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
            let identity = Identity {
                name: client.name.as_str().into(),
                groups: client.groups.into(),
            };
            if by_digest.insert(digest, identity).is_some() {
                refused.push((client.name, "another client has the same token".to_owned()));
            }
        }
        *self.by_digest.write() = by_digest;
        refused
    }

    /// Whether requests need a token.
    pub fn required(&self) -> bool {
        !(self.open_without_clients && self.by_digest.read().is_empty())
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
        .and_then(|v| v.as_bytes().strip_prefix(BEARER_PREFIX.as_bytes()));
    let presented = token.is_some();
    match token.and_then(|token| callers.identify(token)) {
        Some(identity) => {
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        None => {
            callers.refused.inc();
            debug!(
                token_sent = presented,
                path = request.uri().path(),
                "refused an MCP request without a known token"
            );
            let none_declared = callers.by_digest.read().is_empty();
            unauthorized(request.headers(), presented, none_declared)
        }
    }
}

/// 401 with the header MCP clients read to find how to authenticate.
fn unauthorized(headers: &HeaderMap, presented: bool, none_declared: bool) -> Response {
    let message = if none_declared {
        "this gateway listens beyond loopback and the registry declares no McpClient: \
         declare clients, or start the gateway with --allow-unauthenticated"
    } else if presented {
        "the bearer token is not one this gateway knows"
    } else {
        "this gateway needs `Authorization: Bearer <token>` (an McpClient's token)"
    };
    let mut challenge = format!(
        r#"Bearer resource_metadata="{}{METADATA_PATH}""#,
        origin(headers)
    );
    if presented {
        challenge.push_str(r#", error="invalid_token""#);
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
/// endpoint is and how to present a token to it.
pub fn router() -> Router {
    Router::new().route(
        METADATA_PATH,
        get(|headers: HeaderMap| async move {
            Json(json!({
                "resource": format!("{}/mcp", origin(&headers)),
                "bearer_methods_supported": ["header"],
                "resource_name": "Switchboard MCP gateway",
            }))
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
        assert_eq!(callers.identify(b"nobody").map(|i| i.name), None);
        callers.replace(vec![]);
        assert!(!callers.required(), "open again once none is declared");
    }
}
