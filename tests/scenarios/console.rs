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
    EVENTUALLY, Events, Process, Switchboard, bin_dir, demo_server_yaml, eventually, free_addr,
    processes_matching, repo_root, require_tool, server_with,
};
use serde_json::{Value, json};
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
    // The stdio shim in between carries the script, not the command.
    let mark = format!("switchboard-gateway demo-server --instance {marker}");
    eventually("the flaky server's process", EVENTUALLY, || async {
        let found = processes_matching(&mark);
        match found.iter().filter(|(_, c)| c.starts_with(&mark)).count() {
            1 => Ok(()),
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
            .env("SERVER_MARK", &mark)
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

const ADMIN: &str = "console-admin-token-0123456789abcdef";
const ALICE: &str = "console-alice-token-0123456789abcdef";

#[tokio::test]
async fn its_data_is_for_operators_and_its_calls_are_the_callers_own() {
    let tag = format!("console-api-{}", std::process::id());
    let mut sb = Switchboard::unstarted();
    let token_file = sb.dir.path().join("admin-token");
    std::fs::write(&token_file, ADMIN).expect("token file");
    sb.write_file("d.yaml", &demo_server_yaml("d", &tag, &[]));
    sb.write_file(
        "access.yaml",
        &format!(
            "apiVersion: switchboard.dev/v1alpha1\nkind: McpClient\nmetadata: {{name: alice}}\nspec: {{groups: [dev], token: {{sha256: {}}}}}\n---\napiVersion: switchboard.dev/v1alpha1\nkind: McpAccessPolicy\nmetadata: {{name: no-env}}\nspec: {{subjects: {{clients: [alice]}}, deny: {{tools: [d.env]}}}}\n",
            e2e::token_sha256(ALICE)
        ),
    );
    // Clients are told an address the control plane cannot reach (as on a
    // host beside containers): the Tools page falls back to the replica.
    let for_clients = format!("http://{}/mcp", free_addr());
    sb.control_args = vec![
        "--admin-token-file".into(),
        token_file.display().to_string(),
        "--gateway-url".into(),
        for_clients.clone(),
    ];
    sb.start_control_plane().await;
    sb.start_gateway().await;
    sb.wait_gateway_ready().await;
    sb.wait_server_state("d", "ready").await;
    let http = reqwest::Client::new();
    let at = |path: &str| format!("http://{}{path}", sb.control_http);

    // The page and its files are open, under a policy that runs only them.
    let page = http.get(at("/")).send().await.expect("GET /");
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    let etag = page.headers()["etag"].clone();
    let again = http
        .get(at("/"))
        .header("if-none-match", etag)
        .send()
        .await
        .expect("GET / again");
    assert_eq!(again.status(), 304, "unchanged files are not sent again");
    let script = http.get(at("/console/model.js")).send().await.expect("GET");
    assert_eq!(script.status(), 200);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/javascript"))
    );
    assert_eq!(
        http.get(at("/console/secrets"))
            .send()
            .await
            .expect("GET")
            .status(),
        404
    );

    // Its data is not: the admin token or a console session.
    for path in ["/console/live", "/console/tools", "/console/connect"] {
        let refused = http.get(at(path)).send().await.expect("GET");
        assert_eq!(refused.status(), 401, "{path}");
    }
    let wrong = http
        .post(at("/console/login"))
        .json(&json!({ "code": "0".repeat(64) }))
        .send()
        .await
        .expect("POST /console/login");
    assert_eq!(wrong.status(), 401);
    let body: Value = wrong.json().await.expect("JSON");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("admin token")),
        "{body}"
    );

    // The stream starts with everything, then sends what changes.
    let live = http
        .get(at("/console/live"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("GET /console/live");
    assert_eq!(live.status(), 200);
    assert_eq!(live.headers()["content-type"], "text/event-stream");
    let mut events = Events::new(live);
    let reset = events.next().await;
    assert_eq!(reset["items"]["server/d"]["transport"], "stdio", "{reset}");
    assert_eq!(reset["items"]["meta"]["mode"], "directory", "{reset}");
    assert_eq!(reset["items"]["meta"]["writable"], true, "{reset}");
    sb.write_file("e.yaml", &demo_server_yaml("e", &format!("{tag}-e"), &[]));
    let added = tokio::time::timeout(EVENTUALLY, async {
        loop {
            let patch = events.next().await;
            if let Some(server) = patch["set"].get("server/e") {
                break server.clone();
            }
        }
    })
    .await
    .expect("a patch adding server e");
    assert_eq!(added["name"], "e");

    // Tools go through the gateway as the caller whose token comes along.
    let tools = |caller: Option<&str>| {
        let mut request = http.get(at("/console/tools")).bearer_auth(ADMIN);
        if let Some(token) = caller {
            request = request.header("x-switchboard-caller-token", token);
        }
        async move {
            let response = request.send().await.expect("GET /console/tools");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or_default())
        }
    };
    let anonymous = http
        .get(at("/console/tools"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("GET /console/tools");
    assert_eq!(anonymous.status(), 401, "the gateway wants a caller here");
    assert!(
        anonymous
            .headers()
            .contains_key("x-switchboard-relayed-from"),
        "the page tells the gateway's 401 from its own session's"
    );
    let (status, listed) = tools(Some(ALICE)).await;
    assert_eq!(status, 200, "{listed}");
    let names: Vec<&str> = listed["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        names.contains(&"d.echo") && !names.contains(&"d.env"),
        "{names:?}"
    );
    let call = |body: Value| {
        let request = http
            .post(at("/console/tools/call"))
            .bearer_auth(ADMIN)
            .header("x-switchboard-caller-token", ALICE)
            .json(&body);
        async move {
            let response = request.send().await.expect("POST /console/tools/call");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or_default())
        }
    };
    let (status, denied) = call(json!({ "name": "d.env", "arguments": { "name": "PATH" } })).await;
    assert_eq!(status, 403, "the caller's policy holds: {denied}");
    let (status, echoed) = call(json!({ "name": "d.echo", "arguments": { "text": "hi" } })).await;
    assert_eq!(status, 200, "{echoed}");
    assert_eq!(echoed["content"][0]["text"], "hi", "{echoed}");
    let huge = http
        .post(at("/console/tools/call"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .expect("POST");
    assert_eq!(huge.status(), 413);
    // What a page of another site could make a browser send is refused.
    let plain = http
        .post(at("/console/tools/call"))
        .bearer_auth(ADMIN)
        .header("content-type", "text/plain")
        .body(r#"{"name":"d.echo","arguments":{"text":"csrf"}}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(plain.status(), 415);
    let elsewhere = http
        .get(at("/console/connect"))
        .bearer_auth(ADMIN)
        .header("origin", "http://evil.example")
        .send()
        .await
        .expect("GET");
    assert_eq!(elsewhere.status(), 403);

    // The admin token, pasted, starts a session; a session's stream ends
    // when the session does.
    let session: Value = http
        .post(at("/console/login"))
        .json(&json!({ "token": ADMIN }))
        .send()
        .await
        .expect("POST /console/login")
        .json()
        .await
        .expect("JSON");
    let session = session["token"]
        .as_str()
        .expect("a session token")
        .to_owned();
    assert_ne!(session, ADMIN);
    let live = http
        .get(at("/console/live"))
        .bearer_auth(&session)
        .send()
        .await
        .expect("GET /console/live");
    assert_eq!(live.status(), 200);
    let logout = http
        .post(at("/console/logout"))
        .bearer_auth(&session)
        .send()
        .await
        .expect("POST /console/logout");
    assert_eq!(logout.status(), 204);
    let mut body = live.bytes_stream();
    let ended = tokio::time::timeout(EVENTUALLY, async {
        use futures::StreamExt;
        while let Some(Ok(_)) = body.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its session");
    let after = http
        .get(at("/console/connect"))
        .bearer_auth(&session)
        .send()
        .await
        .expect("GET");
    assert_eq!(after.status(), 401);

    // Client configs name the gateway and, as it wants callers, a token.
    let connect: Value = http
        .get(at("/console/connect"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("GET /console/connect")
        .json()
        .await
        .expect("JSON");
    assert_eq!(connect["auth"], true, "{connect}");
    let clients = connect["clients"].as_array().expect("clients");
    assert!(clients.len() >= 5, "{connect}");
    assert_eq!(connect["endpoint"], for_clients.as_str());
    assert!(
        clients.iter().all(|c| c["config"]
            .as_str()
            .is_some_and(|t| t.contains(&for_clients))),
        "{connect}"
    );

    // The editor reads a server's file with the writers' gate.
    let document = http
        .get(at("/servers/d"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("GET /servers/d");
    assert_eq!(document.status(), 200);
    assert!(document.text().await.expect("text").contains("McpServer"));
    assert_eq!(
        http.get(at("/servers/d"))
            .send()
            .await
            .expect("GET")
            .status(),
        401
    );

    // Streams are bounded: one too many is told so, and a place freed is
    // taken again.
    let mut open = Vec::new();
    let refused = loop {
        let live = http
            .get(at("/console/live"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("GET /console/live");
        if live.status() == 503 {
            break live;
        }
        assert_eq!(live.status(), 200);
        open.push(live);
        assert!(open.len() <= 32, "more than 32 consoles streaming at once");
    };
    let body: Value = refused.json().await.expect("JSON");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("consoles are open")),
        "{body}"
    );
    drop(open);
    eventually("a console streaming again", EVENTUALLY, || async {
        let live = http
            .get(at("/console/live"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        (live.status() == 200)
            .then_some(())
            .ok_or(live.status().to_string())
    })
    .await;

    // With no gateway left to reach, the Tools page says so.
    sb.gateway.as_mut().expect("the gateway").kill_hard().await;
    let (status, gone) = tools(Some(ALICE)).await;
    assert_eq!(status, 502, "{gone}");
    assert!(
        gone["error"]
            .as_str()
            .is_some_and(|e| e.contains("no gateway could be reached")
                && e.contains(for_clients.trim_end_matches("/mcp"))),
        "{gone}"
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
