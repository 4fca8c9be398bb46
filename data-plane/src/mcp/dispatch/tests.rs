//! `/mcp` and legacy SSE served in memory (no socket): every request goes
//! through the guard and the dispatch as a client's would.

use axum::body::Body;
use futures::StreamExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::{
    catalog,
    downstream::{Launcher, Servers},
    drain::Drain,
    mcp::{McpConfig, guard},
    telemetry::Telemetry,
};

/// The MCP endpoint of a replica with no servers, behind its guard.
fn endpoint(drain: &Drain) -> axum::Router {
    let telemetry = Telemetry {
        tracer: Default::default(),
        metrics: Arc::new(Metrics::new()),
        replica_id: "test".into(),
        log_payloads: false,
    };
    let stop = CancellationToken::new();
    let servers = Servers::new(
        stop.clone(),
        Launcher::default(),
        telemetry.clone(),
        drain.clone(),
    );
    let catalog = catalog::spawn_builder(servers.clone(), stop.clone());
    let config = McpConfig {
        allowed_hosts: vec!["localhost".to_owned()],
        max_body_bytes: 4096,
        body_read_timeout: Duration::from_secs(5),
        max_sessions: 2,
        limits: crate::mcp::limits::ClientLimits {
            sessions: 2,
            session_connections: 2,
            requests_per_second: 50.0,
            burst: 100,
        },
        page_size: 10,
        park_after: None,
        session_keys: crate::mcp::seal::SessionKeys::local(crate::mcp::SESSION_LIFETIME),
        peers: crate::peers::Peers::new("test"),
    };
    let state = guard::GuardState {
        body_limit: config.max_body_bytes,
        read_timeout: config.body_read_timeout,
        drain: drain.clone(),
    };
    let policies = crate::policy::Policies::default();
    let rest = crate::mcp::rest::BodyLimits {
        max_bytes: config.max_body_bytes,
        read_timeout: config.body_read_timeout,
        drain: drain.clone(),
    };
    super::super::router(catalog, servers, policies, &config, telemetry, rest, stop)
        .mcp
        .layer(axum::middleware::from_fn_with_state(state, guard::guard))
}

fn post(session: Option<&str>) -> http::request::Builder {
    let mut request = http::Request::post("/mcp")
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream");
    if let Some(session) = session {
        request = request.header(SESSION_HEADER, session);
    }
    request
}

async fn send(
    router: &axum::Router,
    request: http::Request<Body>,
) -> (StatusCode, HeaderMap, Value) {
    let response = router.clone().oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, value)
}

async fn rpc(
    router: &axum::Router,
    session: Option<&str>,
    body: Value,
) -> (StatusCode, HeaderMap, Value) {
    let request = post(session)
        .body(Body::from(body.to_string()))
        .expect("request");
    send(router, request).await
}

fn initialize(id: u64) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": { "name": "in-memory", "version": "1" }
        }
    })
}

/// A new session's id.
async fn open(router: &axum::Router) -> String {
    let (status, headers, answer) = rpc(router, None, initialize(0)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["result"]["protocolVersion"], "2025-06-18",
        "{answer}"
    );
    assert_eq!(
        answer["result"]["serverInfo"]["name"], "switchboard",
        "{answer}"
    );
    headers[SESSION_HEADER].to_str().expect("text").to_owned()
}

#[tokio::test]
async fn a_session_lives_from_initialize_to_delete() {
    let router = endpoint(&Drain::default());
    let session = open(&router).await;
    let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
    let (status, _, _) = rpc(&router, Some(&session), initialized).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let (status, headers, answer) = rpc(
        &router,
        Some(&session),
        json!({ "jsonrpc": "2.0", "id": "p", "method": "ping" }),
    )
    .await;
    assert_eq!(
        (status, &answer),
        (
            StatusCode::OK,
            &json!({ "jsonrpc": "2.0", "id": "p", "result": {} })
        )
    );
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let (_, _, listed) = rpc(
        &router,
        Some(&session),
        json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" }),
    )
    .await;
    assert_eq!(listed["result"], json!({ "tools": [] }), "{listed}");
    let (_, _, unknown) = rpc(
        &router,
        Some(&session),
        json!({ "jsonrpc": "2.0", "id": 3, "method": "no/such/method" }),
    )
    .await;
    assert_eq!(unknown["error"]["code"], -32601, "{unknown}");
    let (_, _, again) = rpc(&router, Some(&session), initialize(4)).await;
    assert_eq!(again["error"]["code"], -32600, "{again}");
    // An answer to nothing, and a cancel of nothing: taken, nothing to say.
    for message in [
        json!({ "jsonrpc": "2.0", "id": "sb:9", "result": {} }),
        json!({ "jsonrpc": "2.0", "method": "notifications/cancelled", "params": { "requestId": 77 } }),
    ] {
        let (status, _, _) = rpc(&router, Some(&session), message).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }

    let delete = |session: &str| {
        http::Request::delete("/mcp")
            .header(header::HOST, "localhost")
            .header(SESSION_HEADER, session)
            .body(Body::empty())
            .expect("request")
    };
    assert_eq!(send(&router, delete(&session)).await.0, StatusCode::OK);
    assert_eq!(
        send(&router, delete(&session)).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _, gone) = rpc(
        &router,
        Some(&session),
        json!({ "jsonrpc": "2.0", "id": 5, "method": "ping" }),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{gone}");
    assert_eq!(gone["error"]["code"], -32600, "a JSON-RPC error: {gone}");
}

#[tokio::test]
async fn requests_the_endpoint_cannot_take_get_a_json_rpc_error_and_a_status() {
    let router = endpoint(&Drain::default());
    let session = open(&router).await;
    let ping = json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" }).to_string();
    let cases: [(http::request::Builder, StatusCode); 6] = [
        (
            post(Some(&session)).header(header::ACCEPT, "application/json"),
            StatusCode::NOT_ACCEPTABLE,
        ),
        (
            post(Some(&session)).header(header::CONTENT_TYPE, "text/plain"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (post(None), StatusCode::BAD_REQUEST),
        (
            post(Some(&session)).header(VERSION_HEADER, "1999-01-01"),
            StatusCode::BAD_REQUEST,
        ),
        (
            post(Some(&session)).header(header::HOST, "evil.example"),
            StatusCode::FORBIDDEN,
        ),
        (
            post(Some(&session)).method(Method::PUT),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (request, want) in cases {
        // Headers appended later replace the defaults for these checks.
        let request = replace_duplicates(request.body(Body::from(ping.clone())).expect("request"));
        let (status, headers, answer) = send(&router, request).await;
        assert_eq!(status, want, "{answer}");
        assert_eq!(answer["jsonrpc"], "2.0", "{want}: {answer}");
        assert!(answer["error"]["message"].is_string(), "{want}: {answer}");
        if want == StatusCode::METHOD_NOT_ALLOWED {
            assert_eq!(headers[header::ALLOW], "GET, POST, DELETE");
        }
    }
}

/// Keeps the last value of every header set twice.
fn replace_duplicates(mut request: http::Request<Body>) -> http::Request<Body> {
    let headers = request.headers_mut();
    let names: Vec<_> = headers.keys().cloned().collect();
    for name in names {
        let last = headers.get_all(&name).iter().next_back().cloned();
        if let Some(last) = last {
            headers.insert(name, last);
        }
    }
    request
}

#[tokio::test]
async fn the_table_caps_sessions_and_a_draining_replica_takes_no_new_work() {
    let drain = Drain::default();
    let router = endpoint(&drain);
    let session = open(&router).await;
    open(&router).await;
    let (status, _, refused) = rpc(&router, None, initialize(7)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
    assert_eq!(refused["id"], 7, "{refused}");

    drain.start();
    let (status, _, refused) = rpc(
        &router,
        Some(&session),
        json!({ "jsonrpc": "2.0", "id": 8, "method": "ping" }),
    )
    .await;
    assert_eq!(
        (status, &refused["id"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!(8))
    );
    // What concerns work already in flight still gets in.
    let cancel = json!({ "jsonrpc": "2.0", "method": "notifications/cancelled", "params": { "requestId": 1 } });
    assert_eq!(
        rpc(&router, Some(&session), cancel).await.0,
        StatusCode::ACCEPTED
    );
}

fn get(session: &str) -> http::request::Builder {
    http::Request::get("/mcp")
        .header(header::HOST, "localhost")
        .header(header::ACCEPT, "text/event-stream")
        .header(SESSION_HEADER, session)
}

#[tokio::test]
async fn a_session_has_one_stream_of_its_own_and_unknown_resumes_end_at_once() {
    let router = endpoint(&Drain::default());
    let session = open(&router).await;
    let first = router
        .clone()
        .oneshot(get(&session).body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()[header::CONTENT_TYPE], "text/event-stream");
    let (status, _, answer) =
        send(&router, get(&session).body(Body::empty()).expect("request")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    drop(first);
    let again = router
        .clone()
        .oneshot(get(&session).body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "given back when the first closed"
    );

    let resume = get(&session)
        .header(LAST_EVENT_ID, "sb-999999-3")
        .body(Body::empty())
        .expect("request");
    let response = router.clone().oneshot(resume).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("an empty stream that ends");
    assert!(body.is_empty());
}

#[tokio::test]
async fn legacy_sse_answers_on_the_sessions_one_stream() {
    let router = endpoint(&Drain::default());
    let stream = router
        .clone()
        .oneshot(
            http::Request::get("/sse")
                .header(header::HOST, "localhost")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(stream.status(), StatusCode::OK);
    let mut events = stream.into_body().into_data_stream();
    let first = events.next().await.expect("an event").expect("bytes");
    let first = String::from_utf8_lossy(&first).into_owned();
    let path = first
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("the endpoint event")
        .to_owned();
    assert!(first.starts_with("event: endpoint"), "{first}");

    let request = http::Request::post(path.as_str())
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(initialize(1).to_string()))
        .expect("request");
    assert_eq!(send(&router, request).await.0, StatusCode::ACCEPTED);
    let answer = events.next().await.expect("an event").expect("bytes");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let data = answer
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("a message");
    let answer: Value = serde_json::from_str(data).expect("JSON");
    assert_eq!(answer["id"], 1, "{answer}");
    assert_eq!(answer["result"]["serverInfo"]["name"], "switchboard");

    // Closing the stream ends the session.
    drop(events);
    let request = http::Request::post(path.as_str())
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({ "jsonrpc": "2.0", "id": 2, "method": "ping" }).to_string(),
        ))
        .expect("request");
    assert_eq!(send(&router, request).await.0, StatusCode::NOT_FOUND);
}

#[test]
fn dot_segments_are_found_spelt_out_or_encoded() {
    for uri in [
        "file:///repo/../etc/passwd",
        "file:///repo/./x",
        "e+demo://public/%2E%2E/secret",
        "e+demo://public/%2e/x",
        "file:///repo/..",
    ] {
        assert!(has_dot_segment(uri), "{uri}");
    }
    for uri in [
        "file:///repo/a..b",
        "file:///repo/.hidden",
        "e+demo://public/readme?path=../x",
        "db://users",
    ] {
        assert!(!has_dot_segment(uri), "{uri}");
    }
}
