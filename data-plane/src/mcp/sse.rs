//! Legacy HTTP+SSE (protocol 2024-11-05) for clients that predate
//! streamable HTTP. `GET /sse` opens a session and its event stream, whose
//! first event (`endpoint`) names where to POST (`/message?sessionId=…`);
//! everything the gateway sends, answers included, is a `message` event on
//! that stream. The session is a row of the same table (`session.rs`) and
//! its messages go the same way (`dispatch.rs`) as streamable HTTP's; it
//! ends when the client closes the stream.

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::{Query, Request, State},
    http::{request::Parts, uri::Authority},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use tracing::debug;

use super::{
    answer::Refusal,
    dispatch::{Endpoint, Framing, caller, own_events, stream_response},
    guard::Incoming,
    session::{Holding, Kind},
};

#[derive(Deserialize)]
struct SessionQuery {
    #[serde(rename = "sessionId")]
    session_id: String,
}

/// `GET /sse` and `POST /message`.
pub fn router(endpoint: Arc<Endpoint>) -> Router {
    Router::new()
        .route("/sse", get(open))
        .route("/message", post(message))
        .with_state(endpoint)
}

async fn open(State(endpoint): State<Arc<Endpoint>>, parts: Parts) -> Response {
    if let Err(refused) = check_host(&endpoint.allowed_hosts, &parts) {
        return Refusal::forbidden(refused).into_response();
    }
    let owner = caller(&parts);
    let (session, open) = match endpoint.sessions.create(Kind::Legacy, None, owner.clone()) {
        Ok(created) => created,
        Err(refusal) => return refusal.into_response(),
    };
    let id = session.id.simple().to_string();
    // Free unless the replica stopped and closed the session meanwhile.
    let Some(own) = session.own_stream() else {
        return Refusal::unknown_session("the session ended as it opened").into_response();
    };
    let endpoint_event = Bytes::from(format!(
        "event: endpoint\ndata: /message?sessionId={id}\n\n"
    ));
    // The session lives as long as the client keeps the stream open.
    let ends = SessionEnds {
        endpoint,
        id,
        owner,
    };
    let events = own_events(
        own,
        open,
        Some(endpoint_event),
        ends.endpoint.shutdown.clone(),
    );
    let events = futures::StreamExt::map(events, move |event| {
        let _session = &ends;
        event
    });
    stream_response(events)
}

/// Ends a legacy session when its stream is dropped.
struct SessionEnds {
    endpoint: Arc<Endpoint>,
    id: String,
    owner: Option<Arc<str>>,
}

impl Drop for SessionEnds {
    fn drop(&mut self) {
        let owner = self.owner.as_deref();
        if self.endpoint.sessions.end(&self.id, Kind::Legacy, owner) {
            debug!("SSE session closed");
        }
    }
}

async fn message(
    State(endpoint): State<Arc<Endpoint>>,
    Query(query): Query<SessionQuery>,
    request: Request,
) -> Response {
    let (mut parts, _) = request.into_parts();
    if let Err(refused) = check_host(&endpoint.allowed_hosts, &parts) {
        return Refusal::forbidden(refused).into_response();
    }
    let caller = caller(&parts);
    let Some((session, open)) =
        endpoint
            .sessions
            .enter(&query.session_id, Kind::Legacy, caller.as_deref())
    else {
        return Refusal::unknown_session(format!(
            "unknown or expired session `{}`; open a new one at /sse",
            query.session_id
        ))
        .into_response();
    };
    let Some(incoming) = parts.extensions.remove::<Incoming>() else {
        return Refusal::invalid_request("no JSON-RPC message in the body").into_response();
    };
    if let Err(refused) = endpoint.admit(&parts, &incoming) {
        return endpoint.refuse(&session, refused, Framing::OwnStream).await;
    }
    endpoint
        .receive(
            session,
            Holding::Open(open),
            Arc::new(parts),
            incoming,
            Framing::OwnStream,
        )
        .await
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
