//! `GET /console/live`: what the console shows, as one Server-Sent Events
//! stream per open console. The state is a flat map of items by key
//! (`meta`, `server/<name>`, `issue/<n>`, `replica/<id>`,
//! `health/<replica>/<server>`): the stream starts with all of it
//! (`reset`), then sends only the items that changed or went (`patch`),
//! so 500 servers on 10 replicas cost a page nothing while one breaker
//! opens. Tool calls come as they arrive (`calls`), batched.
//!
//! Each stream is one task that looks at the registry, the replicas and
//! the call feed; a slow browser simply sees fewer intermediate states,
//! as the diff is always against what that browser was last sent. The
//! number of streams is bounded.

use std::{collections::BTreeMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;
use tracing::{debug, info_span};

use super::Console;
use crate::traces::calls::Call;

/// Open console streams at once.
pub(super) const MAX_STREAMS: usize = 32;
/// How often replicas' reports and new calls are looked at.
const LOOK_EVERY: Duration = Duration::from_millis(500);
/// Calls the stream starts with.
const RECENT_CALLS: usize = 200;
/// Calls sent in one `calls` event, at most.
const MAX_CALLS_PER_EVENT: usize = 256;

type Items = BTreeMap<String, Value>;

/// What changed since the last event: items set (new or different) and
/// keys gone.
#[derive(Debug, Default, PartialEq, Serialize)]
pub(super) struct Patch {
    set: Items,
    del: Vec<String>,
}

/// `GET /console/live`.
pub(super) async fn stream(State(console): State<Console>) -> Response {
    let Ok(permit) = console.streams.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": format!("{MAX_STREAMS} consoles are open: close one") })),
        )
            .into_response();
    };
    let (tx, rx) = mpsc::channel(4);
    let span = info_span!("console.stream");
    tokio::spawn(feed(console, tx, permit).instrument(span));
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Sends the state, then its changes, until the browser goes.
async fn feed(
    console: Console,
    tx: mpsc::Sender<Result<Event, Infallible>>,
    _permit: OwnedSemaphorePermit,
) {
    let mut registry = console.admin.registry.clone();
    // Watched before the first look, so no call falls between the two.
    let mut calls = console.admin.traces.watch_calls();
    let mut sent = items(&console);
    let recent = console.admin.traces.recent_calls(RECENT_CALLS);
    let reset = json!({ "items": &sent, "calls": recent });
    if !send(&tx, "reset", &reset).await {
        return;
    }
    debug!(items = sent.len(), "console stream started");
    let mut look = tokio::time::interval(LOOK_EVERY);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut arrived: Vec<Arc<Call>> = Vec::new();
    let mut missed = 0u64;
    loop {
        tokio::select! {
            () = tx.closed() => return,
            changed = registry.changed() => if changed.is_err() { return },
            _ = look.tick() => {}
            call = calls.recv() => {
                match call {
                    Ok(call) if arrived.len() < MAX_CALLS_PER_EVENT => arrived.push(call),
                    Ok(_) => missed += 1,
                    Err(RecvError::Lagged(n)) => missed += n,
                    Err(RecvError::Closed) => return,
                }
                continue;
            }
        }
        let now = items(&console);
        let patch = diff(&sent, &now);
        sent = now;
        if (patch.set.len() + patch.del.len()) > 0 && !send(&tx, "patch", &patch).await {
            return;
        }
        if !arrived.is_empty() || missed > 0 {
            let calls: Vec<&Call> = arrived.iter().map(|call| &**call).collect();
            let batch = json!({ "calls": calls, "missed": missed });
            arrived.clear();
            missed = 0;
            if !send(&tx, "calls", &batch).await {
                return;
            }
        }
    }
}

async fn send(
    tx: &mpsc::Sender<Result<Event, Infallible>>,
    name: &str,
    data: &impl Serialize,
) -> bool {
    let event = match Event::default().event(name).json_data(data) {
        Ok(event) => event,
        Err(error) => {
            debug!(%error, "a console event did not serialize");
            return true;
        }
    };
    tx.send(Ok(event)).await.is_ok()
}

/// Every item the console shows, by key.
fn items(console: &Console) -> Items {
    let admin = &console.admin;
    let version = admin.snapshots.borrow().version;
    let replicas = admin.peers.merged(admin.replicas.snapshot(), version);
    let mut items = Items::new();
    {
        let registry = admin.registry.borrow();
        items.insert(
            "meta".into(),
            json!({
                "snapshotVersion": version,
                "mode": if admin.registry_dir.is_some() { "directory" } else { "kubernetes" },
                "writable": console.writable && admin.registry_dir.is_some(),
                "traceUiUrl": console.config.trace_ui_url,
                "build": env!("CARGO_PKG_VERSION"),
                "policies": registry.policies.len(),
                "clients": registry.clients.len(),
            }),
        );
        for server in registry.servers.values() {
            items.insert(
                format!("server/{}", server.name),
                json!({
                    "name": server.name,
                    "namespace": server.namespace,
                    "enabled": server.enabled,
                    "transport": server.transport.kind(),
                    "source": registry.origins.get(&server.name),
                }),
            );
        }
        for (n, issue) in registry.issues.iter().enumerate() {
            items.insert(format!("issue/{n}"), json!(issue));
        }
    }
    for (id, replica) in replicas {
        for server in &replica.servers {
            items.insert(format!("health/{id}/{}", server.name), json!(server));
        }
        let mut summary = json!(replica);
        if let Some(fields) = summary.as_object_mut() {
            fields.remove("servers");
            fields.insert("id".into(), json!(id));
        }
        items.insert(format!("replica/{id}"), summary);
    }
    items
}

/// What turns `before` into `after`.
pub(super) fn diff(before: &Items, after: &Items) -> Patch {
    let set = after
        .iter()
        .filter(|(key, value)| before.get(*key) != Some(value))
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
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
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
