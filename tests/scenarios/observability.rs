//! Observability: a traced call yields one trace chaining the client's
//! context, the gateway's SERVER span and its CLIENT span to the server
//! (whose request carries the context on), delivered through the control
//! plane and a real collector (rotel) and readable from the control plane's
//! API; `/metrics` on both planes after a known workload; request log lines
//! as JSON and logfmt, with the caller, and without payloads unless asked.

use std::collections::BTreeMap;

use e2e::{
    EVENTUALLY, Switchboard, call, connect, connect_with_headers, demo_server_yaml, eventually,
    free_addr, metric,
    otlp::{OtlpReceiver, ReceivedSpan, hex, spawn_rotel, string_attribute},
    wait_listening,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
    trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind},
};
use rmcp::model::{CallToolRequestParams, MetaObject};
use serde_json::{Value, json};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN_ID: &str = "00f067aa0ba902b7";
const SECRET: &str = "s3cr3t-argument-value";

fn attribute(span: &ReceivedSpan, key: &str) -> String {
    string_attribute(&span.span.attributes, key)
}

/// Parses one logfmt line into key → value (quotes removed).
fn logfmt(line: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut rest = line.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => {
                let mut end = 0;
                let bytes = quoted.as_bytes();
                while end < bytes.len()
                    && !(bytes[end] == b'"' && (end == 0 || bytes[end - 1] != b'\\'))
                {
                    end += 1;
                }
                (
                    quoted[..end].replace("\\\"", "\""),
                    quoted.get(end + 1..).unwrap_or(""),
                )
            }
            None => match after.split_once(' ') {
                Some((value, next)) => (value.to_owned(), next),
                None => (after.to_owned(), ""),
            },
        };
        fields.insert(key.trim().to_owned(), value);
        rest = next.trim_start();
    }
    fields
}

#[tokio::test]
async fn a_traced_call_is_one_trace_through_the_control_plane_and_a_collector() {
    let receiver = OtlpReceiver::start().await;
    let scratch = tempfile::tempdir().expect("temp dir");
    let (_rotel, rotel_addr) = spawn_rotel(receiver.addr, scratch.path().join("rotel.log"));
    wait_listening("rotel", rotel_addr).await;
    let demo = demo_server_yaml("demo", &format!("otel-{}", std::process::id()), &[]);
    let forward = format!("http://{rotel_addr}");
    let sb = Switchboard::start_with(
        &[("demo.yaml", &demo)],
        &["--otlp-forward", &forward],
        &["--log-format", "json"],
    )
    .await;
    sb.wait_server_state("demo", "ready").await;

    // The caller names itself with the query parameter; the trace context
    // travels in `_meta` (SEP-414).
    let client = connect(&format!("{}?caller=e2e-agent", sb.mcp_url()))
        .await
        .expect("connect");
    let mut meta = MetaObject::new();
    meta.set_traceparent(format!("00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"));
    let mut params = CallToolRequestParams::new("demo.info").with_arguments(
        json!({ "note": SECRET })
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
    params.meta = Some(meta.into());
    let result = client.call_tool(params).await.expect("demo.info");
    let info = result.structured_content.expect("structured info");
    let downstream = info["traceparent"]
        .as_str()
        .expect("the server got a traceparent");

    // Through the control plane and rotel to the receiver.
    let spans = eventually("both spans at the receiver", EVENTUALLY, || async {
        let spans = receiver.trace(TRACE_ID);
        (spans.len() >= 2)
            .then(|| spans.clone())
            .ok_or(format!("{} spans so far", spans.len()))
    })
    .await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let server = spans
        .iter()
        .find(|s| s.span.kind == SpanKind::Server as i32)
        .expect("a SERVER span");
    let client_span = spans
        .iter()
        .find(|s| s.span.kind == SpanKind::Client as i32)
        .expect("a CLIENT span");
    assert_eq!(server.service, "switchboard-gateway");
    assert_eq!(server.span.name, "tools/call demo.info");
    assert_eq!(hex(&server.span.parent_span_id), CLIENT_SPAN_ID);
    for (key, want) in [
        ("mcp.method.name", "tools/call"),
        ("gen_ai.tool.name", "demo.info"),
        ("gen_ai.operation.name", "execute_tool"),
        ("jsonrpc.request.id", "1"),
        ("switchboard.server", "demo"),
        ("switchboard.caller", "e2e-agent"),
        ("switchboard.replica", "e2e-0"),
        ("network.transport", "tcp"),
    ] {
        assert_eq!(attribute(server, key), want, "{key} on {server:#?}");
    }
    assert!(!attribute(server, "mcp.session.id").is_empty());
    assert!(!attribute(server, "mcp.protocol.version").is_empty());
    assert_eq!(client_span.span.name, "tools/call info");
    assert_eq!(client_span.span.parent_span_id, server.span.span_id);
    assert_eq!(attribute(client_span, "network.transport"), "pipe");
    assert_eq!(attribute(client_span, "gen_ai.tool.name"), "info");
    // The server's request carried the CLIENT span as its parent.
    assert_eq!(
        downstream,
        format!("00-{TRACE_ID}-{}-01", hex(&client_span.span.span_id))
    );
    // Only request spans and the planes' own work are exported: none of
    // the exporters' own gRPC traffic (the known feedback loop).
    for span in receiver.spans() {
        let method = attribute(&span, "mcp.method.name");
        let work = ["registry.", "config."]
            .iter()
            .any(|p| span.span.name.starts_with(p));
        assert!(
            work || ["initialize", "tools/list", "tools/call", "ping"].contains(&method.as_str()),
            "unexpected span {:?}",
            span.span.name
        );
    }

    // A registry change is one trace across both planes: the scan, the
    // snapshot, its push, the replica's apply (which starts the server),
    // and the ACK, each the child of the one before.
    sb.write_file(
        "more.yaml",
        &demo_server_yaml("more", &format!("otel-more-{}", std::process::id()), &[]),
    );
    let rollout = eventually("the change's trace at the receiver", EVENTUALLY, || async {
        let changes: Vec<ReceivedSpan> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.span.name == "registry.change")
            .collect();
        changes
            .iter()
            .map(|change| receiver.trace(&hex(&change.span.trace_id)))
            .find(|trace| {
                ["config.apply", "config.acknowledged", "server.start"]
                    .iter()
                    .all(|name| trace.iter().any(|s| s.span.name == *name))
            })
            .ok_or_else(|| {
                let seen: Vec<Vec<String>> = changes
                    .iter()
                    .map(|change| {
                        let trace = receiver.trace(&hex(&change.span.trace_id));
                        trace.iter().map(|s| s.span.name.clone()).collect()
                    })
                    .collect();
                format!("{} changes so far, none whole: {seen:?}", changes.len())
            })
    })
    .await;
    let named = |name: &str| {
        rollout
            .iter()
            .find(|s| s.span.name == name)
            .unwrap_or_else(|| panic!("a {name} span in {rollout:#?}"))
    };
    let change = named("registry.change");
    assert!(
        change.span.parent_span_id.is_empty(),
        "the change is the root"
    );
    assert_eq!(change.service, "switchboard-control-plane");
    let mut parent = change;
    for (name, service) in [
        ("config.snapshot", "switchboard-control-plane"),
        ("config.push", "switchboard-control-plane"),
        ("config.apply", "switchboard-gateway"),
        ("config.acknowledged", "switchboard-control-plane"),
    ] {
        let span = named(name);
        assert_eq!(span.service, service, "{name}");
        assert_eq!(
            span.span.parent_span_id, parent.span.span_id,
            "{name} is the child of {}",
            parent.span.name
        );
        parent = span;
    }
    let apply = named("config.apply");
    assert_eq!(attribute(apply, "result"), "ack");
    assert!(
        apply
            .span
            .events
            .iter()
            .any(|e| e.name == "starting server"
                && string_attribute(&e.attributes, "server") == "more"),
        "the apply starts the new server: {:#?}",
        apply.span.events
    );
    // The new server's first start, with its outcome, inside the apply.
    let start = named("server.start");
    assert_eq!(start.span.parent_span_id, apply.span.span_id);
    assert_eq!(attribute(start, "server"), "more");
    assert_eq!(attribute(start, "outcome"), "ready");
    // Log lines inside the apply name its trace.
    let apply_trace = hex(&apply.span.trace_id);
    let logs = sb.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("snapshot applied") && l.contains(&apply_trace)),
        "{logs}"
    );

    // The same trace from the control plane's API.
    let api = format!("http://{}", sb.control_http);
    let trace = sb
        .get_json(&format!("{api}/traces/{TRACE_ID}"))
        .await
        .expect("GET /traces/{id}");
    let names: Vec<&str> = trace["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["tools/call demo.info", "tools/call info"],
        "{trace}"
    );
    let found = |listing: Value| {
        listing["traces"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["traceId"] == TRACE_ID))
    };
    let matching = sb
        .get_json(&format!(
            "{api}/traces?server=demo&tool=demo.info&caller=e2e-agent"
        ))
        .await
        .expect("GET /traces");
    assert!(found(matching.clone()), "{matching}");
    let other_caller = sb
        .get_json(&format!("{api}/traces?caller=someone-else"))
        .await
        .expect("GET /traces");
    assert!(!found(other_caller));

    // A client that traces only its HTTP calls: the header is the parent.
    let header_trace = "0af7651916cd43dd8448eb211c80319c";
    let header_parent = "b7ad6b7169203331";
    let traceparent = format!("00-{header_trace}-{header_parent}-01");
    let http_traced = connect_with_headers(&sb.mcp_url(), &[("traceparent", &traceparent)])
        .await
        .expect("connect");
    call(&http_traced, "demo.echo", json!({ "text": "x" }))
        .await
        .expect("echo");
    let by_header = eventually("the header-parented trace", EVENTUALLY, || async {
        let trace = sb
            .get_json(&format!("{api}/traces/{header_trace}"))
            .await
            .map_err(|e| e.to_string())?;
        let spans = trace["spans"].as_array().cloned().unwrap_or_default();
        spans
            .into_iter()
            .find(|s| s["name"] == "tools/call demo.echo")
            .ok_or(trace.to_string())
    })
    .await;
    assert_eq!(by_header["parentSpanId"], header_parent, "{by_header}");
    assert_eq!(by_header["kind"], "server");

    // A failing call is found by the error filter, with its error type.
    let failed = call(
        &client,
        "demo.fail",
        json!({ "message": "broken on purpose" }),
    )
    .await
    .expect("demo.fail");
    assert_eq!(failed.is_error, Some(true));
    let errors = eventually("the failed call's trace", EVENTUALLY, || async {
        let listing = sb
            .get_json(&format!("{api}/traces?error=true&tool=demo.fail"))
            .await
            .map_err(|e| e.to_string())?;
        (!listing["traces"].as_array().is_none_or(Vec::is_empty))
            .then(|| listing.clone())
            .ok_or(listing.to_string())
    })
    .await;
    let failed_id = errors["traces"][0]["traceId"].as_str().unwrap_or_default();
    let failed_trace = sb
        .get_json(&format!("{api}/traces/{failed_id}"))
        .await
        .expect("failed trace");
    assert!(
        failed_trace["spans"]
            .as_array()
            .expect("spans")
            .iter()
            .all(|s| s["attributes"]["error.type"] == "tool_error" && s["error"] == true),
        "{failed_trace}"
    );
    assert!(!found(
        sb.get_json(&format!("{api}/traces?error=true"))
            .await
            .expect("GET /traces")
    ));

    // An export whose span is not a protobuf message is refused whole, with
    // the reason; the receiver goes on taking valid ones (below).
    let mut raw = proto::otlp::trace_service_client::TraceServiceClient::connect(format!(
        "http://{}",
        sb.grpc
    ))
    .await
    .expect("connect to the control plane's OTLP receiver");
    let refused = raw
        .export(proto::otlp::ExportTraceServiceRequest {
            resource_spans: vec![proto::otlp::ResourceSpans {
                scope_spans: vec![proto::otlp::ScopeSpans {
                    spans: vec![vec![0x0a, 0x10, 7]],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
        .await
        .expect_err("a truncated span");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("span 0 of the export is not an OTLP Span"),
        "{refused:?}"
    );
    let (_, text) = sb
        .get_text(&format!("{api}/metrics"))
        .await
        .expect("control plane /metrics");
    assert_eq!(
        metric(
            &text,
            "switchboard_control_spans_dropped_total",
            &[("reason", "invalid_export")]
        ),
        Some(1.0),
        "{text}"
    );

    // The control plane's receiver takes gzip, as collectors send it.
    let mut otlp = TraceServiceClient::connect(format!("http://{}", sb.grpc))
        .await
        .expect("connect to the control plane's OTLP receiver")
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let gzipped_trace = [7u8; 16];
    otlp.export(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: gzipped_trace.to_vec(),
                    span_id: vec![1; 8],
                    name: "from a collector".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
    .await
    .expect("a gzip export is accepted");
    let stored = sb
        .get_json(&format!("{api}/traces/{}", hex(&gzipped_trace)))
        .await
        .expect("the gzip-exported trace");
    assert_eq!(stored["spans"][0]["name"], "from a collector");

    // The request log line, as JSON, names caller, tool, server, outcome.
    let log = sb.gateway.as_ref().expect("gateway").log();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let request = lines
        .iter()
        .find(|l| l["message"] == "request" && l["tool"] == "demo.info")
        .unwrap_or_else(|| panic!("no request line for demo.info in:\n{log}"));
    assert_eq!(request["caller"], "e2e-agent", "{request}");
    assert_eq!(request["server"], "demo");
    assert_eq!(request["method"], "tools/call");
    assert_eq!(request["outcome"], "ok");
    assert_eq!(request["trace_id"], TRACE_ID);
    assert_eq!(request["request_id"], "1");
    assert!(request["duration_ms"].as_f64().is_some(), "{request}");
    assert!(!request["session"].as_str().unwrap_or("").is_empty());
    assert!(!log.contains(SECRET), "tool arguments were logged");
}

#[tokio::test]
async fn metrics_and_logfmt_lines_describe_a_known_workload() {
    let demo = demo_server_yaml("demo", &format!("metrics-{}", std::process::id()), &[]);
    let sb = Switchboard::start_with(&[("demo.yaml", &demo)], &[], &["--log-payloads"]).await;
    sb.wait_server_state("demo", "ready").await;
    // No caller header or query: the client's `clientInfo.name` names it.
    let client = connect(&sb.mcp_url()).await.expect("connect");
    for _ in 0..3 {
        call(&client, "demo.echo", json!({ "text": SECRET }))
            .await
            .expect("echo");
    }
    call(&client, "demo.fail", json!({ "message": "no" }))
        .await
        .expect("fail");
    call(&client, "demo.nope", json!({}))
        .await
        .expect_err("unknown tool");
    // A second session that names itself by header.
    let named = connect_with_headers(&sb.mcp_url(), &[("x-switchboard-caller", "team-b")])
        .await
        .expect("connect");
    call(&named, "demo.add", json!({ "a": 1, "b": 2 }))
        .await
        .expect("add");

    let url = format!("http://{}/metrics", sb.gateway_addr);
    let (status, text) = sb.get_text(&url).await.expect("GET /metrics");
    assert_eq!(status, 200);
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let value = |name: &str, labels: &[(&str, &str)]| {
        metric(&text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
    };
    let calls = |server: &str, outcome: &str| {
        value(
            "switchboard_requests_total",
            &[
                ("server", server),
                ("method", "tools/call"),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(calls("demo", "ok"), 4.0);
    assert_eq!(calls("demo", "tool_error"), 1.0);
    assert_eq!(calls("", "unknown_tool"), 1.0);
    let latency = [("server", "demo"), ("method", "tools/call")];
    assert_eq!(
        value("switchboard_request_duration_seconds_count", &latency),
        5.0
    );
    assert_eq!(
        value("switchboard_downstream_duration_seconds_count", &latency),
        5.0
    );
    assert!(value("switchboard_request_duration_seconds_sum", &latency) > 0.0);
    assert_eq!(value("switchboard_sessions", &[]), 2.0);
    let server = [("server", "demo")];
    assert_eq!(value("switchboard_server_ready", &server), 1.0);
    assert_eq!(value("switchboard_server_tools", &server), 12.0);
    assert_eq!(value("switchboard_server_breaker_state", &server), 0.0);
    assert_eq!(value("switchboard_server_restarts", &server), 0.0);
    assert_eq!(value("switchboard_server_connections", &server), 1.0);
    assert_eq!(
        value("switchboard_config_updates_total", &[("result", "ack")]),
        1.0
    );
    assert_eq!(value("switchboard_control_plane_connected", &[]), 1.0);
    assert_eq!(value("switchboard_draining", &[]), 0.0);
    assert_eq!(
        value("switchboard_config_version", &[]),
        sb.health().await["configVersion"].as_f64().unwrap_or(-1.0)
    );

    // Closing a session shows.
    named.cancel().await.expect("close session");
    eventually("one session left", EVENTUALLY, || async {
        let (_, text) = sb.get_text(&url).await.map_err(|e| e.to_string())?;
        let sessions = metric(&text, "switchboard_sessions", &[]);
        (sessions == Some(1.0))
            .then_some(())
            .ok_or(format!("{sessions:?}"))
    })
    .await;

    // The control plane: the replica, its ACK, the registry, its spans.
    let control = format!("http://{}/metrics", sb.control_http);
    let text = eventually("spans at the control plane", EVENTUALLY, || async {
        let (_, text) = sb.get_text(&control).await.map_err(|e| e.to_string())?;
        let received = metric(&text, "switchboard_control_spans_received_total", &[]);
        // initialize + 5 calls (+ their CLIENT spans) from the first session
        (received >= Some(11.0))
            .then(|| text.clone())
            .ok_or(format!("{received:?}"))
    })
    .await;
    let value =
        |name: &str| metric(&text, name, &[]).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    assert_eq!(value("switchboard_control_replicas_connected"), 1.0);
    assert_eq!(value("switchboard_control_config_acks_total"), 1.0);
    assert_eq!(value("switchboard_control_config_nacks_total"), 0.0);
    assert_eq!(value("switchboard_control_registry_servers"), 1.0);
    assert_eq!(value("switchboard_control_registry_issues"), 0.0);
    assert!(value("switchboard_control_traces_buffered") >= 6.0);

    // Every metric the Grafana dashboard queries exists.
    let (_, gateway_text) = sb.get_text(&url).await.expect("GET /metrics");
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/switchboard-dashboard.json"
    ))
    .expect("read the dashboard");
    let queried: std::collections::BTreeSet<&str> = dashboard
        .match_indices("switchboard_")
        .map(|(at, _)| {
            let name = &dashboard[at..];
            let end = name
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(name.len());
            &name[..end]
        })
        .collect();
    assert!(queried.len() >= 10, "{queried:?}");
    for name in queried {
        assert!(
            gateway_text.contains(name) || text.contains(name),
            "the dashboard queries `{name}`, which neither plane exposes"
        );
    }

    // logfmt lines; the request line carries the caller from clientInfo
    // or the header, and payloads appear because --log-payloads is on.
    let log = sb.gateway.as_ref().expect("gateway").log();
    let lines: Vec<BTreeMap<String, String>> = log.lines().map(logfmt).collect();
    for (line, fields) in log.lines().zip(&lines) {
        assert!(
            fields.contains_key("ts") && fields.contains_key("level"),
            "not logfmt: {line}"
        );
    }
    let request = |tool: &str| {
        lines
            .iter()
            .find(|f| {
                f.get("message").map(String::as_str) == Some("request")
                    && f.get("tool").map(String::as_str) == Some(tool)
            })
            .unwrap_or_else(|| panic!("no request line for {tool} in\n{log}"))
    };
    let echo = request("demo.echo");
    assert_eq!(echo["caller"], "switchboard-e2e");
    assert_eq!(echo["outcome"], "ok");
    assert_eq!(echo["server"], "demo");
    assert!(echo["duration_ms"].parse::<f64>().is_ok(), "{echo:?}");
    assert_eq!(request("demo.add")["caller"], "team-b");
    let unknown = request("demo.nope");
    assert_eq!(unknown["outcome"], "unknown_tool");
    assert!(unknown["error"].contains("demo.nope"), "{unknown:?}");
    assert!(
        lines.iter().any(
            |f| f.get("message").map(String::as_str) == Some("request payload")
                && f.get("request").is_some_and(|r| r.contains(SECRET))
        ),
        "--log-payloads logs the arguments:\n{log}"
    );
}

#[tokio::test]
async fn spans_nobody_receives_are_dropped_and_counted_and_calls_go_on() {
    let demo = demo_server_yaml("demo", &format!("drop-{}", std::process::id()), &[]);
    // Nothing listens at either address.
    let nowhere = format!("http://{}", free_addr());
    let sb =
        Switchboard::start_with(&[("demo.yaml", &demo)], &["--otlp-forward", &nowhere], &[]).await;
    sb.wait_server_state("demo", "ready").await;
    let away_addr = free_addr();
    let _away = sb.spawn_replica_with(away_addr, "e2e-away", &["--otlp-endpoint", &nowhere]);
    let away_health = format!("http://{away_addr}/healthz");
    eventually("the second replica's demo server", EVENTUALLY, || async {
        let health = sb.get_json(&away_health).await.map_err(|e| e.to_string())?;
        (health["servers"]["demo"]["state"] == "ready")
            .then_some(())
            .ok_or(health.to_string())
    })
    .await;

    for url in [sb.mcp_url(), format!("http://{away_addr}/mcp")] {
        let client = connect(&url).await.expect("connect");
        for _ in 0..3 {
            let result = call(&client, "demo.echo", json!({ "text": "x" }))
                .await
                .expect("calls work without a span receiver");
            assert_eq!(result.is_error, Some(false));
        }
    }
    // The replica exporting nowhere counts its failed exports.
    let away_metrics = format!("http://{away_addr}/metrics");
    eventually("export failures counted", EVENTUALLY, || async {
        let (_, text) = sb
            .get_text(&away_metrics)
            .await
            .map_err(|e| e.to_string())?;
        let dropped = metric(
            &text,
            "switchboard_spans_dropped_total",
            &[("reason", "export_failed")],
        );
        (dropped >= Some(7.0))
            .then_some(())
            .ok_or(format!("{dropped:?}"))
    })
    .await;
    // The control plane received the other replica's spans and counts
    // those it could not forward.
    let control = format!("http://{}/metrics", sb.control_http);
    eventually("forward failures counted", EVENTUALLY, || async {
        let (_, text) = sb.get_text(&control).await.map_err(|e| e.to_string())?;
        let dropped = metric(
            &text,
            "switchboard_control_spans_dropped_total",
            &[("reason", "forward_failed")],
        );
        let received = metric(&text, "switchboard_control_spans_received_total", &[]);
        (dropped >= Some(7.0) && received == dropped)
            .then_some(())
            .ok_or(format!("dropped {dropped:?}, received {received:?}"))
    })
    .await;
}

/// The OpenTelemetry SDK's settings change what a replica exports: where
/// (OTLP/gRPC or OTLP/HTTP), with which headers, as which service and
/// resource, which traces (the sampler), and nothing at all when the SDK
/// is disabled.
#[tokio::test]
async fn otel_settings_change_what_is_exported() {
    let mut sb = Switchboard::start(&[(
        "demo.yaml",
        &demo_server_yaml("demo", &format!("otel-env-{}", std::process::id()), &[]),
    )])
    .await;
    sb.wait_server_state("demo", "ready").await;
    let grpc = OtlpReceiver::start().await;
    let http = OtlpReceiver::start_http().await;
    let env = |pairs: &[(&str, String)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    };
    let replicas = [
        (
            "otel-grpc",
            env(&[
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    format!("http://{}", grpc.addr),
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "x-team=ops,x-key=a%20b".into(),
                ),
                ("OTEL_SERVICE_NAME", "gateway-blue".into()),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "k8s.pod.name=gw-0,k8s.namespace.name=mcp".into(),
                ),
            ]),
        ),
        (
            "otel-http",
            env(&[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    format!("http://{}/v1/traces", http.addr),
                ),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf".into()),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                    "authorization=Bearer collector-token".into(),
                ),
            ]),
        ),
        (
            "otel-sampled-out",
            env(&[
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    format!("http://{}/", http.addr),
                ),
                ("OTEL_TRACES_SAMPLER", "traceidratio".into()),
                ("OTEL_TRACES_SAMPLER_ARG", "0".into()),
                ("OTEL_SERVICE_NAME", "sampled-out".into()),
            ]),
        ),
        (
            "otel-disabled",
            env(&[
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    format!("http://{}", http.addr),
                ),
                ("OTEL_SDK_DISABLED", "true".into()),
                ("OTEL_SERVICE_NAME", "disabled".into()),
            ]),
        ),
    ];
    let mut running = Vec::new();
    for (id, mut vars) in replicas {
        // The SDK's batches leave quickly, so silence below means nothing came.
        vars.push(("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()));
        sb.gateway_env = vars;
        let listen = free_addr();
        running.push(sb.spawn_replica(listen, id));
        wait_listening(id, listen).await;
        let url = format!("http://{listen}/mcp");
        eventually(&format!("{id} serves demo"), EVENTUALLY, || async {
            let client = connect(&url).await.map_err(|e| e.to_string())?;
            call(&client, "demo.echo", json!({ "text": id }))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await;
    }

    let served = |receiver: &OtlpReceiver, service: &str| {
        receiver
            .spans()
            .into_iter()
            .filter(|s| s.service == service && s.span.name == "tools/call demo.echo")
            .collect::<Vec<_>>()
    };
    let over_grpc = eventually("spans over OTLP/gRPC", EVENTUALLY, || async {
        let spans = served(&grpc, "gateway-blue");
        spans.first().cloned().ok_or("none yet".to_owned())
    })
    .await;
    assert_eq!(
        over_grpc.headers.get("x-team").map(String::as_str),
        Some("ops")
    );
    assert_eq!(
        over_grpc.headers.get("x-key").map(String::as_str),
        Some("a b")
    );
    assert_eq!(over_grpc.resource["k8s.pod.name"], "gw-0");
    assert_eq!(over_grpc.resource["k8s.namespace.name"], "mcp");
    assert_eq!(over_grpc.resource["service.instance.id"], "otel-grpc");
    assert!(
        !over_grpc.headers.contains_key("authorization"),
        "the control plane's token goes to the control plane only"
    );
    // The replica's own work goes the same way (the SDK's batches leave
    // every few seconds).
    eventually("the replica's apply over OTLP/gRPC", EVENTUALLY, || async {
        grpc.spans()
            .iter()
            .any(|s| s.service == "gateway-blue" && s.span.name == "config.apply")
            .then_some(())
            .ok_or("none yet".to_owned())
    })
    .await;
    let over_http = eventually("spans over OTLP/HTTP", EVENTUALLY, || async {
        let spans = served(&http, "switchboard-gateway");
        spans.first().cloned().ok_or("none yet".to_owned())
    })
    .await;
    assert_eq!(
        over_http.headers.get("authorization").map(String::as_str),
        Some("Bearer collector-token")
    );
    assert_eq!(over_http.resource["service.instance.id"], "otel-http");
    // The others had as long, and more than a batch interval: the sampler
    // keeps every trace out, the disabled SDK exports nothing at all.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    for quiet in ["sampled-out", "disabled"] {
        assert!(
            http.spans().iter().all(|s| s.service != quiet),
            "{quiet} exported spans"
        );
    }
}
