//! Spans of this replica's making, written straight into protobuf as they
//! are recorded (`otlp.rs`): W3C trace context in and out, a SERVER span per
//! client request and a CLIENT span per downstream call. A span is handed to
//! the exporter when it is dropped, with one non-blocking channel send; if
//! the exporter's queue is full the span is dropped and counted instead of
//! slowing the request.

use std::{
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use prometheus_client::metrics::counter::Counter;
use proto::otel::Sampling;
use tokio::sync::mpsc;

use super::otlp::{self, SpanKind, span as field};

/// Room for a span with its attributes; the buffer grows if a span needs
/// more (long tool names, error messages).
const SPAN_CAPACITY: usize = 512;

/// A finished span, encoded as an OTLP `Span`.
pub type EncodedSpan = Vec<u8>;

/// The W3C trace context of one span (`traceparent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// Starts spans; cheap to clone. A disabled tracer records nothing and
/// passes the caller's trace context through untouched.
#[derive(Clone, Default)]
pub struct Tracer {
    sink: Option<Arc<SpanSink>>,
}

struct SpanSink {
    spans: mpsc::Sender<EncodedSpan>,
    dropped: Counter,
    /// Which traces are recorded (`OTEL_TRACES_SAMPLER`).
    sampling: Sampling,
}

/// A span being recorded; exported when dropped.
pub struct ActiveSpan {
    context: Option<TraceContext>,
    /// `None` when not recorded (tracer disabled or parent not sampled).
    record: Option<Recording>,
}

struct Recording {
    sink: Arc<SpanSink>,
    /// Every field but the end time, which the drop appends.
    span: EncodedSpan,
    start_unix_nano: u64,
    started: Instant,
}

// === impl TraceContext ===

impl TraceContext {
    /// Parses a `traceparent` value. Unknown future versions are read by
    /// their version-00 prefix, as the W3C spec asks; invalid ids are `None`.
    pub fn parse(traceparent: &str) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let version = parts.next()?;
        let (trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?);
        let extra = parts.next();
        if version.len() != 2 || version == "ff" || (version == "00" && extra.is_some()) {
            return None;
        }
        let trace_id: [u8; 16] = decode_hex(trace_id)?;
        let span_id: [u8; 8] = decode_hex(span_id)?;
        let [flags]: [u8; 1] = decode_hex(flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// Built by hand: it is made for every forwarded request, and
    /// `format!` per byte showed up in the gateway's profile.
    pub fn to_traceparent(&self) -> String {
        let mut text = String::with_capacity(55);
        text.push_str("00-");
        push_hex(&mut text, &self.trace_id);
        text.push('-');
        push_hex(&mut text, &self.span_id);
        text.push_str(if self.sampled { "-01" } else { "-00" });
        text
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// A new root context, sampled with probability `ratio`.
    fn root(ratio: f64) -> Self {
        let trace_id = nonzero_id();
        Self {
            trace_id,
            span_id: nonzero_id(),
            sampled: by_ratio(&trace_id, ratio),
        }
    }

    fn child(&self) -> Self {
        Self {
            span_id: nonzero_id(),
            ..*self
        }
    }
}

/// Whether `ratio` of traces includes this one, decided by its id as the
/// specification's `traceidratio` sampler does, so every process agrees.
fn by_ratio(trace_id: &[u8; 16], ratio: f64) -> bool {
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    ratio >= 1.0 || (u64::from_be_bytes(low) as f64) < ratio * (u64::MAX as f64)
}

fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    // Upper-case hex is invalid in `traceparent`.
    (!text.bytes().any(|b| b.is_ascii_uppercase())).then_some(out)
}

fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    push_hex(&mut text, bytes);
    text
}

fn push_hex(text: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
}

fn nonzero_id<const N: usize>() -> [u8; N] {
    loop {
        let mut id = [0u8; N];
        fastrand::fill(&mut id);
        if id != [0u8; N] {
            return id;
        }
    }
}

// === impl Tracer ===

impl Tracer {
    /// A tracer that hands finished spans to `spans`, counting the ones the
    /// full queue refuses in `dropped`, and records the traces `sampling`
    /// picks (parent-based: traces the client started follow its decision).
    pub fn new(spans: mpsc::Sender<EncodedSpan>, dropped: Counter, sampling: Sampling) -> Self {
        Self {
            sink: Some(Arc::new(SpanSink {
                spans,
                dropped,
                sampling,
            })),
        }
    }

    /// Queues a span encoded elsewhere (the SDK's, `proto::otel::sdk`) for
    /// export, or counts it dropped if the queue is full.
    pub fn export_encoded(&self, span: EncodedSpan) {
        if let Some(sink) = &self.sink
            && sink.spans.try_send(span).is_err()
        {
            sink.dropped.inc();
        }
    }

    /// Starts a span under `parent` (a new trace when there is none). Not
    /// recorded when the tracer is disabled or the parent is not sampled;
    /// `name` is only built for spans that are recorded.
    pub fn start(
        &self,
        name: impl FnOnce() -> String,
        kind: SpanKind,
        parent: Option<TraceContext>,
    ) -> ActiveSpan {
        let Some(sink) = &self.sink else {
            return ActiveSpan {
                context: parent,
                record: None,
            };
        };
        let Sampling {
            ratio,
            parent_based,
        } = sink.sampling;
        let context = match parent {
            None => TraceContext::root(ratio),
            Some(parent) if parent_based => parent.child(),
            Some(parent) => TraceContext {
                sampled: by_ratio(&parent.trace_id, ratio),
                ..parent.child()
            },
        };
        let record = context.sampled.then(|| {
            let start_unix_nano = unix_nanos(SystemTime::now());
            let mut buf = Vec::with_capacity(SPAN_CAPACITY);
            otlp::bytes(&mut buf, field::TRACE_ID, &context.trace_id);
            otlp::bytes(&mut buf, field::SPAN_ID, &context.span_id);
            if let Some(parent) = parent {
                otlp::bytes(&mut buf, field::PARENT_SPAN_ID, &parent.span_id);
            }
            otlp::bytes(&mut buf, field::NAME, name().as_bytes());
            otlp::varint(&mut buf, field::KIND, kind as u64);
            otlp::fixed64(&mut buf, field::START_TIME_UNIX_NANO, start_unix_nano);
            Recording {
                sink: sink.clone(),
                span: buf,
                start_unix_nano,
                started: Instant::now(),
            }
        });
        ActiveSpan {
            context: Some(context),
            record,
        }
    }
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

// === impl ActiveSpan ===

impl ActiveSpan {
    /// The context to propagate downstream: this span's, or the parent's
    /// when tracing is disabled.
    pub fn context(&self) -> Option<TraceContext> {
        self.context
    }

    pub fn is_recording(&self) -> bool {
        self.record.is_some()
    }

    pub fn set(&mut self, key: &'static str, value: &str) {
        if let Some(record) = &mut self.record {
            otlp::key_value(&mut record.span, field::ATTRIBUTES, key, value);
        }
    }

    /// Marks the span failed: `error.type` plus an ERROR status.
    pub fn set_error(&mut self, error_type: &str, message: &str) {
        self.set("error.type", error_type);
        if let Some(record) = &mut self.record {
            otlp::error_status(&mut record.span, message);
        }
    }
}

impl Drop for ActiveSpan {
    fn drop(&mut self) {
        let Some(Recording {
            sink,
            mut span,
            start_unix_nano,
            started,
        }) = self.record.take()
        else {
            return;
        };
        let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        otlp::fixed64(
            &mut span,
            field::END_TIME_UNIX_NANO,
            start_unix_nano.saturating_add(elapsed),
        );
        if sink.spans.try_send(span).is_err() {
            sink.dropped.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1::{Span, status::StatusCode};
    use prost::Message;

    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips() {
        let context = TraceContext::parse(EXAMPLE).expect("valid");
        assert!(context.sampled);
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.to_traceparent(), EXAMPLE);
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        // A future version may append fields.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        assert_eq!(TraceContext::parse(future).map(|c| c.sampled), Some(false));
    }

    #[tokio::test]
    async fn spans_chain_and_a_full_queue_drops_instead_of_waiting() {
        let (tx, mut rx) = mpsc::channel(1);
        let dropped = Counter::default();
        let tracer = Tracer::new(tx, dropped.clone(), Sampling::default());
        let parent = TraceContext::parse(EXAMPLE);
        let server = tracer.start(|| "tools/call a.echo".into(), SpanKind::Server, parent);
        let server_context = server.context().expect("recording");
        assert_eq!(server_context.trace_id, parent.unwrap().trace_id);
        let mut client = tracer.start(
            || "tools/call echo".into(),
            SpanKind::Client,
            Some(server_context),
        );
        client.set_error("timeout", "no answer");
        drop(client);
        drop(server);
        let exported = rx.recv().await.expect("client span");
        let exported = Span::decode(exported.as_slice()).expect("a valid span");
        assert_eq!(exported.parent_span_id, server_context.span_id.to_vec());
        assert_eq!(exported.name, "tools/call echo");
        assert_eq!(exported.kind, SpanKind::Client as i32);
        assert!(exported.end_time_unix_nano >= exported.start_time_unix_nano);
        assert_eq!(
            exported.status.map(|s| (s.code, s.message)),
            Some((StatusCode::Error as i32, "no answer".into()))
        );
        assert_eq!(dropped.get(), 1, "the server span found the queue full");
    }

    #[test]
    fn unsampled_parents_and_disabled_tracers_record_nothing() {
        let (tx, _rx) = mpsc::channel(8);
        let tracer = Tracer::new(tx, Counter::default(), Sampling::default());
        let unsampled =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        let span = tracer.start(|| "x".into(), SpanKind::Server, unsampled);
        assert!(!span.is_recording());
        assert_eq!(
            span.context().map(|c| c.trace_id),
            unsampled.map(|c| c.trace_id)
        );
        let disabled = Tracer::default().start(|| "x".into(), SpanKind::Server, unsampled);
        assert_eq!(disabled.context(), unsampled, "passed through untouched");
    }

    #[test]
    fn the_sample_ratio_applies_to_new_traces_only() {
        let (tx, _rx) = mpsc::channel(8);
        let ratio = |ratio, parent_based| Sampling {
            ratio,
            parent_based,
        };
        let never = Tracer::new(tx.clone(), Counter::default(), ratio(0.0, true));
        let root = never.start(|| "x".into(), SpanKind::Server, None);
        assert!(!root.is_recording());
        let context = root.context().expect("a context is still propagated");
        assert!(!context.sampled, "downstream learns it is not sampled");
        let sampled_parent = TraceContext::parse(EXAMPLE);
        assert!(
            never
                .start(|| "x".into(), SpanKind::Server, sampled_parent)
                .is_recording()
        );
        // Not parent-based: the ratio decides for every trace.
        let off = Tracer::new(tx.clone(), Counter::default(), ratio(0.0, false));
        let child = off.start(|| "x".into(), SpanKind::Server, sampled_parent);
        assert!(!child.is_recording());
        assert_eq!(child.context().map(|c| c.sampled), Some(false));
        let half = Tracer::new(tx, Counter::default(), ratio(0.5, false));
        let recorded = (0..2000)
            .filter(|_| {
                half.start(|| "x".into(), SpanKind::Server, None)
                    .is_recording()
            })
            .count();
        assert!((700..1300).contains(&recorded), "{recorded} of 2000");
    }
}
