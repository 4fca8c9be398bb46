//! The OTLP span exporter: one task that drains the tracer's bounded
//! queue in batches and sends them to the control plane or a collector
//! (OTLP/gRPC or OTLP/HTTP, `proto::otel`), the spans as they were encoded:
//! the request path's own (`trace.rs`) and the SDK's (`sdk.rs`). A failed
//! export drops its batch and counts it: spans are diagnostics, and holding
//! them for an absent receiver would grow without bound. Nothing here is
//! ever awaited by a request.

use std::time::Duration;

use prometheus_client::metrics::{counter::Counter, family::Family};
use proto::{
    auth::Presenting,
    otel::{Destination, Sampling, Sender},
    otlp::{ExportTraceServiceRequest, ResourceSpans, ScopeSpans},
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    metrics::{DROP_EXPORT_FAILED, DROP_QUEUE_FULL, ReasonLabels},
    otlp,
    trace::{EncodedSpan, Tracer},
};

/// Spans waiting for export; beyond this they are dropped.
const QUEUE_CAPACITY: usize = 4096;
const MAX_BATCH: usize = 512;
/// How long a small batch waits for company before it is sent.
const LINGER: Duration = Duration::from_millis(200);
/// On shutdown, what is queued gets this long to leave.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
#[error("invalid OTLP endpoint `{endpoint}`: {source}")]
pub struct EndpointError {
    endpoint: String,
    #[source]
    source: crate::xds::Error,
}

/// Where spans go and as whom.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    pub destination: Destination,
    /// The OTLP resource every export carries.
    pub resource: Vec<(String, String)>,
    pub sampling: Sampling,
    /// Presented on every export (to the control plane's receiver).
    pub token: Presenting,
    /// For an `https` endpoint: the CA its certificate is checked against.
    pub ca_pem: Option<String>,
}

/// Counters the exporter keeps.
#[derive(Clone)]
pub struct ExportCounters {
    pub exported: Counter,
    pub dropped: Family<ReasonLabels, Counter>,
}

/// Starts the exporter; returns the tracer that feeds it and the task,
/// which ends after a final flush once `shutdown` is cancelled.
pub fn spawn(
    config: ExportConfig,
    counters: ExportCounters,
    shutdown: CancellationToken,
) -> Result<(Tracer, JoinHandle<()>), EndpointError> {
    let destination = &config.destination;
    let sender = Sender::to(destination, config.token.clone(), |url| {
        crate::xds::grpc_endpoint(url, config.ca_pem.as_deref()).map_err(|source| EndpointError {
            endpoint: url.to_owned(),
            source,
        })
    })?;
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let queue_full = counters
        .dropped
        .get_or_create(&ReasonLabels::new(DROP_QUEUE_FULL))
        .clone();
    let tracer = Tracer::new(tx, queue_full, config.sampling);
    info!(endpoint = %destination.url, protocol = ?destination.protocol, "exporting spans over OTLP");
    let resource: Vec<(&str, &str)> = config
        .resource
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let exporter = Exporter {
        sender,
        resource: otlp::resource(&resource),
        scope: otlp::scope("switchboard-gateway", env!("CARGO_PKG_VERSION")),
        counters,
        failing: false,
    };
    Ok((tracer, tokio::spawn(exporter.run(rx, shutdown))))
}

struct Exporter {
    sender: Sender,
    /// The encoded OTLP `Resource` and `InstrumentationScope` of every export.
    resource: Vec<u8>,
    scope: Vec<u8>,
    counters: ExportCounters,
    /// Logs only the first failure of a streak and the recovery.
    failing: bool,
}

impl Exporter {
    async fn run(mut self, mut spans: mpsc::Receiver<EncodedSpan>, shutdown: CancellationToken) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            tokio::select! {
                received = spans.recv_many(&mut batch, MAX_BATCH) => if received == 0 { break },
                () = shutdown.cancelled() => break,
            }
            let fill = async {
                loop {
                    let room = MAX_BATCH - batch.len();
                    if room == 0 || spans.recv_many(&mut batch, room).await == 0 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER, fill).await;
            self.export(std::mem::take(&mut batch)).await;
        }
        spans.close();
        let flush = async {
            while spans.recv_many(&mut batch, MAX_BATCH).await > 0 {
                self.export(std::mem::take(&mut batch)).await;
            }
        };
        if tokio::time::timeout(FLUSH_TIMEOUT, flush).await.is_err() {
            debug!("span flush cut short by shutdown");
        }
    }

    async fn export(&mut self, spans: Vec<EncodedSpan>) {
        if spans.is_empty() {
            return;
        }
        let count = spans.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: self.resource.clone(),
                scope_spans: vec![ScopeSpans {
                    scope: self.scope.clone(),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        match self.sender.send(request).await {
            Ok(()) => {
                self.counters.exported.inc_by(count);
                if std::mem::take(&mut self.failing) {
                    info!("span export recovered");
                }
            }
            Err(error) => {
                self.counters
                    .dropped
                    .get_or_create(&ReasonLabels::new(DROP_EXPORT_FAILED))
                    .inc_by(count);
                if !std::mem::replace(&mut self.failing, true) {
                    warn!(%error, spans = count, "span export failed; dropping spans until the receiver is back");
                }
            }
        }
    }
}
