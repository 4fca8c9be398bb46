//! Forwards received OTLP exports to the configured collector (Jaeger,
//! Tempo, an OpenTelemetry collector) over OTLP/gRPC or OTLP/HTTP
//! (`proto::otel`), spans as they arrived. Exports wait in a bounded queue; when it is full or the
//! collector fails, spans are dropped and counted, never queued without
//! bound.

use proto::{
    auth::Presenting,
    otel::{Destination, Sender},
    otlp::ExportTraceServiceRequest,
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{info, warn};

use super::{DROP_FORWARD_FAILED, DROP_QUEUE_FULL, TraceCounters};

/// Exports waiting for the collector.
const QUEUE_CAPACITY: usize = 256;

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
        let sender = Sender::to(destination, Presenting::default(), |url| {
            Channel::from_shared(url.to_owned()).map_err(|source| EndpointError {
                endpoint: url.to_owned(),
                source,
            })
        })?;
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
