//! stdio downstreams: one child process per server, in its own process
//! group so teardown reaches grandchildren (`npx`, `uvx` wrappers), with a
//! scrubbed environment and stderr forwarded into the gateway's log.

use std::{process::Stdio, sync::Arc, time::Duration};

use parking_lot::Mutex;
use process_wrap::tokio::{ChildWrapper, CommandWrap, KillOnDrop, ProcessGroup};
use rmcp::{
    ServiceExt,
    service::{RoleClient, RunningService},
    transport::async_rw::AsyncRwTransport,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, info, warn};

use super::{DownstreamClient, Error};
use crate::spec::StdioSpec;

/// Variables a server inherits from the gateway; everything else (tokens,
/// cloud credentials) stays out unless the `McpServer` sets it.
const INHERITED_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "TZ",
];

/// How long a server may take to answer `initialize`.
const INITIALIZE_TIMEOUT: Duration = Duration::from_secs(30);
/// After stdin closes, how long to wait for a clean exit before SIGTERM,
/// and again before SIGKILL.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// After an exit, how long to wait for the rest of stderr: the last line
/// usually says why.
const STDERR_DRAIN: Duration = Duration::from_millis(500);
const SIGTERM: i32 = 15;

/// A running, initialised stdio server.
pub struct StdioConnection {
    pub service: RunningService<RoleClient, DownstreamClient>,
    child: Box<dyn ChildWrapper>,
    last_stderr: Arc<Mutex<String>>,
    stderr: AbortOnDropHandle<()>,
}

// === impl StdioConnection ===

impl StdioConnection {
    /// Starts the process and runs the MCP handshake.
    pub async fn start(
        server: &str,
        spec: &StdioSpec,
        client: DownstreamClient,
    ) -> Result<Self, Error> {
        let mut command = tokio::process::Command::new(&spec.command);
        command
            .args(&spec.args)
            .env_clear()
            .envs(
                INHERITED_ENV
                    .iter()
                    .filter_map(|k| Some((k, std::env::var_os(k)?))),
            )
            .envs(&spec.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cwd) = &spec.cwd {
            command.current_dir(cwd);
        }
        let mut wrapped = CommandWrap::from(command);
        wrapped.wrap(ProcessGroup::leader()).wrap(KillOnDrop);
        let mut child = wrapped.spawn().map_err(|source| Error::Spawn {
            command: spec.command.clone(),
            source,
        })?;
        info!(pid = ?child.id(), command = %spec.command, "server process started");

        let (Some(stdin), Some(stdout), Some(stderr)) = (
            child.stdin().take(),
            child.stdout().take(),
            child.stderr().take(),
        ) else {
            return Err(Error::Protocol("child stdio was not piped".into()));
        };
        let last_stderr = Arc::new(Mutex::new(String::new()));
        let stderr_task = AbortOnDropHandle::new(tokio::spawn(
            forward_stderr(server.to_owned(), stderr, last_stderr.clone()).in_current_span(),
        ));

        let transport = AsyncRwTransport::new_client(stdout, stdin);
        let handshake = tokio::time::timeout(INITIALIZE_TIMEOUT, client.serve(transport)).await;
        let service = match handshake {
            Ok(Ok(service)) => service,
            failed => {
                let mut stderr_task = stderr_task;
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
                    reason =
                        format!("no initialize response within {INITIALIZE_TIMEOUT:?}; {reason}");
                }
                kill(&mut child).await;
                return Err(Error::Initialize(reason));
            }
        };
        Ok(Self {
            service,
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
        if tokio::time::timeout(EXIT_GRACE, self.child.wait())
            .await
            .is_ok()
        {
            return;
        }
        if self.child.signal(SIGTERM).is_ok()
            && tokio::time::timeout(EXIT_GRACE, self.child.wait())
                .await
                .is_ok()
        {
            return;
        }
        warn!("server ignored SIGTERM, killing its process group");
        kill(&mut self.child).await;
    }
}

async fn kill(child: &mut Box<dyn ChildWrapper>) {
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

/// Logs the server's stderr line by line and remembers the last line for
/// failure reasons.
async fn forward_stderr(
    server: String,
    stderr: tokio::process::ChildStderr,
    last: Arc<Mutex<String>>,
) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    while let Ok(n) = reader.read_until(b'\n', &mut buf).await {
        if n == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
        buf.clear();
        info!(server = %server, "stderr: {line}");
        *last.lock() = line;
    }
}
