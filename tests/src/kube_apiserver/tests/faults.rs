//! Faults a test switches on, answered in the real server's words.

use super::*;

const SECRETS: &str = "/api/v1/namespaces/default/secrets";

#[tokio::test]
async fn throttling_is_answered_as_priority_and_fairness_answers() {
    let api = KubeApiServer::start().await;
    let throttle = api.fault(Fault::status(429).retry_after(3).on("secrets").times(1));
    let answer = get(&api, &format!("{SECRETS}/token")).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), Some("3"));
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(answer.text, "Too many requests, please try again later.\n");
    assert_eq!(throttle.hits(), 1);

    // Struck once: the next request is served, in the real 404's words.
    let answer = get(&api, &format!("{SECRETS}/token")).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json()["message"], r#"secrets "token" not found"#);
    assert_eq!(throttle.hits(), 1);
}

#[tokio::test]
async fn server_errors_are_statuses_in_the_real_words() {
    let api = KubeApiServer::start().await;
    let unavailable = api.fault(Fault::status(503).on("secrets"));
    let answer = get(&api, &format!("{SECRETS}/token")).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("retry-after"), Some("1"));
    let status = answer.json();
    assert_eq!(
        (&status["kind"], &status["reason"], &status["code"]),
        (&json!("Status"), &json!("ServiceUnavailable"), &json!(503))
    );
    assert_eq!(status["message"], "apiserver is shutting down");
    unavailable.lift();

    api.fault(Fault::status(500).on("secrets").times(1));
    let status = get(&api, &format!("{SECRETS}/token")).await.json();
    assert_eq!(status["reason"], "InternalError");
    assert_eq!(
        status["message"],
        "Internal error occurred: etcdserver: request timed out"
    );
    assert_eq!(
        status["details"]["causes"][0]["message"],
        "etcdserver: request timed out"
    );

    api.fault(Fault::status(504).on("secrets").times(1));
    let answer = get(&api, &format!("{SECRETS}/token")).await;
    assert_eq!(answer.status, 504);
    assert_eq!(
        answer.json()["message"],
        "Timeout: request did not complete within requested timeout - context deadline exceeded"
    );
    assert_eq!(get(&api, &format!("{SECRETS}/token")).await.status, 404);
}

#[tokio::test]
async fn rbac_denials_name_the_user_verb_resource_and_namespace() {
    let api = KubeApiServer::start().await;
    let mcps = |ns: &str| format!("/apis/switchboard.dev/v1alpha1/namespaces/{ns}/mcpservers");
    let denied = api.fault(Fault::forbidden().on("mcpservers").in_namespace("team-b"));
    let answer = get(&api, &mcps("team-b")).await;
    assert_eq!(answer.status, 403);
    let status = answer.json();
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(
        status["message"],
        r#"mcpservers.switchboard.dev is forbidden: User "system:anonymous" cannot list resource "mcpservers" in API group "switchboard.dev" in the namespace "team-b""#
    );
    assert_eq!(
        status["details"],
        json!({ "group": "switchboard.dev", "kind": "mcpservers" })
    );
    let watch = get(&api, &format!("{}?watch=true", mcps("team-b"))).await;
    assert!(
        watch.json()["message"]
            .as_str()
            .unwrap_or("")
            .contains(r#"cannot watch resource "mcpservers""#),
        "{}",
        watch.text
    );
    // Other namespaces, and the cluster-wide list, are not denied.
    assert_eq!(get(&api, &mcps("team-a")).await.status, 200);
    assert_eq!(
        get(&api, "/apis/switchboard.dev/v1alpha1/mcpservers")
            .await
            .status,
        200
    );
    denied.lift();
    assert_eq!(get(&api, &mcps("team-b")).await.status, 200);

    api.fault(Fault::forbidden().on("secrets").verb("get"));
    let status = get(&api, "/api/v1/namespaces/team-b/secrets/token")
        .await
        .json();
    assert_eq!(
        status["message"],
        r#"secrets "token" is forbidden: User "system:anonymous" cannot get resource "secrets" in API group "" in the namespace "team-b""#
    );
    assert_eq!(status["details"]["name"], "token");
    assert_eq!(get(&api, SECRETS).await.status, 200, "list is not get");

    api.fault(Fault::forbidden().on("mcpservers/status"));
    let patch = json!({ "status": {} });
    let answer = send(
        &api,
        Method::PATCH,
        &format!("{}/demo/status", mcps("team-a")),
        Some(("application/merge-patch+json", &patch)),
    )
    .await;
    assert!(
        answer
            .json()["message"]
            .as_str()
            .unwrap_or("")
            .starts_with(r#"mcpservers.switchboard.dev "demo" is forbidden: User "system:anonymous" cannot patch resource "mcpservers/status" in API group "switchboard.dev" in the namespace "team-a""#),
        "{}",
        answer.text
    );
    api.clear_faults();
    api.fault(Fault::forbidden().verb("get"));
    let status = get(&api, "/version").await.json();
    assert_eq!(
        status["message"],
        r#"forbidden: User "system:anonymous" cannot get path "/version""#
    );
}

#[tokio::test]
async fn a_hung_request_is_held_until_its_client_gives_up() {
    let api = KubeApiServer::start().await;
    let hang = api.fault(Fault::hang().on("secrets").named("token"));
    let url = format!("http://{}{SECRETS}/token", api.addr);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let request = tokio::spawn(async move { impatient.get(url).send().await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while hang.held() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Meanwhile everything else is served.
    assert_eq!(get(&api, &format!("{SECRETS}/other")).await.status, 404);
    let gave_up = request.await.expect("task").expect_err("no answer");
    assert!(gave_up.is_timeout(), "{gave_up}");
    while hang.held() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "still held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(hang.hits(), 1);
}

#[tokio::test]
async fn a_slow_request_is_answered_late_as_usual() {
    let api = KubeApiServer::start().await;
    api.fault(Fault::slow(Duration::from_millis(300)).on("secrets"));
    let started = std::time::Instant::now();
    let answer = get(&api, &format!("{SECRETS}/token")).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(answer.status, 404);
}
