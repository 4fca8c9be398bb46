//! Downstream servers: the set of MCP servers this replica runs, each with
//! a supervisor task that starts it, watches it, restarts it with backoff
//! and tears it down. [`Servers::apply`] is the only writer; it diffs the
//! desired set against the running one so unchanged servers are untouched.

pub mod stdio;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use parking_lot::RwLock;
use rmcp::{
    ClientHandler,
    model::{ClientCapabilities, ClientConfig, Implementation, ProtocolVersion, Tool},
    service::{NotificationContext, Peer, RoleClient},
};
use tokio::sync::{Notify, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, info, info_span, warn};

use crate::spec::{ServerSpec, Transport};
use stdio::StdioConnection;

/// Restart backoff: from the first delay, doubling up to the cap. A server
/// that stayed up for `STABLE_AFTER` starts again from the first delay.
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(500);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
const STABLE_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("initialize failed: {0}")]
    Initialize(String),
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// The servers this replica runs; cheap to clone.
#[derive(Clone)]
pub struct Servers {
    inner: Arc<ServersInner>,
}

struct ServersInner {
    by_name: RwLock<BTreeMap<Arc<str>, Arc<ServerHandle>>>,
    /// Bumped on every change of the set or of any server's status.
    changed: watch::Sender<u64>,
    /// Parent of every server's stop token.
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// One configured server and its supervisor.
pub struct ServerHandle {
    pub spec: ServerSpec,
    status: RwLock<ServerStatus>,
    stop: CancellationToken,
}

/// What a server is doing now.
#[derive(Clone, Debug)]
pub struct ServerStatus {
    pub state: ServerState,
    /// Why the server failed; empty otherwise.
    pub reason: String,
    pub tools: Arc<[Tool]>,
    pub restarts: u32,
    /// Negotiated with the server; set once ready.
    pub protocol_version: Option<ProtocolVersion>,
    /// Set while ready.
    pub peer: Option<Peer<RoleClient>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    Starting,
    Ready,
    Failed,
}

/// The gateway's MCP client role towards one downstream server.
#[derive(Clone)]
pub struct DownstreamClient {
    tools_changed: Arc<Notify>,
}

// === impl Servers ===

impl Servers {
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            inner: Arc::new(ServersInner {
                by_name: RwLock::default(),
                changed: watch::Sender::new(0),
                shutdown,
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// Makes the running set match `desired`: stops removed servers,
    /// restarts changed ones, starts new ones. Returns at once; servers
    /// start in the background.
    pub fn apply(&self, desired: BTreeMap<Arc<str>, ServerSpec>) {
        let mut by_name = self.inner.by_name.write();
        by_name.retain(|name, handle| {
            let keep = desired.get(name) == Some(&handle.spec);
            if !keep {
                info!(server = %name, "stopping server");
                handle.stop.cancel();
            }
            keep
        });
        for (name, spec) in desired {
            if by_name.contains_key(&name) {
                continue;
            }
            info!(server = %name, "starting server");
            let handle = Arc::new(ServerHandle {
                spec,
                status: RwLock::new(ServerStatus::starting(0)),
                stop: self.inner.shutdown.child_token(),
            });
            // A root span: a server outlives the config stream that started it.
            let span = info_span!(parent: None, "server", server = %name);
            self.inner
                .tasks
                .spawn(supervise(handle.clone(), self.clone()).instrument(span));
            by_name.insert(name, handle);
        }
        drop(by_name);
        self.notify_changed();
    }

    /// The current servers, by name.
    pub fn list(&self) -> Vec<Arc<ServerHandle>> {
        self.inner.by_name.read().values().cloned().collect()
    }

    pub fn spec(&self, name: &str) -> Option<ServerSpec> {
        self.inner.by_name.read().get(name).map(|h| h.spec.clone())
    }

    /// Ticks whenever the set or any server's status changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Stops every server and waits until all processes are reaped.
    /// The shutdown token passed to [`Servers::new`] must be cancelled first.
    pub async fn wait_stopped(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn notify_changed(&self) {
        self.inner
            .changed
            .send_modify(|generation| *generation += 1);
    }
}

// === impl ServerHandle ===

impl ServerHandle {
    pub fn status(&self) -> ServerStatus {
        self.status.read().clone()
    }

    fn set_status(&self, servers: &Servers, status: ServerStatus) {
        *self.status.write() = status;
        servers.notify_changed();
    }
}

// === impl ServerStatus ===

impl ServerStatus {
    fn starting(restarts: u32) -> Self {
        Self {
            state: ServerState::Starting,
            reason: String::new(),
            tools: Arc::new([]),
            restarts,
            protocol_version: None,
            peer: None,
        }
    }
}

/// Runs one server until its stop token fires: start, serve, and on exit
/// record the reason and start again after a backoff.
async fn supervise(handle: Arc<ServerHandle>, servers: Servers) {
    let mut restarts = 0;
    let mut delay = FIRST_RESTART_DELAY;
    loop {
        handle.set_status(&servers, ServerStatus::starting(restarts));
        let tools_changed = Arc::new(Notify::new());
        let client = DownstreamClient {
            tools_changed: tools_changed.clone(),
        };
        let Transport::Stdio(spec) = &handle.spec.transport;
        let started = tokio::select! {
            _ = handle.stop.cancelled() => return,
            started = StdioConnection::start(&handle.spec.name, spec, client) => started,
        };
        let reason = match started {
            Ok(connection) => {
                let began = tokio::time::Instant::now();
                match serve(&handle, &servers, connection, &tools_changed, restarts).await {
                    Some(reason) => {
                        if began.elapsed() >= STABLE_AFTER {
                            delay = FIRST_RESTART_DELAY;
                        }
                        reason
                    }
                    None => return,
                }
            }
            Err(err) => err.to_string(),
        };
        warn!(reason = %reason, retry_in = ?delay, "server failed");
        handle.set_status(
            &servers,
            ServerStatus {
                state: ServerState::Failed,
                reason,
                ..ServerStatus::starting(restarts)
            },
        );
        tokio::select! {
            _ = handle.stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RESTART_DELAY);
        restarts += 1;
    }
}

/// Serves a started connection. Returns the failure reason when the
/// process dies, or `None` after a requested stop.
async fn serve(
    handle: &ServerHandle,
    servers: &Servers,
    mut connection: StdioConnection,
    tools_changed: &Notify,
    restarts: u32,
) -> Option<String> {
    let peer = connection.service.peer().clone();
    let protocol_version = peer.peer_info().map(|info| info.protocol_version.clone());
    loop {
        let tools = tokio::select! {
            _ = handle.stop.cancelled() => break,
            reason = connection.exited() => return Some(reason),
            tools = peer.list_all_tools() => tools,
        };
        match tools {
            Ok(tools) => {
                info!(tools = tools.len(), protocol = ?protocol_version, "server ready");
                handle.set_status(
                    servers,
                    ServerStatus {
                        state: ServerState::Ready,
                        reason: String::new(),
                        tools: tools.into(),
                        restarts,
                        protocol_version: protocol_version.clone(),
                        peer: Some(peer.clone()),
                    },
                );
            }
            Err(err) => {
                connection.shutdown().await;
                return Some(format!("tools/list failed: {err}"));
            }
        }
        tokio::select! {
            _ = handle.stop.cancelled() => break,
            reason = connection.exited() => return Some(reason),
            _ = tools_changed.notified() => info!("server tool list changed"),
        }
    }
    connection.shutdown().await;
    info!("server stopped");
    None
}

// === impl DownstreamClient ===

impl ClientHandler for DownstreamClient {
    fn get_info(&self) -> ClientConfig {
        // No sampling/elicitation/roots yet: a shared server cannot call
        // back into one client session, so do not let it ask.
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("switchboard-gateway", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.tools_changed.notify_one();
    }
}
