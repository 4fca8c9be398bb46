//! Fault injection: servers that crash, hang, babble or fork; breakers that
//! open and close; pools and per-session connections. After each scenario
//! no server process (nor anything it spawned) is left behind.

use std::time::Duration;

use e2e::{
    EVENTUALLY, McpClient, Switchboard, call, connect, demo_server_with, demo_server_yaml,
    eventually, metric, processes_matching, server_with, stubborn_server_yaml, text, tool_names,
};
use serde_json::{Value, json};

fn unique(what: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn pid(client: &McpClient, tool: &str) -> Value {
    let info = call(client, tool, json!({})).await.expect(tool);
    info.structured_content.expect("structured")["pid"].clone()
}

/// The `_meta` error kind of a gateway-side tool failure.
fn error_kind(result: &rmcp::model::CallToolResult) -> Value {
    result
        .meta
        .as_ref()
        .and_then(|m| m.0.get("switchboard.dev/error"))
        .map(|e| e["kind"].clone())
        .unwrap_or(Value::Null)
}

async fn assert_no_processes(marker: &str, sb: &Switchboard) {
    eventually(
        &format!("no process matching {marker}"),
        EVENTUALLY,
        || async {
            let left = processes_matching(marker);
            left.is_empty()
                .then_some(())
                .ok_or(format!("{left:?}\n{}", sb.logs()))
        },
    )
    .await;
}

#[tokio::test]
async fn killed_server_fails_its_call_at_once_and_restarts() {
    let marker = unique("kill9");
    let sb = Switchboard::start(&[("k.yaml", &demo_server_yaml("k", &marker, &[]))]).await;
    sb.wait_server_state("k", "ready").await;
    let client = connect(&sb.mcp_url()).await.expect("connect");
    let victim = pid(&client, "k.info").await.as_i64().expect("pid") as i32;

    let pending = call(&client, "k.sleep", json!({ "ms": 60_000 }));
    let killer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim),
            nix::sys::signal::SIGKILL,
        )
        .expect("kill -9 the server");
    };
    let started = std::time::Instant::now();
    let (result, ()) = tokio::join!(pending, killer);
    let result = result.expect("the call is answered");
    assert_eq!(result.is_error, Some(true), "{result:?}");
    assert_eq!(error_kind(&result), "transport", "{result:?}");
    assert!(
        text(&result).contains("server `k` failed during tools/call"),
        "{}",
        text(&result)
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failed at once, not at the timeout"
    );

    let health = eventually("a restart", EVENTUALLY, || async {
        let health = sb.health().await;
        let k = &health["servers"]["k"];
        (k["state"] == "ready" && k["restarts"].as_u64() >= Some(1))
            .then_some(health.clone())
            .ok_or(health.to_string())
    })
    .await;
    assert!(
        health["servers"]["k"]["lastError"].as_str().is_some(),
        "{health}"
    );
    assert_ne!(pid(&client, "k.info").await.as_i64(), Some(victim as i64));
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn hanging_call_times_out_and_the_server_is_told_to_cancel() {
    let marker = unique("hang");
    let spec = json!({ "timeouts": { "call": "30s", "tools": { "hang": "1s" } } });
    let sb = Switchboard::start(&[("h.yaml", &demo_server_with("h", &marker, &[], spec))]).await;
    sb.wait_server_state("h", "ready").await;
    let client = connect(&sb.mcp_url()).await.expect("connect");

    let result = call(&client, "h.hang", json!({})).await.expect("answered");
    assert_eq!(result.is_error, Some(true));
    assert_eq!(error_kind(&result), "timeout");
    assert!(
        text(&result).contains("did not answer tools/call within 1s"),
        "{}",
        text(&result)
    );

    eventually(
        "the server to receive notifications/cancelled",
        EVENTUALLY,
        || async {
            let stats = call(&client, "h.stats", json!({}))
                .await
                .map_err(|e| e.to_string())?;
            let n = stats.structured_content.unwrap_or_default()["cancellations"].as_u64();
            (n >= Some(1)).then_some(()).ok_or(format!("{n:?}"))
        },
    )
    .await;
    // The server still answers other calls.
    call(&client, "h.echo", json!({ "text": "alive" }))
        .await
        .expect("echo");
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn a_server_hanging_at_start_delays_nobody() {
    let marker = unique("slowstart");
    let hanging = demo_server_with(
        "stuck",
        &marker,
        &["--hang-on-start"],
        json!({ "timeouts": { "initialize": "2s" } }),
    );
    let sb = Switchboard::start(&[
        ("stuck.yaml", &hanging),
        (
            "fine.yaml",
            &demo_server_yaml("fine", &format!("{marker}-fine"), &[]),
        ),
    ])
    .await;
    // Switchboard::start returned: the gateway was ready while `stuck` hung.
    sb.wait_server_state("fine", "ready").await;
    let client = connect(&sb.mcp_url()).await.expect("connect");
    call(&client, "fine.echo", json!({ "text": "x" }))
        .await
        .expect("fine works");
    let names = tool_names(&client).await.expect("list");
    assert!(!names.iter().any(|n| n.starts_with("stuck.")), "{names:?}");

    let stuck = sb.wait_server_state("stuck", "failed").await;
    let reason = stuck["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("no initialize response within 2s"),
        "{stuck}"
    );
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn non_mcp_stdout_is_that_servers_problem_only() {
    let marker = unique("garbage");
    // Noise before the handshake is skipped; a server that never speaks MCP fails.
    let noisy = demo_server_with("noisy", &marker, &["--garbage-lines", "20"], json!({}));
    let babbler = server_with(
        "babbler",
        "sh",
        &[
            "-c",
            &format!("while true; do echo {marker}-garbage; sleep 0.05; done"),
        ],
        json!({ "timeouts": { "initialize": "2s" } }),
    );
    let sb = Switchboard::start(&[("noisy.yaml", &noisy), ("babbler.yaml", &babbler)]).await;
    sb.wait_server_state("noisy", "ready").await;
    let failed = sb.wait_server_state("babbler", "failed").await;
    assert!(
        failed["reason"]
            .as_str()
            .unwrap_or("")
            .contains("initialize"),
        "{failed}"
    );
    let client = connect(&sb.mcp_url()).await.expect("connect");
    let echoed = call(&client, "noisy.echo", json!({ "text": "clean" }))
        .await
        .expect("echo");
    assert_eq!(text(&echoed), "clean");
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn breaker_opens_under_failures_fails_fast_and_closes_again() {
    let marker = unique("breaker");
    let spec = json!({ "breaker": {
        "consecutiveFailures": 3, "openDuration": "3s", "halfOpenProbes": 1,
        "countToolErrors": true, "hideToolsWhenOpen": true,
    } });
    let sb = Switchboard::start(&[("b.yaml", &demo_server_with("b", &marker, &[], spec))]).await;
    sb.wait_server_state("b", "ready").await;
    let client = connect(&sb.mcp_url()).await.expect("connect");
    let changes = client.service().tools_changed.clone();
    let before = changes.load(std::sync::atomic::Ordering::SeqCst);

    // Three failures in a row reach the server and open the breaker.
    for _ in 0..3 {
        let failed = call(&client, "b.fail", json!({ "message": "down" }))
            .await
            .expect("answered");
        assert_eq!(failed.is_error, Some(true));
        assert_eq!(error_kind(&failed), Value::Null, "the server's own error");
    }
    // A flood while open: every call is answered by the breaker at once.
    let flood = (0..20).map(|_| call(&client, "b.echo", json!({ "text": "x" })));
    let results = futures::future::join_all(flood).await;
    for result in results {
        let result = result.expect("answered");
        assert_eq!(error_kind(&result), "breaker_open", "{result:?}");
        assert!(
            text(&result).contains("circuit breaker is open"),
            "{}",
            text(&result)
        );
    }
    let health = sb.health().await;
    assert_eq!(health["servers"]["b"]["breaker"], "open", "{health}");
    let names = tool_names(&client).await.expect("list");
    assert!(
        !names.iter().any(|n| n.starts_with("b.")),
        "hidden while open: {names:?}"
    );
    eventually("list_changed when the tools left", EVENTUALLY, || async {
        let now = changes.load(std::sync::atomic::Ordering::SeqCst);
        (now > before).then_some(()).ok_or(format!("{now}"))
    })
    .await;

    // After the open period the tools come back; a good call closes it.
    eventually("tools to come back half-open", EVENTUALLY, || async {
        let names = tool_names(&client).await.map_err(|e| e.to_string())?;
        names
            .contains(&"b.echo".to_owned())
            .then_some(())
            .ok_or(format!("{names:?}"))
    })
    .await;
    let probe = call(&client, "b.echo", json!({ "text": "probe" }))
        .await
        .expect("probe");
    assert_eq!(probe.is_error, Some(false));
    assert_eq!(sb.health().await["servers"]["b"]["breaker"], "closed");
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn removing_a_server_ends_its_calls_and_its_processes() {
    let marker = unique("remove");
    // The server forks a grandchild that carries the marker in its arguments.
    let script = format!(
        "sleep 100000.{} & exec switchboard-gateway demo-server --instance {marker}",
        std::process::id()
    );
    let sb = Switchboard::start(&[(
        "r.yaml",
        &server_with("r", "sh", &["-c", &script], json!({})),
    )])
    .await;
    sb.wait_server_state("r", "ready").await;
    let grandchild = format!("sleep 100000.{}", std::process::id());
    let running = processes_matching(&grandchild);
    let sleeping = running
        .iter()
        .filter(|(_, cmd)| cmd.starts_with(&grandchild));
    assert_eq!(
        sleeping.count(),
        1,
        "the forked grandchild runs: {running:?}"
    );
    let client = connect(&sb.mcp_url()).await.expect("connect");

    let pending = call(&client, "r.sleep", json!({ "ms": 60_000 }));
    let remove = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sb.remove_file("r.yaml");
    };
    let started = std::time::Instant::now();
    let (result, ()) = tokio::join!(pending, remove);
    let result = result.expect("answered");
    assert_eq!(result.is_error, Some(true), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_no_processes(&marker, &sb).await;
    assert_no_processes(&grandchild, &sb).await;
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn a_crashed_gateway_leaves_no_server_behind() {
    let marker = unique("crash");
    let script = format!(
        "sleep 200000.{} & exec switchboard-gateway demo-server --instance {marker}",
        std::process::id()
    );
    let mut sb = Switchboard::start(&[
        (
            "a.yaml",
            &server_with("a", "sh", &["-c", &script], json!({})),
        ),
        (
            "b.yaml",
            &demo_server_yaml("b", &format!("{marker}-b"), &[]),
        ),
    ])
    .await;
    sb.wait_server_state("a", "ready").await;
    sb.wait_server_state("b", "ready").await;
    sb.gateway.as_mut().expect("gateway").kill_hard().await;
    assert_no_processes(&marker, &sb).await;
    assert_no_processes(&format!("sleep 200000.{}", std::process::id()), &sb).await;
}

/// Waits until a process of each `needles` entry runs.
async fn wait_running(needles: &[String]) {
    eventually("the servers' processes", EVENTUALLY, || async {
        let missing: Vec<_> = needles
            .iter()
            .filter(|n| processes_matching(n).is_empty())
            .collect();
        missing
            .is_empty()
            .then_some(())
            .ok_or(format!("{missing:?}"))
    })
    .await;
}

#[tokio::test]
async fn a_gateway_stopped_or_killed_while_servers_start_leaves_no_process() {
    for hard in [false, true] {
        let tag = unique_tag();
        let mut sb = Switchboard::start(&[
            ("s.yaml", &stubborn_server_yaml("s", &tag)),
            (
                "h.yaml",
                &server_with("h", "sleep", &[&format!("7779.{tag}")], json!({})),
            ),
        ])
        .await;
        wait_running(&[
            format!("stubborn-{tag}"),
            format!("sleep 7780.{tag}"),
            format!("sleep 7779.{tag}"),
        ])
        .await;
        assert_eq!(sb.health().await["servers"]["s"]["state"], "starting");
        let gateway = sb.gateway.as_mut().expect("gateway");
        if hard {
            gateway.kill_hard().await;
        } else {
            let status = gateway.terminate().await.expect("the gateway stops");
            assert!(status.success(), "{status}");
        }
        assert_no_processes(&tag, &sb).await;
    }
}

#[tokio::test]
async fn a_server_changed_or_removed_while_it_starts_leaves_no_process() {
    let (first, second) = (unique_tag(), unique_tag());
    let sb = Switchboard::start(&[("s.yaml", &stubborn_server_yaml("s", &first))]).await;
    wait_running(&[format!("sleep 7780.{first}")]).await;

    // A changed spec replaces the starting server: the old tree goes.
    sb.write_file("s.yaml", &stubborn_server_yaml("s", &second));
    wait_running(&[format!("sleep 7780.{second}")]).await;
    assert_no_processes(&first, &sb).await;

    // Removed (the snapshot no longer has it): its tree goes too, and
    // the gateway keeps serving.
    sb.remove_file("s.yaml");
    assert_no_processes(&second, &sb).await;
    assert_eq!(sb.health().await["servers"]["s"], Value::Null);
}

/// A number only this test's processes carry (`sleep` takes it as seconds).
fn unique_tag() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(100);
    format!(
        "{}{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[tokio::test]
async fn pool_grows_under_load_and_shrinks_when_idle() {
    let marker = unique("pool");
    let spec = json!({ "pool": { "min": 1, "max": 2, "maxConcurrency": 1, "idleTimeout": "1s" } });
    let sb = Switchboard::start(&[("p.yaml", &demo_server_with("p", &marker, &[], spec))]).await;
    sb.wait_server_state("p", "ready").await;
    let client = connect(&sb.mcp_url()).await.expect("connect");

    // Two slow calls at once need two connections (processes), seen while
    // they run: once they end, the second one is idle and may be reaped
    // before a loaded machine gets to look.
    let servers = |m: &str| {
        processes_matching(m)
            .into_iter()
            .filter(|(_, cmd)| !cmd.contains("stdio-shim"))
            .count()
    };
    let slow = || call(&client, "p.sleep", json!({ "ms": 1500 }));
    let grew = eventually("the pool to grow to pool.max", EVENTUALLY, || async {
        let n = servers(&marker);
        (n == 2).then_some(()).ok_or(format!("{n} processes"))
    });
    let (a, b, ()) = tokio::join!(slow(), slow(), grew);
    assert_eq!(a.expect("a").is_error, Some(false));
    assert_eq!(b.expect("b").is_error, Some(false));

    eventually("the idle connection to be reaped", EVENTUALLY, || async {
        let n = servers(&marker);
        let health = sb.health().await;
        (n == 1 && health["servers"]["p"]["connections"] == 1)
            .then_some(())
            .ok_or(format!("{n} processes, {health}"))
    })
    .await;
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn per_session_servers_get_their_own_process_per_client() {
    let marker = unique("persession");
    let spec = json!({ "sessionMode": "perSession" });
    let sb = Switchboard::start(&[("s.yaml", &demo_server_with("s", &marker, &[], spec))]).await;
    sb.wait_server_state("s", "ready").await;
    let one = connect(&sb.mcp_url()).await.expect("connect one");
    let two = connect(&sb.mcp_url()).await.expect("connect two");
    let (pid_one, pid_two) = (pid(&one, "s.info").await, pid(&two, "s.info").await);
    assert_ne!(pid_one, pid_two, "each session has its own process");
    assert_eq!(pid(&one, "s.info").await, pid_one, "and keeps it");

    one.cancel().await.expect("close one");
    let gone = format!("/proc/{}", pid_one.as_i64().expect("pid"));
    eventually("session one's process to exit", EVENTUALLY, || async {
        (!std::path::Path::new(&gone).exists())
            .then_some(())
            .ok_or(gone.clone())
    })
    .await;
    assert_eq!(
        pid(&two, "s.info").await,
        pid_two,
        "the other session is untouched"
    );
    two.cancel().await.expect("close two");
}

#[tokio::test]
async fn remote_http_server_is_reconnected_after_it_restarts() {
    let marker = unique("remote");
    let addr = e2e::free_addr();
    let sb = Switchboard::start(&[]).await;
    let mut remote = sb.spawn_demo_http(addr, &marker).await;
    let transport = json!({ "http": {
        "url": format!("http://{addr}/mcp"),
        "headers": [{ "name": "X-Test", "value": "1" }],
    } });
    let yaml = json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "McpServer",
        "metadata": { "name": "r" },
        "spec": { "transport": transport },
    });
    sb.write_file("r.yaml", &yaml.to_string());
    let state = sb.wait_server_state("r", "ready").await;
    assert_eq!(state["tools"], 12, "{state}");
    let client = connect(&sb.mcp_url()).await.expect("connect");
    let first = pid(&client, "r.info").await;

    // The server goes away and comes back as a new process: its sessions
    // are gone, the gateway re-initialises and calls work again.
    remote.kill_hard().await;
    let _again = sb.spawn_demo_http(addr, &marker).await;
    let second = eventually(
        "calls to work against the new process",
        EVENTUALLY,
        || async {
            let result = call(&client, "r.info", json!({}))
                .await
                .map_err(|e| e.to_string())?;
            let pid = result
                .structured_content
                .as_ref()
                .map(|s| s["pid"].clone())
                .unwrap_or_default();
            (!pid.is_null() && pid != first)
                .then_some(pid)
                .ok_or(format!("{result:?}"))
        },
    )
    .await;
    assert_ne!(first, second);
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn progress_keeps_a_long_call_alive_until_the_absolute_cap() {
    let marker = unique("progress");
    let spec = json!({ "timeouts": { "call": "1s", "maxCall": "4s" } });
    let sb = Switchboard::start(&[("p.yaml", &demo_server_with("p", &marker, &[], spec))]).await;
    sb.wait_server_state("p", "ready").await;
    let client = connect(&sb.mcp_url()).await.expect("connect");

    // 2.5 s of work with progress every 250 ms: longer than `call`, but
    // each progress notification restarts it.
    let done = call(&client, "p.progress", json!({ "steps": 10, "stepMs": 250 }))
        .await
        .expect("answered");
    assert_eq!(done.is_error, Some(false), "{done:?}");
    assert_eq!(done.structured_content, Some(json!({ "steps": 10 })));

    // Without progress the same length of work times out after `call`.
    let silent = call(&client, "p.sleep", json!({ "ms": 2500 }))
        .await
        .expect("answered");
    assert_eq!(error_kind(&silent), "timeout", "{silent:?}");

    // Progress does not extend a call past `maxCall`.
    let capped = call(&client, "p.progress", json!({ "steps": 40, "stepMs": 250 }))
        .await
        .expect("answered");
    assert_eq!(error_kind(&capped), "timeout", "{capped:?}");
    client.cancel().await.expect("close");
}

#[tokio::test]
async fn failing_health_probes_restart_the_connection() {
    let marker = unique("probe");
    let spec = json!({ "health": {
        "interval": "200ms", "timeout": "1s", "failureThreshold": 2,
        "probe": "tool", "tool": { "name": "fail", "arguments": { "message": "unhealthy" } },
    } });
    let sb = Switchboard::start(&[("h.yaml", &demo_server_with("h", &marker, &[], spec))]).await;
    let health = eventually("a probe-triggered restart", EVENTUALLY, || async {
        let health = sb.health().await;
        let h = &health["servers"]["h"];
        (h["restarts"].as_u64() >= Some(1))
            .then_some(h.clone())
            .ok_or(health.to_string())
    })
    .await;
    let last_error = health["lastError"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("health probe failed 2 times"),
        "{health}"
    );
    assert!(
        last_error.contains("probe tool `fail` returned isError"),
        "{health}"
    );
}

#[tokio::test]
async fn shared_servers_serve_many_sessions_from_one_process() {
    let marker = unique("shared");
    let sb = Switchboard::start(&[("s.yaml", &demo_server_yaml("s", &marker, &[]))]).await;
    sb.wait_server_state("s", "ready").await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(connect(&sb.mcp_url()).await.expect("connect"));
    }
    let pids = futures::future::join_all(clients.iter().map(|c| pid(c, "s.info"))).await;
    assert!(pids.iter().all(|p| *p == pids[0]), "{pids:?}");
    let servers: Vec<_> = processes_matching(&marker)
        .into_iter()
        .filter(|(_, cmd)| !cmd.contains("stdio-shim"))
        .collect();
    assert_eq!(servers.len(), 1, "{servers:?}");
    for client in clients {
        client.cancel().await.expect("close");
    }
}

#[tokio::test]
async fn a_full_pool_answers_busy_after_the_acquire_timeout() {
    let marker = unique("busy");
    let spec = json!({ "pool": { "max": 1, "maxConcurrency": 1, "acquireTimeout": "500ms" } });
    let sb = Switchboard::start(&[("q.yaml", &demo_server_with("q", &marker, &[], spec))]).await;
    sb.wait_server_state("q", "ready").await;
    let client = connect(&sb.mcp_url()).await.expect("connect");

    let slow = call(&client, "q.sleep", json!({ "ms": 3000 }));
    let waiting = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        call(&client, "q.echo", json!({ "text": "queued" })).await
    };
    let (slow, waiting) = tokio::join!(slow, waiting);
    assert_eq!(slow.expect("slow call").is_error, Some(false));
    let waiting = waiting.expect("answered");
    assert_eq!(error_kind(&waiting), "unavailable", "{waiting:?}");
    assert!(
        text(&waiting).contains("stayed busy for 500ms"),
        "{}",
        text(&waiting)
    );
    client.cancel().await.expect("close");
}

/// A client cancelling its call, and a client going away mid-call, both
/// reach the server as `notifications/cancelled`; the gateway and the
/// server go on serving.
#[tokio::test]
async fn client_cancellation_and_disconnect_cancel_the_server_call() {
    let marker = unique("cancel");
    let sb = Switchboard::start(&[("c.yaml", &demo_server_yaml("c", &marker, &[]))]).await;
    sb.wait_server_state("c", "ready").await;
    let observer = connect(&sb.mcp_url()).await.expect("connect");
    let cancellations = || async {
        let stats = call(&observer, "c.stats", json!({})).await.expect("stats");
        stats.structured_content.unwrap_or_default()["cancellations"]
            .as_u64()
            .unwrap_or_default()
    };
    let sleep = || {
        let params = rmcp::model::CallToolRequestParams::new("c.sleep").with_arguments(
            json!({ "ms": 60_000 })
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        rmcp::model::ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(params))
    };

    // The client cancels its own call.
    let client = connect(&sb.mcp_url()).await.expect("connect");
    let handle = client
        .send_cancellable_request(sleep(), Default::default())
        .await
        .expect("call sent");
    eventually("the call to reach the server", EVENTUALLY, || async {
        let health = sb.health().await;
        let in_flight = health["servers"]["c"]["inFlight"].as_u64();
        (in_flight >= Some(1))
            .then_some(())
            .ok_or(health.to_string())
    })
    .await;
    handle
        .cancel(Some("changed my mind".into()))
        .await
        .expect("cancel");
    eventually("the server to be told", EVENTUALLY, || async {
        let n = cancellations().await;
        (n >= 1).then_some(()).ok_or(format!("{n}"))
    })
    .await;

    // The client disappears (its session ends) with a call in flight.
    let leaving = connect(&sb.mcp_url()).await.expect("connect");
    let _pending = leaving
        .send_cancellable_request(sleep(), Default::default())
        .await
        .expect("call sent");
    eventually(
        "the second call to reach the server",
        EVENTUALLY,
        || async {
            let health = sb.health().await;
            let in_flight = health["servers"]["c"]["inFlight"].as_u64();
            (in_flight >= Some(1))
                .then_some(())
                .ok_or(health.to_string())
        },
    )
    .await;
    leaving.cancel().await.expect("close the session");
    eventually("the server to be told again", EVENTUALLY, || async {
        let n = cancellations().await;
        (n >= 2).then_some(()).ok_or(format!("{n}"))
    })
    .await;
    call(&observer, "c.echo", json!({ "text": "still here" }))
        .await
        .expect("the gateway goes on");
    observer.cancel().await.expect("close");
}

/// SIGTERM during a 3 s call: the replica stops being ready and refuses
/// new requests at once, the call still completes with its result, and
/// then the gateway exits leaving no process behind.
#[tokio::test]
async fn a_stopping_gateway_finishes_calls_in_flight_and_refuses_new_ones() {
    let marker = unique("drain");
    let mut sb = Switchboard::start(&[("d.yaml", &demo_server_yaml("d", &marker, &[]))]).await;
    sb.wait_server_state("d", "ready").await;
    let client = connect(&sb.mcp_url()).await.expect("connect");
    let other = connect(&sb.mcp_url()).await.expect("a second session");
    let in_flight = tokio::spawn(async move {
        call(&client, "d.progress", json!({ "steps": 3, "stepMs": 1000 })).await
    });
    eventually("the call is in flight", EVENTUALLY, || async {
        let health = sb.health().await;
        (health["servers"]["d"]["inFlight"] == 1)
            .then_some(())
            .ok_or(health.to_string())
    })
    .await;
    let pid = sb
        .gateway
        .as_ref()
        .and_then(|g| g.pid())
        .expect("gateway pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");

    let http = reqwest::Client::new();
    let ready = format!("http://{}/readyz", sb.gateway_addr);
    let (status, body) = eventually("not ready", EVENTUALLY, || async {
        let answer = http.get(&ready).send().await.map_err(|e| e.to_string())?;
        let status = answer.status().as_u16();
        let body = answer.text().await.map_err(|e| e.to_string())?;
        (status == 503)
            .then_some((status, body.clone()))
            .ok_or(body)
    })
    .await;
    assert_eq!((status, body.as_str()), (503, "draining: shutting down\n"));
    let metrics = sb.gateway_metrics().await;
    assert_eq!(metric(&metrics, "switchboard_draining", &[]), Some(1.0));
    assert!(
        metric(&metrics, "switchboard_drain_in_flight", &[]) >= Some(1.0),
        "the call holds the drain: {metrics}"
    );

    // A new session and a new request on an open one are both refused.
    let refused = e2e::initialize_post(&http, &sb.mcp_url(), json!(7))
        .send()
        .await
        .expect("an answer");
    assert_eq!(refused.status().as_u16(), 503);
    let body: Value = refused.json().await.expect("a JSON-RPC error");
    assert_eq!(body["id"], 7, "{body}");
    assert_eq!(body["error"]["code"], -32000, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("shutting down")),
        "{body}"
    );
    let stream = http
        .get(format!("http://{}/sse", sb.gateway_addr))
        .send()
        .await
        .expect("GET /sse");
    assert_eq!(
        stream.status().as_u16(),
        503,
        "no new legacy SSE session either"
    );
    call(&other, "d.echo", json!({ "text": "late" }))
        .await
        .expect_err("a new call on an open session is refused");

    let result = in_flight
        .await
        .expect("the calling task")
        .expect("the call in flight completes");
    assert_eq!(result.structured_content, Some(json!({ "steps": 3 })));
    let gateway = sb.gateway.as_mut().expect("gateway");
    assert!(gateway.wait().await.success(), "{}", sb.logs());
    assert_no_processes(&marker, &sb).await;
    let logs = sb.logs();
    assert!(logs.contains("drained"), "{logs}");
}
