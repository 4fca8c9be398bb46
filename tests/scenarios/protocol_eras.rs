//! Every protocol era on one endpoint: MCP 2026-07-28 clients (no
//! `initialize`, no session: each request carries its version and
//! capabilities in `_meta`, its method and name in headers too) beside
//! clients of 2024-11-05 … 2025-11-25, against servers of the older eras.
//! rmcp's own client in its 2026-07-28 mode, and raw requests for what
//! the revision refuses and how.

use e2e::{Switchboard, demo_server_yaml, everything_server_yaml, post_2026 as post};
use rmcp::{
    ClientHandler, ServiceExt,
    model::{
        CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation, ProtocolVersion,
        ReadResourceRequestParams, ServerNotification, SubscribeRequestParams, SubscriptionFilter,
        UnsubscribeRequestParams,
    },
    service::{ClientLifecycleMode, ClientServiceExt},
    transport::StreamableHttpClientTransport,
};
use serde_json::{Value, json};

/// A client of the current revision that takes nothing from older ones.
#[derive(Clone)]
struct Modern;

impl ClientHandler for Modern {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("modern-e2e", "1.0.0"),
        )
    }
}

#[tokio::test]
async fn a_2026_07_28_client_uses_servers_of_older_eras() {
    let tag = format!("eras-{}", std::process::id());
    let sb = Switchboard::start(&[
        ("demo.yaml", &demo_server_yaml("demo", &tag, &[])),
        ("e.yaml", &everything_server_yaml("e", json!({}))),
    ])
    .await;
    sb.wait_server_state("demo", "ready").await;
    sb.wait_server_state("e", "ready").await;
    let url = sb.mcp_url();

    // rmcp's client of the current revision: discover, then requests
    // that stand alone.
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    };
    let client = Modern
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_uri(url.clone()),
            lifecycle,
        )
        .await
        .expect("a 2026-07-28 client connects");
    let info = client.peer_info().expect("what discover said");
    let server = info.server_info.as_ref().map(|s| s.name.as_str());
    assert_eq!(server, Some("switchboard"), "{info:?}");
    let tools = client.list_all_tools().await.expect("tools/list");
    assert!(tools.iter().any(|t| t.name == "demo.echo"), "{tools:?}");
    let echoed = client
        .call_tool(
            CallToolRequestParams::new("demo.echo").with_arguments(
                json!({ "text": "from 2026" })
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
        )
        .await
        .expect("tools/call");
    let said = serde_json::to_string(&echoed.content).unwrap_or_default();
    assert!(said.contains("from 2026"), "{said}");
    let resources = client.list_all_resources().await.expect("resources/list");
    let uri = resources
        .iter()
        .find(|r| r.uri.starts_with("e+"))
        .map(|r| r.uri.clone())
        .expect("a resource of e");
    let read = client
        .read_resource(ReadResourceRequestParams::new(uri))
        .await
        .expect("resources/read");
    assert!(!read.contents.is_empty());
    client.cancel().await.expect("close");

    // The older eras still work beside it, on the same endpoint.
    let legacy = e2e::connect(&url).await.expect("a 2025-11-25 client");
    let legacy_tools = legacy.list_all_tools().await.expect("tools/list");
    assert_eq!(legacy_tools.len(), tools.len());
    legacy.cancel().await.expect("close");

    // Answers as the revision writes them.
    let (status, discovered) = post(&url, "server/discover", json!({}), &[], &[]).await;
    assert_eq!(status, 200, "{discovered}");
    let result = &discovered["result"];
    assert_eq!(result["resultType"], "complete");
    let versions = result["supportedVersions"].as_array().expect("versions");
    for version in ["2024-11-05", "2025-11-25", "2026-07-28"] {
        assert!(versions.contains(&json!(version)), "{result}");
    }
    assert_eq!(
        result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "switchboard"
    );
    let (status, listed) = post(&url, "tools/list", json!({}), &[], &[]).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["result"]["resultType"], "complete");
    assert_eq!(listed["result"]["ttlMs"], 0);
    assert_eq!(listed["result"]["cacheScope"], "private");
    let (_, called) = post(
        &url,
        "tools/call",
        json!({ "name": "demo.echo", "arguments": { "text": "raw" } }),
        &[],
        &[],
    )
    .await;
    assert_eq!(called["result"]["resultType"], "complete", "{called}");
    let missing = "e+demo://resource/static/document/nope.md";
    let (status, unknown) = post(&url, "resources/read", json!({ "uri": missing }), &[], &[]).await;
    assert_eq!(status, 200, "{unknown}");
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");
}

/// A request the revision refuses: method, params, headers replaced,
/// `_meta` keys left out, then the HTTP status, JSON-RPC code and a word
/// of the message.
type Refused<'a> = (
    &'a str,
    Value,
    Vec<(&'a str, &'a str)>,
    Vec<&'a str>,
    u16,
    i64,
    &'a str,
);

#[tokio::test]
async fn the_2026_07_28_wire_refuses_what_the_revision_refuses() {
    let tag = format!("eras-refused-{}", std::process::id());
    let sb = Switchboard::start(&[("demo.yaml", &demo_server_yaml("demo", &tag, &[]))]).await;
    sb.wait_server_state("demo", "ready").await;
    let url = sb.mcp_url();
    let call = json!({ "name": "demo.echo", "arguments": { "text": "x" } });

    let cases: Vec<Refused> = vec![
        (
            "tools/list",
            json!({}),
            vec![],
            vec!["clientCapabilities"],
            400,
            -32602,
            "clientCapabilities",
        ),
        (
            "tools/list",
            json!({}),
            vec![("mcp-protocol-version", "2025-11-25")],
            vec![],
            400,
            -32020,
            "MCP-Protocol-Version",
        ),
        (
            "tools/call",
            call.clone(),
            vec![("mcp-name", "demo.other")],
            vec![],
            400,
            -32020,
            "mcp-name",
        ),
        (
            "tools/call",
            call.clone(),
            vec![("mcp-method", "")],
            vec![],
            400,
            -32020,
            "mcp-method",
        ),
        ("ping", json!({}), vec![], vec![], 404, -32601, "ping"),
        (
            "tasks/get",
            json!({ "taskId": "t-1" }),
            vec![],
            vec![],
            404,
            -32601,
            "does not offer the tasks extension",
        ),
        (
            "logging/setLevel",
            json!({ "level": "debug" }),
            vec![],
            vec![],
            404,
            -32601,
            "logging/setLevel",
        ),
    ];
    for (method, params, headers, drop, status, code, says) in cases {
        let (got, answer) = post(&url, method, params, &headers, &drop).await;
        assert_eq!(
            (got, &answer["error"]["code"]),
            (status, &json!(code)),
            "{method} {headers:?}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{method}: {answer}");
    }
    // A header written in the revision's base64 form counts as its text.
    let (status, answer) = post(
        &url,
        "tools/call",
        call.clone(),
        &[("mcp-name", "=?base64?ZGVtby5lY2hv?=")],
        &[],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"]["resultType"], "complete");

    // A version nobody serves: the error lists those served.
    let response = reqwest::Client::new()
        .post(&url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2099-01-01")
        .header("mcp-method", "tools/list")
        .json(
            &json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": { "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2099-01-01",
            "io.modelcontextprotocol/clientCapabilities": {} } } }),
        )
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(answer["error"]["code"], -32022, "{answer}");
    assert_eq!(answer["error"]["data"]["requested"], "2099-01-01");
    assert!(
        answer["error"]["data"]["supported"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("2026-07-28"))),
        "{answer}"
    );
}

/// `subscriptions/listen`: acknowledged with what the gateway accepted,
/// then the merged catalog's list changes the client asked for, each
/// tagged with the subscription.
#[tokio::test]
async fn a_2026_07_28_client_listens_for_list_changes() {
    let tag = format!("eras-listen-{}", std::process::id());
    let sb = Switchboard::start(&[("demo.yaml", &demo_server_yaml("demo", &tag, &[]))]).await;
    sb.wait_server_state("demo", "ready").await;
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    let response = reqwest::Client::new()
        .post(sb.mcp_url())
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "subscriptions/listen")
        .json(
            &json!({ "jsonrpc": "2.0", "id": "watch-1", "method": "subscriptions/listen",
            "params": { "_meta": meta, "notifications": {
                "toolsListChanged": true, "resourceSubscriptions": ["demo+demo://x"] } } }),
        )
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    let mut events = e2e::Events::new(response);
    let mut next = async || events.next().await;
    let ack = next().await;
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
    assert_eq!(
        ack["params"]["notifications"],
        json!({ "toolsListChanged": true }),
        "resource subscriptions are not offered this way: {ack}"
    );
    assert_eq!(
        ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "watch-1"
    );
    sb.write_file("more.yaml", &demo_server_yaml("more", &tag, &[]));
    let changed = next().await;
    assert_eq!(
        changed["method"], "notifications/tools/list_changed",
        "{changed}"
    );
    assert_eq!(
        changed["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "watch-1"
    );
}

/// A client of the current revision that can be asked things, in rounds.
#[derive(Clone)]
struct Answering;

impl ClientHandler for Answering {
    fn get_info(&self) -> ClientConfig {
        let mut capabilities = ClientCapabilities::default();
        capabilities.elicitation = Some(Default::default());
        capabilities.sampling = Some(Default::default());
        ClientConfig::new(capabilities, Implementation::new("answering-e2e", "1.0.0"))
    }

    async fn create_elicitation(
        &self,
        _params: rmcp::model::ElicitRequestParams,
        _context: rmcp::service::RequestContext<rmcp::RoleClient>,
    ) -> Result<rmcp::model::ElicitResult, rmcp::ErrorData> {
        let content = json!({ "name": "answered in a round", "check": true });
        Ok(
            rmcp::model::ElicitResult::new(rmcp::model::ElicitationAction::Accept)
                .with_content(content),
        )
    }

    #[allow(deprecated)]
    async fn create_message(
        &self,
        _params: rmcp::model::CreateMessageRequestParams,
        _context: rmcp::service::RequestContext<rmcp::RoleClient>,
    ) -> Result<rmcp::model::CreateMessageResult, rmcp::ErrorData> {
        Ok(rmcp::model::CreateMessageResult::new(
            rmcp::model::SamplingMessage::assistant_text("sampled in a round"),
            "e2e-model".to_owned(),
        ))
    }
}

/// A 2025-11-25 stdio server that asks its client things, and a client of
/// the current revision, which cannot be asked anything mid-call: each
/// question ends the client's request with an input-required round, the
/// retry's answer reaches the waiting server, and the result is right.
#[tokio::test]
async fn a_legacy_servers_questions_reach_a_2026_07_28_client_as_input_required_rounds() {
    let sb = Switchboard::start(&[("e.yaml", &everything_server_yaml("e", json!({})))]).await;
    sb.wait_server_state("e", "ready").await;
    let url = sb.mcp_url();
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    };
    let client = Answering
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_uri(url.clone()),
            lifecycle,
        )
        .await
        .expect("a 2026-07-28 client connects");
    let elicited = client
        .call_tool(CallToolRequestParams::new("e.trigger-elicitation-request"))
        .await
        .expect("tools/call through a round");
    let said = serde_json::to_string(&elicited.content).unwrap_or_default();
    assert!(said.contains("answered in a round"), "{said}");
    let sampled = client
        .call_tool(
            CallToolRequestParams::new("e.trigger-sampling-request").with_arguments(
                json!({ "prompt": "round?" })
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
        )
        .await
        .expect("tools/call through a round");
    let said = serde_json::to_string(&sampled.content).unwrap_or_default();
    assert!(said.contains("sampled in a round"), "{said}");
    client.cancel().await.expect("close");

    // On the wire: the round, a retry with a state nobody issued, then the
    // answer that completes the call.
    let round = |mut params: Value| {
        params["_meta"] =
            json!({ "io.modelcontextprotocol/clientCapabilities": { "elicitation": {} } });
        let url = url.clone();
        async move { post(&url, "tools/call", params, &[], &[]).await.1 }
    };
    let call = json!({ "name": "e.trigger-elicitation-request", "arguments": {} });
    let first = round(call.clone()).await;
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    let state = result["requestState"]
        .as_str()
        .expect("a requestState")
        .to_owned();
    let (key, asked) = result["inputRequests"]
        .as_object()
        .and_then(|r| r.iter().next())
        .expect("one input request");
    assert_eq!(asked["method"], "elicitation/create", "{asked}");
    let mut forged = call.clone();
    forged["requestState"] = json!("sb-round-forged");
    forged["inputResponses"] = json!({});
    let refused = round(forged).await;
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    // A retry that answers nothing leaves the round open.
    let mut unanswered = call.clone();
    unanswered["requestState"] = json!(state);
    unanswered["inputResponses"] = json!({});
    let lacking = round(unanswered).await;
    assert_eq!(lacking["error"]["code"], -32602, "{lacking}");
    assert!(
        lacking.to_string().contains(&format!("lacks `{key}`")),
        "{lacking}"
    );
    let mut retry = call.clone();
    retry["requestState"] = json!(state);
    retry["inputResponses"] = json!({ key.clone(): { "action": "accept",
        "content": { "name": "raw round", "check": true } } });
    let done = round(retry).await;
    assert_eq!(done["result"]["resultType"], "complete", "{done}");
    assert!(done.to_string().contains("raw round"), "{done}");

    let exposition = sb.gateway_metrics().await;
    let counted = |name| e2e::metric(&exposition, name, &[]).unwrap_or_default();
    assert!(
        counted("switchboard_input_required_rounds_total") >= 3.0,
        "{exposition}"
    );
    assert!(
        counted("switchboard_input_required_resumed_total") >= 3.0,
        "{exposition}"
    );
    assert_eq!(
        counted("switchboard_input_required_unknown_state_total"),
        1.0
    );
    assert_eq!(counted("switchboard_input_required_parked"), 0.0);
}

/// A 2025-11-25 client that passes on the URIs of resource updates.
#[derive(Clone)]
struct Subscriber {
    updated: tokio::sync::mpsc::UnboundedSender<String>,
}

impl ClientHandler for Subscriber {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("subscriber-e2e", "1.0.0"),
        )
        .with_protocol_version(ProtocolVersion::V_2025_11_25)
    }

    async fn on_resource_updated(
        &self,
        params: rmcp::model::ResourceUpdatedNotificationParam,
        _context: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        let _ = self.updated.send(params.uri);
    }
}

/// Servers of MCP 2026-07-28 behind the gateway: one over stdio that
/// refuses `initialize` (found by `handshake: auto`), one over streamable
/// HTTP opened with `server/discover` (`handshake: discover`). Their
/// questions come as input-required results: a 2025-11-25 client is asked
/// each as the request of its own revision and the call retried with the
/// answers; a 2026-07-28 client gets the round as the server wrote it.
#[tokio::test]
async fn servers_of_2026_07_28_serve_clients_of_either_era() {
    let fixture = e2e::bin_dir().join("conformance-fixture");
    let behind = e2e::free_addr();
    let _remote = tokio::process::Command::new(&fixture)
        .args(["--only-2026", "--http", &behind.to_string()])
        .kill_on_drop(true)
        .spawn()
        .expect("start the fixture");
    e2e::wait_listening("the conformance fixture", behind).await;
    let stdio = e2e::server_with(
        "s",
        &fixture.display().to_string(),
        &["--only-2026"],
        json!({}),
    );
    let http = json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "McpServer",
        "metadata": { "name": "h" },
        "spec": { "handshake": "discover", "transport": { "http": {
            "url": format!("http://127.0.0.1:{}/mcp", behind.port()) } } },
    });
    let sb = Switchboard::start(&[("s.yaml", &stdio), ("h.yaml", &http.to_string())]).await;
    for server in ["s", "h"] {
        let health = sb.wait_server_state(server, "ready").await;
        assert_eq!(health["protocolVersion"], "2026-07-28", "{health}");
    }
    let url = sb.mcp_url();
    let arguments = |value: Value| value.as_object().cloned().unwrap_or_default();

    // A 2025-11-25 client is asked the servers' questions mid-call.
    let legacy = Answering
        .serve(StreamableHttpClientTransport::from_uri(url.clone()))
        .await
        .expect("a 2025-11-25 client connects");
    assert_eq!(
        legacy.peer_info().map(|i| i.protocol_version.clone()),
        Some(ProtocolVersion::V_2025_11_25)
    );
    for server in ["s", "h"] {
        let elicited = legacy
            .call_tool(
                CallToolRequestParams::new(format!("{server}.test_elicitation"))
                    .with_arguments(arguments(json!({ "message": "who?" }))),
            )
            .await
            .expect("tools/call");
        let said = serde_json::to_string(&elicited.content).unwrap_or_default();
        assert!(
            said.contains("User response") && said.contains("answered in a round"),
            "{said}"
        );
        let sampled = legacy
            .call_tool(
                CallToolRequestParams::new(format!("{server}.test_sampling"))
                    .with_arguments(arguments(json!({ "prompt": "why?" }))),
            )
            .await
            .expect("tools/call");
        let said = serde_json::to_string(&sampled.content).unwrap_or_default();
        assert!(said.contains("LLM response: sampled in a round"), "{said}");
    }
    legacy.cancel().await.expect("close");

    // A client that cannot be asked: the call ends saying why, the session
    // goes on.
    let mute = e2e::connect(&url)
        .await
        .expect("a client without capabilities");
    for server in ["s", "h"] {
        let refused = mute
            .call_tool(
                CallToolRequestParams::new(format!("{server}.test_sampling"))
                    .with_arguments(arguments(json!({ "prompt": "why?" }))),
            )
            .await
            .expect("an isError result, not a JSON-RPC error");
        assert_eq!(refused.is_error, Some(true), "{refused:?}");
        let meta = serde_json::to_value(&refused.meta).unwrap_or_default();
        assert_eq!(
            meta["switchboard.dev/error"]["kind"], "unanswered",
            "{meta}"
        );
        let said = serde_json::to_string(&refused.content).unwrap_or_default();
        assert!(said.contains("did not declare the capability"), "{said}");
    }
    let plain = mute
        .call_tool(CallToolRequestParams::new("h.test_simple_text"))
        .await
        .expect("tools/call");
    assert_ne!(plain.is_error, Some(true));
    mute.cancel().await.expect("close");

    // 2026-07-28 has no resources/subscribe: the gateway listens for the
    // URIs its clients subscribed to.
    let (updates, mut updated) = tokio::sync::mpsc::unbounded_channel();
    let legacy = Subscriber { updated: updates }
        .serve(StreamableHttpClientTransport::from_uri(url.clone()))
        .await
        .expect("a 2025-11-25 client connects");
    for server in ["s", "h"] {
        let uri = format!("{server}+test://watched-resource");
        #[allow(deprecated)]
        legacy
            .subscribe(SubscribeRequestParams::new(uri.clone()))
            .await
            .expect("resources/subscribe");
        let touch = format!("{server}.test_touch_resource");
        // The gateway opens its listen again with the URI, a moment later.
        let deadline = tokio::time::Instant::now() + e2e::EVENTUALLY;
        loop {
            legacy
                .call_tool(CallToolRequestParams::new(touch.clone()))
                .await
                .expect("tools/call");
            let heard = tokio::time::timeout(std::time::Duration::from_millis(500), updated.recv());
            match heard.await {
                Ok(Some(heard)) if heard == uri => break,
                other => assert!(
                    tokio::time::Instant::now() < deadline,
                    "no update of {uri}: {other:?}"
                ),
            }
        }
        #[allow(deprecated)]
        legacy
            .unsubscribe(UnsubscribeRequestParams::new(uri))
            .await
            .expect("resources/unsubscribe");
    }
    let plain = legacy
        .call_tool(CallToolRequestParams::new("s.test_simple_text"))
        .await
        .expect("tools/call");
    let said = serde_json::to_string(&plain.content).unwrap_or_default();
    assert!(said.contains("simple text response"), "{said}");
    legacy.cancel().await.expect("close");

    // A 2026-07-28 client answers the servers' own rounds and retries.
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    };
    let modern = Answering
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_uri(url.clone()),
            lifecycle,
        )
        .await
        .expect("a 2026-07-28 client connects");
    for server in ["s", "h"] {
        let elicited = modern
            .call_tool(
                CallToolRequestParams::new(format!("{server}.test_elicitation"))
                    .with_arguments(arguments(json!({ "message": "who?" }))),
            )
            .await
            .expect("tools/call through the server's round");
        let said = serde_json::to_string(&elicited.content).unwrap_or_default();
        assert!(said.contains("answered in a round"), "{said}");
    }
    // The gateway listens to each server for list changes, and its own
    // listeners hear of them.
    let filter = SubscriptionFilter::builder().tools_list_changed().build();
    let mut listening = modern.listen(filter).await.expect("subscriptions/listen");
    for server in ["s", "h"] {
        modern
            .call_tool(CallToolRequestParams::new(format!(
                "{server}.test_add_tool"
            )))
            .await
            .expect("tools/call");
    }
    let heard = tokio::time::timeout(std::time::Duration::from_secs(30), listening.next())
        .await
        .expect("a list change within 30 s")
        .expect("the stream goes on");
    assert!(
        matches!(
            heard,
            Some(ServerNotification::ToolListChangedNotification(_))
        ),
        "{heard:?}"
    );
    e2e::eventually(
        "both servers' added tools listed",
        e2e::EVENTUALLY,
        || async {
            let tools = modern.list_all_tools().await.map_err(|e| e.to_string())?;
            let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
            let both = names.contains(&"s.test_added_tool") && names.contains(&"h.test_added_tool");
            both.then_some(()).ok_or_else(|| format!("{names:?}"))
        },
    )
    .await;
    modern.cancel().await.expect("close");

    // On the wire: the round is the server's, state and key as it wrote
    // them, and the retry goes back to it.
    let call = json!({ "name": "h.test_elicitation", "arguments": { "message": "raw" },
        "_meta": { "io.modelcontextprotocol/clientCapabilities": { "elicitation": {} } } });
    let (_, first) = post(&url, "tools/call", call.clone(), &[], &[]).await;
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    assert_eq!(result["requestState"], "fixture-elicitation", "{first}");
    assert_eq!(
        result["inputRequests"]["elicitation"]["method"],
        "elicitation/create"
    );
    let mut retry = call;
    retry["requestState"] = json!("fixture-elicitation");
    retry["inputResponses"] =
        json!({ "elicitation": { "action": "accept", "content": { "name": "on the wire" } } });
    let (_, done) = post(&url, "tools/call", retry, &[], &[]).await;
    assert_eq!(done["result"]["resultType"], "complete", "{done}");
    assert!(done.to_string().contains("on the wire"), "{done}");

    let exposition = sb.gateway_metrics().await;
    let counted = |name| e2e::metric(&exposition, name, &[]).unwrap_or_default();
    assert!(
        counted("switchboard_input_required_bridged_total") >= 4.0,
        "{exposition}"
    );
    assert!(
        counted("switchboard_input_required_relayed_total") >= 3.0,
        "{exposition}"
    );
    // Nothing was parked here: the rounds were the servers' own.
    assert_eq!(counted("switchboard_input_required_rounds_total"), 0.0);
}
