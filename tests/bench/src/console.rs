//! The `console` scenario: the control plane's cost of open consoles with
//! 500 servers on 10 replicas. The replicas are scripted config streams
//! (no gateway runs 500 servers here): each ACKs every snapshot and
//! reports every server's health: "busy", once a second with new latency
//! figures for every server and one breaker turned open (the worst case:
//! real gateways report on a change); "steady", once a second with only
//! the breaker changing; "quiet", once, then nothing. Measured: the control plane's CPU with no console, one
//! and four consoles streaming; the bytes each console receives per
//! second; and the size and wait of the stream's first event, the whole
//! state.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    time::{Duration, Instant},
};

use e2e::{Switchboard, command_server_yaml};
use futures::StreamExt;
use proto::config::{
    self as pb, config_discovery_client::ConfigDiscoveryClient, control_message,
    replica_message::Kind,
};
use tokio::{sync::mpsc, task::JoinSet};
use tokio_stream::wrappers::ReceiverStream;

use crate::measure::cpu_time;

const SERVERS: usize = 500;
const REPLICAS: usize = 10;
/// Seconds each point is measured over.
const WINDOW: Duration = Duration::from_secs(10);

pub async fn scenario() -> anyhow::Result<String> {
    let mut sb = Switchboard::unstarted();
    for i in 0..SERVERS {
        let name = format!("s{i:03}");
        sb.write_file(
            &format!("{name}.yaml"),
            &command_server_yaml(&name, "true", &[]),
        );
    }
    sb.start_control_plane().await;
    let pid = sb.control.as_ref().and_then(e2e::Process::pid);
    let mut out = format!("## Console: {SERVERS} servers on {REPLICAS} replicas\n\n");
    for mode in [Mode::Busy, Mode::Steady, Mode::Quiet] {
        out.push_str(&measure(&sb, pid, mode).await?);
    }
    Ok(out)
}

/// What the scripted replicas report.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Busy,
    Steady,
    Quiet,
}

async fn measure(sb: &Switchboard, pid: Option<u32>, mode: Mode) -> anyhow::Result<String> {
    let mut replicas = JoinSet::new();
    for r in 0..REPLICAS {
        replicas.spawn(reporting_replica(sb.grpc, format!("bench-{r}"), mode));
    }
    let status = format!("http://{}/status", sb.control_http);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body: serde_json::Value = reqwest::get(&status).await?.json().await?;
        let reporting = body["replicas"].as_object().map_or(0, |r| {
            r.values()
                .filter(|r| r["connected"] == true)
                .filter(|r| r["servers"].as_array().is_some_and(|s| s.len() == SERVERS))
                .count()
        });
        if reporting == REPLICAS {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the replicas never all reported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let live = format!("http://{}/console/live", sb.control_http);
    let started = Instant::now();
    let mut first = reqwest::get(&live).await?.bytes_stream();
    let mut reset = Vec::new();
    while !reset.ends_with(b"\n\n") {
        let chunk = first
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("the stream ended"))??;
        reset.extend_from_slice(&chunk);
    }
    let first_event = started.elapsed();
    drop(first);

    let mut rows = Vec::new();
    for consoles in [0usize, 1, 4] {
        let mut readers = JoinSet::new();
        let from = Instant::now() + Duration::from_secs(1);
        for _ in 0..consoles {
            let live = live.clone();
            readers.spawn(async move {
                let mut bytes = 0usize;
                let Ok(response) = reqwest::get(&live).await else {
                    return 0;
                };
                let mut stream = response.bytes_stream();
                let until = from + WINDOW;
                while let Ok(Some(Ok(chunk))) =
                    tokio::time::timeout_at(until.into(), stream.next()).await
                {
                    // The first second's reset is not what is measured.
                    if Instant::now() >= from {
                        bytes += chunk.len();
                    }
                }
                bytes
            });
        }
        // The reset is not what is measured.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = cpu_time(pid);
        tokio::time::sleep(WINDOW).await;
        let spent = cpu_time(pid).saturating_sub(before);
        let mut received = 0;
        while let Some(bytes) = readers.join_next().await {
            received += bytes.unwrap_or(0);
        }
        let per_console = if consoles == 0 {
            0.0
        } else {
            received as f64 / consoles as f64 / WINDOW.as_secs_f64() / 1024.0
        };
        rows.push((
            consoles,
            spent.as_secs_f64() * 1e3 / WINDOW.as_secs_f64(),
            per_console,
        ));
    }
    replicas.abort_all();
    while replicas.join_next().await.is_some() {}

    // Against one console: what a second and more cost (the hub is shared).
    let one = rows[1].1;
    let mut out = format!(
        "### {}\n\nThe first event (the whole state, {} items): {:.0} KiB in {:.0} ms.\n\n| consoles streaming | control-plane CPU (ms/s) | ÷ one console | received per console (KiB/s) |\n|---|---|---|---|\n",
        match mode {
            Mode::Busy =>
                "Busy: a report a second per replica, new latencies for all servers, one breaker open",
            Mode::Steady =>
                "Steady: a report a second per replica, latencies hold, one breaker open",
            Mode::Quiet => "Quiet: one report per replica, then none",
        },
        1 + SERVERS + REPLICAS * (SERVERS + 1),
        reset.len() as f64 / 1024.0,
        first_event.as_secs_f64() * 1e3,
    );
    for (consoles, cpu, kib) in rows {
        // CPU time comes in 10 ms ticks: over the window, 1 ms/s at least.
        let ratio = if one >= 1.0 {
            format!("{:.2}", cpu / one)
        } else {
            "—".to_owned()
        };
        let _ = writeln!(out, "| {consoles} | {cpu:.1} | {ratio} | {kib:.0} |");
    }
    out.push('\n');
    Ok(out)
}

/// A replica that ACKs every snapshot and reports every server's health
/// once a second until aborted.
async fn reporting_replica(grpc: SocketAddr, replica_id: String, mode: Mode) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?
        .connect()
        .await?;
    let mut client = ConfigDiscoveryClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    let hello = pb::Hello {
        replica_id,
        build_version: "bench".to_owned(),
        applied_version: 0,
        peer_url: String::new(),
        started_at_ms: 0,
    };
    tx.send(pb::ReplicaMessage {
        kind: Some(Kind::Hello(hello)),
    })
    .await?;
    let mut inbound = client
        .stream_config(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut round = 0usize;
    loop {
        tokio::select! {
            message = inbound.next() => {
                let Some(Ok(message)) = message else { return Ok(()) };
                if let Some(control_message::Kind::Snapshot(snapshot)) = message.kind {
                    let ack = pb::Ack { version: snapshot.version, traceparent: String::new() };
                    tx.send(pb::ReplicaMessage { kind: Some(Kind::Ack(ack)) }).await?;
                }
            }
            _ = tick.tick() => {
                if mode == Mode::Quiet && round > 0 {
                    continue;
                }
                round += 1;
                let report = report(round, mode == Mode::Busy);
                tx.send(pb::ReplicaMessage { kind: Some(Kind::Health(report)) }).await?;
            }
        }
    }
}

fn report(round: usize, busy: bool) -> pb::HealthReport {
    let moving = if busy { round } else { 0 };
    let servers = (0..SERVERS)
        .map(|i| pb::ServerHealth {
            name: format!("s{i:03}"),
            state: pb::ServerState::Ready as i32,
            breaker: if i == round % SERVERS {
                pb::BreakerState::Open
            } else {
                pb::BreakerState::Closed
            } as i32,
            tool_count: 12,
            restarts: 0,
            latency_p50_us: 100 + ((moving * 7 + i) % 50) as u64,
            latency_p99_us: 900 + ((moving * 13 + i) % 200) as u64,
            connections: 1,
            ..Default::default()
        })
        .collect();
    pb::HealthReport {
        applied_version: 0,
        servers,
        sessions: 3,
        draining: false,
    }
}
