//! Bad input gets a clear error and loses nothing: broken registry files,
//! servers that cannot start, unknown tools, snapshots a replica refuses,
//! malformed, oversized and unknown MCP requests.

use e2e::{
    EVENTUALLY, RawSession, Switchboard, call, command_server_yaml, connect, demo_server_with,
    demo_server_yaml, eventually,
    fake_control_plane::{FakeControlPlane, demo_resource, stdio_resource},
    server_with, tool_names,
};
use futures::StreamExt;
use proto::config::{self as pb, replica_message::Kind};
use rmcp::{ServiceError, model::ErrorCode};
use serde_json::{Value, json};

fn issues(status: &Value) -> Vec<Value> {
    status["issues"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn invalid_registry_files_are_reported_and_the_last_good_config_stays() {
    let tag = format!("invalid-{}", std::process::id());
    let good = demo_server_yaml("demo", &tag, &[]);
    let sb = Switchboard::start(&[("demo.yaml", &good)]).await;
    sb.wait_server_state("demo", "ready").await;
    let version = sb.control_status().await["snapshotVersion"].clone();

    // A typo in a field name: the file keeps its last good resources.
    sb.write_file("demo.yaml", &good.replace("\"command\"", "\"comand\""));
    // Not YAML at all.
    sb.write_file("broken.yaml", "apiVersion: [unclosed\n");
    // Valid YAML, invalid spec.
    sb.write_file("empty.yaml", &e2e::command_server_yaml("empty", "", &[]));

    let status = eventually("three registry issues", EVENTUALLY, || async {
        let status = sb.control_status().await;
        (issues(&status).len() == 3)
            .then_some(status.clone())
            .ok_or(status.to_string())
    })
    .await;
    let by_file = |file: &str| {
        issues(&status)
            .into_iter()
            .find(|i| i["source"].as_str().is_some_and(|s| s.ends_with(file)))
            .unwrap_or_else(|| panic!("no issue for {file}: {status}"))
    };
    let typo = by_file("demo.yaml");
    assert_eq!(typo["resource"], "demo");
    assert_eq!(typo["field"], "spec.transport.stdio.comand");
    assert!(
        typo["message"].as_str().unwrap_or("").contains("comand"),
        "{typo}"
    );
    assert!(
        by_file("broken.yaml")["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("invalid YAML")
    );
    let empty = by_file("empty.yaml");
    assert_eq!(empty["resource"], "empty");
    assert_eq!(empty["field"], "spec.transport.stdio.command");

    // Nothing was pushed, and the gateway still serves the last good server.
    assert_eq!(status["snapshotVersion"], version);
    let client = connect(&sb.mcp_url()).await.expect("connect");
    let echoed = call(&client, "demo.echo", json!({ "text": "ok" }))
        .await
        .expect("echo");
    assert_eq!(echoed.structured_content, Some(json!({ "text": "ok" })));
    let log = sb.control.as_ref().expect("control plane").log();
    assert!(
        log.contains("demo.yaml") && log.contains("comand"),
        "log names file and field:\n{log}"
    );

    // Fixing the file clears the issue.
    sb.write_file("demo.yaml", &good);
    sb.remove_file("broken.yaml");
    sb.remove_file("empty.yaml");
    eventually("issues to clear", EVENTUALLY, || async {
        let status = sb.control_status().await;
        issues(&status)
            .is_empty()
            .then_some(())
            .ok_or(status.to_string())
    })
    .await;
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn servers_that_cannot_start_fail_alone() {
    let tag = format!("isolated-{}", std::process::id());
    let sb = Switchboard::start(&[
        ("demo.yaml", &demo_server_yaml("demo", &tag, &[])),
        (
            "missing.yaml",
            &command_server_yaml("missing", "/nonexistent/mcp-server", &[]),
        ),
        (
            "quitter.yaml",
            &command_server_yaml("quitter", "sh", &["-c", "echo giving up >&2; exit 3"]),
        ),
    ])
    .await;
    let missing = sb.wait_server_state("missing", "failed").await;
    let reason = missing["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("/nonexistent/mcp-server") && reason.contains("No such file"),
        "{missing}"
    );
    let quitter = sb.wait_server_state("quitter", "failed").await;
    let reason = quitter["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("exit status: 3") && reason.contains("giving up"),
        "{quitter}"
    );

    sb.wait_server_state("demo", "ready").await;
    let client = connect(&sb.mcp_url()).await.expect("connect");
    assert_eq!(
        tool_names(&client)
            .await
            .expect("list")
            .iter()
            .filter(|n| !n.starts_with("demo."))
            .count(),
        0
    );
    call(&client, "demo.echo", json!({ "text": "fine" }))
        .await
        .expect("healthy server works");

    // The failing servers are retried with backoff, not in a busy loop.
    let restarts = eventually("a retry", EVENTUALLY, || async {
        let n = sb.health().await["servers"]["quitter"]["restarts"]
            .as_u64()
            .unwrap_or(0);
        (n >= 1).then_some(n).ok_or(format!("{n} restarts"))
    })
    .await;
    assert!(restarts < 10, "backoff keeps restarts low, saw {restarts}");
    client.cancel().await.expect("close");
}

/// A server that writes other things to stdout (a banner, stray JSON)
/// keeps working: the lines are skipped, and the stray JSON is logged.
#[tokio::test]
async fn noise_on_a_servers_stdout_is_skipped() {
    let tag = format!("noisy-{}", std::process::id());
    let script = format!(
        r#"echo 'noisy server v1 starting'; echo '{{"hello":"world"}}'; echo; exec switchboard-gateway demo-server --instance {tag}"#
    );
    let sb = Switchboard::start(&[(
        "noisy.yaml",
        &command_server_yaml("noisy", "sh", &["-c", &script]),
    )])
    .await;
    sb.wait_server_state("noisy", "ready").await;
    let client = connect(&sb.mcp_url()).await.expect("connect");
    let result = call(
        &client,
        "noisy.echo",
        json!({ "text": "through the noise" }),
    )
    .await
    .expect("call");
    assert_eq!(
        result.structured_content,
        Some(json!({ "text": "through the noise" }))
    );
    let logs = sb.logs();
    assert!(
        logs.contains("skipped a message that is not valid MCP JSON-RPC"),
        "{logs}"
    );
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn unknown_tool_gets_an_error_naming_it() {
    let sb =
        Switchboard::start(&[("demo.yaml", &demo_server_yaml("demo", "unknown-tool", &[]))]).await;
    sb.wait_server_state("demo", "ready").await;
    let client = connect(&sb.mcp_url()).await.expect("connect");
    for name in ["nope.echo", "demo.nope", "echo"] {
        let err = call(&client, name, json!({}))
            .await
            .expect_err("unknown tool fails");
        let Some(ServiceError::McpError(error)) = err.downcast_ref::<ServiceError>() else {
            panic!("expected a JSON-RPC error, got {err:?}");
        };
        assert_eq!(error.code, ErrorCode::INVALID_PARAMS);
        assert!(error.message.contains(name), "{}", error.message);
    }
    // The session is unharmed.
    call(&client, "demo.echo", json!({ "text": "x" }))
        .await
        .expect("echo after errors");
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn replica_nacks_bad_resources_and_keeps_its_last_good_config() {
    let mut control = FakeControlPlane::start().await;
    let sb = Switchboard::gateway_only(control.addr).await;
    let mut stream = control.accept().await;
    assert_eq!(stream.hello.replica_id, "e2e-0");
    assert_eq!(stream.hello.applied_version, 0);

    stream
        .send(pb::Snapshot {
            version: 1,
            resources: vec![demo_resource("demo", "demo")],
            session_keys: Vec::new(),
            // The replica's apply continues the push's trace.
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        })
        .await;
    let Kind::Ack(ack) = stream.reply().await else {
        panic!("an ACK of version 1");
    };
    assert_eq!(ack.version, 1);
    assert!(
        ack.traceparent
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
            && !ack.traceparent.contains("00f067aa0ba902b7"),
        "the apply's own span in the push's trace: {}",
        ack.traceparent
    );
    sb.wait_gateway_ready().await;
    sb.wait_server_state("demo", "ready").await;

    // A new bad resource and a bad edit of the good one: both refused, the
    // good one keeps running as it was.
    let mut broken_demo = demo_resource("demo", "de.mo");
    if let Some(pb::resource::Kind::McpServer(server)) = &mut broken_demo.kind {
        server.namespace = "de.mo".into();
    }
    stream
        .send(pb::Snapshot {
            version: 2,
            resources: vec![broken_demo, stdio_resource("bad", "bad", "", &[])],
            session_keys: Vec::new(),
            traceparent: String::new(),
        })
        .await;
    let Kind::Nack(nack) = stream.reply().await else {
        panic!("expected NACK")
    };
    assert_eq!(nack.version, 2);
    let rejected: Vec<(String, String)> = nack
        .rejected
        .iter()
        .map(|r| (r.name.clone(), r.reason.clone()))
        .collect();
    assert_eq!(
        rejected,
        [
            ("bad".to_owned(), "missing stdio.command".to_owned()),
            (
                "demo".to_owned(),
                "namespace: `de.mo` must be letters, digits, '-' or '_'".to_owned()
            ),
        ]
    );
    assert!(
        nack.reason.contains("bad: missing stdio.command"),
        "{}",
        nack.reason
    );

    let health = sb.health().await;
    assert_eq!(
        health["rejected"]["bad"], "missing stdio.command",
        "{health}"
    );
    assert_eq!(health["servers"]["demo"]["namespace"], "demo");
    let client = connect(&sb.mcp_url()).await.expect("connect");
    call(&client, "demo.echo", json!({ "text": "kept" }))
        .await
        .expect("last good demo serves");

    // A good snapshot is ACKed again.
    stream
        .send(pb::Snapshot {
            version: 3,
            resources: vec![demo_resource("demo", "demo")],
            session_keys: Vec::new(),
            traceparent: String::new(),
        })
        .await;
    let Kind::Ack(ack) = stream.reply().await else {
        panic!("an ACK of version 3");
    };
    assert_eq!(ack.version, 3);

    // A session key set with a key of the wrong length: refused by name,
    // the good key applies, sessions go on.
    stream
        .send(pb::Snapshot {
            version: 4,
            resources: vec![demo_resource("demo", "demo")],
            session_keys: vec![vec![7; 32], vec![1; 5]],
            traceparent: String::new(),
        })
        .await;
    let Kind::Nack(nack) = stream.reply().await else {
        panic!("a short key is refused");
    };
    let refused: Vec<_> = nack
        .rejected
        .iter()
        .map(|r| (&*r.name, &*r.reason))
        .collect();
    assert_eq!(refused, [("sessionKeys", "1 of 2 keys are not 32 bytes")]);
    let sealed = connect(&sb.mcp_url())
        .await
        .expect("a session sealed with the good key");
    call(&sealed, "demo.echo", json!({ "text": "sealed" }))
        .await
        .expect("it serves");
    sealed.cancel().await.expect("close");
    client.cancel().await.expect("close");
}

/// The JSON-RPC message in a response: the body itself, or the first
/// `data:` line of an SSE stream.
fn jsonrpc_message(body: &str) -> Value {
    serde_json::from_str(body)
        .ok()
        .or_else(|| {
            body.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .find_map(|d| serde_json::from_str(d.trim()).ok())
        })
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn malformed_oversized_and_unknown_requests_get_clear_errors_and_sessions_go_on() {
    let demo = demo_server_yaml("demo", &format!("bad-http-{}", std::process::id()), &[]);
    let sb =
        Switchboard::start_with(&[("demo.yaml", &demo)], &[], &["--max-body-bytes", "2048"]).await;
    sb.wait_server_state("demo", "ready").await;
    let other = connect(&sb.mcp_url()).await.expect("another client");
    let http = reqwest::Client::new();
    let url = sb.mcp_url();
    let post = |body: String, session: Option<String>| {
        let mut request = http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        async move {
            let response = request.send().await.expect("POST /mcp");
            let status = response.status().as_u16();
            let session = response
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (status, session, response.text().await.unwrap_or_default())
        }
    };
    let initialize = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    let (status, session, _) = post(initialize.to_owned(), None).await;
    assert_eq!(status, 200);
    let session = session.expect("a session id");
    let (status, _, _) = post(
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_owned(),
        Some(session.clone()),
    )
    .await;
    assert!(status < 300, "{status}");

    let oversized = format!(
        r#"{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{{"name":"demo.echo","arguments":{{"text":"{}"}}}}}}"#,
        "x".repeat(4096)
    );
    for (body, want_status, want_code) in [
        (r#"{"jsonrpc":"2.0","#.to_owned(), 400, -32700),
        (
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#.to_owned(),
            400,
            -32600,
        ),
        (
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#.to_owned(),
            400,
            -32600,
        ),
        (r#"{"jsonrpc":"2.0","id":1}"#.to_owned(), 400, -32600),
        // Ids that are not a string or an integer (rmcp answered these
        // with a plain-text 415).
        (
            r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#.to_owned(),
            400,
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#.to_owned(),
            400,
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1e999999,"method":"ping"}"#.to_owned(),
            400,
            -32600,
        ),
        // Params rmcp cannot read, on a method other than tools/call.
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"resources/read","params":[5]}"#.to_owned(),
            400,
            -32602,
        ),
        // A tool call rmcp could not even dispatch: invalid params.
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}"#.to_owned(),
            400,
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"demo.echo","arguments":"text"}}"#.to_owned(),
            400,
            -32602,
        ),
        (oversized, 413, -32600),
    ] {
        let (status, _, text) = post(body.clone(), Some(session.clone())).await;
        let message = jsonrpc_message(&text);
        assert_eq!(status, want_status, "{body:.60}: {text}");
        assert_eq!(message["jsonrpc"], "2.0", "a JSON-RPC body: {body:.60}: {text}");
        assert_eq!(message["error"]["code"], want_code, "{body:.60}: {text}");
        assert!(
            !message["error"]["message"]
                .as_str()
                .unwrap_or("")
                .is_empty(),
            "{text}"
        );
    }
    // A method nobody implements is a JSON-RPC error, at once.
    let (_, _, text) = post(
        r#"{"jsonrpc":"2.0","id":7,"method":"no/such/method"}"#.to_owned(),
        Some(session.clone()),
    )
    .await;
    assert_eq!(jsonrpc_message(&text)["error"]["code"], -32601, "{text}");
    // An unknown session is 404, so clients re-initialise.
    let (status, _, _) = post(
        r#"{"jsonrpc":"2.0","id":8,"method":"ping"}"#.to_owned(),
        Some("no-such-session".to_owned()),
    )
    .await;
    assert_eq!(status, 404);
    // `server/discover` of a 2026-07-28 client lists every version served
    // (that revision's own included); one without the revision's required
    // `_meta` gets -32602 saying what it lacks, one naming a version nobody
    // serves -32022 listing those that are.
    let discover = |version: &str| {
        let body = json!({ "jsonrpc": "2.0", "id": 11, "method": "server/discover", "params": { "_meta": {
            "io.modelcontextprotocol/protocolVersion": version,
            "io.modelcontextprotocol/clientCapabilities": {} } } });
        http.post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", version)
            .header("mcp-method", "server/discover")
            .body(body.to_string())
            .send()
    };
    let response = discover("2026-07-28").await.expect("POST server/discover");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let discovered = jsonrpc_message(&text);
    assert_eq!(status, 200, "{text}");
    let supported = &discovered["result"]["supportedVersions"];
    for version in ["2025-11-25", "2026-07-28"] {
        assert!(
            supported
                .as_array()
                .is_some_and(|v| v.contains(&json!(version))),
            "{text}"
        );
    }
    let response = discover("2099-01-01").await.expect("POST server/discover");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let refused = jsonrpc_message(&text);
    assert_eq!(status, 400, "{text}");
    assert_eq!(refused["error"]["code"], -32022, "{text}");
    assert!(
        refused["error"]["data"]["supported"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("2026-07-28"))),
        "{text}"
    );
    let (_, _, text) = post(
        r#"{"jsonrpc":"2.0","id":12,"method":"server/discover","params":{}}"#.to_owned(),
        None,
    )
    .await;
    let refused = jsonrpc_message(&text);
    assert_eq!(refused["error"]["code"], -32602, "{text}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("protocolVersion")),
        "{text}"
    );

    // Nothing was disturbed: the same session and another client go on.
    let (status, _, text) = post(
        r#"{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"demo.echo","arguments":{"text":"still here"}}}"#.to_owned(),
        Some(session),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        jsonrpc_message(&text)["result"]["structuredContent"]["text"],
        "still here",
        "{text}"
    );
    let echoed = call(&other, "demo.echo", json!({ "text": "fine" }))
        .await
        .expect("the other client");
    assert_eq!(echoed.structured_content, Some(json!({ "text": "fine" })));
}

/// Legacy SSE refuses what `/mcp` refuses: foreign hosts and origins (DNS
/// rebinding), unknown sessions, malformed bodies — each with a JSON-RPC
/// error.
#[tokio::test]
async fn legacy_sse_refuses_foreign_hosts_unknown_sessions_and_bad_bodies() {
    let demo = demo_server_yaml("demo", &format!("bad-sse-{}", std::process::id()), &[]);
    let sb = Switchboard::start(&[("demo.yaml", &demo)]).await;
    sb.wait_server_state("demo", "ready").await;
    let http = reqwest::Client::new();
    let sse = sb.mcp_url().replace("/mcp", "/sse");
    let message = sb.mcp_url().replace("/mcp", "/message");

    for (header, value) in [("host", "evil.example"), ("origin", "http://evil.example")] {
        let response = http
            .get(&sse)
            .header(header, value)
            .send()
            .await
            .expect("GET /sse");
        assert_eq!(response.status().as_u16(), 403, "{header}: {value}");
        let text = response.text().await.unwrap_or_default();
        assert!(text.contains("evil.example"), "{text}");
    }

    // `/mcp` too: a foreign Origin with an allowed Host is refused, a
    // local one accepted.
    let initialize = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    let port = sb.gateway_addr.port();
    for (origin, want) in [
        ("http://evil.example".to_owned(), 403),
        (format!("http://127.0.0.1:{port}"), 200),
    ] {
        let response = http
            .post(sb.mcp_url())
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("origin", &origin)
            .body(initialize)
            .send()
            .await
            .expect("POST /mcp");
        assert_eq!(response.status().as_u16(), want, "{origin}");
    }

    let post = |url: String, body: &'static str| {
        let request = http
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        async move {
            let response = request.send().await.expect("POST /message");
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
    };
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let (status, text) = post(format!("{message}?sessionId=nope"), ping).await;
    assert_eq!(status, 404, "{text}");
    assert!(
        jsonrpc_message(&text)["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nope")),
        "{text}"
    );
    let (status, text) = post(format!("{message}?sessionId=nope"), r#"{"jsonrpc":"2.0","#).await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(jsonrpc_message(&text)["error"]["code"], -32700, "{text}");

    // A real session still opens: the first event names where to POST.
    let mut stream = http
        .get(&sse)
        .send()
        .await
        .expect("GET /sse")
        .bytes_stream();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
        .await
        .expect("an endpoint event")
        .expect("stream open")
        .expect("bytes");
    let first = String::from_utf8_lossy(&first);
    assert!(first.contains("event: endpoint"), "{first}");
    assert!(first.contains("/message?sessionId="), "{first}");
}

/// `switchboard_direct_calls_total` now.
/// Calls relayed to a stdio server as the client wrote them, so far.
async fn calls_as_written(sb: &Switchboard) -> f64 {
    let exposition = sb.gateway_metrics().await;
    e2e::metric(&exposition, "switchboard_calls_as_written_total", &[]).unwrap_or_default()
}

#[tokio::test]
async fn arguments_a_server_cannot_parse_are_refused_at_once_on_both_paths() {
    // One connection taking one call at a time: a call left hanging would
    // hold it, and every later call would find the server busy.
    let pool =
        json!({ "pool": { "min": 1, "max": 1, "maxConcurrency": 1, "acquireTimeout": "2s" } });
    let tag = format!("unparsable-{}", std::process::id());
    let strict = concat!(env!("CARGO_MANIFEST_DIR"), "/python/strict_server.py");
    let python = e2e::python();
    let sb = Switchboard::start(&[
        ("d.yaml", &demo_server_with("d", &tag, &[], pool.clone())),
        (
            "s.yaml",
            &server_with("strict", &python.to_string_lossy(), &[strict], pool),
        ),
    ])
    .await;
    sb.wait_server_state("d", "ready").await;
    sb.wait_server_state("strict", "ready").await;
    let direct = RawSession::open(&sb.mcp_url()).await;
    // A browser-like client (it sends `Origin`) is served the same way.
    let browser = RawSession::open(&sb.mcp_url())
        .await
        .with_origin("http://127.0.0.1:1");

    let deep = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    for (session, path) in [(&direct, "direct"), (&browser, "browser")] {
        for (what, arguments) in [
            ("nested 10,000 deep", deep.as_str()),
            ("a lone surrogate", r#"{"text":"\ud800"}"#),
        ] {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":"bad","method":"tools/call","params":{{"name":"d.echo","arguments":{arguments}}}}}"#
            );
            let response = session.send_text(body).await;
            let status = response.status().as_u16();
            let answer: Value = response.json().await.expect("a JSON-RPC body");
            assert_eq!(status, 400, "{path}, {what}: {answer}");
            assert_eq!(answer["id"], "bad", "{path}, {what}: {answer}");
            assert_eq!(answer["error"]["code"], -32602, "{path}, {what}: {answer}");
        }
        // Nothing was left hanging on the server's one connection.
        let (status, answer) = session.call("d.echo", json!({ "text": path })).await;
        assert_eq!(status, 200);
        assert_eq!(answer["result"]["content"][0]["text"], path, "{answer}");
    }

    // A server with a stricter reader than the gateway's answers a line it
    // refuses with a null-id parse error: that call fails at once, relayed
    // as written or through rmcp's client (a params key of a later
    // revision sends it that way), and the next one is answered.
    let before = calls_as_written(&sb).await;
    for (later_key, path) in [(false, "as written"), (true, "rmcp's client")] {
        let session = &direct;
        let mut message = session.call_message(
            "strict.echo",
            json!({ "n": 18_446_744_073_709_551_615u64 }),
            Value::Null,
        );
        if later_key {
            message["params"]["x-later"] = json!(true);
        }
        let (_, answer) = session.post(message).await;
        assert_eq!(answer["error"]["code"], -32700, "{path}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("beyond 2**53")),
            "{path}: {answer}"
        );
        let (_, answer) = session.call("strict.echo", json!({ "n": 7 })).await;
        assert_eq!(
            answer["result"]["content"][0]["text"], r#"{"n": 7}"#,
            "{path}: {answer}"
        );
    }
    assert_eq!(
        calls_as_written(&sb).await,
        before + 3.0,
        "all but one were relayed as written"
    );
    assert!(
        sb.logs().contains("server could not read a request"),
        "the gateway says why"
    );
}

/// A client that announces a body and sends it slowly (or never) holds a
/// connection and a buffer: past the read timeout it gets 408 with a
/// JSON-RPC error, and everyone else is served all along.
#[tokio::test]
async fn a_body_that_never_arrives_gets_408_and_others_go_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let demo = demo_server_yaml("demo", &format!("slow-{}", std::process::id()), &[]);
    let sb =
        Switchboard::start_with(&[("demo.yaml", &demo)], &[], &["--body-read-timeout", "1"]).await;
    sb.wait_server_state("demo", "ready").await;
    let other = connect(&sb.mcp_url()).await.expect("another client");

    let mut slow = tokio::net::TcpStream::connect(sb.gateway_addr)
        .await
        .expect("connect");
    let head = "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: 4096\r\n\r\n{\"jsonrpc\":\"2.0\",";
    slow.write_all(head.as_bytes())
        .await
        .expect("send the head");
    call(&other, "demo.echo", json!({ "text": "meanwhile" }))
        .await
        .expect("others are served while the body trickles");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(EVENTUALLY, slow.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the gateway answers and closes");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":-32600"#), "{answer}");
    assert!(answer.contains("did not arrive within 1 s"), "{answer}");
    call(&other, "demo.echo", json!({ "text": "after" }))
        .await
        .expect("and after");
}
