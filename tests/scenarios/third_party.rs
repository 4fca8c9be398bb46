//! A real third-party MCP server behind the gateway: `mcp-server-time`
//! from PyPI (installed by `.ci/run`), configured by the template users copy.

use e2e::{Switchboard, call, connect, tool_names};
use serde_json::{Value, json};

#[tokio::test]
async fn mcp_server_time_from_pypi() {
    let yaml = include_str!("../../templates/mcpservers/time.yaml");
    let sb = Switchboard::start(&[("time.yaml", yaml)]).await;
    // Without `pip install mcp-server-time` this fails with the server's
    // reason from /healthz ("No module named mcp_server_time").
    let state = sb.wait_server_state("time", "ready").await;
    assert!(state["tools"].as_u64().unwrap_or(0) >= 2, "{state}");
    let client = connect(&sb.mcp_url()).await.expect("connect");
    let names = tool_names(&client).await.expect("list");
    assert!(
        names.contains(&"time.get_current_time".to_owned()),
        "{names:?}"
    );
    assert!(names.contains(&"time.convert_time".to_owned()), "{names:?}");

    let result = call(
        &client,
        "time.get_current_time",
        json!({ "timezone": "UTC" }),
    )
    .await
    .expect("get_current_time");
    assert_ne!(result.is_error, Some(true), "{result:?}");
    let text = result.content[0]
        .as_text()
        .map(|t| t.text.clone())
        .expect("text content");
    let body: Value = serde_json::from_str(&text).expect("JSON body");
    assert_eq!(body["timezone"], "UTC", "{body}");
    assert!(
        body["datetime"].as_str().is_some_and(|d| d.len() >= 19),
        "{body}"
    );
    client.cancel().await.expect("close");
}
