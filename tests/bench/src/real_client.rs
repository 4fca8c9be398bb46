//! The `real-client` scenario's load: rmcp's own MCP client (streamable
//! HTTP over reqwest, or stdio), one session per worker, on the harness's
//! multi-threaded runtime: what a client built on an SDK sees, its own
//! cost per call included.

use std::time::{Duration, Instant};

use rmcp::{
    ServiceExt,
    model::{CallToolRequestParams, JsonObject},
    service::{Peer, RoleClient, RunningService},
    transport::StreamableHttpClientTransport,
};
use serde_json::Value;

use crate::measure::{OwnCpu, Sample};

/// Where the rmcp client calls.
#[derive(Clone)]
pub enum Target {
    /// A new rmcp session per worker on `url`.
    Http { url: String, tool: String },
    /// The one stdio session every worker shares.
    Stdio { peer: Peer<RoleClient> },
}

/// `concurrency` workers calling the echo tool with `text` for `duration`;
/// sessions are opened before the measured window and closed after it.
pub async fn load(target: &Target, concurrency: usize, duration: Duration, text: &str) -> Sample {
    let mut sample = Sample::default();
    let mut clients: Vec<RunningService<RoleClient, ()>> = Vec::new();
    let (peers, tool) = match target {
        Target::Http { url, tool } => {
            for _ in 0..concurrency {
                match ().serve(StreamableHttpClientTransport::from_uri(url.clone())).await {
                    Ok(client) => clients.push(client),
                    Err(err) => sample.fail(format!("initialize: {err}")),
                }
            }
            let peers: Vec<Peer<RoleClient>> = clients.iter().map(|c| c.peer().clone()).collect();
            (peers, tool.clone())
        }
        Target::Stdio { peer } => (vec![peer.clone(); concurrency], "echo".to_owned()),
    };
    let mut arguments = JsonObject::new();
    arguments.insert("text".to_owned(), Value::String(text.to_owned()));
    let cpu_before = OwnCpu::now();
    let started = Instant::now();
    let deadline = started + duration;
    let workers = peers.into_iter().map(|peer| {
        let (tool, arguments) = (tool.clone(), arguments.clone());
        async move {
            let mut sample = Sample::default();
            while Instant::now() < deadline {
                let params =
                    CallToolRequestParams::new(tool.clone()).with_arguments(arguments.clone());
                let t0 = Instant::now();
                let result = peer.call_tool(params).await;
                let took = t0.elapsed();
                let outcome = match result {
                    Err(err) => Err(err.to_string()),
                    Ok(r) if r.is_error == Some(true) => Err("isError: true".to_owned()),
                    Ok(r) => {
                        let echoed = r.content.first().and_then(|c| c.as_text());
                        if echoed.is_some_and(|t| t.text == text) {
                            Ok(())
                        } else {
                            Err("the answer does not echo the text sent".to_owned())
                        }
                    }
                };
                sample.record(took, outcome);
            }
            sample
        }
    });
    for worker in futures::future::join_all(workers).await {
        sample.merge(worker);
    }
    sample.elapsed = started.elapsed();
    sample.driver_cpu = OwnCpu::since(cpu_before);
    // Idle sessions would otherwise pile up across measurements.
    for client in clients {
        let _ = client.cancel().await;
    }
    sample
}
