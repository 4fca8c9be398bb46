//! Forwards received OTLP exports to the configured collector (Jaeger,
//! Tempo, an OpenTelemetry collector) over OTLP/gRPC with gzip, spans as
//! they arrived. Exports wait in a bounded queue; when it is full or the
//! collector fails, spans are dropped and counted, never queued without
//! bound.

use std::time::Duration;

use proto::otlp::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{codec::CompressionEncoding, transport::Channel};
use tracing::{info, warn};

use super::{DROP_FORWARD_FAILED, DROP_QUEUE_FULL, TraceCounters};

/// Exports waiting for the collector.
const QUEUE_CAPACITY: usize = 256;
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("invalid OTLP forward endpoint `{endpoint}`: {source}")]
pub struct EndpointError {
    endpoint: String,
    #[source]
    source: http::uri::InvalidUri,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    queue: mpsc::Sender<(ExportTraceServiceRequest, usize)>,
    counters: TraceCounters,
}

impl Forwarder {
    /// Starts the forwarding task for `endpoint`; it stops on `shutdown`.
    pub fn spawn(
        endpoint: &str,
        counters: TraceCounters,
        shutdown: CancellationToken,
    ) -> Result<(Self, JoinHandle<()>), EndpointError> {
        let channel = Channel::from_shared(endpoint.to_owned())
            .map_err(|source| EndpointError {
                endpoint: endpoint.to_owned(),
                source,
            })?
            .timeout(EXPORT_TIMEOUT)
            .connect_lazy();
        let client = TraceServiceClient::new(channel).send_compressed(CompressionEncoding::Gzip);
        let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
        info!(%endpoint, "forwarding spans over OTLP");
        let task = tokio::spawn(run(client, rx, counters.clone(), shutdown));
        Ok((Self { queue, counters }, task))
    }

    /// Queues an export of `spans` spans, or drops it if the queue is full.
    pub fn forward(&self, request: ExportTraceServiceRequest, spans: usize) {
        if self.queue.try_send((request, spans)).is_err() {
            self.counters.dropped(DROP_QUEUE_FULL).inc_by(spans as u64);
        }
    }
}

async fn run(
    mut client: TraceServiceClient<Channel>,
    mut queue: mpsc::Receiver<(ExportTraceServiceRequest, usize)>,
    counters: TraceCounters,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    loop {
        let (request, spans) = tokio::select! {
            next = queue.recv() => match next {
                Some(next) => next,
                None => break,
            },
            () = shutdown.cancelled() => break,
        };
        match client.export(request).await {
            Ok(_) => {
                counters.forwarded.inc_by(spans as u64);
                if std::mem::take(&mut failing) {
                    info!("span forwarding recovered");
                }
            }
            Err(status) => {
                counters.dropped(DROP_FORWARD_FAILED).inc_by(spans as u64);
                if !std::mem::replace(&mut failing, true) {
                    warn!(error = %status.message(), spans, "span forwarding failed; dropping spans until the collector is back");
                }
            }
        }
    }
}
