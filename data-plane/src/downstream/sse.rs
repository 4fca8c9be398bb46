//! Legacy HTTP+SSE connections (protocol 2024-11-05): a GET event stream
//! whose first `endpoint` event names where to POST; the server's messages
//! arrive as `message` events on the stream. rmcp has no client for it, so
//! this adapts it to an rmcp transport over two channels: one task reads
//! the stream, one POSTs. A `launch` process, if configured, is started
//! once per server (like a stdio server: it dies with the gateway), shared
//! by all of the server's connections, started again if it exited, and
//! connections wait until the URL answers.

use std::{pin::Pin, time::Duration};

use futures::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use rmcp::{
    ServiceExt,
    model::{ClientJsonRpcMessage, ServerJsonRpcMessage},
    service::{Peer, RoleClient},
};
use sse_stream::SseStream;
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{
    sync::{CancellationToken, PollSender},
    task::AbortOnDropHandle,
};
use tracing::{Instrument, debug, warn};

use super::{
    DownstreamClient, Error,
    stdio::{Launched, Launcher},
    with_causes,
};
use crate::{
    redact,
    spec::{HttpSpec, SseSpec},
};

/// Messages buffered per direction before the sender waits.
const CHANNEL_CAPACITY: usize = 64;
/// While a launched server starts, the stream is retried this often.
const CONNECT_RETRY: Duration = Duration::from_millis(100);
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The server's event stream.
type Events =
    Pin<Box<dyn futures::Stream<Item = Result<sse_stream::Sse, sse_stream::Error>> + Send>>;

pub struct SseConnection {
    peer: Peer<RoleClient>,
    cancel: CancellationToken,
    service: super::ServiceTask,
    _reader: AbortOnDropHandle<()>,
    _writer: AbortOnDropHandle<()>,
}

/// The one `launch` process of a server, shared by its connections.
#[derive(Default)]
pub struct SharedLaunch {
    process: tokio::sync::Mutex<Option<Launched>>,
}

// === impl SharedLaunch ===

impl SharedLaunch {
    /// Stops the process, if one runs.
    pub async fn shutdown(&self) {
        if let Some(process) = self.process.lock().await.take() {
            process.shutdown().await;
        }
    }
}

// === impl SseConnection ===

impl SseConnection {
    /// Starts the launch process (if any), opens the event stream, and
    /// runs the MCP handshake, all within `timeout`.
    pub async fn start(
        server: &str,
        spec: &SseSpec,
        (launcher, shared): (&Launcher, &SharedLaunch),
        client: DownstreamClient,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let deadline = Instant::now() + timeout;
        let remote = &spec.remote;
        let headers = header_map(remote)?;
        let http = super::http::http_client()?;
        // Held while connecting, so concurrent connections start one process.
        let mut launched = shared.process.lock().await;
        if launched.as_mut().is_some_and(Launched::has_exited) {
            *launched = None;
        }
        if let (None, Some(launch)) = (launched.as_ref(), &spec.launch) {
            *launched = Some(Launched::start(server, launch, launcher).await?);
        }
        let opened = tokio::time::timeout_at(
            deadline,
            open_stream(&http, remote, &headers, launched.as_mut()),
        )
        .await;
        drop(launched);
        let response = match opened {
            Ok(Ok(response)) => response,
            Ok(Err(reason)) => return Err(Error::Initialize(reason)),
            Err(_) => {
                return Err(Error::Initialize(format!(
                    "{} did not answer within {timeout:?}",
                    remote.url
                )));
            }
        };
        let mut events: Events = Box::pin(SseStream::from_bytes_stream(response.bytes_stream()));
        let endpoint = tokio::time::timeout_at(deadline, async {
            while let Some(event) = events.next().await {
                let event = event.map_err(|e| e.to_string())?;
                if event.event.as_deref() == Some("endpoint") {
                    return event.data.ok_or_else(|| "empty endpoint event".to_owned());
                }
            }
            Err("the stream closed before its endpoint event".to_owned())
        })
        .await
        .map_err(|_| {
            Error::Initialize(format!(
                "no endpoint event from {} within {timeout:?}",
                remote.url
            ))
        })?
        .map_err(|reason| Error::Initialize(format!("{}: {reason}", remote.url)))?;
        let endpoint = resolve(&remote.url, endpoint.trim())?;
        debug!(%endpoint, "SSE endpoint");

        let (to_server, outbound) = mpsc::channel::<ClientJsonRpcMessage>(CHANNEL_CAPACITY);
        let (inbound_tx, inbound) = mpsc::channel::<ServerJsonRpcMessage>(CHANNEL_CAPACITY);
        // Owned at once: a failed handshake must not leave them running.
        let reader = AbortOnDropHandle::new(tokio::spawn(
            read_events(events, inbound_tx).in_current_span(),
        ));
        let writer = AbortOnDropHandle::new(tokio::spawn(
            post_messages(http, endpoint, headers, outbound).in_current_span(),
        ));
        let transport = client
            .relay
            .sequenced((PollSender::new(to_server), ReceiverStream::new(inbound)));
        let cancel = CancellationToken::new();
        let handshake = client.serve_with_ct(transport, cancel.clone());
        let service = match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(service)) => service,
            Ok(Err(err)) => {
                let reason = format!("{}: {}", remote.url, with_causes(&err));
                return Err(Error::Initialize(reason));
            }
            Err(_) => {
                return Err(Error::Initialize(format!(
                    "no initialize response from {} within {timeout:?}",
                    remote.url
                )));
            }
        };
        Ok(Self {
            peer: service.peer().clone(),
            cancel,
            service: tokio::spawn(service.waiting()),
            _reader: reader,
            _writer: writer,
        })
    }

    pub fn peer(&self) -> &Peer<RoleClient> {
        &self.peer
    }

    /// Resolves when the stream closes (also when a launched process dies).
    pub async fn closed(&mut self) -> String {
        super::service_ended(&mut self.service, "event stream").await
    }

    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(CLOSE_GRACE, &mut self.service).await;
        self.service.abort();
    }
}

/// GETs the event stream, retrying while a launched server comes up.
async fn open_stream(
    http: &reqwest::Client,
    remote: &HttpSpec,
    headers: &HeaderMap,
    mut launched: Option<&mut Launched>,
) -> Result<reqwest::Response, String> {
    loop {
        let attempt = http
            .get(&remote.url)
            .headers(headers.clone())
            .header(header::ACCEPT, "text/event-stream")
            .send()
            .await;
        let failure = match attempt {
            Ok(response) if response.status().is_success() => return Ok(response),
            Ok(response) => format!("{} answered {}", remote.url, response.status()),
            Err(err) => format!("{}: {}", remote.url, with_causes(&err)),
        };
        let Some(process) = launched.as_deref_mut() else {
            return Err(failure);
        };
        tokio::select! {
            reason = process.exited() => return Err(format!("{reason} before {failure}")),
            () = tokio::time::sleep(CONNECT_RETRY) => debug!(%failure, "waiting for the server to listen"),
        }
    }
}

async fn read_events(mut events: Events, inbound: mpsc::Sender<ServerJsonRpcMessage>) {
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                warn!(error = %redact::urls(&err.to_string()), "SSE stream failed");
                return;
            }
        };
        if !matches!(event.event.as_deref(), None | Some("message")) {
            continue;
        }
        let Some(data) = event.data else { continue };
        match serde_json::from_str::<ServerJsonRpcMessage>(&data) {
            Ok(message) => {
                if inbound.send(message).await.is_err() {
                    return;
                }
            }
            Err(err) => warn!(error = %err, "server sent an SSE message that is not MCP"),
        }
    }
    debug!("SSE stream ended");
}

async fn post_messages(
    http: reqwest::Client,
    endpoint: String,
    headers: HeaderMap,
    mut outbound: mpsc::Receiver<ClientJsonRpcMessage>,
) {
    while let Some(message) = outbound.recv().await {
        let body = match serde_json::to_vec(&message) {
            Ok(body) => body,
            Err(err) => {
                warn!(error = %err, "cannot encode a message");
                continue;
            }
        };
        let sent = http
            .post(&endpoint)
            .headers(headers.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {}
            // The server forgot the session: the connection is over.
            Ok(response) if matches!(response.status().as_u16(), 404 | 410) => {
                warn!(status = %response.status(), "SSE session gone");
                return;
            }
            Ok(response) => warn!(status = %response.status(), "SSE POST refused"),
            Err(err) => warn!(error = %redact::urls(&err.to_string()), "SSE POST failed"),
        }
    }
}

fn header_map(remote: &HttpSpec) -> Result<HeaderMap, Error> {
    let mut headers = HeaderMap::new();
    for (name, value) in &remote.headers {
        let invalid = |e: &dyn std::fmt::Display| Error::Protocol(format!("header `{name}`: {e}"));
        let name_ = HeaderName::try_from(name.as_str()).map_err(|e| invalid(&e))?;
        let value = HeaderValue::try_from(value.as_str()).map_err(|e| invalid(&e))?;
        headers.insert(name_, value);
    }
    Ok(headers)
}

/// The endpoint event's URL, which may be relative to the stream's. It
/// must stay on the stream's origin: the configured headers (credentials)
/// go with every POST.
fn resolve(base: &str, endpoint: &str) -> Result<String, Error> {
    let base = url::Url::parse(base).map_err(|e| Error::Protocol(format!("`{base}`: {e}")))?;
    let resolved = base
        .join(endpoint)
        .map_err(|e| Error::Protocol(format!("endpoint `{endpoint}`: {e}")))?;
    if resolved.origin() != base.origin() {
        return Err(Error::Protocol(format!(
            "endpoint `{endpoint}` is not on the stream's origin {}",
            base.origin().ascii_serialization()
        )));
    }
    Ok(resolved.into())
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn endpoints_resolve_against_the_stream_url() {
        let base = "http://127.0.0.1:3001/sse";
        let resolved = |e| resolve(base, e).expect("valid");
        assert_eq!(
            resolved("/message?sessionId=1"),
            "http://127.0.0.1:3001/message?sessionId=1"
        );
        assert_eq!(
            resolved("messages?s=2"),
            "http://127.0.0.1:3001/messages?s=2"
        );
        assert_eq!(
            resolved("http://127.0.0.1:3001/m"),
            "http://127.0.0.1:3001/m"
        );
        assert!(resolve(base, "http://other:9/m").is_err(), "another host");
        assert!(
            resolve(base, "https://127.0.0.1:3001/m").is_err(),
            "another scheme"
        );
    }
}
