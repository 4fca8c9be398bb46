//! The API server having a bad moment: Secret reads that fail or hang,
//! a Secret that is really gone, and a namespace the control plane may not
//! list. Faults are switched on in the stand-in (`e2e::kube_apiserver::Fault`),
//! answered in a real server's words.

use std::time::Duration;

use e2e::{
    EVENTUALLY, McpClient, Switchboard, call, connect, eventually,
    kube_apiserver::{Fault, KubeApiServer},
    tool_names,
};
use serde_json::{Value, json};

use super::*;

/// Longer than a Secret refresh (30 s) plus a read's timeout (10 s): how
/// long a test waits for the control plane to read a Secret again.
const NEXT_READ: Duration = Duration::from_secs(60);

/// What the control plane logs when a Secret or ConfigMap read fails.
const READ_FAILED: &str = "cannot read a referenced value";

/// A Secret `name` whose key `token` is `value`.
fn secret(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\nstringData: {{token: {value}}}\n"
    )
}

/// A demo `McpServer` `name` whose `API_TOKEN` comes from Secret `secret`.
fn server_reading(name: &str, secret: &str, tag: &str) -> String {
    format!(
        "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  transport:\n    stdio:\n      command: switchboard-gateway\n      args: [demo-server, --instance, {tag}]\n      env:\n        - name: API_TOKEN\n          valueFrom: {{secretKeyRef: {{name: {secret}, key: token}}}}\n"
    )
}

/// Server-side apply (one PATCH, no read first): how the tests change a
/// Secret while reads of it are failing.
async fn apply_server_side(api: &KubeApiServer, home: &Path, file: &str, manifest: &str) {
    let path = home.join(file);
    std::fs::write(&path, manifest).expect("write manifest");
    let path = path.display().to_string();
    kubectl(
        api,
        home,
        &["apply", "--server-side", "--validate=false", "-f", &path],
    )
    .await
    .expect("kubectl apply --server-side");
}

/// `API_TOKEN` as server `name` sees it.
async fn token(client: &McpClient, name: &str) -> Result<Value, String> {
    call(
        client,
        &format!("{name}.env"),
        json!({ "name": "API_TOKEN" }),
    )
    .await
    .map_err(|e| e.to_string())
    .map(|r| r.structured_content.unwrap_or_default()["value"].clone())
}

async fn served(client: &McpClient, name: &str) -> Result<bool, String> {
    let names = tool_names(client).await.map_err(|e| e.to_string())?;
    Ok(names.iter().any(|n| n.starts_with(&format!("{name}."))))
}

/// Fails the test unless `vault` is still served, accepted, issue-free
/// and unwarned of: what a failed read must not change.
async fn assert_untouched(api: &KubeApiServer, sb: &Switchboard, client: &McpClient) {
    assert_eq!(served(client, "vault").await, Ok(true), "vault withdrawn");
    let issues = sb.control_status().await["issues"].clone();
    assert_eq!(issues, json!([]), "a failed read became an issue");
    let object = stored_mcp(api, "vault");
    assert_eq!(
        condition(&object, "Accepted")["status"],
        "True",
        "{}",
        object["status"]
    );
    assert_eq!(warnings_about(api, "vault"), Vec::<Value>::new());
}

fn failed_reads(sb: &Switchboard) -> usize {
    sb.control
        .as_ref()
        .expect("control plane")
        .log()
        .matches(READ_FAILED)
        .count()
}

/// Applies the Secret `api-token` holding `value` and the `vault` server
/// reading it (its processes tagged `<tag>-<pid>`); returns a client once
/// the server serves that value.
async fn vault_serving(
    api: &KubeApiServer,
    home: &Path,
    sb: &Switchboard,
    value: &str,
    tag: &str,
) -> McpClient {
    apply(api, home, "secret.yaml", &secret("api-token", value))
        .await
        .expect("apply the Secret");
    let tag = format!("{tag}-{}", std::process::id());
    apply(
        api,
        home,
        "vault.yaml",
        &server_reading("vault", "api-token", &tag),
    )
    .await
    .expect("apply vault");
    let client = connect(&sb.mcp_url()).await.expect("connect");
    eventually(&format!("vault serves {value}"), EVENTUALLY, || async {
        let token = token(&client, "vault").await?;
        (token == value).then_some(()).ok_or(token.to_string())
    })
    .await;
    client
}

/// A running server's Secret cannot be read for a while (503, then 429):
/// the server keeps its value, its tools and `Accepted=True`, with no
/// Warning; a value rotated meanwhile arrives once reads work again.
/// Before, a failed read was the same as a missing Secret: the server was
/// withdrawn and marked not accepted until the API server recovered.
#[tokio::test]
async fn failed_secret_reads_keep_the_server_and_a_rotated_value_still_arrives() {
    let api = KubeApiServer::start().await;
    let home = tempfile::tempdir().expect("kubectl home");
    let sb = start_in_cluster(&api).await;
    let client = vault_serving(&api, home.path(), &sb, "first", "vault").await;
    eventually("vault accepted", EVENTUALLY, || async {
        let object = stored_mcp(&api, "vault");
        (condition(&object, "Accepted")["status"] == "True")
            .then_some(())
            .ok_or(object.to_string())
    })
    .await;

    // Every read of the Secret fails with 503 (kube's client retries them
    // until the read's timeout): the next refresh fails, and changes nothing.
    let unavailable = api.fault(
        Fault::status(503)
            .on("secrets")
            .named("api-token")
            .verb("get"),
    );
    eventually("a failed read (503)", NEXT_READ, || async {
        assert_untouched(&api, &sb, &client).await;
        (failed_reads(&sb) >= 1)
            .then_some(())
            .ok_or(format!("{} requests refused", unavailable.hits()))
    })
    .await;
    assert!(unavailable.hits() > 1, "kube's client retried the 503");
    assert_untouched(&api, &sb, &client).await;

    // Now throttled (429, Retry-After), while the value is rotated.
    unavailable.lift();
    let throttled = api.fault(
        Fault::status(429)
            .retry_after(1)
            .on("secrets")
            .named("api-token")
            .verb("get"),
    );
    apply_server_side(
        &api,
        home.path(),
        "rotated.yaml",
        &secret("api-token", "second"),
    )
    .await;
    eventually("a failed read (429)", NEXT_READ, || async {
        assert_untouched(&api, &sb, &client).await;
        (failed_reads(&sb) >= 2)
            .then_some(())
            .ok_or(format!("{} requests throttled", throttled.hits()))
    })
    .await;
    assert!(throttled.hits() > 0);
    assert_eq!(
        token(&client, "vault").await,
        Ok(json!("first")),
        "the last value read is kept"
    );

    // Reads work again: the retry brings the rotated value.
    throttled.lift();
    eventually("vault sees the rotated token", NEXT_READ, || async {
        let token = token(&client, "vault").await?;
        (token == "second").then_some(()).ok_or(token.to_string())
    })
    .await;
    assert_untouched(&api, &sb, &client).await;
}

/// A Secret read that never answers holds up no other resource: a server
/// applied meanwhile reaches the gateway while that read is still hanging,
/// and the waiting server joins once the API server answers. Before,
/// every registry change waited for every read, so one hung read froze
/// the registry for its whole timeout, again at each change.
#[tokio::test]
async fn a_hung_secret_read_holds_up_no_other_server() {
    let api = KubeApiServer::start().await;
    let home = tempfile::tempdir().expect("kubectl home");
    let sb = start_in_cluster(&api).await;
    apply(
        &api,
        home.path(),
        "secret.yaml",
        &secret("slow-token", "late"),
    )
    .await
    .expect("apply the Secret");
    let hang = api.fault(Fault::hang().on("secrets").named("slow-token"));
    let tag = std::process::id();
    apply(
        &api,
        home.path(),
        "slow.yaml",
        &server_reading("slow", "slow-token", &format!("slow-{tag}")),
    )
    .await
    .expect("apply slow");
    eventually("the read of slow-token hangs", EVENTUALLY, || async {
        (hang.held() == 1)
            .then_some(())
            .ok_or(hang.hits().to_string())
    })
    .await;

    apply(
        &api,
        home.path(),
        "beta.yaml",
        &demo_resource("beta", &format!("beta-{tag}")),
    )
    .await
    .expect("apply beta");
    let client = connect(&sb.mcp_url()).await.expect("connect");
    eventually("beta is served", EVENTUALLY, || async {
        served(&client, "beta")
            .await?
            .then_some(())
            .ok_or("not yet".to_owned())
    })
    .await;
    // The read that hung before beta was applied is the same one, still
    // hanging: beta did not wait for it.
    assert_eq!(
        (hang.hits(), hang.held()),
        (1, 1),
        "beta waited for the hung read"
    );
    assert_eq!(served(&client, "slow").await, Ok(false));

    // The API server answers again: slow joins, with its value.
    hang.lift();
    eventually("slow is served", NEXT_READ, || async {
        let token = token(&client, "slow").await?;
        (token == "late").then_some(()).ok_or(token.to_string())
    })
    .await;
}

/// A Secret that is really deleted (404) does take the server off, with
/// `Accepted=False` naming what is missing: only "does not exist" is a
/// problem with the resource.
#[tokio::test]
async fn a_deleted_secret_takes_the_server_off_and_says_why() {
    let api = KubeApiServer::start().await;
    let home = tempfile::tempdir().expect("kubectl home");
    let sb = start_in_cluster(&api).await;
    let client = vault_serving(&api, home.path(), &sb, "here", "gone").await;

    kubectl(&api, home.path(), &["delete", "secret", "api-token"])
        .await
        .expect("kubectl delete secret");
    let accepted = eventually("vault not accepted", NEXT_READ, || async {
        let object = stored_mcp(&api, "vault");
        let accepted = condition(&object, "Accepted").clone();
        (accepted["status"] == "False")
            .then(|| accepted.clone())
            .ok_or(object["status"].to_string())
    })
    .await;
    assert_eq!(accepted["reason"], "Invalid");
    assert_eq!(
        accepted["message"],
        "spec.transport.stdio.env[API_TOKEN].valueFrom: Secret `api-token` or its key `token` does not exist in namespace `default` (set optional: true to allow that)"
    );
    eventually("vault withdrawn", EVENTUALLY, || async {
        (!served(&client, "vault").await?)
            .then_some(())
            .ok_or("still served".to_owned())
    })
    .await;
    eventually("a Warning about vault", EVENTUALLY, || async {
        (!warnings_about(&api, "vault").is_empty())
            .then_some(())
            .ok_or(format!("{:?}", api.objects("events")))
    })
    .await;
}

/// With `--watch-namespace team-a,team-b` and RBAC denying `team-b`, the
/// pod is not ready (it has no complete registry to serve), and becomes
/// ready, serving both namespaces, once the denial is lifted. Before, the
/// pod was Ready while publishing nothing at all.
#[tokio::test]
async fn readiness_waits_for_every_watched_namespace() {
    let api = KubeApiServer::start().await;
    let home = tempfile::tempdir().expect("kubectl home");
    let tag = std::process::id();
    for (name, namespace) in [("alpha", "team-a"), ("beta", "team-b")] {
        let manifest = demo_resource(name, &format!("ready-{name}-{tag}"))
            .replace("namespace: default", &format!("namespace: {namespace}"));
        apply(&api, home.path(), &format!("{name}.yaml"), &manifest)
            .await
            .expect("kubectl apply");
    }
    let denied = api.fault(Fault::forbidden().on("mcpservers").in_namespace("team-b"));
    let mut sb = start_pod(&api, &["--watch-namespace", "team-a,team-b"]).await;
    let readyz = format!("http://{}/readyz", sb.control_http);
    eventually("team-b denied twice", EVENTUALLY, || async {
        (denied.hits() >= 2)
            .then_some(())
            .ok_or(denied.hits().to_string())
    })
    .await;
    let (status, body) = sb.get_text(&readyz).await.expect("GET /readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("every watched namespace"), "{body}");
    assert!(
        sb.control
            .as_ref()
            .expect("control plane")
            .log()
            .contains("cannot list resource"),
        "the denial is logged"
    );

    denied.lift();
    eventually("ready", EVENTUALLY, || async {
        let (status, body) = sb.get_text(&readyz).await.map_err(|e| e.to_string())?;
        (status == 200)
            .then_some(())
            .ok_or(format!("{status} {body}"))
    })
    .await;
    sb.start_gateway().await;
    sb.wait_gateway_ready().await;
    let client = connect(&sb.mcp_url()).await.expect("connect");
    eventually("both namespaces served", EVENTUALLY, || async {
        let alpha = served(&client, "alpha").await?;
        let beta = served(&client, "beta").await?;
        (alpha && beta)
            .then_some(())
            .ok_or(format!("{alpha} {beta}"))
    })
    .await;
}
