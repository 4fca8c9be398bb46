//! The gateway's REST API for scripts: `GET /tools` and `POST /tools/call`
//! through the same authentication, access policies, breakers and
//! timeouts as MCP, each failure with the status that names it.

use e2e::{Switchboard, demo_server_with};
use serde_json::{Value, json};

const TOKEN: &str = "rest-alice-token-0123456789";

struct Rest {
    http: reqwest::Client,
    base: String,
}

impl Rest {
    async fn tools(&self, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(format!("{}/tools", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("GET /tools");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    async fn call(&self, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/tools/call?caller=script", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("POST /tools/call");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }
}

#[tokio::test]
async fn scripts_list_and_call_tools_with_the_statuses_http_callers_expect() {
    let tag = format!("rest-{}", std::process::id());
    let breaker = json!({ "breaker": {
        "consecutiveFailures": 2, "openDuration": "60s", "countToolErrors": true,
        "hideToolsWhenOpen": false,
    } });
    let slow = json!({ "timeouts": { "call": "300ms" } });
    let access = format!(
        "apiVersion: switchboard.dev/v1alpha1\nkind: McpClient\nmetadata: {{name: alice}}\nspec: {{groups: [dev], token: {{sha256: {}}}}}\n---\napiVersion: switchboard.dev/v1alpha1\nkind: McpAccessPolicy\nmetadata: {{name: no-env}}\nspec: {{subjects: {{clients: [alice]}}, deny: {{tools: [d.env]}}}}\n",
        e2e::token_sha256(TOKEN)
    );
    let sb = Switchboard::start(&[
        (
            "d.yaml",
            &demo_server_with("d", &format!("{tag}-d"), &[], json!({})),
        ),
        (
            "b.yaml",
            &demo_server_with("b", &format!("{tag}-b"), &[], breaker),
        ),
        (
            "t.yaml",
            &demo_server_with("t", &format!("{tag}-t"), &[], slow),
        ),
        ("access.yaml", &access),
    ])
    .await;
    for server in ["d", "b", "t"] {
        sb.wait_server_state(server, "ready").await;
    }
    let rest = Rest {
        http: reqwest::Client::new(),
        base: format!("http://{}", sb.gateway_addr),
    };

    // The same authentication as MCP, and the same policies.
    assert_eq!(rest.tools(None).await.0, 401);
    let (status, listed) = rest.tools(Some(TOKEN)).await;
    assert_eq!(status, 200, "{listed}");
    let tools = listed["tools"].as_array().expect("tools");
    let echo = tools
        .iter()
        .find(|t| t["name"] == "d.echo")
        .expect("d.echo listed");
    assert_eq!(echo["inputSchema"]["type"], "object", "{echo}");
    assert!(
        tools.iter().all(|t| t["name"] != "d.env"),
        "denied tools are hidden"
    );
    assert!(
        tools.iter().any(|t| t["name"] == "b.echo"),
        "every server's, all pages"
    );
    let (status, denied) = rest
        .call(json!({ "name": "d.env", "arguments": { "name": "PATH" } }))
        .await;
    assert_eq!(status, 403, "{denied}");

    // Success: the result as MCP returns it.
    let (status, result) = rest
        .call(json!({ "name": "d.echo", "arguments": { "text": "from a script" } }))
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["content"][0]["text"], "from a script", "{result}");

    // Unknown tool, arguments the server refuses, a body that is not a call.
    let (status, unknown) = rest
        .call(json!({ "name": "d.nope", "arguments": {} }))
        .await;
    assert_eq!(status, 404, "{unknown}");
    assert!(
        unknown["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("d.nope")),
        "{unknown}"
    );
    let (status, invalid) = rest
        .call(json!({ "name": "d.echo", "arguments": { "text": 5 } }))
        .await;
    assert_eq!(status, 400, "{invalid}");
    let (status, _) = rest.call(json!({ "tool": "d.echo" })).await;
    assert_eq!(status, 400);
    // A body a page of another origin could send without asking first.
    let plain = rest
        .http
        .post(format!("{}/tools/call", rest.base))
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body(r#"{"name": "d.echo", "arguments": {"text": "x"}}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(plain.status(), 415);
    let (status, _) = rest
        .call(json!({ "name": "d.echo", "arguments": [1] }))
        .await;
    assert_eq!(status, 400);

    // A slow server: 504. A failing one opens its breaker: 503.
    let (status, slow) = rest
        .call(json!({ "name": "t.sleep", "arguments": { "ms": 3000 } }))
        .await;
    assert_eq!(status, 504, "{slow}");
    for _ in 0..2 {
        let (status, failed) = rest
            .call(json!({ "name": "b.fail", "arguments": { "message": "down" } }))
            .await;
        assert_eq!(
            (status, &failed["isError"]),
            (200, &json!(true)),
            "a tool's own error is a result"
        );
    }
    let (status, open) = rest
        .call(json!({ "name": "b.echo", "arguments": { "text": "x" } }))
        .await;
    assert_eq!(status, 503, "{open}");
    assert_eq!(
        open["_meta"]["switchboard.dev/error"]["kind"], "breaker_open",
        "{open}"
    );

    // The OpenAPI document describes what the handlers take: a body its
    // schema refuses, the handler refused above too.
    let document: Value = rest
        .http
        .get(format!("{}/openapi.json", rest.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("GET /openapi.json")
        .json()
        .await
        .expect("JSON");
    assert!(
        document["paths"]["/tools/call"]["post"].is_object(),
        "{document}"
    );
    e2e::check_openapi(
        &document,
        "#/components/schemas/CallBody",
        &[
            json!({ "name": "d.echo", "arguments": { "text": "x" } }),
            json!({ "name": "d.echo" }),
        ],
        &[
            json!({ "tool": "d.echo" }),
            json!({ "name": "d.echo", "arguments": [1] }),
        ],
    );

    // Calls are traced and counted as MCP calls are, under their caller.
    sb.wait_traces("caller=alice&tool=d.echo").await;
}
