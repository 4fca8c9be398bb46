//! Legacy HTTP+SSE (protocol 2024-11-05) for clients that predate
//! streamable HTTP. `GET /sse` opens a session and its event stream, whose
//! first event (`endpoint`) names where to POST (`/message?sessionId=…`);
//! everything the gateway sends is a `message` event on that stream. The
//! session is the same [`GatewaySession`] streamable HTTP uses, served by
//! rmcp over channels; it ends when the client closes the stream.

use std::{collections::HashMap, convert::Infallible, sync::Arc};

use axum::{
    Router,
    body::Bytes,
    extract::{Query, State},
    http::{StatusCode, request::Parts, uri::Authority},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use futures::{StreamExt, stream};
use parking_lot::RwLock;
use rmcp::{
    ServiceExt,
    model::{ClientJsonRpcMessage, GetExtensions, JsonRpcMessage, ServerJsonRpcMessage},
};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, PollSender};
use tracing::{Instrument, debug, info_span};

use super::{GatewaySession, McpConfig, answer::Refusal};
use crate::{catalog::CatalogReader, downstream::Servers, telemetry::Telemetry};

/// Messages buffered per direction before the sender waits.
const CHANNEL_CAPACITY: usize = 64;

/// The open SSE sessions and what a new one needs.
#[derive(Clone)]
pub struct SseState {
    sessions: Arc<RwLock<HashMap<String, mpsc::Sender<ClientJsonRpcMessage>>>>,
    catalog: CatalogReader,
    servers: Servers,
    telemetry: Telemetry,
    allowed_hosts: Arc<AllowedHosts>,
    page_size: usize,
    shutdown: CancellationToken,
}

#[derive(Deserialize)]
struct SessionQuery {
    #[serde(rename = "sessionId")]
    session_id: String,
}

/// `GET /sse` and `POST /message`.
pub fn router(
    catalog: CatalogReader,
    servers: Servers,
    config: &McpConfig,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> Router {
    let state = SseState {
        sessions: Arc::default(),
        catalog,
        servers,
        telemetry,
        allowed_hosts: Arc::new(AllowedHosts::new(&config.allowed_hosts)),
        page_size: config.page_size,
        shutdown,
    };
    Router::new()
        .route("/sse", get(open))
        .route("/message", post(message))
        .with_state(state)
}

async fn open(State(state): State<SseState>, parts: Parts) -> Response {
    if let Err(refused) = check_host(&state.allowed_hosts, &parts) {
        return Refusal::forbidden(refused).into_response();
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (to_client, outbound) = mpsc::channel::<ServerJsonRpcMessage>(CHANNEL_CAPACITY);
    let (inbound_tx, inbound) = mpsc::channel::<ClientJsonRpcMessage>(CHANNEL_CAPACITY);
    state.sessions.write().insert(id.clone(), inbound_tx);
    let stop = state.shutdown.child_token();
    let session = GatewaySession::new(
        state.catalog,
        state.servers,
        state.telemetry,
        state.page_size,
    );
    let sessions = state.sessions.clone();
    let key = id.clone();
    let running = stop.clone();
    tokio::spawn(
        async move {
            let transport = (PollSender::new(to_client), ReceiverStream::new(inbound));
            match session.serve_with_ct(transport, running).await {
                Ok(service) => {
                    let _ = service.waiting().await;
                }
                Err(err) => debug!(error = %err, "SSE session ended before initialize"),
            }
            sessions.write().remove(&key);
            debug!("SSE session closed");
        }
        .instrument(info_span!("sse_session")),
    );
    // The session lives as long as the client keeps the stream open.
    let closed = stop.drop_guard();
    let endpoint = Event::default()
        .event("endpoint")
        .data(format!("/message?sessionId={id}"));
    let messages = ReceiverStream::new(outbound).map(move |message| {
        let _session = &closed;
        let data = serde_json::to_string(&message).unwrap_or_default();
        Ok::<_, Infallible>(Event::default().event("message").data(data))
    });
    let events = stream::once(async move { Ok(endpoint) }).chain(messages);
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn message(
    State(state): State<SseState>,
    Query(query): Query<SessionQuery>,
    parts: Parts,
    body: Bytes,
) -> Response {
    if let Err(refused) = check_host(&state.allowed_hosts, &parts) {
        return Refusal::forbidden(refused).into_response();
    }
    let sender = state.sessions.read().get(&query.session_id).cloned();
    let Some(sender) = sender else {
        return Refusal::unknown_session(format!(
            "unknown or expired session `{}`; open a new one at /sse",
            query.session_id
        ))
        .into_response();
    };
    let mut message: ClientJsonRpcMessage = match serde_json::from_slice(&body) {
        Ok(message) => message,
        Err(err) => {
            return Refusal::invalid_request(format!("Invalid Request: {err}")).into_response();
        }
    };
    // Handlers read headers (caller, traceparent) from the request parts,
    // as they do on streamable HTTP.
    match &mut message {
        JsonRpcMessage::Request(request) => {
            request.request.extensions_mut().insert(parts);
        }
        JsonRpcMessage::Notification(notification) => {
            notification.notification.extensions_mut().insert(parts);
        }
        _ => {}
    }
    if sender.send(message).await.is_err() {
        return Refusal::unknown_session(format!("session `{}` has ended", query.session_id))
            .into_response();
    }
    StatusCode::ACCEPTED.into_response()
}

/// `--allowed-host` entries, read once: every request's `Host` is
/// checked against them.
pub struct AllowedHosts {
    /// `*`: any host.
    any: bool,
    /// Lower-case hosts without brackets, and the port if one is named.
    entries: Vec<(String, Option<u16>)>,
}

impl AllowedHosts {
    pub fn new(hosts: &[String]) -> Self {
        let entries = hosts
            .iter()
            .map(|entry| {
                let entry = entry.trim();
                match Authority::try_from(entry) {
                    Ok(parsed) => (unbracketed(parsed.host()), parsed.port_u16()),
                    Err(_) => (unbracketed(entry), None),
                }
            })
            .collect();
        Self {
            any: hosts.iter().any(|h| h == "*"),
            entries,
        }
    }

    fn allows(&self, authority: &Authority) -> bool {
        let host = authority.host().trim_matches(['[', ']']);
        self.entries.iter().any(|(entry_host, entry_port)| {
            entry_host.eq_ignore_ascii_case(host)
                && entry_port.is_none_or(|port| authority.port_u16() == Some(port))
        })
    }
}

fn unbracketed(host: &str) -> String {
    host.trim_matches(['[', ']']).to_ascii_lowercase()
}

/// DNS-rebinding protection, as rmcp does it on `/mcp`: the `Host` (and
/// the `Origin`, when a browser sends one) must name an allowed host; an
/// entry names a host (any port) or a host:port. Headers that are not
/// text or not an authority are refused, never skipped.
pub(super) fn check_host(allowed: &AllowedHosts, parts: &Parts) -> Result<(), String> {
    if allowed.any {
        return Ok(());
    }
    let header = |name: http::HeaderName| match parts.headers.get(&name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(Some)
            .map_err(|_| format!("the {name} header is not text")),
    };
    let host = header(http::header::HOST)?.ok_or("missing Host header")?;
    let host = Authority::try_from(host).map_err(|_| format!("invalid Host header `{host}`"))?;
    if !allowed.allows(&host) {
        return Err(format!(
            "host `{}` is not allowed (see --allowed-host)",
            host.host()
        ));
    }
    if let Some(origin) = header(http::header::ORIGIN)? {
        let authority = ["http://", "https://"]
            .iter()
            .find_map(|scheme| {
                let prefix = origin.get(..scheme.len())?;
                prefix
                    .eq_ignore_ascii_case(scheme)
                    .then(|| &origin[scheme.len()..])
            })
            .and_then(|authority| Authority::try_from(authority).ok())
            .ok_or_else(|| format!("invalid Origin `{origin}`"))?;
        if !allowed.allows(&authority) {
            return Err(format!(
                "origin `{origin}` is not allowed (see --allowed-host)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(host: &str, origin: Option<&str>) -> Parts {
        let mut request = http::Request::builder().header(http::header::HOST, host);
        if let Some(origin) = origin {
            request = request.header(http::header::ORIGIN, origin);
        }
        request.body(()).expect("request").into_parts().0
    }

    #[test]
    fn hosts_and_origins_must_name_an_allowed_host() {
        let entries = ["localhost", "127.0.0.1:8080", "[::1]", " Example.COM "];
        let allowed = AllowedHosts::new(&entries.map(String::from));
        for host in [
            "localhost:1234",
            "LOCALHOST",
            "127.0.0.1:8080",
            "[::1]:5",
            "example.com",
        ] {
            assert_eq!(check_host(&allowed, &parts(host, None)), Ok(()), "{host}");
        }
        for host in [
            "127.0.0.1:9",
            "127.0.0.1",
            "evil.com",
            "localhost/x",
            "localhost.evil.com",
        ] {
            assert!(check_host(&allowed, &parts(host, None)).is_err(), "{host}");
        }
        let origin = |origin| check_host(&allowed, &parts("localhost", Some(origin)));
        assert_eq!(origin("http://localhost:3000"), Ok(()));
        assert_eq!(origin("HTTPS://[::1]"), Ok(()));
        for refused in ["ftp://localhost", "http://evil.com", "localhost", "http://"] {
            assert!(origin(refused).is_err(), "{refused}");
        }
        let any = AllowedHosts::new(&["*".to_owned()]);
        assert_eq!(
            check_host(&any, &parts("evil.com", Some("http://evil.com"))),
            Ok(())
        );
    }
}
