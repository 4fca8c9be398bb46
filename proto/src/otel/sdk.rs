//! The planes' own work (config rollouts, server starts and stops) traced
//! through `tracing` spans of the [`WORK`] target, which
//! `tracing-opentelemetry` bridges into the OpenTelemetry SDK. The SDK's
//! batch processor hands finished spans, encoded as OTLP `Span`s, to a
//! [`SpanSink`]: the replica's exporter queue, or the control plane's
//! trace store and forwarder. So one pipeline carries them and the request
//! path's own spans, with one resource, one queue and one drop counter.
//! The sink is bound once that pipeline exists; spans finished before
//! then are dropped. Context crosses the config stream as `traceparent`
//! strings in its messages.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, OnceLock},
};

use opentelemetry::{
    Context,
    propagation::TextMapPropagator,
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter},
};
use prost::Message;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{Layer, filter::Targets, registry::LookupSpan};

use super::Sampling;

/// The target of the `tracing` spans and events the SDK records.
pub const WORK: &str = "switchboard::work";

/// Takes finished spans, each an encoded OTLP `Span`.
type Take = dyn Fn(Vec<Vec<u8>>) + Send + Sync;

/// Where the SDK's spans go, once bound; cheap to clone.
#[derive(Clone, Default)]
pub struct SpanSink(Arc<OnceLock<Box<Take>>>);

impl SpanSink {
    /// Sends spans to `take` from now on; only the first binding counts.
    pub fn bind(&self, take: impl Fn(Vec<Vec<u8>>) + Send + Sync + 'static) {
        let _ = self.0.set(Box::new(take));
    }
}

impl fmt::Debug for SpanSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanSink(bound: {})", self.0.get().is_some())
    }
}

#[derive(Debug)]
struct Exporter(SpanSink);

impl SpanExporter for Exporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if let Some(take) = self.0.0.get() {
            let spans = batch
                .into_iter()
                .map(|span| opentelemetry_proto::tonic::trace::v1::Span::from(span).encode_to_vec())
                .collect();
            take(spans);
        }
        Ok(())
    }
}

/// The sampler `sampling` describes.
fn sampler(sampling: Sampling) -> Sampler {
    let root = match sampling.ratio {
        r if r >= 1.0 => Sampler::AlwaysOn,
        r if r <= 0.0 => Sampler::AlwaysOff,
        r => Sampler::TraceIdRatioBased(r),
    };
    if sampling.parent_based {
        Sampler::ParentBased(Box::new(root))
    } else {
        root
    }
}

/// The SDK's provider, its spans handed to `sink`, and the layer that
/// feeds it the [`WORK`] spans and events (nothing else: the request path
/// has its own spans, and the exporter's own traffic must not trace
/// itself). Keep the provider and shut it down last, to flush.
pub fn layer<S>(sink: SpanSink, sampling: Sampling) -> (impl Layer<S>, SdkTracerProvider)
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler(sampling))
        .with_batch_exporter(Exporter(sink))
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("switchboard"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_target(false)
        // A target filter decides per callsite, once: the request path's
        // events never reach this layer at all.
        .with_filter(Targets::new().with_target(WORK, tracing::Level::TRACE));
    (layer, provider)
}

/// A span's W3C `traceparent`, to send along; empty if it is not traced.
pub fn traceparent(span: &tracing::Span) -> String {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent").unwrap_or_default()
}

/// Makes `span` a child of the span `traceparent` names, if it names one,
/// and writes its own trace and span ids into its `trace_id` and
/// `span_id` fields, so that log lines inside it name the trace.
pub fn continue_from(span: &tracing::Span, traceparent: &str) {
    if !traceparent.is_empty() {
        let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
        let parent = TraceContextPropagator::new().extract(&carrier);
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
    correlate(span);
}

/// Writes `span`'s trace and span ids into its `trace_id` and `span_id`
/// fields (declared empty), for the log lines inside it.
pub fn correlate(span: &tracing::Span) {
    let context: Context = span.context();
    let otel = context.span();
    let ids = otel.span_context();
    if ids.is_valid() {
        span.record("trace_id", ids.trace_id().to_string());
        span.record("span_id", ids.span_id().to_string());
    }
}

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn work_spans_reach_the_sink_with_their_parent_and_others_do_not() {
        let sink = SpanSink::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let kept = seen.clone();
        sink.bind(move |spans| kept.lock().extend(spans));
        let (layer, provider) = layer(sink, Sampling::default());
        let subscriber = tracing_subscriber::registry().with(layer);
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sent = tracing::subscriber::with_default(subscriber, || {
            let work = tracing::info_span!(target: WORK, "config.apply", trace_id = tracing::field::Empty, span_id = tracing::field::Empty);
            continue_from(&work, parent);
            let _request = tracing::info_span!("a request").entered();
            traceparent(&work)
        });
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        provider.force_flush().expect("flush");
        let spans: Vec<opentelemetry_proto::tonic::trace::v1::Span> = seen
            .lock()
            .iter()
            .map(|bytes| Message::decode(bytes.as_slice()).expect("an OTLP span"))
            .collect();
        assert_eq!(spans.len(), 1, "only the work span");
        assert_eq!(spans[0].name, "config.apply");
        assert_eq!(hex(&spans[0].trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&spans[0].parent_span_id), "00f067aa0ba902b7");
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
