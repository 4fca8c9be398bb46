//! The README's quick start: the bundled registry behind one endpoint.

use e2e::{Switchboard, call, connect, tool_names};
use serde_json::json;

fn bundled_registry() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/local/registry");
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("bundled registry")
        .map(|e| e.expect("dir entry").path())
        .map(|p| {
            let name = p
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            (
                name,
                std::fs::read_to_string(&p).expect("read registry file"),
            )
        })
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn bundled_registry_serves_both_demo_servers_under_their_namespaces() {
    let files = bundled_registry();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let sb = Switchboard::start(&files).await;
    sb.wait_server_state("demo", "ready").await;
    sb.wait_server_state("utils", "ready").await;

    let client = connect(&sb.mcp_url()).await.expect("connect");
    let names = tool_names(&client).await.expect("tools/list");
    let demo_tools = [
        "echo", "add", "now", "env", "info", "fail", "sleep", "progress", "hang", "crash", "stats",
        "roots",
    ];
    for tool in demo_tools {
        assert!(names.contains(&format!("demo.{tool}")), "{names:?}");
        assert!(names.contains(&format!("utils.{tool}")), "{names:?}");
    }
    assert_eq!(names.len(), 2 * demo_tools.len(), "{names:?}");

    let echoed = call(
        &client,
        "demo.echo",
        json!({ "text": "hi", "meta": { "trace": "abc" } }),
    )
    .await
    .expect("demo.echo");
    assert_eq!(echoed.is_error, Some(false));
    assert_eq!(echoed.structured_content, Some(json!({ "text": "hi" })));
    assert_eq!(
        echoed.content[0].as_text().map(|t| t.text.as_str()),
        Some("hi")
    );
    let meta = echoed.meta.expect("_meta relayed");
    assert_eq!(meta.0.get("trace"), Some(&json!("abc")));

    let sum = call(&client, "utils.add", json!({ "a": 2, "b": 3 }))
        .await
        .expect("utils.add");
    assert_eq!(sum.structured_content, Some(json!({ "sum": 5.0 })));

    let greeting = call(&client, "utils.env", json!({ "name": "GREETING" }))
        .await
        .expect("env");
    assert_eq!(
        greeting.structured_content.expect("structured")["value"],
        "hello from the utils server"
    );
    let unset = call(&client, "demo.env", json!({ "name": "GREETING" }))
        .await
        .expect("env");
    assert_eq!(
        unset.structured_content.expect("structured")["value"],
        json!(null)
    );

    let failed = call(&client, "demo.fail", json!({ "message": "boom" }))
        .await
        .expect("fail");
    assert_eq!(failed.is_error, Some(true));
    assert_eq!(
        failed.content[0].as_text().map(|t| t.text.as_str()),
        Some("boom")
    );

    let health = sb.health().await;
    assert!(
        health["configVersion"].as_u64().unwrap_or(0) > 0,
        "{health}"
    );
    assert_eq!(health["servers"]["demo"]["tools"], demo_tools.len());
    assert_eq!(health["servers"]["demo"]["protocolVersion"], "2025-11-25");

    let status = sb.control_status().await;
    let replica = &status["replicas"]["e2e-0"];
    assert_eq!(replica["connected"], true, "{status}");
    assert_eq!(
        replica["ackedVersion"], status["snapshotVersion"],
        "{status}"
    );
    client.cancel().await.expect("close client");
}
