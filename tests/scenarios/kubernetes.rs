//! In a cluster: the control plane watches `McpServer` resources through
//! the Kubernetes API and writes their status back. The API server is the
//! stand-in in `e2e::kube_apiserver` (no real one can run here); the client
//! is the real `kubectl` (`.ci/fetch-tools` puts a pinned one in `.ci/tools`).

use std::path::{Path, PathBuf};

use e2e::{
    EVENTUALLY, Switchboard, call, connect, eventually, kube_apiserver::KubeApiServer, tool_names,
};
use serde_json::{Value, json};

fn kubectl_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHBOARD_KUBECTL") {
        return path.into();
    }
    let pinned = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/tools/kubectl");
    assert!(
        pinned.is_file(),
        "kubectl not found at {}: run `.ci/fetch-tools` (or set SWITCHBOARD_KUBECTL)",
        pinned.display()
    );
    pinned
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
    let kubeconfig = api.kubeconfig.display().to_string();
    let sb = Switchboard::start_with(
        &[],
        &["--source", "kubernetes", "--kubeconfig", &kubeconfig],
        &[],
    )
    .await;
    let tag = format!("k8s-{}", std::process::id());
    let file = home.path().join("demo.yaml");
    std::fs::write(&file, demo_resource("demo", &tag)).expect("write resource");
    let file = file.display().to_string();

    let created = kubectl(
        &api,
        home.path(),
        &["apply", "--validate=false", "-f", &file],
    )
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
        (cells.get(1..7) == Some(&["demo", "stdio", "True", "1/1", "11", "closed"][..]))
            .then(|| table.clone())
            .ok_or(table)
    })
    .await;
    assert!(table.starts_with("NAME"), "{table}");
    let object: Value = serde_json::from_str(
        &kubectl(&api, home.path(), &["get", "mcps", "demo", "-o", "json"])
            .await
            .expect("get -o json"),
    )
    .expect("JSON");
    let status = &object["status"];
    assert_eq!(condition(&object, "Accepted")["status"], "True", "{status}");
    assert_eq!(condition(&object, "Ready")["status"], "True", "{status}");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["readyReplicas"], 1);
    assert_eq!(status["updatedReplicas"], 1);
    assert!(!status["protocolVersion"].as_str().unwrap_or("").is_empty());

    // A spec change is a new generation; the status follows it, and the
    // status writes themselves never made one.
    std::fs::write(&file, demo_resource("demo", &format!("{tag}-v2"))).expect("rewrite");
    let configured = kubectl(
        &api,
        home.path(),
        &["apply", "--validate=false", "-f", &file],
    )
    .await
    .expect("kubectl apply again");
    assert!(configured.contains("configured"), "{configured}");
    eventually("observedGeneration 2, ready", EVENTUALLY, || async {
        let object: Value = serde_json::from_str(
            &kubectl(&api, home.path(), &["get", "mcps", "demo", "-o", "json"]).await?,
        )
        .map_err(|e| e.to_string())?;
        (object["metadata"]["generation"] == 2
            && object["status"]["observedGeneration"] == 2
            && condition(&object, "Ready")["status"] == "True")
            .then_some(())
            .ok_or(object.to_string())
    })
    .await;

    // An invalid resource is not accepted, says why, and breaks nothing.
    let bad = home.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata:\n  name: bad\n  namespace: default\nspec:\n  transport:\n    stdio: {command: x}\n    http: {url: 'http://127.0.0.1:1/mcp'}\n",
    )
    .expect("write bad resource");
    kubectl(
        &api,
        home.path(),
        &[
            "apply",
            "--validate=false",
            "-f",
            &bad.display().to_string(),
        ],
    )
    .await
    .expect("the stand-in stores it (it does not run CEL)");
    let rejected = eventually("bad is not accepted", EVENTUALLY, || async {
        let object: Value = serde_json::from_str(
            &kubectl(&api, home.path(), &["get", "mcps", "bad", "-o", "json"]).await?,
        )
        .map_err(|e| e.to_string())?;
        (condition(&object, "Accepted")["status"] == "False")
            .then(|| object.clone())
            .ok_or(object.to_string())
    })
    .await;
    let accepted = condition(&rejected, "Accepted");
    assert_eq!(accepted["reason"], "Invalid");
    assert!(
        accepted["message"]
            .as_str()
            .unwrap_or("")
            .contains("exactly one transport"),
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

    // Deleting the resource withdraws its tools.
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
