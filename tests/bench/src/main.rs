//! `switchboard-bench`: measures the gateway against two baselines in the
//! same run, interleaved round by round so machine noise hits all alike:
//!
//! - **ceiling**: the demo server's echo tool served directly over
//!   streamable HTTP by the same binary (`demo-server --http`), no gateway;
//! - **gateway**: the same tool through a control plane + gateway replica,
//!   the server behind it over stdio;
//! - **floor**: a direct stdio call to the same server, no HTTP at all.
//!
//! HTTP load is real MCP: `initialize`, `notifications/initialized`, the
//! session header, `tools/call` answered as SSE. Results go to
//! `<out>/latest.md` and `<out>/latency.png`.

mod chart;
mod mcp_http;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use e2e::{Process, Switchboard, bin_dir, demo_server_with, free_addr};
use rmcp::{
    ServiceExt,
    model::CallToolRequestParams,
    service::{Peer, RoleClient, RunningService},
    transport::async_rw::AsyncRwTransport,
};
use serde_json::{Value, json};

use mcp_http::HttpClient;

#[derive(Parser)]
#[command(about = "Switchboard benchmark harness")]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Interleaved rounds per measurement point.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Concurrency levels for the echo scenario.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// Scenarios to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "echo,large,catalog,churn,sessions,propagation"
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
    /// Extra argument for the gateway under test in the echo, large and
    /// churn scenarios (repeatable), e.g. `--gateway-arg=--otlp-endpoint=none`.
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    gateway_args: Vec<String>,
}

/// Latencies and errors of one target at one point, and the CPU time its
/// processes spent on them.
#[derive(Default, Clone)]
struct Sample {
    micros: Vec<u32>,
    errors: u64,
    elapsed: Duration,
    cpu: Cpu,
}

/// CPU time (user + system, all threads) of the processes behind a target.
#[derive(Default, Clone, Copy)]
struct Cpu {
    /// The MCP server: over HTTP (ceiling), behind the gateway (with its
    /// stdio shim) or spoken to directly (floor).
    server: Duration,
    gateway: Duration,
    control_plane: Duration,
}

impl Sample {
    fn merge(&mut self, other: Sample) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.cpu = self.cpu + other.cpu;
    }

    fn rps(&self) -> f64 {
        self.micros.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Microseconds of `spent` per answered call.
    fn per_call_us(&self, spent: Duration) -> f64 {
        spent.as_secs_f64() * 1e6 / (self.micros.len() as f64).max(1.0)
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        if self.micros.is_empty() {
            return f64::NAN;
        }
        let mut sorted = self.micros.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() - 1) as f64 * q).round() as usize;
        f64::from(sorted[index]) / 1000.0
    }
}

impl std::ops::Add for Cpu {
    type Output = Cpu;

    fn add(self, other: Cpu) -> Cpu {
        Cpu {
            server: self.server + other.server,
            gateway: self.gateway + other.gateway,
            control_plane: self.control_plane + other.control_plane,
        }
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;

    fn sub(self, earlier: Cpu) -> Cpu {
        Cpu {
            server: self.server.saturating_sub(earlier.server),
            gateway: self.gateway.saturating_sub(earlier.gateway),
            control_plane: self.control_plane.saturating_sub(earlier.control_plane),
        }
    }
}

/// Where a load goes.
#[derive(Clone)]
enum Target {
    Http { url: String, tool: String },
    Stdio { peer: Peer<RoleClient> },
}

const TARGETS: [&str; 3] = ["ceiling", "gateway", "floor"];
/// Tools the demo server offers without `--extra-tools`.
const DEMO_TOOLS: usize = 12;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    e2e::install_tls_provider();
    // The processes under test log only warnings: logging is not what we measure.
    if std::env::var_os("SWITCHBOARD_TEST_LOG").is_none() {
        eprintln!("hint: set SWITCHBOARD_TEST_LOG=warn (the bench measures with quiet logs)");
    }
    std::fs::create_dir_all(&args.out)?;
    let mut report = header(&args.gateway_args);
    let mut chart_points = BTreeMap::new();

    if args.scenarios.iter().any(|s| s == "echo" || s == "large") {
        let bed = TestBed::start(&args.gateway_args).await?;
        if args.scenarios.iter().any(|s| s == "echo") {
            let echo = json!({ "text": "hello" });
            let table = compare(&bed, &args, &args.concurrency, &echo).await;
            report.push_str(&render_comparison("tools/call echo (small)", &table));
            chart_points = table;
        }
        if args.scenarios.iter().any(|s| s == "large") {
            let big = json!({ "text": "x".repeat(100 * 1024) });
            let table = compare(&bed, &args, &[1, 8], &big).await;
            report.push_str(&render_comparison(
                "tools/call with a 100 KiB result",
                &table,
            ));
        }
        report.push_str(&bed.memory_report(&args).await?);
    }
    if args.scenarios.iter().any(|s| s == "catalog") {
        report.push_str(&catalog_scenario().await?);
    }
    if args.scenarios.iter().any(|s| s == "churn") {
        report.push_str(&churn_scenario(&args).await?);
    }
    if args.scenarios.iter().any(|s| s == "sessions") {
        report.push_str(&sessions_scenario(&args).await?);
    }
    if args.scenarios.iter().any(|s| s == "propagation") {
        report.push_str(&propagation_scenario().await?);
    }

    let md = args.out.join("latest.md");
    std::fs::write(&md, &report)?;
    if !chart_points.is_empty() {
        let png = args.out.join("latency.png");
        chart::render(&chart_points, &png)?;
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

/// A control plane + gateway with the demo server behind it, the same
/// server over HTTP (ceiling), and over stdio straight to this process (floor).
struct TestBed {
    sb: Switchboard,
    ceiling: Process,
    ceiling_url: String,
    floor_process: (RunningService<RoleClient, ()>, tokio::process::Child),
    floor: Peer<RoleClient>,
}

impl TestBed {
    async fn start(gateway_args: &[String]) -> anyhow::Result<Self> {
        let gateway_args: Vec<&str> = gateway_args.iter().map(String::as_str).collect();
        let sb = Switchboard::start_with(
            &[(
                "demo.yaml",
                &demo_server_with("demo", "bench-gateway", &[], json!({})),
            )],
            &[],
            &gateway_args,
        )
        .await;
        sb.wait_server_state("demo", "ready").await;
        let addr = free_addr();
        let ceiling = sb.spawn_demo_http(addr, "bench-ceiling").await;
        let floor = spawn_stdio_floor().await?;
        Ok(Self {
            ceiling_url: format!("http://{addr}/mcp"),
            floor: floor.0.peer().clone(),
            floor_process: floor,
            ceiling,
            sb,
        })
    }

    fn target(&self, name: &str) -> Target {
        match name {
            "ceiling" => Target::Http {
                url: self.ceiling_url.clone(),
                tool: "echo".into(),
            },
            "gateway" => Target::Http {
                url: self.sb.mcp_url(),
                tool: "demo.echo".into(),
            },
            _ => Target::Stdio {
                peer: self.floor.clone(),
            },
        }
    }

    /// `None` once the gateway is gone (pid 0 would stand for the whole
    /// machine in `descendants`).
    fn gateway_pid(&self) -> Option<u32> {
        gateway_pid(&self.sb)
    }

    /// CPU time the processes behind target `name` have spent so far.
    fn cpu(&self, name: &str) -> Cpu {
        match name {
            "ceiling" => Cpu {
                server: cpu_time(self.ceiling.pid()),
                ..Cpu::default()
            },
            "gateway" => {
                let Some(gateway) = self.gateway_pid() else {
                    return Cpu::default();
                };
                Cpu {
                    server: descendants(gateway)
                        .into_iter()
                        .map(Some)
                        .map(cpu_time)
                        .sum(),
                    gateway: cpu_time(Some(gateway)),
                    control_plane: cpu_time(self.sb.control.as_ref().and_then(Process::pid)),
                }
            }
            _ => Cpu {
                server: cpu_time(self.floor_process.1.id()),
                ..Cpu::default()
            },
        }
    }

    async fn memory_report(&self, args: &Args) -> anyhow::Result<String> {
        let pid = self
            .gateway_pid()
            .context("the gateway under test is gone")?;
        let mut out = String::from(
            "## Gateway memory\n\n| when | gateway RSS (MiB) | its servers' RSS (MiB) |\n|---|---|---|\n",
        );
        let row = |label: &str| {
            let own = rss_kib(pid) as f64 / 1024.0;
            let children: u64 = descendants(pid).into_iter().map(rss_kib).sum();
            format!("| {label} | {own:.1} | {:.1} |\n", children as f64 / 1024.0)
        };
        out.push_str(&row("after the echo runs"));
        if args.soak_seconds > 0 {
            let mut peak = 0u64;
            let start = rss_kib(pid);
            let deadline = Instant::now() + Duration::from_secs(args.soak_seconds);
            while Instant::now() < deadline {
                let sample = load(
                    &self.target("gateway"),
                    32,
                    Duration::from_secs(10),
                    &json!({ "text": "soak" }),
                )
                .await;
                peak = peak.max(rss_kib(pid));
                if sample.errors > 0 {
                    writeln!(out, "| soak errors | {} | |", sample.errors)?;
                }
            }
            let end = rss_kib(pid);
            writeln!(
                out,
                "| {}s soak at c=32: start / peak / end | {:.1} / {:.1} / {:.1} | |",
                args.soak_seconds,
                start as f64 / 1024.0,
                peak as f64 / 1024.0,
                end as f64 / 1024.0
            )?;
        }
        out.push('\n');
        Ok(out)
    }
}

/// The demo server as a child of this process, spoken to over stdio.
async fn spawn_stdio_floor()
-> anyhow::Result<(RunningService<RoleClient, ()>, tokio::process::Child)> {
    let mut child = tokio::process::Command::new(bin_dir().join("switchboard-gateway"))
        .args(["demo-server", "--instance", "bench-floor"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the floor server")?;
    let stdin = child.stdin.take().context("stdin")?;
    let stdout = child.stdout.take().context("stdout")?;
    let service = ().serve(AsyncRwTransport::new_client(stdout, stdin)).await?;
    Ok((service, child))
}

/// Interleaves ceiling, gateway and floor, round by round.
async fn compare(
    bed: &TestBed,
    args: &Args,
    levels: &[usize],
    arguments: &Value,
) -> BTreeMap<usize, BTreeMap<&'static str, Sample>> {
    let mut table: BTreeMap<usize, BTreeMap<&'static str, Sample>> = BTreeMap::new();
    for &concurrency in levels {
        for round in 0..args.rounds {
            for name in TARGETS {
                let before = bed.cpu(name);
                let mut sample = load(
                    &bed.target(name),
                    concurrency,
                    Duration::from_secs(args.seconds),
                    arguments,
                )
                .await;
                sample.cpu = bed.cpu(name) - before;
                eprintln!(
                    "c={concurrency} round {round} {name}: {:.0} req/s, {} errors",
                    sample.rps(),
                    sample.errors
                );
                table
                    .entry(concurrency)
                    .or_default()
                    .entry(name)
                    .or_default()
                    .merge(sample);
            }
        }
    }
    table
}

/// `concurrency` workers calling one tool in a loop for `duration`.
async fn load(
    target: &Target,
    concurrency: usize,
    duration: Duration,
    arguments: &Value,
) -> Sample {
    let http = HttpClient::new();
    let mut sessions = Vec::new();
    if let Target::Http { url, .. } = target {
        for _ in 0..concurrency {
            match http.initialize(url).await {
                Ok(session) => sessions.push(Some(session)),
                Err(err) => {
                    eprintln!("initialize failed: {err:#}");
                    sessions.push(None);
                }
            }
        }
    } else {
        sessions.resize_with(concurrency, || None);
    }
    let started = Instant::now();
    let deadline = started + duration;
    let workers = sessions.into_iter().map(|session| {
        let (target, http, arguments) = (target.clone(), http.clone(), arguments.clone());
        let url = match &target {
            Target::Http { url, .. } => Some(url.clone()),
            Target::Stdio { .. } => None,
        };
        async move {
            let mut sample = Sample::default();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let ok = match (&target, &session) {
                    (Target::Http { url, tool }, Some(session)) => {
                        http.call_tool(url, session, tool, &arguments).await.is_ok()
                    }
                    (Target::Http { .. }, None) => false,
                    (Target::Stdio { peer }, _) => {
                        let params = CallToolRequestParams::new("echo")
                            .with_arguments(arguments.as_object().cloned().unwrap_or_default());
                        peer.call_tool(params)
                            .await
                            .is_ok_and(|r| r.is_error != Some(true))
                    }
                };
                if ok {
                    sample
                        .micros
                        .push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
                } else {
                    sample.errors += 1;
                    if session.is_none() {
                        break;
                    }
                }
            }
            // Idle sessions would otherwise pile up across measurements.
            if let (Some(url), Some(session)) = (url, session) {
                let _ = http.delete(&url, &session).await;
            }
            sample
        }
    });
    let mut total = Sample::default();
    for sample in futures::future::join_all(workers).await {
        total.merge(sample);
    }
    total.elapsed = started.elapsed();
    total
}

fn render_comparison(
    title: &str,
    table: &BTreeMap<usize, BTreeMap<&'static str, Sample>>,
) -> String {
    let mut out = format!(
        "## {title}\n\n| concurrency | target | req/s | p50 ms | p99 ms | p999 ms | errors |\n|---|---|---|---|---|---|---|\n"
    );
    for (concurrency, targets) in table {
        for name in TARGETS {
            let s = &targets[name];
            let _ = writeln!(
                out,
                "| {concurrency} | {name} | {:.0} | {:.3} | {:.3} | {:.3} | {} |",
                s.rps(),
                s.quantile_ms(0.5),
                s.quantile_ms(0.99),
                s.quantile_ms(0.999),
                s.errors
            );
        }
    }
    out.push_str("\n| concurrency | gateway p50 ÷ ceiling p50 | gateway req/s ÷ ceiling req/s | gateway p50 ÷ floor p50 |\n|---|---|---|---|\n");
    for (concurrency, t) in table {
        let _ = writeln!(
            out,
            "| {concurrency} | {:.2} | {:.2} | {:.2} |",
            t["gateway"].quantile_ms(0.5) / t["ceiling"].quantile_ms(0.5),
            t["gateway"].rps() / t["ceiling"].rps(),
            t["gateway"].quantile_ms(0.5) / t["floor"].quantile_ms(0.5),
        );
    }
    out.push_str(
        "\nCPU per call (µs, user + system of all threads, over every round; \
         the bench client's own is left out):\n\n\
         | concurrency | ceiling: server | gateway: gateway | gateway: control plane | gateway: server | floor: server | gateway + control plane ÷ ceiling server |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for (concurrency, t) in table {
        let (ceiling, gateway, floor) = (&t["ceiling"], &t["gateway"], &t["floor"]);
        let ceiling_server = ceiling.per_call_us(ceiling.cpu.server);
        let own = gateway.per_call_us(gateway.cpu.gateway + gateway.cpu.control_plane);
        let _ = writeln!(
            out,
            "| {concurrency} | {ceiling_server:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
            gateway.per_call_us(gateway.cpu.gateway),
            gateway.per_call_us(gateway.cpu.control_plane),
            gateway.per_call_us(gateway.cpu.server),
            floor.per_call_us(floor.cpu.server),
            own / ceiling_server,
        );
    }
    out.push('\n');
    out
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
            for name in ["ceiling", "gateway"] {
                let Target::Http { url, tool } = bed.target(name) else {
                    continue;
                };
                let sample =
                    churn(&url, &tool, concurrency, Duration::from_secs(args.seconds)).await;
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
    let sb = Switchboard::start_with(
        &[(
            "demo.yaml",
            &demo_server_with("demo", "bench-sessions", &[], json!({})),
        )],
        &[],
        &["--park-idle-sessions-after", park_after.unwrap_or("0")],
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

fn gateway_pid(sb: &Switchboard) -> Option<u32> {
    sb.gateway.as_ref().and_then(Process::pid)
}

/// User + system CPU time of a process and all its threads so far; zero
/// for a process that is gone.
fn cpu_time(pid: Option<u32>) -> Duration {
    // `/proc` counts in USER_HZ, which Linux fixes at 100 per second.
    const TICK: Duration = Duration::from_millis(10);
    let ticks = pid.and_then(|pid| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name: state is the 3rd, utime the 14th.
        let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace().skip(11);
        let user: u32 = fields.next()?.parse().ok()?;
        let system: u32 = fields.next()?.parse().ok()?;
        Some(user + system)
    });
    TICK * ticks.unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Every process below `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let ppid = stat[stat.rfind(')')? + 1..]
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}
