//! Values read in the background: kept through failed reads, and a hung
//! read holding up only the server waiting for it; client tokens from
//! Secrets leave only as digests.

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;

use super::*;

fn token_ref() -> ValueRef {
    ValueRef {
        kind: RefKind::Secret,
        name: "creds".into(),
        key: "token".into(),
        optional: false,
    }
}

fn wanted() -> BTreeMap<ValueKey, ValueRef> {
    BTreeMap::from([(value_key("team", &token_ref()), token_ref())])
}

fn respond(respond: mock::SendResponse<Response<Body>>, (status, body): (u16, Value)) {
    let body = Body::from(body.to_string().into_bytes());
    let response = Response::builder().status(status).body(body);
    respond.send_response(response.expect("a valid response"));
}

/// An API server that answers each read of the Secret with the next
/// of `answers` (`None`: never answers).
fn api_server(answers: Vec<Option<(u16, Value)>>) -> Client {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        let mut unanswered = Vec::new();
        for answer in answers {
            let Some((request, responder)) = handle.next_request().await else {
                return;
            };
            assert_eq!(
                request.uri().path(),
                "/api/v1/namespaces/team/secrets/creds"
            );
            match answer {
                Some(answer) => respond(responder, answer),
                None => unanswered.push(responder),
            }
        }
        // Hung reads stay hung until the test ends.
        std::future::pending::<()>().await;
    });
    Client::new(service, "default")
}

/// An API server that answers a read of Secret `name` with
/// `answers[name]`, and never answers a read of any other.
fn api_server_by_name(answers: BTreeMap<&'static str, (u16, Value)>) -> Client {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        let mut unanswered = Vec::new();
        while let Some((request, responder)) = handle.next_request().await {
            let name = request.uri().path().rsplit('/').next().unwrap_or("");
            match answers.get(name) {
                Some(answer) => respond(responder, answer.clone()),
                None => unanswered.push(responder),
            }
        }
    });
    Client::new(service, "default")
}

fn secret(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": name, "namespace": "team" },
        "data": { "token": "czNjcjN0" }
    })
}

fn status(code: u16, reason: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{reason} (test)"), "reason": reason, "code": code
    })
}

fn last_token(values: &Values) -> Option<&Option<String>> {
    values.last.get(&value_key("team", &token_ref()))
}

/// Waits for every read under way, as the source's loop takes them in.
async fn settle_all(values: &mut Values) {
    while let Some(read) = values.reads.next().await {
        values.settle(read);
    }
}

/// An `McpServer` named `name` in `team` whose env reads key `token`
/// of each Secret in `secrets`, at resourceVersion `version`.
fn object(name: &str, secrets: &[&str], version: u32) -> (ObjectKey, DynamicObject) {
    let env: Vec<Value> = secrets
        .iter()
        .map(|secret| {
            json!({ "name": secret.to_uppercase(),
                    "valueFrom": { "secretKeyRef": { "name": secret, "key": "token" } } })
        })
        .collect();
    let object = json!({
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": { "name": name, "namespace": "team", "resourceVersion": version.to_string() },
        "spec": { "transport": { "stdio": { "command": "x", "env": env } } },
    });
    let object = serde_json::from_value(object).expect("an McpServer");
    (("team".to_owned(), name.to_owned()), object)
}

/// The env of the server `name` in namespace `team`.
fn env_of(registry: &Registry, name: &str) -> Option<Vec<String>> {
    match &registry.servers.get(&format!("team/{name}"))?.transport {
        ValidTransport::Stdio { env, .. } => Some(env.keys().cloned().collect()),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_read_keeps_the_last_value_and_only_not_found_removes_it() {
    let client = api_server(vec![
        Some((200, secret("creds"))),
        Some((503, status(503, "ServiceUnavailable"))),
        Some((429, status(429, "TooManyRequests"))),
        None,
        Some((404, status(404, "NotFound"))),
    ]);
    let mut values = Values::new(client);
    values.want(wanted());
    assert!(values.pending());
    settle_all(&mut values).await;
    assert_eq!(last_token(&values), Some(&Some("s3cr3t".to_owned())));
    assert!(values.retry_at.is_none());

    // 503, 429, then no answer at all: the value stays, and retries
    // come sooner than the refresh, each later than the one before.
    let mut delays = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        values.refresh();
        settle_all(&mut values).await;
        assert_eq!(last_token(&values), Some(&Some("s3cr3t".to_owned())));
        let retry_at = values.retry_at.expect("a retry is scheduled");
        delays.push(retry_at - Instant::now());
        assert!(retry_at - started <= READ_TIMEOUT + REFRESH);
        values.retry_at = None;
    }
    assert!(delays.windows(2).all(|d| d[0] < d[1]), "{delays:?}");
    assert!(delays[0] < REFRESH, "{delays:?}");

    // Only the API server saying it does not exist makes it missing.
    values.retry();
    settle_all(&mut values).await;
    assert_eq!(last_token(&values), Some(&None));
    assert!(values.retry_at.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_value_never_read_is_an_issue_that_says_it_is_retried() {
    let client = api_server(vec![Some((500, status(500, "InternalError")))]);
    let mut values = Values::new(client);
    values.want(wanted());
    settle_all(&mut values).await;
    assert!(values.retry_at.is_some());
    assert!(!values.pending());
    let yaml = "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata: {name: s}\nspec: {transport: {stdio: {command: x, env: [{name: TOKEN, valueFrom: {secretKeyRef: {name: creds, key: token}}}]}}}\n";
    let yaml = serde_yaml::from_str(yaml).expect("YAML");
    let server = parse_resource(yaml, crate::registry::UnknownFields::Ignore).expect("valid");
    let Resolved::Invalid((_, field, message)) = resolve("team", server, &values) else {
        panic!("not read yet is an issue");
    };
    assert_eq!(
        field.as_deref(),
        Some("spec.transport.stdio.env[TOKEN].valueFrom")
    );
    assert!(message.contains("could not be read yet"), "{message}");
}

/// A read that never answers holds up only the server waiting for it:
/// the others are published at once, and a server whose changed spec
/// waits for a first read keeps its previous spec meanwhile.
#[tokio::test(start_paused = true)]
async fn a_hung_read_holds_up_only_the_server_waiting_for_it() {
    let client = api_server_by_name(BTreeMap::from([("creds", (200, secret("creds")))]));
    let mut values = Values::new(client);
    let mut servers = Servers::default();
    let none = Objects::new();
    let mut objects =
        BTreeMap::from([object("alpha", &["creds"], 1), object("beta", &["hung"], 2)]);
    let registry = servers.assemble(&objects, &none, &none, &none, &mut values);
    assert!(registry.servers.is_empty() && registry.issues.is_empty());
    assert!(values.pending(), "the first registry waits");

    let read = values.reads.next().await.expect("a read");
    assert_eq!(read.0.2, "creds", "the answered read settles first");
    assert!(values.settle(read), "alpha's value is known now");
    let registry = servers.assemble(&objects, &none, &none, &none, &mut values);
    assert_eq!(env_of(&registry, "alpha"), Some(vec!["CREDS".to_owned()]));
    assert!(!registry.servers.contains_key("team/beta"));
    assert!(registry.issues.is_empty(), "{:?}", registry.issues);

    // alpha now also wants a value whose read hangs: it stays as it was.
    objects.extend([object("alpha", &["creds", "later"], 3)]);
    let registry = servers.assemble(&objects, &none, &none, &none, &mut values);
    assert_eq!(env_of(&registry, "alpha"), Some(vec!["CREDS".to_owned()]));

    // The hung reads time out: never read, they are issues (retried).
    settle_all(&mut values).await;
    let registry = servers.assemble(&objects, &none, &none, &none, &mut values);
    let sources: Vec<&str> = registry.issues.iter().map(|i| i.source.as_str()).collect();
    assert_eq!(sources, ["mcpservers/team/alpha", "mcpservers/team/beta"]);
    assert!(values.retry_at.is_some());
}

/// Header values come from Secrets as env values do; a trailing line break
/// (a Secret made from a file) is dropped, one inside is refused.
#[tokio::test(start_paused = true)]
async fn header_values_come_from_secrets_without_their_trailing_line_break() {
    let with_key = |name: &str, base64: &str| {
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": name, "namespace": "team" },
            "data": { "key": base64 }
        })
    };
    let client = api_server_by_name(BTreeMap::from([
        // "key-1\n" and "a\nb"
        ("file", (200, with_key("file", "a2V5LTEK"))),
        ("split", (200, with_key("split", "YQpi"))),
    ]));
    let mut values = Values::new(client);
    let server = |secret: &str| {
        let yaml = format!(
            "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: s}}\nspec: {{transport: {{http: {{url: 'http://mcp:8080/mcp', headers: [{{name: X-Api-Key, valueFrom: {{secretKeyRef: {{name: {secret}, key: key}}}}}}]}}}}}}\n"
        );
        let yaml = serde_yaml::from_str(&yaml).expect("YAML");
        parse_resource(yaml, crate::registry::UnknownFields::Ignore).expect("valid")
    };
    let (file, split) = (server("file"), server("split"));
    let refs: BTreeMap<ValueKey, ValueRef> = references(&file)
        .chain(references(&split))
        .map(|r| (value_key("team", r), r.clone()))
        .collect();
    assert_eq!(refs.len(), 2, "header references are read");
    values.want(refs);
    settle_all(&mut values).await;

    let Resolved::Ready(resolved) = resolve("team", file, &values) else {
        panic!("resolved");
    };
    let ValidTransport::Http {
        headers,
        headers_from,
        ..
    } = &resolved.transport
    else {
        panic!("http");
    };
    assert_eq!(headers["X-Api-Key"], "key-1");
    assert!(headers_from.is_empty());

    let Resolved::Invalid((_, field, message)) = resolve("team", split, &values) else {
        panic!("a line break inside is refused");
    };
    assert_eq!(
        field.as_deref(),
        Some("spec.transport.http.headers[X-Api-Key].valueFrom")
    );
    assert!(message.contains("line break"), "{message}");
    assert!(
        !message.contains("a\nb"),
        "the value stays out of the message"
    );
}

/// An `McpClient` in `team` named `name` whose token is key `token` of
/// Secret `secret`.
fn client_object(name: &str, secret: &str) -> (ObjectKey, DynamicObject) {
    let object = json!({
        "apiVersion": API_VERSION, "kind": "McpClient",
        "metadata": { "name": name, "namespace": "team", "resourceVersion": "1" },
        "spec": { "groups": ["dev"], "token": { "valueFrom": { "secretKeyRef": { "name": secret, "key": "token" } } } },
    });
    let object = serde_json::from_value(object).expect("an McpClient");
    (("team".to_owned(), name.to_owned()), object)
}

/// A client's token is read from its Secret and kept as its digest; one
/// whose Secret is missing is an issue on that client alone; a policy
/// object is parsed as a file's would be.
#[tokio::test(start_paused = true)]
async fn client_tokens_come_from_secrets_as_digests() {
    let client = api_server_by_name(BTreeMap::from([
        (
            "creds",
            (
                200,
                // "s3cr3t-s3cr3t-s3cr3t"
                json!({ "apiVersion": "v1", "kind": "Secret",
                        "metadata": { "name": "creds", "namespace": "team" },
                        "data": { "token": "czNjcjN0LXMzY3IzdC1zM2NyM3Q=" } }),
            ),
        ),
        ("gone", (404, status(404, "NotFound"))),
    ]));
    let mut values = Values::new(client);
    let mut servers = Servers::default();
    let clients = BTreeMap::from([
        client_object("alice", "creds"),
        client_object("bob", "gone"),
    ]);
    let policy = json!({
        "apiVersion": API_VERSION, "kind": "McpAccessPolicy",
        "metadata": { "name": "dev", "namespace": "team", "managedFields": [{ "manager": "kubectl" }] },
        "spec": { "subjects": { "groups": ["dev"] }, "deny": { "tools": ["utils.*"] } },
    });
    let policies = BTreeMap::from([(
        ("team".to_owned(), "dev".to_owned()),
        serde_json::from_value(policy).expect("an McpAccessPolicy"),
    )]);
    let registry = servers.assemble(
        &Objects::new(),
        &clients,
        &policies,
        &Objects::new(),
        &mut values,
    );
    assert!(registry.clients.is_empty(), "tokens not read yet");
    assert!(values.pending(), "the first registry waits for them");

    settle_all(&mut values).await;
    let registry = servers.assemble(
        &Objects::new(),
        &clients,
        &policies,
        &Objects::new(),
        &mut values,
    );
    let alice = registry.clients.get("alice").expect("alice");
    assert_eq!(
        alice.token_sha256(),
        Some("759abb7a952ef123e65cf0513f29f20262b60594527e522f1b7da261be1d62ab")
    );
    assert!(!registry.clients.contains_key("bob"));
    let issue = &registry.issues[0];
    assert_eq!(
        (issue.source.as_str(), issue.field.as_deref()),
        ("mcpclients/team/bob", Some("spec.token.valueFrom"))
    );
    assert!(
        issue.message.contains("does not exist"),
        "{}",
        issue.message
    );
    assert_eq!(registry.policies["team/dev"].deny.tools, ["utils.*"]);
}
