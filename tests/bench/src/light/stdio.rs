//! The light driver's floor: an MCP server as a child process spoken to
//! over its stdin/stdout, pre-built request lines with their id patched in
//! place, `concurrency` calls in flight on the one pipe.

use std::{
    path::Path,
    process::Stdio,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, ChildStdout, Command},
    sync::mpsc,
};

use super::{
    Call, Error,
    http1::{FIRST_ID, rpc_body, write_id},
    initialize_params,
    reply::{Expect, Reply},
};
use crate::measure::{OwnCpu, Sample};

/// Past the measured seconds, how long the calls still in flight may take.
const DRAIN: Duration = Duration::from_secs(30);

/// A stdio MCP server after the handshake. Its pipes belong to the
/// driver's runtime: use it only from tasks the driver runs.
pub struct StdioServer {
    /// Killed on drop.
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Set when a load ended with calls unanswered: the pipe may still
    /// carry their answers, so later loads would misread them.
    broken: bool,
}

// === impl StdioServer ===

impl StdioServer {
    /// Starts `program args..` and does the MCP handshake.
    pub async fn spawn(program: &Path, args: &[&str]) -> Result<Self, Error> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Error::Malformed("child without piped stdio"));
        };
        let mut server = Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            broken: false,
        };
        server.handshake().await?;
        Ok(server)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn handshake(&mut self) -> Result<(), Error> {
        let mut line = rpc_body("initialize", initialize_params().as_bytes()).bytes;
        line.push(b'\n');
        self.stdin.write_all(&line).await?;
        let mut answer = Vec::new();
        loop {
            answer.clear();
            if self.stdout.read_until(b'\n', &mut answer).await? == 0 {
                return Err(Error::Closed);
            }
            // Anything before the answer (log lines, notifications) is skipped.
            if let Ok(reply) = Reply::parse(&answer)
                && reply.id == Some(FIRST_ID)
            {
                reply.verify(&Expect::Result)?;
                break;
            }
        }
        self.stdin
            .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n")
            .await?;
        Ok(())
    }

    /// `concurrency` calls kept in flight for `duration`; each answer is
    /// checked and its slot sends the next call at once.
    pub async fn load(&mut self, call: &Call, concurrency: usize, duration: Duration) -> Sample {
        let mut sample = Sample::default();
        if self.broken {
            sample.fail(Error::Broken);
            return sample;
        }
        let concurrency = concurrency.max(1);
        let slots = Slots::new(concurrency);
        let (next_tx, next_rx) = mpsc::unbounded_channel();
        let cpu_before = OwnCpu::now();
        let started = Instant::now();
        let deadline = started + duration;
        let Self { stdin, stdout, .. } = self;
        let writer = write_calls(stdin, call, &slots, next_rx);
        let reader = read_answers(stdout, call, &slots, next_tx, deadline, &mut sample);
        let finished =
            tokio::time::timeout(duration + DRAIN, async { tokio::join!(writer, reader) }).await;
        let outcome = match finished {
            Ok((Ok(()), Ok(()))) => Ok(()),
            Ok((Err(err), _) | (_, Err(err))) => Err(err),
            Err(_) => Err(Error::Timeout),
        };
        if let Err(err) = outcome {
            self.broken = true;
            sample.fail(err);
        }
        sample.elapsed = started.elapsed();
        sample.driver_cpu = OwnCpu::since(cpu_before);
        sample
    }
}

/// Per-slot state shared by the writer and the reader (one task, so the
/// atomics never contend; they only make the sharing `Send`).
struct Slots {
    concurrency: u64,
    base: Instant,
    /// Nanoseconds since `base` at which each slot's call was written.
    sent: Vec<AtomicU64>,
    in_flight: Vec<AtomicU64>,
}

impl Slots {
    fn new(concurrency: usize) -> Self {
        Self {
            concurrency: concurrency as u64,
            base: Instant::now(),
            sent: (0..concurrency).map(|_| AtomicU64::new(0)).collect(),
            in_flight: (0..concurrency).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The slot whose call carries `id`, if that call is in flight.
    fn slot_of(&self, id: u64) -> Option<usize> {
        let slot = usize::try_from(id.checked_sub(FIRST_ID)? % self.concurrency).ok()?;
        (self.in_flight[slot].load(Ordering::Relaxed) == id).then_some(slot)
    }
}

/// Writes one call per slot received. Slot `s`'s `n`th call has id
/// `FIRST_ID + n × concurrency + s`: 8 digits for the first ~90 million
/// calls of a load, far beyond what a measurement sends.
async fn write_calls(
    stdin: &mut ChildStdin,
    call: &Call,
    slots: &Slots,
    mut next: mpsc::UnboundedReceiver<usize>,
) -> Result<(), Error> {
    let body = rpc_body("tools/call", &call.params);
    let (mut line, id_at) = (body.bytes, body.id_at);
    line.push(b'\n');
    let mut sequence = vec![0u64; slots.sent.len()];
    while let Some(slot) = next.recv().await {
        let id = FIRST_ID + sequence[slot] * slots.concurrency + slot as u64;
        sequence[slot] += 1;
        write_id(&mut line[id_at..id_at + 8], id);
        slots.in_flight[slot].store(id, Ordering::Relaxed);
        slots.sent[slot].store(slots.now(), Ordering::Relaxed);
        stdin.write_all(&line).await?;
    }
    Ok(())
}

/// Reads answers until every slot's last call (the one sent before the
/// deadline) is answered; asks the writer for each slot's next call.
async fn read_answers(
    stdout: &mut BufReader<ChildStdout>,
    call: &Call,
    slots: &Slots,
    next: mpsc::UnboundedSender<usize>,
    deadline: Instant,
    sample: &mut Sample,
) -> Result<(), Error> {
    for slot in 0..slots.sent.len() {
        next.send(slot).map_err(|_| Error::Broken)?;
    }
    let mut outstanding = slots.sent.len();
    let mut line = Vec::with_capacity(call.params.len() + 512);
    while outstanding > 0 {
        line.clear();
        if stdout.read_until(b'\n', &mut line).await? == 0 {
            return Err(Error::Closed);
        }
        let now = slots.now();
        // A line that is no JSON-RPC answer (a notification, a log line)
        // is skipped; an answer to no call in flight is an error.
        let Ok(reply) = Reply::parse(&line) else {
            continue;
        };
        let Some(id) = reply.id else { continue };
        let Some(slot) = slots.slot_of(id) else {
            sample.fail(Error::NoReply(id));
            continue;
        };
        let took = now.saturating_sub(slots.sent[slot].load(Ordering::Relaxed));
        sample.record(Duration::from_nanos(took), reply.verify(&call.expect()));
        if Instant::now() < deadline {
            next.send(slot).map_err(|_| Error::Broken)?;
        } else {
            outstanding -= 1;
        }
    }
    Ok(())
}
