//! The stand-in over HTTP: CRDs through the API, and what an unknown field
//! costs under each `fieldValidation`; by topic, its faults, watches and
//! lists, and what writes are refused.

mod faults;
mod watch;
mod writes;

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::*;

/// One answer: status, headers and body.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `method path`, with `body` as JSON (or as `content_type`).
async fn send(
    api: &KubeApiServer,
    method: Method,
    path: &str,
    body: Option<(&str, &Value)>,
) -> Answer {
    let mut request = reqwest::Client::new().request(method, format!("http://{}{path}", api.addr));
    if let Some((content_type, body)) = body {
        request = request
            .header("content-type", content_type)
            .body(body.to_string());
    }
    let response = request.send().await.expect("request");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        text: response.text().await.expect("body"),
    }
}

async fn get(api: &KubeApiServer, path: &str) -> Answer {
    send(api, Method::GET, path, None).await
}

async fn create(api: &KubeApiServer, path: &str, body: &Value) -> Answer {
    send(api, Method::POST, path, Some(("application/json", body))).await
}

fn secret(name: &str, value: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": name }, "stringData": { "token": value },
    })
}

fn crd() -> Value {
    serde_yaml::from_str(CRDS[0]).expect("the chart CRD parses")
}

fn server(spec: Value) -> Value {
    json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "McpServer",
        "metadata": { "name": "demo" }, "spec": spec,
    })
}

/// POSTs `body` to `path`; the status, `Warning` headers and body.
async fn post(api: &KubeApiServer, path: &str, body: &Value) -> (u16, Vec<String>, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{}{path}", api.addr))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let warnings = response
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    (status, warnings, response.json().await.expect("JSON body"))
}

const CRDS_PATH: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
const MCPS: &str = "/apis/switchboard.dev/v1alpha1/namespaces/default/mcpservers";

#[tokio::test]
async fn starts_with_the_chart_crds_established() {
    let api = KubeApiServer::start().await;
    let crds = api.objects("customresourcedefinitions");
    let names: Vec<&str> = crds
        .iter()
        .filter_map(|crd| crd["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "mcpaccesspolicies.switchboard.dev",
            "mcpclients.switchboard.dev",
            "mcpgatewayconfigs.switchboard.dev",
            "mcpservers.switchboard.dev"
        ]
    );
    for crd in &crds {
        assert_eq!(crd["status"]["conditions"][1]["type"], "Established");
        assert_eq!(crd["status"]["storedVersions"], json!(["v1alpha1"]));
    }
}

#[tokio::test]
#[should_panic(expected = "must not be empty for specified object fields")]
async fn refuses_to_start_with_a_crd_a_cluster_would_refuse() {
    let mut crd = crd();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["health"]
        ["properties"]["tool"]["properties"]["arguments"] = json!({});
    KubeApiServer::start_with_crd(crd).await;
}

#[tokio::test]
async fn a_crd_created_through_the_api_is_reviewed() {
    let api = KubeApiServer::start().await;
    let mut other = crd();
    other["metadata"]["name"] = json!("widgets.switchboard.dev");
    let (status, _, body) = post(&api, CRDS_PATH, &other).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["message"],
        r#"CustomResourceDefinition.apiextensions.k8s.io "widgets.switchboard.dev" is invalid: metadata.name: Invalid value: "widgets.switchboard.dev": must be spec.names.plural+"."+spec.group"#
    );
    assert_eq!(body["details"]["causes"][0]["field"], "metadata.name");
    let (status, _, body) = post(&api, CRDS_PATH, &crd()).await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test]
async fn unknown_fields_are_refused_warned_about_or_dropped() {
    let api = KubeApiServer::start().await;
    let spec = json!({ "transport": { "stdio": { "command": "c", "argz": [] } }, "colour": 1 });
    let strict = format!("{MCPS}?fieldValidation=Strict");
    let (status, _, body) = post(&api, &strict, &server(spec.clone())).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["message"],
        r#"McpServer in version "v1alpha1" cannot be handled as a McpServer: strict decoding error: unknown field "spec.colour", unknown field "spec.transport.stdio.argz""#
    );
    let (status, warnings, body) = post(&api, MCPS, &server(spec.clone())).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        warnings,
        [
            r#"299 - "unknown field \"spec.colour\"""#,
            r#"299 - "unknown field \"spec.transport.stdio.argz\"""#
        ]
    );
    assert_eq!(
        body["spec"]["transport"],
        json!({ "stdio": { "command": "c" } })
    );
    assert_eq!(body["spec"]["enabled"], true, "defaulted");
    let mut quiet = server(spec);
    quiet["metadata"]["name"] = json!("quiet");
    let (status, warnings, _) = post(&api, &format!("{MCPS}?fieldValidation=Ignore"), &quiet).await;
    assert_eq!((status, warnings.len()), (201, 0));
}

/// Schema errors and the CRD's CEL rules (no transport), all at once.
#[tokio::test]
async fn invalid_resources_are_refused_with_every_cause() {
    let api = KubeApiServer::start().await;
    let spec = json!({ "namespace": "a.b", "pool": { "max": 65 }, "transport": {} });
    let (status, _, body) = post(&api, MCPS, &server(spec)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["message"],
        r#"McpServer.switchboard.dev "demo" is invalid: [spec.namespace: Invalid value: "a.b": spec.namespace in body should match '^[A-Za-z0-9_-]{1,63}$', spec.pool.max: Invalid value: 65: spec.pool.max in body should be less than or equal to 64, spec.transport: Invalid value: "object": exactly one transport must be set (stdio, http or sse)]"#
    );
    assert_eq!(body["details"]["causes"].as_array().map(Vec::len), Some(3));
}
