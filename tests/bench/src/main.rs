//! `switchboard-bench`: measures the gateway against its baselines in the
//! same run, interleaved round by round so machine noise hits all alike
//! (`compare`), plus catalog, session churn, idle sessions and config
//! propagation scenarios. Results go to `<out>/latest.md` and
//! `<out>/latency.png`.
//!
//! The echo ratios are measured with a light driver (`light`) so the
//! client's own cost does not pad both sides of them; `real-client` runs
//! the same comparison with rmcp's client (`real_client`).

mod ceiling;
mod chart;
mod compare;
mod console;
mod light;
mod mcp_http;
mod measure;
mod real_client;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use e2e::{Process, Switchboard, demo_server_with, free_addr};
use serde_json::{Value, json};

use compare::{Drive, TestBed, compare};
use mcp_http::HttpClient;
use measure::{OwnCpu, Sample, gateway_pid, rss_kib};

#[derive(Parser)]
#[command(about = "Switchboard benchmark harness")]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Interleaved rounds per measurement point.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Concurrency levels for the echo and real-client scenarios.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// Scenarios to run. `echo` and `large` use the light driver,
    /// `real-client` the echo through rmcp's client.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "echo,real-client,large,catalog,churn,sessions,moves,propagation,console"
    )]
    scenarios: Vec<String>,
    /// Idle sessions opened by the `sessions` scenario.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Concurrent sessions that each call a tool once (`sessions` scenario).
    #[arg(long, default_value_t = 1_000)]
    concurrent_calls: usize,
    /// Seconds of sustained load for the memory soak (0 = skip).
    #[arg(long, default_value_t = 0)]
    soak_seconds: u64,
    /// Output directory.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Extra argument for the gateway under test in the echo, real-client,
    /// large and churn scenarios (repeatable), e.g.
    /// `--gateway-arg=--otlp-endpoint=none`.
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    gateway_args: Vec<String>,
    /// Serve the JSON ceiling on this address instead of measuring (the
    /// harness starts itself this way).
    #[arg(long, hide = true)]
    serve_ceiling: Option<SocketAddr>,
}

/// Tools the demo server offers without `--extra-tools`.
const DEMO_TOOLS: usize = 12;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(addr) = args.serve_ceiling {
        return ceiling::serve(addr).await;
    }
    e2e::install_tls_provider();
    // The processes under test log only warnings: logging is not what we measure.
    if std::env::var_os("SWITCHBOARD_TEST_LOG").is_none() {
        eprintln!("hint: set SWITCHBOARD_TEST_LOG=warn (the bench measures with quiet logs)");
    }
    std::fs::create_dir_all(&args.out)?;
    let mut report = header(&args.gateway_args);
    let mut chart_points = BTreeMap::new();

    let wants = |name: &str| args.scenarios.iter().any(|s| s == name);
    if wants("echo") || wants("real-client") || wants("large") {
        let bed = TestBed::start(&args.gateway_args).await?;
        if wants("echo") {
            let table = compare(&bed, &args, Drive::Light, &args.concurrency, "hello").await;
            report.push_str(&compare::render(
                "tools/call echo (small), light driver",
                Drive::Light,
                &table,
            ));
            chart_points = table;
        }
        if wants("real-client") {
            let table = compare(&bed, &args, Drive::RealClient, &args.concurrency, "hello").await;
            report.push_str(&compare::render(
                "tools/call echo (small), real client (rmcp)",
                Drive::RealClient,
                &table,
            ));
        }
        if wants("large") {
            let big = "x".repeat(100 * 1024);
            let table = compare(&bed, &args, Drive::Light, &[1, 8], &big).await;
            report.push_str(&compare::render(
                "tools/call with a 100 KiB result, light driver",
                Drive::Light,
                &table,
            ));
        }
        report.push_str(&bed.memory_report(&args).await?);
    }
    if wants("catalog") {
        report.push_str(&catalog_scenario().await?);
    }
    if wants("churn") {
        report.push_str(&churn_scenario(&args).await?);
    }
    if wants("sessions") {
        report.push_str(&sessions_scenario(&args).await?);
    }
    if wants("moves") {
        report.push_str(&moves_scenario().await?);
    }
    if wants("propagation") {
        report.push_str(&propagation_scenario().await?);
    }
    if wants("tracing") {
        report.push_str(&tracing_scenario(&args).await?);
    }
    if wants("spans") {
        report.push_str(&spans_scenario()?);
    }
    if wants("console") {
        report.push_str(&console::scenario().await?);
    }

    let md = args.out.join("latest.md");
    std::fs::write(&md, &report)?;
    if !chart_points.is_empty() {
        let png = args.out.join("latency.png");
        chart::render(&chart_points, Drive::Light.targets(), &png)?;
        println!("chart: {}", png.display());
    }
    println!("{report}\nreport: {}", md.display());
    Ok(())
}

fn header(gateway_args: &[String]) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let gateway = if gateway_args.is_empty() {
        "gateway with default flags (tracing on, spans to the control plane)".to_owned()
    } else {
        format!("gateway flags: `{}`", gateway_args.join(" "))
    };
    format!(
        "# Switchboard benchmark\n\n{date} · {cores} cores · {cpu} · release build · {gateway}\n\n"
    )
}

/// 50 servers × 20 tools: time from the applied snapshot to all tools
/// listed, then `tools/list` latency over the 1,000-tool catalog.
async fn catalog_scenario() -> anyhow::Result<String> {
    const SERVERS: usize = 50;
    const TOOLS_PER_SERVER: usize = 20;
    // The demo server's own tools plus enough `extra_<n>` ones.
    let extra = (TOOLS_PER_SERVER - DEMO_TOOLS).to_string();
    let sb = Switchboard::start(&[]).await;
    let files: Vec<(String, String)> = (0..SERVERS)
        .map(|i| {
            let name = format!("s{i:02}");
            let yaml = demo_server_with(
                &name,
                &format!("bench-catalog-{i}"),
                &["--extra-tools", &extra],
                json!({}),
            );
            (format!("{name}.yaml"), yaml)
        })
        .collect();
    let http = HttpClient::new();
    let session = http.initialize(&sb.mcp_url()).await?;
    let before = sb.health().await["configVersion"].clone();
    let started = Instant::now();
    for (name, yaml) in &files {
        sb.write_file(name, yaml);
    }
    let mut applied = None;
    let listed = loop {
        if applied.is_none() && sb.health().await["configVersion"] != before {
            applied = Some(started.elapsed());
        }
        let tools = http
            .list_tools(&sb.mcp_url(), &session)
            .await
            .map_or(0, |(n, _)| n);
        if tools == SERVERS * TOOLS_PER_SERVER {
            break started.elapsed();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "catalog never filled: {tools} tools"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let applied = applied.unwrap_or(listed);
    let mut sample = Sample::default();
    let t = Instant::now();
    for _ in 0..200 {
        match http.list_tools(&sb.mcp_url(), &session).await {
            Ok((n, took)) if n == SERVERS * TOOLS_PER_SERVER => {
                sample.micros.push(took.as_micros() as u32)
            }
            _ => sample.errors += 1,
        }
    }
    sample.elapsed = t.elapsed();
    Ok(format!(
        "## Catalog: {SERVERS} stdio servers × 20 tools\n\n| measure | value |\n|---|---|\n\
         | registry write → snapshot applied | {:.0} ms |\n\
         | snapshot applied → all {} tools listed | {:.0} ms |\n\
         | tools/list p50 / p99 (1,000 tools, until the last byte) | {:.2} / {:.2} ms |\n| tools/list errors | {} |\n\n",
        applied.as_secs_f64() * 1e3,
        SERVERS * TOOLS_PER_SERVER,
        (listed - applied).as_secs_f64() * 1e3,
        sample.quantile_ms(0.5),
        sample.quantile_ms(0.99),
        sample.errors
    ))
}

/// initialize → tools/call → DELETE, in a loop, against ceiling and gateway.
async fn churn_scenario(args: &Args) -> anyhow::Result<String> {
    let bed = TestBed::start(&args.gateway_args).await?;
    let mut out = String::from(
        "## Session churn (initialize → call → delete)\n\n| concurrency | target | sessions/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|\n",
    );
    for concurrency in [1usize, 8] {
        let mut per_target: BTreeMap<&str, Sample> = BTreeMap::new();
        for _ in 0..args.rounds {
            for name in ["ceiling-sse", "gateway"] {
                let Some((url, tool)) = bed.http(name) else {
                    continue;
                };
                let sample =
                    churn(&url, tool, concurrency, Duration::from_secs(args.seconds)).await;
                per_target.entry(name).or_default().merge(sample);
            }
        }
        for (name, s) in per_target {
            writeln!(
                out,
                "| {concurrency} | {name} | {:.0} | {:.2} | {:.2} | {} |",
                s.rps(),
                s.quantile_ms(0.5),
                s.quantile_ms(0.99),
                s.errors
            )?;
        }
    }
    out.push('\n');
    Ok(out)
}

async fn churn(url: &str, tool: &str, concurrency: usize, duration: Duration) -> Sample {
    let http = HttpClient::new();
    let started = Instant::now();
    let deadline = started + duration;
    let workers = (0..concurrency).map(|_| {
        let http = http.clone();
        async move {
            let mut sample = Sample::default();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let ok = async {
                    let session = http.initialize(url).await?;
                    http.call_tool(url, &session, tool, &json!({ "text": "churn" }))
                        .await?;
                    http.delete(url, &session).await
                }
                .await;
                match ok {
                    Ok(()) => sample.micros.push(t0.elapsed().as_micros() as u32),
                    Err(_) => sample.errors += 1,
                }
            }
            sample
        }
    });
    let mut total = Sample::default();
    for s in futures::future::join_all(workers).await {
        total.merge(s);
    }
    total.elapsed = started.elapsed();
    total
}

/// Seconds of quiet after which the `sessions` scenario's gateway parks a
/// session (the default, 30 s, would only make the run longer).
const BENCH_PARK_AFTER: &str = "2";

/// Idle memory and memory per idle session, with every session in memory
/// and with idle sessions parked; then many parked sessions calling at once
/// (each call restores its session).
async fn sessions_scenario(args: &Args) -> anyhow::Result<String> {
    let live = row("all in memory", &open_idle_sessions(args, None).await?);
    let parked = open_idle_sessions(args, Some(BENCH_PARK_AFTER)).await?;
    let sb = &parked.switchboard;
    let url = sb.mcp_url();
    let http = HttpClient::new();
    let callers = parked
        .sessions
        .iter()
        .take(args.concurrent_calls)
        .map(|session| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.call_tool(&url, session, "demo.echo", &json!({ "text": "many" }))
                    .await
            }
        });
    let started = Instant::now();
    let results = futures::future::join_all(callers).await;
    let took = started.elapsed();
    let call_errors = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(err)) = results.iter().find(|r| r.is_err()) {
        eprintln!("first concurrent-call error: {err:#}");
    }
    let restores = metric(sb, "switchboard_session_restores_total").await;
    Ok(format!(
        "## Sessions\n\n{} idle sessions (initialize, then nothing). Parked: \
         `--park-idle-sessions-after {BENCH_PARK_AFTER}`, measured once all are parked.\n\n\
         | sessions | gateway RSS idle (example registry, excluding its servers) | with the sessions | per idle session | failed to open |\n\
         |---|---|---|---|---|\n{}{}\n\
         | {} parked sessions calling a tool at once | value |\n|---|---|\n\
         | errors | {call_errors} |\n| all answered in | {:.0} ms |\n| sessions restored | {restores} |\n\n",
        args.sessions,
        live,
        row("parked when idle", &parked),
        args.concurrent_calls.min(parked.sessions.len()),
        took.as_secs_f64() * 1e3,
    ))
}

/// One row of the sessions table.
fn row(what: &str, m: &IdleSessions) -> String {
    format!(
        "| {what} | {:.1} MiB | {:.1} MiB | {:.1} KiB | {} |\n",
        m.idle_kib as f64 / 1024.0,
        m.with_sessions_kib as f64 / 1024.0,
        m.per_session_kib(),
        m.open_errors,
    )
}

struct IdleSessions {
    switchboard: Switchboard,
    sessions: Vec<mcp_http::Session>,
    open_errors: usize,
    idle_kib: u64,
    with_sessions_kib: u64,
}

impl IdleSessions {
    fn per_session_kib(&self) -> f64 {
        self.with_sessions_kib.saturating_sub(self.idle_kib) as f64
            / self.sessions.len().max(1) as f64
    }
}

/// A gateway with `args.sessions` idle sessions open; with parking on,
/// measured once every session is parked.
async fn open_idle_sessions(args: &Args, park_after: Option<&str>) -> anyhow::Result<IdleSessions> {
    // Room for every session the scenario opens, over the default cap.
    let max_sessions = (args.sessions + args.concurrent_calls + 100).to_string();
    let sb = Switchboard::start_with(
        &[(
            "demo.yaml",
            &demo_server_with("demo", "bench-sessions", &[], json!({})),
        )],
        &[],
        &[
            "--park-idle-sessions-after",
            park_after.unwrap_or("0"),
            "--max-sessions",
            &max_sessions,
        ],
    )
    .await;
    sb.wait_server_state("demo", "ready").await;
    let pid = gateway_pid(&sb).context("the gateway under test is gone")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_kib = rss_kib(pid);
    let url = sb.mcp_url();
    let http = HttpClient::new();
    let mut sessions = Vec::with_capacity(args.sessions);
    let mut open_errors = 0;
    for chunk in 0..args.sessions.div_ceil(100) {
        let batch =
            (chunk * 100..((chunk + 1) * 100).min(args.sessions)).map(|_| http.initialize(&url));
        for result in futures::future::join_all(batch).await {
            match result {
                Ok(session) => sessions.push(session),
                Err(_) => open_errors += 1,
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    if park_after.is_some() {
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric(&sb, "switchboard_sessions_parked").await < sessions.len() as u64 {
            anyhow::ensure!(Instant::now() < deadline, "idle sessions were not parked");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Freed pages go back to the OS after the allocator's purge delay.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let with_sessions_kib = rss_kib(pid);
    Ok(IdleSessions {
        switchboard: sb,
        sessions,
        open_errors,
        idle_kib,
        with_sessions_kib,
    })
}

/// Sessions measured by the `moves` scenario.
const MOVES: usize = 200;

/// A session's first call on a replica that never saw it (the id opened
/// in full, the session adopted and restored) against its next call there
/// (the id opened for its UUID only), and a warm call on the replica that
/// opened it: what a move costs, and what opening an id costs every call.
async fn moves_scenario() -> anyhow::Result<String> {
    let sb = Switchboard::start(&[(
        "demo.yaml",
        &demo_server_with("demo", "bench-moves", &[], json!({})),
    )])
    .await;
    sb.wait_server_state("demo", "ready").await;
    let other = e2e::free_addr();
    let _replica = sb.spawn_replica(other, "bench-1");
    let other_url = format!("http://{other}/mcp");
    let ready = format!("http://{other}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(&ready).await.map(|r| r.status().as_u16()).ok() != Some(200) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the second replica never got ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (url, http) = (sb.mcp_url(), HttpClient::new());
    let args = json!({ "text": "moved" });
    let (mut home, mut first, mut next) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..MOVES {
        let session = http.initialize(&url).await?;
        http.call_tool(&url, &session, "demo.echo", &args).await?;
        for (target, times) in [
            (&url, &mut home),
            (&other_url, &mut first),
            (&other_url, &mut next),
        ] {
            let started = Instant::now();
            http.call_tool(target, &session, "demo.echo", &args).await?;
            times.push(started.elapsed());
        }
    }
    let p50 = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2].as_secs_f64() * 1e3
    };
    let (home, first, next) = (p50(&mut home), p50(&mut first), p50(&mut next));
    let (uuid_only, whole) = opening_ids()?;
    let intro = format!(
        "{MOVES} sessions opened on one replica, each called there, then twice on a second \
         replica of the same control plane (p50 of each). Opening an id, in this process: \
         {OPENS} opens of a Claude-Code-like session's id (every call opens it for its UUID; \
         adopting opens it whole)."
    );
    Ok(format!(
        "## Sessions moving between replicas\n\n{intro}\n\n\
         | call | p50 | vs a warm call where it was opened |\n|---|---|---|\n\
         | warm, on the replica that opened it | {home:.3} ms | 1.00 |\n\
         | first on a replica that never saw it (adopted) | {first:.3} ms | {:.2} |\n\
         | next on that replica | {next:.3} ms | {:.2} |\n\
         | opening an id for its UUID (every call) | {:.2} µs | {:.3} |\n\
         | opening an id whole (adoption) | {:.2} µs | {:.3} |\n\n",
        first / home,
        next / home,
        uuid_only * 1e3,
        uuid_only / home,
        whole * 1e3,
        whole / home,
    ))
}

/// Ids opened per measurement in [`opening_ids`].
const OPENS: u32 = 20_000;

/// The mean time, in ms, to open a session id for its UUID only and
/// whole, with the gateway's own code and a handshake as Claude Code sends.
fn opening_ids() -> anyhow::Result<(f64, f64)> {
    use data_plane::mcp::seal::{Rest, SessionKeys};

    let handshake = serde_json::from_value(json!({
        "protocolVersion": "2025-06-18",
        "capabilities": { "roots": { "listChanged": true }, "sampling": {}, "elicitation": {} },
        "clientInfo": { "name": "claude-code", "title": "Claude Code", "version": "2.0.31" }
    }))?;
    let keys = SessionKeys::local(Duration::from_secs(24 * 3600));
    let rest = Rest {
        owner: Some("team-a".to_owned()),
        handshake: Some(handshake),
    };
    let id = keys
        .seal(uuid::Uuid::new_v4(), &rest)
        .context("sealing a session id")?;
    let mut times = [0.0; 2];
    for (with_rest, time) in [false, true].into_iter().zip(&mut times) {
        let started = Instant::now();
        for _ in 0..OPENS {
            let claims = keys
                .open(std::hint::black_box(&id), with_rest)
                .map_err(|refused| anyhow::anyhow!("opening: {}", refused.as_str()))?;
            std::hint::black_box(claims);
        }
        *time = started.elapsed().as_secs_f64() * 1e3 / f64::from(OPENS);
    }
    Ok((times[0], times[1]))
}

/// The gateway with tracing on (spans to its control plane, as by
/// default) against one with tracing off (`--otlp-endpoint=none`),
/// rounds interleaved: c=1 p50 and c=32 throughput.
async fn tracing_scenario(args: &Args) -> anyhow::Result<String> {
    let on = TestBed::start(&args.gateway_args).await?;
    let mut off_args = args.gateway_args.clone();
    off_args.push("--otlp-endpoint=none".to_owned());
    let off = TestBed::start(&off_args).await?;
    let duration = Duration::from_secs(args.seconds);
    let mut samples: BTreeMap<(usize, bool), Sample> = BTreeMap::new();
    for concurrency in [1, 32] {
        for _ in 0..args.rounds {
            for (traced, bed) in [(true, &on), (false, &off)] {
                let sample = bed
                    .load(Drive::Light, "gateway", concurrency, duration, "hello")
                    .await;
                samples
                    .entry((concurrency, traced))
                    .or_default()
                    .merge(sample);
            }
        }
    }
    let p50 = |traced| {
        samples
            .get(&(1, traced))
            .map_or(0.0, |s| s.quantile_ms(0.5))
    };
    let rps = |traced| samples.get(&(32, traced)).map_or(0.0, Sample::rps);
    let errors: u64 = samples.values().map(|s| s.errors).sum();
    Ok(format!(
        "## Tracing on vs off\n\nThe gateway with every request traced (spans to its control plane) \
         and with tracing off (`--otlp-endpoint=none`), rounds interleaved, light driver; \
         {errors} errors.\n\n\
         | | tracing on | tracing off | on ÷ off |\n|---|---|---|---|\n\
         | c=1 p50 | {:.3} ms | {:.3} ms | {:.3} |\n\
         | c=32 req/s | {:.0} | {:.0} | {:.3} |\n\n",
        p50(true),
        p50(false),
        p50(true) / p50(false),
        rps(true),
        rps(false),
        rps(true) / rps(false),
    ))
}

/// Spans made per measurement in [`spans_scenario`].
const SPANS: u32 = 50_000;

/// The same request span (a `tools/call` SERVER span with its MCP
/// attributes, under a client's context) made the request path's way,
/// written straight into OTLP protobuf, and the OpenTelemetry SDK's way
/// (API, batch processor, encoded to OTLP by the same exporter the planes'
/// own work uses): this process's CPU per span, all threads counted.
fn spans_scenario() -> anyhow::Result<String> {
    use data_plane::telemetry::{SpanKind, TraceContext, Tracer};
    use opentelemetry::{
        KeyValue,
        trace::{
            Span as _, SpanKind as OtelKind, TraceContextExt, Tracer as _, TracerProvider as _,
        },
    };
    use proto::otel::{Sampling, sdk};

    const ATTRIBUTES: [(&str, &str); 10] = [
        ("mcp.method.name", "tools/call"),
        ("gen_ai.tool.name", "demo.echo"),
        ("gen_ai.operation.name", "execute_tool"),
        ("mcp.session.id", "3f2a9c1d5e7b8a60"),
        ("mcp.protocol.version", "2025-11-25"),
        ("jsonrpc.request.id", "42"),
        ("network.transport", "tcp"),
        ("switchboard.server", "demo"),
        ("switchboard.caller", "team-a"),
        ("switchboard.replica", "gw-0"),
    ];
    let parent = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");

    // The request path's own: encoded as recorded, handed to a queue.
    let (tx, mut rx) = tokio::sync::mpsc::channel(usize::try_from(SPANS)?);
    let tracer = Tracer::new(tx, Default::default(), Sampling::default());
    let started = OwnCpu::now();
    for _ in 0..SPANS {
        let mut span = tracer.start(
            || "tools/call demo.echo".to_owned(),
            SpanKind::Server,
            parent,
        );
        for (key, value) in ATTRIBUTES {
            span.set(key, value);
        }
    }
    let mut received = 0;
    while rx.try_recv().is_ok() {
        received += 1;
    }
    let own = OwnCpu::since(started).total();
    anyhow::ensure!(received == SPANS, "{received} of {SPANS} spans made");

    // The SDK's: the same span through the API and the batch processor.
    let sink = sdk::SpanSink::default();
    let exported = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = exported.clone();
    sink.bind(move |spans| {
        counted.fetch_add(
            u32::try_from(spans.len()).unwrap_or(0),
            std::sync::atomic::Ordering::Relaxed,
        );
    });
    let (_, provider) = sdk::layer::<tracing_subscriber::Registry>(sink, Sampling::default());
    let sdk_tracer = provider.tracer("bench");
    let carrier = std::collections::HashMap::from([(
        "traceparent".to_owned(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
    )]);
    let context = opentelemetry::propagation::TextMapPropagator::extract(
        &opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        &carrier,
    );
    anyhow::ensure!(context.span().span_context().is_valid(), "a parent");
    let started = OwnCpu::now();
    for n in 0..SPANS {
        let mut span = sdk_tracer
            .span_builder("tools/call demo.echo")
            .with_kind(OtelKind::Server)
            .with_attributes(ATTRIBUTES.map(|(k, v)| KeyValue::new(k, v)))
            .start_with_context(&sdk_tracer, &context);
        span.end();
        // The batch processor's queue holds 2,048: let it drain.
        if n % 1024 == 0 {
            let _ = provider.force_flush();
        }
    }
    let _ = provider.force_flush();
    let sdk_cpu = OwnCpu::since(started).total();
    let _ = provider.shutdown();
    let exported = exported.load(std::sync::atomic::Ordering::Relaxed);
    let per = |cpu: Duration| cpu.as_secs_f64() * 1e6 / f64::from(SPANS);
    Ok(format!(
        "## Request spans: written as OTLP vs the OpenTelemetry SDK\n\n\
         {SPANS} `tools/call` SERVER spans with 10 MCP attributes under a client's context, \
         each way; CPU of this process per span, every thread counted. The SDK's spans go through \
         its batch processor and are encoded to OTLP by the exporter the planes' own work uses \
         ({exported} of {SPANS} exported).\n\n\
         | way | CPU per span | vs written as OTLP |\n|---|---|---|\n\
         | written as OTLP (the request path's) | {:.2} µs | 1.00 |\n\
         | OpenTelemetry SDK | {:.2} µs | {:.2} |\n\n",
        per(own),
        per(sdk_cpu),
        per(sdk_cpu) / per(own),
    ))
}

/// A counter or gauge of the gateway's `/metrics`.
async fn metric(sb: &Switchboard, name: &str) -> u64 {
    let exposition = sb.gateway_metrics().await;
    e2e::metric(&exposition, name, &[]).map_or(0, |value| value as u64)
}

/// A registry edit until every one of 3 replicas has applied it.
async fn propagation_scenario() -> anyhow::Result<String> {
    const CHANGES: usize = 30;
    let yaml = |n: usize| {
        demo_server_with("demo", "bench-propagation", &[], json!({})).replace(
            "\"args\":",
            &format!("\"env\":[{{\"name\":\"N\",\"value\":\"{n}\"}}],\"args\":"),
        )
    };
    let sb = Switchboard::start(&[("demo.yaml", &yaml(0))]).await;
    let replicas: Vec<(SocketAddr, Process)> = (1..3)
        .map(|i| {
            let addr = free_addr();
            (addr, sb.spawn_replica(addr, &format!("bench-{i}")))
        })
        .collect();
    let mut urls: Vec<String> = vec![format!("http://{}/healthz", sb.gateway_addr)];
    urls.extend(
        replicas
            .iter()
            .map(|(addr, _)| format!("http://{addr}/healthz")),
    );
    let http = reqwest::Client::new();
    let version = |url: String| {
        let http = http.clone();
        async move {
            let body: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
            body["configVersion"].as_u64()
        }
    };
    // Wait for all replicas to be on the same version.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let versions = futures::future::join_all(urls.iter().cloned().map(version)).await;
        if versions.iter().all(|v| v.is_some() && *v == versions[0]) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "replicas never converged: {versions:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut sample = Sample::default();
    for n in 1..=CHANGES {
        let current = version(urls[0].clone()).await.unwrap_or(0);
        let t0 = Instant::now();
        sb.write_file("demo.yaml", &yaml(n));
        let mut pending: Vec<String> = urls.clone();
        while !pending.is_empty() {
            let versions = futures::future::join_all(pending.iter().cloned().map(version)).await;
            pending = pending
                .into_iter()
                .zip(versions)
                .filter(|(_, v)| v.is_none_or(|v| v <= current))
                .map(|(u, _)| u)
                .collect();
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "change {n} never arrived"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sample.micros.push(t0.elapsed().as_micros() as u32);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(format!(
        "## Config propagation (directory mode, 3 replicas)\n\n| measure | value |\n|---|---|\n\
         | registry file written → applied on all 3 replicas, p50 / p99 over {CHANGES} edits | {:.0} / {:.0} ms |\n\n\
         Includes the control plane's 50 ms debounce of file events and 1 ms polling.\n\n",
        sample.quantile_ms(0.5),
        sample.quantile_ms(0.99)
    ))
}
