//! `GET /console/live`: what the console shows, as one Server-Sent Events
//! stream per open console. The state is a flat map of items by key
//! (`meta`, `server/<name>`, `issue/<n>`, `replica/<id>`,
//! `health/<replica>/<server>`): a stream starts with all of it
//! (`reset`), then gets only the items that changed or went (`patch`),
//! so 500 servers on 10 replicas cost a page nothing while one breaker
//! opens. Tool calls come as they arrive (`calls`), batched.
//!
//! One [`Hub`] task does the work for every open console: twice a second
//! it looks whether a replica reported (and at once on a registry change)
//! and if so builds the items, diffs them against the last ones and
//! broadcasts the patch, serialized once. Each
//! patch carries a sequence number, so a stream that starts (or falls
//! behind and starts again) from the hub's current items skips the
//! patches those already hold. With no console open the hub sleeps and
//! the control plane decodes no tool call for it. The number of streams
//! is bounded.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Notify, OwnedSemaphorePermit, broadcast, broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{Instrument, debug, info_span};

use super::{Console, ConsoleConfig};
use crate::{
    admin::{AdminState, error_answer},
    auth::Gate,
    push::ServerHealthStatus,
    traces::calls::Call,
};

/// Open console streams at once.
pub(super) const MAX_STREAMS: usize = 32;
/// How often replicas' reports and new calls are looked at.
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// Calls a stream starts with.
const RECENT_CALLS: usize = 200;
/// Calls sent in one `calls` event, at most.
const MAX_CALLS_PER_EVENT: usize = 256;
/// Updates a stream may fall behind by before it starts again.
const UPDATES_QUEUE: usize = 64;
/// Without a report or registry change, the items are built again this
/// often all the same: other control-plane pods' replicas change unseen.
const REBUILD_AT_LEAST_EVERY: Duration = Duration::from_secs(5);
/// How often an open stream's credentials are looked at again.
const RECHECK_EVERY: Duration = Duration::from_secs(5);
/// A browser that reads nothing for this long loses its stream.
const STALLED_AFTER: Duration = Duration::from_secs(30);

/// Shared, so an item that did not change is the same allocation from one
/// build to the next, and diffs and resets copy no JSON.
type Items = BTreeMap<String, Arc<Value>>;
/// Each server's health as last built, by item key: a report that does not
/// change it (to the digits shown) reuses the JSON.
type HealthCache = HashMap<String, (ServerHealthStatus, Arc<Value>)>;

/// What changed since the last event: items set (new or different) and
/// keys gone.
#[derive(Debug, Default, PartialEq, Serialize)]
pub(super) struct Patch {
    set: Items,
    del: Vec<String>,
}

/// What the items are built from.
#[derive(Clone)]
pub(super) struct Source {
    pub(super) admin: AdminState,
    pub(super) config: Arc<ConsoleConfig>,
    /// Whether writes are possible at all (an admin token is configured).
    pub(super) writable: bool,
}

/// Builds the items once for every open console; see the module's doc.
pub(super) struct Hub {
    source: Source,
    state: Mutex<Current>,
    health: Mutex<HealthCache>,
    updates: broadcast::Sender<Arc<Update>>,
    /// Wakes a sleeping hub when a console opens.
    wake: Notify,
}

/// The items every stream's next patch applies to.
#[derive(Default)]
struct Current {
    seq: u64,
    /// `None` while the hub sleeps: the next stream builds them.
    items: Option<Arc<Items>>,
    /// The call feed the stream that woke the hub subscribed to, before it
    /// read the recent calls: the hub takes it, so no call falls between.
    calls: Option<broadcast::Receiver<Arc<Call>>>,
}

/// A `calls` event.
#[derive(Serialize)]
struct CallBatch<'a> {
    calls: Vec<&'a Call>,
    missed: u64,
}

/// A `reset` event: the items as they lie, serialized without a copy.
#[derive(Serialize)]
struct Reset<'a> {
    items: &'a Items,
    calls: Vec<Call>,
}

/// One event for every stream, serialized once.
struct Update {
    /// A patch's: the items it leads to. Calls carry the current one.
    seq: u64,
    event: &'static str,
    data: String,
}

// === impl Hub ===

impl Hub {
    /// The hub, with its task running for the life of the process.
    pub(super) fn start(source: Source) -> Arc<Self> {
        let hub = Arc::new(Self {
            source,
            state: Mutex::default(),
            health: Mutex::default(),
            updates: broadcast::channel(UPDATES_QUEUE).0,
            wake: Notify::new(),
        });
        tokio::spawn(hub.clone().run().instrument(info_span!("console.hub")));
        hub
    }

    /// The current items and their sequence number, built if the hub slept.
    fn current(&self) -> (u64, Arc<Items>) {
        let mut state = self.state.lock();
        if let Some(items) = &state.items {
            return (state.seq, items.clone());
        }
        state.calls = Some(self.source.admin.traces.watch_calls());
        let items = Arc::new(self.build());
        state.seq += 1;
        state.items = Some(items.clone());
        (state.seq, items)
    }

    async fn run(self: Arc<Self>) {
        let mut registry = self.source.admin.registry.clone();
        // The registry's source may stop (the last registry stays): the
        // replicas still change.
        let mut registry_open = true;
        let mut look = tokio::time::interval(LOOK_EVERY);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut calls: Option<broadcast::Receiver<Arc<Call>>> = None;
        let mut arrived: Vec<Arc<Call>> = Vec::new();
        let mut missed = 0u64;
        // What the last build saw: replicas' revision, snapshot version.
        let mut seen: Option<(u64, u64)> = None;
        let mut built_at = Instant::now();
        loop {
            let asleep = {
                // Under the lock a stream takes to read the items: one that
                // subscribed meanwhile is counted, or finds them gone.
                let mut state = self.state.lock();
                let nobody = self.updates.receiver_count() == 0;
                if nobody {
                    state.items = None;
                    state.calls = None;
                }
                nobody
            };
            if asleep {
                seen = None;
                // Nobody watches: forget the items and stop decoding calls.
                self.health.lock().clear();
                calls = None;
                arrived.clear();
                missed = 0;
                debug!("no console open: the hub sleeps");
                tokio::select! {
                    () = self.wake.notified() => {}
                    changed = registry.changed(), if registry_open => registry_open = changed.is_ok(),
                }
                continue;
            }
            if let Some(fresh) = self.state.lock().calls.take() {
                calls = Some(fresh);
            }
            let feed = calls.get_or_insert_with(|| self.source.admin.traces.watch_calls());
            let mut look_now = true;
            tokio::select! {
                changed = registry.changed(), if registry_open => {
                    registry_open = changed.is_ok();
                    seen = None;
                }
                _ = look.tick() => {
                    // Nothing reported since the last look: nothing to build,
                    // but other pods' replicas are looked at now and then.
                    let now = (self.source.admin.replicas.revision(), self.source.admin.snapshots.borrow().version);
                    if seen == Some(now) && built_at.elapsed() < REBUILD_AT_LEAST_EVERY {
                        look_now = false;
                    } else {
                        seen = Some(now);
                    }
                }
                call = feed.recv() => {
                    match call {
                        Ok(call) => arrived.push(call),
                        Err(RecvError::Lagged(n)) => missed += n,
                        // The trace store is the process's: this is its end.
                        Err(RecvError::Closed) => calls = None,
                    }
                    // A full batch goes at once; the rest with the next look.
                    if arrived.len() < MAX_CALLS_PER_EVENT {
                        continue;
                    }
                    look_now = false;
                }
            }
            if look_now {
                // Building 5,000 items is CPU for milliseconds: off the
                // workers that serve requests.
                let hub = self.clone();
                let _ = tokio::task::spawn_blocking(move || hub.publish_changes()).await;
                built_at = Instant::now();
            }
            if !arrived.is_empty() || missed > 0 {
                let batch = CallBatch {
                    calls: arrived.iter().map(|call| &**call).collect(),
                    missed,
                };
                let seq = self.state.lock().seq;
                self.broadcast(seq, "calls", &batch);
                arrived.clear();
                missed = 0;
            }
        }
    }

    /// Builds the items, and broadcasts what changed since the last ones.
    fn publish_changes(&self) {
        let Some(before) = self.state.lock().items.clone() else {
            return;
        };
        let now = Arc::new(self.build());
        let patch = diff(&before, &now);
        if patch.set.is_empty() && patch.del.is_empty() {
            return;
        }
        let seq = {
            let mut state = self.state.lock();
            // A stream that found the hub asleep may have built newer ones.
            if !state
                .items
                .as_ref()
                .is_some_and(|items| Arc::ptr_eq(items, &before))
            {
                return;
            }
            state.seq += 1;
            state.items = Some(now);
            state.seq
        };
        self.broadcast(seq, "patch", &patch);
    }

    fn broadcast(&self, seq: u64, event: &'static str, data: &impl Serialize) {
        match serde_json::to_string(data) {
            // Nobody left to receive it is fine.
            Ok(data) => drop(self.updates.send(Arc::new(Update { seq, event, data }))),
            Err(error) => debug!(%error, "a console update did not serialize"),
        }
    }
}

/// `GET /console/live`.
pub(super) async fn stream(State(console): State<Console>, headers: HeaderMap) -> Response {
    let Ok(permit) = console.streams.clone().try_acquire_owned() else {
        return error_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_STREAMS} consoles are open: close one"),
        );
    };
    let (tx, rx) = mpsc::channel(4);
    let span = info_span!("console.stream");
    let viewer = Viewer {
        gate: console.operators.clone(),
        authorization: headers.get(header::AUTHORIZATION).cloned(),
    };
    tokio::spawn(feed(console.hub.clone(), viewer, tx, permit).instrument(span));
    let mut response = Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Proxies (an nginx ingress) pass each event on at once.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}

/// Who opened a stream: looked at again while it lasts, as a console
/// session ends (logout, expiry) without the connection ending.
struct Viewer {
    gate: Gate,
    authorization: Option<axum::http::HeaderValue>,
}

impl Viewer {
    fn still_admitted(&self) -> bool {
        self.gate
            .still_admits(self.authorization.as_ref().map(|v| v.as_bytes()))
    }
}

/// Sends the state, then its changes, until the browser goes.
async fn feed(
    hub: Arc<Hub>,
    viewer: Viewer,
    tx: mpsc::Sender<Result<Event, Infallible>>,
    _permit: OwnedSemaphorePermit,
) {
    let mut recheck = tokio::time::interval(RECHECK_EVERY);
    // Subscribed before the items are read, so no patch falls between.
    let mut updates = hub.updates.subscribe();
    hub.wake.notify_one();
    let mut seq = match reset(&hub, &tx).await {
        Some(seq) => seq,
        None => return,
    };
    loop {
        let update = tokio::select! {
            () = tx.closed() => return,
            _ = recheck.tick() => {
                if viewer.still_admitted() {
                    continue;
                }
                debug!("a console's session ended: its stream ends");
                return;
            }
            update = updates.recv() => update,
        };
        match update {
            Ok(update) if update.event == "patch" && update.seq <= seq => {}
            Ok(update) => {
                seq = seq.max(update.seq);
                let event = Event::default().event(update.event).data(&update.data);
                if !deliver(&tx, event).await {
                    return;
                }
            }
            Err(RecvError::Lagged(n)) => {
                debug!(missed = n, "a console fell behind: it starts again");
                match reset(&hub, &tx).await {
                    Some(now) => seq = now,
                    None => return,
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Hands an event to the connection; `false` once the browser is gone or
/// has not read for [`STALLED_AFTER`] (its stream's place is freed).
async fn deliver(tx: &mpsc::Sender<Result<Event, Infallible>>, event: Event) -> bool {
    match tx.send_timeout(Ok(event), STALLED_AFTER).await {
        Ok(()) => true,
        Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
            debug!("a console stopped reading: its stream ends");
            false
        }
        Err(mpsc::error::SendTimeoutError::Closed(_)) => false,
    }
}

/// Sends the whole state; its sequence number, or `None` if the browser went.
async fn reset(hub: &Arc<Hub>, tx: &mpsc::Sender<Result<Event, Infallible>>) -> Option<u64> {
    // Built (if the hub slept), read and serialized off the async workers.
    let hub = hub.clone();
    let (seq, data) = tokio::task::spawn_blocking(move || {
        let (seq, items) = hub.current();
        let reset = Reset {
            items: &items,
            calls: hub.source.admin.traces.recent_calls(RECENT_CALLS),
        };
        serde_json::to_string(&reset).ok().map(|data| (seq, data))
    })
    .await
    .ok()??;
    if !deliver(tx, Event::default().event("reset").data(data)).await {
        return None;
    }
    debug!("console stream (re)started");
    Some(seq)
}

// === impl Hub: the items ===

impl Hub {
    /// Every item the console shows, by key.
    fn build(&self) -> Items {
        let source = &self.source;
        let admin = &source.admin;
        let version = admin.snapshots.borrow().version;
        let replicas = admin.peers.merged(admin.replicas.snapshot(), version);
        let mut items = Items::new();
        {
            let registry = admin.registry.borrow();
            let meta = json!({
                "snapshotVersion": version,
                "mode": if admin.registry_dir.is_some() { "directory" } else { "kubernetes" },
                "writable": source.writable && admin.registry_dir.is_some(),
                "traceUiUrl": source.config.trace_ui_url,
                "build": env!("CARGO_PKG_VERSION"),
                "policies": registry.policies.len(),
                "clients": registry.clients.len(),
            });
            items.insert("meta".into(), Arc::new(meta));
            for server in registry.servers.values() {
                let item = json!({
                    "name": server.name,
                    "namespace": server.namespace,
                    "enabled": server.enabled,
                    "transport": server.transport.kind(),
                    "source": registry.origins.get(&server.name),
                });
                items.insert(format!("server/{}", server.name), Arc::new(item));
            }
            for (n, issue) in registry.issues.iter().enumerate() {
                items.insert(format!("issue/{n}"), Arc::new(json!(issue)));
            }
        }
        let mut cache = self.health.lock();
        let mut built = HealthCache::with_capacity(cache.len());
        for (id, replica) in replicas {
            for server in &replica.servers {
                let key = format!("health/{id}/{}", server.name);
                let shown = shown(server);
                let value = match cache.remove(&key) {
                    Some((was, value)) if was == shown => value,
                    _ => Arc::new(json!(shown)),
                };
                items.insert(key.clone(), value.clone());
                built.insert(key, (shown, value));
            }
            let mut summary = json!(replica);
            if let Some(fields) = summary.as_object_mut() {
                fields.remove("servers");
                fields.insert("id".into(), json!(id));
            }
            items.insert(format!("replica/{id}"), Arc::new(summary));
        }
        *cache = built;
        items
    }
}

/// A server's health as the page shows it: latencies to the two digits
/// it prints, so a report's new figures are a patch only when they show a
/// change.
fn shown(server: &ServerHealthStatus) -> ServerHealthStatus {
    let mut shown = server.clone();
    shown.latency_p50_us = two_digits(shown.latency_p50_us);
    shown.latency_p99_us = two_digits(shown.latency_p99_us);
    shown
}

/// `micros` to two significant digits (1234 → 1200, 87 → 87).
fn two_digits(micros: u64) -> u64 {
    let mut scale = 1;
    while micros / scale >= 100 {
        scale *= 10;
    }
    micros.saturating_add(scale / 2) / scale * scale
}

/// What turns `before` into `after`.
pub(super) fn diff(before: &Items, after: &Items) -> Patch {
    let set = after
        .iter()
        .filter(|(key, value)| {
            before
                .get(*key)
                .is_none_or(|was| !Arc::ptr_eq(was, value) && was != *value)
        })
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let del = before
        .keys()
        .filter(|key| !after.contains_key(*key))
        .cloned()
        .collect();
    Patch { set, del }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(pairs: &[(&str, Value)]) -> Items {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Arc::new(v.clone())))
            .collect()
    }

    #[test]
    fn latencies_keep_the_digits_the_page_shows() {
        assert_eq!(two_digits(87), 87);
        assert_eq!(two_digits(1234), 1200);
        assert_eq!(two_digits(1250), 1300);
        assert_eq!(two_digits(999_999), 1_000_000);
    }

    #[test]
    fn a_patch_holds_only_what_changed() {
        let before = items(&[
            ("server/a", json!({"enabled": true})),
            ("server/b", json!({"enabled": true})),
            ("health/r0/a", json!({"breaker": "closed"})),
        ]);
        let after = items(&[
            ("server/a", json!({"enabled": true})),
            ("health/r0/a", json!({"breaker": "open"})),
            ("replica/r1", json!({"connected": true})),
        ]);
        let patch = diff(&before, &after);
        assert_eq!(
            patch.set,
            items(&[
                ("health/r0/a", json!({"breaker": "open"})),
                ("replica/r1", json!({"connected": true})),
            ])
        );
        assert_eq!(patch.del, ["server/b"]);
        assert_eq!(diff(&after, &after), Patch::default(), "nothing: no patch");
    }
}
