//! Stateless replicas behind a real load balancer: nginx (Debian's,
//! installed by `.ci/test`) round-robins without stickiness over three
//! gateway replicas of one control plane. Each session's id is sealed with
//! the key set the control plane hands its replicas, so whichever replica
//! a request lands on serves it. One rmcp session and one Python SDK
//! session make 1,000 calls each; a replica killed mid-load fails only its
//! call in flight; a rolling restart fails none; forged, tampered and
//! foreign ids get 404; a key rotation keeps old sessions working. What a
//! session keeps on one replica (subscriptions, a log level, its end) and
//! a 2026-07-28 call parked on another reach whichever replica a request
//! lands on.

// Sampling is deprecated by SEP-2577; servers still ask for it.
#![allow(deprecated)]

use std::{net::SocketAddr, path::Path, time::Duration};

use e2e::{
    EVENTUALLY, Process, Switchboard, demo_server_yaml, eventually, everything_server_yaml,
    free_addr,
};
use rmcp::{
    ClientHandler, ServiceExt,
    model::{
        CallToolRequestParams, ClientCapabilities, ClientConfig, CreateMessageRequestParams,
        CreateMessageResult, Implementation, SamplingMessage,
    },
    service::{RequestContext, RoleClient},
    transport::StreamableHttpClientTransport,
};
use serde_json::{Value, json};

const CALLS: usize = 1000;
const NGINX: &str = "/usr/sbin/nginx";

/// nginx in front of the replicas listening on `up`, from a directory of
/// its own; reconfigured (and reloaded) with [`Balancer::route`].
struct Balancer {
    dir: tempfile::TempDir,
    listen: SocketAddr,
    _process: Process,
}

impl Balancer {
    async fn start(up: &[SocketAddr]) -> Self {
        let nginx = e2e::require_tool("nginx", NGINX.into(), "`apt-get install nginx-light`");
        let dir = tempfile::tempdir().expect("temp dir");
        let listen = free_addr();
        write_config(dir.path(), listen, up);
        let mut command = tokio::process::Command::new(nginx);
        command
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"));
        let process = Process::spawn("nginx", command, dir.path().join("nginx.log"));
        e2e::wait_listening("nginx", listen).await;
        Self {
            dir,
            listen,
            _process: process,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.listen)
    }

    /// Balances over `up` from now on, as a cluster's Service does once a
    /// stopping pod is not ready: new requests go elsewhere, those under
    /// way finish.
    async fn route(&self, up: &[SocketAddr]) {
        write_config(self.dir.path(), self.listen, up);
        let reloaded = tokio::process::Command::new(NGINX)
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(self.dir.path().join("nginx.conf"))
            .args(["-s", "reload"])
            .status()
            .await
            .expect("nginx -s reload");
        assert!(reloaded.success());
        // The old workers finish what they have; new ones take the rest.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Round robin, no stickiness; a replica that refuses the connection is
/// skipped (nothing was sent to it), one that fails mid-request is not
/// retried elsewhere: its call fails.
fn write_config(dir: &Path, listen: SocketAddr, up: &[SocketAddr]) {
    let servers: String = up
        .iter()
        .map(|addr| format!("        server {addr} max_fails=0;\n"))
        .collect();
    let temp = dir.display();
    let config = format!(
        "daemon off;\nworker_processes 1;\npid {temp}/nginx.pid;\nerror_log {temp}/error.log warn;\n\
         events {{ worker_connections 512; }}\n\
         http {{\n    access_log off;\n    client_body_temp_path {temp}/body;\n    proxy_temp_path {temp}/proxy;\n\
             fastcgi_temp_path {temp}/fastcgi;\n    uwsgi_temp_path {temp}/uwsgi;\n    scgi_temp_path {temp}/scgi;\n\
             upstream gateways {{\n{servers}    }}\n\
             server {{\n        listen {listen};\n        location / {{\n            proxy_pass http://gateways;\n\
                     proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n\
                     proxy_set_header Host $http_host;\n            proxy_buffering off;\n\
                     proxy_read_timeout 300s;\n            proxy_next_upstream error timeout;\n        }}\n    }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), config).expect("nginx.conf");
}

/// A client that answers sampling requests, naming itself.
#[derive(Clone)]
struct Sampler;

impl ClientHandler for Sampler {
    fn get_info(&self) -> ClientConfig {
        let mut capabilities = ClientCapabilities::default();
        capabilities.sampling = Some(Default::default());
        ClientConfig::new(capabilities, Implementation::new("sampler-e2e", "1.0.0"))
    }

    #[allow(deprecated)]
    async fn create_message(
        &self,
        _params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, rmcp::ErrorData> {
        Ok(CreateMessageResult::new(
            SamplingMessage::assistant_text("sampled behind the balancer"),
            "e2e-model".to_owned(),
        ))
    }
}

/// A replica of `sb`'s control plane on `listen`, once ready.
async fn replica(sb: &Switchboard, listen: SocketAddr, id: &str) -> Process {
    let process = sb.spawn_replica(listen, id);
    let url = format!("http://{listen}/readyz");
    eventually(&format!("replica {id} ready"), EVENTUALLY, || async {
        match reqwest::get(&url).await {
            Ok(response) if response.status() == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    process
}

/// Waits until server `name` is ready on the replica listening on `listen`.
async fn ready_on(listen: SocketAddr, name: &str) {
    eventually(&format!("{name} ready on {listen}"), EVENTUALLY, || async {
        let health: Value = reqwest::get(format!("http://{listen}/healthz"))
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        (health["servers"][name]["state"] == "ready")
            .then_some(())
            .ok_or_else(|| health.to_string())
    })
    .await;
}

/// A replica's `/metrics`.
async fn metrics_of(listen: SocketAddr) -> String {
    reqwest::get(format!("http://{listen}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics")
}

/// `switchboard_peer_requests_total` of a replica, for `kind` and `outcome`.
async fn handed(listen: SocketAddr, kind: &str, outcome: &str) -> f64 {
    e2e::metric(
        &metrics_of(listen).await,
        "switchboard_peer_requests_total",
        &[("kind", kind), ("outcome", outcome)],
    )
    .unwrap_or_default()
}

/// How many MCP requests a replica answered.
async fn answered(listen: SocketAddr) -> f64 {
    metrics_of(listen)
        .await
        .lines()
        .filter(|line| line.starts_with("switchboard_requests_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Calls `demo.echo` until `stop`, counting answers right and failed.
async fn keep_calling(
    client: &e2e::McpClient,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> (usize, Vec<String>) {
    let (mut right, mut failed) = (0, Vec::new());
    let mut i = 0;
    while !*stop.borrow() {
        i += 1;
        let text = format!("during {i}");
        match e2e::call(client, "demo.echo", json!({ "text": text })).await {
            Ok(result) if e2e::text(&result) == text => right += 1,
            Ok(result) => failed.push(format!("{i}: {}", e2e::text(&result))),
            Err(error) => failed.push(format!("{i}: {error}")),
        }
    }
    (right, failed)
}

#[tokio::test]
async fn any_replica_serves_any_session_behind_a_round_robin_balancer() {
    let tag = format!("replicas-{}", std::process::id());
    let keys = tempfile::NamedTempFile::new().expect("key file");
    let (old_key, new_key) = ("1".repeat(64), "2".repeat(64));
    std::fs::write(keys.path(), format!("{old_key}\n")).expect("write keys");
    let key_file = keys.path().display().to_string();
    let sb = Switchboard::start_with(
        &[
            ("demo.yaml", &demo_server_yaml("demo", &tag, &[])),
            ("e.yaml", &everything_server_yaml("e", json!({}))),
        ],
        &["--session-keys-file", &key_file],
        &[],
    )
    .await;
    sb.wait_server_state("demo", "ready").await;
    let listens = [free_addr(), free_addr(), free_addr()];
    let mut replicas = Vec::new();
    for (k, listen) in listens.iter().enumerate() {
        replicas.push(replica(&sb, *listen, &format!("r{k}")).await);
    }
    let balancer = Balancer::start(&listens).await;
    let url = balancer.url();

    // One rmcp session: every call right, wherever it lands.
    let client = e2e::connect(&url).await.expect("a session through nginx");
    for i in 0..CALLS {
        let text = format!("rmcp call {i}");
        let result = e2e::call(&client, "demo.echo", json!({ "text": text }))
            .await
            .unwrap_or_else(|e| panic!("call {i}: {e}\n{}", sb.logs()));
        assert_eq!(e2e::text(&result), text, "call {i}");
    }
    for listen in listens {
        assert!(answered(listen).await >= 100.0, "{listen} served its share");
    }

    // A server's question goes out on the call's stream from the replica
    // running it; the client's answer lands anywhere and is handed on.
    let sampler = Sampler
        .serve(StreamableHttpClientTransport::from_uri(url.clone()))
        .await
        .expect("a sampling client through nginx");
    for listen in listens {
        ready_on(listen, "e").await;
    }
    for i in 0..12 {
        let arguments = json!({ "prompt": format!("round {i}") });
        let sampled = sampler
            .call_tool(
                CallToolRequestParams::new("e.trigger-sampling-request")
                    .with_arguments(arguments.as_object().cloned().unwrap_or_default()),
            )
            .await
            .unwrap_or_else(|e| panic!("sampling round {i}: {e}\n{}", sb.logs()));
        let said = serde_json::to_string(&sampled.content).unwrap_or_default();
        assert!(
            said.contains("sampled behind the balancer"),
            "round {i}: {said}"
        );
    }
    sampler.cancel().await.expect("close");
    let handed_on = replicas
        .iter()
        .map(|replica| replica.log().matches("handed a client").count())
        .sum::<usize>();
    assert!(
        handed_on > 0,
        "some answers landed on a replica that did not ask"
    );

    // One Python SDK session, with progress.
    let script = e2e::repo_root().join("tests/python/many_calls.py");
    let output = tokio::process::Command::new(e2e::python())
        .arg(&script)
        .args([&url, &CALLS.to_string()])
        .output()
        .await
        .expect("python");
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "python printed no JSON: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(seen["right"], CALLS, "{seen}");
    assert_eq!(seen["errors"], json!([]), "{seen}");
    assert_eq!(seen["protocol"], "2025-11-25", "{seen}");
    assert_eq!(seen["progress"], json!([1.0, 2.0, 3.0]), "{seen}");

    // What nobody sealed, or sealed with another key, opens nothing.
    let http = reqwest::Client::new();
    let ping = json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" });
    let post = |session: String| {
        http.post(&url)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", session)
            .json(&ping)
            .send()
    };
    let live = {
        let response = e2e::initialize_post(&http, &url, json!(1))
            .send()
            .await
            .expect("initialize");
        response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .expect("a session id")
            .to_owned()
    };
    assert_eq!(post(live.clone()).await.expect("ping").status(), 200);
    let mut tampered = live.clone().into_bytes();
    let at = tampered.len() - 5;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let foreign = "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for forged in [
        tampered.as_str(),
        foreign,
        "4f8c2b1e-9d3a-4c6b-8e2f-1a2b3c4d5e6f",
    ] {
        for _ in 0..3 {
            let status = post(forged.to_owned()).await.expect("post").status();
            assert_eq!(status, 404, "{forged}");
        }
    }

    // A rotation: sessions sealed with the old key keep working while it
    // stays in the set, and new ones are sealed with the new key.
    std::fs::write(keys.path(), format!("{new_key}\n{old_key}\n")).expect("rotate");
    eventually("the rotated set on every replica", EVENTUALLY, || async {
        let status = sb.control_status().await;
        let version = status["snapshotVersion"].as_u64().unwrap_or_default();
        let replicas = status["replicas"].as_object().cloned().unwrap_or_default();
        let applied = ["r0", "r1", "r2"].iter().all(|r| {
            replicas
                .get(*r)
                .and_then(|r| r["ackedVersion"].as_u64())
                .is_some_and(|acked| acked >= version)
        });
        (applied && version > 0)
            .then_some(())
            .ok_or_else(|| format!("{status}"))
    })
    .await;
    for i in 0..30 {
        let text = format!("after rotation {i}");
        let result = e2e::call(&client, "demo.echo", json!({ "text": text }))
            .await
            .expect("an old session after the rotation");
        assert_eq!(e2e::text(&result), text);
    }
    let rotated = e2e::connect(&url).await.expect("a session of the new key");
    e2e::call(&rotated, "demo.echo", json!({ "text": "new" }))
        .await
        .expect("a call");

    // A replica killed mid-load: at most the one call in flight on it fails.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = {
        let stop = stop_rx.clone();
        async move { keep_calling(&client, &stop).await }
    };
    let kill = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        replicas[2].kill_hard().await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop_tx.send_replace(true);
    };
    let ((right, failed), ()) = tokio::join!(load, kill);
    assert!(right > 50, "{right} calls went through");
    assert!(
        failed.len() <= 1,
        "only the call in flight may fail: {failed:?}"
    );

    // A rolling restart, each replica taken out of the balancer first (as
    // a Service takes a pod that is not ready): no call fails.
    let mut up: Vec<SocketAddr> = listens[..2].to_vec();
    replicas[2] = replica(&sb, listens[2], "r2").await;
    up.push(listens[2]);
    balancer.route(&up).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = {
        let stop = stop_rx.clone();
        async move { keep_calling(&rotated, &stop).await }
    };
    let restart = async {
        for k in 0..listens.len() {
            let others: Vec<SocketAddr> = listens
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != k)
                .map(|(_, addr)| *addr)
                .collect();
            balancer.route(&others).await;
            replicas[k].terminate().await.expect("drains and stops");
            replicas[k] = replica(&sb, listens[k], &format!("r{k}")).await;
            balancer.route(&listens).await;
        }
        stop_tx.send_replace(true);
    };
    let ((right, failed), ()) = tokio::join!(load, restart);
    assert!(right > 50, "{right} calls went through");
    assert_eq!(
        failed,
        Vec::<String>::new(),
        "a rolling restart fails no call"
    );

    // Every replica saw sessions it did not open, and says so.
    let status = sb.control_status().await;
    for r in ["r0", "r1", "r2"] {
        let replica = &status["replicas"][r];
        assert_eq!(replica["connected"], true, "{status}");
        assert_eq!(replica["draining"], false, "{status}");
    }
    let mut adopted = 0.0;
    for listen in listens {
        let text = metrics_of(listen).await;
        adopted += e2e::metric(&text, "switchboard_sessions_adopted_total", &[]).unwrap_or(0.0);
    }
    assert!(adopted >= 2.0, "restarted replicas adopted the sessions");
}

/// Two replicas addressed directly: a session's subscription and log level
/// set on one reach its GET stream on the other, its end on one ends it on
/// both, and a 2026-07-28 call parked on one is resumed through the other.
#[tokio::test]
async fn what_a_session_keeps_on_one_replica_reaches_the_others() {
    let sb = Switchboard::start(&[("e.yaml", &everything_server_yaml("e", json!({})))]).await;
    let listens = [free_addr(), free_addr()];
    let mut replicas = Vec::new();
    for (k, listen) in listens.iter().enumerate() {
        replicas.push(replica(&sb, *listen, &format!("r{k}")).await);
        ready_on(*listen, "e").await;
    }
    let urls = listens.map(|listen| format!("http://{listen}/mcp"));
    eventually("each replica knows the other", EVENTUALLY, || async {
        let status = sb.control_status().await;
        let both = ["r0", "r1"]
            .iter()
            .all(|r| status["replicas"][r]["connected"] == true);
        both.then_some(()).ok_or_else(|| status.to_string())
    })
    .await;

    // Set on r0, while the session's own stream is on r1.
    let on0 = e2e::RawSession::open(&urls[0]).await;
    let on1 = on0.at(&urls[1]);
    let mut stream = on1.own_stream().await;
    let (_, listed) = on0
        .post(json!({ "jsonrpc": "2.0", "id": "list", "method": "resources/list" }))
        .await;
    let uri = listed["result"]["resources"][0]["uri"]
        .as_str()
        .expect("a resource")
        .to_owned();
    let (status, level) = on0
        .post(
            json!({ "jsonrpc": "2.0", "id": "level", "method": "logging/setLevel",
            "params": { "level": "debug" } }),
        )
        .await;
    assert_eq!((status, &level["result"]), (200, &json!({})), "{level}");
    let (status, subscribed) = on0
        .post(
            json!({ "jsonrpc": "2.0", "id": "sub", "method": "resources/subscribe",
            "params": { "uri": uri } }),
        )
        .await;
    assert_eq!(status, 200, "{subscribed}");
    eventually("r1 took both changes", EVENTUALLY, || async {
        let ok = handed(listens[0], "session", "ok").await;
        (ok >= 2.0).then_some(()).ok_or_else(|| format!("{ok}"))
    })
    .await;
    // r1's own server sends the updates and log messages; r1 holds the stream.
    on1.call("e.toggle-subscriber-updates", json!({})).await;
    let updated = stream.next_of("notifications/resources/updated").await;
    assert_eq!(updated["params"]["uri"], uri, "{updated}");
    on1.call("e.toggle-simulated-logging", json!({})).await;
    let logged = stream.next_of("notifications/message").await;
    assert!(
        logged["params"]["logger"]
            .as_str()
            .is_some_and(|l| l.starts_with('e')),
        "{logged}"
    );
    on1.call("e.toggle-simulated-logging", json!({})).await;
    on1.call("e.toggle-subscriber-updates", json!({})).await;

    // Ended on r0: ended on r1 too.
    assert_eq!(on0.delete().await, 200);
    eventually("the session ended on r1", EVENTUALLY, || async {
        let (status, _) = on1
            .post(json!({ "jsonrpc": "2.0", "id": "ping", "method": "ping" }))
            .await;
        (status == 404)
            .then_some(())
            .ok_or_else(|| format!("{status}"))
    })
    .await;

    // A 2026-07-28 call parked on r0 (its server asks a question), resumed
    // by a retry that lands on r1.
    let asking = || {
        json!({ "name": "e.trigger-sampling-request", "arguments": { "prompt": "where?" },
            "_meta": { "io.modelcontextprotocol/clientCapabilities": { "sampling": {} } } })
    };
    let (_, first) = e2e::post_2026(&urls[0], "tools/call", asking(), &[], &[]).await;
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    let state = result["requestState"].as_str().expect("a state").to_owned();
    assert!(
        state.ends_with("@r0"),
        "the state names its replica: {state}"
    );
    let key = result["inputRequests"]
        .as_object()
        .and_then(|r| r.keys().next().cloned())
        .expect("one question");
    let answered = |state: &str| {
        let mut retry = asking();
        retry["requestState"] = json!(state);
        retry["inputResponses"] = json!({ key.clone(): { "role": "assistant",
            "content": { "type": "text", "text": "answered on another replica" }, "model": "e2e" } });
        retry
    };
    let (status, done) = e2e::post_2026(&urls[1], "tools/call", answered(&state), &[], &[]).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["result"]["resultType"], "complete", "{done}");
    assert!(
        done.to_string().contains("answered on another replica"),
        "{done}"
    );
    assert_eq!(handed(listens[1], "retry", "ok").await, 1.0);

    // A state naming a replica that is gone: a clear error, at once.
    let (_, second) = e2e::post_2026(&urls[0], "tools/call", asking(), &[], &[]).await;
    let state = second["result"]["requestState"]
        .as_str()
        .expect("a state")
        .to_owned();
    replicas[0].kill_hard().await;
    let (_, lost) = e2e::post_2026(&urls[1], "tools/call", answered(&state), &[], &[]).await;
    assert_eq!(lost["error"]["code"], -32602, "{lost}");
    assert!(
        lost.to_string()
            .contains("send the request again without requestState"),
        "{lost}"
    );
}
