//! The control plane's OTLP trace receiver. Replicas export their spans
//! here (OTLP/gRPC, gzip accepted, on the config port); each export is
//! handed to the forwarder (`forward.rs`) for the configured collector and
//! kept in [`TraceStore`], a bounded buffer of recent traces that the HTTP
//! API filters by server, tool, caller and error. Spans stay encoded as
//! they arrived (`proto/otlp_trace.proto`) and are decoded only when the API
//! reads them: receiving is a cost on every tool call, reading is not.

pub mod calls;
pub mod forward;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::Arc,
};

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{Span, span::SpanKind, status::StatusCode},
};
use parking_lot::Mutex;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::Counter, family::Family, gauge::ConstGauge},
};
use prost::Message;
use proto::otlp::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status, codec::CompressionEncoding};
use tracing::debug;

use crate::{
    auth::{Replica, ReplicaGate},
    metrics::encode_counters,
};
use calls::Call;
use forward::Forwarder;

/// Largest OTLP export accepted: a gateway's batches are a few hundred KiB.
const MAX_EXPORT_BYTES: usize = 4 * 1024 * 1024;
/// Most traces one `/traces` answer lists.
const MAX_LIMIT: usize = 200;
/// Traces decoded to find the recent calls: a bound on what opening a
/// console costs, whatever the buffer holds.
const RECENT_TRACES_READ: usize = 500;
/// Tool calls a slow watcher may fall behind by before it misses some.
const CALLS_QUEUE: usize = 1024;
/// Spans kept per trace; a runaway trace cannot crowd out the rest.
const MAX_SPANS_PER_TRACE: usize = 1024;

/// Why spans were dropped.
pub const DROP_QUEUE_FULL: &str = "forward_queue_full";
pub const DROP_FORWARD_FAILED: &str = "forward_failed";
/// Refused at the receiver: the export was not OTLP.
pub const DROP_INVALID: &str = "invalid_export";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Spans through the OTLP receiver; shared with the forwarder.
#[derive(Clone, Debug)]
pub struct TraceCounters {
    pub received: Counter,
    pub forwarded: Counter,
    dropped: Family<ReasonLabels, Counter>,
}

/// Span attributes the filters match on.
const SERVER_ATTR: &str = "switchboard.server";
const TOOL_ATTR: &str = "gen_ai.tool.name";
const CALLER_ATTR: &str = "switchboard.caller";

// === impl TraceCounters ===

impl Default for TraceCounters {
    /// Every drop reason starts at 0, so dashboards and alerts see the
    /// series before the first drop.
    fn default() -> Self {
        let counters = Self {
            received: Counter::default(),
            forwarded: Counter::default(),
            dropped: Family::default(),
        };
        for reason in [DROP_QUEUE_FULL, DROP_FORWARD_FAILED, DROP_INVALID] {
            counters.dropped(reason);
        }
        counters
    }
}

impl TraceCounters {
    pub fn dropped(&self, reason: &'static str) -> Counter {
        self.dropped.get_or_create(&ReasonLabels { reason }).clone()
    }
}

/// Recent traces, oldest evicted first once there are more than
/// `capacity` or their spans take more than `max_bytes`; cheap to clone.
#[derive(Clone)]
pub struct TraceStore {
    inner: Arc<Mutex<StoreInner>>,
    capacity: usize,
    max_bytes: usize,
    /// Tool calls as they arrive, for whoever watches.
    calls: tokio::sync::broadcast::Sender<Arc<Call>>,
}

#[derive(Default)]
struct StoreInner {
    /// Shared with the reads decoding them: a read takes its traces under
    /// the lock and decodes after it, so a search over every stored trace
    /// never holds up arriving exports (one that adds to a trace being
    /// read copies that trace's list).
    traces: HashMap<Vec<u8>, Arc<Vec<StoredSpan>>>,
    /// Trace ids in arrival order of their first span.
    order: VecDeque<Vec<u8>>,
    /// What the stored spans take, by [`StoredSpan::weight`].
    bytes: usize,
}

#[derive(Clone)]
struct StoredSpan {
    service: Arc<str>,
    instance: Arc<str>,
    /// An encoded OTLP `Span`.
    span: Vec<u8>,
}

impl StoredSpan {
    /// What keeping it costs: the encoded span and the bookkeeping beside it.
    fn weight(&self) -> usize {
        self.span.len() + std::mem::size_of::<Self>()
    }
}

/// The one `Span` field read on arrival: what the store groups by.
#[derive(Clone, PartialEq, Message)]
struct SpanTraceId {
    #[prost(bytes = "vec", tag = "1")]
    trace_id: Vec<u8>,
}

/// An export that is not OTLP; nothing of it is kept.
#[derive(Debug, thiserror::Error)]
pub enum InvalidExport {
    #[error("the resource of resource_spans[{index}] is not an OTLP Resource: {source}")]
    Resource {
        index: usize,
        #[source]
        source: prost::DecodeError,
    },
    #[error(
        "the scope of resource_spans[{resource}].scope_spans[{index}] is not an OTLP InstrumentationScope: {source}"
    )]
    Scope {
        resource: usize,
        index: usize,
        #[source]
        source: prost::DecodeError,
    },
    #[error("span {index} of the export is not an OTLP Span: {source}")]
    Span {
        index: usize,
        #[source]
        source: prost::DecodeError,
    },
    #[error(
        "resource_spans[{index}] is from replica `{claimed}`, but this exporter may send only its own pod's (`{exporter}`)"
    )]
    Impersonation {
        index: usize,
        claimed: String,
        exporter: String,
    },
}

/// A span as the HTTP API shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpanView {
    pub trace_id: String,
    pub span_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub parent_span_id: String,
    pub name: String,
    pub kind: &'static str,
    /// `service.name` of the exporter.
    pub service: String,
    /// `service.instance.id` of the exporter (the replica).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub instance: String,
    pub start_time_unix_nano: u64,
    pub duration_ms: f64,
    pub error: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status_message: String,
    pub attributes: BTreeMap<String, serde_json::Value>,
}

/// One trace in a listing.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceSummary {
    pub trace_id: String,
    /// The root span's name (or the earliest span's, if the root is not here).
    pub name: String,
    pub start_time_unix_nano: u64,
    pub duration_ms: f64,
    pub span_count: usize,
    pub error: bool,
    pub servers: BTreeSet<String>,
    pub tools: BTreeSet<String>,
    pub callers: BTreeSet<String>,
}

/// Filters of `GET /traces`; all given ones must match some span.
#[derive(Debug, Default, Deserialize)]
pub struct TraceQuery {
    /// A span of this name (e.g. `registry.change`, `config.apply`).
    pub span: Option<String>,
    pub server: Option<String>,
    pub tool: Option<String>,
    pub caller: Option<String>,
    pub error: Option<bool>,
    pub limit: Option<usize>,
}

// === impl TraceStore ===

impl TraceStore {
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            inner: Arc::default(),
            capacity: capacity.max(1),
            max_bytes,
            calls: tokio::sync::broadcast::channel(CALLS_QUEUE).0,
        }
    }

    /// Tool calls from now on, as their spans arrive. A watcher that falls
    /// [`CALLS_QUEUE`] behind is told how many it missed.
    pub fn watch_calls(&self) -> tokio::sync::broadcast::Receiver<Arc<Call>> {
        self.calls.subscribe()
    }

    /// The newest `limit` tool calls in the buffer, newest first, from its
    /// newest [`RECENT_TRACES_READ`] traces at most.
    pub fn recent_calls(&self, limit: usize) -> Vec<Call> {
        let newest_first: Vec<Arc<Vec<StoredSpan>>> = {
            let inner = self.inner.lock();
            inner
                .order
                .iter()
                .rev()
                .take(RECENT_TRACES_READ)
                .filter_map(|id| inner.traces.get(id).cloned())
                .collect()
        };
        let mut calls: Vec<Call> = Vec::new();
        for spans in newest_first {
            calls.extend(views(&spans).iter().filter_map(Call::of));
            if calls.len() >= limit {
                break;
            }
        }
        calls.sort_by_key(|call| std::cmp::Reverse(call.start_ms));
        calls.truncate(limit);
        calls
    }

    /// What the stored spans take, in bytes.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    pub fn len(&self) -> usize {
        self.inner.lock().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds every span of an export; returns how many were kept. An export
    /// whose resource or scope does not decode, or a span whose framing or
    /// trace id does not, is refused whole. The rest of a span is decoded
    /// only when the API reads it: one that does not decode then is left
    /// out of the answers.
    /// Keeps an export's spans. `exporter`, when the exporter is bound to
    /// a pod: every resource must be that replica's.
    pub fn insert(
        &self,
        request: ExportTraceServiceRequest,
        exporter: Option<&str>,
    ) -> Result<usize, InvalidExport> {
        let mut arrivals = Vec::with_capacity(request.resource_spans.len());
        let mut index = 0;
        for (resource_index, resource_spans) in request.resource_spans.into_iter().enumerate() {
            let resource =
                Resource::decode(resource_spans.resource.as_slice()).map_err(|source| {
                    InvalidExport::Resource {
                        index: resource_index,
                        source,
                    }
                })?;
            let service: Arc<str> = string_attr(&resource.attributes, "service.name").into();
            let instance: Arc<str> =
                string_attr(&resource.attributes, "service.instance.id").into();
            if let Some(exporter) = exporter
                && *instance != *exporter
            {
                return Err(InvalidExport::Impersonation {
                    index: resource_index,
                    claimed: instance.to_string(),
                    exporter: exporter.to_owned(),
                });
            }
            for (scope_index, scope_spans) in resource_spans.scope_spans.iter().enumerate() {
                InstrumentationScope::decode(scope_spans.scope.as_slice()).map_err(|source| {
                    InvalidExport::Scope {
                        resource: resource_index,
                        index: scope_index,
                        source,
                    }
                })?;
            }
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                let SpanTraceId { trace_id } = SpanTraceId::decode(span.as_slice())
                    .map_err(|source| InvalidExport::Span { index, source })?;
                index += 1;
                let span = StoredSpan {
                    service: service.clone(),
                    instance: instance.clone(),
                    span,
                };
                arrivals.push((trace_id, span));
            }
        }
        // Decoded here only while the console watches: a cost per call.
        let calls: Vec<Call> = if self.calls.receiver_count() > 0 {
            arrivals
                .iter()
                .filter_map(|(_, stored)| views(std::slice::from_ref(stored)).pop())
                .filter_map(|view| Call::of(&view))
                .collect()
        } else {
            Vec::new()
        };
        let mut kept = 0;
        let mut inner = self.inner.lock();
        for (trace_id, span) in arrivals {
            if !inner.traces.contains_key(&trace_id) {
                inner.order.push_back(trace_id.clone());
            }
            let spans = Arc::make_mut(inner.traces.entry(trace_id).or_default());
            if spans.len() < MAX_SPANS_PER_TRACE {
                let weight = span.weight();
                spans.push(span);
                inner.bytes += weight;
                kept += 1;
            }
        }
        while inner.order.len() > self.capacity || inner.bytes > self.max_bytes {
            let Some(evicted) = inner.order.pop_front() else {
                break;
            };
            if let Some(spans) = inner.traces.remove(&evicted) {
                inner.bytes -= spans.iter().map(StoredSpan::weight).sum::<usize>();
            }
        }
        drop(inner);
        for call in calls {
            // Nobody watching any more is fine.
            let _ = self.calls.send(Arc::new(call));
        }
        Ok(kept)
    }

    /// The spans of one trace, by start time; `None` if none is here (or
    /// none of its spans decodes).
    pub fn trace(&self, trace_id: &str) -> Option<Vec<SpanView>> {
        let id = unhex(trace_id)?;
        let stored = self.inner.lock().traces.get(&id)?.clone();
        let mut spans = views(&stored);
        spans.sort_by_key(|s| s.start_time_unix_nano);
        (!spans.is_empty()).then_some(spans)
    }

    /// Traces matching `query`, newest first.
    pub fn search(&self, query: &TraceQuery) -> Vec<TraceSummary> {
        let limit = query.limit.unwrap_or(20).min(MAX_LIMIT);
        let newest_first: Vec<Arc<Vec<StoredSpan>>> = {
            let inner = self.inner.lock();
            let traces = inner.order.iter().rev();
            traces
                .filter_map(|id| inner.traces.get(id).cloned())
                .collect()
        };
        newest_first
            .iter()
            .map(|spans| views(spans))
            .filter(|spans| !spans.is_empty() && query.matches(spans))
            .take(limit)
            .map(|spans| TraceSummary::new(&spans))
            .collect()
    }
}

fn views(spans: &[StoredSpan]) -> Vec<SpanView> {
    spans
        .iter()
        .filter_map(|s| match Span::decode(s.span.as_slice()) {
            Ok(span) => Some(SpanView::new(&span, &s.service, &s.instance)),
            Err(error) => {
                debug!(%error, "stored span does not decode; left out");
                None
            }
        })
        .collect()
}

/// Bytes written as hex digits, two per byte (trace ids, session keys).
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

// === impl TraceQuery ===

impl TraceQuery {
    fn matches(&self, spans: &[SpanView]) -> bool {
        let has = |key: &str, wanted: &Option<String>| {
            wanted.as_deref().is_none_or(|wanted| {
                spans
                    .iter()
                    .any(|s| s.attributes.get(key).and_then(|v| v.as_str()) == Some(wanted))
            })
        };
        let named = self
            .span
            .as_deref()
            .is_none_or(|name| spans.iter().any(|s| s.name == name));
        named
            && has(SERVER_ATTR, &self.server)
            && has(TOOL_ATTR, &self.tool)
            && has(CALLER_ATTR, &self.caller)
            && self
                .error
                .is_none_or(|error| spans.iter().any(|s| s.error) == error)
    }
}

// === impl TraceSummary ===

impl TraceSummary {
    fn new(spans: &[SpanView]) -> Self {
        let root = spans
            .iter()
            .find(|s| s.parent_span_id.is_empty())
            .or_else(|| spans.iter().min_by_key(|s| s.start_time_unix_nano));
        let start = spans
            .iter()
            .map(|s| s.start_time_unix_nano)
            .min()
            .unwrap_or_default();
        let end = spans
            .iter()
            .map(|s| {
                s.start_time_unix_nano
                    .saturating_add((s.duration_ms * 1e6) as u64)
            })
            .max()
            .unwrap_or_default();
        let collect = |key: &str| {
            spans
                .iter()
                .filter_map(|s| s.attributes.get(key)?.as_str().map(str::to_owned))
                .collect()
        };
        Self {
            trace_id: spans
                .first()
                .map(|s| s.trace_id.clone())
                .unwrap_or_default(),
            name: root.map(|s| s.name.clone()).unwrap_or_default(),
            start_time_unix_nano: start,
            duration_ms: end.saturating_sub(start) as f64 / 1e6,
            span_count: spans.len(),
            error: spans.iter().any(|s| s.error),
            servers: collect(SERVER_ATTR),
            tools: collect(TOOL_ATTR),
            callers: collect(CALLER_ATTR),
        }
    }
}

// === impl SpanView ===

impl SpanView {
    fn new(span: &Span, service: &str, instance: &str) -> Self {
        let status = span.status.as_ref();
        Self {
            trace_id: hex(&span.trace_id),
            span_id: hex(&span.span_id),
            parent_span_id: hex(&span.parent_span_id),
            name: span.name.clone(),
            kind: match SpanKind::try_from(span.kind) {
                Ok(SpanKind::Server) => "server",
                Ok(SpanKind::Client) => "client",
                Ok(SpanKind::Producer) => "producer",
                Ok(SpanKind::Consumer) => "consumer",
                Ok(SpanKind::Internal) => "internal",
                Ok(SpanKind::Unspecified) | Err(_) => "unspecified",
            },
            service: service.to_owned(),
            instance: instance.to_owned(),
            start_time_unix_nano: span.start_time_unix_nano,
            duration_ms: span
                .end_time_unix_nano
                .saturating_sub(span.start_time_unix_nano) as f64
                / 1e6,
            error: status.is_some_and(|s| s.code == StatusCode::Error as i32),
            status_message: status.map(|s| s.message.clone()).unwrap_or_default(),
            attributes: span
                .attributes
                .iter()
                .map(|kv| (kv.key.clone(), json_value(kv.value.as_ref())))
                .collect(),
        }
    }
}

fn string_attr(attributes: &[KeyValue], key: &str) -> String {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn json_value(value: Option<&AnyValue>) -> serde_json::Value {
    use serde_json::Value as Json;
    match value.and_then(|v| v.value.as_ref()) {
        None => Json::Null,
        Some(Value::StringValue(s)) => Json::String(s.clone()),
        Some(Value::BoolValue(b)) => Json::Bool(*b),
        Some(Value::IntValue(i)) => Json::from(*i),
        Some(Value::DoubleValue(d)) => Json::from(*d),
        Some(Value::BytesValue(b)) => Json::String(hex(b)),
        Some(Value::ArrayValue(array)) => {
            Json::Array(array.values.iter().map(|v| json_value(Some(v))).collect())
        }
        Some(Value::KvlistValue(list)) => Json::Object(
            list.values
                .iter()
                .map(|kv| (kv.key.clone(), json_value(kv.value.as_ref())))
                .collect(),
        ),
        Some(_) => Json::Null,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The OTLP `TraceService`: stores and forwards; never waits on the
/// forwarder, so a slow collector cannot slow the replicas' exporters.
#[derive(Clone)]
pub struct TraceReceiver {
    /// Only replicas export spans here.
    pub gate: ReplicaGate,
    pub store: TraceStore,
    pub forwarder: Option<Forwarder>,
    pub counters: TraceCounters,
}

impl TraceReceiver {
    pub fn into_server(self) -> TraceServiceServer<Self> {
        TraceServiceServer::new(self)
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(MAX_EXPORT_BYTES)
    }
}

impl std::fmt::Debug for TraceReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TraceReceiver")
    }
}

/// The trace pipeline's metrics: spans received, forwarded and dropped,
/// and the traces the store holds now.
impl Collector for TraceReceiver {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let counters = &self.counters;
        encode_counters(
            &mut encoder,
            &[
                (
                    "spans_received",
                    "Spans received from replicas over OTLP",
                    &counters.received,
                ),
                (
                    "spans_forwarded",
                    "Spans forwarded to the configured collector",
                    &counters.forwarded,
                ),
            ],
        )?;
        counters.dropped.encode(encoder.encode_descriptor(
            "spans_dropped",
            "Spans not kept or forwarded, by reason (forward_queue_full, forward_failed, invalid_export)",
            None,
            counters.dropped.metric_type(),
        )?)?;
        let count = |n: usize| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
        let buffered = count(self.store.len());
        buffered.encode(encoder.encode_descriptor(
            "traces_buffered",
            "Traces held for the /traces API",
            None,
            buffered.metric_type(),
        )?)?;
        let bytes = count(self.store.bytes());
        bytes.encode(encoder.encode_descriptor(
            "traces_buffered_bytes",
            "Bytes the held traces' spans take (bounded by --trace-buffer-mib)",
            None,
            bytes.metric_type(),
        )?)
    }
}

#[tonic::async_trait]
impl TraceService for TraceReceiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let exporter = match self.gate.admit(&request).await? {
            Replica::Pod { name, .. } => Some(name),
            Replica::Any => None,
        };
        self.accept(request.into_inner(), exporter.as_deref())
            .map_err(|error| match error {
                InvalidExport::Impersonation { .. } => Status::permission_denied(error.to_string()),
                _ => Status::invalid_argument(error.to_string()),
            })?;
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: Vec::new(),
        }))
    }
}

impl TraceReceiver {
    /// Keeps an export and forwards it: a replica's (`exporter` names its
    /// pod, if known), or this process's own (`None`).
    pub fn accept(
        &self,
        request: ExportTraceServiceRequest,
        exporter: Option<&str>,
    ) -> Result<usize, InvalidExport> {
        let spans: usize = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        // Only a forwarded export is copied; the store takes the original.
        let forwarded = self.forwarder.as_ref().map(|_| request.clone());
        let kept = self.store.insert(request, exporter).inspect_err(|error| {
            self.counters.dropped(DROP_INVALID).inc_by(spans as u64);
            debug!(%error, spans, "export refused");
        })?;
        self.counters.received.inc_by(spans as u64);
        if let (Some(forwarder), Some(request)) = (&self.forwarder, forwarded) {
            forwarder.forward(request, spans);
        }
        debug!(spans, kept, "spans received");
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest as TypedExport,
        trace::v1::{ResourceSpans, ScopeSpans, Status as SpanStatus},
    };

    /// An export as OpenTelemetry's own types write it.
    fn export(trace: u8, spans: Vec<Span>) -> ExportTraceServiceRequest {
        let spans = spans
            .into_iter()
            .map(|mut s| {
                s.trace_id = vec![trace; 16];
                s
            })
            .collect();
        let typed = TypedExport {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        attribute("service.name", "switchboard-gateway"),
                        attribute("service.instance.id", "replica-1"),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        ExportTraceServiceRequest::decode(typed.encode_to_vec().as_slice()).expect("same wire")
    }

    fn attribute(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(value.to_owned())),
            }),
            ..Default::default()
        }
    }

    fn insert(store: &TraceStore, export: ExportTraceServiceRequest) {
        store.insert(export, None).expect("a valid export");
    }

    #[test]
    fn a_pod_bound_exporter_sends_only_its_own_spans() {
        let store = TraceStore::new(10, 1 << 20);
        let mine = export(1, vec![span(1, &[], false)]);
        assert_eq!(store.insert(mine, Some("replica-1")).expect("its own"), 1);
        let theirs = export(2, vec![span(2, &[], false)]);
        let error = store
            .insert(theirs, Some("replica-2"))
            .expect_err("another replica's");
        assert!(
            matches!(error, InvalidExport::Impersonation { .. }),
            "{error}"
        );
        assert_eq!(store.len(), 1, "nothing of it kept");
    }

    fn span(id: u8, attributes: &[(&str, &str)], error: bool) -> Span {
        Span {
            span_id: vec![id; 8],
            name: format!("span {id}"),
            attributes: attributes.iter().map(|(k, v)| attribute(k, v)).collect(),
            status: error.then(|| SpanStatus {
                code: StatusCode::Error as i32,
                message: "boom".into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn filters_by_attributes_and_error() {
        let store = TraceStore::new(10, usize::MAX);
        insert(
            &store,
            export(
                1,
                vec![span(1, &[(SERVER_ATTR, "a"), (CALLER_ATTR, "x")], false)],
            ),
        );
        insert(
            &store,
            export(
                2,
                vec![span(2, &[(SERVER_ATTR, "b"), (TOOL_ATTR, "b.t")], true)],
            ),
        );
        let query = |q: TraceQuery| -> Vec<String> {
            store.search(&q).into_iter().map(|t| t.trace_id).collect()
        };
        let one = "01".repeat(16);
        let two = "02".repeat(16);
        assert_eq!(query(TraceQuery::default()), vec![two.clone(), one.clone()]);
        let by_server = TraceQuery {
            server: Some("a".into()),
            ..Default::default()
        };
        assert_eq!(query(by_server), vec![one.clone()]);
        let errors = TraceQuery {
            error: Some(true),
            ..Default::default()
        };
        assert_eq!(query(errors), vec![two.clone()]);
        let by_caller_and_tool = TraceQuery {
            caller: Some("x".into()),
            tool: Some("b.t".into()),
            ..Default::default()
        };
        assert!(query(by_caller_and_tool).is_empty());
    }

    #[test]
    fn oldest_traces_are_evicted_and_spans_of_a_trace_are_grouped() {
        let store = TraceStore::new(2, usize::MAX);
        insert(&store, export(1, vec![span(1, &[], false)]));
        insert(&store, export(2, vec![span(2, &[], false)]));
        insert(&store, export(2, vec![span(3, &[], false)]));
        insert(&store, export(3, vec![span(4, &[], false)]));
        assert_eq!(store.len(), 2);
        assert!(store.trace(&"01".repeat(16)).is_none());
        assert_eq!(store.trace(&"02".repeat(16)).map(|s| s.len()), Some(2));
    }

    /// However few traces, their spans may take only so many bytes: a
    /// flood of big spans evicts the oldest traces, never grows past it.
    #[test]
    fn the_store_is_bounded_in_bytes() {
        let one_span = {
            let probe = TraceStore::new(10, usize::MAX);
            insert(&probe, export(1, vec![span(1, &[], false)]));
            probe.bytes()
        };
        // Room for three spans and a half: their sizes differ by a few bytes.
        let limit = one_span * 7 / 2;
        let store = TraceStore::new(1000, limit);
        for trace in 1..=10 {
            insert(&store, export(trace, vec![span(trace, &[], false)]));
            assert!(store.bytes() <= limit, "{} > {limit}", store.bytes());
        }
        assert_eq!(store.len(), 3, "the three newest fit");
        assert!(store.trace(&"0a".repeat(16)).is_some());
        assert!(store.trace(&"07".repeat(16)).is_none());
    }

    #[test]
    fn a_trace_being_read_is_not_changed_under_its_reader() {
        let store = TraceStore::new(2, usize::MAX);
        insert(&store, export(1, vec![span(1, &[], false)]));
        let id = vec![1; 16];
        let reading = store.inner.lock().traces.get(&id).cloned().expect("stored");
        insert(&store, export(1, vec![span(2, &[], false)]));
        assert_eq!(
            views(&reading).len(),
            1,
            "the reader's copy stays as it was"
        );
        assert_eq!(store.trace(&"01".repeat(16)).map(|s| s.len()), Some(2));
    }

    #[test]
    fn spans_read_back_with_their_exporter_and_attributes() {
        let store = TraceStore::new(2, usize::MAX);
        insert(
            &store,
            export(1, vec![span(1, &[(TOOL_ATTR, "a.echo")], true)]),
        );
        let spans = store.trace(&"01".repeat(16)).expect("stored");
        let [span] = spans.as_slice() else {
            panic!("one span: {spans:?}")
        };
        assert_eq!(span.span_id, "01".repeat(8));
        assert_eq!(span.name, "span 1");
        assert_eq!(
            (span.service.as_str(), span.instance.as_str()),
            ("switchboard-gateway", "replica-1")
        );
        assert_eq!(span.attributes[TOOL_ATTR], "a.echo");
        assert!(span.error);
        assert_eq!(span.status_message, "boom");
    }

    #[test]
    fn an_export_that_is_not_otlp_is_refused_whole() {
        let store = TraceStore::new(10, usize::MAX);
        let mut bad = export(1, vec![span(1, &[], false), span(2, &[], false)]);
        bad.resource_spans[0].scope_spans[0].spans[1] = vec![0xff];
        let error = store.insert(bad, None).expect_err("a truncated span");
        assert!(
            error.to_string().contains("span 1 of the export"),
            "{error}"
        );
        assert!(store.is_empty(), "nothing of it kept");

        let mut bad = export(1, vec![span(1, &[], false)]);
        bad.resource_spans[0].resource = vec![0x0a, 0x05];
        let error = store.insert(bad, None).expect_err("a truncated resource");
        assert!(error.to_string().contains("resource"), "{error}");
        assert!(store.is_empty());

        let mut bad = export(1, vec![span(1, &[], false)]);
        bad.resource_spans[0].scope_spans[0].scope = vec![0x0a, 0x05];
        let error = store.insert(bad, None).expect_err("a truncated scope");
        assert!(error.to_string().contains("scope_spans[0]"), "{error}");
        assert!(store.is_empty());
    }

    #[test]
    fn a_span_whose_attributes_do_not_decode_is_left_out_of_answers() {
        let store = TraceStore::new(10, usize::MAX);
        // Field 9 (attributes), one byte long, not a KeyValue.
        let garble = |export: &mut ExportTraceServiceRequest| {
            export.resource_spans[0].scope_spans[0].spans[0].extend([0x4a, 0x01, 0xff]);
        };
        let mut partly = export(1, vec![span(1, &[], false), span(2, &[], false)]);
        garble(&mut partly);
        assert_eq!(store.insert(partly, None).expect("outer layer is valid"), 2);
        let spans = store.trace(&"01".repeat(16)).expect("stored");
        assert_eq!(
            spans.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["span 2"]
        );
        // A trace none of whose spans decodes is not listed at all.
        let mut wholly = export(2, vec![span(3, &[], false)]);
        garble(&mut wholly);
        assert_eq!(store.insert(wholly, None).expect("outer layer is valid"), 1);
        assert!(store.trace(&"02".repeat(16)).is_none());
        let listed = store.search(&TraceQuery::default());
        assert_eq!(
            listed
                .iter()
                .map(|t| t.trace_id.as_str())
                .collect::<Vec<_>>(),
            ["01".repeat(16)]
        );
    }
}
