//! Reads: list (or a server-side `Table` for `kubectl get`), watch, get.

use std::{convert::Infallible, time::Duration};

use axum::{
    Json,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::{
    ApiState, ListQuery, Params, Reply, Target, WatchEvent, status_body,
    table::{table, wants_table},
};

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
    let name = query
        .field_selector
        .as_deref()
        .and_then(|s| s.strip_prefix("metadata.name="))
        .map(str::to_owned);
    let selected = move |plural: &str, ns: &str, object: &Value| {
        plural == kind.plural
            && namespace.as_deref().is_none_or(|want| want == ns)
            && name
                .as_deref()
                .is_none_or(|want| object["metadata"]["name"] == want)
    };
    if matches!(query.watch.as_deref(), Some("true" | "1")) {
        return Ok(watch(state, query, selected));
    }
    let store = state.store.lock();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((plural, ns, _), object)| selected(plural, ns, object))
        .map(|(_, object)| object.clone())
        .collect();
    let resource_version = store.resource_version.to_string();
    drop(store);
    if let Some(version) = target_version.filter(|_| wants_table(&headers)) {
        let columns = version["additionalPrinterColumns"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        return Ok(Json(table(columns, &items, &resource_version)).into_response());
    }
    Ok(Json(json!({
        "apiVersion": kind.api_version(),
        "kind": format!("{}List", kind.kind),
        "metadata": { "resourceVersion": resource_version },
        "items": items,
    }))
    .into_response())
}

/// Streams events after the given resourceVersion (or every current object
/// as ADDED, without one), then live events, as newline-delimited JSON.
fn watch(
    state: ApiState,
    query: ListQuery,
    selected: impl Fn(&str, &str, &Value) -> bool + Send + Sync + 'static,
) -> Response {
    let since: Option<u64> = query
        .resource_version
        .as_deref()
        .filter(|rv| !rv.is_empty() && *rv != "0")
        .and_then(|rv| rv.parse().ok());
    let mut live = state.events.subscribe();
    let (replay, mut last) = {
        let store = state.store.lock();
        match since {
            Some(since) => (
                store
                    .history
                    .iter()
                    .filter(|e| e.resource_version > since)
                    .cloned()
                    .collect::<Vec<_>>(),
                since,
            ),
            None => (
                store
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
                store.resource_version,
            ),
        }
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    let timeout = Duration::from_secs(query.timeout_seconds.unwrap_or(300));
    tokio::spawn(async move {
        let line = |event: &WatchEvent| {
            let mut text = json!({ "type": event.kind, "object": event.object }).to_string();
            text.push('\n');
            Ok(Bytes::from(text))
        };
        for event in replay
            .iter()
            .filter(|e| selected(e.plural, &e.namespace, &e.object))
        {
            if tx.send(line(event)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            let event = tokio::select! {
                () = &mut deadline => return,
                () = tx.closed() => return,
                event = live.recv() => match event {
                    Ok(event) => event,
                    // A slow watcher is told to relist, as a real server does.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let gone = json!({
                            "type": "ERROR",
                            "object": status_body(StatusCode::GONE, "Expired", "too old resource version"),
                        });
                        let _ = tx.send(Ok(Bytes::from(format!("{gone}\n")))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if event.resource_version <= last
                || !selected(event.plural, &event.namespace, &event.object)
            {
                continue;
            }
            last = event.resource_version;
            if tx.send(line(&event)).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(ReceiverStream::new(rx)))
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
