//! The light driver: MCP load from request bytes built once, sent on
//! kept-alive HTTP/1.1 connections (`http1`) or a stdio server's pipe
//! (`stdio`), every answer checked (`reply`), all on one thread of its own.
//!
//! It exists because a full client's own cost per call (rmcp's, about
//! 0.2 ms here) sits in both the gateway's latency and the ceiling's and
//! flattens their ratio. Each session still does the real handshake
//! (`initialize`, `Mcp-Session-Id`, `notifications/initialized`); after
//! that a call costs a patched id, one write, and a read that stops at the
//! response's last byte.

mod http1;
mod reply;
mod stdio;

use std::{
    future::Future,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::join_all;
use serde_json::json;
use tokio::{
    runtime,
    sync::{Mutex, oneshot},
};

use crate::measure::{OwnCpu, Sample};
use http1::{Connection, Endpoint, FIRST_ID, LAST_ID, Request, rpc_body};
use reply::{Expect, check_http};
use stdio::StdioServer;

/// The protocol version the driver negotiates (the one the reqwest-based
/// client of the other scenarios speaks).
pub const PROTOCOL_VERSION: &str = "2025-06-18";
/// Longest wait for one answer; past it the connection is given up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call or handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("answer is not JSON-RPC: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no JSON-RPC response with id {0}")]
    NoReply(u64),
    #[error("JSON-RPC error {code}: {message}")]
    JsonRpc { code: i64, message: String },
    #[error("JSON-RPC response without a result")]
    NoResult,
    #[error("the tool answered with isError: true")]
    ToolFailed,
    #[error("the tool's answer does not echo the text sent")]
    WrongResult,
    #[error("no answer within {REQUEST_TIMEOUT:?}")]
    Timeout,
    /// The driver's thread is gone, or the floor's pipe was left with
    /// calls unanswered by an earlier load.
    #[error("the driver or its server is unusable")]
    Broken,
}

/// One `tools/call` as the driver sends and checks it.
pub struct Call {
    /// `{"name":..,"arguments":{"text":..}}`, serialized once.
    params: Vec<u8>,
    /// What a correct answer's first content block says.
    text: String,
}

/// A current-thread runtime on a thread of its own, so the driver's work
/// never queues behind or steals from anything else in the harness, and
/// its cost is one thread's.
pub struct Driver {
    handle: runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A stdio server the driver calls directly (the floor). Its pipes live
/// in the driver's runtime.
pub struct Floor {
    server: Arc<Mutex<StdioServer>>,
    pid: Option<u32>,
}

/// One MCP session on its own connection.
struct Session {
    connection: Connection,
    /// `None` for a server without sessions (stateless streamable HTTP).
    id: Option<String>,
    call: Request,
}

// === impl Error ===

impl Error {
    /// Whether the connection's framing can no longer be trusted.
    fn breaks_connection(&self) -> bool {
        matches!(
            self,
            Error::Io(_) | Error::Closed | Error::Malformed(_) | Error::Timeout | Error::Broken
        )
    }
}

// === impl Call ===

impl Call {
    /// `tool` called with `{"text": text}`; a correct answer echoes `text`.
    pub fn echo(tool: &str, text: &str) -> Self {
        let params = json!({ "name": tool, "arguments": { "text": text } });
        Self {
            params: params.to_string().into_bytes(),
            text: text.to_owned(),
        }
    }

    fn expect(&self) -> Expect<'_> {
        Expect::Echo(&self.text)
    }
}

// === impl Driver ===

impl Driver {
    pub fn start() -> anyhow::Result<Self> {
        let runtime = runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("light-driver".to_owned())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `concurrency` sessions, each on a connection of its own, calling
    /// for `duration`. Sessions are opened before and deleted after the
    /// measured window; the driver's CPU is taken over the window only.
    pub async fn http(
        &self,
        url: &str,
        call: Arc<Call>,
        concurrency: usize,
        duration: Duration,
    ) -> Sample {
        let Some(endpoint) = Endpoint::parse(url) else {
            return Sample::failed(format!("not an http://ip:port/path URL: {url}"));
        };
        self.run(http_load(endpoint, call, concurrency, duration))
            .await
            .unwrap_or_else(Sample::failed)
    }

    /// Starts `program args..` as a stdio MCP server and does the handshake.
    pub async fn spawn_stdio(&self, program: &Path, args: &[&str]) -> anyhow::Result<Floor> {
        let program = program.to_owned();
        let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
        let server = self
            .run(async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                StdioServer::spawn(&program, &args).await
            })
            .await??;
        Ok(Floor {
            pid: server.pid(),
            server: Arc::new(Mutex::new(server)),
        })
    }

    /// `concurrency` calls in flight on the floor's pipe for `duration`.
    pub async fn stdio(
        &self,
        floor: &Floor,
        call: Arc<Call>,
        concurrency: usize,
        duration: Duration,
    ) -> Sample {
        let server = floor.server.clone();
        self.run(async move { server.lock().await.load(&call, concurrency, duration).await })
            .await
            .unwrap_or_else(Sample::failed)
    }

    /// Runs `future` on the driver's thread.
    async fn run<F>(&self, future: F) -> Result<F::Output, Error>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future).await.map_err(|_| Error::Broken)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// === impl Floor ===

impl Floor {
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }
}

// === impl Session ===

impl Session {
    async fn open(endpoint: &Endpoint, call: &Call) -> Result<Self, Error> {
        let mut connection = Connection::open(endpoint).await?;
        let initialize = rpc_body("initialize", initialize_params().as_bytes());
        let request = Request::post(endpoint, None, &initialize.bytes);
        let head = exchange(&mut connection, request.bytes(), true).await?;
        check_http(&head, connection.body(), FIRST_ID, &Expect::Result)?;
        let id = head.session;
        let initialized = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        let request = Request::post(endpoint, id.as_deref(), initialized);
        let head = exchange(&mut connection, request.bytes(), false).await?;
        if !(200..300).contains(&head.status) {
            return Err(Error::Status(head.status));
        }
        Ok(Self {
            call: Request::rpc(endpoint, id.as_deref(), "tools/call", &call.params),
            connection,
            id,
        })
    }

    /// Calls until `deadline`. A broken connection is replaced by a new
    /// session; `None` back when even that failed.
    async fn run(
        mut self,
        endpoint: Endpoint,
        call: Arc<Call>,
        deadline: Instant,
    ) -> (Sample, Option<Self>) {
        let mut sample = Sample::default();
        let mut id = FIRST_ID;
        while Instant::now() < deadline {
            self.call.set_id(id);
            let started = Instant::now();
            let answer = exchange(&mut self.connection, self.call.bytes(), false).await;
            let took = started.elapsed();
            let (outcome, reconnect) = match answer {
                Ok(head) => (
                    check_http(&head, self.connection.body(), id, &call.expect()),
                    head.closes,
                ),
                Err(err) => {
                    let broken = err.breaks_connection();
                    (Err(err), broken)
                }
            };
            sample.record(took, outcome);
            if reconnect {
                match Session::open(&endpoint, &call).await {
                    Ok(fresh) => self = fresh,
                    Err(err) => {
                        sample.fail(format!("reopening a session: {err}"));
                        return (sample, None);
                    }
                }
            }
            id = if id == LAST_ID { FIRST_ID } else { id + 1 };
        }
        (sample, Some(self))
    }

    /// Deletes the session, so idle ones do not pile up across loads.
    async fn close(mut self, endpoint: &Endpoint) {
        if let Some(id) = &self.id {
            let request = Request::delete(endpoint, id);
            let _ = exchange(&mut self.connection, request.bytes(), false).await;
        }
    }
}

async fn http_load(
    endpoint: Endpoint,
    call: Arc<Call>,
    concurrency: usize,
    duration: Duration,
) -> Sample {
    let mut sample = Sample::default();
    let mut sessions = Vec::with_capacity(concurrency);
    let opened = join_all((0..concurrency).map(|_| Session::open(&endpoint, &call))).await;
    for session in opened {
        match session {
            Ok(session) => sessions.push(session),
            Err(err) => sample.fail(format!("opening a session: {err}")),
        }
    }
    let cpu_before = OwnCpu::now();
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = sessions
        .into_iter()
        .map(|session| tokio::spawn(session.run(endpoint.clone(), call.clone(), deadline)))
        .collect();
    let mut finished = Vec::with_capacity(workers.len());
    for worker in workers {
        match worker.await {
            Ok((worker_sample, session)) => {
                sample.merge(worker_sample);
                finished.extend(session);
            }
            Err(err) => sample.fail(err),
        }
    }
    sample.elapsed = started.elapsed();
    sample.driver_cpu = OwnCpu::since(cpu_before);
    join_all(finished.into_iter().map(|s| s.close(&endpoint))).await;
    sample
}

/// One request and its whole answer, bounded by [`REQUEST_TIMEOUT`].
async fn exchange(
    connection: &mut Connection,
    request: &[u8],
    want_session: bool,
) -> Result<http1::Head, Error> {
    tokio::time::timeout(REQUEST_TIMEOUT, connection.exchange(request, want_session))
        .await
        .unwrap_or(Err(Error::Timeout))
}

fn initialize_params() -> String {
    format!(
        r#"{{"protocolVersion":"{PROTOCOL_VERSION}","capabilities":{{}},"clientInfo":{{"name":"switchboard-bench","version":"0"}}}}"#
    )
}
