//! Tool naming per McpServer: prefix modes, separators, include/exclude
//! globs, renames and description overrides; collisions resolved
//! deterministically and reported; over-long names flagged.

use e2e::{EVENTUALLY, Switchboard, call, connect, demo_server_with, eventually, tool_names};
use rmcp::model::Tool;
use serde_json::json;

const LONG: &str = "a_tool_name_long_enough_that_common_llm_providers_refuse_to_accept_it_at_all";

#[tokio::test]
async fn prefix_modes_filters_renames_and_collisions() {
    let tag = std::process::id();
    let server = |name: &str, spec: serde_json::Value| {
        (
            format!("{name}.yaml"),
            demo_server_with(name, &format!("naming-{name}-{tag}"), &[], spec),
        )
    };
    let files = [
        server(
            "alpha",
            json!({
                "prefixMode": "Never",
                "tools": {
                    "include": ["echo", "add", "info"],
                    "rename": { "add": "plus" },
                    "descriptions": { "echo": "Alpha's echo" }
                }
            }),
        ),
        server(
            "beta",
            json!({ "prefixMode": "Never", "separator": "__", "tools": { "include": ["echo", "now"] } }),
        ),
        server(
            "delta",
            json!({ "tools": { "include": ["e*"], "exclude": ["env"] } }),
        ),
        server(
            "gamma",
            json!({ "prefixMode": "Conditional", "tools": { "include": ["echo", "stats"], "rename": { "stats": LONG } } }),
        ),
    ];
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, y)| (n.as_str(), y.as_str()))
        .collect();
    let sb = Switchboard::start(&files).await;
    for name in ["alpha", "beta", "delta", "gamma"] {
        sb.wait_server_state(name, "ready").await;
    }
    let client = connect(&sb.mcp_url()).await.expect("connect");
    let mut expected = vec![
        LONG,
        "beta__echo",
        "delta.echo",
        "echo",
        "gamma.echo",
        "info",
        "now",
        "plus",
    ];
    expected.sort_unstable();
    let names = eventually("every server's tools listed", EVENTUALLY, || async {
        let names = tool_names(&client).await.map_err(|e| e.to_string())?;
        (names == expected)
            .then(|| names.clone())
            .ok_or(format!("{names:?}"))
    })
    .await;
    assert_eq!(names, expected);

    // Renamed tools route to the server's own name; descriptions are overridden.
    let sum = call(&client, "plus", json!({ "a": 2, "b": 3 }))
        .await
        .expect("plus");
    assert_eq!(sum.structured_content, Some(json!({ "sum": 5.0 })));
    let tools: Vec<Tool> = client.list_all_tools().await.expect("tools/list");
    let echo = tools.iter().find(|t| t.name == "echo").expect("echo");
    assert_eq!(echo.description.as_deref(), Some("Alpha's echo"));
    for (name, text) in [
        ("echo", "a"),
        ("beta__echo", "b"),
        ("gamma.echo", "g"),
        ("delta.echo", "d"),
    ] {
        let echoed = call(&client, name, json!({ "text": text }))
            .await
            .expect(name);
        assert_eq!(
            echoed.structured_content,
            Some(json!({ "text": text })),
            "{name}"
        );
    }
    // Tools left out by include/exclude are not there, under any name.
    for name in ["fail", "alpha.fail", "add", "delta.env", "env"] {
        let error = call(&client, name, json!({})).await.expect_err(name);
        assert!(
            error.to_string().contains("unknown tool"),
            "{name}: {error}"
        );
    }

    // The collision and the long name are reported.
    let health = sb.health().await;
    assert_eq!(
        health["toolNameCollisions"],
        json!([{ "name": "echo", "keptBy": "alpha", "renamed": [["beta", "beta__echo"]] }]),
        "{health}"
    );
    assert_eq!(health["longToolNames"], json!([LONG]), "{health}");
}

#[tokio::test]
async fn invalid_naming_is_a_registry_issue() {
    let bad = demo_server_with("bad", "naming-bad", &[], json!({ "separator": " " }));
    let clash = demo_server_with(
        "clash",
        "naming-clash",
        &[],
        json!({ "tools": { "rename": { "echo": "same", "add": "same" } } }),
    );
    let sb = Switchboard::start(&[("bad.yaml", &bad), ("clash.yaml", &clash)]).await;
    let issues = sb.control_status().await["issues"].clone();
    let fields: Vec<&str> = issues
        .as_array()
        .expect("issues")
        .iter()
        .filter_map(|i| i["field"].as_str())
        .collect();
    assert!(fields.contains(&"spec.separator"), "{issues}");
    assert!(
        fields.iter().any(|f| f.starts_with("spec.tools.rename.")),
        "{issues}"
    );
}

/// Both ways of paging: the gateway follows a server's `nextCursor` (the
/// demo server lists 7 tools a page) and pages its own lists for clients
/// (`--list-page-size 10`); a made-up cursor is refused.
#[tokio::test]
async fn lists_are_paged_both_ways() {
    let paged = demo_server_with(
        "paged",
        "paged",
        &["--extra-tools", "30", "--page-size", "7"],
        json!({}),
    );
    let sb =
        Switchboard::start_with(&[("paged.yaml", &paged)], &[], &["--list-page-size", "10"]).await;
    let state = sb.wait_server_state("paged", "ready").await;
    let server_tools = state["tools"].as_u64().expect("tool count");
    assert!(server_tools > 30, "every downstream page was read: {state}");

    let client = connect(&sb.mcp_url()).await.expect("connect");
    let first = client.list_tools(None).await.expect("first page");
    assert_eq!(first.tools.len(), 10);
    let cursor = first.next_cursor.clone().expect("a next cursor");
    let second = client
        .list_tools(Some(
            rmcp::model::PaginatedRequestParams::default().with_cursor(Some(cursor)),
        ))
        .await
        .expect("second page");
    assert_eq!(second.tools.len(), 10);
    assert_ne!(first.tools[0].name, second.tools[0].name);
    let all = tool_names(&client).await.expect("all pages");
    assert_eq!(all.len() as u64, server_tools, "{all:?}");
    let bogus = client
        .list_tools(Some(
            rmcp::model::PaginatedRequestParams::default().with_cursor(Some("x".into())),
        ))
        .await
        .expect_err("a made-up cursor");
    assert!(bogus.to_string().contains("invalid cursor"), "{bogus}");
    client.cancel().await.expect("close");
}
