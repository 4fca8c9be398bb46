//! Editing the registry directory changes what the gateway runs, live,
//! without touching unrelated servers or open client sessions.

use std::sync::atomic::Ordering;

use e2e::{
    EVENTUALLY, Switchboard, call, connect, demo_server_yaml, eventually, processes_matching,
    tool_names,
};
use serde_json::{Value, json};

async fn info(client: &e2e::McpClient, tool: &str) -> Value {
    call(client, tool, json!({}))
        .await
        .expect(tool)
        .structured_content
        .expect("structured")
}

#[tokio::test]
async fn add_change_and_delete_apply_live_without_breaking_sessions() {
    let stable = format!("stable-{}", std::process::id());
    let extra = format!("extra-{}", std::process::id());
    let sb =
        Switchboard::start(&[("stable.yaml", &demo_server_yaml("stable", &stable, &[]))]).await;
    sb.wait_server_state("stable", "ready").await;
    let client = connect(&sb.mcp_url()).await.expect("connect");
    let stable_pid = info(&client, "stable.info").await["pid"].clone();

    // Add a server.
    let changes_before = client.service().tools_changed.load(Ordering::SeqCst);
    sb.write_file(
        "extra.yaml",
        &demo_server_yaml("extra", &extra, &[("GREETING", "v1")]),
    );
    eventually("extra tools to appear", EVENTUALLY, || async {
        let names = tool_names(&client).await.map_err(|e| e.to_string())?;
        names
            .contains(&"extra.echo".to_owned())
            .then_some(())
            .ok_or(format!("{names:?}"))
    })
    .await;
    let greeting = call(&client, "extra.env", json!({ "name": "GREETING" }))
        .await
        .expect("env");
    assert_eq!(
        greeting.structured_content.expect("structured")["value"],
        "v1"
    );
    eventually("a tools/list_changed notification", EVENTUALLY, || async {
        let now = client.service().tools_changed.load(Ordering::SeqCst);
        (now > changes_before)
            .then_some(())
            .ok_or(format!("{now} notifications"))
    })
    .await;

    // Change it: the gateway restarts that server with the new environment.
    let extra_pid = info(&client, "extra.info").await["pid"].clone();
    sb.write_file(
        "extra.yaml",
        &demo_server_yaml("extra", &extra, &[("GREETING", "v2")]),
    );
    eventually("extra to restart with the new env", EVENTUALLY, || async {
        let result = call(&client, "extra.env", json!({ "name": "GREETING" })).await;
        let value = result
            .ok()
            .and_then(|r| r.structured_content)
            .map(|s| s["value"].clone());
        (value == Some(json!("v2")))
            .then_some(())
            .ok_or(format!("{value:?}"))
    })
    .await;
    assert_ne!(
        info(&client, "extra.info").await["pid"],
        extra_pid,
        "extra restarted"
    );
    assert_eq!(
        info(&client, "stable.info").await["pid"],
        stable_pid,
        "stable untouched"
    );

    // Delete it: its tools and its process go away.
    sb.remove_file("extra.yaml");
    eventually("extra tools to disappear", EVENTUALLY, || async {
        let names = tool_names(&client).await.map_err(|e| e.to_string())?;
        (!names.iter().any(|n| n.starts_with("extra.")))
            .then_some(())
            .ok_or(format!("{names:?}"))
    })
    .await;
    eventually("the extra process to exit", EVENTUALLY, || async {
        let left = processes_matching(&extra);
        left.is_empty().then_some(()).ok_or(format!("{left:?}"))
    })
    .await;

    // The session that watched all of this still works, on the same server process.
    let echoed = call(&client, "stable.echo", json!({ "text": "still here" }))
        .await
        .expect("echo");
    assert_eq!(
        echoed.structured_content,
        Some(json!({ "text": "still here" }))
    );
    assert_eq!(info(&client, "stable.info").await["pid"], stable_pid);
    client.cancel().await.expect("close client");
}

#[tokio::test]
async fn gateway_shutdown_leaves_no_server_process_behind() {
    let instance = format!("shutdown-{}", std::process::id());
    let mut sb = Switchboard::start(&[
        (
            "a.yaml",
            &demo_server_yaml("a", &format!("{instance}-a"), &[]),
        ),
        (
            "b.yaml",
            &demo_server_yaml("b", &format!("{instance}-b"), &[]),
        ),
    ])
    .await;
    sb.wait_server_state("a", "ready").await;
    sb.wait_server_state("b", "ready").await;
    // Each server is a shim plus the server it supervises.
    assert_eq!(processes_matching(&instance).len(), 4);

    let gateway = sb.gateway.as_mut().expect("gateway running");
    let status = gateway.terminate().await.expect("clean exit");
    assert!(status.success(), "gateway exit status {status}");
    let left = processes_matching(&instance);
    assert!(left.is_empty(), "leaked: {left:?}\n{}", sb.logs());
}
