//! Clients and access policies in a cluster: the install's tokens live in
//! a Secret the control plane makes on its first start and keeps; an
//! `McpClient` whose token comes from that Secret closes the gateway to
//! everyone else; an `McpAccessPolicy` hides and refuses what it denies. A
//! cluster that lacks the newer CRDs still serves its servers.

use base64::Engine;
use e2e::{EVENTUALLY, Switchboard, eventually, kube_apiserver::KubeApiServer};
use serde_json::{Value, json};

use super::{apply, demo_resource, kubectl, pod_args};

const TOKENS: &str = "switchboard-tokens";

/// The tokens Secret's values by key, once the control plane made it.
fn stored_tokens(api: &KubeApiServer) -> Option<Vec<(String, String)>> {
    let secret = api
        .objects("secrets")
        .into_iter()
        .find(|s| s["metadata"]["name"] == TOKENS)?;
    let data = secret["data"].as_object()?;
    let engine = base64::engine::general_purpose::STANDARD;
    Some(
        data.iter()
            .map(|(key, value)| {
                let bytes = engine
                    .decode(value.as_str().unwrap_or_default())
                    .expect("base64 data");
                (key.clone(), String::from_utf8(bytes).expect("UTF-8"))
            })
            .collect(),
    )
}

fn token<'a>(tokens: &'a [(String, String)], key: &str) -> &'a str {
    &tokens
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no `{key}` in the tokens Secret"))
        .1
}

/// `initialize` as `bearer` (or nobody): the status and the session id.
async fn initialize(
    http: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
) -> (u16, Option<String>) {
    let mut request = e2e::initialize_post(http, url, json!(0));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request.send().await.expect("initialize");
    let session = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (response.status().as_u16(), session)
}

/// The tool names `tools/list` gives `bearer` in `session`.
async fn tool_names(http: &reqwest::Client, url: &str, bearer: &str, session: &str) -> Vec<String> {
    let response = http
        .post(url)
        .bearer_auth(bearer)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", session)
        .json(&json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" }))
        .send()
        .await
        .expect("tools/list");
    let body = response.text().await.expect("body");
    let answer: Value = serde_json::from_str(&body).unwrap_or_else(|_| {
        body.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|m| m.get("id").is_some())
            .unwrap_or_default()
    });
    answer["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn the_install_tokens_secret_clients_and_policies_close_the_cluster() {
    let api = KubeApiServer::start().await;
    let home = tempfile::tempdir().expect("kubectl home");
    let args = pod_args(
        &api,
        &[
            "--tokens-secret",
            TOKENS,
            "--grpc-tls-names",
            "127.0.0.1,localhost",
        ],
    );
    let mut sb = Switchboard::unstarted();
    sb.control_args = args;
    sb.start_control_plane().await;
    let tokens = stored_tokens(&api).expect("the control plane made the tokens Secret");
    let keys: Vec<&str> = tokens.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "admin",
            "ca.crt",
            "client",
            "replica",
            "session-keys",
            "tls.crt",
            "tls.key"
        ]
    );
    // Random tokens, and one session key in the key set's form.
    for key in ["admin", "client", "replica", "session-keys"] {
        assert_eq!(token(&tokens, key).len(), 64, "random, 64 hex digits");
    }
    assert!(token(&tokens, "ca.crt").starts_with("-----BEGIN CERTIFICATE-----"));

    // A restarted control plane keeps the Secret as it is.
    drop(sb.control.take());
    sb.start_control_plane().await;
    assert_eq!(stored_tokens(&api), Some(tokens.clone()), "kept");
    // Its API now needs the admin token, on loopback too.
    let http = reqwest::Client::new();
    let status_url = format!("http://{}/status", sb.control_http);
    let refused = http.get(&status_url).send().await.expect("GET /status");
    assert_eq!(refused.status(), 401);
    let admitted = http
        .get(&status_url)
        .bearer_auth(token(&tokens, "admin"))
        .send()
        .await
        .expect("GET /status");
    assert_eq!(admitted.status(), 200);
    // The cluster is the source of truth: the write API points at kubectl.
    let write = http
        .post(format!("http://{}/servers", sb.control_http))
        .bearer_auth(token(&tokens, "admin"))
        .body(demo_resource("written", "x"))
        .send()
        .await
        .expect("POST /servers");
    assert_eq!(write.status(), 409);
    let said = write.text().await.unwrap_or_default();
    assert!(said.contains("kubectl apply"), "{said}");

    // The gRPC port speaks TLS only, with a certificate from the tokens
    // Secret: a gateway dialling plain text, or trusting another CA, never
    // gets config; one told https without a CA refuses to start.
    let replica_token = (
        "SWITCHBOARD_CONTROL_PLANE_TOKEN".to_owned(),
        token(&tokens, "replica").to_owned(),
    );
    sb.gateway_env = vec![replica_token.clone()];
    let plain = sb.spawn_replica(e2e::free_addr(), "plain");
    sb.grpc_scheme = "https";
    let no_ca = sb.spawn_replica(e2e::free_addr(), "no-ca");
    sb.gateway_env = vec![
        replica_token.clone(),
        (
            "SWITCHBOARD_CONTROL_PLANE_CA".into(),
            // A certificate, but not the CA that signed the server's.
            token(&tokens, "tls.crt").to_owned(),
        ),
    ];
    let doubting = sb.spawn_replica(e2e::free_addr(), "doubting");
    eventually(
        "https without a CA stops the gateway",
        EVENTUALLY,
        || async {
            let log = no_ca.log();
            log.contains("give the CA").then_some(()).ok_or(log)
        },
    )
    .await;
    for (gateway, what) in [(&plain, "plain text"), (&doubting, "another CA")] {
        eventually(&format!("{what} is refused"), EVENTUALLY, || async {
            let log = gateway.log();
            (log.contains("config stream down") && !log.contains("snapshot applied"))
                .then_some(())
                .ok_or(log)
        })
        .await;
    }
    // Checking the control plane by its CA and proving itself with the
    // replica token, as the chart's gateways do, a gateway gets config.
    sb.gateway_env = vec![
        replica_token,
        (
            "SWITCHBOARD_CONTROL_PLANE_CA".into(),
            token(&tokens, "ca.crt").to_owned(),
        ),
    ];
    sb.start_gateway().await;
    sb.wait_gateway_ready().await;
    for gateway in [plain, doubting] {
        assert!(
            !gateway.log().contains("snapshot applied"),
            "{}",
            gateway.log()
        );
    }

    let tag = format!("k8s-access-{}", std::process::id());
    let manifest = format!(
        "{}---\napiVersion: switchboard.dev/v1alpha1\nkind: McpClient\nmetadata: {{name: team, namespace: default}}\nspec:\n  groups: [dev]\n  token:\n    valueFrom: {{secretKeyRef: {{name: {TOKENS}, key: client}}}}\n---\napiVersion: switchboard.dev/v1alpha1\nkind: McpAccessPolicy\nmetadata: {{name: no-sleep, namespace: default}}\nspec:\n  subjects: {{groups: [dev]}}\n  deny: {{tools: ['demo.sleep']}}\n",
        demo_resource("demo", &tag)
    );
    let applied = apply(&api, home.path(), "access.yaml", &manifest)
        .await
        .expect("kubectl apply");
    assert!(
        applied.contains("mcpclient.switchboard.dev/team created"),
        "{applied}"
    );
    let listed = kubectl(&api, home.path(), &["get", "mcpc,mcpap"])
        .await
        .expect("get");
    assert!(
        listed.contains("team") && listed.contains("no-sleep"),
        "{listed}"
    );

    // Once the client is declared, nobody else gets in, loopback included.
    let url = sb.mcp_url();
    eventually("anonymous callers are refused", EVENTUALLY, || async {
        let (status, _) = initialize(&http, &url, None).await;
        (status == 401).then_some(()).ok_or(status.to_string())
    })
    .await;
    let (status, _) = initialize(&http, &url, Some(token(&tokens, "admin"))).await;
    assert_eq!(status, 401, "the admin token is not a client's");

    let client_token = token(&tokens, "client");
    let (status, session) = initialize(&http, &url, Some(client_token)).await;
    assert_eq!(status, 200);
    let session = session.expect("a session id");
    let names = eventually("the policy hides demo.sleep", EVENTUALLY, || async {
        let names = tool_names(&http, &url, client_token, &session).await;
        (names.contains(&"demo.echo".to_owned()) && !names.contains(&"demo.sleep".to_owned()))
            .then(|| names.clone())
            .ok_or(format!("{names:?}"))
    })
    .await;
    assert!(!names.is_empty());

    // The token's value is in neither plane's status.
    let health = sb.health().await.to_string();
    assert!(!health.contains(client_token));
    let status = http
        .get(&status_url)
        .bearer_auth(token(&tokens, "admin"))
        .send()
        .await
        .expect("GET /status")
        .text()
        .await
        .expect("body");
    assert!(
        status.contains("\"team\""),
        "the client is listed: {status}"
    );
    assert!(!status.contains(client_token), "the token leaked");

    // Other names for the gRPC port: a new CA and certificate for them,
    // the tokens as they were.
    drop(sb.control.take());
    sb.control_args = pod_args(
        &api,
        &[
            "--tokens-secret",
            TOKENS,
            "--grpc-tls-names",
            "127.0.0.1,switchboard.example",
        ],
    );
    sb.start_control_plane().await;
    let renamed = stored_tokens(&api).expect("the Secret");
    for key in ["admin", "client", "replica"] {
        assert_eq!(token(&renamed, key), token(&tokens, key), "{key} kept");
    }
    assert_ne!(
        token(&renamed, "ca.crt"),
        token(&tokens, "ca.crt"),
        "a new CA"
    );
}

/// A cluster upgraded without the chart's newer CRDs (helm installs CRDs
/// only on install): servers are served, clients and policies are none.
#[tokio::test]
async fn a_cluster_without_the_client_crds_still_serves_its_servers() {
    let crd = serde_yaml::from_str(include_str!(
        "../../../charts/switchboard/crds/mcpservers.switchboard.dev.yaml"
    ))
    .expect("the McpServer CRD");
    let api = KubeApiServer::start_with_crd(crd).await;
    let home = tempfile::tempdir().expect("kubectl home");
    let args = pod_args(&api, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sb = Switchboard::start_with(&[], &args, &[]).await;
    let tag = format!("k8s-old-crds-{}", std::process::id());
    apply(&api, home.path(), "demo.yaml", &demo_resource("demo", &tag))
        .await
        .expect("kubectl apply");
    sb.wait_server_state("default/demo", "ready").await;
    let log = sb.control.as_ref().expect("control plane").log();
    assert!(log.contains("CRD is not installed"), "{log}");
}

/// The chart's way for replicas: each gateway pod proves itself with a
/// projected ServiceAccount token (what `kubectl create token` mints), checked
/// with a TokenReview. A token admits only its own pod's replica id; one for
/// another audience, of another ServiceAccount, of a deleted pod, or none,
/// gets nothing; a gateway picks up a rotated token from its file.
#[tokio::test]
async fn replicas_prove_themselves_with_their_pods_tokens() {
    use e2e::scripted_replica::RefusingReplica;

    let api = KubeApiServer::start().await;
    let home = tempfile::tempdir().expect("kubectl home");
    let tag = format!("k8s-sa-{}", std::process::id());
    let pod = |name: &str, account: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  serviceAccountName: {account}\n  containers: [{{name: gateway, image: switchboard-gateway}}]\n"
        )
    };
    let manifest = format!(
        "{}---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: switchboard-gateway, namespace: default}}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: other, namespace: default}}\n{}{}{}{}",
        demo_resource("demo", &tag),
        pod("gw-1", "switchboard-gateway"),
        pod("gw-2", "switchboard-gateway"),
        pod("gw-3", "switchboard-gateway"),
        pod("other-1", "other"),
    );
    apply(&api, home.path(), "gateways.yaml", &manifest)
        .await
        .expect("kubectl apply");
    let mint = |account: &'static str, pod: &'static str, audience: &'static str| {
        let (api, home) = (&api, home.path());
        async move {
            let args = [
                "create",
                "token",
                account,
                "--audience",
                audience,
                "--bound-object-kind",
                "Pod",
                "--bound-object-name",
                pod,
                "--duration",
                "1h",
            ];
            kubectl(api, home, &args)
                .await
                .map(|token| token.trim().to_owned())
        }
    };
    let gw1 = mint("switchboard-gateway", "gw-1", "switchboard")
        .await
        .expect("a token for gw-1");
    let gw2 = mint("switchboard-gateway", "gw-2", "switchboard")
        .await
        .expect("a token for gw-2");
    let gw3 = mint("switchboard-gateway", "gw-3", "switchboard")
        .await
        .expect("a token for gw-3");
    let other_audience = mint("switchboard-gateway", "gw-1", "vault")
        .await
        .expect("a token for another audience");
    let other_account = mint("other", "other-1", "switchboard")
        .await
        .expect("another account's token");
    // The API server binds a token only to a pod that is there and runs
    // as the token's account.
    for (account, pod, says) in [
        ("switchboard-gateway", "gw-9", "pods \"gw-9\" not found"),
        (
            "other",
            "gw-1",
            "to pod running with different serviceaccount name",
        ),
    ] {
        let refused = mint(account, pod, "switchboard").await;
        assert!(
            refused.as_ref().is_err_and(|e| e.contains(says)),
            "{refused:?}"
        );
    }

    let mut sb = Switchboard::unstarted();
    sb.control_args = pod_args(
        &api,
        &[
            "--replica-service-account",
            "default/switchboard-gateway",
            "--replica-token-audience",
            "switchboard",
        ],
    );
    sb.start_control_plane().await;

    // gw-1's gateway, its token in a file as the kubelet mounts it.
    let token_file = sb.dir.path().join("token");
    std::fs::write(&token_file, &gw1).expect("write the token");
    sb.gateway_env = vec![(
        "SWITCHBOARD_CONTROL_PLANE_TOKEN_FILE".into(),
        token_file.display().to_string(),
    )];
    let gateway = sb.spawn_replica(sb.gateway_addr, "gw-1");
    sb.wait_gateway_ready().await;

    // Its token speaks for gw-1 only.
    let stolen = RefusingReplica::try_connect(sb.grpc, "gw-2", "x", Some(&gw1)).await;
    let status = stolen.err().expect("another replica id is refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status
            .message()
            .contains("not the pod this token was issued to (`gw-1`)"),
        "{}",
        status.message()
    );
    // gw-1's claims with another signature: only the API server can tell.
    let forged = format!(
        "{}.c2lnbmVkIGJ5IG5vYm9keQ",
        gw1.rsplit_once('.').expect("a JWT").0
    );
    for (token, says) in [
        (Some(other_audience.as_str()), "audience"),
        (
            Some(other_account.as_str()),
            "is not a gateway's ServiceAccount",
        ),
        (Some(forged.as_str()), "invalid bearer token"),
        (
            Some("not-a-token-at-all-0123456789"),
            "not a ServiceAccount token",
        ),
        (None, "needs a replica's credential"),
    ] {
        let refused = RefusingReplica::try_connect(sb.grpc, "gw-1", "x", token).await;
        let status = refused.err().expect("refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{says}");
        assert!(
            status.message().contains(says),
            "{says}: {}",
            status.message()
        );
    }
    // A deleted pod's token is worth nothing.
    kubectl(&api, home.path(), &["delete", "pod", "gw-2"])
        .await
        .expect("delete gw-2");
    let gone = RefusingReplica::try_connect(sb.grpc, "gw-2", "x", Some(&gw2)).await;
    let status = gone.err().expect("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status.message().contains("pod \"gw-2\" not found"),
        "{}",
        status.message()
    );

    // A gateway whose mounted token is wrong keeps trying, and connects
    // once the file holds a good one: it reads its token again as the
    // kubelet rotates it.
    let rotating = sb.dir.path().join("rotating");
    std::fs::write(&rotating, &other_audience).expect("write the token");
    let mut rotated = Switchboard::unstarted();
    rotated.grpc = sb.grpc;
    rotated.gateway_env = vec![(
        "SWITCHBOARD_CONTROL_PLANE_TOKEN_FILE".into(),
        rotating.display().to_string(),
    )];
    let gw3_gateway = rotated.spawn_replica(rotated.gateway_addr, "gw-3");
    eventually("the wrong token is refused", EVENTUALLY, || async {
        let log = gw3_gateway.log();
        log.contains("config stream down").then_some(()).ok_or(log)
    })
    .await;
    std::fs::write(&rotating, &gw3).expect("rotate the token");
    rotated.wait_gateway_ready().await;
    assert!(
        gw3_gateway
            .log()
            .contains("the control plane token changed")
    );

    // The control plane may not review tokens (its ClusterRole missing):
    // a token it has not seen yet gets UNAVAILABLE, never admission, and
    // goes through once the grant is back.
    let unseen = mint("switchboard-gateway", "gw-1", "switchboard")
        .await
        .expect("another token for gw-1");
    let denied = api.fault(
        e2e::kube_apiserver::Fault::forbidden()
            .on("tokenreviews")
            .verb("create"),
    );
    let refused = RefusingReplica::try_connect(sb.grpc, "gw-1", "x", Some(&unseen)).await;
    let status = refused.err().expect("no review, no admission");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("cannot check tokens"),
        "{}",
        status.message()
    );
    assert!(denied.hits() >= 1, "the review was asked for");
    denied.lift();
    let admitted = RefusingReplica::try_connect(sb.grpc, "gw-1", "x", Some(&unseen)).await;
    assert!(admitted.is_ok(), "{:?}", admitted.err());
    drop(admitted);

    // Status knows the two real replicas, nobody else; refusals counted.
    let status = sb.control_status().await;
    let replicas = status["replicas"].as_object().expect("replicas");
    let mut ids: Vec<&String> = replicas.keys().collect();
    ids.sort();
    assert_eq!(ids, ["gw-1", "gw-3"], "{status}");
    let metrics = reqwest::get(format!("http://{}/metrics", sb.control_http))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics");
    assert!(
        metrics.contains("replica_token_reviews_total{outcome=\"admitted\"}"),
        "{metrics}"
    );
    let refusals = metrics
        .lines()
        .find(|l| l.starts_with("switchboard_control_replica_auth_failures_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_default();
    assert!(refusals >= 5, "{metrics}");
    drop(gateway);
}
