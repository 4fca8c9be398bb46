//! Who may talk to whom: replicas prove themselves to the control plane
//! with its token before they get a snapshot (which holds resolved
//! secrets), report health or NACKs, or export spans. Callers with JWTs:
//! [`jwt`].

#[path = "security/jwt.rs"]
mod jwt;

use std::process::Stdio;

use e2e::{
    EVENTUALLY, Switchboard, bin_dir, call, connect, demo_server_yaml, eventually, free_addr,
    metric, scripted_replica::RefusingReplica,
};
use proto::otlp::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient};
use serde_json::json;

const TOKEN: &str = "e2e-replica-token-0123456789";

/// A control plane with a replica token, a gateway that has it, one that
/// has another, and processes that have none: only the first gets config.
#[tokio::test]
async fn only_replicas_with_the_token_get_config_or_report() {
    let tokens = tempfile::tempdir().expect("token dir");
    let (right, wrong) = (tokens.path().join("right"), tokens.path().join("wrong"));
    std::fs::write(&right, format!("{TOKEN}\n")).expect("token file");
    std::fs::write(&wrong, "another-token-0123456789").expect("token file");
    let (right, wrong) = (right.display().to_string(), wrong.display().to_string());
    let marker = format!("auth-{}", std::process::id());
    let mut sb = Switchboard::unstarted();
    sb.write_file("d.yaml", &demo_server_yaml("d", &marker, &[]));
    sb.control_args = vec!["--replica-token-file".into(), right];
    // As `up` hands it over: in the environment. A file flag wins over it.
    sb.gateway_env = vec![("SWITCHBOARD_CONTROL_PLANE_TOKEN".into(), TOKEN.into())];
    sb.start_control_plane().await;
    sb.start_gateway().await;
    sb.wait_gateway_ready().await;
    sb.wait_server_state("d", "ready").await;
    let client = connect(&sb.mcp_url()).await.expect("connect");
    call(&client, "d.echo", json!({ "text": "with the token" }))
        .await
        .expect("the gateway with the token serves");

    // A gateway with the wrong token never gets a snapshot.
    let intruder_addr = free_addr();
    let mut intruder = sb.spawn_replica_with(
        intruder_addr,
        "intruder",
        &["--control-plane-token-file", &wrong],
    );
    let http = reqwest::Client::new();
    let health = format!("http://{intruder_addr}/healthz");
    eventually("the intruder runs", EVENTUALLY, || async {
        let answer = http.get(&health).send().await.map_err(|e| e.to_string())?;
        let body: serde_json::Value = answer.json().await.map_err(|e| e.to_string())?;
        (body["configVersion"] == 0 && body["controlPlaneConnected"] == false)
            .then_some(())
            .ok_or(body.to_string())
    })
    .await;
    eventually("the intruder is told why", EVENTUALLY, || async {
        let log = intruder.log();
        log.contains("replica token").then_some(()).ok_or(log)
    })
    .await;

    // Nor does a process with no token at all; its NACKs never reach status.
    let refused = RefusingReplica::try_connect(sb.grpc, "rogue", "refused", None)
        .await
        .err()
        .expect("no stream without the token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    RefusingReplica::try_connect(sb.grpc, "rogue", "refused", Some("wrong-token-0123456789"))
        .await
        .err()
        .expect("no stream with a wrong token");
    let _allowed = RefusingReplica::try_connect(sb.grpc, "scripted", "refused", Some(TOKEN))
        .await
        .expect("a stream with the token");

    // Spans without the token are refused too.
    let mut exporter = TraceServiceClient::connect(format!("http://{}", sb.grpc))
        .await
        .expect("connect");
    let refused = exporter
        .export(ExportTraceServiceRequest::default())
        .await
        .expect_err("no export without the token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let status = sb.control_status().await;
    let replicas = status["replicas"].as_object().expect("replicas");
    assert!(replicas.contains_key("e2e-0"), "{status}");
    assert!(!replicas.contains_key("intruder"), "{status}");
    assert!(!replicas.contains_key("rogue"), "{status}");
    let metrics = sb
        .get_text(&format!("http://{}/metrics", sb.control_http))
        .await
        .expect("control-plane metrics")
        .1;
    let failures = metric(
        &metrics,
        "switchboard_control_replica_auth_failures_total",
        &[],
    );
    assert!(failures >= Some(4.0), "{failures:?}\n{metrics}");
    intruder.kill_hard().await;
}

/// Beyond loopback the control plane will not serve config or its API
/// without tokens unless told the network keeps others out.
#[tokio::test]
async fn no_token_beyond_loopback_refuses_to_start() {
    let dir = tempfile::tempdir().expect("registry");
    let serve = |extra: &[&str]| {
        let mut command = std::process::Command::new(bin_dir().join("switchboard-control"));
        command
            .args(["serve", "--registry"])
            .arg(dir.path())
            .args(extra)
            .env_remove("SWITCHBOARD_REPLICA_TOKEN")
            .env_remove("SWITCHBOARD_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    };
    let grpc_beyond = ["--grpc-listen", "0.0.0.0:0", "--http-listen", "127.0.0.1:0"];
    let http_beyond = ["--grpc-listen", "127.0.0.1:0", "--http-listen", "0.0.0.0:0"];
    for (listen, refusal, flag) in [
        (
            grpc_beyond,
            "without a replica token",
            "--replica-token-file",
        ),
        (http_beyond, "without an admin token", "--admin-token-file"),
    ] {
        let output = serve(&listen).output().expect("run switchboard-control");
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(refusal) && stderr.contains(flag),
            "{stderr}"
        );
    }
    // Told so, it starts (and is stopped here).
    let mut child = serve(&[
        "--grpc-listen",
        "0.0.0.0:0",
        "--http-listen",
        "0.0.0.0:0",
        "--allow-unauthenticated-replicas",
        "--allow-unauthenticated-api",
    ])
    .spawn()
    .expect("run switchboard-control");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        child.try_wait().expect("status").is_none(),
        "it keeps running"
    );
    child.kill().expect("stop it");
    let _ = child.wait();
}

/// A server URL with a password and a token in its query: the errors the
/// gateway reports about it (health, status, logs) name the server and
/// the host, never the credentials.
#[tokio::test]
async fn reported_errors_carry_no_url_credentials() {
    let port = free_addr().port();
    let url = format!("http://alice:pw-planted-1@127.0.0.1:{port}/mcp?token=query-planted-2");
    let server = json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "McpServer",
        "metadata": { "name": "remote" },
        "spec": { "transport": { "http": { "url": url } } },
    });
    let sb = Switchboard::start(&[("remote.yaml", &server.to_string())]).await;
    let health = sb.wait_server_state("remote", "failed").await;
    for field in ["reason", "lastError"] {
        let text = health[field].as_str().unwrap_or("");
        let redacted = format!("http://***@127.0.0.1:{port}/mcp?redacted");
        assert!(text.contains(&redacted), "{health}");
    }
    let status = eventually(
        "the failure reaches the control plane",
        EVENTUALLY,
        || async {
            let status = sb.control_status().await;
            let reported = &status["replicas"]["e2e-0"]["servers"];
            reported
                .to_string()
                .contains("failed")
                .then(|| status.clone())
                .ok_or(status.to_string())
        },
    )
    .await;
    let everywhere = [
        health.to_string(),
        status["replicas"].to_string(),
        sb.logs(),
    ]
    .join("\n");
    for planted in ["pw-planted-1", "query-planted-2"] {
        assert!(
            !everywhere.contains(planted),
            "{planted} leaked:\n{everywhere}"
        );
    }
}

/// An export over the receiver's limit is refused whole, and the control
/// plane goes on serving.
#[tokio::test]
async fn an_oversized_span_export_is_refused() {
    use proto::otlp::{ResourceSpans, ScopeSpans};

    let sb = Switchboard::start(&[]).await;
    let mut exporter = TraceServiceClient::connect(format!("http://{}", sb.grpc))
        .await
        .expect("connect");
    let huge = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![vec![0u8; 5 * 1024 * 1024]],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let refused = exporter
        .export(huge)
        .await
        .expect_err("5 MiB is over the limit");
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused}");
    let status = sb.control_status().await;
    assert!(status["replicas"]["e2e-0"]["connected"] == true, "{status}");
}

/// With an admin token, `/status` and `/traces` answer only to it; probes
/// and metrics stay open for kubelets and Prometheus.
#[tokio::test]
async fn the_status_and_traces_api_needs_the_admin_token() {
    let tokens = tempfile::tempdir().expect("token dir");
    let file = tokens.path().join("admin");
    std::fs::write(&file, "admin-token-0123456789abcdef\n").expect("token file");
    let file = file.display().to_string();
    let sb = Switchboard::start_with(&[], &["--admin-token-file", &file], &[]).await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{}/{path}", sb.control_http);
    for path in ["status", "traces", &format!("traces/{}", "ab".repeat(16))] {
        for token in [None, Some("admin-token-0123456789abcdeX")] {
            let mut request = http.get(url(path));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let answer = request.send().await.expect(path);
            assert_eq!(answer.status().as_u16(), 401, "{path} with {token:?}");
            assert!(answer.headers().contains_key("www-authenticate"), "{path}");
        }
    }
    let status: serde_json::Value = http
        .get(url("status"))
        .bearer_auth("admin-token-0123456789abcdef")
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("JSON");
    assert_eq!(status["replicas"]["e2e-0"]["connected"], true, "{status}");
    for open in ["healthz", "readyz", "metrics"] {
        let answer = http.get(url(open)).send().await.expect(open);
        assert_eq!(answer.status().as_u16(), 200, "{open}");
    }
    let metrics = http
        .get(url("metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert_eq!(
        metric(
            &metrics,
            "switchboard_control_admin_auth_failures_total",
            &[]
        ),
        Some(6.0),
        "{metrics}"
    );
}

/// A flood of sessions meets a cap: past `--max-sessions` a new session
/// (streamable HTTP or legacy SSE) gets 503 with a JSON-RPC error, the
/// sessions held go on working, and ending one makes room.
#[tokio::test]
async fn sessions_beyond_the_cap_are_refused_and_the_rest_go_on() {
    let marker = format!("cap-{}", std::process::id());
    let sb = Switchboard::start_with(
        &[("d.yaml", &demo_server_yaml("d", &marker, &[]))],
        &[],
        &["--max-sessions", "2"],
    )
    .await;
    sb.wait_server_state("d", "ready").await;
    let first = connect(&sb.mcp_url()).await.expect("first session");
    let second = connect(&sb.mcp_url()).await.expect("second session");

    let http = reqwest::Client::new();
    let open_third = || async {
        let answer = e2e::initialize_post(&http, &sb.mcp_url(), json!("init-3"))
            .send()
            .await
            .expect("an answer");
        let status = answer.status().as_u16();
        (status, answer.text().await.unwrap_or_default())
    };
    let (status, body) = open_third().await;
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON-RPC error");
    assert_eq!(
        (&body["id"], &body["error"]["code"]),
        (&json!("init-3"), &json!(-32000))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("limit of 2 sessions")),
        "{body}"
    );
    let sse = http
        .get(format!("http://{}/sse", sb.gateway_addr))
        .send()
        .await
        .expect("GET /sse");
    assert_eq!(sse.status().as_u16(), 503);

    for client in [&first, &second] {
        call(client, "d.echo", json!({ "text": "held" }))
            .await
            .expect("the sessions held go on");
    }
    second.cancel().await.expect("end the second session");
    eventually("room for a new session", EVENTUALLY, || async {
        let (status, body) = open_third().await;
        (status == 200)
            .then_some(())
            .ok_or(format!("{status} {body}"))
    })
    .await;
}

/// A remote server's headers (an API key, say) go to its own origin only:
/// a redirect to another host is refused, not followed with them.
#[tokio::test]
async fn headers_never_follow_a_redirect_to_another_origin() {
    let mut sb = Switchboard::unstarted();
    let target = free_addr();
    let _demo = sb.spawn_demo_http(target, "redirect-target").await;
    let redirector = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let redirector_addr = redirector.local_addr().expect("address");
    let elsewhere = format!("http://{target}/mcp");
    let app = axum::Router::new().fallback(move || {
        let elsewhere = elsewhere.clone();
        async move {
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [(axum::http::header::LOCATION, elsewhere)],
            )
        }
    });
    tokio::spawn(async move { axum::serve(redirector, app).await });
    let server = json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "McpServer",
        "metadata": { "name": "moved" },
        "spec": { "transport": { "http": {
            "url": format!("http://{redirector_addr}/mcp"),
            "headers": [{ "name": "X-Api-Key", "value": "key-planted-3" }],
        } } },
    });
    sb.write_file("moved.yaml", &server.to_string());
    sb.start_control_plane().await;
    sb.start_gateway().await;
    sb.wait_gateway_ready().await;
    let health = sb.wait_server_state("moved", "failed").await;
    let reason = health["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("refused a redirect to another origin"),
        "{health}"
    );
}

/// `McpClient` documents, one per (name, groups), each with the token
/// `<name>-token-0123456789`.
fn clients_yaml(clients: &[(&str, &[&str])]) -> String {
    clients
        .iter()
        .map(|(name, groups)| {
            let token = e2e::token_sha256(&format!("{name}-token-0123456789"));
            format!(
                "apiVersion: switchboard.dev/v1alpha1\nkind: McpClient\nmetadata: {{name: {name}}}\nspec: {{groups: {groups:?}, token: {{sha256: {token}}}}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Once the registry declares clients, the gateway lets in their tokens
/// only (401 with where to read how, otherwise), and a client's name is
/// the caller whatever it calls itself, and its sessions are its own.
/// Without clients it is open again.
#[tokio::test]
async fn declared_clients_need_their_token_and_are_the_caller() {
    let marker = format!("clients-{}", std::process::id());
    let clients = clients_yaml(&[("alice", &["dev"]), ("bob", &[])]);
    let sb = Switchboard::start(&[
        ("d.yaml", &demo_server_yaml("d", &marker, &[])),
        ("clients.yaml", &clients),
    ])
    .await;
    sb.wait_server_state("d", "ready").await;
    let http = reqwest::Client::new();
    let post = |token: Option<&'static str>| {
        let mut request = e2e::initialize_post(&http, &sb.mcp_url(), json!(1));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    let metadata_url = format!(
        "http://{}/.well-known/oauth-protected-resource",
        sb.gateway_addr
    );
    for (token, invalid) in [(None, false), (Some("not-a-known-token-01"), true)] {
        let answer = post(token).await.expect("an answer");
        assert_eq!(answer.status().as_u16(), 401);
        let challenge = answer
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert!(
            challenge.starts_with(&format!(r#"Bearer resource_metadata="{metadata_url}""#)),
            "{challenge}"
        );
        assert_eq!(
            challenge.contains(r#"error="invalid_token""#),
            invalid,
            "{challenge}"
        );
        let body: serde_json::Value = answer.json().await.expect("a JSON-RPC error");
        assert_eq!(body["error"]["code"], -32000, "{body}");
    }
    let document: serde_json::Value = http
        .get(&metadata_url)
        .send()
        .await
        .expect("the metadata document")
        .json()
        .await
        .expect("JSON");
    assert_eq!(document["resource"], sb.mcp_url());
    assert_eq!(document["bearer_methods_supported"], json!(["header"]));
    let sse = http
        .get(format!("http://{}/sse", sb.gateway_addr))
        .send()
        .await
        .expect("GET /sse");
    assert_eq!(sse.status().as_u16(), 401, "legacy SSE too");

    let alice = e2e::connect_with_headers(
        &sb.mcp_url(),
        &[
            ("authorization", "Bearer alice-token-0123456789"),
            ("x-switchboard-caller", "pretender"),
        ],
    )
    .await
    .expect("alice connects");
    call(&alice, "d.echo", json!({ "text": "as alice" }))
        .await
        .expect("alice calls");
    let api = format!("http://{}", sb.control_http);
    let traces = sb.wait_traces("caller=alice&tool=d.echo").await;
    assert!(traces.to_string().contains("alice"), "{traces}");
    let pretended = sb
        .get_json(&format!("{api}/traces?caller=pretender"))
        .await
        .expect("traces");
    assert_eq!(pretended["traces"], json!([]), "{pretended}");
    let status = sb.control_status().await;
    assert_eq!(
        status["clients"],
        json!([{ "name": "alice", "groups": ["dev"] }, { "name": "bob", "groups": [] }])
    );
    assert!(
        !status
            .to_string()
            .contains(&e2e::token_sha256("alice-token-0123456789"))
    );

    // A session belongs to the client that opened it: its id is of no use
    // with another client's token (404, as for any unknown session).
    let opened = post(Some("alice-token-0123456789"))
        .await
        .expect("alice initializes");
    assert_eq!(opened.status().as_u16(), 200);
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .expect("a session id")
        .to_owned();
    let in_session = |method: reqwest::Method, token: &'static str| {
        http.request(method, sb.mcp_url())
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &session)
            .body(r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#)
            .send()
    };
    for (method, token, want) in [
        (reqwest::Method::POST, "bob-token-0123456789", 404),
        (reqwest::Method::DELETE, "bob-token-0123456789", 404),
        (reqwest::Method::POST, "alice-token-0123456789", 200),
        (reqwest::Method::DELETE, "alice-token-0123456789", 200),
    ] {
        let status = in_session(method.clone(), token)
            .await
            .expect("an answer")
            .status();
        assert_eq!(status.as_u16(), want, "{method} with {token}");
    }

    let metrics = sb.gateway_metrics().await;
    let refused = [("reason", "other_client")];
    assert_eq!(
        metric(&metrics, "switchboard_session_refusals_total", &refused),
        Some(2.0),
        "bob's POST and DELETE"
    );
    assert_eq!(metric(&metrics, "switchboard_clients", &[]), Some(2.0));
    assert!(metric(&metrics, "switchboard_auth_failures_total", &[]) >= Some(3.0));

    // No client declared: open again.
    sb.remove_file("clients.yaml");
    eventually("the gateway opens again", EVENTUALLY, || async {
        let status = post(None).await.map_err(|e| e.to_string())?.status();
        (status == 200).then_some(()).ok_or(status.to_string())
    })
    .await;
}

/// The stdio bridge (what desktop clients start) presents a client's token
/// from `SWITCHBOARD_TOKEN`; without one the gateway refuses it.
#[tokio::test]
async fn the_stdio_bridge_presents_a_clients_token() {
    use rmcp::ServiceExt;

    let marker = format!("bridge-token-{}", std::process::id());
    let client = clients_yaml(&[("carol", &[])]);
    let sb = Switchboard::start(&[
        ("d.yaml", &demo_server_yaml("d", &marker, &[])),
        ("carol.yaml", &client),
    ])
    .await;
    sb.wait_server_state("d", "ready").await;
    let bridge = |token: Option<&str>| {
        let mut command = tokio::process::Command::new(bin_dir().join("switchboard-gateway"));
        command
            .args(["bridge", "--url", &sb.mcp_url()])
            .env_remove("SWITCHBOARD_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if let Some(token) = token {
            command.env("SWITCHBOARD_TOKEN", token);
        }
        command.spawn().expect("start the bridge")
    };
    let mut without = bridge(None);
    let io = (
        without.stdout.take().expect("stdout"),
        without.stdin.take().expect("stdin"),
    );
    let refused = e2e::TestClient::default().serve(io).await;
    assert!(refused.is_err(), "no token, no session");

    let mut with = bridge(Some("carol-token-0123456789"));
    let io = (
        with.stdout.take().expect("stdout"),
        with.stdin.take().expect("stdin"),
    );
    let session = e2e::TestClient::default()
        .serve(io)
        .await
        .expect("initialize through the bridge");
    call(&session, "d.echo", json!({ "text": "via the bridge" }))
        .await
        .expect("carol calls");
    eventually("carol is the caller", EVENTUALLY, || async {
        let logs = sb.logs();
        logs.lines()
            .any(|l| {
                l.contains("message=request")
                    && l.contains("tool=d.echo")
                    && l.contains("caller=carol")
            })
            .then_some(())
            .ok_or(logs)
    })
    .await;
}

/// A session id lets whoever holds it act in the session: logs and spans
/// carry a short hash of it, never the id.
#[tokio::test]
async fn session_ids_never_reach_logs_or_spans() {
    let marker = format!("tag-{}", std::process::id());
    let sb = Switchboard::start(&[("d.yaml", &demo_server_yaml("d", &marker, &[]))]).await;
    sb.wait_server_state("d", "ready").await;
    let session = e2e::RawSession::open(&sb.mcp_url()).await;
    let (status, _) = session.call("d.echo", json!({ "text": "tagged" })).await;
    assert_eq!(status, 200);
    let id = session.id().to_owned();
    let api = format!("http://{}", sb.control_http);
    let traces = eventually("the call's trace", EVENTUALLY, || async {
        let list = sb
            .get_json(&format!("{api}/traces?tool=d.echo"))
            .await
            .map_err(|e| e.to_string())?;
        let trace_id = list["traces"][0]["traceId"]
            .as_str()
            .ok_or(list.to_string())?
            .to_owned();
        sb.get_json(&format!("{api}/traces/{trace_id}"))
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let tagged = traces["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|span| span["attributes"]["mcp.session.id"].as_str())
        .collect::<Vec<_>>();
    assert!(!tagged.is_empty(), "{traces}");
    for tag in &tagged {
        assert_eq!(tag.len(), 16, "a short hash: {tag}");
    }
    eventually("the request's log line", EVENTUALLY, || async {
        let logs = sb.logs();
        logs.lines()
            .any(|l| l.contains("message=request") && l.contains(&format!("session={}", tagged[0])))
            .then_some(())
            .ok_or(logs)
    })
    .await;
    let everywhere = [traces.to_string(), sb.logs()].join("\n");
    let leaks: Vec<&str> = everywhere.lines().filter(|l| l.contains(&id)).collect();
    assert!(
        leaks.is_empty(),
        "the session id leaked:\n{}",
        leaks.join("\n")
    );
}

/// One client's raw streamable-HTTP session: every answer as JSON, SSE
/// streams read to their end.
struct Authed<'a> {
    http: &'a reqwest::Client,
    url: String,
    token: &'static str,
    session: String,
}

impl<'a> Authed<'a> {
    async fn open(http: &'a reqwest::Client, url: String, token: &'static str) -> Self {
        let response = e2e::initialize_post(http, &url, json!(0))
            .bearer_auth(token)
            .send()
            .await
            .expect("initialize");
        assert_eq!(response.status(), 200, "{token}");
        let session = response.headers()["mcp-session-id"]
            .to_str()
            .expect("session id")
            .to_owned();
        Self {
            http,
            url,
            token,
            session,
        }
    }

    /// POSTs `message` in the session, as this client.
    async fn send(&self, message: serde_json::Value) -> reqwest::Response {
        self.http
            .post(&self.url)
            .bearer_auth(self.token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &self.session)
            .json(&message)
            .send()
            .await
            .expect("POST /mcp")
    }

    /// The HTTP status and the JSON-RPC response to `method`.
    async fn rpc(&self, method: &str, params: serde_json::Value) -> (u16, serde_json::Value) {
        let response = self
            .send(json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params }))
            .await;
        let status = response.status().as_u16();
        let body = response.text().await.expect("body");
        let answer = serde_json::from_str(&body).unwrap_or_else(|_| {
            body.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str::<serde_json::Value>(d.trim()).ok())
                .find(|m| m.get("id").is_some())
                .unwrap_or_default()
        });
        (status, answer)
    }

    /// Names in a list's `key` items (`name`, or `uri` for resources).
    async fn listed(&self, method: &str, key: &str) -> Vec<String> {
        let (status, answer) = self.rpc(method, json!({})).await;
        assert_eq!(status, 200, "{method}: {answer}");
        answer["result"][key]
            .as_array()
            .unwrap_or_else(|| panic!("{method}: {answer}"))
            .iter()
            .map(|item| {
                let name = item.get("name").or_else(|| item.get("uri"));
                name.and_then(|n| n.as_str()).unwrap_or_default().to_owned()
            })
            .collect()
    }
}

/// Access policies: what a client may not use is absent from its lists
/// and refused with 403 when named (over streamable HTTP and legacy SSE);
/// `deny` wins, an `allow` restricts only those it names.
#[tokio::test]
async fn access_policies_hide_and_refuse_what_they_deny() {
    let marker = format!("policies-{}", std::process::id());
    let registry = format!(
        "{}---\napiVersion: switchboard.dev/v1alpha1\nkind: McpAccessPolicy\nmetadata: {{name: dev-no-fail}}\nspec: {{subjects: {{groups: [dev]}}, deny: {{tools: ['d.fail*'], resources: ['e+*']}}}}\n---\napiVersion: switchboard.dev/v1alpha1\nkind: McpAccessPolicy\nmetadata: {{name: bob-echo-only}}\nspec: {{subjects: {{clients: [bob]}}, allow: {{tools: [d.echo], resources: ['e+demo://public/*']}}}}\n",
        clients_yaml(&[("alice", &["dev"]), ("bob", &[])])
    );
    let sb = Switchboard::start(&[
        ("d.yaml", &demo_server_yaml("d", &marker, &[])),
        ("e.yaml", &e2e::everything_server_yaml("e", json!({}))),
        ("access.yaml", &registry),
    ])
    .await;
    sb.wait_server_state("d", "ready").await;
    sb.wait_server_state("e", "ready").await;
    let status = sb.control_status().await;
    assert_eq!(
        status["policies"],
        json!(["bob-echo-only", "dev-no-fail"]),
        "{status}"
    );
    let http = reqwest::Client::new();
    let alice = Authed::open(&http, sb.mcp_url(), "alice-token-0123456789").await;
    let bob = Authed::open(&http, sb.mcp_url(), "bob-token-0123456789").await;

    let tools = alice.listed("tools/list", "tools").await;
    assert!(tools.iter().any(|t| t == "d.echo"), "{tools:?}");
    assert!(tools.iter().any(|t| t.starts_with("e.")), "{tools:?}");
    assert!(!tools.iter().any(|t| t.starts_with("d.fail")), "{tools:?}");
    assert!(alice.listed("resources/list", "resources").await.is_empty());
    assert!(!alice.listed("prompts/list", "prompts").await.is_empty());
    let (status, refused) = alice
        .rpc(
            "tools/call",
            json!({ "name": "d.fail", "arguments": { "message": "x" } }),
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`d.fail`") && message.contains("`alice`"),
        "{refused}"
    );
    let (status, answer) = alice
        .rpc(
            "tools/call",
            json!({ "name": "d.echo", "arguments": { "text": "ok" } }),
        )
        .await;
    assert_eq!(
        (status, &answer["result"]["structuredContent"]["text"]),
        (200, &json!("ok"))
    );
    let (status, _) = alice
        .rpc(
            "resources/read",
            json!({ "uri": "e+demo://resource/static/document/architecture.md" }),
        )
        .await;
    assert_eq!(status, 403, "resources are denied to dev whatever the URI");
    // The prefix is judged as it routes: its case does not get around it.
    let (status, _) = alice
        .rpc(
            "resources/read",
            json!({ "uri": "E+demo://resource/anything" }),
        )
        .await;
    assert_eq!(status, 403, "a prefix in upper case is the same prefix");

    assert_eq!(bob.listed("tools/list", "tools").await, ["d.echo"]);
    assert!(
        bob.listed("prompts/list", "prompts").await.is_empty(),
        "only tools allowed"
    );
    let (status, _) = bob
        .rpc(
            "tools/call",
            json!({ "name": "d.add", "arguments": { "a": 1, "b": 2 } }),
        )
        .await;
    assert_eq!(status, 403);
    // `*` spans path segments: a dot segment is never judged, only refused.
    let (status, refused) = bob
        .rpc(
            "resources/read",
            json!({ "uri": "e+demo://public/%2E%2E/secret" }),
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    let (status, answer) = bob
        .rpc("resources/read", json!({ "uri": "e+demo://public/readme" }))
        .await;
    assert_ne!(
        status, 403,
        "allowed, whatever the server says of it: {answer}"
    );

    // Legacy SSE: the refusal is answered where its clients read answers,
    // on the stream.
    let mut sse = http
        .get(format!("http://{}/sse", sb.gateway_addr))
        .bearer_auth("bob-token-0123456789")
        .send()
        .await
        .expect("GET /sse");
    assert_eq!(sse.status(), 200);
    let first =
        String::from_utf8_lossy(&sse.chunk().await.expect("stream").expect("event")).into_owned();
    let path = first
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("the endpoint event")
        .to_owned();
    let refused = http
        .post(format!("http://{}{path}", sb.gateway_addr))
        .bearer_auth("bob-token-0123456789")
        .json(&json!({ "jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": { "name": "d.add", "arguments": {} } }))
        .send()
        .await
        .expect("POST /message");
    assert_eq!(refused.status(), 202);
    let answer = loop {
        let chunk = sse.chunk().await.expect("stream").expect("an event");
        let text = String::from_utf8_lossy(&chunk).into_owned();
        if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: "))
            && let Ok(message) = serde_json::from_str::<serde_json::Value>(data)
        {
            break message;
        }
    };
    assert_eq!(answer["id"], 9, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("not allowed for client `bob`"), "{answer}");

    let metrics = sb.gateway_metrics().await;
    assert_eq!(
        metric(&metrics, "switchboard_access_policies", &[]),
        Some(2.0)
    );
    let denied = metric(
        &metrics,
        "switchboard_access_denials_total",
        &[("kind", "tool")],
    );
    assert_eq!(denied, Some(3.0), "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "switchboard_access_denials_total",
            &[("kind", "resource")]
        ),
        Some(2.0),
        "alice's two reads; the dot segment is refused before any policy"
    );
}

/// A declared client is held to its requests per second (429 with
/// `Retry-After`) and its number of sessions (429); other clients, and
/// what concerns work already in flight, are not held back.
#[tokio::test]
async fn clients_are_held_to_their_rate_and_their_sessions() {
    let marker = format!("limits-{}", std::process::id());
    let clients = clients_yaml(&[("alice", &[]), ("bob", &[])]);
    // One token every 10 s: nothing refills while the test runs.
    let limits = [
        "--client-requests-per-second",
        "0.1",
        "--client-burst",
        "3",
        "--max-sessions-per-client",
        "2",
    ];
    let sb = Switchboard::start_with(
        &[
            ("d.yaml", &demo_server_yaml("d", &marker, &[])),
            ("clients.yaml", &clients),
        ],
        &[],
        &limits,
    )
    .await;
    sb.wait_server_state("d", "ready").await;
    let http = reqwest::Client::new();
    let alice = Authed::open(&http, sb.mcp_url(), "alice-token-0123456789").await;
    Authed::open(&http, sb.mcp_url(), "alice-token-0123456789").await;

    let third = e2e::initialize_post(&http, &sb.mcp_url(), json!(3))
        .bearer_auth("alice-token-0123456789")
        .send()
        .await
        .expect("an answer");
    assert_eq!(third.status(), 429);
    let refused: serde_json::Value = third.json().await.expect("a JSON-RPC error");
    assert_eq!(refused["id"], 3, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("limit of 2 sessions"), "{refused}");

    // Three requests made: the burst is spent.
    let (status, refused) = alice.rpc("ping", json!({})).await;
    assert_eq!(status, 429, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("requests per second"), "{refused}");
    let response = alice
        .send(json!({ "jsonrpc": "2.0", "id": 4, "method": "ping" }))
        .await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=10).contains(&retry_after), "{retry_after}");
    // A cancel concerns work in flight: never held back.
    let cancel = alice
        .send(json!({ "jsonrpc": "2.0", "method": "notifications/cancelled", "params": { "requestId": 1 } }))
        .await;
    assert_eq!(cancel.status(), 202);

    let bob = Authed::open(&http, sb.mcp_url(), "bob-token-0123456789").await;
    let (status, answer) = bob.rpc("ping", json!({})).await;
    assert_eq!(
        (status, &answer["result"]),
        (200, &json!({})),
        "bob has his own bucket"
    );

    let metrics = sb.gateway_metrics().await;
    assert_eq!(
        metric(&metrics, "switchboard_rate_limited_total", &[]),
        Some(2.0),
        "{metrics}"
    );
    let refusals = [("reason", "client_limit")];
    assert_eq!(
        metric(&metrics, "switchboard_session_refusals_total", &refusals),
        Some(1.0)
    );
}

/// A gateway listening beyond loopback with no client declared refuses MCP
/// requests, saying how to open it, unless started with
/// `--allow-unauthenticated` (which it warns about).
#[tokio::test]
async fn beyond_loopback_the_gateway_is_closed_until_it_has_clients() {
    let marker = format!("wide-{}", std::process::id());
    let sb = Switchboard::start(&[("d.yaml", &demo_server_yaml("d", &marker, &[]))]).await;
    sb.wait_server_state("d", "ready").await;
    let http = reqwest::Client::new();
    let wide = |port: u16| std::net::SocketAddr::from(([0, 0, 0, 0], port));
    let closed_port = free_addr().port();
    // The detailed /healthz beyond loopback needs a token or this.
    let api = "--allow-unauthenticated-api";
    let _closed = sb.spawn_replica_with(wide(closed_port), "wide-closed", &[api]);
    let open_port = free_addr().port();
    let open = sb.spawn_replica_with(
        wide(open_port),
        "wide-open",
        &["--allow-unauthenticated", api],
    );
    for port in [closed_port, open_port] {
        e2e::wait_listening("a gateway beyond loopback", ([127, 0, 0, 1], port).into()).await;
    }
    let initialize = |port: u16| {
        e2e::initialize_post(&http, &format!("http://127.0.0.1:{port}/mcp"), json!(1)).send()
    };
    let refused = initialize(closed_port).await.expect("an answer");
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().contains_key("www-authenticate"));
    let body: serde_json::Value = refused.json().await.expect("a JSON-RPC error");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("--allow-unauthenticated"), "{body}");

    let answered = eventually("the open gateway's first snapshot", EVENTUALLY, || async {
        let response = initialize(open_port).await.map_err(|e| e.to_string())?;
        (response.status() == 200)
            .then_some(())
            .ok_or(response.status().to_string())
    });
    answered.await;
    assert!(
        open.log()
            .contains("without authentication beyond loopback"),
        "{}",
        open.log()
    );
}

/// With `--server-home`, each stdio server gets a HOME and a TMPDIR of its
/// own (mode 0700): servers sharing a gateway share no caches or
/// credentials by default; a server's own `env` still wins.
#[tokio::test]
async fn stdio_servers_get_a_home_and_a_tmpdir_of_their_own() {
    use std::os::unix::fs::PermissionsExt;

    let homes = tempfile::tempdir().expect("tempdir");
    let root = homes.path().to_string_lossy().into_owned();
    let marker = format!("homes-{}", std::process::id());
    let sb = Switchboard::start_with(
        &[
            ("a.yaml", &demo_server_yaml("a", &marker, &[])),
            ("b.yaml", &demo_server_yaml("b", &marker, &[])),
            (
                "c.yaml",
                &demo_server_yaml("c", &marker, &[("HOME", "/nonexistent/own")]),
            ),
        ],
        &[],
        &["--server-home", &root],
    )
    .await;
    for server in ["a", "b", "c"] {
        sb.wait_server_state(server, "ready").await;
    }
    let client = connect(&sb.mcp_url()).await.expect("connect");
    let env = async |tool: &str, name: &str| {
        let result = call(&client, tool, json!({ "name": name }))
            .await
            .expect("env");
        result.structured_content.unwrap_or_default()["value"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    for server in ["a", "b"] {
        let tool = format!("{server}.env");
        assert_eq!(env(&tool, "HOME").await, format!("{root}/{server}/home"));
        assert_eq!(env(&tool, "TMPDIR").await, format!("{root}/{server}/tmp"));
        let mode = std::fs::metadata(homes.path().join(server))
            .expect("the server's directory")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{server}: {mode:o}");
    }
    assert_eq!(
        env("c.env", "HOME").await,
        "/nonexistent/own",
        "its own env wins"
    );
    assert_eq!(env("c.env", "TMPDIR").await, format!("{root}/c/tmp"));
    client.cancel().await.expect("close");
}

/// The gateway's detailed `/healthz` (servers, hosts, errors) needs its
/// admin token when it has one; the probes and `/metrics` never do; beyond
/// loopback without a token it refuses to start unless told.
#[tokio::test]
async fn the_gateways_detailed_health_needs_its_admin_token() {
    let marker = format!("gw-admin-{}", std::process::id());
    let sb = Switchboard::start(&[("d.yaml", &demo_server_yaml("d", &marker, &[]))]).await;
    sb.wait_server_state("d", "ready").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "gateway-admin-token-0123456789\n").expect("token file");
    let addr = free_addr();
    let _guarded = sb.spawn_replica_with(
        addr,
        "guarded",
        &["--admin-token-file", &token_file.to_string_lossy()],
    );
    e2e::wait_listening("the guarded gateway", addr).await;
    let http = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut request = http.get(format!("http://{addr}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let refused = get("/healthz", None).await.expect("an answer");
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().contains_key("www-authenticate"));
    let wrong = get("/healthz", Some("not-the-admin-token-0123"))
        .await
        .expect("an answer");
    assert_eq!(wrong.status(), 401);
    let health = eventually("the detailed health with the token", EVENTUALLY, || async {
        let response = get("/healthz", Some("gateway-admin-token-0123456789"))
            .await
            .map_err(|e| e.to_string())?;
        let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
        (body["servers"]["d"]["state"] == "ready")
            .then(|| body.clone())
            .ok_or(body.to_string())
    })
    .await;
    assert_eq!(health["replicaId"], "guarded", "{health}");
    assert_eq!(get("/livez", None).await.expect("livez").status(), 200);
    assert_eq!(get("/readyz", None).await.expect("readyz").status(), 200);
    let metrics = get("/metrics", None)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert_eq!(
        metric(&metrics, "switchboard_admin_auth_failures_total", &[]),
        Some(2.0)
    );

    let wide = std::net::SocketAddr::from(([0, 0, 0, 0], free_addr().port()));
    let mut refused = sb.spawn_replica_with(wide, "wide-no-token", &["--allow-unauthenticated"]);
    let status = refused.wait().await;
    assert!(!status.success());
    assert!(
        refused.log().contains("--allow-unauthenticated-api"),
        "{}",
        refused.log()
    );
}

/// The per-session server processes of one client's sessions are capped
/// together: beyond the cap its calls to such servers fail saying why, and
/// ending a session makes room.
#[tokio::test]
async fn a_clients_per_session_processes_are_capped() {
    let marker = format!("per-client-{}", std::process::id());
    let clients = clients_yaml(&[("alice", &[])]);
    let per_session =
        e2e::demo_server_with("p", &marker, &[], json!({ "sessionMode": "perSession" }));
    let sb = Switchboard::start_with(
        &[("p.yaml", &per_session), ("clients.yaml", &clients)],
        &[],
        &["--max-session-processes-per-client", "1"],
    )
    .await;
    sb.wait_server_state("p", "ready").await;
    let http = reqwest::Client::new();
    let first = Authed::open(&http, sb.mcp_url(), "alice-token-0123456789").await;
    let second = Authed::open(&http, sb.mcp_url(), "alice-token-0123456789").await;
    let echo = json!({ "name": "p.echo", "arguments": { "text": "mine" } });
    let (status, answer) = first.rpc("tools/call", echo.clone()).await;
    assert_eq!(
        (status, &answer["result"]["structuredContent"]["text"]),
        (200, &json!("mine"))
    );
    let (_, refused) = second.rpc("tools/call", echo.clone()).await;
    assert_eq!(refused["result"]["isError"], true, "{refused}");
    assert!(
        refused
            .to_string()
            .contains("limit of 1 per-session server connections"),
        "{refused}"
    );

    let ended = http
        .delete(sb.mcp_url())
        .bearer_auth("alice-token-0123456789")
        .header("mcp-session-id", &first.session)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(ended.status(), 200);
    let (_, answer) = second.rpc("tools/call", echo).await;
    assert_eq!(
        answer["result"]["structuredContent"]["text"], "mine",
        "{answer}"
    );
}
