//! The gateway's end of a stdio server's pipes: newline-delimited JSON-RPC.
//!
//! rmcp's own line transport reads through an 8 KiB buffer, looks for each
//! line end byte by byte and writes every message with its own write. A
//! 100 KiB result then costs a dozen reads and a slow scan, and a busy
//! connection wakes the server once per request. Here line ends are found
//! with `memchr` in 64 KiB reads, and one writer task sends every message
//! queued at that moment in one write.
//!
//! Lines that are not JSON (servers that log to stdout) are skipped and
//! logged at debug, JSON that is not MCP with throttled warnings; lines
//! longer than [`MAX_LINE`] are dropped without being held in memory. EOF
//! or a read error ends the connection, which the supervisor then restarts.
//!
//! A server that cannot parse a line answers with a JSON-RPC error whose
//! id is null; that error goes to the request written last on the
//! connection, which would otherwise wait out its whole timeout.
//!
//! [`Direct`] sends `tools/call` requests past rmcp: their ids are strings
//! (`"sb:<n>"`) that rmcp, which numbers its own, never uses, so their
//! responses are told apart here and handed over with the result unparsed.

use std::{
    borrow::Cow,
    collections::HashMap,
    future::Future,
    io,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use rmcp::{
    ErrorData,
    model::{
        ClientJsonRpcMessage, JsonRpcError, NumberOrString, ProgressToken, ServerJsonRpcMessage,
    },
    service::RoleClient,
    transport::Transport,
};
use serde::{Deserialize, Serialize, de::IgnoredAny};
use serde_json::value::RawValue;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::{Instrument, debug, warn};

/// Longest message accepted from a server (rmcp's limit too).
const MAX_LINE: usize = 16 * 1024 * 1024;
/// How much room a read gets when the buffer runs out.
const READ_CHUNK: usize = 64 * 1024;
/// Less room than this and the buffer is grown before reading.
const MIN_READ: usize = 4 * 1024;
/// Room for what a message adds to its params: envelope, id, method.
const LINE_OVERHEAD: usize = 128;
/// Messages waiting for the writer before senders wait too.
const WRITE_QUEUE: usize = 256;

/// What the ids of direct requests start with.
const DIRECT_ID_PREFIX: &str = "sb:";

/// A message on its way to the server, and who waits for it to be written.
struct Outgoing {
    line: Vec<u8>,
    /// The request it is, if it is one.
    request: Option<Written>,
    written: oneshot::Sender<io::Result<()>>,
}

/// A request written to the server, by the id it was sent with.
#[derive(Clone, Debug, PartialEq)]
enum Written {
    Direct(u64),
    Rmcp(NumberOrString),
}

/// The request written last, which a null-id error answers.
type LastWritten = Arc<Mutex<Option<Written>>>;

/// Requests sent to the server past rmcp, waiting for their responses.
pub struct Direct {
    /// Weak, so the server still gets EOF when rmcp closes the transport.
    to_writer: mpsc::WeakSender<Outgoing>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    next_id: AtomicU64,
}

/// One direct request in flight. Dropped unanswered (timeout, the client
/// went away), it tells the server with `notifications/cancelled`.
pub struct DirectCall {
    direct: Arc<Direct>,
    id: u64,
    answer: oneshot::Receiver<Answer>,
}

/// A server's response to a direct request.
#[derive(Debug)]
pub enum Answer {
    /// The result as the server wrote it (valid JSON): a slice of its line,
    /// so a large result is not copied on its way to the client.
    Result(Bytes),
    Error(ErrorData),
}

/// A response line, read only as far as telling whose it is.
#[derive(Deserialize)]
struct ResponseLine<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    method: Option<IgnoredAny>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    error: Option<ErrorData>,
}

#[derive(Serialize)]
struct RequestLine<'a, P> {
    jsonrpc: &'static str,
    id: &'a str,
    method: &'a str,
    params: &'a P,
}

/// Newline-delimited JSON-RPC over a child's stdout and stdin.
pub struct LineTransport<R> {
    stdout: R,
    buf: BytesMut,
    /// How far `buf` has been searched for a line end.
    scanned: usize,
    /// Dropping the rest of a line over [`MAX_LINE`].
    discarding: bool,
    /// JSON lines skipped because they were not MCP messages.
    not_mcp: u64,
    to_writer: Option<mpsc::Sender<Outgoing>>,
    writer: Option<JoinHandle<()>>,
    direct: Arc<Direct>,
    last_written: LastWritten,
}

// === impl LineTransport ===

impl<R: AsyncRead + Send + Unpin> LineTransport<R> {
    pub fn new<W: AsyncWrite + Send + Unpin + 'static>(stdout: R, stdin: W) -> Self {
        let (to_writer, queue) = mpsc::channel(WRITE_QUEUE);
        let last_written = LastWritten::default();
        let writer =
            tokio::spawn(write_lines(stdin, queue, last_written.clone()).in_current_span());
        let direct = Arc::new(Direct {
            to_writer: to_writer.downgrade(),
            waiting: Mutex::default(),
            next_id: AtomicU64::new(1),
        });
        Self {
            stdout,
            buf: BytesMut::with_capacity(READ_CHUNK),
            scanned: 0,
            discarding: false,
            not_mcp: 0,
            to_writer: Some(to_writer),
            writer: Some(writer),
            direct,
            last_written,
        }
    }

    /// A server's error with a null id: it could not read a request, and
    /// the one written last is taken to be it. A direct request gets the
    /// error here; one of rmcp's comes back with its id filled in; with no
    /// request left to fail, the error goes to rmcp as it came.
    fn unread_request(&self, mut error: JsonRpcError) -> Option<ServerJsonRpcMessage> {
        let Some(written) = self.last_written.lock().take() else {
            return Some(ServerJsonRpcMessage::Error(error));
        };
        warn!(
            code = error.error.code.0,
            message = %error.error.message,
            request = %written,
            "server could not read a request (error with a null id); failing the request written last"
        );
        match written {
            Written::Direct(id) => {
                if let Some(waiter) = self.direct.waiting.lock().remove(&id) {
                    let _ = waiter.send(Answer::Error(error.error));
                }
                None
            }
            Written::Rmcp(id) => {
                error.id = Some(id);
                Some(ServerJsonRpcMessage::Error(error))
            }
        }
    }

    /// Sends requests to this server past rmcp.
    pub fn direct(&self) -> Arc<Direct> {
        self.direct.clone()
    }

    /// The next complete line already buffered, without its line end.
    fn next_line(&mut self) -> Option<BytesMut> {
        loop {
            let found = memchr::memchr(b'\n', &self.buf[self.scanned..])?;
            let mut line = self.buf.split_to(self.scanned + found + 1);
            self.scanned = 0;
            if std::mem::take(&mut self.discarding) {
                continue; // the tail of an oversized line
            }
            line.truncate(line.len() - 1);
            if line.last() == Some(&b'\r') {
                line.truncate(line.len() - 1);
            }
            return Some(line);
        }
    }
}

impl<R: AsyncRead + Send + Unpin> Transport<RoleClient> for LineTransport<R> {
    type Error = io::Error;

    fn name() -> Cow<'static, str> {
        "stdio".into()
    }

    // The future owns what it needs: callers may keep several in flight.
    #[allow(refining_impl_trait)]
    fn send(
        &mut self,
        item: ClientJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static + use<R> {
        let to_writer = self.to_writer.clone();
        let request = match &item {
            ClientJsonRpcMessage::Request(request) => Some(Written::Rmcp(request.id.clone())),
            _ => None,
        };
        async move { write_line(to_writer, &item, request, 0).await }
    }

    async fn receive(&mut self) -> Option<ServerJsonRpcMessage> {
        loop {
            while let Some(line) = self.next_line() {
                let line = line.freeze();
                if self.direct.take_answer(&line) {
                    continue;
                }
                match parse(&line) {
                    Ok(ServerJsonRpcMessage::Error(error)) if error.id.is_none() => {
                        if let Some(message) = self.unread_request(error) {
                            return Some(message);
                        }
                    }
                    Ok(message) => return Some(message),
                    Err(Skipped::NotJson) => {}
                    Err(Skipped::NotMcp(error)) => {
                        // A server logging JSON to stdout must not flood the
                        // log: warnings at the 1st, 2nd, 4th, 8th… skip.
                        self.not_mcp += 1;
                        if self.not_mcp.is_power_of_two() {
                            warn!(%error, skipped = self.not_mcp, "skipped a message that is not valid MCP JSON-RPC");
                        } else {
                            debug!(%error, skipped = self.not_mcp, "skipped a message that is not valid MCP JSON-RPC");
                        }
                    }
                }
            }
            self.scanned = self.buf.len();
            if self.buf.len() > MAX_LINE {
                if !self.discarding {
                    warn!(
                        limit = MAX_LINE,
                        "server sent a line over the limit; dropping it"
                    );
                }
                self.discarding = true;
                self.buf = BytesMut::with_capacity(READ_CHUNK);
                self.scanned = 0;
            }
            // Only a nearly full buffer is grown: reserving a whole chunk
            // with a partial line in it would allocate anew on every read.
            if self.buf.capacity() - self.buf.len() < MIN_READ {
                self.buf.reserve(READ_CHUNK);
            }
            match self.stdout.read_buf(&mut self.buf).await {
                Ok(0) => {
                    self.direct.waiting.lock().clear();
                    return None;
                }
                Ok(_) => {}
                Err(error) => {
                    warn!(%error, "reading the server's stdout failed");
                    self.direct.waiting.lock().clear();
                    return None;
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        // The writer sends what is queued, then drops stdin: the server's EOF.
        self.to_writer = None;
        if let Some(writer) = self.writer.take() {
            writer.await.map_err(io::Error::other)?;
        }
        Ok(())
    }
}

impl<R> Drop for LineTransport<R> {
    fn drop(&mut self) {
        // Waiting direct requests learn the connection is gone.
        self.direct.waiting.lock().clear();
    }
}

// === impl Direct ===

impl Direct {
    /// A new request, waiting for its answer from now on; it goes to the
    /// server with [`DirectCall::send`].
    pub fn start(self: &Arc<Self>) -> DirectCall {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer_to, answer) = oneshot::channel();
        self.waiting.lock().insert(id, answer_to);
        DirectCall {
            direct: self.clone(),
            id,
            answer,
        }
    }

    /// Hands a line over to the direct request it answers; false if it is
    /// not an answer to one (it then goes to rmcp).
    fn take_answer(&self, line: &Bytes) -> bool {
        // Most lines carry no id of ours: a vectorised search rules them out.
        if memchr::memmem::find(line, b"\"sb:").is_none() {
            return false;
        }
        let Ok(response) = serde_json::from_slice::<ResponseLine<'_>>(line) else {
            return false;
        };
        let Some(id) = response
            .id
            .as_deref()
            .and_then(|id| id.strip_prefix(DIRECT_ID_PREFIX))
            .and_then(|id| id.parse::<u64>().ok())
            .filter(|_| response.method.is_none())
        else {
            return false;
        };
        let answer = match (response.result, response.error) {
            (Some(result), None) => Answer::Result(line.slice_ref(result.get().as_bytes())),
            (None, Some(error)) => Answer::Error(error),
            _ => return false,
        };
        // An answer after its call gave up (timeout, cancel) is dropped here:
        // rmcp would warn about an id it never sent.
        match self.waiting.lock().remove(&id) {
            Some(waiter) => {
                let _ = waiter.send(answer);
            }
            None => debug!(id, "dropped the late answer to a direct request"),
        }
        true
    }

    /// Tells the server a request is abandoned; never waits.
    fn cancel(&self, id: u64) {
        let Some(to_writer) = self.to_writer.upgrade() else {
            return;
        };
        let notification = serde_json::json!({
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": { "requestId": wire_id(id), "reason": "cancelled by the gateway" },
        });
        let mut line = notification.to_string().into_bytes();
        line.push(b'\n');
        let (written, _) = oneshot::channel();
        let outgoing = Outgoing {
            line,
            request: None,
            written,
        };
        super::send_soon(&to_writer, outgoing);
    }
}

// === impl DirectCall ===

impl DirectCall {
    /// Its id, which also names its progress: rmcp's own are numbers.
    pub fn progress_token(&self) -> ProgressToken {
        ProgressToken(NumberOrString::String(wire_id(self.id).into()))
    }

    /// Writes the request to the server; `params` go as they are, and take
    /// about `params_len` bytes.
    pub async fn send(
        &self,
        method: &str,
        params: &impl Serialize,
        params_len: usize,
    ) -> io::Result<()> {
        let request = RequestLine {
            jsonrpc: "2.0",
            id: &wire_id(self.id),
            method,
            params,
        };
        let written = Some(Written::Direct(self.id));
        write_line(
            self.direct.to_writer.upgrade(),
            &request,
            written,
            params_len,
        )
        .await
    }

    /// The server's answer; an error once the connection is gone.
    pub async fn answer(&mut self) -> io::Result<Answer> {
        (&mut self.answer).await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )
        })
    }
}

impl Drop for DirectCall {
    fn drop(&mut self) {
        // Still waiting: no answer came, so the server is told.
        if self.direct.waiting.lock().remove(&self.id).is_some() {
            self.direct.cancel(self.id);
        }
    }
}

/// Queues `message` as one line for the writer task and waits until it is
/// written. Room for `len_hint` bytes is made at once: a large message is
/// not copied over and over as its buffer grows.
async fn write_line(
    to_writer: Option<mpsc::Sender<Outgoing>>,
    message: &impl Serialize,
    request: Option<Written>,
    len_hint: usize,
) -> io::Result<()> {
    let mut line = Vec::with_capacity(len_hint.saturating_add(LINE_OVERHEAD));
    serde_json::to_writer(&mut line, message)?;
    line.push(b'\n');
    let to_writer = to_writer.ok_or_else(stdin_closed)?;
    let (written, done) = oneshot::channel();
    to_writer
        .send(Outgoing {
            line,
            request,
            written,
        })
        .await
        .map_err(|_| stdin_closed())?;
    done.await.map_err(|_| stdin_closed())?
}

// === impl Written ===

impl std::fmt::Display for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Written::Direct(id) => f.write_str(&wire_id(*id)),
            Written::Rmcp(id) => id.fmt(f),
        }
    }
}

fn wire_id(id: u64) -> String {
    format!("{DIRECT_ID_PREFIX}{id}")
}

fn stdin_closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the server's stdin is closed")
}

/// Why a line from the server was skipped.
enum Skipped {
    /// Blank, or not JSON at all: most often a server logging to stdout.
    NotJson,
    /// JSON, but not an MCP message.
    NotMcp(serde_json::Error),
}

/// A server message, or why the line is not one.
fn parse(line: &[u8]) -> Result<ServerJsonRpcMessage, Skipped> {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let line = line.strip_prefix(BOM).unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(Skipped::NotJson);
    }
    serde_json::from_slice(line).map_err(|error| {
        if error.is_syntax() || error.is_eof() {
            debug!(line = %String::from_utf8_lossy(line), "skipped a line that is not JSON");
            Skipped::NotJson
        } else {
            Skipped::NotMcp(error)
        }
    })
}

/// Writes queued lines to the server, all that are waiting in one write,
/// and notes the last request among them.
async fn write_lines<W: AsyncWrite + Unpin>(
    mut stdin: W,
    mut queue: mpsc::Receiver<Outgoing>,
    last_written: LastWritten,
) {
    let mut batch = Vec::new();
    let mut buf = Vec::new();
    while queue.recv_many(&mut batch, WRITE_QUEUE).await > 0 {
        // A lone message (a large one, most often) is written as it is.
        let lines: &[u8] = match batch.as_slice() {
            [outgoing] => &outgoing.line,
            _ => {
                buf.clear();
                for outgoing in &batch {
                    buf.extend_from_slice(&outgoing.line);
                }
                &buf
            }
        };
        let result = match stdin.write_all(lines).await {
            Ok(()) => stdin.flush().await,
            Err(error) => Err(error),
        };
        if let Some(request) = batch.iter().rev().find_map(|o| o.request.clone()) {
            *last_written.lock() = Some(request);
        }
        for outgoing in batch.drain(..) {
            let result = match &result {
                Ok(()) => Ok(()),
                Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
            };
            let _ = outgoing.written.send(result);
        }
        if result.is_err() {
            return; // the pipe is gone: senders see a closed stdin from here on
        }
    }
}

#[cfg(test)]
mod tests;
