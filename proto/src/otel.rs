//! The OpenTelemetry SDK settings both planes read (`OTEL_*`, as the
//! specification defines them), parsed once into types, and the OTLP trace
//! sender both use: a replica's span exporter and the control plane's
//! forwarder. Spans arrive here already encoded (`otlp`); the sender only
//! wraps them in the request's envelope and speaks OTLP/gRPC or
//! OTLP/HTTP (protobuf) with the configured headers.

pub mod sdk;

use std::{collections::BTreeMap, time::Duration};

use prost::Message;
use tonic::{
    codec::CompressionEncoding,
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    service::interceptor::InterceptedService,
    transport::Channel,
};

use crate::{
    auth::Presenting,
    otlp::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
};

/// How spans travel to their receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (port 4317 by convention).
    Grpc,
    /// OTLP/HTTP with protobuf bodies, `POST …/v1/traces` (port 4318).
    HttpProtobuf,
}

/// Which traces are recorded, as `OTEL_TRACES_SAMPLER` names it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Share of traces recorded by their trace id (0–1).
    pub ratio: f64,
    /// A parent's sampled flag, where there is one, decides instead.
    pub parent_based: bool,
}

impl Default for Sampling {
    /// `parentbased_always_on`, the specification's default.
    fn default() -> Self {
        Self {
            ratio: 1.0,
            parent_based: true,
        }
    }
}

/// Where traces go, over what, with which headers.
#[derive(Clone, Debug, PartialEq)]
pub struct Destination {
    pub url: String,
    pub protocol: Protocol,
    pub headers: Vec<(String, String)>,
    /// `OTEL_EXPORTER_OTLP_COMPRESSION=gzip` (OTLP/gRPC only).
    pub gzip: bool,
}

impl Destination {
    /// OTLP/gRPC to `url`, no headers, uncompressed.
    pub fn grpc(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            protocol: Protocol::Grpc,
            headers: Vec::new(),
            gzip: false,
        }
    }
}

/// The `OTEL_*` settings, as read at start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    /// `OTEL_SDK_DISABLED=true`: nothing is recorded or exported.
    pub disabled: bool,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (with `/v1/traces` added for OTLP/HTTP), with the protocol and
    /// headers set for traces or for all signals.
    pub destination: Option<Destination>,
    /// `OTEL_SERVICE_NAME`, else `service.name` of the resource attributes.
    pub service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, in the order written.
    pub resource: Vec<(String, String)>,
    /// `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`, whatever the endpoint.
    pub headers: Vec<(String, String)>,
    /// `OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION=gzip`, whatever the endpoint.
    pub gzip: bool,
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
    pub sampling: Option<Sampling>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SettingsError {
    #[error("{variable}={value}: {why}")]
    Invalid {
        variable: &'static str,
        value: String,
        why: String,
    },
}

fn invalid(variable: &'static str, value: &str, why: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        variable,
        value: value.to_owned(),
        why: why.into(),
    }
}

impl Settings {
    /// The settings in the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::read(|name| std::env::var(name).ok())
    }

    /// The settings `var` gives; empty values count as unset, as the
    /// specification says.
    pub fn read(var: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        // Anything but `true` leaves it on, as the specification says.
        let disabled =
            var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let resource = match var("OTEL_RESOURCE_ATTRIBUTES") {
            Some(value) => pairs("OTEL_RESOURCE_ATTRIBUTES", &value)?,
            None => Vec::new(),
        };
        let service_name = var("OTEL_SERVICE_NAME").or_else(|| {
            resource
                .iter()
                .find(|(key, _)| key == "service.name")
                .map(|(_, value)| value.clone())
        });
        let protocol = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .map(|v| ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", v))
            .or_else(|| {
                var("OTEL_EXPORTER_OTLP_PROTOCOL").map(|v| ("OTEL_EXPORTER_OTLP_PROTOCOL", v))
            }) {
            None => None,
            Some((variable, value)) => Some(match value.trim() {
                "grpc" => Protocol::Grpc,
                "http/protobuf" => Protocol::HttpProtobuf,
                "http/json" => {
                    return Err(invalid(
                        variable,
                        &value,
                        "OTLP/HTTP with JSON is not supported: use http/protobuf or grpc",
                    ));
                }
                _ => return Err(invalid(variable, &value, "use grpc or http/protobuf")),
            }),
        };
        let headers = match var("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
            .map(|v| ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", v))
            .or_else(|| {
                var("OTEL_EXPORTER_OTLP_HEADERS").map(|v| ("OTEL_EXPORTER_OTLP_HEADERS", v))
            }) {
            Some((variable, value)) => {
                // Values are secrets (API keys): errors name the keys only.
                let headers = pairs(variable, &value).map_err(|_| {
                    let keys: Vec<&str> = value
                        .split(',')
                        .map(|item| item.split('=').next().unwrap_or_default().trim())
                        .collect();
                    invalid(
                        variable,
                        &keys.join(","),
                        "expected key=value pairs with valid %-escapes",
                    )
                })?;
                for (name, value) in &headers {
                    let name_ok = MetadataKey::<tonic::metadata::Ascii>::from_bytes(
                        name.to_ascii_lowercase().as_bytes(),
                    )
                    .is_ok();
                    let value_ok = MetadataValue::try_from(value.as_str()).is_ok();
                    if !name_ok || !value_ok {
                        return Err(invalid(variable, name, "not a valid header"));
                    }
                }
                headers
            }
            None => Vec::new(),
        };
        let gzip = match var("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
            .map(|v| ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", v))
            .or_else(|| {
                var("OTEL_EXPORTER_OTLP_COMPRESSION").map(|v| ("OTEL_EXPORTER_OTLP_COMPRESSION", v))
            }) {
            None => false,
            Some((variable, value)) => match value.trim() {
                "gzip" => true,
                "none" => false,
                _ => return Err(invalid(variable, &value, "use gzip or none")),
            },
        };
        // The default protocol is OTLP/HTTP, as the specification says.
        let protocol_or_default = protocol.unwrap_or(Protocol::HttpProtobuf);
        let destination = match var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(url) => Some(url_checked("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)?),
            None => match var("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(base) => {
                    let base = url_checked("OTEL_EXPORTER_OTLP_ENDPOINT", base)?;
                    Some(match protocol_or_default {
                        Protocol::Grpc => base,
                        Protocol::HttpProtobuf => {
                            format!("{}/v1/traces", base.trim_end_matches('/'))
                        }
                    })
                }
                None => None,
            },
        }
        .map(|url| Destination {
            url,
            protocol: protocol_or_default,
            headers: headers.clone(),
            gzip,
        });
        let sampling = match var("OTEL_TRACES_SAMPLER") {
            None => None,
            Some(name) => Some(sampler(&name, var("OTEL_TRACES_SAMPLER_ARG"))?),
        };
        Ok(Self {
            disabled,
            destination,
            service_name,
            resource,
            headers,
            gzip,
            sampling,
        })
    }

    /// The resource attributes spans are exported with: what the settings
    /// say under the process's own `identity` (e.g. `service.instance.id`,
    /// which the control plane checks a replica's exports against),
    /// `service.name` first.
    pub fn resource_with(
        &self,
        service_name: &str,
        identity: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let mut attributes: BTreeMap<String, String> = self.resource.iter().cloned().collect();
        attributes.extend(
            identity
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let name = self.service_name.as_deref().unwrap_or(service_name);
        attributes.insert("service.name".to_owned(), name.to_owned());
        let mut ordered = vec![("service.name".to_owned(), name.to_owned())];
        ordered.extend(attributes.into_iter().filter(|(k, _)| k != "service.name"));
        ordered
    }
}

/// An export of `spans` (encoded OTLP `Span`s) from the process
/// `resource` describes, recorded by `scope`.
pub fn export_request(
    resource: &[(String, String)],
    scope: &str,
    spans: Vec<Vec<u8>>,
) -> ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::{
        common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
        resource::v1::Resource,
    };
    let attributes = resource
        .iter()
        .map(|(key, value)| KeyValue {
            key: key.clone(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(value.clone())),
            }),
            ..Default::default()
        })
        .collect();
    let resource = Resource {
        attributes,
        ..Default::default()
    };
    let scope = InstrumentationScope {
        name: scope.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![crate::otlp::ResourceSpans {
            resource: resource.encode_to_vec(),
            scope_spans: vec![crate::otlp::ScopeSpans {
                scope: scope.encode_to_vec(),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn url_checked(variable: &'static str, url: String) -> Result<String, SettingsError> {
    let url = url.trim().to_owned();
    match url.parse::<http::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {
            Ok(url)
        }
        _ => Err(invalid(variable, &url, "not an http:// or https:// URL")),
    }
}

/// `key=value` pairs separated by commas, values percent-decoded (the W3C
/// baggage format the specification uses for headers and attributes).
fn pairs(variable: &'static str, text: &str) -> Result<Vec<(String, String)>, SettingsError> {
    text.split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| invalid(variable, item, "expected key=value"))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(invalid(variable, item, "an empty key"));
            }
            let value = percent_decode(value.trim())
                .ok_or_else(|| invalid(variable, item, "a broken %-escape"))?;
            Ok((key.to_owned(), value))
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn sampler(name: &str, arg: Option<String>) -> Result<Sampling, SettingsError> {
    let ratio = || -> Result<f64, SettingsError> {
        match &arg {
            None => Ok(1.0),
            Some(arg) => arg
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| invalid("OTEL_TRACES_SAMPLER_ARG", arg, "a ratio from 0 to 1")),
        }
    };
    let (ratio, parent_based) = match name.trim() {
        "always_on" => (1.0, false),
        "always_off" => (0.0, false),
        "traceidratio" => (ratio()?, false),
        "parentbased_always_on" => (1.0, true),
        "parentbased_always_off" => (0.0, true),
        "parentbased_traceidratio" => (ratio()?, true),
        _ => {
            return Err(invalid(
                "OTEL_TRACES_SAMPLER",
                name,
                "use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio",
            ));
        }
    };
    Ok(Sampling {
        ratio,
        parent_based,
    })
}

/// What an export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends OTLP trace exports to one destination.
#[derive(Clone)]
pub enum Sender {
    Grpc(TraceServiceClient<InterceptedService<Channel, Headers>>),
    Http {
        http: reqwest::Client,
        url: String,
        headers: http::HeaderMap,
    },
}

/// The gRPC metadata every export carries: the configured headers, and a
/// token for the control plane's receiver.
#[derive(Clone)]
pub struct Headers {
    fixed: MetadataMap,
    token: Presenting,
}

impl tonic::service::Interceptor for Headers {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        for entry in self.fixed.iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(key, value) = entry {
                request.metadata_mut().insert(key.clone(), value.clone());
            }
        }
        self.token.call(request)
    }
}

impl Sender {
    /// A sender for `destination`; `endpoint` makes the gRPC endpoint of a
    /// URL (with whatever TLS the caller's receiver needs), and `token` is
    /// presented over gRPC.
    pub fn to<E>(
        destination: &Destination,
        token: Presenting,
        endpoint: impl FnOnce(&str) -> Result<tonic::transport::Endpoint, E>,
    ) -> Result<Self, E> {
        Ok(match destination.protocol {
            Protocol::Grpc => Self::grpc(
                endpoint(&destination.url)?
                    .timeout(EXPORT_TIMEOUT)
                    .connect_lazy(),
                &destination.headers,
                token,
                destination.gzip,
            ),
            Protocol::HttpProtobuf => Self::http(&destination.url, &destination.headers),
        })
    }

    /// A gRPC sender over `channel` (gzip if `gzip`), presenting `token`.
    fn grpc(channel: Channel, headers: &[(String, String)], token: Presenting, gzip: bool) -> Self {
        let mut fixed = MetadataMap::new();
        for (name, value) in headers {
            // Checked when the settings were read.
            if let (Ok(key), Ok(value)) = (
                MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes()),
                MetadataValue::try_from(value.as_str()),
            ) {
                fixed.insert(key, value);
            }
        }
        let mut client = TraceServiceClient::with_interceptor(channel, Headers { fixed, token });
        if gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        Self::Grpc(client)
    }

    /// An OTLP/HTTP (protobuf) sender posting to `url`.
    fn http(url: &str, headers: &[(String, String)]) -> Self {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                map.insert(name, value);
            }
        }
        let http = reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            // Headers may be credentials: they go where configured only.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self::Http {
            http,
            url: url.to_owned(),
            headers: map,
        }
    }

    /// Sends one export; why not, if it failed.
    pub async fn send(&mut self, request: ExportTraceServiceRequest) -> Result<(), String> {
        match self {
            Self::Grpc(client) => client
                .export(request)
                .await
                .map(drop)
                .map_err(|status| status.message().to_owned()),
            Self::Http { http, url, headers } => {
                let response = http
                    .post(url.as_str())
                    .headers(headers.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(request.encode_to_vec())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {}", response.status()))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::read(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn nothing_set_is_nothing_configured() {
        assert_eq!(read(&[]), Ok(Settings::default()));
    }

    #[test]
    fn endpoints_follow_the_specification() {
        let http = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]).expect("valid");
        let destination = http.destination.expect("a destination");
        assert_eq!(destination.url, "http://c:4318/v1/traces");
        assert_eq!(destination.protocol, Protocol::HttpProtobuf);
        let grpc = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .expect("valid");
        assert_eq!(grpc.destination.expect("one").url, "http://c:4317");
        let traces = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/custom"),
        ])
        .expect("valid");
        assert_eq!(traces.destination.expect("one").url, "http://t:9/custom");
        assert!(read(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).is_err());
        assert!(read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317")]).is_err());
    }

    #[test]
    fn headers_and_attributes_are_percent_decoded_pairs() {
        let settings = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b,x-team=ops"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-attrs,k8s.pod.name=gw-0",
            ),
        ])
        .expect("valid");
        assert_eq!(
            settings.destination.clone().expect("one").headers,
            [
                ("api-key".into(), "a b".into()),
                ("x-team".into(), "ops".into())
            ]
        );
        assert_eq!(settings.service_name.as_deref(), Some("from-attrs"));
        let resource =
            settings.resource_with("switchboard-gateway", &[("service.instance.id", "r0")]);
        assert_eq!(resource[0], ("service.name".into(), "from-attrs".into()));
        assert!(resource.contains(&("k8s.pod.name".into(), "gw-0".into())));
        assert!(resource.contains(&("service.instance.id".into(), "r0".into())));
        assert!(read(&[("OTEL_RESOURCE_ATTRIBUTES", "novalue")]).is_err());
        assert!(read(&[("OTEL_EXPORTER_OTLP_HEADERS", "a=%zz")]).is_err());
    }

    #[test]
    fn samplers_are_read_with_their_argument() {
        let sampling = |name: &str, arg: &str| {
            read(&[
                ("OTEL_TRACES_SAMPLER", name),
                ("OTEL_TRACES_SAMPLER_ARG", arg),
            ])
            .map(|s| s.sampling.expect("a sampler"))
        };
        assert_eq!(
            sampling("parentbased_traceidratio", "0.25"),
            Ok(Sampling {
                ratio: 0.25,
                parent_based: true
            })
        );
        assert_eq!(
            sampling("always_off", ""),
            Ok(Sampling {
                ratio: 0.0,
                parent_based: false
            })
        );
        assert!(sampling("traceidratio", "2").is_err());
        assert!(sampling("jaeger_remote", "").is_err());
        assert_eq!(
            read(&[("OTEL_SDK_DISABLED", "true")]).map(|s| s.disabled),
            Ok(true)
        );
        assert_eq!(
            read(&[("OTEL_SDK_DISABLED", "yes")]).map(|s| s.disabled),
            Ok(false)
        );
        let secret = read(&[(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer s3cret%zz",
        )]);
        let message = secret.expect_err("a broken escape").to_string();
        assert!(
            !message.contains("s3cret") && message.contains("authorization"),
            "{message}"
        );
    }
}
