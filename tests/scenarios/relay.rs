//! The relay beyond tools, against a real third-party server:
//! `@modelcontextprotocol/server-everything` (npm, installed by `.ci/test`
//! into `tests/npm`) behind the gateway over stdio. Resources and
//! templates with rewritten URIs, prompts, completions, progress,
//! logging, subscriptions, and the server's own requests (sampling,
//! elicitation) reaching the client session that caused them, never
//! another one. Progress order is checked against the demo server, which
//! can send it back to back.

#![allow(deprecated)] // Sampling and logging: deprecated by SEP-2577, still in use.

use std::{path::PathBuf, sync::Arc, time::Duration};

use e2e::{
    RawSession, Switchboard, demo_server_yaml, eventually, everything_bin, everything_server_yaml,
    free_addr, metric,
};
use parking_lot::Mutex;
use rmcp::{
    ClientHandler, ErrorData, RoleClient, ServiceExt,
    model::{
        ArgumentInfo, CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig,
        CompleteRequestParams, CreateMessageRequestParams, CreateMessageResult,
        ElicitRequestParams, ElicitResult, ElicitationAction, GetPromptRequestParams,
        Implementation, ListRootsResult, LoggingLevel, LoggingMessageNotificationParam,
        ProgressNotificationParam, ReadResourceRequestParams, Reference, ResourceContents,
        ResourceUpdatedNotificationParam, Root, SamplingMessage, SetLevelRequestParams,
        SubscribeRequestParams, UnsubscribeRequestParams,
    },
    service::{NotificationContext, RequestContext, RunningService},
    transport::StreamableHttpClientTransport,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// What one client saw of the relay.
#[derive(Default)]
struct Seen {
    sampling: Vec<String>,
    elicitations: usize,
    progress: Vec<f64>,
    logs: Vec<LoggingMessageNotificationParam>,
    updated: Vec<String>,
}

/// A client that answers the server's requests with its own name, so a
/// test can tell whose answer came back.
#[derive(Clone)]
struct Client {
    name: &'static str,
    seen: Arc<Mutex<Seen>>,
}

type Session = RunningService<RoleClient, Client>;

impl ClientHandler for Client {
    fn get_info(&self) -> ClientConfig {
        let mut capabilities = ClientCapabilities::default();
        capabilities.sampling = Some(Default::default());
        capabilities.elicitation = Some(Default::default());
        capabilities.roots = Some(Default::default());
        ClientConfig::new(capabilities, Implementation::new(self.name, "1.0.0"))
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        let asked = serde_json::to_string(&params.messages).unwrap_or_default();
        self.seen.lock().sampling.push(asked);
        Ok(CreateMessageResult::new(
            SamplingMessage::assistant_text(format!("sampled by {}", self.name)),
            "e2e-model".to_owned(),
        ))
    }

    async fn create_elicitation(
        &self,
        _params: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        self.seen.lock().elicitations += 1;
        let content = json!({ "name": self.name, "check": true });
        Ok(ElicitResult::new(ElicitationAction::Accept).with_content(content))
    }

    async fn list_roots(
        &self,
        _context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        Ok(ListRootsResult::new(vec![Root::new(format!(
            "file:///{}",
            self.name
        ))]))
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.seen.lock().progress.push(params.progress);
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.seen.lock().logs.push(params);
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.seen.lock().updated.push(params.uri);
    }
}

async fn connect(sb: &Switchboard, name: &'static str) -> (Session, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let client = Client {
        name,
        seen: seen.clone(),
    };
    let transport = StreamableHttpClientTransport::from_uri(sb.mcp_url());
    let session = client.serve(transport).await.expect("connect");
    (session, seen)
}

async fn call(session: &Session, tool: &str, arguments: Value) -> CallToolResult {
    let params = CallToolRequestParams::new(tool.to_owned())
        .with_arguments(arguments.as_object().cloned().unwrap_or_default());
    session.call_tool(params).await.expect(tool)
}

/// Every text block of a result, joined.
fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until the gateway lists `tool` (server-everything registers its
/// sampling and elicitation tools only after initialisation).
async fn wait_for_tool(session: &Session, tool: &str) {
    eventually(&format!("{tool} to be listed"), WAIT, || async {
        let tools = session.list_all_tools().await.map_err(|e| e.to_string())?;
        let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
        if names.iter().any(|n| n == tool) {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn resources_prompts_completion_progress_logging_and_subscriptions() {
    let prompts = json!({ "prompts": {
        "exclude": ["resource-*"],
        "rename": { "simple-prompt": "hello" },
        "descriptions": { "args-prompt": "Ask about a city" },
    } });
    let sb = Switchboard::start(&[(
        "everything.yaml",
        &everything_server_yaml("everything", prompts),
    )])
    .await;
    sb.wait_server_state("everything", "ready").await;
    let (session, seen) = connect(&sb, "alice").await;

    // Capabilities are the union of what the servers support.
    let info = session.peer_info().expect("server info");
    let capabilities = &info.capabilities;
    assert!(capabilities.prompts.is_some(), "{capabilities:?}");
    assert!(capabilities.completions.is_some(), "{capabilities:?}");
    assert!(capabilities.logging.is_some(), "{capabilities:?}");
    let resources = capabilities.resources.as_ref().expect("resources");
    assert_eq!(resources.subscribe, Some(true), "{capabilities:?}");

    // Resources: URIs carry the server's prefix and read back through it.
    let listed = session.list_all_resources().await.expect("resources/list");
    assert!(!listed.is_empty());
    assert!(
        listed
            .iter()
            .all(|r| r.uri.starts_with("everything+demo://")),
        "{:?}",
        listed.iter().map(|r| &r.uri).collect::<Vec<_>>()
    );
    let uri = listed[0].uri.clone();
    let read = session
        .read_resource(ReadResourceRequestParams::new(uri.clone()))
        .await
        .expect("resources/read");
    let (ResourceContents::TextResourceContents { uri: got, .. }
    | ResourceContents::BlobResourceContents { uri: got, .. }) = &read.contents[0]
    else {
        panic!("{read:?}");
    };
    assert_eq!(got, &uri, "contents name the URI the client asked for");

    // Templates: prefixed too, and an expansion is routed to the server.
    let templates = session
        .list_all_resource_templates()
        .await
        .expect("resources/templates/list");
    let template = templates
        .iter()
        .find(|t| t.uri_template.contains("dynamic/text/{"))
        .unwrap_or_else(|| panic!("{templates:?}"));
    assert!(template.uri_template.starts_with("everything+demo://"));
    let expanded = "everything+demo://resource/dynamic/text/3";
    let read = session
        .read_resource(ReadResourceRequestParams::new(expanded))
        .await
        .expect("read a template expansion");
    assert!(
        matches!(&read.contents[0], ResourceContents::TextResourceContents { text, .. } if !text.is_empty()),
        "{read:?}"
    );
    let unknown = session
        .read_resource(ReadResourceRequestParams::new("nosuch+x://y"))
        .await
        .expect_err("unknown resource");
    assert!(unknown.to_string().contains("nosuch+x://y"), "{unknown}");

    // Prompts: namespaced like tools, filtered, renamed and described as
    // the McpServer says; arguments relayed.
    let prompts = session.list_all_prompts().await.expect("prompts/list");
    let names: Vec<_> = prompts.iter().map(|p| p.name.as_str()).collect();
    assert!(names.contains(&"everything.args-prompt"), "{names:?}");
    assert!(names.contains(&"everything.hello"), "{names:?}");
    let hidden = |n: &&str| n.contains("resource-prompt") || n.contains("simple-prompt");
    assert!(!names.iter().any(hidden), "{names:?}");
    let described = prompts.iter().find(|p| p.name == "everything.args-prompt");
    assert_eq!(
        described.and_then(|p| p.description.as_deref()),
        Some("Ask about a city")
    );
    let renamed = session
        .get_prompt(GetPromptRequestParams::new("everything.hello"))
        .await
        .expect("a renamed prompt routes to the server's name");
    assert!(!renamed.messages.is_empty(), "{renamed:?}");
    let excluded = session
        .get_prompt(GetPromptRequestParams::new("everything.resource-prompt"))
        .await
        .expect_err("an excluded prompt is not served");
    assert!(
        excluded.to_string().contains("resource-prompt"),
        "{excluded}"
    );
    let mut arguments = serde_json::Map::new();
    arguments.insert("city".to_owned(), json!("Lisbon"));
    let prompt = session
        .get_prompt(GetPromptRequestParams::new("everything.args-prompt").with_arguments(arguments))
        .await
        .expect("prompts/get");
    let messages = serde_json::to_string(&prompt.messages).expect("json");
    assert!(messages.contains("Lisbon"), "{messages}");
    let unknown = session
        .get_prompt(GetPromptRequestParams::new("everything.nope"))
        .await
        .expect_err("unknown prompt");
    assert!(unknown.to_string().contains("everything.nope"), "{unknown}");

    // Completion: the prompt reference is rewritten to the server's name.
    let completion = session
        .complete(CompleteRequestParams::new(
            Reference::for_prompt("everything.completable-prompt"),
            ArgumentInfo::new("department", "E"),
        ))
        .await
        .expect("completion/complete");
    assert!(
        completion
            .completion
            .values
            .iter()
            .any(|v| v.starts_with('E')),
        "{completion:?}"
    );

    // Progress: the client's own token, in order, to the end.
    let done = call(
        &session,
        "everything.trigger-long-running-operation",
        json!({ "duration": 1, "steps": 4 }),
    )
    .await;
    assert!(text(&done).contains("completed"), "{done:?}");
    eventually("the last progress notification", WAIT, || async {
        let progress = seen.lock().progress.clone();
        if progress.last() == Some(&4.0) {
            Ok(())
        } else {
            Err(format!("{progress:?}"))
        }
    })
    .await;
    let progress = seen.lock().progress.clone();
    assert!(
        progress.windows(2).all(|w| w[0] < w[1]),
        "progress went backwards: {progress:?}"
    );

    // Logging: the level is the client's, messages name their server.
    session
        .set_level(SetLevelRequestParams::new(LoggingLevel::Debug))
        .await
        .expect("logging/setLevel");
    call(&session, "everything.toggle-simulated-logging", json!({})).await;
    eventually("a log message from the server", WAIT, || async {
        let logs = seen.lock().logs.clone();
        match logs.first() {
            Some(log) => Ok(log.clone()),
            None => Err("none yet".to_owned()),
        }
    })
    .await;
    call(&session, "everything.toggle-simulated-logging", json!({})).await;
    let logs = seen.lock().logs.clone();
    assert!(
        logs.iter().all(|l| l
            .logger
            .as_deref()
            .is_some_and(|l| l.starts_with("everything"))),
        "{logs:?}"
    );

    // Subscriptions: updates arrive under the client's URI.
    session
        .subscribe(SubscribeRequestParams::new(uri.clone()))
        .await
        .expect("resources/subscribe");
    call(&session, "everything.toggle-subscriber-updates", json!({})).await;
    eventually("resources/updated for the subscribed URI", WAIT, || async {
        let updated = seen.lock().updated.clone();
        if updated.contains(&uri) {
            Ok(())
        } else {
            Err(format!("{updated:?}"))
        }
    })
    .await;
    call(&session, "everything.toggle-subscriber-updates", json!({})).await;
    session
        .unsubscribe(UnsubscribeRequestParams::new(uri.clone()))
        .await
        .expect("resources/unsubscribe");
    let updated = seen.lock().updated.clone();
    assert!(updated.iter().all(|u| u == &uri), "{updated:?}");

    // A session holds at most 1024 subscriptions; the next one is refused
    // with a clear error, and unsubscribing makes room.
    let numbered = |n: usize| format!("{uri}?n={n}");
    for n in 0..1024 {
        session
            .subscribe(SubscribeRequestParams::new(numbered(n)))
            .await
            .expect("within the limit");
    }
    let refused = session
        .subscribe(SubscribeRequestParams::new(numbered(1024)))
        .await
        .expect_err("one too many");
    assert!(
        refused
            .to_string()
            .contains("at most 1024 resource subscriptions"),
        "{refused}"
    );
    session
        .unsubscribe(UnsubscribeRequestParams::new(numbered(0)))
        .await
        .expect("resources/unsubscribe");
    session
        .subscribe(SubscribeRequestParams::new(numbered(1024)))
        .await
        .expect("room again");

    session.cancel().await.expect("close");
}

/// Every progress notification of a request, in the order the server sent
/// it and ahead of the response, with the client's own token: rmcp hands
/// notifications to concurrent tasks, so this fails if the gateway does not
/// put them back in order.
#[tokio::test]
async fn progress_arrives_in_order_and_before_the_response() {
    let tag = format!("progress-order-{}", std::process::id());
    let sb = Switchboard::start(&[("fast.yaml", &demo_server_yaml("fast", &tag, &[]))]).await;
    let addr = free_addr();
    let _remote = sb.spawn_demo_http(addr, &tag).await;
    let remote = json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "McpServer",
        "metadata": { "name": "remote" },
        "spec": { "transport": { "http": { "url": format!("http://{addr}/mcp") } } },
    });
    sb.write_file("remote.yaml", &remote.to_string());
    sb.wait_server_state("fast", "ready").await;
    sb.wait_server_state("remote", "ready").await;

    const STEPS: u64 = 40;
    let url = sb.mcp_url();
    let sessions = futures::future::join_all((0..4).map(|_| RawSession::open(&url))).await;
    // Concurrent calls from several sessions share each server's connection.
    let calls = sessions.iter().enumerate().flat_map(|(n, session)| {
        ["fast.progress", "remote.progress"].map(|tool| async move {
            let token = format!("{tool}-{n}");
            let args = json!({ "steps": STEPS, "stepMs": 0 });
            let message = session.call_message(tool, args, json!({ "progressToken": token }));
            (token, session.post_all(message).await)
        })
    });
    for (token, (status, messages)) in futures::future::join_all(calls).await {
        assert_eq!(status, 200, "{token}: {messages:?}");
        let (response, progress) = messages.split_last().expect("a response");
        assert_eq!(
            response["result"]["structuredContent"]["steps"], STEPS,
            "{token}: the response comes last: {messages:?}"
        );
        let relayed: Vec<_> = progress
            .iter()
            .map(|m| {
                assert_eq!(m["method"], "notifications/progress", "{token}: {m}");
                assert_eq!(m["params"]["progressToken"], token.as_str(), "{m}");
                m["params"]["progress"].as_f64().unwrap_or_default()
            })
            .collect();
        let sent: Vec<_> = (1..=STEPS).map(|step| step as f64).collect();
        assert_eq!(relayed, sent, "{token}");
    }
}

/// A request whose stream would carry only its response is answered with
/// that response as JSON; anything before it, or a slow answer, streams.
#[tokio::test]
async fn a_lone_quick_response_is_plain_json_and_everything_else_streams() {
    let tag = format!("framing-{}", std::process::id());
    let sb = Switchboard::start(&[("demo.yaml", &demo_server_yaml("demo", &tag, &[]))]).await;
    sb.wait_server_state("demo", "ready").await;
    let session = RawSession::open(&sb.mcp_url()).await;
    let post = |tool: &str, args: Value, meta: Value| {
        session.post_framed(session.call_message(tool, args, meta))
    };

    // Quick means within the gateway's window (50 ms), which a loaded
    // machine may miss now and then: the answer is right either way.
    let mut posts = 1; // initialize
    let mut quick = async |tool: &str, args: Value| {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            posts += 1;
            let (status, framing, messages) = post(tool, args.clone(), Value::Null).await;
            assert_eq!((status, messages.len()), (200, 1), "{messages:?}");
            if framing == "application/json" {
                return messages[0].clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{tool} never answered as JSON"
            );
        }
    };
    let answer = quick("demo.echo", json!({ "text": "quick" })).await;
    assert_eq!(answer["result"]["structuredContent"]["text"], "quick");
    // An error answer is a lone response too.
    let answer = quick("demo.nope", json!({})).await;
    assert!(answer["error"]["message"].is_string(), "{answer}");

    // Progress first: the stream, every message in it.
    let progress = json!({ "progressToken": "p" });
    let (status, framing, messages) = post(
        "demo.progress",
        json!({ "steps": 2, "stepMs": 0 }),
        progress,
    )
    .await;
    assert_eq!(
        (status, framing.as_str()),
        (200, "text/event-stream"),
        "{messages:?}"
    );
    assert_eq!(messages.len(), 3, "{messages:?}");

    // A slow answer: the stream starts before it, and the answer still comes.
    let (status, framing, messages) = post("demo.sleep", json!({ "ms": 500 }), Value::Null).await;
    assert_eq!(
        (status, framing.as_str()),
        (200, "text/event-stream"),
        "{messages:?}"
    );
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["result"]["structuredContent"]["sleptMs"], 500);

    let exposition = sb.gateway_metrics().await;
    let framed = |framing| {
        metric(
            &exposition,
            "switchboard_responses_total",
            &[("framing", framing)],
        )
    };
    let (json, sse) = (framed("json").unwrap_or(0.0), framed("sse").unwrap_or(0.0));
    // Every answer counted once: the handshake's, the quick ones, the two streams.
    assert_eq!(json + sse, f64::from(posts + 2), "{exposition}");
    assert!(json >= 3.0 && sse >= 2.0, "{exposition}");
}

#[tokio::test]
async fn server_requests_reach_only_the_session_that_caused_them() {
    let per_session = everything_server_yaml("mine", json!({ "sessionMode": "perSession" }));
    let shared = everything_server_yaml("shared", json!({}));
    let sb = Switchboard::start(&[("mine.yaml", &per_session), ("shared.yaml", &shared)]).await;
    sb.wait_server_state("mine", "ready").await;
    sb.wait_server_state("shared", "ready").await;
    let (alice, alice_seen) = connect(&sb, "alice").await;
    let (bob, bob_seen) = connect(&sb, "bob").await;
    wait_for_tool(&alice, "mine.trigger-sampling-request").await;
    wait_for_tool(&alice, "shared.trigger-sampling-request").await;

    // Both sessions ask at the same time; each gets its own answer.
    let tool = "mine.trigger-sampling-request";
    let prompt = json!({ "prompt": "who answers?" });
    let (for_alice, for_bob) = tokio::join!(
        call(&alice, tool, prompt.clone()),
        call(&bob, tool, prompt.clone())
    );
    assert!(
        text(&for_alice).contains("sampled by alice"),
        "{for_alice:?}"
    );
    assert!(text(&for_bob).contains("sampled by bob"), "{for_bob:?}");
    assert_eq!(alice_seen.lock().sampling.len(), 1);
    assert_eq!(bob_seen.lock().sampling.len(), 1);

    // Elicitation goes the same way.
    let elicited = call(&bob, "mine.trigger-elicitation-request", json!({})).await;
    assert!(text(&elicited).contains("bob"), "{elicited:?}");
    assert_eq!(bob_seen.lock().elicitations, 1);
    assert_eq!(alice_seen.lock().elicitations, 0);

    // A shared connection with only alice's call in flight: hers.
    let alone = call(
        &alice,
        "shared.trigger-sampling-request",
        json!({ "prompt": "only me" }),
    )
    .await;
    assert!(text(&alone).contains("sampled by alice"), "{alone:?}");

    // The shared server has asked a client something: from now on its
    // connection carries one session's calls at a time, so alice's call
    // waits for bob's to end and her question reaches her alone.
    let health = sb.health().await;
    assert!(
        health["servers"]["shared"]["askedClients"].is_string(),
        "{health}"
    );
    assert!(
        health["servers"]["mine"]["askedClients"].is_null(),
        "{health}"
    );
    let slow = call(
        &bob,
        "shared.trigger-long-running-operation",
        json!({ "duration": 2, "steps": 2 }),
    );
    let later = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        call(
            &alice,
            "shared.trigger-sampling-request",
            json!({ "prompt": "whose?" }),
        )
        .await
    };
    let (_, later) = tokio::join!(slow, later);
    assert!(text(&later).contains("sampled by alice"), "{later:?}");
    assert_eq!(alice_seen.lock().sampling.len(), 3);
    assert_eq!(bob_seen.lock().sampling.len(), 1, "none for bob");

    alice.cancel().await.expect("close");
    bob.cancel().await.expect("close");
}

/// server-everything serving streamable HTTP on a port of its own (until
/// the child is dropped), and an `McpServer` named `name` for it.
fn everything_over_http(name: &str) -> (tokio::process::Child, Value) {
    let port = e2e::free_addr().port().to_string();
    let server = tokio::process::Command::new(everything_bin())
        .arg("streamableHttp")
        .env("PORT", &port)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start server-everything over streamable HTTP");
    let resource = json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "McpServer",
        "metadata": { "name": name },
        "spec": { "transport": { "http": { "url": format!("http://127.0.0.1:{port}/mcp") } } },
    });
    (server, resource)
}

/// Names of concurrent clients, each answering with its own.
const NAMES: [&str; 8] = ["ann", "ben", "cat", "dan", "eve", "fay", "gus", "hal"];

/// `sessions` clients at once, each sampling and eliciting through
/// `server` with its own marker, `rounds` times: every answer is its own.
async fn each_session_gets_its_own_answers(
    sb: &Switchboard,
    server: &str,
    sessions: usize,
    rounds: usize,
) {
    let mut clients = Vec::new();
    for name in NAMES.into_iter().take(sessions) {
        let (session, seen) = connect(sb, name).await;
        clients.push((name, session, seen));
    }
    wait_for_tool(
        &clients[0].1,
        &format!("{server}.trigger-elicitation-request"),
    )
    .await;
    for round in 0..rounds {
        let asks = clients.iter().map(|(name, session, _)| async move {
            let prompt = json!({ "prompt": format!("{name}, round {round}") });
            let sampled = call(
                session,
                &format!("{server}.trigger-sampling-request"),
                prompt,
            )
            .await;
            assert!(
                text(&sampled).contains(&format!("sampled by {name}")),
                "{server}, {name}, round {round}: {sampled:?}"
            );
            let elicited = call(
                session,
                &format!("{server}.trigger-elicitation-request"),
                json!({}),
            )
            .await;
            assert!(
                text(&elicited).contains(&format!("\"{name}\"")),
                "{server}, {name}, round {round}: {elicited:?}"
            );
        });
        futures::future::join_all(asks).await;
    }
    for (name, session, seen) in clients {
        {
            let seen = seen.lock();
            assert_eq!(seen.sampling.len(), rounds, "{name}");
            assert!(
                seen.sampling.iter().all(|asked| asked.contains(name)),
                "{name} was asked another's question: {:?}",
                seen.sampling
            );
            assert_eq!(seen.elicitations, rounds, "{name}");
        }
        session.cancel().await.expect("close");
    }
}

/// Sessions sharing one connection to a server that asks clients things,
/// with nothing configured. Over streamable HTTP a question arrives on the
/// response stream of the call that caused it, and goes to that call's
/// client from the first. Over stdio nothing says whose it is: once the
/// server has asked anything (server-everything asks for roots as soon as
/// it is initialised; a question asked alone here makes sure), its
/// connection carries one session's calls at a time.
#[tokio::test]
async fn concurrent_sessions_on_a_shared_server_each_get_their_own_answers() {
    let (_http_server, web) = everything_over_http("web");
    let stdio = everything_server_yaml("pipe", json!({}));
    let sb = Switchboard::start(&[("web.yaml", &web.to_string()), ("pipe.yaml", &stdio)]).await;
    sb.wait_server_state("web", "ready").await;
    sb.wait_server_state("pipe", "ready").await;

    each_session_gets_its_own_answers(&sb, "web", 2, 3).await;
    each_session_gets_its_own_answers(&sb, "web", 8, 2).await;
    let health = sb.health().await;
    assert!(
        health["servers"]["web"]["askedClients"].is_null(),
        "the stream said whose each question was: {health}"
    );

    let (teacher, _) = connect(&sb, "teacher").await;
    wait_for_tool(&teacher, "pipe.trigger-sampling-request").await;
    let first = call(
        &teacher,
        "pipe.trigger-sampling-request",
        json!({ "prompt": "hi" }),
    )
    .await;
    assert!(text(&first).contains("sampled by teacher"), "{first:?}");
    teacher.cancel().await.expect("close");
    each_session_gets_its_own_answers(&sb, "pipe", 2, 3).await;
    each_session_gets_its_own_answers(&sb, "pipe", 8, 2).await;
    let status = sb.control_status().await;
    let reported = status["replicas"]["e2e-0"]["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == "pipe")
        .map(|s| s["askedClients"].clone());
    assert!(reported.as_ref().is_some_and(Value::is_string), "{status}");
    let exposition = sb.gateway_metrics().await;
    let one_session = |server| {
        metric(
            &exposition,
            "switchboard_server_one_session_per_connection",
            &[("server", server)],
        )
    };
    assert_eq!(one_session("pipe"), Some(1.0), "{exposition}");
    assert_eq!(one_session("web"), Some(0.0), "{exposition}");
}

/// A stdio-only client through `switchboard-gateway bridge`: lists, calls,
/// answers the server's sampling request through the bridge, is named by
/// `--caller` in the gateway's log, and keeps working when the gateway
/// restarts and forgets its session.
#[tokio::test]
async fn stdio_bridge_relays_both_ways_and_names_the_caller() {
    let spec = json!({ "sessionMode": "perSession" });
    let mut sb = Switchboard::start(&[(
        "everything.yaml",
        &everything_server_yaml("everything", spec),
    )])
    .await;
    sb.wait_server_state("everything", "ready").await;
    let mut bridge = tokio::process::Command::new(e2e::bin_dir().join("switchboard-gateway"))
        .args(["bridge", "--url", &sb.mcp_url(), "--caller", "bridge-e2e"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the bridge");
    let stdout = bridge.stdout.take().expect("stdout");
    let stdin = bridge.stdin.take().expect("stdin");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let client = Client {
        name: "stdio-client",
        seen: seen.clone(),
    };
    let session = client
        .serve((stdout, stdin))
        .await
        .expect("initialize through the bridge");
    let server = session.peer_info().and_then(|i| i.server_info.clone());
    assert_eq!(server.map(|s| s.name).as_deref(), Some("switchboard"));
    wait_for_tool(&session, "everything.trigger-sampling-request").await;

    let echoed = call(
        &session,
        "everything.echo",
        json!({ "message": "over stdio" }),
    )
    .await;
    assert!(text(&echoed).contains("over stdio"), "{echoed:?}");
    let sampled = call(
        &session,
        "everything.trigger-sampling-request",
        json!({ "prompt": "through the bridge" }),
    )
    .await;
    assert!(
        text(&sampled).contains("sampled by stdio-client"),
        "{sampled:?}"
    );
    assert_eq!(seen.lock().sampling.len(), 1);
    let unknown = session
        .get_prompt(GetPromptRequestParams::new("nope"))
        .await
        .expect_err("unknown prompt through the bridge");
    assert!(unknown.to_string().contains("nope"), "{unknown}");

    eventually("the caller in the gateway's request log", WAIT, || async {
        let logs = sb.logs();
        let line = logs
            .lines()
            .find(|l| l.contains("message=request") && l.contains("tool=everything.echo"));
        match line {
            Some(line) if line.contains("caller=bridge-e2e") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // The gateway restarts: the bridge opens a new session on its own.
    if let Some(mut gateway) = sb.gateway.take() {
        gateway.kill_hard().await;
    }
    sb.start_gateway().await;
    sb.wait_gateway_ready().await;
    sb.wait_server_state("everything", "ready").await;
    let again = call(
        &session,
        "everything.echo",
        json!({ "message": "after a restart" }),
    )
    .await;
    assert!(text(&again).contains("after a restart"), "{again:?}");

    // Closing stdin ends the bridge (and its gateway session) cleanly.
    session.cancel().await.expect("close");
    let status = tokio::time::timeout(WAIT, bridge.wait())
        .await
        .expect("the bridge exits after stdin closes")
        .expect("wait");
    assert!(status.success(), "{status}");
}

/// Runs the Python SDK client script and returns what it saw.
pub async fn python_sdk(args: &[&str]) -> Value {
    e2e::require_python_module("mcp", "mcp");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/sdk_client.py");
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(e2e::python())
            .arg(&script)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Python client finishes")
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python client failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // The SDK ends its session with DELETE and logs any answer but 200/204.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("Session termination failed"),
        "the gateway refused the SDK's DELETE:\n{stderr}"
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

pub fn assert_python_saw_the_gateway(seen: &Value) {
    assert_eq!(seen["server"], "switchboard", "{seen}");
    let tools = seen["tools"].as_array().expect("tools");
    assert!(tools.contains(&json!("everything.echo")), "{seen}");
    assert!(
        seen["echo"]
            .as_str()
            .is_some_and(|t| t.contains("from python")),
        "{seen}"
    );
    // An unknown tool is a JSON-RPC error naming it.
    let unknown = seen["unknown_tool"]["text"].as_str().unwrap_or_default();
    assert!(unknown.contains("everything.no-such-tool"), "{seen}");
    assert_eq!(seen["unknown_tool"]["code"], -32602, "{seen}");
    assert!(
        seen["prompts"]
            .as_array()
            .is_some_and(|p| p.contains(&json!("everything.args-prompt"))),
        "{seen}"
    );
    assert!(
        seen["prompt"].as_str().is_some_and(|p| p.contains("Porto")),
        "{seen}"
    );
    let first = seen["resources"][0].as_str().expect("a resource");
    assert!(first.starts_with("everything+demo://"), "{seen}");
    assert_eq!(seen["read_uri"], first, "{seen}");
    assert!(
        seen["sampled"]
            .as_str()
            .is_some_and(|s| s.contains("sampled by python-sdk")),
        "{seen}"
    );
}

/// The official Python SDK (PyPI `mcp`, a 2.x client that probes
/// `server/discover` first) over streamable HTTP, over legacy SSE, and
/// through the bridge.
#[tokio::test]
async fn python_sdk_client_over_http_sse_and_through_the_bridge() {
    let sb = Switchboard::start(&[(
        "everything.yaml",
        &everything_server_yaml("everything", json!({})),
    )])
    .await;
    sb.wait_server_state("everything", "ready").await;
    let (session, _) = connect(&sb, "waiter").await;
    wait_for_tool(&session, "everything.trigger-sampling-request").await;
    session.cancel().await.expect("close");

    // The SDK 2.x in its default mode: the current revision, with the
    // stdio server's sampling request turned into an input-required round.
    let over_http = python_sdk(&["http", &sb.mcp_url()]).await;
    assert_python_saw_the_gateway(&over_http);
    assert_eq!(over_http["protocol"], "2026-07-28", "{over_http}");

    let sse_url = sb.mcp_url().replace("/mcp", "/sse");
    let over_sse = python_sdk(&["sse", &sse_url]).await;
    assert_python_saw_the_gateway(&over_sse);

    let gateway = e2e::bin_dir().join("switchboard-gateway");
    let gateway = gateway.display().to_string();
    let url = sb.mcp_url();
    let bridge = [
        "stdio",
        &gateway,
        "bridge",
        "--url",
        &url,
        "--caller",
        "python-bridge",
    ];
    let bridged = python_sdk(&bridge).await;
    assert_python_saw_the_gateway(&bridged);
    eventually("the bridge's caller in the request log", WAIT, || async {
        let logs = sb.logs();
        if logs
            .lines()
            .any(|l| l.contains("message=request") && l.contains("caller=python-bridge"))
        {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .await;
}

/// server-everything behind the gateway over legacy SSE (the gateway
/// starts it with `command` and waits for it to listen) and over
/// streamable HTTP: tools, progress, sampling and resources relayed.
#[tokio::test]
async fn server_everything_over_sse_and_streamable_http() {
    let sse_port = e2e::free_addr().port().to_string();
    let sse = json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "McpServer",
        "metadata": { "name": "legacy" },
        "spec": {
            "sessionMode": "perSession",
            "transport": { "sse": {
                "url": format!("http://127.0.0.1:{sse_port}/sse"),
                "command": everything_bin(),
                "args": ["sse"],
                "env": [{ "name": "PORT", "value": sse_port }],
            } },
        },
    });
    let (_http_server, http) = everything_over_http("web");
    let sb = Switchboard::start(&[
        ("legacy.yaml", &sse.to_string()),
        ("web.yaml", &http.to_string()),
    ])
    .await;
    sb.wait_server_state("legacy", "ready").await;
    sb.wait_server_state("web", "ready").await;
    let (session, seen) = connect(&sb, "carol").await;
    wait_for_tool(&session, "legacy.trigger-sampling-request").await;

    for server in ["legacy", "web"] {
        let echoed = call(
            &session,
            &format!("{server}.echo"),
            json!({ "message": server }),
        )
        .await;
        assert!(text(&echoed).contains(server), "{echoed:?}");
        let resources = session.list_all_resources().await.expect("resources/list");
        let uri = resources
            .iter()
            .map(|r| r.uri.clone())
            .find(|u| u.starts_with(&format!("{server}+demo://")))
            .unwrap_or_else(|| panic!("no {server} resource"));
        let read = session
            .read_resource(ReadResourceRequestParams::new(uri.clone()))
            .await
            .expect("resources/read");
        assert!(!read.contents.is_empty(), "{read:?}");
    }

    let done = call(
        &session,
        "legacy.trigger-long-running-operation",
        json!({ "duration": 1, "steps": 3 }),
    )
    .await;
    assert!(text(&done).contains("completed"), "{done:?}");
    eventually("progress over SSE", WAIT, || async {
        let progress = seen.lock().progress.clone();
        if progress.last() == Some(&3.0) {
            Ok(())
        } else {
            Err(format!("{progress:?}"))
        }
    })
    .await;

    let sampled = call(
        &session,
        "legacy.trigger-sampling-request",
        json!({ "prompt": "over sse" }),
    )
    .await;
    assert!(text(&sampled).contains("sampled by carol"), "{sampled:?}");
    let health = sb.health().await;
    assert_eq!(health["servers"]["legacy"]["state"], "ready", "{health}");
    session.cancel().await.expect("close");
}
