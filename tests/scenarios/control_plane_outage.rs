//! The gateway keeps its last config while the control plane is away and
//! picks up changes once it is back.

use e2e::{EVENTUALLY, Switchboard, call, connect, demo_server_yaml, eventually, tool_names};
use serde_json::json;

#[tokio::test]
async fn gateway_serves_through_a_control_plane_crash_and_resyncs() {
    let tag = format!("outage-{}", std::process::id());
    let mut sb = Switchboard::start(&[("one.yaml", &demo_server_yaml("one", &tag, &[]))]).await;
    sb.wait_server_state("one", "ready").await;
    let client = connect(&sb.mcp_url()).await.expect("connect");
    let version = sb.health().await["configVersion"].clone();
    let pid = call(&client, "one.info", json!({}))
        .await
        .expect("info")
        .structured_content
        .map(|info| info["pid"].clone());

    sb.control
        .as_mut()
        .expect("control plane")
        .kill_hard()
        .await;
    eventually("the gateway to notice", EVENTUALLY, || async {
        let health = sb.health().await;
        (health["controlPlaneConnected"] == false)
            .then_some(())
            .ok_or(health.to_string())
    })
    .await;

    // Still serving, old session and new session alike, with the same config.
    let echoed = call(&client, "one.echo", json!({ "text": "a" }))
        .await
        .expect("old session");
    assert_eq!(echoed.structured_content, Some(json!({ "text": "a" })));
    let fresh = connect(&sb.mcp_url())
        .await
        .expect("new session while control plane is down");
    assert!(
        tool_names(&fresh)
            .await
            .expect("list")
            .contains(&"one.echo".to_owned())
    );
    assert_eq!(sb.health().await["configVersion"], version);

    // A change made while the control plane is down arrives once it is back.
    sb.write_file(
        "two.yaml",
        &demo_server_yaml("two", &format!("{tag}-two"), &[]),
    );
    sb.start_control_plane().await;
    eventually("the new server after reconnect", EVENTUALLY, || async {
        let names = tool_names(&client).await.map_err(|e| e.to_string())?;
        names
            .contains(&"two.echo".to_owned())
            .then_some(())
            .ok_or(format!("{names:?}"))
    })
    .await;
    let health = sb.health().await;
    assert_eq!(health["controlPlaneConnected"], true);
    assert!(
        health["configVersion"].as_u64() > version.as_u64(),
        "{health}"
    );
    let pid_after = call(&client, "one.info", json!({}))
        .await
        .expect("info")
        .structured_content
        .map(|info| info["pid"].clone());
    assert_eq!(
        pid, pid_after,
        "an unchanged server keeps running across the resync"
    );
    client.cancel().await.expect("close");
    fresh.cancel().await.expect("close");
}
