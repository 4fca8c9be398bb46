//! The control plane's `/servers` API in directory mode: a server added,
//! replaced and removed over HTTP becomes a file in the registry
//! directory and reaches the gateway like any edit; bad documents and
//! names are refused before anything is written; writes need the admin
//! token, on loopback too.

use e2e::{EVENTUALLY, Switchboard, demo_server_yaml, eventually};
use serde_json::{Value, json};

const ADMIN: &str = "servers-api-admin-token-0123456789";

async fn tool_names(http: &reqwest::Client, sb: &Switchboard) -> Vec<String> {
    let listed: Value = http
        .get(format!("http://{}/tools", sb.gateway_addr))
        .send()
        .await
        .expect("GET /tools")
        .json()
        .await
        .expect("JSON");
    listed["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn servers_added_replaced_and_removed_over_http_reach_the_gateway() {
    let tag = format!("servers-api-{}", std::process::id());
    let mut sb = Switchboard::unstarted();
    let token_file = sb.dir.path().join("admin-token");
    std::fs::write(&token_file, ADMIN).expect("token file");
    sb.write_file("demo.yaml", &demo_server_yaml("demo", &tag, &[]));
    sb.control_args = vec![
        "--admin-token-file".into(),
        token_file.display().to_string(),
    ];
    sb.start_control_plane().await;
    sb.start_gateway().await;
    sb.wait_gateway_ready().await;
    let http = reqwest::Client::new();
    let api = format!("http://{}/servers", sb.control_http);
    let send = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap_or_default())
    };

    let (status, _) = send(http.get(&api)).await;
    assert_eq!(status, 401, "reads need the admin token too");
    let (status, listed) = send(http.get(&api).bearer_auth(ADMIN)).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["servers"][0]["name"], "demo", "{listed}");
    assert!(
        listed["servers"][0]["source"]
            .as_str()
            .is_some_and(|s| s.ends_with("demo.yaml")),
        "{listed}"
    );

    // The OpenAPI document's McpServer schema takes what POST takes.
    let (status, document) = send(
        http.get(format!("http://{}/openapi.json", sb.control_http))
            .bearer_auth(ADMIN),
    )
    .await;
    assert_eq!(status, 200);
    let extra_doc: Value =
        serde_yaml::from_str(&demo_server_yaml("extra", "x", &[])).expect("YAML");
    e2e::check_openapi(
        &document,
        "#/components/schemas/McpServer",
        &[extra_doc],
        &[
            json!({ "apiVersion": "switchboard.dev/v1alpha1", "kind": "McpServer",
                  "metadata": { "name": "x" }, "spec": { "transport": "stdio" } }),
        ],
    );

    // Added: a file in the directory, then tools on the gateway.
    let extra = demo_server_yaml("extra", &format!("{tag}-extra"), &[]);
    let (status, _) = send(http.post(&api).body(extra.clone())).await;
    assert_eq!(status, 401, "writes need the admin token");
    let (status, created) = send(http.post(&api).bearer_auth(ADMIN).body(extra.clone())).await;
    assert_eq!(status, 201, "{created}");
    assert!(sb.registry().join("extra.yaml").is_file());
    eventually("extra's tools on the gateway", EVENTUALLY, || async {
        let names = tool_names(&http, &sb).await;
        names
            .contains(&"extra.echo".to_owned())
            .then_some(())
            .ok_or(format!("{names:?}"))
    })
    .await;
    let (status, again) = send(http.post(&api).bearer_auth(ADMIN).body(extra)).await;
    assert_eq!(status, 409, "{again}");

    // Refused before anything is written, naming the field.
    let invalid = "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata: {name: bad}\nspec: {pool: {min: 3, max: 2}, transport: {stdio: {command: x}}}\n";
    let (status, refused) = send(http.post(&api).bearer_auth(ADMIN).body(invalid)).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["field"], "spec.pool.min", "{refused}");
    assert!(!sb.registry().join("bad.yaml").exists());
    let (status, _) = send(http.post(&api).bearer_auth(ADMIN).body("{not yaml")).await;
    assert_eq!(status, 422);

    // Replaced: a new prefix shows.
    let renamed = json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "McpServer",
        "metadata": { "name": "extra" },
        "spec": { "namespace": "more", "transport": { "stdio": {
            "command": "switchboard-gateway", "args": ["demo-server", "--instance", format!("{tag}-more")] } } },
    });
    let (status, wrong) = send(
        http.put(format!("{api}/demo"))
            .bearer_auth(ADMIN)
            .body(renamed.to_string()),
    )
    .await;
    assert_eq!(
        (status, &wrong["field"]),
        (422, &json!("metadata.name")),
        "{wrong}"
    );
    let (status, replaced) = send(
        http.put(format!("{api}/extra"))
            .bearer_auth(ADMIN)
            .body(renamed.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{replaced}");
    eventually("the new prefix", EVENTUALLY, || async {
        let names = tool_names(&http, &sb).await;
        (names.contains(&"more.echo".to_owned()) && !names.contains(&"extra.echo".to_owned()))
            .then_some(())
            .ok_or(format!("{names:?}"))
    })
    .await;

    // Files holding anything else are never written over or removed, and
    // a prefix another server holds is not taken from it.
    let client = "apiVersion: switchboard.dev/v1alpha1\nkind: McpClient\nmetadata: {name: team}\nspec: {token: {sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}}\n";
    sb.write_file("team.yaml", client);
    let team = demo_server_yaml("team", &format!("{tag}-team"), &[]);
    let (status, refused) = send(
        http.put(format!("{api}/team"))
            .bearer_auth(ADMIN)
            .body(team),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    let (status, _) = send(http.delete(format!("{api}/team")).bearer_auth(ADMIN)).await;
    assert_eq!(status, 409);
    assert_eq!(
        std::fs::read_to_string(sb.registry().join("team.yaml")).expect("kept"),
        client
    );
    // (A declared client closes the gateway: this test's calls carry no token.)
    sb.remove_file("team.yaml");
    let squatter = json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "McpServer",
        "metadata": { "name": "aaa" },
        "spec": { "namespace": "demo", "transport": { "stdio": { "command": "x" } } },
    });
    let (status, refused) = send(
        http.post(&api)
            .bearer_auth(ADMIN)
            .body(squatter.to_string()),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    assert!(!sb.registry().join("aaa.yaml").exists());

    // Names that are not servers' never become paths.
    let (status, _) = send(http.delete(format!("{api}/..%2Fdemo")).bearer_auth(ADMIN)).await;
    assert_eq!(status, 400);
    let (status, _) = send(http.delete(format!("{api}/nowhere")).bearer_auth(ADMIN)).await;
    assert_eq!(status, 404);

    // Removed: its file and its tools go; the rest stays.
    let (status, _) = send(http.delete(format!("{api}/extra")).bearer_auth(ADMIN)).await;
    assert_eq!(status, 204);
    assert!(!sb.registry().join("extra.yaml").exists());
    eventually("its tools are gone", EVENTUALLY, || async {
        let names = tool_names(&http, &sb).await;
        (!names.iter().any(|n| n.starts_with("more.")) && names.contains(&"demo.echo".to_owned()))
            .then_some(())
            .ok_or(format!("{names:?}"))
    })
    .await;
}

/// Without an admin token the control plane takes no writes at all, even
/// on loopback: a write decides what commands gateways run.
#[tokio::test]
async fn without_an_admin_token_writes_are_refused() {
    let sb = Switchboard::start(&[]).await;
    let response = reqwest::Client::new()
        .post(format!("http://{}/servers", sb.control_http))
        .body(demo_server_yaml("x", "x", &[]))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 403);
    assert!(!sb.registry().join("x.yaml").exists());
}
