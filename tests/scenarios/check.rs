//! `switchboard-control check` against running planes: all green on a
//! healthy registry, each declared probe tool called through the gateway;
//! on a broken one it names the server (or the probe) that failed and
//! exits non-zero; `--json` says the same for scripts.

use e2e::{Switchboard, bin_dir, demo_server_with, demo_server_yaml};
use serde_json::{Value, json};

async fn check(sb: &Switchboard, control_plane: &str, extra: &[&str]) -> (i32, String) {
    let output = tokio::process::Command::new(bin_dir().join("switchboard-control"))
        .arg("check")
        .args(["--control-plane", control_plane, "--gateway", &sb.mcp_url()])
        .args(extra)
        // Not the token of some `up` on this machine.
        .env("XDG_STATE_HOME", sb.dir.path())
        .output()
        .await
        .expect("running switchboard-control check");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test]
async fn check_is_green_when_all_is_well_and_names_what_is_not() {
    let tag = format!("check-{}", std::process::id());
    let broken = "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata: {name: broken}\nspec: {transport: {stdio: {command: /nonexistent/mcp-server}}}\n";
    // The gateway's own probes are hourly: only check calls these now.
    let probe = |tool: &str, arguments: Value| {
        json!({ "health": { "interval": "1h", "probe": "tool",
            "tool": { "name": tool, "arguments": arguments } } })
    };
    let probed = demo_server_with("probed", &tag, &[], probe("echo", json!({ "text": "ok" })));
    let sb = Switchboard::start(&[
        ("demo.yaml", &demo_server_yaml("demo", &tag, &[])),
        ("probed.yaml", &probed),
    ])
    .await;
    sb.wait_server_state("demo", "ready").await;
    sb.wait_server_state("probed", "ready").await;
    let api = format!("http://{}", sb.control_http);

    // The probe tool is called by the name clients see, once the replica
    // has reported it.
    let report = e2e::eventually("check to call the probe", e2e::EVENTUALLY, || async {
        let (code, report) = check(&sb, &api, &[]).await;
        (code == 0 && report.contains("probe tools answered: probed.echo"))
            .then(|| report.clone())
            .ok_or(report)
    })
    .await;
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 4, "{report}");
    assert!(lines.iter().all(|l| l.starts_with("ok ")), "{report}");
    assert!(lines[3].contains("tool(s) listed"), "{report}");

    let (code, json) = check(&sb, &api, &["--json"]).await;
    assert_eq!(code, 0, "{json}");
    let json: Value = serde_json::from_str(&json).expect("one JSON document");
    assert_eq!(json["ok"], true);
    assert_eq!(json["checks"].as_array().map(Vec::len), Some(4));
    assert_eq!(json["checks"][2]["check"], "servers ready");

    // A probe tool that fails through the gateway fails the check, named.
    let sick = demo_server_with(
        "sick",
        &tag,
        &[],
        probe("fail", json!({ "message": "the disk is full" })),
    );
    sb.write_file("sick.yaml", &sick);
    sb.wait_server_state("sick", "ready").await;
    let report = e2e::eventually("check to fail the probe", e2e::EVENTUALLY, || async {
        let (code, report) = check(&sb, &api, &[]).await;
        (code == 1 && report.contains("sick.fail"))
            .then(|| report.clone())
            .ok_or(report)
    })
    .await;
    assert!(
        report.contains(
            "FAIL MCP round trip through the gateway: server sick's probe tool sick.fail failed: the disk is full"
        ),
        "{report}"
    );
    sb.remove_file("sick.yaml");
    e2e::eventually("check to pass without it", e2e::EVENTUALLY, || async {
        let (code, report) = check(&sb, &api, &[]).await;
        (code == 0).then_some(()).ok_or(report)
    })
    .await;

    // A server that cannot start: named, with why; the rest is skipped.
    sb.write_file("broken.yaml", broken);
    sb.wait_server_state("broken", "failed").await;
    // The control plane hears of it with the replica's next report.
    let report = e2e::eventually(
        "check to see the failed server",
        e2e::EVENTUALLY,
        || async {
            let (code, report) = check(&sb, &api, &[]).await;
            (code == 1 && report.contains("servers ready: "))
                .then(|| report.clone())
                .ok_or(report)
        },
    )
    .await;
    let failed = report
        .lines()
        .find(|l| l.starts_with("FAIL"))
        .expect("a failed check");
    assert!(
        failed.starts_with("FAIL servers ready: broken is failed on e2e-0"),
        "{report}"
    );
    assert!(
        report.contains("skip MCP round trip through the gateway"),
        "{report}"
    );

    // Nothing answers where the control plane should be.
    let nowhere = format!("http://{}", e2e::free_addr());
    let (code, json) = check(&sb, &nowhere, &["--json"]).await;
    assert_eq!(code, 1);
    let json: Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(json["ok"], false);
    assert_eq!(json["checks"][0]["verdict"], "fail");
    assert!(
        json["checks"][0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no answer"))
    );
    assert_eq!(json["checks"][3]["verdict"], "skipped");
}
