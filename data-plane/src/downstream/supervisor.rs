//! One task per server keeps its connections alive: starts the first one
//! (with exponential backoff on failure), grows the pool on demand and to
//! `pool.min`, reaps idle connections above `pool.min`, refreshes the tool
//! lists (tools, prompts, resources, templates), and restarts after
//! crashes. One task per connection owns its
//! process, runs the health probe and reports the exit.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use proto::otel::sdk::{self, WORK};
use rmcp::{
    model::{
        CallToolRequestParams, ClientRequest, DiscoverRequest, DiscoverRequestParams,
        ProtocolVersion,
    },
    service::{Peer, RoleClient, ServiceError},
};
use tokio::{sync::mpsc, time::Instant};
use tracing::{Instrument, debug, field, info, info_span, warn};

use super::{
    DownstreamClient, Error, Lifecycle, Offer, ServerHandle, ServerState, SessionKey,
    http::HttpConnection,
    lines::Direct,
    listen::{Change, Listener},
    pool::Connection,
    relay::Relay,
    sse::SseConnection,
    stdio::StdioConnection,
};
use crate::{
    redact,
    spec::{Handshake, Probe, SessionMode, Transport},
};

/// Restart backoff: from the first delay, doubling up to the cap. A server
/// that stayed up for `STABLE_AFTER` starts again from the first delay.
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(500);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How often idle connections above `pool.min` are looked for.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// One live connection of either transport.
enum Link {
    Stdio(StdioConnection),
    Http(HttpConnection),
    Sse(SseConnection),
}

pub(super) enum Event {
    /// Calls are waiting: open another pooled connection if allowed.
    Grow,
    /// A pooled connection was added by a grow task.
    Grown,
    /// A connection's process is gone; `reason` is `None` after a requested stop.
    Exited {
        id: u64,
        session: Option<SessionKey>,
        reason: Option<String>,
    },
}

/// Runs one server until its stop token fires. Its first start is traced
/// in `rollout`, the config apply that started it; restarts are traces of
/// their own.
pub(super) async fn supervise(
    handle: Arc<ServerHandle>,
    mut events: mpsc::Receiver<Event>,
    rollout: tracing::Span,
) {
    let mut restarts = 0;
    let mut delay = FIRST_RESTART_DELAY;
    let mut rollout = Some(rollout);
    loop {
        handle.set_lifecycle(Lifecycle::starting(restarts));
        // Borrowed until the child exists, which then keeps it open.
        let parent = rollout.take();
        let start = info_span!(
            target: WORK,
            parent: parent.as_ref().and_then(tracing::Span::id),
            "server.start",
            server = %handle.spec.name,
            restarts,
            outcome = field::Empty,
            error = field::Empty,
            trace_id = field::Empty,
            span_id = field::Empty,
        );
        drop(parent);
        sdk::correlate(&start);
        let started = tokio::select! {
            _ = handle.stop.cancelled() => break,
            // Timed, not entered: the connection's tasks outlive the start.
            started = start_connection(&handle, None) => started,
        };
        match &started {
            Ok(_) => start.record("outcome", "ready"),
            Err(reason) => start
                .record("outcome", "failed")
                .record("error", redact::urls(reason).as_ref()),
        };
        drop(start);
        let reason = match started {
            Ok(first) => {
                let began = Instant::now();
                let reason = run_pool(&handle, &mut events, &first.peer, restarts).await;
                if began.elapsed() >= STABLE_AFTER {
                    delay = FIRST_RESTART_DELAY;
                }
                match reason {
                    Some(reason) => reason,
                    None => break,
                }
            }
            Err(reason) => reason,
        };
        let reason = redact::urls(&reason).into_owned();
        warn!(reason = %reason, retry_in = ?delay, "server failed");
        handle.stats.record_error(reason.clone());
        handle.set_lifecycle(Lifecycle {
            state: ServerState::Failed,
            reason,
            ..Lifecycle::starting(restarts)
        });
        tokio::select! {
            _ = handle.stop.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RESTART_DELAY);
        restarts += 1;
    }
    handle.sse_launch.shutdown().await;
    info!("server stopped");
}

/// Serves while at least one pooled connection lives. Returns why the last
/// one died, or `None` after a requested stop.
async fn run_pool(
    handle: &Arc<ServerHandle>,
    events: &mut mpsc::Receiver<Event>,
    first: &Peer<RoleClient>,
    restarts: u32,
) -> Option<String> {
    let protocol_version = first.peer_info().map(|info| info.protocol_version.clone());
    // Listing may take up to a call timeout per list; a stop must not wait.
    tokio::select! {
        _ = handle.stop.cancelled() => return None,
        () = refresh_offer(handle, first, protocol_version.clone(), restarts) => {}
    }
    grow_to_min(handle);
    let mut reap = tokio::time::interval(REAP_EVERY);
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let reopen = handle.breaker.open_until();
        tokio::select! {
            _ = handle.stop.cancelled() => return None,
            event = events.recv() => match event? {
                Event::Grow => grow(handle),
                Event::Grown => grow_to_min(handle),
                Event::Exited { id, session: Some(session), reason } => {
                    let mut sessions = handle.sessions.lock();
                    if sessions.get(&session).is_some_and(|c| c.id == id) {
                        sessions.remove(&session);
                    }
                    if let Some(reason) = reason {
                        handle.stats.record_error(reason);
                    }
                }
                Event::Exited { id, session: None, reason } => {
                    handle.pool.remove(id);
                    if let Some(reason) = reason {
                        if handle.pool.is_empty() {
                            return Some(reason);
                        }
                        handle.stats.record_error(reason);
                    }
                    grow_to_min(handle);
                }
            },
            _ = handle.lists_changed.notified() => {
                if let Some(connection) = handle.pool.all().first() {
                    info!("server lists changed");
                    let refresh = refresh_offer(handle, &connection.peer, protocol_version.clone(), restarts);
                    tokio::select! {
                        _ = handle.stop.cancelled() => return None,
                        () = refresh => {}
                    }
                }
            }
            _ = reap.tick() => reap_idle(handle),
            // An open breaker turns half-open: hidden tools come back.
            _ = sleep_until(reopen), if reopen.is_some() => handle.servers.notify_changed(),
        }
    }
}

/// Whether the connection speaks MCP 2026-07-28 or later (no
/// `initialize`, no `ping`, no server requests).
fn is_stateless(peer: &Peer<RoleClient>) -> bool {
    peer.peer_info()
        .is_some_and(|info| !info.protocol_version.has_initialize())
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

/// Lists what the server offers (what its capabilities say it has) and
/// marks it ready. A list that fails keeps its previous contents.
async fn refresh_offer(
    handle: &ServerHandle,
    peer: &Peer<RoleClient>,
    protocol_version: Option<ProtocolVersion>,
    restarts: u32,
) {
    let previous = handle.status.read().offer.clone();
    let capabilities = peer
        .peer_info()
        .map(|info| info.capabilities.clone())
        .unwrap_or_default();
    let has_resources = capabilities.resources.is_some();
    let offer = Offer {
        tools: list_or_keep(
            handle,
            "tools/list",
            true,
            peer.list_all_tools(),
            previous.tools,
        )
        .await,
        prompts: list_or_keep(
            handle,
            "prompts/list",
            capabilities.prompts.is_some(),
            peer.list_all_prompts(),
            previous.prompts,
        )
        .await,
        resources: list_or_keep(
            handle,
            "resources/list",
            has_resources,
            peer.list_all_resources(),
            previous.resources,
        )
        .await,
        templates: list_or_keep(
            handle,
            "resources/templates/list",
            has_resources,
            peer.list_all_resource_templates(),
            previous.templates,
        )
        .await,
        capabilities,
    };
    info!(
        tools = offer.tools.len(),
        prompts = offer.prompts.len(),
        resources = offer.resources.len(),
        templates = offer.templates.len(),
        protocol = protocol_version.as_ref().map(|v| v.as_str()),
        "server ready"
    );
    handle.set_lifecycle(Lifecycle {
        state: ServerState::Ready,
        reason: String::new(),
        offer,
        restarts,
        protocol_version,
    });
}

/// One list of a server's offer; what it had before if listing fails.
async fn list_or_keep<T>(
    handle: &ServerHandle,
    what: &str,
    wanted: bool,
    listed: impl Future<Output = Result<Vec<T>, ServiceError>>,
    previous: Arc<[T]>,
) -> Arc<[T]> {
    if !wanted {
        return Arc::new([]);
    }
    match tokio::time::timeout(handle.spec.timeouts.call, listed).await {
        Ok(Ok(items)) => items.into(),
        Ok(Err(err)) => {
            handle.stats.record_error(format!("{what} failed: {err}"));
            previous
        }
        Err(_) => {
            handle.stats.record_error(format!("{what} timed out"));
            previous
        }
    }
}

fn grow_to_min(handle: &Arc<ServerHandle>) {
    if handle.pool.len() < handle.spec.pool.min as usize {
        grow(handle);
    }
}

/// Starts one more pooled connection in the background, within `pool.max`.
fn grow(handle: &Arc<ServerHandle>) {
    if handle.pool.len() >= handle.spec.pool.max as usize || handle.stop.is_cancelled() {
        handle.pool.grow_done();
        return;
    }
    let tasks = handle.servers.inner.tasks.clone();
    let handle = handle.clone();
    let task = async move {
        match start_connection(&handle, None).await {
            Ok(_) => {
                debug!(connections = handle.pool.len(), "pool grew");
                let _ = handle.events.send(Event::Grown).await;
            }
            Err(reason) => {
                handle.stats.record_error(reason);
                handle.pool.grow_done();
            }
        }
    };
    tasks.spawn(task.in_current_span());
}

fn reap_idle(handle: &ServerHandle) {
    let idle_timeout = handle.spec.pool.idle_timeout;
    let min = handle.spec.pool.min.max(1) as usize;
    let mut open = handle.pool.len();
    for connection in handle.pool.all() {
        if open <= min {
            break;
        }
        if connection.idle_for() >= idle_timeout {
            debug!(connection = connection.id, "closing idle connection");
            connection.stop.cancel();
            handle.pool.remove(connection.id);
            open -= 1;
        }
    }
}

/// Starts one connection and its task. Pooled connections (no `session`)
/// join the pool; the caller keeps per-session ones.
pub(super) async fn start_connection(
    handle: &Arc<ServerHandle>,
    session: Option<SessionKey>,
) -> Result<Arc<Connection>, String> {
    let relay = Arc::new(Relay::new(
        handle.spec.name.clone(),
        handle.spec.uri_prefix(),
        session,
        handle.servers.clients().clone(),
        handle.lists_changed.clone(),
        handle.spec.timeouts.max_call,
        // Sessions are kept apart per connection only where they share one.
        (session.is_none() && handle.spec.session_mode == SessionMode::Shared)
            .then(|| handle.asked.clone()),
    ));
    let client = DownstreamClient {
        relay: relay.clone(),
    };
    let link = Link::start(handle, client, handle.spec.timeouts.initialize)
        .await
        .map_err(|e| e.to_string())?;
    let connection = handle
        .pool
        .connection(link.peer().clone(), relay, link.direct());
    let task = run_connection(handle.clone(), connection.clone(), link, session);
    handle.servers.inner.tasks.spawn(task.in_current_span());
    if session.is_none() {
        handle.pool.add(connection.clone());
    }
    Ok(connection)
}

/// Owns one process: waits for it to exit or be stopped, probes it, and
/// reports the end to the supervisor.
async fn run_connection(
    handle: Arc<ServerHandle>,
    connection: Arc<Connection>,
    mut link: Link,
    session: Option<SessionKey>,
) {
    let health = &handle.spec.health;
    let mut probe = tokio::time::interval_at(Instant::now() + health.interval, health.interval);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0;
    let mut listener = is_stateless(&connection.peer)
        .then(|| Listener::new(connection.peer.clone(), session, handle.watched.subscribe()));
    let reason = loop {
        tokio::select! {
            _ = handle.stop.cancelled() => break None,
            _ = connection.stop.cancelled() => break None,
            reason = link.closed() => break Some(reason),
            change = next_change(&mut listener) => match change {
                Change::Lists => handle.lists_changed.notify_one(),
                Change::Resource(uri) => connection.relay.resource_updated(&uri),
            },
            _ = probe.tick() => match run_probe(&handle, &connection).await {
                Ok(()) => failures = 0,
                Err(err) => {
                    failures += 1;
                    let error = redact::urls(&err.to_string()).into_owned();
                    // A trace of its own: probes fail long after any rollout.
                    let failed = info_span!(
                        target: WORK,
                        parent: None,
                        "server.probe_failed",
                        server = %handle.spec.name,
                        failures,
                        error = %error,
                        trace_id = field::Empty,
                        span_id = field::Empty,
                    );
                    sdk::correlate(&failed);
                    let _failed = failed.enter();
                    warn!(connection = connection.id, failures, %error, "health probe failed");
                    if failures >= health.failure_threshold {
                        break Some(format!("health probe failed {failures} times in a row: {err}"));
                    }
                }
            },
        }
    };
    connection.stop.cancel();
    if reason
        .as_ref()
        .is_none_or(|r| r.starts_with("health probe"))
    {
        link.shutdown().await;
    }
    let _ = handle
        .events
        .send(Event::Exited {
            id: connection.id,
            session,
            reason,
        })
        .await;
}

/// The next change a 2026-07-28 connection's listener hears; pending for
/// ever on other connections.
async fn next_change(listener: &mut Option<Listener>) -> Change {
    match listener {
        Some(listener) => listener.next().await,
        None => std::future::pending().await,
    }
}

async fn run_probe(handle: &ServerHandle, connection: &Connection) -> Result<(), String> {
    let timeout = handle.spec.health.timeout;
    let probe = async {
        match &handle.spec.health.probe {
            // MCP 2026-07-28 has no `ping`: its servers are asked what
            // they serve, which is as cheap (and never cached here).
            Probe::Ping if is_stateless(&connection.peer) => connection
                .peer
                .send_request(ClientRequest::DiscoverRequest(DiscoverRequest::new(
                    DiscoverRequestParams {},
                )))
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Probe::Ping => connection
                .peer
                .send_request(ClientRequest::PingRequest(Default::default()))
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Probe::Tool { name, arguments } => {
                let params =
                    CallToolRequestParams::new(name.clone()).with_arguments(arguments.clone());
                match connection.peer.call_tool(params).await {
                    Ok(result) if result.is_error == Some(true) => {
                        Err(format!("probe tool `{name}` returned isError"))
                    }
                    Ok(_) => Ok(()),
                    Err(err) => Err(err.to_string()),
                }
            }
            Probe::Initialize => {
                // A throwaway connection: nothing it sends reaches a client.
                let relay = Relay::new(
                    handle.spec.name.clone(),
                    None,
                    None,
                    Default::default(),
                    Default::default(),
                    timeout,
                    None,
                );
                let client = DownstreamClient {
                    relay: Arc::new(relay),
                };
                let fresh = Link::start(handle, client, timeout)
                    .await
                    .map_err(|e| e.to_string())?;
                fresh.shutdown().await;
                Ok(())
            }
        }
    };
    tokio::time::timeout(timeout, probe)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

// === impl Link ===

impl Link {
    /// Opens a connection with the handshake the spec names. Under `auto`
    /// it starts with what the server's last connection spoke, and a server
    /// that refuses it is asked the other way (within the same `timeout`):
    /// a 2026-07-28-only server, or one rolled back to an older revision.
    async fn start(
        handle: &ServerHandle,
        client: DownstreamClient,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let discover = match handle.spec.handshake {
            Handshake::Discover => true,
            Handshake::Initialize => false,
            Handshake::Auto => handle.stateless.load(Ordering::Relaxed),
        };
        let started = Instant::now();
        let link = match Self::start_with(handle, client.clone(), timeout, discover).await {
            Err(Error::Refused { handshake, reason })
                if handle.spec.handshake == Handshake::Auto =>
            {
                let other = if discover {
                    "initialize"
                } else {
                    "server/discover"
                };
                info!(%reason, "the server refused {handshake}: trying {other}");
                let left = timeout.saturating_sub(started.elapsed());
                Self::start_with(handle, client, left, !discover)
                    .await
                    .map_err(|error| {
                        Error::Initialize(format!("{handshake} refused ({reason}), then {error}"))
                    })?
            }
            started => started?,
        };
        handle
            .stateless
            .store(is_stateless(link.peer()), Ordering::Relaxed);
        Ok(link)
    }

    async fn start_with(
        handle: &ServerHandle,
        client: DownstreamClient,
        timeout: Duration,
        discover: bool,
    ) -> Result<Self, Error> {
        Ok(match &handle.spec.transport {
            Transport::Stdio(spec) => {
                let launcher = &handle.servers.inner.launcher;
                let connection = StdioConnection::start(
                    &handle.spec.name,
                    spec,
                    launcher,
                    client,
                    timeout,
                    discover,
                );
                Link::Stdio(connection.await?)
            }
            Transport::Http(spec) => {
                Link::Http(HttpConnection::start(spec, client, timeout, discover).await?)
            }
            Transport::Sse(spec) => {
                let launch = (&handle.servers.inner.launcher, &handle.sse_launch);
                let connection =
                    SseConnection::start(&handle.spec.name, spec, launch, client, timeout);
                Link::Sse(connection.await?)
            }
        })
    }

    fn direct(&self) -> Option<Arc<Direct>> {
        match self {
            Link::Stdio(stdio) => Some(stdio.direct.clone()),
            Link::Http(_) | Link::Sse(_) => None,
        }
    }

    fn peer(&self) -> &Peer<RoleClient> {
        match self {
            Link::Stdio(stdio) => stdio.service.peer(),
            Link::Http(http) => http.peer(),
            Link::Sse(sse) => sse.peer(),
        }
    }

    /// Resolves when the connection is gone, with the reason.
    async fn closed(&mut self) -> String {
        match self {
            Link::Stdio(stdio) => stdio.exited().await,
            Link::Http(http) => http.closed().await,
            Link::Sse(sse) => sse.closed().await,
        }
    }

    async fn shutdown(self) {
        match self {
            Link::Stdio(stdio) => stdio.shutdown().await,
            Link::Http(http) => http.shutdown().await,
            Link::Sse(sse) => sse.shutdown().await,
        }
    }
}
