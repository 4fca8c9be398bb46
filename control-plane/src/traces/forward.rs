//! Forwards received OTLP exports to the configured collector (Jaeger,
//! Tempo, an OpenTelemetry collector) over OTLP/gRPC or OTLP/HTTP
//! (`proto::otel`), spans as they arrived. Exports wait in a bounded queue; when it is full or the
//! collector fails, spans are dropped and counted, never queued without
//! bound.

use std::time::Duration;

use proto::{
    auth::Presenting,
    otel::{Destination, Protocol, Sender},
    otlp::ExportTraceServiceRequest,
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
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
    /// Starts the forwarding task for `destination`; it stops on `shutdown`.
    pub fn spawn(
        destination: &Destination,
        counters: TraceCounters,
        shutdown: CancellationToken,
    ) -> Result<(Self, JoinHandle<()>), EndpointError> {
        let endpoint = &destination.url;
        let sender = match destination.protocol {
            Protocol::Grpc => {
                let channel = Channel::from_shared(endpoint.clone())
                    .map_err(|source| EndpointError {
                        endpoint: endpoint.clone(),
                        source,
                    })?
                    .timeout(EXPORT_TIMEOUT)
                    .connect_lazy();
                Sender::grpc(
                    channel,
                    &destination.headers,
                    Presenting::default(),
                    destination.gzip,
                )
            }
            Protocol::HttpProtobuf => Sender::http(endpoint, &destination.headers),
        };
        let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
        info!(%endpoint, protocol = ?destination.protocol, "forwarding spans over OTLP");
        let task = tokio::spawn(run(sender, rx, counters.clone(), shutdown));
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
    mut sender: Sender,
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
        match sender.send(request).await {
            Ok(()) => {
                counters.forwarded.inc_by(spans as u64);
                if std::mem::take(&mut failing) {
                    info!("span forwarding recovered");
                }
            }
            Err(error) => {
                counters.dropped(DROP_FORWARD_FAILED).inc_by(spans as u64);
                if !std::mem::replace(&mut failing, true) {
                    warn!(%error, spans, "span forwarding failed; dropping spans until the collector is back");
                }
            }
        }
    }
}
