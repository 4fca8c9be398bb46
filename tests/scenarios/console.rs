//! The console, in a real browser: `switchboard-control up` prints its URL,
//! and Debian's headless Chromium, driven by playwright-core
//! (`tests/browser/console.mjs`), logs in with it, sees the servers and
//! replicas, opens a breaker with calls from the Tools page and watches it
//! and a killed server change without a reload, opens a call's trace, adds
//! a server (refused first, at its field) and finds its tools, copies a
//! client config, and checks each page with axe-core, on a laptop and a
//! phone, light and dark. Screenshots land in `target/console-artifacts/`.
//! The console's own logic has unit tests run here with `node --test`.

use std::{path::PathBuf, time::Duration};

use e2e::{
    EVENTUALLY, Process, bin_dir, eventually, free_addr, processes_matching, repo_root,
    require_tool, server_with,
};
use serde_json::json;
use tokio::process::Command;

const NPM_CI: &str = "`npm ci --prefix tests/npm`";
const TRACE_UI: &str = "http://jaeger.example:16686/trace/{trace_id}";

fn node() -> PathBuf {
    require_tool(
        "Node 22 (npm package node)",
        repo_root().join("tests/npm/node_modules/.bin/node"),
        NPM_CI,
    )
}

fn show(output: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn frontend_logic() {
    let output = Command::new(node())
        .arg("--test")
        .arg(repo_root().join("control-plane/console/model.test.mjs"))
        .output()
        .await
        .expect("node runs");
    let shown = show(&output);
    assert!(output.status.success(), "{shown}");
    assert!(shown.contains("# fail 0"), "{shown}");
}

#[tokio::test]
async fn in_a_real_browser() {
    let chromium = require_tool(
        "Debian's chromium",
        PathBuf::from("/usr/bin/chromium"),
        "`apt-get install chromium`",
    );
    require_tool(
        "playwright-core",
        repo_root().join("tests/npm/node_modules/playwright-core/package.json"),
        NPM_CI,
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let registry = dir.path().join("registry");
    std::fs::create_dir(&registry).expect("registry dir");
    // A demo server that stays down once the flag file exists: killed
    // then, it fails every restart.
    let marker = format!("console-{}", std::process::id());
    let flag = dir.path().join("broken");
    let script = format!(
        "test -e '{}' && exit 1; exec switchboard-gateway demo-server --instance {marker}",
        flag.display()
    );
    let breaker = json!({ "breaker": {
        "consecutiveFailures": 3, "openDuration": "60s", "countToolErrors": true,
    } });
    std::fs::write(
        registry.join("flaky.yaml"),
        server_with("flaky", "sh", &["-c", &script], breaker),
    )
    .expect("write flaky.yaml");

    let (gateway, api) = (free_addr(), free_addr());
    let mut command = Command::new(bin_dir().join("switchboard-control"));
    command
        .env("XDG_STATE_HOME", dir.path())
        .arg("up")
        .arg("--registry")
        .arg(&registry)
        .arg("--grpc-listen")
        .arg(free_addr().to_string())
        .arg("--http-listen")
        .arg(api.to_string())
        .arg("--gateway-listen")
        .arg(gateway.to_string())
        .arg("--trace-ui-url")
        .arg(TRACE_UI);
    let up = Process::spawn("switchboard-control up", command, dir.path().join("up.log"));
    let console_url = eventually("up's `console:` line", EVENTUALLY, || async {
        up.log()
            .lines()
            .find_map(|line| line.strip_prefix("console: ").map(str::to_owned))
            .ok_or_else(|| up.log())
    })
    .await;
    assert!(
        console_url.starts_with(&format!("http://{api}/#login=")),
        "{console_url}"
    );
    let needle = format!("--instance {marker}");
    let server_pid = eventually("the flaky server's process", EVENTUALLY, || async {
        // The stdio shim in between carries the script, not the command.
        let found = processes_matching(&needle);
        match found
            .iter()
            .filter(|(_, cmdline)| cmdline.starts_with("switchboard-gateway demo-server"))
            .collect::<Vec<_>>()[..]
        {
            [(pid, _)] => Ok(*pid),
            _ => Err(format!("{found:?}")),
        }
    })
    .await;

    let artifacts = repo_root().join("target/console-artifacts");
    let output = tokio::time::timeout(
        Duration::from_secs(300),
        Command::new(node())
            .arg(repo_root().join("tests/browser/console.mjs"))
            .env("CONSOLE_URL", &console_url)
            .env("SERVER", "flaky")
            .env("BROKEN_FLAG", &flag)
            .env("SERVER_PID", server_pid.to_string())
            .env("TRACE_UI", TRACE_UI)
            .env("ARTIFACTS", &artifacts)
            .env("CHROMIUM", &chromium)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser test finishes within 5 minutes")
    .expect("node runs");
    let shown = show(&output);
    assert!(
        output.status.success(),
        "{shown}\n--- up's log (tail) ---\n{}",
        tail(&up.log(), 60)
    );
    assert!(shown.contains("all steps passed"), "{shown}");
    for screenshot in [
        "laptop-registry",
        "laptop-health-breaker-open",
        "phone-health-dark",
    ] {
        let path = artifacts.join(format!("{screenshot}.png"));
        let bytes = std::fs::read(&path).unwrap_or_default();
        assert!(
            bytes.starts_with(b"\x89PNG"),
            "no screenshot at {}",
            path.display()
        );
    }
    // The login code worked once: the browser redeemed it.
    let code = console_url.rsplit('=').next().unwrap_or_default();
    let again = reqwest::Client::new()
        .post(format!("http://{api}/console/login"))
        .json(&json!({ "code": code }))
        .send()
        .await
        .expect("POST /console/login");
    assert_eq!(again.status(), 401, "a login code is good once");
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
