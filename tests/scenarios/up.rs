//! `switchboard-control up`, the README's one command: its log is plain
//! values a person can read, and however it is stopped (SIGTERM, SIGINT,
//! SIGKILL) no server process, nor anything a server started, outlives it,
//! whatever state the server is in.

use std::{net::SocketAddr, path::Path, time::Duration};

use e2e::{
    EVENTUALLY, Process, bin_dir, call, connect, demo_server_yaml, eventually, free_addr,
    processes_matching, server_with, stubborn_server_yaml, wait_listening,
};
use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::json;
use tokio::process::Command;

/// `up` on fresh ports, serving the registry in `dir`.
struct Up {
    process: Process,
    gateway: SocketAddr,
    /// The control plane's HTTP API.
    api: SocketAddr,
}

impl Up {
    /// Starts `up`; `rust_log`, when given, is its `RUST_LOG`.
    async fn start(dir: &Path, log: &Path, rust_log: Option<&str>) -> Self {
        let (gateway, api) = (free_addr(), free_addr());
        let mut command = Command::new(bin_dir().join("switchboard-control"));
        if let Some(level) = rust_log {
            command.env("RUST_LOG", level);
        }
        // The admin token goes under the state directory: this test's own.
        let state = log.parent().expect("the log's directory");
        command.env("XDG_STATE_HOME", state);
        command
            .arg("up")
            .arg("--registry")
            .arg(dir)
            .arg("--grpc-listen")
            .arg(free_addr().to_string())
            .arg("--http-listen")
            .arg(api.to_string())
            .arg("--gateway-listen")
            .arg(gateway.to_string());
        let process = Process::spawn("switchboard-control up", command, log.to_path_buf());
        let up = Self {
            process,
            gateway,
            api,
        };
        wait_listening("the gateway `up` starts", gateway).await;
        eventually("the gateway to be ready", EVENTUALLY, || async {
            let url = format!("http://{}/readyz", up.gateway);
            match reqwest::get(&url).await {
                Ok(response) if response.status() == 200 => Ok(()),
                other => Err(format!("{other:?}\n{}", up.process.log())),
            }
        })
        .await;
        up
    }

    fn signal(&self, signal: Signal) {
        let pid = self.process.pid().expect("`up` is running") as i32;
        nix::sys::signal::kill(Pid::from_raw(pid), signal).expect("signal `up`");
    }
}

/// A number no other process's command line carries: `sleep` takes it as
/// seconds, and it tells this test's processes apart from any other's.
fn tag(n: u32) -> String {
    format!("{}{n:03}", std::process::id())
}

/// A registry the issue describes: a server that never speaks MCP (`sleep`),
/// one that ignores SIGTERM and forks a grandchild (which ignores it too)
/// while starting, and a ready demo server. Every process carries `tag`.
fn stubborn_registry(dir: &Path, tag: &str) {
    let files = [
        (
            "hang.yaml",
            server_with("hang", "sleep", &[&format!("7779.{tag}")], json!({})),
        ),
        ("stubborn.yaml", stubborn_server_yaml("stubborn", tag)),
        (
            "ready.yaml",
            demo_server_yaml("ready", &format!("ready-{tag}"), &[]),
        ),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write registry file");
    }
}

#[tokio::test]
async fn up_leaves_no_server_process_however_it_is_stopped() {
    for (n, signal) in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGKILL]
        .into_iter()
        .enumerate()
    {
        let tag = tag(n as u32);
        let dir = tempfile::tempdir().expect("temp dir");
        let registry = dir.path().join("registry");
        std::fs::create_dir(&registry).expect("registry dir");
        stubborn_registry(&registry, &tag);
        let mut up = Up::start(&registry, &dir.path().join("up.log"), None).await;
        tracing::info!(
            ?signal,
            "every server process runs, the stubborn ones still starting"
        );
        eventually("the servers' processes", EVENTUALLY, || async {
            let running = processes_matching(&tag);
            let all = [
                format!("sleep 7779.{tag}"),
                format!("sleep 7780.{tag}"),
                format!("stubborn-{tag}"),
                format!("ready-{tag}"),
            ];
            let missing: Vec<_> = all
                .iter()
                .filter(|want| !running.iter().any(|(_, cmd)| cmd.contains(want.as_str())))
                .collect();
            missing
                .is_empty()
                .then_some(())
                .ok_or(format!("missing {missing:?} in {running:?}"))
        })
        .await;

        up.signal(signal);
        let exited = tokio::time::timeout(Duration::from_secs(30), up.process.wait())
            .await
            .expect("`up` exits");
        if signal != Signal::SIGKILL {
            assert!(
                exited.success(),
                "{signal:?}: {exited}\n{}",
                up.process.log()
            );
        }
        eventually(
            &format!("no process of `up` after {signal:?}"),
            EVENTUALLY,
            || async {
                let left = processes_matching(&tag);
                left.is_empty()
                    .then_some(())
                    .ok_or(format!("{left:?}\n{}", up.process.log()))
            },
        )
        .await;
    }
}

/// Rust `Debug` renderings that must never reach a log line.
const DEBUG_RENDERINGS: &[&str] = &[
    "Some(",
    "None",
    "ProtocolVersion(",
    "Instant {",
    "QuitReason",
    "Ok(",
    "Err(",
];

#[tokio::test]
async fn the_quick_start_log_shows_plain_values() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/registry");
    let log = dir.path().join("up.log");
    // rmcp's own handshake lines print its types as they are; a user sees
    // them only when asking for them (the default filter has `rmcp=warn`).
    let level = "info,rmcp=warn,data_plane=debug,control_plane=debug";
    let mut up = Up::start(&bundled, &log, Some(level)).await;
    eventually("both demo servers ready", EVENTUALLY, || async {
        let url = format!("http://{}/healthz", up.gateway);
        let health: serde_json::Value = reqwest::get(&url)
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let ready = |s: &str| health["servers"][s]["state"] == "ready";
        (ready("demo") && ready("utils"))
            .then_some(())
            .ok_or(health.to_string())
    })
    .await;
    let client = connect(&format!("http://{}/mcp", up.gateway))
        .await
        .expect("connect");
    call(&client, "demo.echo", json!({ "text": "hello" }))
        .await
        .expect("demo.echo");
    call(&client, "utils.fail", json!({ "message": "on purpose" }))
        .await
        .expect("a failing tool still answers");
    client.cancel().await.expect("close");
    up.signal(Signal::SIGTERM);
    tokio::time::timeout(Duration::from_secs(30), up.process.wait())
        .await
        .expect("`up` exits");

    let text = up.process.log();
    assert!(text.contains("server ready"), "{text}");
    assert!(text.contains("protocol=2025-"), "{text}");
    let debug_lines: Vec<&str> = text
        .lines()
        .filter(|line| DEBUG_RENDERINGS.iter().any(|d| line.contains(d)))
        .collect();
    assert!(
        debug_lines.is_empty(),
        "log lines with Rust Debug values:\n{}",
        debug_lines.join("\n")
    );
}

/// `up` keeps the control plane's API behind an admin token it writes where
/// only its user can read it, and says where on a line of its own.
#[tokio::test]
async fn up_keeps_its_api_behind_an_admin_token_and_its_config_stream_behind_tls() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().expect("temp dir");
    let registry = dir.path().join("registry");
    std::fs::create_dir(&registry).expect("registry dir");
    let log = dir.path().join("up.log");
    let up = Up::start(&registry, &log, None).await;
    let path = eventually("up says where the token is", EVENTUALLY, || async {
        let text = up.process.log();
        text.lines()
            .find_map(|line| line.strip_prefix("admin token file: "))
            .map(|path| std::path::PathBuf::from(path.trim()))
            .ok_or(text)
    })
    .await;
    assert_eq!(path, dir.path().join("switchboard/admin-token"));
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().expect("its directory")), 0o700);
    let token = std::fs::read_to_string(&path).expect("the token");

    let http = reqwest::Client::new();
    let status = format!("http://{}/status", up.api);
    let refused = http.get(&status).send().await.expect("GET /status");
    assert_eq!(refused.status().as_u16(), 401);
    assert!(
        refused
            .headers()
            .get("www-authenticate")
            .is_some_and(|v| v.as_bytes().starts_with(b"Bearer ")),
        "{:?}",
        refused.headers()
    );
    let answered: serde_json::Value = http
        .get(&status)
        .bearer_auth(token.trim())
        .send()
        .await
        .expect("GET /status")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        answered["replicas"]["local-0"]["connected"], true,
        "{answered}"
    );
    // Its gateway reached the control plane over TLS, with a CA made for
    // this run: the gRPC port speaks nothing else.
    let log = up.process.log();
    assert!(log.contains("serving gRPC over TLS"), "{log}");
    assert!(log.contains("control_plane=https://"), "{log}");
    // Probes and metrics stay open.
    for open in ["healthz", "readyz", "metrics"] {
        let answer = http
            .get(format!("http://{}/{open}", up.api))
            .send()
            .await
            .expect(open);
        assert_eq!(answer.status().as_u16(), 200, "{open}");
    }
}

/// An installed binary run outside the repository has a registry too: the
/// first `up` creates one with the demo servers in the user's config
/// directory and says where; later runs use it as the user left it.
#[tokio::test]
async fn up_outside_the_repository_makes_a_registry_home_the_first_time() {
    let home = tempfile::tempdir().expect("tempdir");
    let registry = home.path().join("config/switchboard/registry");
    let start = |run: &str| {
        let gateway = free_addr();
        let mut command = Command::new(bin_dir().join("switchboard-control"));
        command
            .current_dir(home.path())
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("XDG_STATE_HOME", home.path().join("state"))
            .env_remove("SWITCHBOARD_REGISTRY")
            .arg("up")
            .arg("--grpc-listen")
            .arg(free_addr().to_string())
            .arg("--http-listen")
            .arg(free_addr().to_string())
            .arg("--gateway-listen")
            .arg(gateway.to_string());
        let log = home.path().join(format!("up-{run}.log"));
        (
            Process::spawn("switchboard-control up", command, log),
            gateway,
        )
    };

    let (mut first, gateway) = start("first");
    wait_listening("the gateway `up` starts", gateway).await;
    let client = connect(&format!("http://{gateway}/mcp"))
        .await
        .expect("connect");
    let answer = eventually("the demo server", EVENTUALLY, || async {
        call(&client, "demo.echo", json!({ "text": "from home" }))
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(
        answer.structured_content,
        Some(json!({ "text": "from home" }))
    );
    let log = first.log();
    let shown = registry.display().to_string();
    assert!(
        log.contains(&format!(
            "created a registry directory with the demo servers: {shown}"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("registry directory: {shown}")),
        "{log}"
    );
    assert!(registry.join("utils.yaml").is_file());
    client.cancel().await.expect("close");
    first.terminate().await.expect("stop");

    // The user's own registry now: nothing is put back.
    std::fs::remove_file(registry.join("utils.yaml")).expect("remove");
    let (mut second, gateway) = start("second");
    wait_listening("the gateway `up` starts again", gateway).await;
    let log = second.log();
    assert!(!log.contains("created a registry directory"), "{log}");
    assert!(!registry.join("utils.yaml").exists());
    second.terminate().await.expect("stop");
}
