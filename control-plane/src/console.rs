//! The console: a live web dashboard served by the control plane on its
//! HTTP port, at `/`. Its files (`control-plane/console/`: HTML, CSS and
//! JavaScript modules, no build step) are compiled into the binary and
//! served open, under a strict Content-Security-Policy; everything they
//! show comes from the operator API behind the same gate as `/status`:
//! the live stream ([`live`]), `/traces`, `/servers`, the client configs
//! of `connect` and the gateway's tools ([`gateway`]).
//!
//! Logging in: the admin token, pasted once, or the one-time code `up`
//! prints in the console's URL (`#login=…`, a fragment, so it never
//! reaches a server log), redeemed at `POST /console/login` for a session
//! token ([`Logins`]).

mod gateway;
mod live;

use std::sync::{Arc, LazyLock};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::info;

use crate::{
    admin::{AdminState, error_answer},
    auth::{self, Gate, Logins, SESSION_TTL, SameOrigin},
    connect,
};

/// What the console is told beyond the registry and replicas.
#[derive(Clone, Debug, Default)]
pub struct ConsoleConfig {
    /// A trace in the operator's own trace UI, `{trace_id}` replaced
    /// (`https://jaeger.example/trace/{trace_id}`).
    pub trace_ui_url: Option<String>,
    /// The gateway's MCP endpoint as clients reach it, for the client
    /// configs; else the first connected replica's.
    pub gateway_url: Option<String>,
}

/// The console's routes' state.
#[derive(Clone)]
struct Console {
    admin: AdminState,
    config: Arc<ConsoleConfig>,
    logins: Logins,
    /// The API's gate: the admin token a login may present, and what open
    /// streams are checked against again.
    operators: Gate,
    gateway: gateway::GatewayClient,
    hub: Arc<live::Hub>,
    streams: Arc<tokio::sync::Semaphore>,
}

/// A file of the console, compiled in.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: [Asset; 4] = [
    Asset {
        path: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../console/index.html"),
    },
    Asset {
        path: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../console/console.css"),
    },
    Asset {
        path: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../console/console.js"),
    },
    Asset {
        path: "model.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../console/model.js"),
    },
];

/// Each asset's ETag, by its index in [`ASSETS`].
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.body);
            let short: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            format!("\"{short}\"")
        })
        .collect()
});

/// Scripts, styles and data from this origin only; nothing framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The console's routes: files and login open, data behind `operators`.
pub fn router(
    admin: AdminState,
    config: ConsoleConfig,
    logins: Logins,
    writable: bool,
    operators: Gate,
) -> Router {
    let config = Arc::new(config);
    let hub = live::Hub::start(live::Source {
        admin: admin.clone(),
        config: config.clone(),
        writable,
    });
    let console = Console {
        admin,
        config,
        logins,
        operators: operators.clone(),
        gateway: gateway::GatewayClient::new(),
        hub,
        streams: Arc::new(tokio::sync::Semaphore::new(live::MAX_STREAMS)),
    };
    let guard = SameOrigin::new(!writable);
    let data = Router::new()
        .route("/console/live", get(live::stream))
        .route("/console/connect", get(client_configs))
        .route("/console/tools", get(gateway::tools))
        .route("/console/tools/call", post(gateway::call))
        .route("/console/logout", post(logout))
        .layer(axum::middleware::from_fn_with_state(
            operators,
            auth::operators_only,
        ));
    Router::new()
        .route("/console/login", post(login))
        .merge(data)
        .layer(axum::middleware::from_fn_with_state(
            guard,
            auth::same_origin,
        ))
        .route(
            "/",
            get(|headers: HeaderMap| async move { asset(0, &headers) }),
        )
        .route("/console/{file}", get(file))
        .with_state(console)
}

async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|a| a.path == name) {
        Some(index) => asset(index, &headers),
        None => (StatusCode::NOT_FOUND, "no such console file\n").into_response(),
    }
}

fn asset(index: usize, headers: &HeaderMap) -> Response {
    let etag = &ETAGS[index];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let asset = &ASSETS[index];
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Revalidated on every load: a new binary serves new files at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(etag) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, etag);
    }
    response
}

/// A one-time code from `up`'s link, or the admin token, pasted.
#[derive(Deserialize)]
struct LoginBody {
    code: Option<String>,
    token: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Session {
    token: String,
    expires_in_seconds: u64,
}

/// `POST /console/login`: a one-time code, or the admin token, for a
/// session token: the browser keeps the session, never the admin token.
async fn login(State(console): State<Console>, Json(body): Json<LoginBody>) -> Response {
    let session = match (&body.code, &body.token) {
        (Some(code), _) => console.logins.redeem(code.trim()),
        (None, Some(token)) if console.operators.is_token(token.trim()) => console.logins.start(),
        _ => None,
    };
    match session {
        Some(token) => {
            info!(
                with = if body.code.is_some() {
                    "one-time code"
                } else {
                    "admin token"
                },
                "a console session started"
            );
            Json(Session {
                token: token.expose().to_owned(),
                expires_in_seconds: SESSION_TTL.as_secs(),
            })
            .into_response()
        }
        None => error_answer(
            StatusCode::UNAUTHORIZED,
            "this login is wrong, or the code expired or was used: paste the admin token, or restart `switchboard-control up` for a new link",
        ),
    }
}

/// `POST /console/logout`: ends the console session presented.
async fn logout(State(console): State<Console>, headers: HeaderMap) -> StatusCode {
    console
        .logins
        .end(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()));
    StatusCode::NO_CONTENT
}

/// Where bridge clients read their caller token, for the user to fill in.
const TOKEN_FILE_PLACEHOLDER: &str = "/path/to/your-caller-token";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClientConfig {
    client: &'static str,
    /// Where the client reads it, from the home directory.
    file: &'static str,
    format: &'static str,
    config: String,
    /// The command that writes it into the client's file.
    command: String,
}

/// `GET /console/connect`: every client's config for the gateway, as
/// `switchboard-control connect` renders it.
async fn client_configs(State(console): State<Console>) -> Response {
    let Some(endpoint) = console.gateway_url() else {
        return error_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "no gateway to name yet: give the control plane --gateway-url, or wait for a replica to connect",
        );
    };
    // As gateways decide: callers need a token once clients or issuers
    // are declared, unless the gateway config lets anonymous ones in.
    let auth = {
        let registry = console.admin.registry.borrow();
        let (issuers, anonymous) = registry.gateway.as_ref().map_or((false, false), |gateway| {
            (!gateway.issuers.is_empty(), gateway.allow_anonymous)
        });
        (!registry.clients.is_empty() || issuers) && !anonymous
    };
    let mut configs = Vec::new();
    for client in &connect::CLIENTS {
        // Each client named as itself in logs and traces.
        let caller = client.name;
        let snippet = connect::Snippet {
            endpoint: &endpoint,
            caller,
            name: "switchboard",
            bridge: "switchboard-gateway",
            auth: auth.then_some(TOKEN_FILE_PLACEHOLDER),
        };
        match client.render(&snippet) {
            Ok(config) => configs.push(ClientConfig {
                client: client.name,
                file: client.config,
                format: client.format,
                config,
                command: format!(
                    "switchboard-control connect {} --url {endpoint} --caller {caller}{} --write",
                    client.name,
                    if auth {
                        format!(" --token-file {TOKEN_FILE_PLACEHOLDER}")
                    } else {
                        String::new()
                    }
                ),
            }),
            Err(error) => return error_answer(StatusCode::UNPROCESSABLE_ENTITY, error),
        }
    }
    Json(json!({ "endpoint": endpoint, "auth": auth, "clients": configs })).into_response()
}

// === impl Console ===

impl Console {
    /// The endpoint clients are given: as configured, else the first
    /// connected replica's.
    fn gateway_url(&self) -> Option<String> {
        self.config
            .gateway_url
            .clone()
            .or_else(|| self.replica_url().map(|(_, url)| url))
    }

    /// A connected replica's id and the MCP endpoint it says it serves.
    fn replica_url(&self) -> Option<(String, String)> {
        self.admin
            .replicas
            .snapshot()
            .into_iter()
            .find_map(|(id, r)| {
                let reachable =
                    r.peer_url.starts_with("http://") || r.peer_url.starts_with("https://");
                (r.connected && reachable).then_some((id, r.peer_url))
            })
    }
}
