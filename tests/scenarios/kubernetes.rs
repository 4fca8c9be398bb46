//! In a cluster: the control plane watches `McpServer` resources through
//! the Kubernetes API and writes their status back. The API server is the
//! stand-in in `e2e::kube_apiserver` (no real one can run here); the client
//! is the real `kubectl` (`.ci/test`, through `.ci/fetch-tools`, puts a
//! pinned one in `.ci/tools`). By topic: clients, access policies and the
//! install's tokens ([`access`]), what the control plane does when the API
//! server misbehaves ([`api_faults`]), and leader election ([`leases`]).

#[path = "kubernetes/access.rs"]
mod access;
#[path = "kubernetes/api_faults.rs"]
mod api_faults;
#[path = "kubernetes/leases.rs"]
mod leases;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use e2e::{
    EVENTUALLY, Switchboard, call, connect, eventually, kube_apiserver::KubeApiServer, tool_names,
};
use serde_json::{Value, json};

fn kubectl_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHBOARD_KUBECTL") {
        return path.into();
    }
    e2e::require_tool(
        "kubectl",
        e2e::repo_root().join(".ci/tools/kubectl"),
        "`.ci/fetch-tools`, or set SWITCHBOARD_KUBECTL",
    )
}

/// Runs kubectl against the stand-in; returns stdout, or stderr as the error.
async fn kubectl(api: &KubeApiServer, home: &Path, args: &[&str]) -> Result<String, String> {
    let output = tokio::process::Command::new(kubectl_binary())
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .arg("--cache-dir")
        .arg(home.join("cache"))
        .args(args)
        .env("HOME", home)
        .output()
        .await
        .map_err(|e| format!("running kubectl: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        ))
    }
}

/// Runs kubectl with `input` on its stdin (`-f -`).
async fn kubectl_stdin(
    api: &KubeApiServer,
    home: &Path,
    args: &[&str],
    input: Vec<u8>,
) -> Result<String, String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(kubectl_binary())
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .arg("--cache-dir")
        .arg(home.join("cache"))
        .args(args)
        .env("HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running kubectl: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("kubectl has no stdin")?;
    stdin.write_all(&input).await.map_err(|e| e.to_string())?;
    drop(stdin);
    let output = child.wait_with_output().await.map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        ))
    }
}

/// What `switchboard-control crd` prints.
async fn crd_command_output() -> Vec<u8> {
    let output = tokio::process::Command::new(e2e::bin_dir().join("switchboard-control"))
        .arg("crd")
        .output()
        .await
        .expect("running switchboard-control crd");
    assert!(output.status.success(), "switchboard-control crd failed");
    output.stdout
}

/// Writes `manifest` to `file` in the kubectl home and applies it.
async fn apply(
    api: &KubeApiServer,
    home: &Path,
    file: &str,
    manifest: &str,
) -> Result<String, String> {
    let path = home.join(file);
    std::fs::write(&path, manifest).map_err(|e| e.to_string())?;
    let path = path.display().to_string();
    kubectl(api, home, &["apply", "--validate=false", "-f", &path]).await
}

/// The Lease the control plane campaigns for unless told another name.
const DEFAULT_LEASE: &str = "switchboard-control-plane";

/// The holder of Lease `lease`, `Null` when there is none (or no Lease).
fn holder(api: &KubeApiServer, lease: &str) -> Value {
    api.objects("leases")
        .into_iter()
        .find(|l| l["metadata"]["name"] == lease)
        .map(|l| l["spec"]["holderIdentity"].clone())
        .unwrap_or(Value::Null)
}

/// Waits up to `within` for `identity` to hold Lease `lease`.
async fn wait_for_leader(api: &KubeApiServer, lease: &str, identity: &str, within: Duration) {
    eventually(&format!("{identity} leads {lease}"), within, || async {
        let holder = holder(api, lease);
        (holder == identity).then_some(()).ok_or(holder.to_string())
    })
    .await;
}

/// `switchboard-control serve` arguments for a pod of the stand-in's
/// cluster, plus `extra`.
fn pod_args(api: &KubeApiServer, extra: &[&str]) -> Vec<String> {
    let kubeconfig = api.kubeconfig.display().to_string();
    ["--source", "kubernetes", "--kubeconfig", &kubeconfig]
        .iter()
        .chain(extra)
        .map(|a| (*a).to_owned())
        .collect()
}

/// A control plane in the stand-in's cluster and a gateway, the gateway
/// ready.
async fn start_in_cluster(api: &KubeApiServer) -> Switchboard {
    let args = pod_args(api, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Switchboard::start_with(&[], &args, &[]).await
}

/// A control-plane pod alone (no gateway), started and listening.
async fn start_pod(api: &KubeApiServer, extra: &[&str]) -> Switchboard {
    let mut pod = Switchboard::unstarted();
    pod.control_args = pod_args(api, extra);
    pod.start_control_plane().await;
    pod
}

/// The stored `McpServer` named `name` (`Null` if there is none).
fn stored_mcp(api: &KubeApiServer, name: &str) -> Value {
    api.objects("mcpservers")
        .into_iter()
        .find(|o| o["metadata"]["name"] == name)
        .unwrap_or(Value::Null)
}

/// The `Warning` events about `name`.
fn warnings_about(api: &KubeApiServer, name: &str) -> Vec<Value> {
    api.objects("events")
        .into_iter()
        .filter(|e| e["regarding"]["name"] == name && e["type"] == "Warning")
        .collect()
}

/// `kubectl get mcps NAME -o json`.
async fn get_mcp(api: &KubeApiServer, home: &Path, name: &str) -> Result<Value, String> {
    let json = kubectl(api, home, &["get", "mcps", name, "-o", "json"]).await?;
    serde_json::from_str(&json).map_err(|e| format!("{e}: {json}"))
}

fn demo_resource(name: &str, instance: &str) -> String {
    format!(
        "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  transport:\n    stdio:\n      command: switchboard-gateway\n      args: [demo-server, --instance, {instance}]\n"
    )
}

fn condition<'a>(object: &'a Value, kind: &str) -> &'a Value {
    object["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn kubectl_apply_get_and_delete_drive_the_gateway() {
    let api = KubeApiServer::start().await;
    let home = tempfile::tempdir().expect("kubectl home");
    let sb = start_in_cluster(&api).await;
    let tag = format!("k8s-{}", std::process::id());
    let created = apply(&api, home.path(), "demo.yaml", &demo_resource("demo", &tag))
        .await
        .expect("kubectl apply");
    assert!(created.contains("created"), "{created}");

    let client = connect(&sb.mcp_url()).await.expect("connect");
    eventually("demo.echo is served", EVENTUALLY, || async {
        let names = tool_names(&client).await.map_err(|e| e.to_string())?;
        names
            .contains(&"demo.echo".to_owned())
            .then_some(())
            .ok_or(format!("{names:?}"))
    })
    .await;
    let echoed = call(&client, "demo.echo", json!({ "text": "from the cluster" }))
        .await
        .expect("echo");
    assert_eq!(
        echoed.structured_content,
        Some(json!({ "text": "from the cluster" }))
    );

    // `kubectl get mcps` shows it Ready, with its tools, from the status the
    // control plane wrote.
    let table = eventually("kubectl get mcps shows demo ready", EVENTUALLY, || async {
        let table = kubectl(&api, home.path(), &["get", "mcps"]).await?;
        let row = table.lines().find(|l| l.starts_with("demo ")).unwrap_or("");
        let cells: Vec<&str> = row.split_whitespace().collect();
        // NAME PREFIX TRANSPORT READY REPLICAS TOOLS BREAKER AGE
        (cells.get(1..7) == Some(&["demo", "stdio", "True", "1/1", "12", "closed"][..]))
            .then(|| table.clone())
            .ok_or(table)
    })
    .await;
    assert!(table.starts_with("NAME"), "{table}");
    let object = get_mcp(&api, home.path(), "demo")
        .await
        .expect("get -o json");
    let status = &object["status"];
    assert_eq!(condition(&object, "Accepted")["status"], "True", "{status}");
    assert_eq!(condition(&object, "Ready")["status"], "True", "{status}");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["readyReplicas"], 1);
    assert_eq!(status["updatedReplicas"], 1);
    assert!(!status["protocolVersion"].as_str().unwrap_or("").is_empty());

    // A spec change is a new generation; the status follows it, and the
    // status writes themselves never made one.
    let configured = apply(
        &api,
        home.path(),
        "demo.yaml",
        &demo_resource("demo", &format!("{tag}-v2")),
    )
    .await
    .expect("kubectl apply again");
    assert!(configured.contains("configured"), "{configured}");
    eventually("observedGeneration 2, ready", EVENTUALLY, || async {
        let object = get_mcp(&api, home.path(), "demo").await?;
        (object["metadata"]["generation"] == 2
            && object["status"]["observedGeneration"] == 2
            && condition(&object, "Ready")["status"] == "True")
            .then_some(())
            .ok_or(object.to_string())
    })
    .await;
    // The console shows the cluster's servers, read-only: kubectl is the way.
    let live = reqwest::get(format!("http://{}/console/live", sb.control_http))
        .await
        .expect("GET /console/live");
    assert_eq!(live.status(), 200);
    let reset = e2e::Events::new(live).next().await;
    assert_eq!(reset["items"]["meta"]["mode"], "kubernetes", "{reset}");
    assert_eq!(reset["items"]["meta"]["writable"], false, "{reset}");
    assert_eq!(
        reset["items"]["server/default/demo"]["enabled"], true,
        "{reset}"
    );
    // An applied change is one trace, from the watch event that saw it to
    // the status written back.
    let traces = format!("http://{}/traces", sb.control_http);
    eventually(
        "a change's trace, watch event to status",
        EVENTUALLY,
        || async {
            let listing = sb
                .get_json(&format!("{traces}?span=status.write&limit=50"))
                .await
                .map_err(|e| e.to_string())?;
            for listed in listing["traces"].as_array().cloned().unwrap_or_default() {
                let id = listed["traceId"].as_str().unwrap_or_default();
                let trace = sb
                    .get_json(&format!("{traces}/{id}"))
                    .await
                    .map_err(|e| e.to_string())?;
                let spans = trace["spans"].as_array().cloned().unwrap_or_default();
                let has = |name: &str, key: &str, value: &str| {
                    spans.iter().any(|s| {
                        s["name"] == name && (key.is_empty() || s["attributes"][key] == value)
                    })
                };
                if has("registry.change", "source", "kubernetes")
                    && has("config.snapshot", "", "")
                    && has("config.apply", "result", "ack")
                    && has("status.write", "name", "demo")
                {
                    return Ok(());
                }
            }
            Err(listing.to_string())
        },
    )
    .await;

    // What the CRD's schema and CEL rules can catch, the API server
    // refuses outright.
    let refused = apply(
        &api,
        home.path(),
        "refused.yaml",
        "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata: {name: refused, namespace: default}\nspec:\n  namespace: has.dots\n  pool: {max: 500}\n  transport: {stdio: {command: x}, http: {url: 'http://127.0.0.1:1/mcp'}}\n",
    )
    .await
    .expect_err("the schema refuses it");
    for expected in [
        "spec.namespace in body should match",
        "spec.pool.max in body should be less than or equal to 64",
        r#"spec.transport: Invalid value: "object": exactly one transport must be set (stdio, http or sse)"#,
    ] {
        assert!(refused.contains(expected), "{expected}: {refused}");
    }
    get_mcp(&api, home.path(), "refused")
        .await
        .expect_err("nothing was stored");

    // What only the control plane can judge is not accepted, says why, and
    // breaks nothing.
    apply(
        &api,
        home.path(),
        "bad.yaml",
        "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata:\n  name: bad\n  namespace: default\nspec:\n  pool: {min: 3, max: 2}\n  transport:\n    stdio: {command: x}\n",
    )
    .await
    .expect("the API server stores it: no rule relates min to max");
    let rejected = eventually("bad is not accepted", EVENTUALLY, || async {
        let object = get_mcp(&api, home.path(), "bad").await?;
        (condition(&object, "Accepted")["status"] == "False")
            .then(|| object.clone())
            .ok_or(object.to_string())
    })
    .await;
    let accepted = condition(&rejected, "Accepted");
    assert_eq!(accepted["reason"], "Invalid");
    assert_eq!(
        accepted["message"], "spec.pool.min: must not exceed pool.max (2), got 3",
        "{accepted}"
    );
    assert_eq!(condition(&rejected, "Ready")["status"], "False");
    let issues = sb.control_status().await["issues"].clone();
    assert!(
        issues.to_string().contains("mcpservers/default/bad"),
        "{issues}"
    );
    call(&client, "demo.echo", json!({ "text": "still here" }))
        .await
        .expect("demo keeps working");

    // Conditions that changed were announced as events (events.k8s.io/v1),
    // by the one pod holding the lease.
    let events = api.objects("events");
    let announced = |name: &str, reason: &str, kind: &str| {
        events
            .iter()
            .any(|e| e["regarding"]["name"] == name && e["reason"] == reason && e["type"] == kind)
    };
    assert!(announced("demo", "Ready", "Normal"), "{events:#?}");
    assert!(announced("bad", "Invalid", "Warning"), "{events:#?}");
    let leases = api.objects("leases");
    assert_eq!(leases.len(), 1, "{leases:#?}");
    assert!(leases[0]["spec"]["holderIdentity"].is_string());

    // Deleting the resource withdraws its tools.
    let file = home.path().join("demo.yaml").display().to_string();
    let deleted = kubectl(&api, home.path(), &["delete", "--wait=false", "-f", &file])
        .await
        .expect("kubectl delete");
    assert!(deleted.contains("deleted"), "{deleted}");
    eventually("demo.echo withdrawn", EVENTUALLY, || async {
        let names = tool_names(&client).await.map_err(|e| e.to_string())?;
        (!names.iter().any(|n| n.starts_with("demo.")))
            .then_some(())
            .ok_or(format!("{names:?}"))
    })
    .await;
}

/// Everything a secret value must never show up in: both planes' logs,
/// the `McpServer`s as `kubectl` shows them, Events, the gateway's health.
async fn output_surfaces(sb: &Switchboard, api: &KubeApiServer, home: &Path) -> String {
    format!(
        "{}{}{}{:?}{}",
        sb.control.as_ref().expect("control plane").log(),
        sb.gateway.as_ref().expect("gateway").log(),
        kubectl(api, home, &["get", "mcps", "-o", "json"])
            .await
            .expect("get -o json"),
        api.objects("events"),
        sb.health().await,
    )
}

#[tokio::test]
async fn env_values_come_from_secrets_and_config_maps_and_stay_secret() {
    const SECRET: &str = "sk-live-0123456789abcdef";
    let api = KubeApiServer::start().await;
    let home = tempfile::tempdir().expect("kubectl home");
    let sb = start_in_cluster(&api).await;
    let credentials = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: api-token, namespace: default}}\nstringData: {{token: {SECRET}}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings, namespace: default}}\ndata: {{region: eu-west-1}}\n"
    );
    apply(&api, home.path(), "credentials.yaml", &credentials)
        .await
        .expect("apply the Secret and ConfigMap");
    let tag = format!("secret-{}", std::process::id());
    let server = format!(
        "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: vault, namespace: default}}\nspec:\n  transport:\n    stdio:\n      command: switchboard-gateway\n      args: [demo-server, --instance, {tag}]\n      env:\n        - name: API_TOKEN\n          valueFrom: {{secretKeyRef: {{name: api-token, key: token}}}}\n        - name: REGION\n          valueFrom: {{configMapKeyRef: {{name: settings, key: region}}}}\n        - name: OPTIONAL\n          valueFrom: {{secretKeyRef: {{name: absent, key: x, optional: true}}}}\n"
    );
    apply(&api, home.path(), "server.yaml", &server)
        .await
        .expect("apply the McpServer");

    let client = connect(&sb.mcp_url()).await.expect("connect");
    let env = |name: &'static str| {
        let client = &client;
        async move {
            call(client, "vault.env", json!({ "name": name }))
                .await
                .map_err(|e| e.to_string())
                .map(|r| r.structured_content.unwrap_or_default()["value"].clone())
        }
    };
    eventually("the secret reaches the server", EVENTUALLY, || async {
        let token = env("API_TOKEN").await?;
        (token == SECRET).then_some(()).ok_or(token.to_string())
    })
    .await;
    assert_eq!(env("REGION").await.expect("REGION"), "eu-west-1");
    assert_eq!(env("OPTIONAL").await.expect("OPTIONAL"), Value::Null);

    // A reference to nothing is not accepted, naming what is missing.
    let broken = "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata: {name: broken, namespace: default}\nspec:\n  transport:\n    stdio:\n      command: switchboard-gateway\n      args: [demo-server]\n      env:\n        - name: TOKEN\n          valueFrom: {secretKeyRef: {name: nowhere, key: token}}\n";
    apply(&api, home.path(), "broken.yaml", broken)
        .await
        .expect("apply broken");
    let message = eventually("broken is not accepted", EVENTUALLY, || async {
        let object = get_mcp(&api, home.path(), "broken").await?;
        let accepted = condition(&object, "Accepted");
        (accepted["status"] == "False")
            .then(|| accepted["message"].as_str().unwrap_or("").to_owned())
            .ok_or(object.to_string())
    })
    .await;
    assert!(message.contains("`nowhere`"), "{message}");

    // The value appears in no log, status or event.
    let everywhere = output_surfaces(&sb, &api, home.path()).await;
    assert!(!everywhere.contains(SECRET), "the secret value leaked");
}

#[tokio::test]
async fn listed_namespaces_are_watched_and_others_ignored() {
    let api = KubeApiServer::start().await;
    let home = tempfile::tempdir().expect("kubectl home");
    // Resources exist before the control plane starts: each namespace's
    // first list must bring its own.
    let tag = std::process::id();
    for (name, namespace) in [("alpha", "team-a"), ("gamma", "team-c"), ("beta", "team-b")] {
        let manifest = demo_resource(name, &format!("ns-{name}-{tag}"))
            .replace("namespace: default", &format!("namespace: {namespace}"));
        apply(&api, home.path(), &format!("{name}.yaml"), &manifest)
            .await
            .expect("kubectl apply");
    }
    let args = pod_args(&api, &["--watch-namespace", "team-a,team-b"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sb = Switchboard::start_with(&[], &args, &[]).await;
    let client = connect(&sb.mcp_url()).await.expect("connect");
    eventually("team-a and team-b served", EVENTUALLY, || async {
        let names = tool_names(&client).await.map_err(|e| e.to_string())?;
        let served = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
        (served("alpha.") && served("beta."))
            .then_some(())
            .ok_or(format!("{names:?}"))
    })
    .await;
    let names = tool_names(&client).await.expect("tools/list");
    assert!(
        !names.iter().any(|n| n.starts_with("gamma.")),
        "team-c is not watched: {names:?}"
    );
}

/// The CRD upgrade the chart README documents (Helm never upgrades
/// `crds/`), then a tool probe whose arguments hold nested keys: the API
/// server keeps every key (`x-kubernetes-preserve-unknown-fields`), and
/// the gateway probes with them. Before, a real cluster refused the CRD
/// (`arguments` had no type) and this stand-in pruned the arguments to `{}`.
#[tokio::test]
async fn tool_probe_arguments_survive_the_api_server_and_reach_the_probe() {
    let api = KubeApiServer::start().await;
    let home = tempfile::tempdir().expect("kubectl home");
    let upgrade = [
        "apply",
        "--server-side",
        "--force-conflicts",
        "--validate=false",
        "-f",
        "-",
    ];
    let crd = crd_command_output().await;
    let applied = kubectl_stdin(&api, home.path(), &upgrade, crd.clone())
        .await
        .expect("the CRD upgrade applies");
    assert!(applied.contains("serverside-applied"), "{applied}");

    // The CRD as it was: refused, in the real server's words, and nothing stored.
    // The McpServer CRD is the first of the ones the command prints.
    let first = serde_yaml::Deserializer::from_slice(&crd)
        .next()
        .expect("a document");
    let mut untyped: Value = serde::Deserialize::deserialize(first).expect("CRD YAML");
    let arguments = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/health/properties/tool/properties/arguments";
    *untyped
        .pointer_mut(arguments)
        .expect("the arguments schema") = json!({});
    let refused = kubectl_stdin(
        &api,
        home.path(),
        &upgrade,
        untyped.to_string().into_bytes(),
    )
    .await
    .expect_err("a real API server refuses an untyped field");
    assert!(
        refused.contains("properties[arguments].type: Required value: must not be empty for specified object fields"),
        "{refused}"
    );
    let stored = kubectl(
        &api,
        home.path(),
        &["get", "crd", "mcpservers.switchboard.dev", "-o", "json"],
    )
    .await
    .expect("kubectl get crd");
    let stored: Value = serde_json::from_str(&stored).expect("CRD JSON");
    assert_eq!(
        stored
            .pointer(arguments)
            .and_then(|a| a.get("x-kubernetes-preserve-unknown-fields")),
        Some(&json!(true))
    );

    let sb = start_in_cluster(&api).await;
    let tag = format!("probe-{}", std::process::id());
    let probed = |name: &str, arguments: &Value| {
        let mut server: Value = serde_yaml::from_str(&demo_resource(name, &tag)).expect("YAML");
        server["spec"]["health"] = json!({
            "probe": "tool", "interval": "1s", "failureThreshold": 1,
            "tool": { "name": "echo", "arguments": arguments },
        });
        server.to_string()
    };
    let arguments = json!({
        "text": "still here",
        "meta": { "nested": { "list": [1, { "deep": true }], "empty": {} }, "dotted.key": "x" },
    });
    // The same probe without `text`, which the demo server's echo requires.
    let forgetful = json!({ "meta": { "nested": { "only": "meta" } } });
    apply(
        &api,
        home.path(),
        "probed.json",
        &probed("probed", &arguments),
    )
    .await
    .expect("apply probed");
    apply(
        &api,
        home.path(),
        "forgetful.json",
        &probed("forgetful", &forgetful),
    )
    .await
    .expect("apply forgetful");
    let object = get_mcp(&api, home.path(), "probed")
        .await
        .expect("get probed");
    assert_eq!(object["spec"]["health"]["tool"]["arguments"], arguments);
    let object = get_mcp(&api, home.path(), "forgetful")
        .await
        .expect("get forgetful");
    assert_eq!(object["spec"]["health"]["tool"]["arguments"], forgetful);

    // Probes run with what the resource says: without `text` they fail.
    eventually("forgetful's probe fails", EVENTUALLY, || async {
        let object = get_mcp(&api, home.path(), "forgetful").await?;
        let last_error = object["status"]["lastError"].as_str().unwrap_or("");
        last_error
            .contains("missing argument `text`")
            .then_some(())
            .ok_or(object["status"].to_string())
    })
    .await;
    let object = get_mcp(&api, home.path(), "probed")
        .await
        .expect("get probed");
    let status = &object["status"];
    assert_eq!(condition(&object, "Ready")["status"], "True", "{status}");
    assert!(
        !status["lastError"]
            .as_str()
            .unwrap_or("")
            .contains("health probe"),
        "{status}"
    );
    let client = connect(&sb.mcp_url()).await.expect("connect");
    call(&client, "probed.echo", json!({ "text": "hello" }))
        .await
        .expect("probed serves");
}

/// `kubectl get mcps NAME -n NAMESPACE -o json`.
async fn get_mcp_in(
    api: &KubeApiServer,
    home: &Path,
    namespace: &str,
    name: &str,
) -> Result<Value, String> {
    let json = kubectl(
        api,
        home,
        &["get", "mcps", name, "-n", namespace, "-o", "json"],
    )
    .await?;
    serde_json::from_str(&json).map_err(|e| format!("{e}: {json}"))
}

/// The CRD is namespaced, so two teams may each have a `github`: a
/// server's identity is namespace/name. Both default to the prefix
/// `github`; the younger one is told so on its own status until it picks
/// another prefix, and then both are served, each status on its own object.
#[tokio::test]
async fn two_namespaces_may_each_have_a_server_of_the_same_name() {
    let api = KubeApiServer::start().await;
    let home = tempfile::tempdir().expect("kubectl home");
    let sb = start_in_cluster(&api).await;
    let tag = std::process::id();
    let github = |namespace: &str, prefix: Option<&str>| {
        let manifest = demo_resource("github", &format!("{namespace}-{tag}"))
            .replace("namespace: default", &format!("namespace: {namespace}"));
        match prefix {
            Some(prefix) => manifest.replace("spec:\n", &format!("spec:\n  namespace: {prefix}\n")),
            None => manifest,
        }
    };
    apply(&api, home.path(), "a.yaml", &github("team-a", None))
        .await
        .expect("team-a's github");
    let client = connect(&sb.mcp_url()).await.expect("connect");
    eventually("team-a's github is served", EVENTUALLY, || async {
        let object = get_mcp_in(&api, home.path(), "team-a", "github").await?;
        (condition(&object, "Ready")["status"] == "True")
            .then_some(())
            .ok_or(object.to_string())
    })
    .await;
    apply(&api, home.path(), "b.yaml", &github("team-b", None))
        .await
        .expect("team-b's github is stored: the name is free in team-b");

    let refused = eventually("team-b's github is not accepted", EVENTUALLY, || async {
        let object = get_mcp_in(&api, home.path(), "team-b", "github").await?;
        (condition(&object, "Accepted")["status"] == "False")
            .then(|| object.clone())
            .ok_or(object.to_string())
    })
    .await;
    let accepted = condition(&refused, "Accepted");
    assert_eq!(accepted["reason"], "Invalid", "{accepted}");
    assert_eq!(
        accepted["message"],
        "spec.namespace: namespace `github` is already used by McpServer `team-a/github`"
    );
    let first = get_mcp_in(&api, home.path(), "team-a", "github")
        .await
        .expect("team-a's github");
    assert_eq!(condition(&first, "Accepted")["status"], "True", "{first}");
    assert_eq!(condition(&first, "Ready")["status"], "True", "{first}");

    // Another prefix: both are served, side by side.
    apply(
        &api,
        home.path(),
        "b.yaml",
        &github("team-b", Some("github-b")),
    )
    .await
    .expect("team-b picks a prefix");
    eventually("both githubs are ready", EVENTUALLY, || async {
        let a = get_mcp_in(&api, home.path(), "team-a", "github").await?;
        let b = get_mcp_in(&api, home.path(), "team-b", "github").await?;
        let ready = |o: &Value| {
            condition(o, "Accepted")["status"] == "True"
                && condition(o, "Ready")["status"] == "True"
        };
        (ready(&a)
            && ready(&b)
            && a["status"]["prefix"] == "github"
            && b["status"]["prefix"] == "github-b")
            .then_some(())
            .ok_or(format!("{a}\n{b}"))
    })
    .await;
    for (tool, instance) in [("github.info", "team-a"), ("github-b.info", "team-b")] {
        let answer = call(&client, tool, json!({})).await.expect(tool);
        let text = serde_json::to_string(&answer.structured_content).expect("JSON");
        assert!(
            text.contains(&format!("{instance}-{tag}")),
            "{tool}: {text}"
        );
    }
    let servers = sb.control_status().await["servers"].to_string();
    assert!(
        servers.contains("team-a/github") && servers.contains("team-b/github"),
        "{servers}"
    );

    // Deleting one leaves the other alone.
    let file = home.path().join("a.yaml").display().to_string();
    kubectl(&api, home.path(), &["delete", "--wait=false", "-f", &file])
        .await
        .expect("kubectl delete");
    eventually("team-a's github withdrawn", EVENTUALLY, || async {
        let names = tool_names(&client).await.map_err(|e| e.to_string())?;
        (!names.iter().any(|n| n.starts_with("github.")))
            .then_some(())
            .ok_or(format!("{names:?}"))
    })
    .await;
    call(&client, "github-b.info", json!({}))
        .await
        .expect("team-b's github keeps working");
}

/// A remote server's header values come from Secrets as env values do:
/// the server receives the Secret's value (without the line break a file
/// leaves at its end), and the value appears in no log, status or event.
#[tokio::test]
async fn header_values_come_from_secrets_and_stay_secret() {
    const KEY: &str = "hk-live-0123456789abcdef";
    let api = KubeApiServer::start().await;
    let home = tempfile::tempdir().expect("kubectl home");
    let sb = start_in_cluster(&api).await;
    // A remote server that records the key it is sent and lets nobody in.
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let recorded = seen.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let recorded = recorded.clone();
        async move {
            if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
                recorded.lock().push(key.to_owned());
            }
            axum::http::StatusCode::UNAUTHORIZED
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let remote = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: remote-key, namespace: default}}\nstringData: {{key: \"{KEY}\\n\"}}\n"
    );
    apply(&api, home.path(), "secret.yaml", &secret)
        .await
        .expect("apply the Secret");
    let server = format!(
        "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: remote, namespace: default}}\nspec:\n  transport:\n    http:\n      url: http://{remote}/mcp\n      headers:\n        - name: X-Api-Key\n          valueFrom: {{secretKeyRef: {{name: remote-key, key: key}}}}\n"
    );
    apply(&api, home.path(), "server.yaml", &server)
        .await
        .expect("apply the McpServer");
    eventually("the key reaches the remote server", EVENTUALLY, || async {
        let seen = seen.lock().clone();
        seen.contains(&KEY.to_owned())
            .then_some(())
            .ok_or(format!("{seen:?}"))
    })
    .await;
    assert!(
        seen.lock().iter().all(|key| key == KEY),
        "only the Secret's value, trimmed"
    );

    let everywhere = output_surfaces(&sb, &api, home.path()).await;
    assert!(!everywhere.contains(KEY), "the key leaked");
}
