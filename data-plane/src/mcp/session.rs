//! The gateway's client sessions: one [`Sessions`] table, one row per
//! session id a client holds, live or parked. A live [`Session`] owns what
//! a session has while it is in memory: its requests in flight (by the
//! client's id, so a reused id is refused and a cancel finds its call),
//! the server requests waiting for the client's answer, the resumable
//! streams of its streamed answers (`replay.rs`), and its own stream, on
//! which what belongs to no request goes out (list changes, log messages,
//! resource updates, a per-session server's requests between calls).
//!
//! Parking is "drop the live parts, keep the row": a session idle for a
//! while, with nothing in flight, no stream open and nothing of its own a
//! fresh start would lose (a log level, subscriptions, per-session server
//! connections: it is pinned then), keeps only its handshake (interned, so
//! identical ones cost one copy) and caller. Its next request makes it live
//! again under the same id, and it is told to re-list, since it may have
//! missed changes. Parked and live rows expire after the idle timeout.
//!
//! The row is all a session is to a replica, and a streamable session's
//! id is its row sealed (`seal.rs`): a replica that never saw the session
//! adopts it from the id as a parked row, so a client's requests may land
//! on any replica. What a row holds beyond the id (a log level,
//! subscriptions, per-session server connections, calls in flight, the
//! session's stream) stays on the replica that had it. A session ends when
//! its client deletes it (remembered here, so the id opens nothing more on
//! this replica) or when its id outlives the session lifetime.

use std::{
    collections::HashMap,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::body::Bytes;
use parking_lot::Mutex;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::Counter, gauge::ConstGauge},
};
use rmcp::{
    ErrorData,
    model::{
        CancelledNotification, CancelledNotificationParam, ClientResult, InitializeRequestParams,
        ProgressNotification, PromptListChangedNotification, RequestId,
        ResourceListChangedNotification, ServerJsonRpcMessage, ServerNotification, ServerRequest,
        ToolListChangedNotification,
    },
};
use serde_json::value::RawValue;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};
use uuid::Uuid;

use super::{
    answer::Refusal,
    replay::Replay,
    seal::{Refused, Rest, SessionKeys},
};
use crate::{
    clients::{Asking, ClientSession, SessionKey, ToStream},
    downstream::Servers,
    observe::session_tag,
    telemetry::metrics::{ReasonLabels, encode_counters},
};

/// Ended sessions remembered at most; beyond, the oldest are forgotten
/// (their ids open again here until their lifetime ends).
const MAX_ENDED: usize = 65_536;
/// Why a presented id opened no session (`switchboard_session_id_refusals`).
#[derive(Clone, Copy)]
enum IdRefusal {
    Sealed(Refused),
    /// Its session ended here, or was pinned and expired.
    Ended,
    /// Sealed without its handshake (too big): it cannot be restored.
    NotPortable,
    /// It opens, but what it carries does not read (another version's).
    Unreadable,
}

impl IdRefusal {
    const LABELS: [&'static str; 7] = [
        "malformed",
        "unknown_key",
        "tampered",
        "expired",
        "ended",
        "not_portable",
        "unreadable",
    ];

    fn index(self) -> usize {
        match self {
            IdRefusal::Sealed(Refused::Malformed) => 0,
            IdRefusal::Sealed(Refused::UnknownKey) => 1,
            IdRefusal::Sealed(Refused::Tampered) => 2,
            IdRefusal::Sealed(Refused::Expired) => 3,
            IdRefusal::Ended => 4,
            IdRefusal::NotPortable => 5,
            IdRefusal::Unreadable => 6,
        }
    }
}

/// Messages queued on a session's own stream; beyond, notifications are
/// dropped and server requests wait.
const OWN_STREAM_CAPACITY: usize = 64;

/// Every client session of this replica, live or parked.
pub struct Sessions {
    rows: Mutex<HashMap<Uuid, Row>>,
    /// Seals new ids and opens presented ones.
    keys: SessionKeys,
    /// Sessions their clients ended, and when: their ids open nothing.
    ended: Mutex<HashMap<Uuid, Instant>>,
    /// Distinct handshakes, by their JSON.
    handshakes: Mutex<HashMap<String, Arc<InitializeRequestParams>>>,
    /// Sessions idle this long are parked; `None`: never.
    park_after: Option<Duration>,
    /// Sessions idle this long are forgotten.
    expire_after: Duration,
    max_sessions: usize,
    /// Sessions one authenticated client may hold.
    max_per_client: usize,
    servers: Servers,
    parks: Counter,
    restores: Counter,
    /// Sessions restored from an id this replica never held.
    adopted: Counter,
    /// Ids that opened no session, by why.
    refused_ids: [Counter; IdRefusal::LABELS.len()],
    /// New sessions refused: the table was full.
    refused_full: Counter,
    /// Ids presented by a client other than the one that opened them.
    refused_other_client: Counter,
    /// New sessions refused: their client held its limit.
    refused_client_limit: Counter,
}

/// How a session is reached.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Streamable HTTP: its id in `Mcp-Session-Id` is its row sealed
    /// (`seal.rs`), or a hyphenated UUID where nothing could be sealed.
    Streamable,
    /// Legacy HTTP+SSE: its id is a simple UUID in `?sessionId=`, and it
    /// lives as long as its one stream.
    Legacy,
}

struct Row {
    kind: Kind,
    /// Restored from an id another replica issued.
    adopted: bool,
    /// The id the client holds.
    wire_id: Arc<str>,
    /// The authenticated client that opened it: only it may use the id.
    owner: Option<Arc<str>>,
    /// `None` while parked.
    live: Option<Arc<Session>>,
    /// Kept while parked.
    handshake: Option<Arc<InitializeRequestParams>>,
    caller: Option<String>,
    last_active: Instant,
    /// Requests and streams of the session open now.
    open: u32,
}

/// One session in memory.
pub struct Session {
    pub id: Uuid,
    /// The id the client holds: sealed (streamable), or the UUID (legacy).
    pub wire_id: Arc<str>,
    pub kind: Kind,
    key: SessionKey,
    handshake: OnceLock<Arc<InitializeRequestParams>>,
    /// The caller this session named first (see `observe.rs`).
    pub caller: OnceLock<String>,
    /// The session as the relay reaches it.
    pub client: Arc<ClientSession>,
    /// The reading end of the session's own stream, while no stream reads it.
    own_stream: Mutex<Option<mpsc::Receiver<ToStream>>>,
    /// It holds state a fresh start would lose: never parked.
    pinned: AtomicBool,
    /// Its client set that state here, not another replica repeating it
    /// (`peers.rs`): it ends, rather than being forgotten, on expiry.
    pinned_here: AtomicBool,
    calls: Mutex<Calls>,
    /// Cancelled when the session ends.
    pub ended: CancellationToken,
    servers: Servers,
}

/// A session's requests in flight and what they wait for.
#[derive(Default)]
struct Calls {
    by_id: HashMap<RequestId, CancellationToken>,
    /// Server requests sent to the client, by the id the client was given.
    asked: HashMap<RequestId, Asked>,
    /// Streamed answers, resumable by `Last-Event-ID`.
    replays: HashMap<u64, Arc<Replay>>,
    closed: bool,
}

/// A server request the client has been sent.
struct Asked {
    /// Reads the client's result as the type the request expects.
    read: fn(&str) -> serde_json::Result<ClientResult>,
    answer_to: oneshot::Sender<Result<ClientResult, ErrorData>>,
}

/// Counts a request or stream as open in its session's row until dropped:
/// a session with one open is busy, never parked.
pub struct Open {
    sessions: Arc<Sessions>,
    id: Uuid,
}

/// A request in its session's table until dropped.
pub struct InFlight {
    session: Arc<Session>,
    id: RequestId,
    pub cancel: CancellationToken,
}

/// What keeps a request's session as the request needs it while it
/// runs: counted open (a session of many requests, never parked then), or
/// alive and closed after (a one-off's).
pub enum Holding {
    Open(Open),
    OneOff(OneOff),
}

/// A one-request session (REST, MCP 2026-07-28), closed however the
/// request ends: a client that goes away drops its handler mid-call.
pub struct OneOff(Arc<Session>);

impl std::ops::Deref for OneOff {
    type Target = Arc<Session>;

    fn deref(&self) -> &Arc<Session> {
        &self.0
    }
}

impl Drop for OneOff {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The session's own stream, given back when dropped.
pub struct OwnStream {
    session: Arc<Session>,
    receiver: Option<mpsc::Receiver<ToStream>>,
}

/// The UUID of a streamable id written as one (a session sealed without
/// keys); anything else is a sealed id or nothing.
fn streamable_id(id: &str) -> Option<Uuid> {
    let uuid = Uuid::try_parse(id).ok()?;
    let mut canonical = Uuid::encode_buffer();
    (uuid.as_hyphenated().encode_lower(&mut canonical) == id).then_some(uuid)
}

fn legacy_id(id: &str) -> Option<Uuid> {
    let uuid = Uuid::try_parse(id).ok()?;
    let mut canonical = Uuid::encode_buffer();
    (uuid.as_simple().encode_lower(&mut canonical) == id).then_some(uuid)
}

// === impl Sessions ===

impl Sessions {
    pub fn new(
        park_after: Option<Duration>,
        expire_after: Duration,
        max_sessions: usize,
        max_per_client: usize,
        servers: Servers,
        keys: SessionKeys,
    ) -> Arc<Self> {
        Arc::new(Self {
            rows: Mutex::default(),
            keys,
            ended: Mutex::default(),
            handshakes: Mutex::default(),
            park_after,
            expire_after,
            max_sessions,
            max_per_client,
            servers,
            parks: Counter::default(),
            restores: Counter::default(),
            adopted: Counter::default(),
            refused_ids: Default::default(),
            refused_full: Counter::default(),
            refused_other_client: Counter::default(),
            refused_client_limit: Counter::default(),
        })
    }

    /// A new session of `owner` (the authenticated client, if any), with
    /// the request or stream that opens it counted open; refused when the
    /// table is full.
    pub fn create(
        self: &Arc<Self>,
        kind: Kind,
        handshake: Option<InitializeRequestParams>,
        owner: Option<Arc<str>>,
    ) -> Result<(Arc<Session>, Open), Refusal> {
        let handshake = handshake.map(|h| self.intern(&h));
        let mut rows = self.rows.lock();
        if rows.len() >= self.max_sessions {
            self.refused_full.inc();
            debug!(
                max = self.max_sessions,
                "refused a new session: at the limit"
            );
            return Err(Refusal::too_many_sessions(self.max_sessions));
        }
        if let Some(owner) = &owner {
            let held = rows
                .values()
                .filter(|row| row.owner.as_ref() == Some(owner))
                .count();
            if held >= self.max_per_client {
                self.refused_client_limit.inc();
                debug!(client = %owner, max = self.max_per_client, "refused a new session: the client holds its limit");
                return Err(Refusal::too_many_client_sessions(
                    owner,
                    self.max_per_client,
                ));
            }
        }
        let id = Uuid::new_v4();
        let wire_id = self.wire_id(id, kind, handshake.as_deref(), owner.as_deref());
        let session = Session::new(
            id,
            wire_id.clone(),
            kind,
            handshake.clone(),
            None,
            owner.clone(),
            self.servers.clone(),
        );
        rows.insert(
            id,
            Row {
                kind,
                adopted: false,
                wire_id,
                owner,
                live: Some(session.clone()),
                handshake,
                caller: None,
                last_active: Instant::now(),
                open: 1,
            },
        );
        let open = Open {
            sessions: self.clone(),
            id,
        };
        Ok((session, open))
    }

    /// A session for one request, in no table, never parked, closed when
    /// the request ends: REST's (`Asking::Never`: its client
    /// cannot be asked anything), or a 2026-07-28 request's
    /// (`Asking::InRounds`: questions wait on its own stream for
    /// `mcp/rounds.rs`).
    pub fn detached(
        &self,
        handshake: InitializeRequestParams,
        owner: Option<Arc<str>>,
        asking: Asking,
    ) -> OneOff {
        let session = Session::new(
            Uuid::new_v4(),
            Arc::from(""),
            Kind::Streamable,
            Some(self.intern(&handshake)),
            None,
            owner,
            self.servers.clone(),
        );
        session.client.set_asking(asking);
        if asking == Asking::Never {
            // Nobody reads a stream of its own.
            session.own_stream.lock().take();
        }
        OneOff(session)
    }

    /// The live session `id` names (restoring a parked one, adopting one
    /// another replica opened), with the request about to use it counted
    /// open; `None` if no session of that kind has that id, it ended, or
    /// it is another client's: a session id that leaked is of no use to
    /// anyone else.
    pub fn enter(
        self: &Arc<Self>,
        id: &str,
        kind: Kind,
        caller: Option<&str>,
    ) -> Option<(Arc<Session>, Open)> {
        let uuid = self.row_of(id, kind)?;
        let mut rows = self.rows.lock();
        if !rows.contains_key(&uuid) {
            drop(rows);
            // The id's own work (opening it in full, the handshake) is
            // done outside the table's lock; what depends on the table is
            // checked again under it.
            let row = self.adoptable(uuid, id, kind, caller)?;
            rows = self.rows.lock();
            self.adopt(&mut rows, uuid, row, id)?;
        }
        // A row is reached by the id its client was given, never by its
        // UUID alone (which a sealed id hides).
        let row = rows
            .get_mut(&uuid)
            .filter(|row| row.kind == kind && &*row.wire_id == id)?;
        if row.owner.as_deref() != caller {
            self.refused_other_client.inc();
            debug!(session = %session_tag(id), "refused a session id presented by another client");
            return None;
        }
        row.open += 1;
        row.last_active = Instant::now();
        let session = match &row.live {
            Some(session) => session.clone(),
            None => {
                let session = Session::new(
                    uuid,
                    row.wire_id.clone(),
                    kind,
                    row.handshake.clone(),
                    row.caller.take(),
                    row.owner.clone(),
                    self.servers.clone(),
                );
                if row.adopted {
                    session.client.set_moved();
                }
                row.live = Some(session.clone());
                self.restores.inc();
                debug!(session = %session_tag(id), "restored a parked session");
                session.relist();
                session
            }
        };
        drop(rows);
        let open = Open {
            sessions: self.clone(),
            id: uuid,
        };
        Some((session, open))
    }

    /// The row an id names: a sealed id's UUID (checked, not yet read
    /// further), a legacy session's, or a streamable one sealed without
    /// keys (this replica's alone).
    fn row_of(&self, id: &str, kind: Kind) -> Option<Uuid> {
        match kind {
            Kind::Legacy => legacy_id(id),
            Kind::Streamable => streamable_id(id).or_else(|| match self.keys.open(id, false) {
                Ok(claims) => Some(claims.id),
                Err(refused) => {
                    self.refused_id(IdRefusal::Sealed(refused));
                    debug!(session = %session_tag(id), %refused, "a session id opened nothing");
                    None
                }
            }),
        }
    }

    /// A parked row for a session another replica opened (or this one
    /// forgot), from its id; `None` if it ended here, is another client's,
    /// or carries no handshake (too big to seal).
    fn adoptable(&self, uuid: Uuid, id: &str, kind: Kind, caller: Option<&str>) -> Option<Row> {
        if kind != Kind::Streamable || streamable_id(id).is_some() {
            return None;
        }
        if self.ended.lock().contains_key(&uuid) {
            self.refused_id(IdRefusal::Ended);
            return None;
        }
        let Some(rest) = self.keys.open(id, true).ok().and_then(|claims| claims.rest) else {
            self.refused_id(IdRefusal::Unreadable);
            return None;
        };
        if rest.owner.as_deref() != caller {
            self.refused_other_client.inc();
            debug!(session = %session_tag(id), "refused a session id presented by another client");
            return None;
        }
        let Some(handshake) = rest.handshake else {
            self.refused_id(IdRefusal::NotPortable);
            return None;
        };
        Some(Row {
            kind,
            adopted: true,
            wire_id: Arc::from(id),
            owner: rest.owner.map(Arc::from),
            live: None,
            handshake: Some(self.intern(&handshake)),
            caller: None,
            last_active: Instant::now(),
            open: 0,
        })
    }

    /// Puts an adoptable row in the table, unless the session ended (or
    /// another request adopted it) meanwhile. A full table makes room by
    /// forgetting its longest-quiet parked row (its id restores it): rows
    /// of other replicas' sessions are a cache, not a commitment. The
    /// client's session limit is not applied: these sessions exist.
    fn adopt(&self, rows: &mut HashMap<Uuid, Row>, uuid: Uuid, row: Row, id: &str) -> Option<()> {
        if self.ended.lock().contains_key(&uuid) {
            self.refused_id(IdRefusal::Ended);
            return None;
        }
        if rows.contains_key(&uuid) {
            return Some(());
        }
        if rows.len() >= self.max_sessions {
            let quietest = rows
                .iter()
                .filter(|(_, row)| row.live.is_none() && row.open == 0)
                .min_by_key(|(_, row)| row.last_active)
                .map(|(uuid, _)| *uuid);
            let Some(quietest) = quietest else {
                self.refused_full.inc();
                debug!(session = %session_tag(id), "refused to adopt a session: the table is full of live ones");
                return None;
            };
            rows.remove(&quietest);
        }
        rows.insert(uuid, row);
        self.adopted.inc();
        debug!(session = %session_tag(id), "adopted a session from its id");
        Some(())
    }

    /// The id a new session's client is given: sealed (streamable; the
    /// UUID if nothing can be sealed), the UUID (legacy).
    fn wire_id(
        &self,
        id: Uuid,
        kind: Kind,
        handshake: Option<&InitializeRequestParams>,
        owner: Option<&str>,
    ) -> Arc<str> {
        let mut plain = Uuid::encode_buffer();
        let plain = match kind {
            Kind::Legacy => id.as_simple().encode_lower(&mut plain),
            Kind::Streamable => {
                let rest = Rest {
                    owner: owner.map(str::to_owned),
                    handshake: handshake.cloned(),
                };
                if let Some(sealed) = self.keys.seal(id, &rest) {
                    return Arc::from(sealed);
                }
                warn!("could not seal a session id: this session lives on this replica only");
                id.as_hyphenated().encode_lower(&mut plain)
            }
        };
        Arc::from(&*plain)
    }

    fn refused_id(&self, refusal: IdRefusal) {
        self.refused_ids[refusal.index()].inc();
    }

    /// Remembers that a session ended: its id opens nothing more here.
    /// Called with the rows locked, so no request adopts it in between.
    fn tombstone(&self, uuid: Uuid) {
        let mut ended = self.ended.lock();
        if ended.len() >= MAX_ENDED
            && let Some(oldest) = ended.iter().min_by_key(|(_, at)| **at).map(|(id, _)| *id)
        {
            ended.remove(&oldest);
        }
        ended.insert(uuid, Instant::now());
    }

    /// Records the handshake of a session created without one (legacy SSE).
    pub fn set_handshake(&self, session: &Session, handshake: &InitializeRequestParams) {
        let handshake = self.intern(handshake);
        let _ = session.handshake.set(handshake.clone());
        if let Some(row) = self.rows.lock().get_mut(&session.id) {
            row.handshake = Some(handshake);
        }
    }

    /// Ends the session `id` names, live, parked or another replica's, if
    /// it is `caller`'s; whether there was one. Its id opens nothing on
    /// this replica from then on.
    pub fn end(&self, id: &str, kind: Kind, caller: Option<&str>) -> bool {
        let Some(uuid) = self.row_of(id, kind) else {
            return false;
        };
        // For a session this replica does not hold, the id says whose it is.
        let theirs = kind == Kind::Streamable
            && streamable_id(id).is_none()
            && self
                .keys
                .open(id, true)
                .ok()
                .and_then(|claims| claims.rest)
                .is_some_and(|rest| rest.owner.as_deref() == caller);
        let mut rows = self.rows.lock();
        let removed = match rows.get(&uuid) {
            Some(row) if row.kind != kind || &*row.wire_id != id => return false,
            Some(row) if row.owner.as_deref() == caller => rows.remove(&uuid),
            Some(_) => {
                self.refused_other_client.inc();
                return false;
            }
            None if !theirs || self.ended.lock().contains_key(&uuid) => return false,
            None => None,
        };
        if kind == Kind::Streamable {
            self.tombstone(uuid);
        }
        drop(rows);
        if let Some(session) = removed.and_then(|row| row.live) {
            session.close();
        }
        true
    }

    /// Ends every session: the replica stops.
    pub fn close_all(&self) {
        let rows = std::mem::take(&mut *self.rows.lock());
        for session in rows.into_values().filter_map(|row| row.live) {
            session.close();
        }
    }

    /// The shared copy of a handshake.
    fn intern(&self, handshake: &InitializeRequestParams) -> Arc<InitializeRequestParams> {
        let json = serde_json::to_string(handshake).unwrap_or_default();
        self.handshakes
            .lock()
            .entry(json)
            .or_insert_with(|| Arc::new(handshake.clone()))
            .clone()
    }

    /// Parks live sessions idle long enough, forgets rows idle past the
    /// idle timeout; how many were parked.
    fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut parked = Vec::new();
        let mut expired = Vec::new();
        let mut rows = self.rows.lock();
        rows.retain(|uuid, row| {
            let idle = now.saturating_duration_since(row.last_active);
            if row.open > 0 {
                return true;
            }
            if idle >= self.expire_after && row.kind == Kind::Streamable {
                // Forgotten, its id restores it; unless it held what a
                // restored one would lack (subscriptions, a log level,
                // per-session connections): then it ends, so its client
                // hears 404 and starts again rather than miss things.
                if let Some(session) = row.live.take() {
                    if session.pinned_here.load(Ordering::Relaxed) {
                        self.tombstone(*uuid);
                    }
                    expired.push(session);
                }
                return false;
            }
            let due = self.park_after.is_some_and(|after| idle >= after);
            if due
                && row.kind == Kind::Streamable
                && row.handshake.is_some()
                && let Some(session) = row.live.take_if(|s| s.parkable())
            {
                row.caller = session.caller.get().cloned();
                parked.push(session);
            }
            true
        });
        drop(rows);
        self.handshakes
            .lock()
            .retain(|_, handshake| Arc::strong_count(handshake) > 1);
        // An ended session's id opens nothing anyway once past its lifetime.
        let lifetime = self.keys.max_age();
        self.ended
            .lock()
            .retain(|_, at| now.saturating_duration_since(*at) < lifetime);
        if !expired.is_empty() {
            debug!(
                expired = expired.len(),
                "forgot sessions past the idle timeout"
            );
        }
        for session in expired {
            session.close();
        }
        let count = parked.len();
        for session in parked {
            session.close();
            self.parks.inc();
            debug!(session = %session_tag(&session.wire_id), "parked an idle session");
        }
        count
    }

    /// Parks and expires sessions until `shutdown`.
    pub fn spawn_sweeper(self: &Arc<Self>, shutdown: CancellationToken) {
        let every = self
            .park_after
            .map_or(self.expire_after, |after| after / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(5));
        let sessions = self.clone();
        let sweep = async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                if sessions.sweep() > 0 {
                    // Parked sessions' tasks let go of their memory soon.
                    let _ = tokio::task::spawn_blocking(release_free_memory).await;
                }
            }
        };
        tokio::spawn(sweep.instrument(info_span!("session_sweeper")));
    }

    /// Sessions held, live and parked.
    pub fn count(&self) -> usize {
        self.rows.lock().len()
    }

    fn counts(&self) -> (i64, i64) {
        let rows = self.rows.lock();
        let live = rows.values().filter(|row| row.live.is_some()).count();
        (live as i64, (rows.len() - live) as i64)
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions")
    }
}

/// The table's metrics (`switchboard_sessions*`), read from it at each
/// scrape.
#[derive(Debug)]
pub struct SessionGauges(pub Arc<Sessions>);

impl Collector for SessionGauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let sessions = &self.0;
        let (live, parked) = sessions.counts();
        let gauges = [
            ("sessions", "Client sessions in memory", live),
            (
                "sessions_parked",
                "Idle client sessions parked out of memory",
                parked,
            ),
        ];
        for (name, help, value) in gauges {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(family)?;
        }
        encode_counters(
            &mut encoder,
            &[
                (
                    "session_parks",
                    "Idle client sessions parked",
                    &sessions.parks,
                ),
                (
                    "session_restores",
                    "Parked client sessions restored by a request",
                    &sessions.restores,
                ),
                (
                    "sessions_adopted",
                    "Client sessions another replica opened, restored here from their ids",
                    &sessions.adopted,
                ),
            ],
        )?;
        let mut refused = encoder.encode_descriptor(
            "session_id_refusals",
            "Session ids that opened no session, by reason (malformed, unknown_key: sealed with a key not in the set, tampered, expired: past the session lifetime, ended: deleted by its client here, or expired here holding state of its own, not_portable: its handshake was too big to carry, unreadable: it opens but does not read)",
            None,
            MetricType::Counter,
        )?;
        for (reason, counter) in IdRefusal::LABELS.iter().zip(&sessions.refused_ids) {
            counter.encode(refused.encode_family(&ReasonLabels::new(reason))?)?;
        }
        let mut refusals = encoder.encode_descriptor(
            "session_refusals",
            "Session requests refused, by reason (limit: the table was full; client_limit: the client held its limit; other_client: an id presented by a client other than its owner)",
            None,
            MetricType::Counter,
        )?;
        for (reason, counter) in [
            ("limit", &sessions.refused_full),
            ("client_limit", &sessions.refused_client_limit),
            ("other_client", &sessions.refused_other_client),
        ] {
            counter.encode(refusals.encode_family(&ReasonLabels::new(reason))?)?;
        }
        Ok(())
    }
}

// === impl Session ===

impl Session {
    fn new(
        id: Uuid,
        wire_id: Arc<str>,
        kind: Kind,
        handshake: Option<Arc<InitializeRequestParams>>,
        caller: Option<String>,
        owner: Option<Arc<str>>,
        servers: Servers,
    ) -> Arc<Self> {
        static NEXT_KEY: AtomicU64 = AtomicU64::new(1);
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        let (outbox, own_stream) = mpsc::channel(OWN_STREAM_CAPACITY);
        let client = servers.clients().register(key, owner, outbox);
        Arc::new(Self {
            id,
            wire_id,
            kind,
            key,
            handshake: handshake.map(OnceLock::from).unwrap_or_default(),
            caller: caller.map(OnceLock::from).unwrap_or_default(),
            client,
            own_stream: Mutex::new(Some(own_stream)),
            pinned: AtomicBool::new(false),
            pinned_here: AtomicBool::new(false),
            calls: Mutex::default(),
            ended: CancellationToken::new(),
            servers,
        })
    }

    pub fn key(&self) -> SessionKey {
        self.key
    }

    /// The client's `initialize`, once it has sent it.
    pub fn handshake(&self) -> Option<&InitializeRequestParams> {
        self.handshake.get().map(|h| &**h)
    }

    /// The handshake, shared: what a server's request on the client's
    /// behalf needs of it (`downstream::Origin`).
    pub fn shared_handshake(&self) -> Option<Arc<InitializeRequestParams>> {
        self.handshake.get().cloned()
    }

    /// Whether the client may be asked something (sampling, elicitation,
    /// roots): its requests then get a stream of their own for that.
    pub fn askable(&self) -> bool {
        self.handshake().is_some_and(|h| {
            let capabilities = &h.capabilities;
            capabilities.sampling.is_some()
                || capabilities.elicitation.is_some()
                || capabilities.roots.is_some()
        })
    }

    /// Nothing of its own would be lost by parking it: not pinned, and
    /// every streamed answer it keeps was delivered whole (a slow machine
    /// streams even quick answers; those must not hold sessions in memory).
    fn parkable(&self) -> bool {
        !self.pinned.load(Ordering::Relaxed)
            && self.calls.lock().replays.values().all(|r| r.delivered())
    }

    /// Keeps the session in memory from now on: it holds state a fresh
    /// start would lose, set by its client here.
    pub fn pin(&self) {
        self.pinned.store(true, Ordering::Relaxed);
        self.pinned_here.store(true, Ordering::Relaxed);
    }

    /// [`Self::pin`] for state another replica repeated here: a copy, which
    /// expiry forgets without ending the session everywhere else.
    pub fn pin_copy(&self) {
        self.pinned.store(true, Ordering::Relaxed);
    }

    /// Enters a request in the table; `None` if its id is in flight
    /// already or the session has ended.
    pub fn begin(self: &Arc<Self>, id: &RequestId) -> Option<InFlight> {
        let mut calls = self.calls.lock();
        if calls.closed || calls.by_id.contains_key(id) {
            return None;
        }
        let cancel = CancellationToken::new();
        calls.by_id.insert(id.clone(), cancel.clone());
        Some(InFlight {
            session: self.clone(),
            id: id.clone(),
            cancel,
        })
    }

    /// The client cancelled a request of its own.
    pub fn cancel(&self, id: &RequestId) {
        if let Some(cancel) = self.calls.lock().by_id.get(id) {
            cancel.cancel();
        }
    }

    /// Hands the client's answer to the server request it answers; false
    /// if none is waiting under that id.
    pub fn answered(&self, id: &RequestId, answer: Result<&RawValue, &RawValue>) -> bool {
        let Some(asked) = self.calls.lock().asked.remove(id) else {
            return false;
        };
        let answer = match answer {
            Ok(result) => (asked.read)(result.get()).map_err(|error| {
                ErrorData::invalid_params(
                    format!("the client's answer is malformed: {error}"),
                    None,
                )
            }),
            Err(error) => Err(serde_json::from_str(error.get()).unwrap_or_else(|error| {
                ErrorData::internal_error(format!("the client's error is malformed: {error}"), None)
            })),
        };
        let _ = asked.answer_to.send(answer);
        true
    }

    /// A message for the client as an SSE event; `None` if there is
    /// nothing to say (a question withdrawn before it was asked, or asked
    /// of a session that has ended, which fails it at once). A question's
    /// answer finds its way back by its id ([`Self::answered`]).
    pub fn event(&self, item: ToStream) -> Option<Bytes> {
        let message = match item {
            ToStream::Answer(body) => return Some(event(&body)),
            ToStream::Progress(update) => notification(ServerNotification::ProgressNotification(
                ProgressNotification::new(*update),
            )),
            ToStream::Notification(message) => notification(*message),
            ToStream::Request {
                id,
                request,
                answer_to,
            } => {
                let read = reader_for(&request);
                let request = *request;
                let mut calls = self.calls.lock();
                if calls.closed {
                    return None;
                }
                // Questions nobody waits for any more.
                calls.asked.retain(|_, asked| !asked.answer_to.is_closed());
                calls.asked.insert(id.clone(), Asked { read, answer_to });
                ServerJsonRpcMessage::request(request, id)
            }
            ToStream::Withdrawn(id) => {
                self.calls.lock().asked.remove(&id)?;
                let reason = "the server no longer needs an answer".to_owned();
                let cancelled = CancelledNotificationParam::new(Some(id), Some(reason));
                notification(ServerNotification::CancelledNotification(
                    CancelledNotification::new(cancelled),
                ))
            }
        };
        // rmcp's own types: encoding them cannot fail.
        Some(event(&serde_json::to_vec(&message).unwrap_or_default()))
    }

    /// Sends an answer on the session's own stream, where legacy SSE
    /// clients read every answer; lost if the session has ended.
    pub async fn answer_on_own_stream(&self, body: Bytes) {
        let _ = self.client.outbox.send(ToStream::Answer(body)).await;
    }

    /// A new resumable stream for a streamed answer; `None` once the
    /// session has ended.
    pub fn open_replay(&self) -> Option<Arc<Replay>> {
        let mut calls = self.calls.lock();
        if calls.closed {
            return None;
        }
        let replay = Replay::new();
        calls.replays.insert(replay.stream(), replay.clone());
        Some(replay)
    }

    /// A streamed answer still kept.
    pub fn replay(&self, stream: u64) -> Option<Arc<Replay>> {
        self.calls.lock().replays.get(&stream).cloned()
    }

    /// Forgets a streamed answer that has been kept long enough.
    pub fn forget_replay(&self, stream: u64) {
        self.calls.lock().replays.remove(&stream);
    }

    /// What the session's servers ask its client, for input-required
    /// rounds: the session's own stream, taken.
    pub fn take_questions(&self) -> Option<mpsc::Receiver<ToStream>> {
        self.own_stream.lock().take()
    }

    /// The session's own stream, unless a stream already reads it.
    pub fn own_stream(self: &Arc<Self>) -> Option<OwnStream> {
        let receiver = self.own_stream.lock().take()?;
        Some(OwnStream {
            session: self.clone(),
            receiver: Some(receiver),
        })
    }

    /// Tells the client every list may have changed.
    fn relist(&self) {
        self.client
            .notify(ServerNotification::ToolListChangedNotification(
                ToolListChangedNotification::default(),
            ));
        self.client
            .notify(ServerNotification::PromptListChangedNotification(
                PromptListChangedNotification::default(),
            ));
        self.client
            .notify(ServerNotification::ResourceListChangedNotification(
                ResourceListChangedNotification::default(),
            ));
    }

    /// Ends the session's live parts: its requests are cancelled, the
    /// servers' questions to it fail, its streams end, and its
    /// per-session server connections stop.
    pub fn close(&self) {
        {
            let mut calls = self.calls.lock();
            if calls.closed {
                return;
            }
            calls.closed = true;
            for call in calls.by_id.values() {
                call.cancel();
            }
            calls.asked.clear();
            calls.replays.clear();
        }
        // Senders blocked on a full stream nobody reads any more fail now.
        drop(self.own_stream.lock().take());
        self.ended.cancel();
        self.servers.clients().remove(self.key);
        self.servers.release_session(self.key);
    }
}

fn notification(notification: ServerNotification) -> ServerJsonRpcMessage {
    ServerJsonRpcMessage::notification(notification)
}

// === impl Open ===

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(row) = self.sessions.rows.lock().get_mut(&self.id) {
            row.open = row.open.saturating_sub(1);
            row.last_active = Instant::now();
        }
    }
}

// === impl InFlight ===

impl Drop for InFlight {
    fn drop(&mut self) {
        self.session.calls.lock().by_id.remove(&self.id);
    }
}

// === impl OwnStream ===

impl OwnStream {
    pub async fn recv(&mut self) -> Option<ToStream> {
        self.receiver.as_mut()?.recv().await
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }
}

impl Drop for OwnStream {
    fn drop(&mut self) {
        // Given back for the next stream, unless the session has ended.
        if !self.session.ended.is_cancelled() {
            *self.session.own_stream.lock() = self.receiver.take();
        }
    }
}

/// How the client's result to `request` is read.
fn reader_for(request: &ServerRequest) -> fn(&str) -> serde_json::Result<ClientResult> {
    match request {
        ServerRequest::CreateMessageRequest(_) => {
            |raw| serde_json::from_str(raw).map(|r| ClientResult::CreateMessageResult(Box::new(r)))
        }
        ServerRequest::ListRootsRequest(_) => {
            |raw| serde_json::from_str(raw).map(ClientResult::ListRootsResult)
        }
        ServerRequest::ElicitRequest(_) => {
            |raw| serde_json::from_str(raw).map(ClientResult::ElicitResult)
        }
        _ => |raw| serde_json::from_str(raw).map(ClientResult::CustomResult),
    }
}

/// One SSE event carrying a JSON-RPC message.
pub fn event(message: &[u8]) -> Bytes {
    [b"event: message\ndata: ".as_slice(), message, b"\n\n"]
        .concat()
        .into()
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

#[cfg(test)]
mod tests;
