//! Parks idle client sessions. rmcp keeps a worker task, a service task
//! and half a dozen channels per streamable-HTTP session (~60 KiB); most
//! agents open a session and then sit between prompts. A session with no
//! open stream, nothing in flight and nothing of its own to lose is, after
//! a quiet spell, reduced to its `initialize` parameters (a few hundred
//! bytes); its next request restores it through rmcp's session store (the
//! handshake is replayed) and the client never notices. Sessions that hold
//! a GET stream, subscribed to resources, set a log level or own
//! per-session server connections are pinned and never parked. A parked
//! session expires like a live one, after the idle timeout.
//!
//! The book also refuses a request whose JSON-RPC id is already in flight
//! in its session: rmcp routes answers by id, so the two would get each
//! other's answer or none. And it lends live sessions to `direct.rs`, which
//! answers some calls without rmcp; those count as activity like any other.
//!
//! A client's `DELETE` ends a session this replica holds, live or parked,
//! with 200; any other id gets 404, as every request naming an unknown
//! session does (rmcp answers 202 to both, which SDKs log as a failure).
//!
//! A parked session costs one slot in a table and nothing on the heap:
//! ids are kept as UUIDs and identical handshakes (one client program's)
//! are shared, since any small allocation left behind would keep the page
//! it shares with the freed session resident.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::{Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use rmcp::{
    ErrorData,
    model::{ClientJsonRpcMessage, RequestId, ServerJsonRpcMessage},
    transport::streamable_http_server::{
        RestoreOutcome, SessionId, SessionManager,
        session::{
            ServerSseMessage, SessionState, SessionStore, SessionStoreError,
            local::{LocalSessionManager, LocalSessionManagerError},
        },
    },
};
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};
use uuid::Uuid;

use super::{answer::Refusal, direct::DirectSession};
use crate::{observe::session_tag, telemetry::Metrics};

/// The session manager of `/mcp`: rmcp's in-memory one, plus parking.
pub struct ParkingSessions {
    inner: LocalSessionManager,
    book: Arc<Book>,
}

/// What is known of every session, live or parked; shared by the manager,
/// the store rmcp restores from, the handlers that pin and the reaper.
pub struct Book {
    entries: Mutex<HashMap<Uuid, Entry>>,
    /// Distinct handshakes, by their JSON.
    handshakes: Mutex<HashMap<String, Arc<SessionState>>>,
    /// Woken when a session finishes parking.
    parked: Notify,
    park_after: Duration,
    expire_after: Duration,
    metrics: Arc<Metrics>,
}

struct Entry {
    /// The handshake to replay; rmcp stores it once `initialize` succeeded.
    state: Option<Arc<SessionState>>,
    last_active: Instant,
    open_streams: u32,
    /// Ids of the requests whose response streams are open.
    in_flight: Vec<RequestId>,
    pinned: bool,
    phase: Phase,
    /// What direct calls need of the session, once it has said (live only).
    direct: Option<Arc<DirectSession>>,
    /// When rmcp last saw the session: its worker ends a session it has not
    /// seen for the idle timeout, however busy direct calls keep it.
    rmcp_seen: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Live,
    /// Its rmcp session is being closed: parked once rmcp reports the old
    /// service ended (its `close_session` call), which a restore waits for.
    Parking,
    Parked,
    /// A request is replaying its handshake; other requests wait for it
    /// in rmcp's restore queue.
    Restoring,
}

/// How long a park may wait for rmcp to report the old service ended.
const PARKING_GRACE: Duration = Duration::from_secs(10);

/// The store rmcp persists handshakes to and restores sessions from.
pub struct Store(Arc<Book>);

/// A response or GET stream; the session is busy while it is open.
struct Tracked {
    inner: Pin<Box<dyn Stream<Item = ServerSseMessage> + Send + Sync>>,
    _open: Option<OpenStream>,
}

pub struct OpenStream {
    book: Arc<Book>,
    id: Option<Uuid>,
    request: Option<RequestId>,
}

/// rmcp's session ids are UUIDs as it spells them (hyphenated, lower
/// case); anything else names no session, as it does for rmcp.
fn key(id: &str) -> Option<Uuid> {
    let uuid = Uuid::try_parse(id).ok()?;
    let mut canonical = Uuid::encode_buffer();
    (uuid.as_hyphenated().encode_lower(&mut canonical) == id).then_some(uuid)
}

// === impl ParkingSessions ===

impl ParkingSessions {
    pub fn new(inner: LocalSessionManager, book: Arc<Book>) -> Self {
        Self { inner, book }
    }

    /// Parks every session that has been idle long enough, and forgets
    /// parked ones past the idle timeout, until `shutdown`.
    pub async fn reap(self: Arc<Self>, shutdown: CancellationToken) {
        let every =
            (self.book.park_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut parked_last_tick = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            // Sessions parked on the last tick have let go of their memory
            // by now (their service tasks end after the close returns).
            if parked_last_tick {
                let _ = tokio::task::spawn_blocking(release_free_memory).await;
            }
            let due = self.book.due_for_parking();
            parked_last_tick = !due.is_empty();
            for id in due {
                // Ends the session's rmcp worker and service; the handler
                // is dropped, and rmcp's own `close_session` call after that
                // completes the park.
                let session = SessionId::from(id.to_string());
                if let Err(err) = self.inner.close_session(&session).await {
                    debug!(%session, error = %err, "closing a parked session's worker");
                }
            }
        }
    }
}

impl SessionManager for ParkingSessions {
    type Error = LocalSessionManagerError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        let (id, transport) = self.inner.create_session().await?;
        let Some(uuid) = key(&id) else {
            // Not an id this book can hold: never parked.
            return Ok((id, transport));
        };
        self.book.entries.lock().insert(uuid, Entry::new());
        Ok((id, transport))
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        self.book.touch(id);
        self.inner.initialize_session(id, message).await
    }

    /// A parked session is "not here", so rmcp restores it from the store.
    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        if !self.book.touch(id) {
            return Ok(false);
        }
        let live = self.inner.has_session(id).await?;
        if !live {
            // rmcp ended it (idle timeout, a failed service): gone for good.
            self.book.forget(id);
        }
        Ok(live)
    }

    /// A client's DELETE, or rmcp reporting a session's service ended:
    /// for a session being parked, that is the park done.
    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        let Some(uuid) = key(id) else {
            return self.inner.close_session(id).await;
        };
        let (phase, removed) = {
            let mut entries = self.book.entries.lock();
            let phase = entries.get(&uuid).map(|e| e.phase);
            let removed = match phase {
                Some(Phase::Live | Phase::Restoring) => entries.remove(&uuid),
                _ => None,
            };
            (phase, removed)
        };
        if let Some(entry) = removed {
            entry.close_direct();
        }
        match phase {
            Some(Phase::Parking) => self.book.finish_parking(uuid),
            Some(Phase::Parked) => {}
            Some(Phase::Live | Phase::Restoring) | None => self.inner.close_session(id).await?,
        }
        Ok(())
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let open = match &message {
            ClientJsonRpcMessage::Request(request) => {
                match self.book.open_request(id, &request.id) {
                    Some(open) => open,
                    None => return Ok(Tracked::refusal(request.id.clone())),
                }
            }
            _ => self.book.open_stream(id),
        };
        let stream = self.inner.create_stream(id, message).await?;
        Ok(Tracked::new(open, stream))
    }

    /// Also carries a restore's replayed `initialized`, after which the
    /// session is live again.
    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        self.inner.accept_message(id, message).await?;
        self.book.accepted(id);
        Ok(())
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let open = self.book.open_stream(id);
        let stream = self.inner.create_standalone_stream(id).await?;
        Ok(Tracked::new(open, stream))
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let open = self.book.open_stream(id);
        let stream = self.inner.resume(id, last_event_id).await?;
        Ok(Tracked::new(open, stream))
    }

    async fn restore_session(
        &self,
        id: SessionId,
    ) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        // rmcp restores one session id at a time; a park in progress is
        // waited for so the old worker is gone before the new one starts.
        let Some(uuid) = key(&id) else {
            return Ok(RestoreOutcome::NotSupported);
        };
        loop {
            let parked = self.book.parked.notified();
            match self.book.begin_restore(uuid) {
                Some(Phase::Parking) => {}
                Some(Phase::Parked) => break,
                Some(Phase::Live | Phase::Restoring) => {
                    return Ok(RestoreOutcome::AlreadyPresent);
                }
                None => return Ok(RestoreOutcome::NotSupported),
            }
            // The reaper completes a park rmcp never reported, so this ends.
            let _ = tokio::time::timeout(PARKING_GRACE, parked).await;
        }
        let outcome = self.inner.restore_session(id.clone()).await;
        if !matches!(outcome, Ok(RestoreOutcome::Restored(_))) {
            self.book.abort_restore(uuid);
        }
        outcome
    }
}

/// Middleware: the status of a client's `DELETE /mcp`. rmcp still does
/// the work (and its Host, header and version checks answer first).
pub async fn end_session(State(book): State<Arc<Book>>, request: Request, next: Next) -> Response {
    if request.method() != Method::DELETE {
        return next.run(request).await;
    }
    let held = request
        .headers()
        .get("mcp-session-id")
        .and_then(|id| id.to_str().ok())
        .is_some_and(|id| book.holds(id));
    let response = next.run(request).await;
    if response.status() != StatusCode::ACCEPTED {
        return response;
    }
    if held {
        StatusCode::OK.into_response()
    } else {
        Refusal::unknown_session("session not found: start a new one with initialize")
            .into_response()
    }
}

// === impl Book ===

impl Book {
    pub fn new(park_after: Duration, expire_after: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            handshakes: Mutex::new(HashMap::new()),
            parked: Notify::new(),
            park_after,
            expire_after,
            metrics,
        })
    }

    /// Whether this replica holds the session, live or parked.
    pub fn holds(&self, id: &str) -> bool {
        key(id).is_some_and(|uuid| self.entries.lock().contains_key(&uuid))
    }

    /// Keeps a session in memory from now on: it holds state a replayed
    /// handshake would not bring back.
    pub fn pin(&self, id: &str) {
        self.update(key(id), |entry| entry.pinned = true);
    }

    fn update(&self, id: Option<Uuid>, change: impl FnOnce(&mut Entry)) {
        let Some(uuid) = id else {
            return;
        };
        if let Some(entry) = self.entries.lock().get_mut(&uuid) {
            change(entry);
        }
    }

    /// Records activity on a live session; false if it is not live.
    fn touch(&self, id: &SessionId) -> bool {
        let Some(uuid) = key(id) else {
            return false;
        };
        match self.entries.lock().get_mut(&uuid) {
            Some(entry) if entry.phase == Phase::Live => {
                entry.last_active = Instant::now();
                entry.rmcp_seen = entry.last_active;
                true
            }
            _ => false,
        }
    }

    fn forget(&self, id: &str) {
        let Some(entry) = key(id).and_then(|uuid| self.entries.lock().remove(&uuid)) else {
            return;
        };
        if entry.phase == Phase::Parked {
            self.metrics.sessions_parked.dec();
        }
        entry.close_direct();
    }

    /// Counts a stream as open until the guard is dropped.
    fn open_stream(self: &Arc<Self>, id: &SessionId) -> OpenStream {
        let id = key(id);
        self.update(id, Entry::opened);
        OpenStream {
            book: self.clone(),
            id,
            request: None,
        }
    }

    /// [`Book::open_stream`] for a request's response; `None` if a request
    /// with the same id is in flight in the session.
    fn open_request(self: &Arc<Self>, id: &SessionId, request: &RequestId) -> Option<OpenStream> {
        let id = key(id);
        let mut duplicate = false;
        self.update(id, |entry| {
            duplicate = entry.in_flight.contains(request);
            if !duplicate {
                entry.in_flight.push(request.clone());
                entry.opened();
            }
        });
        (!duplicate).then(|| OpenStream {
            book: self.clone(),
            id,
            request: Some(request.clone()),
        })
    }

    /// Lets direct calls reach a live session.
    pub fn attach(&self, id: &str, session: Arc<DirectSession>) {
        self.update(key(id), |entry| {
            // The first stays: calls in flight are in its table.
            if matches!(entry.phase, Phase::Live | Phase::Restoring) && entry.direct.is_none() {
                entry.direct = Some(session);
            }
        });
    }

    /// A live session a direct call may go to, with the call counted in
    /// flight until the guard drops; `None` sends the request through
    /// rmcp: the session is parked, unknown or not attached, rmcp has not
    /// seen it for half its idle timeout, or the id is in flight already
    /// (rmcp's path refuses that with the reason).
    pub fn open_direct(
        self: &Arc<Self>,
        id: &str,
        request: &RequestId,
    ) -> Option<(OpenStream, Arc<DirectSession>)> {
        let uuid = key(id)?;
        let mut entries = self.entries.lock();
        let entry = entries.get_mut(&uuid)?;
        let session = entry.direct.as_ref()?.clone();
        if entry.phase != Phase::Live
            || entry.rmcp_seen.elapsed() >= self.expire_after / 2
            || entry.in_flight.contains(request)
        {
            return None;
        }
        entry.in_flight.push(request.clone());
        entry.opened();
        drop(entries);
        let open = OpenStream {
            book: self.clone(),
            id: Some(uuid),
            request: Some(request.clone()),
        };
        Some((open, session))
    }

    /// The live session a direct call's `notifications/cancelled` is for.
    pub fn direct_session(&self, id: &str) -> Option<Arc<DirectSession>> {
        let entries = self.entries.lock();
        let entry = entries.get(&key(id)?)?;
        entry.direct.clone().filter(|_| entry.phase == Phase::Live)
    }

    /// The shared copy of a handshake.
    fn intern(&self, state: &SessionState) -> Arc<SessionState> {
        let json = serde_json::to_string(state).unwrap_or_default();
        self.handshakes
            .lock()
            .entry(json)
            .or_insert_with(|| Arc::new(state.clone()))
            .clone()
    }

    /// Live sessions idle long enough, now marked parking; parked ones past
    /// the idle timeout are forgotten; parks rmcp never reported complete.
    fn due_for_parking(&self) -> Vec<Uuid> {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut expired = 0;
        let mut stale = Vec::new();
        self.entries.lock().retain(|id, entry| {
            let idle = now.saturating_duration_since(entry.last_active);
            match entry.phase {
                Phase::Parked if idle >= self.expire_after => {
                    expired += 1;
                    return false;
                }
                Phase::Parking if idle >= self.park_after.saturating_add(PARKING_GRACE) => {
                    stale.push(*id);
                }
                Phase::Live
                    if idle >= self.park_after
                        && entry.open_streams == 0
                        && !entry.pinned
                        && entry.state.is_some() =>
                {
                    entry.phase = Phase::Parking;
                    // No heap left behind to pin the freed session's pages.
                    entry.in_flight = Vec::new();
                    // Its finished direct streams go with it, as rmcp's do.
                    entry.close_direct();
                    entry.direct = None;
                    due.push(*id);
                }
                _ => {}
            }
            true
        });
        if expired > 0 {
            self.metrics.sessions_parked.dec_by(expired);
            debug!(expired, "forgot parked sessions past the idle timeout");
        }
        self.handshakes
            .lock()
            .retain(|_, state| Arc::strong_count(state) > 1);
        for id in stale {
            warn!(session = %session_tag(&id.to_string()), "rmcp never reported a parked session's service ended");
            self.finish_parking(id);
        }
        due
    }

    fn finish_parking(&self, id: Uuid) {
        let parked = match self.entries.lock().get_mut(&id) {
            Some(entry) if entry.phase == Phase::Parking => {
                entry.phase = Phase::Parked;
                true
            }
            _ => false,
        };
        if parked {
            self.metrics.sessions_parked.inc();
            self.metrics.session_parks.inc();
            debug!(session = %session_tag(&id.to_string()), "parked an idle session");
        }
        self.parked.notify_waiters();
    }

    /// A parked session's restore starts (its phase before is returned).
    fn begin_restore(&self, id: Uuid) -> Option<Phase> {
        let mut entries = self.entries.lock();
        let entry = entries.get_mut(&id)?;
        let phase = entry.phase;
        if phase == Phase::Parked {
            entry.phase = Phase::Restoring;
            self.metrics.sessions_parked.dec();
        }
        Some(phase)
    }

    fn abort_restore(&self, id: Uuid) {
        if let Some(entry) = self.entries.lock().get_mut(&id)
            && entry.phase == Phase::Restoring
        {
            entry.phase = Phase::Parked;
            self.metrics.sessions_parked.inc();
        }
    }

    /// A notification or response reached the session. For a restoring
    /// one, that is the replayed `initialized`: requests may reach it again.
    fn accepted(&self, id: &SessionId) {
        self.update(key(id), |entry| {
            entry.last_active = Instant::now();
            if entry.phase == Phase::Restoring {
                entry.phase = Phase::Live;
                self.metrics.session_restores.inc();
                debug!(session = %session_tag(id.as_ref()), "restored a parked session");
            }
        });
    }
}

// === impl Entry ===

impl Entry {
    fn new() -> Self {
        Self {
            state: None,
            last_active: Instant::now(),
            open_streams: 0,
            in_flight: Vec::new(),
            pinned: false,
            phase: Phase::Live,
            direct: None,
            rmcp_seen: Instant::now(),
        }
    }

    /// Ends the session's direct calls, as rmcp ends its own calls with
    /// the session.
    fn close_direct(&self) {
        if let Some(direct) = &self.direct {
            direct.close();
        }
    }

    fn opened(&mut self) {
        self.open_streams += 1;
        self.last_active = Instant::now();
    }
}

// === impl Store ===

impl Store {
    pub fn new(book: Arc<Book>) -> Self {
        Self(book)
    }
}

#[async_trait::async_trait]
impl SessionStore for Store {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        let Some(uuid) = key(session_id) else {
            return Ok(None);
        };
        let entries = self.0.entries.lock();
        Ok(entries
            .get(&uuid)
            .filter(|e| matches!(e.phase, Phase::Parking | Phase::Parked))
            .and_then(|e| e.state.as_deref().cloned()))
    }

    async fn store(&self, session_id: &str, state: &SessionState) -> Result<(), SessionStoreError> {
        let Some(uuid) = key(session_id) else {
            return Ok(());
        };
        let state = self.0.intern(state);
        if let Some(entry) = self.0.entries.lock().get_mut(&uuid) {
            entry.state = Some(state);
        }
        Ok(())
    }

    async fn delete(&self, session_id: &str) -> Result<(), SessionStoreError> {
        self.0.forget(session_id);
        Ok(())
    }
}

// === impl Tracked ===

impl Tracked {
    fn new(
        open: OpenStream,
        stream: impl Stream<Item = ServerSseMessage> + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: Box::pin(stream),
            _open: Some(open),
        }
    }

    /// The answer to a request reusing the id of one still in flight.
    fn refusal(request: RequestId) -> Self {
        let error = ErrorData::invalid_request(
            format!(
                "request id {request} is already in flight in this session; use a new id for each request"
            ),
            None,
        );
        let answer =
            ServerSseMessage::from_message(ServerJsonRpcMessage::error(error, Some(request)));
        Tracked {
            inner: Box::pin(futures::stream::iter([answer])),
            _open: None,
        }
    }
}

impl Stream for Tracked {
    type Item = ServerSseMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.book.update(self.id, |entry| {
            entry.open_streams = entry.open_streams.saturating_sub(1);
            entry.last_active = Instant::now();
            if let Some(request) = &self.request
                && let Some(at) = entry.in_flight.iter().position(|r| r == request)
            {
                entry.in_flight.swap_remove(at);
            }
        });
    }
}

/// glibc returns freed memory from the middle of its heaps to the OS only
/// when asked; without this, parking frees memory for reuse but the
/// replica's resident size stays at its peak.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

/// Spawns the reaper of `sessions` as a task that ends with `shutdown`.
pub fn spawn_reaper(sessions: Arc<ParkingSessions>, shutdown: CancellationToken) {
    tokio::spawn(
        sessions
            .reap(shutdown)
            .instrument(info_span!("session_parking")),
    );
}

#[cfg(test)]
mod tests {
    use rmcp::model::{InitializeRequestParams, NumberOrString};

    use super::*;

    const PARK_AFTER: Duration = Duration::from_secs(30);
    const EXPIRE_AFTER: Duration = Duration::from_secs(1800);

    /// A book holding one live, initialised session.
    fn book_with_session() -> (Arc<Book>, SessionId, Uuid) {
        let book = Book::new(PARK_AFTER, EXPIRE_AFTER, Arc::new(Metrics::new()));
        let uuid = Uuid::new_v4();
        let mut entry = Entry::new();
        entry.state = Some(book.intern(&SessionState::new(InitializeRequestParams::default())));
        book.entries.lock().insert(uuid, entry);
        (book, SessionId::from(uuid.to_string()), uuid)
    }

    /// Idles the session until it is due, and completes its park.
    async fn park(book: &Book, uuid: Uuid) {
        tokio::time::advance(PARK_AFTER).await;
        assert_eq!(book.due_for_parking(), vec![uuid]);
        book.finish_parking(uuid);
    }

    fn phase(book: &Book, uuid: Uuid) -> Option<Phase> {
        book.entries.lock().get(&uuid).map(|e| e.phase)
    }

    #[tokio::test(start_paused = true)]
    async fn only_idle_sessions_without_streams_or_pins_are_parked() {
        let (book, id, uuid) = book_with_session();
        tokio::time::advance(PARK_AFTER / 2).await;
        assert!(book.due_for_parking().is_empty(), "not idle long enough");

        let open = book.open_stream(&id);
        tokio::time::advance(PARK_AFTER * 2).await;
        assert!(book.due_for_parking().is_empty(), "a stream is open");
        drop(open);
        assert!(
            book.due_for_parking().is_empty(),
            "closing a stream is activity"
        );

        tokio::time::advance(PARK_AFTER).await;
        book.pin(&id);
        assert!(book.due_for_parking().is_empty(), "pinned");
        book.update(Some(uuid), |entry| entry.pinned = false);

        assert_eq!(book.due_for_parking(), vec![uuid]);
        assert_eq!(phase(&book, uuid), Some(Phase::Parking));
        assert!(!book.touch(&id), "a parking session is not live");
        book.finish_parking(uuid);
        assert_eq!(phase(&book, uuid), Some(Phase::Parked));
        assert_eq!(book.metrics.sessions_parked.get(), 1);
        assert_eq!(book.metrics.session_parks.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_park_rmcp_never_reports_completes_after_the_grace() {
        let (book, _, uuid) = book_with_session();
        tokio::time::advance(PARK_AFTER).await;
        assert_eq!(book.due_for_parking(), vec![uuid]);
        tokio::time::advance(PARKING_GRACE / 2).await;
        book.due_for_parking();
        assert_eq!(phase(&book, uuid), Some(Phase::Parking));
        tokio::time::advance(PARKING_GRACE).await;
        book.due_for_parking();
        assert_eq!(phase(&book, uuid), Some(Phase::Parked));
        assert_eq!(book.metrics.sessions_parked.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn parked_sessions_expire_like_live_ones_and_the_gauge_follows() {
        let (book, id, uuid) = book_with_session();
        park(&book, uuid).await;

        // A restore that fails puts it back; one that succeeds makes it live.
        assert_eq!(book.begin_restore(uuid), Some(Phase::Parked));
        assert_eq!(book.metrics.sessions_parked.get(), 0);
        book.abort_restore(uuid);
        assert_eq!(book.metrics.sessions_parked.get(), 1);
        assert_eq!(phase(&book, uuid), Some(Phase::Parked));

        tokio::time::advance(EXPIRE_AFTER).await;
        book.due_for_parking();
        assert_eq!(phase(&book, uuid), None, "expired");
        assert_eq!(book.metrics.sessions_parked.get(), 0);
        assert!(
            book.handshakes.lock().is_empty(),
            "its handshake is dropped"
        );
        assert!(!book.touch(&id));
    }

    #[tokio::test(start_paused = true)]
    async fn a_restore_is_live_once_the_replayed_handshake_is_in() {
        let (book, id, uuid) = book_with_session();
        park(&book, uuid).await;
        assert_eq!(book.begin_restore(uuid), Some(Phase::Parked));
        assert!(!book.touch(&id), "requests wait while it restores");
        book.accepted(&id);
        assert_eq!(phase(&book, uuid), Some(Phase::Live));
        assert!(book.touch(&id));
        assert_eq!(book.metrics.session_restores.get(), 1);
        assert_eq!(book.metrics.sessions_parked.get(), 0);
    }

    #[test]
    fn identical_handshakes_are_shared() {
        let (book, _, _) = book_with_session();
        let state = SessionState::new(InitializeRequestParams::default());
        assert!(Arc::ptr_eq(&book.intern(&state), &book.intern(&state)));
    }

    #[tokio::test]
    async fn a_request_id_is_refused_while_it_is_in_flight() {
        let (book, id, _) = book_with_session();
        let request = NumberOrString::Number(7);
        let first = book.open_request(&id, &request).expect("a new id");
        assert!(book.open_request(&id, &request).is_none());
        let other = book.open_request(&id, &NumberOrString::Number(8));
        assert!(other.is_some(), "another id is fine");
        drop(first);
        assert!(book.open_request(&id, &request).is_some(), "free again");
    }
}
