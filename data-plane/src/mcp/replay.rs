//! The events of a streamed answer, kept so a client that lost its
//! connection can resume with `Last-Event-ID`: the request runs on
//! without the connection, every event gets an id
//! `sb-<stream>-<n>`, and a `GET` naming one replays what came after it,
//! then follows the stream live until its answer. A finished stream is
//! kept for [`KEEP_FINISHED`].

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::body::Bytes;
use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// How long a finished stream stays resumable (rmcp keeps a minute too).
pub const KEEP_FINISHED: Duration = Duration::from_secs(60);
/// Events kept per stream; a resume from before them is refused.
const MAX_EVENTS: usize = 1024;
/// How long a client waits before it reconnects, told by the first event.
const RETRY: Duration = Duration::from_secs(3);
/// Keep-alive comments on a stream waiting for a slow answer (as rmcp's).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Stream numbers, unique in the process: a session parked and restored
/// starts a new table, and an old id must not name a new stream.
static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

/// One streamed answer's events.
pub struct Replay {
    stream: u64,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    /// The number of `events[0]`.
    first: u64,
    events: VecDeque<Bytes>,
    finished: bool,
    /// A follower has handed the last event of the finished stream on.
    delivered: bool,
}

impl Replay {
    /// A stream whose first event (number 0) primes the client to resume.
    pub fn new() -> Arc<Self> {
        let replay = Arc::new(Self {
            stream: NEXT_STREAM.fetch_add(1, Ordering::Relaxed),
            state: Mutex::default(),
            changed: Notify::new(),
        });
        let priming = format!(
            "id: {}\nretry: {}\ndata:\n\n",
            replay.event_id(0),
            RETRY.as_millis()
        );
        replay.state.lock().events.push_back(priming.into());
        replay
    }

    /// Adds one SSE event (`data` lines and the blank line ending it) under
    /// the next id.
    pub fn push(&self, event: &[u8]) {
        let mut state = self.state.lock();
        let number = state.first + state.events.len() as u64;
        let mut framed = format!("id: {}\n", self.event_id(number)).into_bytes();
        framed.extend_from_slice(event);
        state.events.push_back(framed.into());
        if state.events.len() > MAX_EVENTS {
            state.events.pop_front();
            state.first += 1;
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// No more events: followers end after the last.
    pub fn finish(&self) {
        self.state.lock().finished = true;
        self.changed.notify_waiters();
    }

    /// The events from number `from` on, then live ones, with keep-alive
    /// comments while none come, until the stream finishes; `None` if
    /// `from` is no longer kept. A follower that falls so far behind that
    /// events it has not read are dropped is ended (its resume is refused
    /// then), never handed a gap.
    pub fn follow(
        self: Arc<Self>,
        from: u64,
    ) -> Option<impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static> {
        if from < self.state.lock().first {
            return None;
        }
        let keep_alive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        Some(futures::stream::unfold(
            (self, from, keep_alive),
            |(replay, next, mut keep_alive)| async move {
                loop {
                    // Registered before looking, so a push in between wakes it.
                    let changed = replay.changed.notified();
                    let (event, finished) = {
                        let state = replay.state.lock();
                        let index = next.checked_sub(state.first)?;
                        let index = usize::try_from(index).unwrap_or(usize::MAX);
                        (state.events.get(index).cloned(), state.finished)
                    };
                    match event {
                        Some(event) => {
                            drop(changed);
                            return Some((Ok(event), (replay, next + 1, keep_alive)));
                        }
                        None if finished => {
                            replay.state.lock().delivered = true;
                            return None;
                        }
                        None => {}
                    }
                    tokio::select! {
                        () = changed => {}
                        _ = keep_alive.tick() => break,
                    }
                }
                let comment = Bytes::from_static(b":\n\n");
                Some((Ok(comment), (replay, next, keep_alive)))
            },
        ))
    }

    /// The whole finished stream has been handed to a connection: a
    /// client that got it all has nothing to resume.
    pub fn delivered(&self) -> bool {
        self.state.lock().delivered
    }

    pub fn stream(&self) -> u64 {
        self.stream
    }

    fn event_id(&self, number: u64) -> String {
        format!("sb-{}-{number}", self.stream)
    }
}

/// The stream and event number an id of [`Replay`]'s names.
pub fn parse_event_id(id: &str) -> Option<(u64, u64)> {
    let (stream, number) = id.strip_prefix("sb-")?.split_once('-')?;
    Some((stream.parse().ok()?, number.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    async fn collect(replay: &Arc<Replay>, from: u64) -> Vec<String> {
        let events = replay.clone().follow(from).expect("kept");
        events
            .map(|e| String::from_utf8_lossy(&e.expect("infallible")).into_owned())
            .collect()
            .await
    }

    #[tokio::test]
    async fn a_follower_gets_what_came_after_its_id_then_the_live_rest() {
        let replay = Replay::new();
        let n = replay.stream();
        replay.push(b"data: one\n\n");
        let live = tokio::spawn({
            let replay = replay.clone();
            async move { collect(&replay, 1).await }
        });
        tokio::task::yield_now().await;
        replay.push(b"data: two\n\n");
        replay.finish();
        let (one, two) = (
            format!("id: sb-{n}-1\ndata: one\n\n"),
            format!("id: sb-{n}-2\ndata: two\n\n"),
        );
        assert_eq!(live.await.expect("task"), [one, two.clone()]);
        let resumed = collect(&replay, 2).await;
        assert_eq!(resumed, [two]);
        let all = collect(&replay, 0).await;
        let priming = format!("id: sb-{n}-0\nretry: 3000\n");
        assert!(all[0].starts_with(&priming), "{all:?}");
        assert_eq!(parse_event_id("sb-7-2"), Some((7, 2)));
        assert_ne!(Replay::new().stream(), n, "numbers are never reused");
        assert_eq!(parse_event_id("7/2"), None);
    }

    #[tokio::test]
    async fn old_events_are_dropped_and_cannot_be_resumed_from() {
        let replay = Replay::new();
        for _ in 0..MAX_EVENTS + 5 {
            replay.push(b"data: x\n\n");
        }
        assert!(replay.clone().follow(0).is_none());
        assert!(replay.clone().follow(6).is_some());

        // A follower overtaken by the drop ends rather than skip events.
        let behind = Replay::new();
        let follower = behind.clone().follow(0).expect("kept");
        for _ in 0..MAX_EVENTS + 5 {
            behind.push(b"data: x\n\n");
        }
        behind.finish();
        assert_eq!(follower.count().await, 0);
    }
}
