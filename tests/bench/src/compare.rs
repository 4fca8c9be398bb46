//! The gateway against its baselines in one run: the processes under test
//! (`TestBed`), the interleaved rounds (`compare`) and their report.
//!
//! Targets: two ceilings (the same echo served over streamable HTTP with
//! no gateway: `ceiling-json`, the bench's own stateless rmcp server that
//! answers JSON, and `ceiling-sse`, the demo server's `--http` mode with
//! sessions and SSE answers), the `gateway` (control plane + replica, the
//! demo server behind it on stdio) and the `floor` (the demo server's
//! stdio, no HTTP). Ratios are taken against the fastest ceiling.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use e2e::{Process, Switchboard, bin_dir, demo_server_with, free_addr};
use rmcp::{
    ServiceExt,
    service::{Peer, RoleClient, RunningService},
    transport::async_rw::AsyncRwTransport,
};
use serde_json::json;

use crate::{
    Args,
    light::{self, Call},
    measure::{Cpu, Sample, cpu_time, descendants, gateway_pid, rss_kib},
    real_client,
};

/// Samples by concurrency, then by target.
pub type Table = BTreeMap<usize, BTreeMap<&'static str, Sample>>;

/// Which client drives the load.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Drive {
    /// [`light`]: pre-built requests, every target including the JSON ceiling.
    Light,
    /// [`real_client`]: rmcp's client, which needs sessions, so the
    /// session-less JSON ceiling is left out.
    RealClient,
}

/// A control plane + gateway with the demo server behind it, the ceilings,
/// and the floor twice (one per driver: a stdio pipe has one reader).
pub struct TestBed {
    sb: Switchboard,
    demo_http: Process,
    demo_http_url: String,
    json_http: Process,
    json_http_url: String,
    /// Declared before `driver`: its pipes are dropped while the driver's
    /// runtime still runs.
    light_floor: light::Floor,
    driver: light::Driver,
    rmcp_floor: (RunningService<RoleClient, ()>, tokio::process::Child),
    rmcp_floor_peer: Peer<RoleClient>,
}

const CEILING_JSON: &str = "ceiling-json";
const CEILING_SSE: &str = "ceiling-sse";
const GATEWAY: &str = "gateway";
const FLOOR: &str = "floor";

// === impl Drive ===

impl Drive {
    /// Targets in the order they are measured within a round.
    pub fn targets(self) -> &'static [&'static str] {
        match self {
            Drive::Light => &[CEILING_JSON, CEILING_SSE, GATEWAY, FLOOR],
            Drive::RealClient => &[CEILING_SSE, GATEWAY, FLOOR],
        }
    }

    fn ceilings(self) -> &'static [&'static str] {
        match self {
            Drive::Light => &[CEILING_JSON, CEILING_SSE],
            Drive::RealClient => &[CEILING_SSE],
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Drive::Light => {
                "Driven by the light driver: pre-built `tools/call` bytes on kept-alive HTTP/1.1 \
                 connections (one session each, real handshake), or on the floor's stdio pipe; \
                 every answer checked; one thread of the bench process."
            }
            Drive::RealClient => {
                "Driven by rmcp's own client (streamable HTTP over reqwest, one session per \
                 worker; stdio for the floor), its cost per call included in every latency."
            }
        }
    }
}

// === impl TestBed ===

impl TestBed {
    pub async fn start(gateway_args: &[String]) -> anyhow::Result<Self> {
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
        let demo_http = sb.spawn_demo_http(addr, "bench-ceiling").await;
        let json_addr = free_addr();
        let mut command =
            tokio::process::Command::new(std::env::current_exe().context("own executable")?);
        command.arg("--serve-ceiling").arg(json_addr.to_string());
        let json_http = Process::spawn(
            "switchboard-bench --serve-ceiling",
            command,
            sb.log_path("ceiling-json"),
        );
        e2e::wait_listening("the JSON ceiling", json_addr).await;
        let driver = light::Driver::start()?;
        let demo = bin_dir().join("switchboard-gateway");
        let light_floor = driver
            .spawn_stdio(&demo, &["demo-server", "--instance", "bench-floor"])
            .await
            .context("starting the light driver's floor")?;
        let rmcp_floor = spawn_rmcp_floor().await?;
        Ok(Self {
            demo_http_url: format!("http://{addr}/mcp"),
            json_http_url: format!("http://{json_addr}/mcp"),
            rmcp_floor_peer: rmcp_floor.0.peer().clone(),
            rmcp_floor,
            light_floor,
            driver,
            demo_http,
            json_http,
            sb,
        })
    }

    /// The URL and echo tool of an HTTP target.
    pub fn http(&self, name: &str) -> Option<(String, &'static str)> {
        match name {
            CEILING_JSON => Some((self.json_http_url.clone(), "echo")),
            CEILING_SSE => Some((self.demo_http_url.clone(), "echo")),
            GATEWAY => Some((self.sb.mcp_url(), "demo.echo")),
            _ => None,
        }
    }

    /// `concurrency` workers calling the echo tool with `text` on target
    /// `name` for `duration`.
    pub async fn load(
        &self,
        drive: Drive,
        name: &str,
        concurrency: usize,
        duration: Duration,
        text: &str,
    ) -> Sample {
        match (drive, self.http(name)) {
            (Drive::Light, Some((url, tool))) => {
                let call = Arc::new(Call::echo(tool, text));
                self.driver.http(&url, call, concurrency, duration).await
            }
            (Drive::Light, None) => {
                let call = Arc::new(Call::echo("echo", text));
                self.driver
                    .stdio(&self.light_floor, call, concurrency, duration)
                    .await
            }
            (Drive::RealClient, http) => {
                let target = match http {
                    Some((url, tool)) => real_client::Target::Http {
                        url,
                        tool: tool.to_owned(),
                    },
                    None => real_client::Target::Stdio {
                        peer: self.rmcp_floor_peer.clone(),
                    },
                };
                real_client::load(&target, concurrency, duration, text).await
            }
        }
    }

    /// CPU time the processes behind target `name` have spent so far.
    fn cpu(&self, drive: Drive, name: &str) -> Cpu {
        let server = |pid| Cpu {
            server: cpu_time(pid),
            ..Cpu::default()
        };
        match name {
            CEILING_JSON => server(self.json_http.pid()),
            CEILING_SSE => server(self.demo_http.pid()),
            GATEWAY => {
                let Some(gateway) = gateway_pid(&self.sb) else {
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
            _ => match drive {
                Drive::Light => server(self.light_floor.pid()),
                Drive::RealClient => server(self.rmcp_floor.1.id()),
            },
        }
    }

    pub async fn memory_report(&self, args: &Args) -> anyhow::Result<String> {
        let pid = gateway_pid(&self.sb).context("the gateway under test is gone")?;
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
            let start = rss_kib(pid);
            let mut peak = start;
            let deadline = Instant::now() + Duration::from_secs(args.soak_seconds);
            while Instant::now() < deadline {
                let sample = self
                    .load(Drive::Light, GATEWAY, 32, Duration::from_secs(10), "soak")
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

/// The demo server as a child of this process, spoken to over stdio by
/// rmcp's client.
async fn spawn_rmcp_floor()
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

/// Every target of `drive` at each level, interleaved round by round so
/// machine noise hits all alike.
pub async fn compare(
    bed: &TestBed,
    args: &Args,
    drive: Drive,
    levels: &[usize],
    text: &str,
) -> Table {
    let mut table = Table::new();
    let duration = Duration::from_secs(args.seconds);
    for &concurrency in levels {
        for round in 0..args.rounds {
            for &name in drive.targets() {
                let before = bed.cpu(drive, name);
                let mut sample = bed.load(drive, name, concurrency, duration, text).await;
                sample.cpu = bed.cpu(drive, name) - before;
                eprintln!(
                    "c={concurrency} round {round} {name}: {:.0} req/s, p50 {:.3} ms, {} errors{}",
                    sample.rps(),
                    sample.quantile_ms(0.5),
                    sample.errors,
                    sample
                        .first_error
                        .as_deref()
                        .map(|e| format!(" (first: {e})"))
                        .unwrap_or_default(),
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

/// The fastest ceiling at one point: lowest p50 for latency ratios,
/// highest req/s for throughput ratios.
struct Fastest<'a> {
    by_p50: (&'static str, &'a Sample),
    by_rps: (&'static str, &'a Sample),
}

impl<'a> Fastest<'a> {
    fn of(drive: Drive, targets: &'a BTreeMap<&'static str, Sample>) -> Option<Self> {
        let ceilings: Vec<(&'static str, &Sample)> = drive
            .ceilings()
            .iter()
            .filter_map(|&name| Some((name, targets.get(name)?)))
            .filter(|(_, s)| !s.micros.is_empty())
            .collect();
        let by_p50 = ceilings
            .iter()
            .copied()
            .min_by(|a, b| a.1.quantile_ms(0.5).total_cmp(&b.1.quantile_ms(0.5)))?;
        let by_rps = ceilings
            .iter()
            .copied()
            .max_by(|a, b| a.1.rps().total_cmp(&b.1.rps()))?;
        Some(Self { by_p50, by_rps })
    }
}

pub fn render(title: &str, drive: Drive, table: &Table) -> String {
    let mut out = format!(
        "## {title}\n\n{} Driver CPU: the whole bench process (`getrusage`, user + system, \
         every thread) over the measured window per answered call, its kernel part in brackets.\n\n| concurrency | target | req/s | p50 ms | p99 ms | p999 ms | errors | driver CPU µs/call (kernel) |\n|---|---|---|---|---|---|---|---|\n",
        drive.describe()
    );
    for (concurrency, targets) in table {
        for name in drive.targets() {
            let Some(s) = targets.get(name) else { continue };
            let _ = writeln!(
                out,
                "| {concurrency} | {name} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {:.1} ({:.1}) |",
                s.rps(),
                s.quantile_ms(0.5),
                s.quantile_ms(0.99),
                s.quantile_ms(0.999),
                s.errors,
                s.per_call_us(s.driver_cpu.total()),
                s.per_call_us(s.driver_cpu.system),
            );
        }
    }
    out.push_str(
        "\nRatios against the fastest ceiling at each point (lowest p50, highest req/s):\n\n\
         | concurrency | gateway p50 ÷ ceiling p50 | gateway req/s ÷ ceiling req/s | gateway p50 ÷ floor p50 | gateway + control plane CPU ÷ ceiling server CPU |\n\
         |---|---|---|---|---|\n",
    );
    for (concurrency, t) in table {
        let (Some(fastest), Some(gateway)) = (Fastest::of(drive, t), t.get(GATEWAY)) else {
            continue;
        };
        let (p50_name, p50_ceiling) = fastest.by_p50;
        let (rps_name, rps_ceiling) = fastest.by_rps;
        let floor_p50 = t.get(FLOOR).map_or(f64::NAN, |f| f.quantile_ms(0.5));
        let own = gateway.per_call_us(gateway.cpu.gateway + gateway.cpu.control_plane);
        let _ = writeln!(
            out,
            "| {concurrency} | {:.2} ({p50_name}) | {:.2} ({rps_name}) | {:.2} | {:.2} ({rps_name}) |",
            gateway.quantile_ms(0.5) / p50_ceiling.quantile_ms(0.5),
            gateway.rps() / rps_ceiling.rps(),
            gateway.quantile_ms(0.5) / floor_p50,
            own / rps_ceiling.per_call_us(rps_ceiling.cpu.server),
        );
    }
    out.push_str(
        "\nCPU per call of the processes under test (µs, user + system of all threads, \
         over every round):\n\n\
         | concurrency | target | server | gateway | control plane |\n\
         |---|---|---|---|---|\n",
    );
    for (concurrency, targets) in table {
        for name in drive.targets() {
            let Some(s) = targets.get(name) else { continue };
            let own = |spent: Duration| {
                if *name == GATEWAY {
                    format!("{:.1}", s.per_call_us(spent))
                } else {
                    "—".to_owned()
                }
            };
            let _ = writeln!(
                out,
                "| {concurrency} | {name} | {:.1} | {} | {} |",
                s.per_call_us(s.cpu.server),
                own(s.cpu.gateway),
                own(s.cpu.control_plane),
            );
        }
    }
    out.push('\n');
    out
}
