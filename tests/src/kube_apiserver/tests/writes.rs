//! Writes the real server refuses: stale resourceVersions, statuses
//! outside the schema, events outside the rules.

use super::*;

const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const MERGE: &str = "application/merge-patch+json";

fn event(name: &str, note: &str) -> Value {
    json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": { "name": name, "namespace": "default" },
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "switchboard-control-plane", "reportingInstance": "pod-a",
        "action": "Ready", "reason": "Ready", "type": "Normal", "note": note,
        "regarding": { "apiVersion": "switchboard.dev/v1alpha1", "kind": "McpServer",
                       "name": "demo", "namespace": "default" },
    })
}

#[tokio::test]
async fn writes_with_a_stale_resource_version_conflict_status_included() {
    let api = KubeApiServer::start().await;
    let created = create(
        &api,
        MCPS,
        &server(json!({ "transport": { "stdio": { "command": "c" } } })),
    )
    .await
    .json();
    let stale = created["metadata"]["resourceVersion"].clone();
    let status = format!("{MCPS}/demo/status");
    let patch = json!({ "metadata": { "resourceVersion": stale }, "status": { "prefix": "demo" } });
    let answer = send(&api, Method::PATCH, &status, Some((MERGE, &patch))).await;
    assert_eq!(answer.status, 200, "{}", answer.text);

    // The status write made `stale` stale: for the status too.
    let conflict = r#"Operation cannot be fulfilled on mcpservers.switchboard.dev "demo": the object has been modified; please apply your changes to the latest version and try again"#;
    let answer = send(&api, Method::PATCH, &status, Some((MERGE, &patch))).await;
    assert_eq!(answer.status, 409, "{}", answer.text);
    assert_eq!(answer.json()["reason"], "Conflict");
    assert_eq!(answer.json()["message"], conflict);
    let mut replaced = answer_object(&api, &format!("{MCPS}/demo")).await;
    replaced["metadata"]["resourceVersion"] = stale.clone();
    let answer = send(
        &api,
        Method::PUT,
        &status,
        Some(("application/json", &replaced)),
    )
    .await;
    assert_eq!(answer.json()["message"], conflict);
    let answer = send(
        &api,
        Method::PUT,
        &format!("{MCPS}/demo"),
        Some(("application/json", &replaced)),
    )
    .await;
    assert_eq!(answer.json()["message"], conflict);

    // A core resource is named without a group.
    let secret = create(
        &api,
        "/api/v1/namespaces/default/secrets",
        &secret("token", "1"),
    )
    .await
    .json();
    let mut next = secret.clone();
    next["metadata"]["resourceVersion"] = json!("1");
    let answer = send(
        &api,
        Method::PUT,
        "/api/v1/namespaces/default/secrets/token",
        Some(("application/json", &next)),
    )
    .await;
    assert_eq!(answer.status, 409);
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap_or("")
            .starts_with(r#"Operation cannot be fulfilled on secrets "token": "#),
        "{}",
        answer.text
    );
}

async fn answer_object(api: &KubeApiServer, path: &str) -> Value {
    get(api, path).await.json()
}

#[tokio::test]
async fn status_writes_are_checked_against_the_schema() {
    let api = KubeApiServer::start().await;
    create(
        &api,
        MCPS,
        &server(json!({ "transport": { "stdio": { "command": "c" } } })),
    )
    .await;
    let patch = json!({ "status": { "conditions": [
        { "type": "Ready", "status": "True", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z" }
    ] } });
    let answer = send(
        &api,
        Method::PATCH,
        &format!("{MCPS}/demo/status"),
        Some((MERGE, &patch)),
    )
    .await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    assert_eq!(
        answer.json()["message"],
        r#"McpServer.switchboard.dev "demo" is invalid: [status.conditions[0].reason: Required value, <nil>: Invalid value: "null": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation]"#
    );
}

#[tokio::test]
async fn events_are_validated_as_the_real_server_validates_them() {
    let api = KubeApiServer::start().await;
    let full = "n".repeat(1024);
    let answer = create(&api, EVENTS, &event("demo.1", &full)).await;
    assert_eq!(answer.status, 201, "1024 bytes fit: {}", answer.text);

    // Bytes, not characters: 512 two-byte characters and one more byte.
    let long = format!("{}x", "é".repeat(512));
    let answer = create(&api, EVENTS, &event("demo.2", &long)).await;
    assert_eq!(answer.status, 422, "{}", answer.text);
    let status = answer.json();
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(
        status["message"],
        r#"Event.events.k8s.io "demo.2" is invalid: message: Invalid value: "": can have at most 1024 characters"#
    );
    assert_eq!(status["details"]["causes"][0]["field"], "message");

    let mut bare = event("demo.3", "");
    for field in ["reportingController", "action"] {
        bare.as_object_mut().map(|o| o.remove(field));
    }
    bare["type"] = json!("Info");
    let status = create(&api, EVENTS, &bare).await.json();
    let fields: Vec<&str> = status["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "reportingController",
            "reportingController",
            "reportingController",
            "action",
            "type"
        ]
    );
    let message = status["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with(r#"Event.events.k8s.io "demo.3" is invalid: [reportingController: Required value, reportingController: Invalid value: "": name part must be non-empty, reportingController: Invalid value: "": name part must consist of alphanumeric characters"#),
        "{message}"
    );
    assert!(
        message.ends_with(
            r#", action: Required value, type: Invalid value: "": has invalid value: Info]"#
        ),
        "{message}"
    );
    // Without an `eventTime` the legacy rules only compare namespaces.
    let mut legacy = event("demo.4", "");
    legacy.as_object_mut().map(|o| o.remove("eventTime"));
    legacy["regarding"]["namespace"] = json!("other");
    let answer = create(&api, EVENTS, &legacy).await;
    assert_eq!(
        answer.json()["message"],
        r#"Event.events.k8s.io "demo.4" is invalid: [involvedObject.namespace: Invalid value: "other": does not match event.namespace, eventTime: Required value]"#
    );

    // A repeat is a series patch; a note cannot change after the fact.
    let path = format!("{EVENTS}/demo.1");
    let series =
        json!({ "series": { "count": 1, "lastObservedTime": "2026-01-01T00:00:01.000000Z" } });
    let answer = send(&api, Method::PATCH, &path, Some((MERGE, &series))).await;
    assert_eq!(
        answer.json()["message"],
        r#"Event.events.k8s.io "demo.1" is invalid: series.count: Invalid value: "": should be at least 2"#
    );
    let series =
        json!({ "series": { "count": 2, "lastObservedTime": "2026-01-01T00:00:01.000000Z" } });
    let answer = send(&api, Method::PATCH, &path, Some((MERGE, &series))).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let renote = json!({ "note": "other" });
    let answer = send(&api, Method::PATCH, &path, Some((MERGE, &renote))).await;
    assert_eq!(
        answer.json()["message"],
        r#"Event.events.k8s.io "demo.1" is invalid: message: Invalid value: "other": field is immutable"#
    );
}
