//! stdio connections: one child process per connection, started through
//! the stdio shim (see `shim.rs`) in its own process group so teardown
//! reaches grandchildren and nothing outlives the gateway; a scrubbed
//! environment; stderr forwarded into the gateway's log, rate-limited.
//! However a process is let go of (stopped, failed to start, or dropped
//! mid-start when its server is removed or the gateway stops), its whole
//! tree ends: see [`ProcessTree`].
//! [`Launched`] is the same kind of process without MCP on its pipes, for
//! servers reached over the network that the gateway starts itself.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use process_wrap::tokio::{ChildWrapper, CommandWrap, ProcessGroup};
use rmcp::service::{RoleClient, RunningService, serve_client_with_lifecycle};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, debug, info, warn};

use super::{
    DownstreamClient, Error,
    lines::{Direct, LineTransport},
};
use crate::spec::StdioSpec;

/// Variables a server inherits from the gateway; everything else (tokens,
/// cloud credentials) stays out unless the `McpServer` sets it.
const INHERITED_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "TZ",
];

/// After stdin closes, how long to wait for a clean exit before SIGTERM,
/// and again before SIGKILL.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// After an exit, how long to wait for the rest of stderr: the last line
/// usually says why.
const STDERR_DRAIN: Duration = Duration::from_millis(500);
/// stderr lines logged per second per process; a chatty server must not
/// flood the gateway's log. Excess lines are counted, not logged.
const STDERR_LINES_PER_SEC: u32 = 50;
const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;

/// How this replica starts stdio servers.
#[derive(Clone, Debug, Default)]
pub struct Launcher {
    /// The `switchboard-gateway` binary to run `stdio-shim` from; `None`
    /// starts servers directly (no protection if the gateway is killed).
    pub shim: Option<PathBuf>,
    /// Where each server gets a HOME and a TMPDIR of its own
    /// (`<dir>/<server>/home`, `…/tmp`), so servers sharing a gateway do not
    /// share caches, credentials or temp files; `None` inherits the
    /// gateway's.
    pub server_homes: Option<PathBuf>,
}

/// A running, initialised stdio server.
pub struct StdioConnection {
    pub service: RunningService<RoleClient, DownstreamClient>,
    /// `tools/call` past rmcp, on the same pipes.
    pub direct: Arc<Direct>,
    child: ProcessTree,
    last_stderr: Arc<Mutex<String>>,
    stderr: AbortOnDropHandle<()>,
}

// === impl StdioConnection ===

impl StdioConnection {
    /// Starts the process and runs the MCP handshake within `timeout`.
    pub async fn start(
        server: &str,
        spec: &StdioSpec,
        launcher: &Launcher,
        client: DownstreamClient,
        timeout: Duration,
        discover: bool,
    ) -> Result<Self, Error> {
        let own_dirs = match &launcher.server_homes {
            Some(root) => Some(own_dirs(root, server).await?),
            None => None,
        };
        let mut child = spawn(spec, launcher, own_dirs.as_ref(), Stdio::piped())?;
        info!(pid = child.id(), command = %spec.command, "server process started");
        let (Some(stdin), Some(stdout), Some(stderr)) = (
            child.stdin().take(),
            child.stdout().take(),
            child.stderr().take(),
        ) else {
            return Err(Error::Protocol("child stdio was not piped".into()));
        };
        let last_stderr = Arc::new(Mutex::new(String::new()));
        let mut stderr_task = AbortOnDropHandle::new(tokio::spawn(
            forward_stderr(server.to_owned(), stderr, last_stderr.clone()).in_current_span(),
        ));

        let lines = LineTransport::new(stdout, stdin);
        let direct = lines.direct();
        let transport = client.relay.sequenced(lines);
        let handshake = serve_client_with_lifecycle(client, transport, super::lifecycle(discover));
        let service = match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(service)) => service,
            Ok(Err(error))
                if let Some(refusal) = super::refused(&error, discover, &spec.command) =>
            {
                terminate(&mut child).await;
                return Err(refusal);
            }
            failed => {
                let mut reason = match tokio::time::timeout(STDERR_DRAIN, child.wait()).await {
                    Ok(status) => {
                        let _ = tokio::time::timeout(STDERR_DRAIN, &mut stderr_task).await;
                        describe_exit(status, &last_stderr.lock())
                    }
                    Err(_) => with_stderr(
                        "process did not complete the MCP handshake".into(),
                        &last_stderr.lock(),
                    ),
                };
                if let Err(_elapsed) = failed {
                    reason = format!("no initialize response within {timeout:?}; {reason}");
                }
                terminate(&mut child).await;
                return Err(Error::Initialize(reason));
            }
        };
        Ok(Self {
            service,
            direct,
            child,
            last_stderr,
            stderr: stderr_task,
        })
    }

    /// Resolves when the process exits, with a reason fit for `/healthz`.
    pub async fn exited(&mut self) -> String {
        let status = self.child.wait().await;
        let _ = tokio::time::timeout(STDERR_DRAIN, &mut self.stderr).await;
        describe_exit(status, &self.last_stderr.lock())
    }

    /// Closes stdin, then escalates to SIGTERM and SIGKILL on the whole
    /// process group. Returns once the process is reaped.
    pub async fn shutdown(mut self) {
        let _ = self.service.close_with_timeout(EXIT_GRACE).await;
        stop(&mut self.child).await;
    }
}

/// A process the gateway runs beside a network connection to it.
pub struct Launched {
    child: ProcessTree,
    last_output: Arc<Mutex<String>>,
    _output: [AbortOnDropHandle<()>; 2],
}

// === impl Launched ===

impl Launched {
    /// Starts the process; its stdout and stderr go to the log.
    pub async fn start(server: &str, spec: &StdioSpec, launcher: &Launcher) -> Result<Self, Error> {
        let own_dirs = match &launcher.server_homes {
            Some(root) => Some(own_dirs(root, server).await?),
            None => None,
        };
        let mut child = spawn(spec, launcher, own_dirs.as_ref(), Stdio::null())?;
        info!(pid = child.id(), command = %spec.command, "server process started");
        let (Some(stdout), Some(stderr)) = (child.stdout().take(), child.stderr().take()) else {
            return Err(Error::Protocol("child output was not piped".into()));
        };
        let last_output = Arc::new(Mutex::new(String::new()));
        let forward = |output| {
            let task = forward_stderr(server.to_owned(), output, last_output.clone());
            AbortOnDropHandle::new(tokio::spawn(task.in_current_span()))
        };
        let output = [
            forward(Box::new(stdout) as Output),
            forward(Box::new(stderr)),
        ];
        Ok(Self {
            child,
            last_output,
            _output: output,
        })
    }

    /// Resolves when the process exits, with a reason fit for `/healthz`.
    pub async fn exited(&mut self) -> String {
        let status = self.child.wait().await;
        tokio::time::sleep(STDERR_DRAIN).await;
        describe_exit(status, &self.last_output.lock())
    }

    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    pub async fn shutdown(mut self) {
        stop(&mut self.child).await;
    }
}

/// A server's process group (the shim, the server, what it started). Let
/// go of while it may still run (a start abandoned because its server was
/// removed or the gateway is stopping), it is stopped without waiting: the
/// shim is told to end its group (it escalates to SIGKILL and reaps
/// re-parented descendants on its own, so it must not be killed first); a
/// group without a shim is killed. tokio reaps the process afterwards.
struct ProcessTree {
    child: Box<dyn ChildWrapper>,
    shim: bool,
}

// === impl ProcessTree ===

impl std::ops::Deref for ProcessTree {
    type Target = dyn ChildWrapper;

    fn deref(&self) -> &Self::Target {
        &*self.child
    }
}

impl std::ops::DerefMut for ProcessTree {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut *self.child
    }
}

impl Drop for ProcessTree {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let signal = if self.shim { SIGTERM } else { SIGKILL };
        debug!(
            pid = self.child.id(),
            signal, "stopping a server process let go of while running"
        );
        if let Err(error) = self.child.signal(signal) {
            warn!(%error, "cannot stop a server process group");
        }
    }
}

/// Waits for a clean exit, then escalates to SIGTERM and SIGKILL on the
/// whole process group. Returns once the process is reaped.
async fn stop(child: &mut ProcessTree) {
    if tokio::time::timeout(EXIT_GRACE, child.wait()).await.is_ok() {
        return;
    }
    terminate(child).await;
}

/// SIGTERM to the whole process group, then SIGKILL if it is still there.
/// Returns once the process is reaped.
async fn terminate(child: &mut ProcessTree) {
    // The shim passes SIGTERM on and gives the group its own grace period.
    if child.signal(SIGTERM).is_ok()
        && tokio::time::timeout(EXIT_GRACE * 2, child.wait())
            .await
            .is_ok()
    {
        return;
    }
    warn!("server ignored SIGTERM, killing its process group");
    kill(child).await;
}

/// A server's own HOME and TMPDIR.
struct OwnDirs {
    home: PathBuf,
    tmp: PathBuf,
}

/// Creates (if need be) `server`'s own HOME and TMPDIR under `root`,
/// readable by the gateway's user alone.
async fn own_dirs(root: &Path, server: &str) -> Result<OwnDirs, Error> {
    // A cluster server's identity is `<namespace>/<name>`: one directory.
    let dir = root.join(server.replace('/', "_"));
    let dirs = OwnDirs {
        home: dir.join("home"),
        tmp: dir.join("tmp"),
    };
    for path in [&dir, &dirs.home, &dirs.tmp] {
        let mut builder = tokio::fs::DirBuilder::new();
        builder.recursive(true).mode(0o700);
        builder.create(path).await.map_err(|source| Error::Spawn {
            command: format!("(creating {})", path.display()),
            source,
        })?;
    }
    Ok(dirs)
}

fn spawn(
    spec: &StdioSpec,
    launcher: &Launcher,
    own_dirs: Option<&OwnDirs>,
    stdin: Stdio,
) -> Result<ProcessTree, Error> {
    let mut command = match &launcher.shim {
        Some(shim) => {
            let mut command = tokio::process::Command::new(shim);
            command
                .arg("stdio-shim")
                .arg("--parent")
                .arg(std::process::id().to_string())
                .arg("--")
                .arg(&spec.command);
            command
        }
        None => tokio::process::Command::new(&spec.command),
    };
    command.args(&spec.args).env_clear().envs(
        INHERITED_ENV
            .iter()
            .filter_map(|k| Some((k, std::env::var_os(k)?))),
    );
    if let Some(dirs) = own_dirs {
        // The spec's own env still has the last word.
        command.env("HOME", &dirs.home).env("TMPDIR", &dirs.tmp);
    }
    command
        .envs(&spec.env)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    let mut wrapped = CommandWrap::from(command);
    wrapped.wrap(ProcessGroup::leader());
    let child = wrapped.spawn().map_err(|source| Error::Spawn {
        command: spec.command.clone(),
        source,
    })?;
    Ok(ProcessTree {
        child,
        shim: launcher.shim.is_some(),
    })
}

async fn kill(child: &mut ProcessTree) {
    let _ = Box::into_pin(child.kill()).await;
}

fn describe_exit(status: std::io::Result<std::process::ExitStatus>, last_stderr: &str) -> String {
    let what = match status {
        Ok(status) => format!("process exited ({status})"),
        Err(err) => format!("process state unknown: {err}"),
    };
    with_stderr(what, last_stderr)
}

fn with_stderr(what: String, last_stderr: &str) -> String {
    if last_stderr.is_empty() {
        what
    } else {
        format!("{what}; last stderr line: {last_stderr}")
    }
}

/// A process's output stream.
type Output = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// Logs the server's stderr line by line (at most `STDERR_LINES_PER_SEC`)
/// and remembers the last line for failure reasons.
async fn forward_stderr(
    server: String,
    stderr: impl tokio::io::AsyncRead + Unpin,
    last: Arc<Mutex<String>>,
) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    let mut second = Instant::now();
    let (mut logged, mut dropped) = (0u32, 0u64);
    while let Ok(n) = reader.read_until(b'\n', &mut buf).await {
        if n == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
        buf.clear();
        if second.elapsed() >= Duration::from_secs(1) {
            if dropped > 0 {
                warn!(server = %server, dropped, "stderr rate limit: lines not logged");
            }
            (second, logged, dropped) = (Instant::now(), 0, 0);
        }
        if logged < STDERR_LINES_PER_SEC {
            logged += 1;
            info!(server = %server, "stderr: {line}");
        } else {
            dropped += 1;
            debug!(server = %server, "stderr (over rate limit): {line}");
        }
        *last.lock() = line;
    }
}
