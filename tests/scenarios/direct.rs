//! The direct path (`data-plane/src/mcp/direct.rs`): plain tool calls
//! relayed past rmcp's session layer answer exactly as rmcp's path does,
//! everything that needs more of the session takes rmcp's path, and a call
//! that ends early (the client cancels, its session ends) is cancelled at
//! the server too.

use std::time::Duration;

use e2e::{EVENTUALLY, RawSession, Switchboard, demo_server_yaml, eventually, metric};
use serde_json::{Value, json};

/// `switchboard_direct_calls_total` now.
async fn direct_calls(sb: &Switchboard) -> f64 {
    let exposition = sb.gateway_metrics().await;
    metric(&exposition, "switchboard_direct_calls_total", &[]).unwrap_or_default()
}

/// A response without its id: what both paths must agree on.
fn without_id(mut response: Value) -> Value {
    if let Some(response) = response.as_object_mut() {
        response.remove("id");
    }
    response
}

#[tokio::test]
async fn direct_calls_answer_as_the_rmcp_path_does() {
    let marker = format!("direct-{}", std::process::id());
    let sb = Switchboard::start(&[("d.yaml", &demo_server_yaml("d", &marker, &[]))]).await;
    sb.wait_server_state("d", "ready").await;
    let url = sb.mcp_url();
    let direct = RawSession::open(&url).await;
    // A client that may be asked for sampling: rmcp's path, always.
    let via_rmcp = RawSession::open_with(&url, json!({ "sampling": {} })).await;

    let taken = [
        ("d.echo", json!({ "text": "same answer" })),
        // A tool error (isError), and a JSON-RPC error of the server's own.
        ("d.fail", json!({ "message": "boom" })),
        ("d.add", json!({ "a": "not a number", "b": 1 })),
    ];
    for (tool, arguments) in &taken {
        let before = direct_calls(&sb).await;
        let (status, answer) = direct.call(tool, arguments.clone()).await;
        assert_eq!(status, 200, "{tool}: {answer}");
        assert_eq!(
            direct_calls(&sb).await,
            before + 1.0,
            "{tool} takes the direct path"
        );
        let (status, expected) = via_rmcp.call(tool, arguments.clone()).await;
        assert_eq!(status, 200, "{tool}: {expected}");
        assert_eq!(direct_calls(&sb).await, before + 1.0, "{tool} via rmcp");
        assert_eq!(without_id(answer), without_id(expected), "{tool}");
    }

    // What the direct path leaves to rmcp: unknown tools and malformed
    // calls (the gateway's own errors), and calls asking for progress.
    let before = direct_calls(&sb).await;
    let (_, unknown) = direct.call("d.nope", json!({})).await;
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");
    let malformed = [
        json!({ "name": 5 }),
        json!({ "name": "d.echo", "arguments": "text" }),
        json!({ "name": "d.echo", "arguments": {}, "_meta": [] }),
    ];
    for params in malformed {
        let message = |n| json!({ "jsonrpc": "2.0", "id": 1000 + n, "method": "tools/call", "params": params });
        let (status, _, answer) = direct.post_framed(message(1)).await;
        let (expected_status, _, expected) = via_rmcp.post_framed(message(2)).await;
        let answer: Vec<_> = answer.into_iter().map(without_id).collect();
        let expected: Vec<_> = expected.into_iter().map(without_id).collect();
        assert_eq!((status, answer), (expected_status, expected), "{params}");
    }
    let progress = direct.call_message(
        "d.progress",
        json!({ "steps": 2, "stepMs": 0 }),
        json!({ "progressToken": "p1" }),
    );
    let (status, messages) = direct.post_all(progress).await;
    assert_eq!(status, 200);
    assert_eq!(
        messages.len(),
        3,
        "two progress notifications, then the result: {messages:?}"
    );
    assert_eq!(messages[0]["params"]["progressToken"], "p1");
    assert_eq!(
        direct_calls(&sb).await,
        before,
        "neither took the direct path"
    );

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
async fn a_direct_call_ends_with_its_cancellation_or_its_session() {
    let marker = format!("direct-cancel-{}", std::process::id());
    let sb = Switchboard::start(&[("d.yaml", &demo_server_yaml("d", &marker, &[]))]).await;
    sb.wait_server_state("d", "ready").await;
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

    // The client cancels: the server is told, the call answers with why.
    let session = RawSession::open(&url).await;
    let before = direct_calls(&sb).await;
    let message = session.call_message("d.sleep", json!({ "ms": 60_000 }), Value::Null);
    let request_id = message["id"].clone();
    let pending = session.post(message);
    let cancel = async {
        in_flight().await;
        let (status, _) = session
            .post(json!({
                "jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": { "requestId": request_id, "reason": "changed my mind" }
            }))
            .await;
        status
    };
    let ((status, answer), cancel_status) = tokio::join!(pending, cancel);
    assert_eq!(cancel_status, 202);
    assert_eq!(status, 200);
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cancelled by the client")),
        "{answer}"
    );
    assert_eq!(direct_calls(&sb).await, before + 1.0, "the call was direct");
    eventually("the server to be told", EVENTUALLY, || async {
        let n = cancellations().await;
        (n >= 1).then_some(()).ok_or(format!("{n}"))
    })
    .await;

    // The session ends (DELETE) with a call in flight: the call ends too.
    let leaving = RawSession::open(&url).await;
    let pending = leaving.call("d.sleep", json!({ "ms": 60_000 }));
    let end = async {
        in_flight().await;
        leaving.delete().await
    };
    let ((status, answer), deleted) = tokio::join!(pending, end);
    assert_eq!(deleted, 202);
    assert_eq!(status, 200, "{answer}");
    assert!(answer["error"].is_object(), "{answer}");
    eventually("the server to be told again", EVENTUALLY, || async {
        let n = cancellations().await;
        (n >= 2).then_some(()).ok_or(format!("{n}"))
    })
    .await;

    // The client goes away mid-call (its HTTP request is dropped).
    let impatient = RawSession::open(&url).await;
    let gone = tokio::time::timeout(Duration::from_secs(60), async {
        let call = impatient.call("d.sleep", json!({ "ms": 60_000 }));
        tokio::select! {
            _ = call => {}
            () = in_flight() => {}
        }
    });
    gone.await.expect("the call reached the server");
    eventually("the server to be told a third time", EVENTUALLY, || async {
        let n = cancellations().await;
        (n >= 3).then_some(()).ok_or(format!("{n}"))
    })
    .await;
    let (status, answer) = observer
        .call("d.echo", json!({ "text": "still here" }))
        .await;
    assert_eq!(
        (status, &answer["result"]["structuredContent"]["text"]),
        (200, &json!("still here"))
    );
}
