//! The one path every client message takes (`data-plane/src/mcp/`: the
//! gateway's own sessions and dispatch): tool calls relayed to a shared
//! stdio server as the client wrote them answer exactly as rmcp's own
//! server answers the same call, and as the same call read in full and sent
//! through rmcp's client does; catalog lists page; a call that ends early
//! (the client cancels, its session ends) is cancelled at the server; a
//! streamed answer survives a dropped connection; servers' requests ride
//! the call's stream and come back answered.

use e2e::{
    EVENTUALLY, RawSession, Switchboard, demo_server_with, demo_server_yaml, eventually,
    everything_server_yaml, free_addr, metric,
};
use serde_json::{Value, json};

/// `switchboard_calls_as_written_total` now: calls relayed to a stdio
/// server as the client wrote them.
async fn calls_as_written(sb: &Switchboard) -> f64 {
    let exposition = sb.gateway_metrics().await;
    metric(&exposition, "switchboard_calls_as_written_total", &[]).unwrap_or_default()
}

/// A response without its id: what both paths must agree on.
fn without_id(mut response: Value) -> Value {
    if let Some(response) = response.as_object_mut() {
        response.remove("id");
    }
    response
}

/// A gateway serving the demo server as `d`, ready.
async fn demo_gateway(tag: &str) -> Switchboard {
    let marker = format!("{tag}-{}", std::process::id());
    let sb = Switchboard::start(&[("d.yaml", &demo_server_yaml("d", &marker, &[]))]).await;
    sb.wait_server_state("d", "ready").await;
    sb
}

#[tokio::test]
async fn calls_as_written_answer_as_rmcps_own_server_does() {
    let sb = demo_gateway("direct").await;
    let url = sb.mcp_url();
    // The same server behind rmcp's own streamable HTTP server: the
    // reference answers.
    let addr = free_addr();
    let _reference = sb
        .spawn_demo_http(addr, &format!("direct-ref-{}", std::process::id()))
        .await;
    let reference = RawSession::open(&format!("http://{addr}/mcp")).await;
    let direct = RawSession::open(&url).await;
    // A client that may be asked for something: direct too.
    let asking = RawSession::open_with(&url, json!({ "sampling": {}, "roots": {} })).await;
    // A params key of a later revision sends a call through rmcp's client,
    // which ignores it: the same answer.
    let via_rmcp = |mut message: Value| {
        message["params"]["x-unknown"] = json!(true);
        message
    };

    let taken = [
        ("d.echo", json!({ "text": "same answer" })),
        // A tool error (isError), and a JSON-RPC error of the server's own.
        ("d.fail", json!({ "message": "boom" })),
        ("d.add", json!({ "a": "not a number", "b": 1 })),
    ];
    for (tool, arguments) in &taken {
        let before = calls_as_written(&sb).await;
        let (status, answer) = direct.call(tool, arguments.clone()).await;
        assert_eq!(status, 200, "{tool}: {answer}");
        assert_eq!(
            calls_as_written(&sb).await,
            before + 1.0,
            "{tool} is relayed as written"
        );
        let (_, from_asking) = asking.call(tool, arguments.clone()).await;
        assert_eq!(calls_as_written(&sb).await, before + 2.0, "{tool}, asking");
        let message = direct.call_message(tool, arguments.clone(), Value::Null);
        let (status, expected) = direct.post(via_rmcp(message)).await;
        assert_eq!(status, 200, "{tool}: {expected}");
        assert_eq!(calls_as_written(&sb).await, before + 2.0, "{tool} via rmcp");
        assert_eq!(without_id(answer.clone()), without_id(expected), "{tool}");
        assert_eq!(
            without_id(answer.clone()),
            without_id(from_asking),
            "{tool}"
        );
        let unprefixed = tool.trim_start_matches("d.");
        let (_, own) = reference.call(unprefixed, arguments.clone()).await;
        assert_eq!(without_id(answer), without_id(own), "{tool}: rmcp's server");
    }

    // Arguments reach the server as the client wrote them, escapes and
    // all; null `arguments` and `_meta` count as absent, on both paths.
    let before = calls_as_written(&sb).await;
    let tricky = json!({ "text": "quote \" backslash \\ line\n é 🚀 \u{7}" });
    let (status, answer) = direct.call("d.echo", tricky.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["result"]["structuredContent"]["text"], tricky["text"],
        "{answer}"
    );
    let nulls = json!({
        "jsonrpc": "2.0", "id": "nulls", "method": "tools/call",
        "params": { "name": "d.echo", "arguments": null, "_meta": null },
    });
    let (status, answer) = direct.post(nulls.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        calls_as_written(&sb).await,
        before + 2.0,
        "both went direct"
    );
    let (_, expected) = direct.post(via_rmcp(nulls)).await;
    assert_eq!(without_id(answer), without_id(expected));

    // A pretty-printed call keeps line breaks between the tokens of its
    // arguments. None may reach the server's stdin, where each line is a
    // message: here the next line would be a call of the client's making,
    // under an id of the gateway's, and the client's own call would never
    // be answered.
    let before = calls_as_written(&sb).await;
    let smuggled = r#"{"jsonrpc":"2.0","id":"sb:4242","method":"tools/call","params":{"name":"fail","arguments":{"message":"smuggled"}}}"#;
    let body = format!(
        "{{\n  \"jsonrpc\": \"2.0\",\n  \"id\": \"pretty\",\n  \"method\": \"tools/call\",\n  \
         \"params\": {{\n    \"name\": \"d.echo\",\n    \
         \"arguments\": {{\"text\": \"pretty\", \"x\":\r\n{smuggled}\n}}\n  }}\n}}"
    );
    let response = direct.send_text(body).await;
    assert_eq!(response.status(), 200);
    let answer: Value =
        serde_json::from_str(&response.text().await.expect("body")).expect("a JSON answer");
    assert_eq!(answer["id"], "pretty", "{answer}");
    assert_eq!(
        answer["result"]["structuredContent"]["text"], "pretty",
        "{answer}"
    );
    assert_eq!(calls_as_written(&sb).await, before + 1.0, "it went direct");

    // What is not relayed as written: unknown tools and malformed calls
    // (the gateway's own errors, the same for every client).
    let before = calls_as_written(&sb).await;
    let (_, unknown) = direct.call("d.nope", json!({})).await;
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");
    let malformed = [
        json!({ "name": "d.echo", "arguments": { "text": "x" }, "task": {} }),
        json!({ "name": 5 }),
        json!({ "name": "d.echo", "arguments": "text" }),
        json!({ "name": "d.echo", "arguments": {}, "_meta": [] }),
    ];
    for params in malformed {
        let message = |n| json!({ "jsonrpc": "2.0", "id": 1000 + n, "method": "tools/call", "params": params });
        let (status, _, answer) = direct.post_framed(message(1)).await;
        let (expected_status, _, expected) = asking.post_framed(message(2)).await;
        let answer: Vec<_> = answer.into_iter().map(without_id).collect();
        let expected: Vec<_> = expected.into_iter().map(without_id).collect();
        assert_eq!((status, answer), (expected_status, expected), "{params}");
    }
    assert_eq!(
        calls_as_written(&sb).await,
        before,
        "none was relayed as written"
    );

    // Progress rides the call's own stream, with the client's token, ahead
    // of the result, as through rmcp's client.
    let progress = |session: &RawSession| {
        session.call_message(
            "d.progress",
            json!({ "steps": 3, "stepMs": 0 }),
            json!({ "progressToken": "p1" }),
        )
    };
    let (status, framing, messages) = direct.post_framed(progress(&direct)).await;
    assert_eq!((status, framing.as_str()), (200, "text/event-stream"));
    assert_eq!(
        calls_as_written(&sb).await,
        before + 1.0,
        "progress is relayed as written"
    );
    let (_, _, expected) = direct.post_framed(via_rmcp(progress(&direct))).await;
    assert_eq!(
        calls_as_written(&sb).await,
        before + 1.0,
        "through rmcp's client"
    );
    let messages: Vec<_> = messages.into_iter().map(without_id).collect();
    let expected: Vec<_> = expected.into_iter().map(without_id).collect();
    assert_eq!(messages, expected);
    assert_eq!(
        messages.len(),
        4,
        "three progress notifications, then the result: {messages:?}"
    );
    assert_eq!(messages[0]["params"]["progressToken"], "p1");

    // Many at once on one session: each gets its own answer.
    let calls = (0..40).map(|n| {
        let direct = &direct;
        async move {
            let (status, answer) = direct
                .call("d.echo", json!({ "text": format!("n{n}") }))
                .await;
            (n, status, answer)
        }
    });
    for (n, status, answer) in futures::future::join_all(calls).await {
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            answer["result"]["structuredContent"]["text"],
            format!("n{n}"),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn a_call_ends_with_its_cancellation_or_its_session_and_resumes_after_a_drop() {
    let sb = demo_gateway("direct-cancel").await;
    let url = sb.mcp_url();
    let observer = RawSession::open(&url).await;
    let cancellations = async || {
        let (_, stats) = observer.call("d.stats", json!({})).await;
        stats["result"]["structuredContent"]["cancellations"]
            .as_u64()
            .unwrap_or_default()
    };
    let in_flight = async || {
        eventually("the call to reach the server", EVENTUALLY, || async {
            let health = sb.health().await;
            let in_flight = health["servers"]["d"]["inFlight"].as_u64();
            (in_flight >= Some(1))
                .then_some(())
                .ok_or(health.to_string())
        })
        .await
    };

    // The client cancels: the server is told, and the call's stream ends
    // without an answer, well before the client's own timeout would have
    // ended it.
    let session = RawSession::open(&url).await;
    let before = calls_as_written(&sb).await;
    let message = session.call_message("d.sleep", json!({ "ms": 60_000 }), Value::Null);
    let request_id = message["id"].clone();
    let pending = session.send(message).await;
    in_flight().await;
    let (status, _) = session
        .post(json!({
            "jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": { "requestId": request_id, "reason": "changed my mind" }
        }))
        .await;
    assert_eq!(status, 202);
    let body = pending
        .text()
        .await
        .expect("the gateway ends the stream, not the client's timeout");
    assert!(!body.contains("\"id\""), "no answer: {body}");
    assert_eq!(
        calls_as_written(&sb).await,
        before + 1.0,
        "the call was relayed as written"
    );
    eventually("the server to be told", EVENTUALLY, || async {
        let n = cancellations().await;
        (n >= 1).then_some(()).ok_or(format!("{n}"))
    })
    .await;

    // The session ends (DELETE) with a call in flight: the call ends too.
    let leaving = RawSession::open(&url).await;
    let pending = leaving
        .send(leaving.call_message("d.sleep", json!({ "ms": 60_000 }), Value::Null))
        .await;
    in_flight().await;
    assert_eq!(leaving.delete().await, 200);
    let body = pending
        .text()
        .await
        .expect("the gateway ends the stream, not the client's timeout");
    assert!(!body.contains("\"id\""), "no answer: {body}");
    eventually("the server to be told again", EVENTUALLY, || async {
        let n = cancellations().await;
        (n >= 2).then_some(()).ok_or(format!("{n}"))
    })
    .await;

    // The client loses its connection mid-answer: the call runs on, and
    // a GET with the last event's id picks the stream up where it broke.
    let resuming = RawSession::open(&url).await;
    let told = cancellations().await;
    let message = resuming.call_message(
        "d.progress",
        json!({ "steps": 4, "stepMs": 300 }),
        json!({ "progressToken": "r" }),
    );
    let call_id = message["id"].clone();
    let mut events = Events::new(resuming.send(message).await);
    let (last_id, first) = events.next_with_id().await.expect("the first progress");
    assert_eq!(first["params"]["progress"], 1.0, "{first}");
    drop(events);
    let last_id = last_id.expect("events carry ids");
    let mut events = Events::new(resuming.resume(&last_id).await);
    let mut rest = Vec::new();
    while let Some(message) = events.next().await {
        rest.push(message);
    }
    assert_eq!(rest.len(), 4, "{rest:?}");
    let progress: Vec<_> = rest
        .iter()
        .map(|m| m["params"]["progress"].clone())
        .collect();
    assert_eq!(
        progress[..3],
        [json!(2.0), json!(3.0), json!(4.0)],
        "{rest:?}"
    );
    assert_eq!(rest[3]["id"], call_id, "{rest:?}");
    assert_eq!(
        rest[3]["result"]["structuredContent"]["steps"], 4,
        "{rest:?}"
    );
    assert_eq!(
        cancellations().await,
        told,
        "the server was not told to stop"
    );
    let (status, answer) = observer
        .call("d.echo", json!({ "text": "still here" }))
        .await;
    assert_eq!(
        (status, &answer["result"]["structuredContent"]["text"]),
        (200, &json!("still here"))
    );
}

/// The kind of error the gateway wrote into a tool result, if any.
fn error_kind(answer: &Value) -> &Value {
    &answer["result"]["_meta"]["switchboard.dev/error"]["kind"]
}

/// Timeouts (restarted by the server's progress, capped by `maxCall`) and
/// a server dying mid-call, for calls relayed as written.
#[tokio::test]
async fn calls_as_written_time_out_and_survive_a_crash() {
    let marker = format!("direct-timeouts-{}", std::process::id());
    let spec = json!({ "timeouts": { "call": "1s", "maxCall": "4s" } });
    let sb = Switchboard::start(&[("t.yaml", &demo_server_with("t", &marker, &[], spec))]).await;
    sb.wait_server_state("t", "ready").await;
    let session = RawSession::open(&sb.mcp_url()).await;
    let before = calls_as_written(&sb).await;

    // 2.5 s of work with progress every 250 ms: longer than `call`, but
    // each progress notification restarts it (the client asked for none:
    // it gets only the result).
    let (status, messages) = session
        .post_all(session.call_message(
            "t.progress",
            json!({ "steps": 10, "stepMs": 250 }),
            Value::Null,
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(
        messages[0]["result"]["structuredContent"],
        json!({ "steps": 10 })
    );
    assert_eq!(
        calls_as_written(&sb).await,
        before + 1.0,
        "it was relayed as written"
    );
    // Without progress the same length of work times out after `call`.
    let (_, silent) = session.call("t.sleep", json!({ "ms": 2500 })).await;
    assert_eq!(error_kind(&silent), "timeout", "{silent}");
    assert_eq!(silent["result"]["isError"], true, "{silent}");
    // Progress does not extend a call past `maxCall`.
    let (_, capped) = session
        .call("t.progress", json!({ "steps": 40, "stepMs": 250 }))
        .await;
    assert_eq!(error_kind(&capped), "timeout", "{capped}");

    // The server exits mid-call: the call fails with why, the server is
    // restarted, and the next call works.
    let (_, crashed) = session.call("t.crash", json!({})).await;
    assert_eq!(error_kind(&crashed), "transport", "{crashed}");
    sb.wait_server_state("t", "ready").await;
    let answer = eventually("a call after the restart", EVENTUALLY, || async {
        let (_, answer) = session.call("t.echo", json!({ "text": "back" })).await;
        (answer["result"]["structuredContent"]["text"] == "back")
            .then_some(answer.clone())
            .ok_or(answer.to_string())
    })
    .await;
    assert_eq!(answer["result"]["isError"], false, "{answer}");
    assert!(
        calls_as_written(&sb).await >= before + 5.0,
        "all of them were relayed as written"
    );
}

/// A list request with `params`.
fn list_message(method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": format!("{method}?{params}"), "method": method, "params": params })
}

/// Every item of a catalog list, page by page (`nextCursor`), and how
/// many pages it took.
async fn list_all(session: &RawSession, method: &str, key: &str) -> (Vec<Value>, usize) {
    let (mut items, mut pages, mut cursor) = (Vec::new(), 0, Value::Null);
    loop {
        let params = if cursor.is_null() {
            json!({})
        } else {
            json!({ "cursor": cursor })
        };
        let (status, answer) = session.post(list_message(method, params)).await;
        assert_eq!(status, 200, "{method}: {answer}");
        let page = answer["result"][key].as_array().cloned();
        items.extend(page.unwrap_or_else(|| panic!("{method}: {answer}")));
        pages += 1;
        cursor = answer["result"]["nextCursor"].clone();
        if cursor.is_null() {
            return (items, pages);
        }
    }
}

/// Waits until `tool` is listed.
async fn wait_listed(session: &RawSession, tool: &str) {
    eventually(&format!("{tool} to be listed"), EVENTUALLY, || async {
        let (tools, _) = list_all(session, "tools/list", "tools").await;
        let listed = tools.iter().any(|t| t["name"] == tool);
        listed.then_some(()).ok_or(format!("{} tools", tools.len()))
    })
    .await;
}

/// The four catalog lists page through every item once, whatever else the
/// params carry, for any client (lists ask nothing of it), and follow
/// catalog changes.
#[tokio::test]
async fn catalog_lists_page_and_follow_the_catalog() {
    let marker = format!("direct-lists-{}", std::process::id());
    let files = [
        ("e.yaml", everything_server_yaml("e", json!({}))),
        ("d.yaml", demo_server_yaml("d", &marker, &[])),
    ];
    let files: Vec<_> = files.iter().map(|(n, y)| (*n, y.as_str())).collect();
    let sb = Switchboard::start_with(&files, &[], &["--list-page-size", "3"]).await;
    sb.wait_server_state("e", "ready").await;
    sb.wait_server_state("d", "ready").await;
    let url = sb.mcp_url();
    // Any client, one that may be asked for things too.
    let session = RawSession::open_with(&url, json!({ "sampling": {}, "roots": {} })).await;
    // server-everything adds tools once it is initialised: a steady list.
    wait_listed(&session, "e.trigger-sampling-request").await;

    let lists = [
        ("tools/list", "tools"),
        ("prompts/list", "prompts"),
        ("resources/list", "resources"),
        ("resources/templates/list", "resourceTemplates"),
    ];
    for (method, key) in lists {
        let mut cursor = Value::Null;
        let mut pages = 0;
        loop {
            let mut params = json!({});
            if !cursor.is_null() {
                params["cursor"] = cursor.clone();
            }
            let (status, answer) = session.post(list_message(method, params.clone())).await;
            assert_eq!(status, 200, "{method}: {answer}");
            // A params key of a later revision changes nothing.
            params["x-unknown"] = json!(true);
            let (_, expected) = session.post(list_message(method, params)).await;
            assert!(expected["result"][key].is_array(), "{method}: {expected}");
            assert_eq!(without_id(answer.clone()), without_id(expected), "{method}");
            let page = answer["result"][key].as_array().map_or(0, Vec::len);
            assert!(page <= 3, "{method}: pages of 3: {answer}");
            pages += 1;
            cursor = answer["result"]["nextCursor"].clone();
            if cursor.is_null() {
                break;
            }
        }
        if method == "tools/list" {
            assert!(pages >= 5, "{pages} pages of 3 tools");
        }
    }

    // A made-up cursor is invalid params.
    let bad = json!({ "cursor": "not-a-cursor" });
    let (_, answer) = session.post(list_message("tools/list", bad)).await;
    assert_eq!(answer["error"]["code"], -32602, "{answer}");

    // A server joins: the next list has its tools (the encoded lists are
    // the catalog's, never stale).
    sb.write_file("late.yaml", &demo_server_yaml("late", &marker, &[]));
    wait_listed(&session, "late.echo").await;

    // Every page is observed as a request.
    let labels = [
        ("server", ""),
        ("method", "prompts/list"),
        ("outcome", "ok"),
    ];
    let listed = async || {
        let exposition = sb.gateway_metrics().await;
        metric(&exposition, "switchboard_requests_total", &labels).unwrap_or_default()
    };
    let before = listed().await;
    let (_, pages) = list_all(&session, "prompts/list", "prompts").await;
    assert!(pages >= 1);
    assert_eq!(listed().await, before + pages as f64);
}

/// The JSON-RPC messages of an SSE response, read as they come.
struct Events {
    response: reqwest::Response,
    buf: String,
}

impl Events {
    fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buf: String::new(),
        }
    }

    async fn next(&mut self) -> Option<Value> {
        Some(self.next_with_id().await?.1)
    }

    /// The next message and its event's id.
    async fn next_with_id(&mut self) -> Option<(Option<String>, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..end + 2).collect();
                let field = |name: &str| {
                    event
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_owned())
                };
                if let Some(Ok(message)) = field("data:").map(|d| serde_json::from_str(&d)) {
                    return Some((field("id:"), message));
                }
                continue;
            }
            let chunk = self.response.chunk().await.expect("stream")?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// A server's request during a call rides the call's stream under an id of
/// the gateway's, and the client's answer (a result or an error), POSTed
/// back, reaches the server: a client that may be asked things (sampling,
/// roots: most coding agents) still has its calls relayed as written.
#[tokio::test]
async fn server_requests_ride_a_calls_stream() {
    let sb = Switchboard::start(&[("e.yaml", &everything_server_yaml("e", json!({})))]).await;
    sb.wait_server_state("e", "ready").await;
    let session =
        RawSession::open_with(&sb.mcp_url(), json!({ "sampling": {}, "roots": {} })).await;
    // server-everything offers its sampling tool once it is initialised.
    wait_listed(&session, "e.trigger-sampling-request").await;

    let answers = [
        json!({ "result": {
            "role": "assistant", "model": "test-model",
            "content": { "type": "text", "text": "sampled by the test" }
        } }),
        json!({ "error": { "code": -1, "message": "no LLM here" } }),
    ];
    for (n, answer) in answers.into_iter().enumerate() {
        let before = calls_as_written(&sb).await;
        let call = session.call_message(
            "e.trigger-sampling-request",
            json!({ "prompt": format!("question {n}") }),
            Value::Null,
        );
        let call_id = call["id"].clone();
        let response = session.send(call).await;
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut events = Events::new(response);
        let asked = events.next().await.expect("the server's request");
        assert_eq!(asked["method"], "sampling/createMessage", "{asked}");
        assert!(asked["id"].is_string(), "an id of the gateway's: {asked}");
        let text = &asked["params"]["messages"][0]["content"]["text"];
        assert!(
            text.to_string().contains(&format!("question {n}")),
            "{asked}"
        );

        let mut reply = json!({ "jsonrpc": "2.0", "id": asked["id"] });
        reply
            .as_object_mut()
            .expect("object")
            .extend(answer.as_object().cloned().unwrap_or_default());
        let (status, _) = session.post(reply).await;
        assert_eq!(status, 202);
        let result = events.next().await.expect("the call's response");
        assert_eq!(result["id"], call_id, "{result}");
        let expected = if n == 0 {
            "sampled by the test"
        } else {
            "no LLM here"
        };
        assert!(result.to_string().contains(expected), "{result}");
        assert_eq!(
            calls_as_written(&sb).await,
            before + 1.0,
            "the call was relayed as written"
        );
    }

    // An answer nobody asked for is taken and dropped; the session keeps
    // working.
    let stray = json!({ "jsonrpc": "2.0", "id": "sb:999", "result": {} });
    let (status, _) = session.post(stray).await;
    assert!(status < 500, "{status}");
    let (tools, _) = list_all(&session, "tools/list", "tools").await;
    assert!(!tools.is_empty());
}

/// A server request the server stops waiting for is withdrawn on the
/// call's stream (`notifications/cancelled` under the gateway's id), and
/// the call goes on to its answer; answered in time, it gets through, and
/// a malformed answer reaches the server as an error.
#[tokio::test]
async fn a_server_request_the_server_gives_up_on_is_withdrawn() {
    let sb = demo_gateway("direct-withdraw").await;
    let session = RawSession::open_with(&sb.mcp_url(), json!({ "roots": {} })).await;
    let before = calls_as_written(&sb).await;

    // The server waits 300 ms for an answer, then 1 s before it answers.
    let call = session.call_message(
        "d.roots",
        json!({ "waitMs": 300, "thenMs": 1000 }),
        Value::Null,
    );
    let call_id = call["id"].clone();
    let mut events = Events::new(session.send(call).await);
    let asked = events.next().await.expect("the server's question");
    assert_eq!(asked["method"], "roots/list", "{asked}");
    let withdrawn = events.next().await.expect("the withdrawal");
    assert_eq!(
        withdrawn["method"], "notifications/cancelled",
        "{withdrawn}"
    );
    assert_eq!(withdrawn["params"]["requestId"], asked["id"], "{withdrawn}");
    let result = events.next().await.expect("the call's response");
    assert_eq!(result["id"], call_id, "{result}");
    let answer = &result["result"]["structuredContent"];
    assert_eq!(answer["answered"], false, "{result}");

    let call = session.call_message("d.roots", json!({ "waitMs": 60_000 }), Value::Null);
    let mut events = Events::new(session.send(call).await);
    let asked = events.next().await.expect("the server's question");
    let roots = json!({ "roots": [{ "uri": "file:///work", "name": "work" }] });
    let reply = json!({ "jsonrpc": "2.0", "id": asked["id"], "result": roots });
    let (status, _) = session.post(reply).await;
    assert_eq!(status, 202);
    let result = events.next().await.expect("the call's response");
    assert_eq!(
        result["result"]["structuredContent"]["roots"], 1,
        "{result}"
    );

    // An answer that is not what the question asked for reaches the server
    // as an error saying so.
    let call = session.call_message("d.roots", json!({ "waitMs": 60_000 }), Value::Null);
    let mut events = Events::new(session.send(call).await);
    let asked = events.next().await.expect("the server's question");
    let malformed = json!({ "roots": "not a list" });
    let reply = json!({ "jsonrpc": "2.0", "id": asked["id"], "result": malformed });
    let (status, _) = session.post(reply).await;
    assert_eq!(status, 202);
    let result = events.next().await.expect("the call's response");
    let answer = &result["result"]["structuredContent"];
    assert_eq!(answer["answered"], false, "{result}");
    let error = answer["error"].to_string();
    assert!(error.contains("malformed"), "{result}");
    assert_eq!(
        calls_as_written(&sb).await,
        before + 3.0,
        "all were relayed as written"
    );
}
