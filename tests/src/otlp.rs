//! Trace plumbing for the observability tests: a real OTLP trace receiver
//! (tonic `TraceService`, gzip accepted; and OTLP/HTTP with protobuf
//! bodies on `POST /v1/traces`) that records every span it is sent with
//! the export's headers and resource, and the `rotel` collector (from PyPI)
//! started between the control plane and that receiver.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc};

use prost::Message;

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{KeyValue, any_value::Value},
    trace::v1::Span,
};
use parking_lot::Mutex;
use tokio::{net::TcpListener, process::Command};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, codec::CompressionEncoding};

use crate::{Process, free_addr};

/// A span as received, with the exporter's `service.name`.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub service: String,
    pub span: Span,
    /// The export's resource attributes (string ones).
    pub resource: BTreeMap<String, String>,
    /// The export's request headers (gRPC metadata or HTTP).
    pub headers: BTreeMap<String, String>,
}

pub struct OtlpReceiver {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    _server: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Receiver {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind OTLP receiver");
        let addr = listener.local_addr().expect("receiver address");
        let spans = Arc::default();
        let service = TraceServiceServer::new(Receiver {
            spans: Arc::clone(&spans),
        })
        .accept_compressed(CompressionEncoding::Gzip);
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Self {
            addr,
            spans,
            _server: server,
        }
    }

    /// An OTLP/HTTP receiver: `POST http://{addr}/v1/traces`.
    pub async fn start_http() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind OTLP/HTTP receiver");
        let addr = listener.local_addr().expect("receiver address");
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let receiver = Receiver {
            spans: Arc::clone(&spans),
        };
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(http_export))
            .with_state(receiver);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            spans,
            _server: server,
        }
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().clone()
    }

    /// The spans of one trace (hex id).
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| hex(&s.span.trace_id) == trace_id)
            .collect()
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let headers = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        self.keep(request.into_inner(), headers);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    fn keep(&self, request: ExportTraceServiceRequest, headers: BTreeMap<String, String>) {
        let mut spans = self.spans.lock();
        for resource_spans in request.resource_spans {
            let resource: BTreeMap<String, String> = resource_spans
                .resource
                .as_ref()
                .map(|r| {
                    r.attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), string_attribute(&r.attributes, &kv.key)))
                        .collect()
                })
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    span,
                    resource: resource.clone(),
                    headers: headers.clone(),
                });
            }
        }
    }
}

/// `POST /v1/traces` of OTLP/HTTP: a protobuf `ExportTraceServiceRequest`.
async fn http_export(
    axum::extract::State(receiver): axum::extract::State<Receiver>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let is_protobuf = headers
        .get("content-type")
        .is_some_and(|v| v == "application/x-protobuf");
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return axum::http::StatusCode::BAD_REQUEST;
    };
    if !is_protobuf {
        return axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
    }
    let headers = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    receiver.keep(request, headers);
    axum::http::StatusCode::OK
}

/// A string attribute's value, or "" when absent.
pub fn string_attribute(attributes: &[KeyValue], key: &str) -> String {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `rotel-agent` binary of the `rotel` PyPI package (`.ci/test`
/// installs it into `.ci/venv`).
fn rotel_agent() -> PathBuf {
    crate::require_python_module("rotel", "rotel");
    let output = std::process::Command::new(crate::python())
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .expect("running python to locate rotel");
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    crate::require_tool("rotel-agent", path, crate::PIP_INSTALL)
}

/// Starts the rotel collector receiving OTLP/gRPC on the returned address
/// and exporting every trace to `forward_to` over OTLP/gRPC.
pub fn spawn_rotel(forward_to: SocketAddr, log: PathBuf) -> (Process, SocketAddr) {
    let grpc = free_addr();
    let mut command = Command::new(rotel_agent());
    command
        .arg("start")
        .args(["--otlp-grpc-endpoint", &grpc.to_string()])
        .args(["--otlp-http-endpoint", &free_addr().to_string()])
        .args(["--exporter", "otlp"])
        .args(["--otlp-exporter-endpoint", &format!("http://{forward_to}")])
        .args(["--otlp-exporter-protocol", "grpc"]);
    (Process::spawn("rotel-agent", command, log), grpc)
}
