//! Reads: list (paginated, or a server-side `Table` for `kubectl get`),
//! watch (with bookmarks, and `410` from before the compaction point), get.

use std::{convert::Infallible, time::Duration};

use axum::{
    Json,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::{
    ApiError, ApiState, Key, Kind, ListQuery, Params, Reply, Target, WatchEvent,
    selector::Selector,
    status_body, status_error,
    table::{table, wants_table},
};

/// `continueExpired` in the etcd3 store: the snapshot a `continue` token
/// points at was compacted away.
const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.";

pub(super) async fn list(
    State(state): State<ApiState>,
    Path(params): Params,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Reply {
    let target = Target::from(&state, &params)?;
    let kind = target.kind;
    let namespace = target.namespace;
    let target_version = target.crd_version;
    let selector = Selector::parse(
        query.label_selector.as_deref(),
        query.field_selector.as_deref(),
    )?;
    let selected = move |plural: &str, ns: &str, object: &Value| {
        plural == kind.plural
            && namespace.as_deref().is_none_or(|want| want == ns)
            && selector.matches(object)
    };
    if matches!(query.watch.as_deref(), Some("true" | "1")) {
        return Ok(watch(state, query, kind, selected));
    }
    let page = Page::of(&state, &query, |(plural, ns, _), object| {
        selected(plural, ns, object)
    })?;
    let mut metadata = json!({ "resourceVersion": page.resource_version.to_string() });
    if let Some(token) = &page.next {
        metadata["continue"] = json!(token);
        metadata["remainingItemCount"] = json!(page.remaining);
    }
    if let Some(version) = target_version.filter(|_| wants_table(&headers)) {
        let columns = version["additionalPrinterColumns"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        let mut table = table(columns, &page.items, &page.resource_version.to_string());
        table["metadata"] = metadata;
        return Ok(Json(table).into_response());
    }
    Ok(Json(json!({
        "apiVersion": kind.api_version(),
        "kind": format!("{}List", kind.kind),
        "metadata": metadata,
        "items": page.items,
    }))
    .into_response())
}

/// One page of a list: from the current objects, or, continuing, from the
/// snapshot the first page was cut from (as etcd serves it).
struct Page {
    items: Vec<Value>,
    resource_version: u64,
    /// The `continue` token for the rest, if `limit` cut the list short.
    next: Option<String>,
    remaining: usize,
}

/// What a `continue` token carries, as the etcd3 store encodes it
/// (base64url of `{"v":"meta.k8s.io/v1","rv":N,"start":"<key>\u0000"}`).
#[derive(Deserialize, Serialize)]
struct Continue {
    v: String,
    rv: u64,
    start: String,
}

// === impl Page ===

impl Page {
    fn of(
        state: &ApiState,
        query: &ListQuery,
        selected: impl Fn(&Key, &Value) -> bool,
    ) -> Result<Self, ApiError> {
        let store = state.store.lock();
        let (objects, resource_version, start) = match &query.continue_token {
            None => (None, store.resource_version, None),
            Some(token) => {
                let token = Continue::decode(token)?;
                // etcd compacted the revision the list was cut at.
                let objects = store
                    .objects_at(token.rv)
                    .ok_or_else(|| status_error(StatusCode::GONE, "Expired", CONTINUE_EXPIRED))?;
                let start = token.start.trim_end_matches('\u{0}');
                let (ns, name) = start.split_once('/').unwrap_or(("", start));
                (
                    Some(objects),
                    token.rv,
                    Some((ns.to_owned(), name.to_owned())),
                )
            }
        };
        let objects = objects.as_ref().unwrap_or(&store.objects);
        let mut matching = objects
            .iter()
            .filter(|(key, object)| selected(key, object))
            // The token's start is the last key given plus a NUL: what
            // comes after it.
            .filter(|((_, ns, name), _)| {
                start.as_ref().is_none_or(|(start_ns, start_name)| {
                    (ns.as_str(), name.as_str()) > (start_ns.as_str(), start_name.as_str())
                })
            })
            .map(|(key, object)| (key.clone(), object.clone()));
        let limit = query.limit.filter(|n| *n > 0).unwrap_or(usize::MAX);
        let items: Vec<(Key, Value)> = matching.by_ref().take(limit).collect();
        let remaining = matching.count();
        let next = match items.last() {
            Some(((_, ns, name), _)) if remaining > 0 => Some(Continue::encode(
                resource_version,
                &format!("{ns}/{name}\u{0}"),
            )),
            _ => None,
        };
        Ok(Self {
            items: items.into_iter().map(|(_, object)| object).collect(),
            resource_version,
            next,
            remaining,
        })
    }
}

// === impl Continue ===

impl Continue {
    fn encode(rv: u64, start: &str) -> String {
        let token = Self {
            v: "meta.k8s.io/v1".to_owned(),
            rv,
            start: start.to_owned(),
        };
        let json = serde_json::to_vec(&token).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// `decodeContinue` in the etcd3 store, with its errors.
    fn decode(token: &str) -> Result<Self, ApiError> {
        let invalid = |why: &str| {
            status_error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("continue key is not valid: {why}"),
            )
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|e| invalid(&e.to_string()))?;
        let token: Self = serde_json::from_slice(&bytes).map_err(|_| {
            invalid("incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
        })?;
        if token.v != "meta.k8s.io/v1" {
            return Err(invalid(&format!(
                "server does not recognize this encoded version \"{}\"",
                token.v
            )));
        }
        Ok(token)
    }
}

/// Streams events after the given resourceVersion (or every current object
/// as ADDED, without one), then live events, as newline-delimited JSON;
/// with `allowWatchBookmarks=true`, a BOOKMARK now and then. A resume from
/// before the compaction point gets one ERROR event, `410 Expired`, as the
/// watch cache answers it (`newErrWatcher`: a 200 whose only event is the
/// error).
fn watch(
    state: ApiState,
    query: ListQuery,
    kind: &'static Kind,
    selected: impl Fn(&str, &str, &Value) -> bool + Send + Sync + 'static,
) -> Response {
    let since: Option<u64> = query
        .resource_version
        .as_deref()
        .filter(|rv| !rv.is_empty() && *rv != "0")
        .and_then(|rv| rv.parse().ok());
    let mut live = state.events.subscribe();
    let mut ended = state.watch_epoch.subscribe();
    let (replay, mut last, bookmark_every) = {
        let store = state.store.lock();
        let replay = match since {
            Some(since) if since < store.compacted => {
                let message = format!("too old resource version: {since} ({})", store.compacted);
                return one_event(error_line(StatusCode::GONE, "Expired", &message));
            }
            Some(since) => store
                .history
                .iter()
                .filter(|e| e.resource_version > since)
                .cloned()
                .collect::<Vec<_>>(),
            None => store
                .objects
                .iter()
                .map(|((plural, ns, _), object)| WatchEvent {
                    resource_version: store.resource_version,
                    kind: "ADDED",
                    plural,
                    namespace: ns.clone(),
                    object: object.clone(),
                })
                .collect(),
        };
        (
            replay,
            since.unwrap_or(store.resource_version),
            store.bookmark_every,
        )
    };
    let bookmarks = query.allow_watch_bookmarks == Some(true);
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    let timeout = Duration::from_secs(query.timeout_seconds.unwrap_or(300));
    tokio::spawn(async move {
        for event in replay
            .iter()
            .filter(|e| selected(e.plural, &e.namespace, &e.object))
        {
            last = last.max(event.resource_version);
            if tx.send(event_line(event)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut bookmark =
            tokio::time::interval_at(tokio::time::Instant::now() + bookmark_every, bookmark_every);
        loop {
            let event = tokio::select! {
                () = &mut deadline => return,
                () = tx.closed() => return,
                _ = ended.changed() => return,
                _ = bookmark.tick(), if bookmarks => {
                    if tx.send(bookmark_line(kind, last)).await.is_err() {
                        return;
                    }
                    continue;
                }
                event = live.recv() => match event {
                    Ok(event) => event,
                    // A slow watcher is told to relist, as a real server does.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx
                            .send(error_line(StatusCode::GONE, "Expired", "too old resource version"))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if event.resource_version <= last {
                continue;
            }
            // Every change counts toward the bookmark, selected or not:
            // a bookmark promises nothing up to it is still to come.
            last = event.resource_version;
            if selected(event.plural, &event.namespace, &event.object)
                && tx.send(event_line(&event)).await.is_err()
            {
                return;
            }
        }
    });
    stream(ReceiverStream::new(rx))
}

fn event_line(event: &WatchEvent) -> Result<Bytes, Infallible> {
    let mut text = json!({ "type": event.kind, "object": event.object }).to_string();
    text.push('\n');
    Ok(Bytes::from(text))
}

/// A BOOKMARK: an object of the watched kind with only its resourceVersion.
fn bookmark_line(kind: &Kind, resource_version: u64) -> Result<Bytes, Infallible> {
    let object = json!({
        "kind": kind.kind, "apiVersion": kind.api_version(),
        "metadata": { "resourceVersion": resource_version.to_string() },
    });
    Ok(Bytes::from(format!(
        "{}\n",
        json!({ "type": "BOOKMARK", "object": object })
    )))
}

fn error_line(code: StatusCode, reason: &str, message: &str) -> Result<Bytes, Infallible> {
    let error = json!({ "type": "ERROR", "object": status_body(code, reason, message) });
    Ok(Bytes::from(format!("{error}\n")))
}

fn one_event(line: Result<Bytes, Infallible>) -> Response {
    stream(futures::stream::iter([line]))
}

fn stream(
    lines: impl futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(lines))
        .unwrap_or_default()
}

pub(super) async fn read(State(state): State<ApiState>, Path(params): Params) -> Reply {
    let target = Target::from(&state, &params)?;
    let store = state.store.lock();
    let object = store
        .objects
        .get(&target.key())
        .ok_or_else(|| target.not_found())?;
    Ok(Json(object.clone()).into_response())
}
