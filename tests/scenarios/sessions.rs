//! Idle sessions are parked out of memory and come back on their next
//! request without the client noticing; sessions with a GET stream or
//! state of their own stay; a parked session can still be deleted.

use std::time::Duration;

use e2e::{
    EVENTUALLY, RawSession, Switchboard, call, connect, demo_server_yaml, eventually, metric, text,
};
use serde_json::{Value, json};

async fn echo(session: &RawSession, text: &str) -> (u16, Value) {
    session.call("demo.echo", json!({ "text": text })).await
}

async fn metrics(sb: &Switchboard, name: &str) -> f64 {
    let exposition = sb.gateway_metrics().await;
    metric(&exposition, name, &[]).unwrap_or_else(|| panic!("no {name} in {exposition}"))
}

async fn wait_metric(sb: &Switchboard, name: &str, want: f64) {
    eventually(&format!("{name} to be {want}"), EVENTUALLY, || async {
        let value = metrics(sb, name).await;
        (value == want).then_some(()).ok_or(value.to_string())
    })
    .await;
}

/// A gateway with the demo server that parks sessions idle for `park_after`
/// seconds.
async fn parking_gateway(tag: &str, park_after: &str) -> Switchboard {
    let demo = demo_server_yaml("demo", &format!("{tag}-{}", std::process::id()), &[]);
    let sb = Switchboard::start_with(
        &[("demo.yaml", &demo)],
        &[],
        &["--park-idle-sessions-after", park_after],
    )
    .await;
    sb.wait_server_state("demo", "ready").await;
    sb
}

#[tokio::test]
async fn idle_sessions_are_parked_and_come_back_on_their_next_request() {
    let sb = parking_gateway("park", "1").await;
    let url = sb.mcp_url();

    // Parked once idle: no stream, no state of its own.
    let idle = RawSession::open(&url).await;
    // Pinned: a log level is state a replayed handshake would not restore.
    let leveled = RawSession::open(&url).await;
    let (status, reply) = leveled
        .post(json!({
            "jsonrpc": "2.0", "id": 3, "method": "logging/setLevel",
            "params": { "level": "debug" }
        }))
        .await;
    assert_eq!((status, reply.get("error")), (200, None), "{reply}");
    // Kept: rmcp's client holds a GET stream open for server messages.
    let streaming = connect(&url).await.expect("rmcp client");

    wait_metric(&sb, "switchboard_sessions_parked", 1.0).await;
    // Several parking rounds later, the other two are still in memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(metrics(&sb, "switchboard_session_parks_total").await, 1.0);
    assert_eq!(metrics(&sb, "switchboard_sessions").await, 2.0);

    // The parked session answers under the same id, no re-initialize.
    let (status, reply) = echo(&idle, "back again").await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["result"]["content"][0]["text"], "back again",
        "{reply}"
    );
    assert_eq!(
        metrics(&sb, "switchboard_session_restores_total").await,
        1.0
    );

    // Parked again, then deleted: 200, and gone for good (404, so clients
    // re-initialise); deleting it again is 404 too, as for any unknown id.
    wait_metric(&sb, "switchboard_sessions_parked", 1.0).await;
    assert_eq!(idle.delete().await, 200);
    assert_eq!(metrics(&sb, "switchboard_sessions_parked").await, 0.0);
    assert_eq!(echo(&idle, "deleted").await.0, 404);
    assert_eq!(idle.delete().await, 404);

    // The sessions that stayed never noticed.
    let (status, reply) = echo(&leveled, "still here").await;
    assert_eq!(
        (status, &reply["result"]["content"][0]["text"]),
        (200, &json!("still here")),
        "{reply}"
    );
    let result = call(&streaming, "demo.echo", json!({ "text": "streaming" }))
        .await
        .expect("call over the rmcp client");
    assert_eq!(text(&result), "streaming");
    // Only the idle session was ever parked (twice).
    assert_eq!(metrics(&sb, "switchboard_session_parks_total").await, 2.0);
    streaming.cancel().await.expect("close");
}

#[tokio::test]
async fn many_parked_sessions_come_back_at_once() {
    let sb = parking_gateway("park-many", "0.2").await;
    let url = sb.mcp_url();
    let sessions = futures::future::join_all((0..50).map(|_| RawSession::open(&url))).await;
    wait_metric(&sb, "switchboard_sessions_parked", 50.0).await;

    // Each session's call restores it, concurrently, each with its own answer.
    let replies = futures::future::join_all(
        sessions
            .iter()
            .enumerate()
            .map(|(n, session)| async move { (n, echo(session, &format!("call {n}")).await) }),
    )
    .await;
    for (n, (status, reply)) in replies {
        assert_eq!(status, 200, "session {n}: {reply}");
        assert_eq!(
            reply["result"]["content"][0]["text"],
            format!("call {n}"),
            "session {n}"
        );
    }
    assert_eq!(
        metrics(&sb, "switchboard_session_restores_total").await,
        50.0
    );

    // Several requests at once on one parked session: one restores it, the
    // others wait for that and go to the same restored session.
    wait_metric(&sb, "switchboard_sessions_parked", 50.0).await;
    let session = &sessions[0];
    let replies = futures::future::join_all(
        (0..8).map(|n| async move { (n, echo(session, &format!("same {n}")).await) }),
    )
    .await;
    for (n, (status, reply)) in replies {
        assert_eq!(status, 200, "call {n}: {reply}");
        assert_eq!(reply["result"]["content"][0]["text"], format!("same {n}"));
    }
    assert_eq!(
        metrics(&sb, "switchboard_session_restores_total").await,
        51.0
    );
}

#[tokio::test]
async fn a_request_id_already_in_flight_is_refused_and_the_first_request_goes_on() {
    let demo = demo_server_yaml("demo", &format!("dup-id-{}", std::process::id()), &[]);
    let sb = Switchboard::start(&[("demo.yaml", &demo)]).await;
    sb.wait_server_state("demo", "ready").await;
    let session = RawSession::open(&sb.mcp_url()).await;
    let call = |ms: u64| {
        json!({
            "jsonrpc": "2.0", "id": 5, "method": "tools/call",
            "params": { "name": "demo.sleep", "arguments": { "ms": ms } }
        })
    };
    let slow = session.post(call(1500));
    let duplicate = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        session.post(call(1)).await
    };
    let ((first_status, first), (status, refused)) = tokio::join!(slow, duplicate);
    assert_eq!(status, 200, "{refused}");
    assert_eq!(refused["id"], 5, "{refused}");
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("already in flight")),
        "{refused}"
    );
    assert_eq!(first_status, 200, "{first}");
    assert_eq!(first["id"], 5, "{first}");
    assert_eq!(
        first["result"]["structuredContent"]["sleptMs"], 1500,
        "the first request got its own answer: {first}"
    );

    // Once answered, the id is free again.
    let (status, again) = session.post(call(2)).await;
    assert_eq!(
        (status, &again["result"]["structuredContent"]["sleptMs"]),
        (200, &json!(2)),
        "{again}"
    );
}
