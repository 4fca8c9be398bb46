//! The `McpServer` resource as users write it (YAML file or CRD), and its
//! validation into [`ValidServer`], the only form the rest of the control
//! plane sees.
//!
//! Unlike other raw types, these accept unknown fields: whether one is an
//! error depends on where the resource comes from, so the registry decides
//! ([`crate::registry::UnknownFields`]): a typo in a file is refused, a field
//! from a newer CRD on a cluster object is ignored.

pub mod client;
pub mod gateway;
pub mod naming;
pub mod policy;
pub mod resilience;

use std::collections::BTreeMap;

use k8s_openapi::{
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, transform::Transform};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use naming::{NamesSpec, Naming, PrefixMode};
use resilience::{
    BreakerSpec, HealthSpec, PoolSpec, RawResilience, Resilience, SessionMode, TimeoutsSpec,
};

/// Separator between a server's namespace and its tool names.
pub const NAME_SEPARATOR: char = '.';

/// Longest resource name, as for a Kubernetes DNS-1123 label.
const MAX_NAME_LEN: usize = 63;

/// Most environment variables one process gets. Generous (environments
/// rarely pass a few dozen); it bounds, for the API server, how often the
/// CRD's `valueFrom` CEL rule can run per object, so the rule's estimated
/// cost stays far inside a real cluster's budget whatever else is added.
pub const MAX_ENV_VARS: usize = 256;
/// Headers a remote server may be sent: each may carry a CEL-checked
/// `valueFrom`, whose cost the API server bounds by the list's length.
pub const MAX_HEADERS: usize = 64;

/// Durations in the CRD: `<number><unit>`, as [`resilience::parse_duration`]
/// reads them.
pub(crate) const DURATION_PATTERN: &str = r"^[0-9]+(ms|s|m|h)$";

/// A downstream MCP server the gateways expose under one namespace.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "McpServer",
    namespaced,
    shortname = "mcps",
    category = "switchboard",
    doc = "An MCP server that Switchboard gateways serve under one tool prefix.",
    status = "McpServerStatus",
    printcolumn(name = "Prefix", type_ = "string", json_path = ".status.prefix", description = "Tool name prefix"),
    printcolumn(name = "Transport", type_ = "string", json_path = ".status.transport"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Replicas", type_ = "string", json_path = ".status.replicaSummary", description = "Replicas with the server ready / replicas connected"),
    printcolumn(name = "Tools", type_ = "integer", json_path = ".status.tools"),
    printcolumn(name = "Breaker", type_ = "string", json_path = ".status.breaker"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS label (lowercase letters, digits and '-', at most 63): it names the server in tool prefixes and status")
)]
#[x_kube(validation = Rule::new("!has(self.handshake) || self.handshake != 'discover' || !has(self.transport.sse)").message("handshake `discover` needs MCP 2026-07-28, which the legacy SSE transport predates"))]
#[serde(rename_all = "camelCase")]
#[schemars(transform = openapi_integer_formats)]
pub struct McpServerSpec {
    /// Prefix of the server's tools and prompts (`<namespace>.<tool>`).
    /// Defaults to `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,63}$"), length(max = MAX_NAME_LEN))]
    pub namespace: Option<String>,
    /// A disabled server is kept in the registry but not pushed to gateways.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// How gateways reach the server. Exactly one transport must be set.
    pub transport: TransportSpec,
    /// `shared` (default): client sessions share pooled connections.
    /// `perSession`: one connection per client session.
    #[serde(default)]
    pub session_mode: SessionMode,
    /// How gateways open a connection. `auto` (default): the `initialize`
    /// handshake (MCP 2025-11-25), and `server/discover` (2026-07-28) with
    /// a server that refuses it. `initialize` or `discover`: only that.
    /// Legacy SSE servers are only ever initialised.
    #[serde(default)]
    pub handshake: Handshake,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    /// When tool and prompt names get the prefix: `Always` (default),
    /// `Never`, `Conditional` (only where names collide).
    #[serde(default)]
    pub prefix_mode: PrefixMode,
    /// Between prefix and tool name (default `.`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = naming::MAX_SEPARATOR_LEN))]
    pub separator: Option<String>,
    /// Which tools are served (include/exclude globs), renames and
    /// description overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<NamesSpec>,
    /// The same for prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<NamesSpec>,
}

fn default_enabled() -> bool {
    true
}

/// Which MCP lifecycle gateways open a server's connections with.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Handshake {
    /// `initialize` first; `server/discover` if the server refuses it.
    #[default]
    Auto,
    /// Only `initialize`: the server is spoken to as of 2025-11-25.
    Initialize,
    /// Only `server/discover`: the server is spoken to as of 2026-07-28.
    Discover,
}

/// Exactly one of the fields is set.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("[has(self.stdio), has(self.http), has(self.sse)].filter(x, x).size() == 1").message("exactly one transport must be set (stdio, http or sse)"))]
#[serde(rename_all = "camelCase")]
pub struct TransportSpec {
    /// A local process speaking MCP over stdin/stdout, run by every gateway replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdio: Option<StdioSpec>,
    /// A remote server speaking streamable HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,
    /// A server speaking the legacy HTTP+SSE transport (2024-11-05).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse: Option<SseSpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSpec {
    /// `http://` or `https://` URL of the server's MCP endpoint.
    pub url: String,
    /// Headers sent with every request (e.g. `Authorization`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_HEADERS))]
    pub headers: Vec<Header>,
    /// Let `url` name a link-local address or a cloud metadata endpoint
    /// (refused otherwise: from a gateway those reach the node's credentials).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_link_local: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SseSpec {
    /// `http://` or `https://` URL of the server's event stream, e.g. `http://127.0.0.1:3001/sse`.
    pub url: String,
    /// Headers sent with every request (e.g. `Authorization`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_HEADERS))]
    pub headers: Vec<Header>,
    /// Let `url` name a link-local address or a cloud metadata endpoint
    /// (refused otherwise: from a gateway those reach the node's credentials).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_link_local: bool,
    /// A command each gateway replica starts first and keeps running while
    /// connected (for SSE servers that run beside the gateway); the replica
    /// waits until `url` answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment of `command` (plain values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ENV_VARS))]
    pub env: Vec<EnvVar>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    pub name: String,
    #[serde(default)]
    pub value: String,
    /// Take the value from a Secret or ConfigMap in the resource's
    /// namespace (Kubernetes source only), as `env` does: a token need not
    /// sit in the spec. Trailing line breaks are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StdioSpec {
    /// Executable, looked up on the gateway's `PATH`.
    pub command: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment variables for the process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ENV_VARS))]
    pub env: Vec<EnvVar>,
    /// Working directory; defaults to the gateway's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
    /// Take the value from a Secret or ConfigMap in the resource's
    /// namespace (Kubernetes source only). The control plane resolves it and
    /// pushes the value to the gateways; it never logs or reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

/// Exactly one of the fields is set.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.secretKeyRef) != has(self.configMapKeyRef)").message("set exactly one of secretKeyRef and configMapKeyRef"))]
#[serde(rename_all = "camelCase")]
pub struct EnvVarSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeySelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeySelector>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeySelector {
    /// The Secret or ConfigMap, in the McpServer's namespace.
    pub name: String,
    pub key: String,
    /// Leave the variable unset when the object or key is missing, instead
    /// of refusing the resource.
    #[serde(default)]
    pub optional: bool,
}

/// A value to be read from the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueRef {
    pub kind: RefKind,
    pub name: String,
    pub key: String,
    pub optional: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefKind {
    Secret,
    ConfigMap,
}

/// Observed state, written by the control plane.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct McpServerStatus {
    /// `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (the spec is valid; why not, otherwise) and `Ready` (the
    /// server is ready on the gateway replicas).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The tool name prefix in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `stdio`, `http` or `sse`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// Connected gateway replicas.
    #[serde(default)]
    pub replicas: i32,
    /// Replicas that applied this generation.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Replicas on which the server is ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// `ready/connected`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_summary: Option<String>,
    /// Tools the server offers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<i32>,
    /// Circuit breaker: `closed`, `open` or `halfOpen` (the worst over replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<String>,
    /// The MCP protocol version the server negotiated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    /// The most recent error a replica reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The CRDs of every registry kind, as checked into the helm chart.
pub fn crds() -> [CustomResourceDefinition; 4] {
    use kube::CustomResourceExt;
    [
        McpServer::crd(),
        client::McpClient::crd(),
        policy::McpAccessPolicy::crd(),
        gateway::McpGatewayConfig::crd(),
    ]
}

/// Every CRD as one YAML stream.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let documents = crds()
        .iter()
        .map(serde_yaml::to_string)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(documents.join("---\n"))
}

/// schemars describes Rust's unsigned integers with formats OpenAPI does
/// not define (`uint32`, ...). The API server ignores a format it does not
/// know, so such a format promises a check that never runs. This keeps the
/// `minimum: 0` schemars emits beside it, names OpenAPI's format for the
/// range instead, and adds the upper bound the control plane can parse.
fn openapi_integer_formats(schema: &mut Schema) {
    schemars::transform::RecursiveTransform(|schema: &mut Schema| {
        let (format, maximum) = match schema.get("format").and_then(Value::as_str) {
            Some("uint8") => ("int32", Some(u64::from(u8::MAX))),
            Some("uint16") => ("int32", Some(u64::from(u16::MAX))),
            Some("uint32") => ("int64", Some(u64::from(u32::MAX))),
            Some("uint64" | "uint") => ("int64", None),
            _ => return,
        };
        schema.insert("format".into(), format.into());
        if let Some(maximum) = maximum.filter(|_| schema.get("maximum").is_none()) {
            schema.insert("maximum".into(), maximum.into());
        }
    })
    .transform(schema);
}

/// A validated server: every field checked, defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidServer {
    /// The identity gateways know it by: `metadata.name` from a file,
    /// `<namespace>/<name>` from a cluster.
    pub name: String,
    pub namespace: String,
    pub enabled: bool,
    pub transport: ValidTransport,
    pub handshake: Handshake,
    pub resilience: Resilience,
    pub naming: Naming,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValidTransport {
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        /// Variables whose values a registry source still has to read
        /// (`valueFrom`); empty once resolved.
        env_from: BTreeMap<String, ValueRef>,
        cwd: Option<String>,
    },
    Http {
        url: String,
        headers: BTreeMap<String, String>,
        /// Headers whose values a registry source still has to read
        /// (`valueFrom`); empty once resolved.
        headers_from: BTreeMap<String, ValueRef>,
    },
    Sse {
        url: String,
        headers: BTreeMap<String, String>,
        /// As for `Http`.
        headers_from: BTreeMap<String, ValueRef>,
        /// Started before connecting, when set.
        launch: Option<Launch>,
    },
}

impl ValidTransport {
    /// `stdio`, `http` or `sse`, as `spec.transport.type` says.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Stdio { .. } => "stdio",
            Self::Http { .. } => "http",
            Self::Sse { .. } => "sse",
        }
    }
}

/// A process started beside an SSE server's connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// Why a resource is invalid: the field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    pub field: String,
    pub reason: String,
}

impl ValidationError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

// === impl McpServer ===

impl McpServer {
    /// Checks the resource and fills in defaults. Fails on the first bad field.
    pub fn validate(&self) -> Result<ValidServer, ValidationError> {
        let name = self
            .metadata
            .name
            .clone()
            .ok_or_else(|| ValidationError::new("metadata.name", "is required"))?;
        check_dns_label(&name).map_err(|reason| ValidationError::new("metadata.name", reason))?;

        let namespace = self.spec.namespace.clone().unwrap_or_else(|| name.clone());
        check_namespace(&namespace)
            .map_err(|reason| ValidationError::new("spec.namespace", reason))?;

        let transport = &self.spec.transport;
        let transport = match (&transport.stdio, &transport.http, &transport.sse) {
            (Some(stdio), None, None) => validate_stdio(stdio)?,
            (None, Some(http), None) => validate_http(http)?,
            (None, None, Some(sse)) => validate_sse(sse)?,
            _ => {
                return Err(ValidationError::new(
                    "spec.transport",
                    "exactly one transport must be set (stdio, http or sse)",
                ));
            }
        };
        if self.spec.handshake == Handshake::Discover
            && matches!(transport, ValidTransport::Sse { .. })
        {
            return Err(ValidationError::new(
                "spec.handshake",
                "`discover` needs MCP 2026-07-28, which the legacy SSE transport predates: use `auto` or `initialize`",
            ));
        }
        let resilience = RawResilience {
            session_mode: self.spec.session_mode,
            pool: self.spec.pool.as_ref(),
            timeouts: self.spec.timeouts.as_ref(),
            breaker: self.spec.breaker.as_ref(),
            health: self.spec.health.as_ref(),
        }
        .validate()?;
        let naming = naming::validate(
            self.spec.prefix_mode,
            self.spec.separator.as_deref(),
            self.spec.tools.as_ref(),
            self.spec.prompts.as_ref(),
        )?;
        Ok(ValidServer {
            name,
            namespace,
            enabled: self.spec.enabled,
            transport,
            handshake: self.spec.handshake,
            resilience,
            naming,
        })
    }
}

fn validate_stdio(stdio: &StdioSpec) -> Result<ValidTransport, ValidationError> {
    if stdio.command.trim().is_empty() {
        return Err(ValidationError::new(
            "spec.transport.stdio.command",
            "must not be empty",
        ));
    }
    check_env_count("spec.transport.stdio.env", stdio.env.len())?;
    let mut env = BTreeMap::new();
    let mut env_from = BTreeMap::new();
    for (i, var) in stdio.env.iter().enumerate() {
        let field = format!("spec.transport.stdio.env[{i}].name");
        if var.name.is_empty() || var.name.contains(['=', '\0']) {
            return Err(ValidationError::new(
                field,
                format!("`{}` is not a valid variable name", var.name),
            ));
        }
        if env.contains_key(&var.name) || env_from.contains_key(&var.name) {
            return Err(ValidationError::new(
                field,
                format!("`{}` is set twice", var.name),
            ));
        }
        match &var.value_from {
            None => {
                env.insert(var.name.clone(), var.value.clone());
            }
            Some(source) => {
                let field = format!("spec.transport.stdio.env[{i}].valueFrom");
                let reference =
                    value_ref(source).map_err(|reason| ValidationError::new(&field, reason))?;
                if !var.value.is_empty() {
                    return Err(ValidationError::new(
                        field,
                        "set either value or valueFrom, not both",
                    ));
                }
                env_from.insert(var.name.clone(), reference);
            }
        }
    }
    if stdio.cwd.as_deref().is_some_and(str::is_empty) {
        return Err(ValidationError::new(
            "spec.transport.stdio.cwd",
            "must not be empty when set",
        ));
    }
    Ok(ValidTransport::Stdio {
        command: stdio.command.clone(),
        args: stdio.args.clone(),
        env,
        env_from,
        cwd: stdio.cwd.clone(),
    })
}

fn check_env_count(field: &str, count: usize) -> Result<(), ValidationError> {
    if count > MAX_ENV_VARS {
        return Err(ValidationError::new(
            field,
            format!("at most {MAX_ENV_VARS} variables, got {count}"),
        ));
    }
    Ok(())
}

fn value_ref(source: &EnvVarSource) -> Result<ValueRef, String> {
    let (kind, selector) = match (&source.secret_key_ref, &source.config_map_key_ref) {
        (Some(secret), None) => (RefKind::Secret, secret),
        (None, Some(config_map)) => (RefKind::ConfigMap, config_map),
        _ => return Err("set exactly one of secretKeyRef and configMapKeyRef".into()),
    };
    if selector.name.is_empty() || selector.key.is_empty() {
        return Err("name and key are required".into());
    }
    Ok(ValueRef {
        kind,
        name: selector.name.clone(),
        key: selector.key.clone(),
        optional: selector.optional,
    })
}

fn validate_http(http: &HttpSpec) -> Result<ValidTransport, ValidationError> {
    let (headers, headers_from) = validate_headers("spec.transport.http.headers", &http.headers)?;
    Ok(ValidTransport::Http {
        url: validate_url("spec.transport.http.url", &http.url, http.allow_link_local)?,
        headers,
        headers_from,
    })
}

fn validate_sse(sse: &SseSpec) -> Result<ValidTransport, ValidationError> {
    let url = validate_url("spec.transport.sse.url", &sse.url, sse.allow_link_local)?;
    let (headers, headers_from) = validate_headers("spec.transport.sse.headers", &sse.headers)?;
    let launch = match &sse.command {
        None if sse.args.is_empty() && sse.env.is_empty() => None,
        None => {
            return Err(ValidationError::new(
                "spec.transport.sse.command",
                "is required when args or env are set",
            ));
        }
        Some(command) if command.trim().is_empty() => {
            return Err(ValidationError::new(
                "spec.transport.sse.command",
                "must not be empty when set",
            ));
        }
        Some(command) => {
            check_env_count("spec.transport.sse.env", sse.env.len())?;
            let mut env = BTreeMap::new();
            for (i, var) in sse.env.iter().enumerate() {
                if var.value_from.is_some() {
                    return Err(ValidationError::new(
                        format!("spec.transport.sse.env[{i}].valueFrom"),
                        "is not supported for sse commands; use value",
                    ));
                }
                if var.name.is_empty()
                    || var.name.contains(['=', '\0'])
                    || env.insert(var.name.clone(), var.value.clone()).is_some()
                {
                    return Err(ValidationError::new(
                        format!("spec.transport.sse.env[{i}].name"),
                        format!(
                            "`{}` is not a valid variable name or is set twice",
                            var.name
                        ),
                    ));
                }
            }
            Some(Launch {
                command: command.clone(),
                args: sse.args.clone(),
                env,
            })
        }
    };
    Ok(ValidTransport::Sse {
        url,
        headers,
        headers_from,
        launch,
    })
}

pub(crate) fn validate_url(
    field: &str,
    url: &str,
    allow_link_local: bool,
) -> Result<String, ValidationError> {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Err(ValidationError::new(
            field,
            "must be an http:// or https:// URL",
        ));
    };
    if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
        return Err(ValidationError::new(
            field,
            format!("`{url}` has no valid host"),
        ));
    }
    if !allow_link_local && let Some(host) = link_local_host(url) {
        return Err(ValidationError::new(
            field,
            format!(
                "`{host}` is a link-local address or a cloud metadata endpoint, where a gateway's request reaches the node's credentials (set allowLinkLocal: true if the server really is there)"
            ),
        ));
    }
    Ok(url.to_owned())
}

/// The URL's host, if it is a link-local address or a cloud metadata
/// endpoint. Names are matched as written: one that resolves there is
/// kept out by the chart's egress policy instead.
fn link_local_host(url: &str) -> Option<String> {
    const METADATA_NAMES: &[&str] = &["metadata.google.internal", "metadata.goog", "metadata"];
    let uri = url.parse::<http::Uri>().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let hit = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            ip.is_link_local() || ip == std::net::Ipv4Addr::new(100, 100, 100, 200)
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_unicast_link_local()
                || ip == "fd00:ec2::254".parse::<std::net::Ipv6Addr>().ok()?
                || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
        Err(_) => METADATA_NAMES.contains(&host.to_ascii_lowercase().trim_end_matches('.')),
    };
    hit.then(|| host.to_owned())
}

/// Headers with their values, and those whose values come from the
/// cluster.
type ValidHeaders = (BTreeMap<String, String>, BTreeMap<String, ValueRef>);

fn validate_headers(field: &str, headers: &[Header]) -> Result<ValidHeaders, ValidationError> {
    if headers.len() > MAX_HEADERS {
        return Err(ValidationError::new(
            field,
            format!("at most {MAX_HEADERS} headers, got {}", headers.len()),
        ));
    }
    let mut valid = BTreeMap::new();
    let mut from = BTreeMap::new();
    for (i, header) in headers.iter().enumerate() {
        let valid_name = !header.name.is_empty()
            && header
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        if !valid_name || header.value.contains(['\r', '\n']) {
            return Err(ValidationError::new(
                format!("{field}[{i}]"),
                format!("`{}` is not a valid header", header.name),
            ));
        }
        match &header.value_from {
            None => {
                valid.insert(header.name.clone(), header.value.clone());
            }
            Some(source) => {
                let field = format!("{field}[{i}].valueFrom");
                let reference =
                    value_ref(source).map_err(|reason| ValidationError::new(&field, reason))?;
                if !header.value.is_empty() {
                    return Err(ValidationError::new(
                        field,
                        "set either value or valueFrom, not both",
                    ));
                }
                from.insert(header.name.clone(), reference);
            }
        }
    }
    Ok((valid, from))
}

pub(crate) fn check_dns_label(name: &str) -> Result<(), String> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !valid_chars
        || name.starts_with('-')
        || name.ends_with('-')
    {
        return Err(format!(
            "`{name}` must be 1-{MAX_NAME_LEN} lowercase letters, digits or '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn check_namespace(namespace: &str) -> Result<(), String> {
    let valid = !namespace.is_empty()
        && namespace.len() <= MAX_NAME_LEN
        && namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(format!(
            "`{namespace}` must be 1-{MAX_NAME_LEN} letters, digits, '-' or '_' (the separator `{NAME_SEPARATOR}` is not allowed)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> McpServer {
        serde_yaml::from_str(yaml).expect("test yaml parses")
    }

    #[test]
    fn link_local_and_metadata_urls_need_an_opt_in() {
        let server = |transport: &str, url: &str, allow: bool| {
            parse(&format!(
                "metadata: {{name: x}}\nspec: {{transport: {{{transport}: {{url: '{url}', allowLinkLocal: {allow}}}}}}}"
            ))
            .validate()
        };
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://169.254.10.1:8080/mcp",
            "http://100.100.100.200/",
            "http://[fd00:ec2::254]/",
            "http://[fe80::1]:3000/mcp",
            "http://[::ffff:169.254.169.254]/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://Metadata/",
        ] {
            for transport in ["http", "sse"] {
                let error = server(transport, url, false).expect_err(url);
                assert_eq!(error.field, format!("spec.transport.{transport}.url"));
                assert!(
                    error.reason.contains("allowLinkLocal: true"),
                    "{url}: {}",
                    error.reason
                );
                server(transport, url, true).expect("allowed when asked for");
            }
        }
        for url in [
            "http://10.0.0.5/mcp",
            "https://mcp.example.com/mcp",
            "http://127.0.0.1:9/mcp",
            "http://[::1]:8080/",
        ] {
            server("http", url, false).expect(url);
        }
    }

    #[test]
    fn defaults_namespace_to_name_and_enables() {
        let server = parse(
            "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata: {name: time}\n\
             spec: {transport: {stdio: {command: uvx, args: [mcp-server-time], env: [{name: TZ, value: UTC}]}}}",
        )
        .validate()
        .expect("valid");
        assert_eq!(server.namespace, "time");
        assert!(server.enabled);
        let ValidTransport::Stdio { env, args, .. } = server.transport else {
            panic!("expected stdio");
        };
        assert_eq!(env.get("TZ").map(String::as_str), Some("UTC"));
        assert_eq!(args, ["mcp-server-time"]);
    }

    #[test]
    fn the_handshake_defaults_to_auto_and_discover_needs_a_2026_transport() {
        let server = |spec: &str| parse(&format!("metadata: {{name: x}}\nspec: {spec}")).validate();
        let valid = server("{transport: {stdio: {command: c}}}").expect("valid");
        assert_eq!(valid.handshake, Handshake::Auto);
        let valid =
            server("{handshake: discover, transport: {http: {url: 'http://mcp:8080/mcp'}}}")
                .expect("valid");
        assert_eq!(valid.handshake, Handshake::Discover);
        let error = server("{handshake: discover, transport: {sse: {url: 'http://mcp:8080/sse'}}}")
            .expect_err("SSE predates server/discover");
        assert_eq!(error.field, "spec.handshake");
        server("{handshake: initialize, transport: {sse: {url: 'http://mcp:8080/sse'}}}")
            .expect("valid");
        let unknown: Result<McpServer, _> = serde_yaml::from_str(
            "metadata: {name: x}\nspec: {handshake: stateless, transport: {stdio: {command: c}}}",
        );
        let error = unknown.expect_err("not a handshake").to_string();
        assert!(error.contains("auto"), "{error}");
    }

    #[test]
    fn missing_transport_names_the_field() {
        let err = parse("metadata: {name: x}\nspec: {transport: {}}")
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "spec.transport");
    }

    #[test]
    fn http_transport_needs_an_http_url() {
        let ok = parse(
            "metadata: {name: x}\nspec: {transport: {http: {url: 'http://mcp:8080/mcp', headers: [{name: Authorization, value: Bearer t}]}}}",
        )
        .validate()
        .expect("valid");
        assert!(matches!(ok.transport, ValidTransport::Http { .. }));
        for url in ["ftp://x", "http://", "https:///x"] {
            let yaml =
                format!("metadata: {{name: x}}\nspec: {{transport: {{http: {{url: '{url}'}}}}}}");
            let err = parse(&yaml).validate().unwrap_err();
            assert_eq!(err.field, "spec.transport.http.url", "{url}");
        }
        let both = parse(
            "metadata: {name: x}\nspec: {transport: {stdio: {command: c}, http: {url: 'http://h/mcp'}}}",
        );
        assert_eq!(both.validate().unwrap_err().field, "spec.transport");
    }

    #[test]
    fn header_values_come_from_a_value_or_a_reference_not_both() {
        let server = parse(
            "metadata: {name: x}\nspec: {transport: {sse: {url: 'https://h/sse', headers: [{name: X-Api-Key, valueFrom: {secretKeyRef: {name: creds, key: key}}}, {name: X-Team, value: a}]}}}",
        )
        .validate()
        .expect("valid");
        let ValidTransport::Sse {
            headers,
            headers_from,
            ..
        } = server.transport
        else {
            panic!("expected sse");
        };
        assert_eq!(headers.keys().collect::<Vec<_>>(), ["X-Team"]);
        assert_eq!(headers_from["X-Api-Key"].name, "creds");
        let both = parse(
            "metadata: {name: x}\nspec: {transport: {http: {url: 'http://h/mcp', headers: [{name: A, value: v, valueFrom: {configMapKeyRef: {name: c, key: k}}}]}}}",
        );
        assert_eq!(
            both.validate().unwrap_err().field,
            "spec.transport.http.headers[0].valueFrom"
        );
    }

    #[test]
    fn sse_transport_with_and_without_a_command() {
        let plain = parse("metadata: {name: x}\nspec: {transport: {sse: {url: 'https://h/sse'}}}")
            .validate()
            .expect("valid");
        assert!(matches!(
            plain.transport,
            ValidTransport::Sse { launch: None, .. }
        ));
        let launched = parse(
            "metadata: {name: x}\nspec: {transport: {sse: {url: 'http://127.0.0.1:3001/sse', command: node, args: [s.js], env: [{name: PORT, value: '3001'}]}}}",
        )
        .validate()
        .expect("valid");
        let ValidTransport::Sse {
            launch: Some(launch),
            ..
        } = launched.transport
        else {
            panic!("{launched:?}");
        };
        assert_eq!(launch.env.get("PORT").map(String::as_str), Some("3001"));
        for (yaml, field) in [
            ("{sse: {url: 'ws://h'}}", "spec.transport.sse.url"),
            (
                "{sse: {url: 'http://h/sse', args: [x]}}",
                "spec.transport.sse.command",
            ),
            (
                "{sse: {url: 'http://h/sse', command: c, env: [{name: A, valueFrom: {secretKeyRef: {name: s, key: k}}}]}}",
                "spec.transport.sse.env[0].valueFrom",
            ),
            (
                "{sse: {url: 'http://h/sse'}, http: {url: 'http://h/mcp'}}",
                "spec.transport",
            ),
        ] {
            let yaml = format!("metadata: {{name: x}}\nspec: {{transport: {yaml}}}");
            assert_eq!(parse(&yaml).validate().unwrap_err().field, field, "{yaml}");
        }
    }

    #[test]
    fn empty_command_names_the_field() {
        let err = parse("metadata: {name: x}\nspec: {transport: {stdio: {command: ' '}}}")
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "spec.transport.stdio.command");
    }

    #[test]
    fn namespace_may_not_contain_separator() {
        let err =
            parse("metadata: {name: x}\nspec: {namespace: a.b, transport: {stdio: {command: c}}}")
                .validate()
                .unwrap_err();
        assert_eq!(err.field, "spec.namespace");
    }

    #[test]
    fn bad_names_are_rejected() {
        for name in ["Upper", "-lead", "trail-", "has_underscore", ""] {
            let mut server = parse("metadata: {name: x}\nspec: {transport: {stdio: {command: c}}}");
            server.metadata.name = Some(name.to_owned());
            assert_eq!(
                server.validate().unwrap_err().field,
                "metadata.name",
                "{name}"
            );
        }
    }

    #[test]
    fn duplicate_env_is_rejected() {
        let err = parse(
            "metadata: {name: x}\nspec: {transport: {stdio: {command: c, env: [{name: A, value: '1'}, {name: A, value: '2'}]}}}",
        )
        .validate()
        .unwrap_err();
        assert_eq!(err.field, "spec.transport.stdio.env[1].name");
    }

    #[test]
    fn too_many_env_vars_are_refused() {
        let env: Vec<_> = (0..=MAX_ENV_VARS)
            .map(|i| serde_json::json!({ "name": format!("V{i}"), "value": "x" }))
            .collect();
        let mut server = parse("metadata: {name: x}\nspec: {transport: {stdio: {command: c}}}");
        server.spec.transport.stdio =
            serde_json::from_value(serde_json::json!({ "command": "c", "env": env }))
                .expect("stdio spec");
        let err = server.validate().unwrap_err();
        assert_eq!(err.field, "spec.transport.stdio.env");
    }

    fn crd_spec_schema() -> Value {
        let crd = serde_json::to_value(&crds()[0]).expect("CRD");
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
    }

    /// `health.tool.arguments` is any JSON object, kept whole by the API
    /// server (a structural schema needs the type; without
    /// `x-kubernetes-preserve-unknown-fields` every key would be pruned).
    #[test]
    fn the_crd_keeps_probe_arguments_whole() {
        let spec = crd_spec_schema();
        let arguments =
            &spec["properties"]["health"]["properties"]["tool"]["properties"]["arguments"];
        assert_eq!(arguments["type"], "object", "{arguments}");
        assert_eq!(arguments["x-kubernetes-preserve-unknown-fields"], true);
    }

    #[test]
    fn every_duration_in_the_crd_has_the_duration_pattern() {
        let spec = crd_spec_schema();
        for pointer in [
            "/pool/properties/idleTimeout",
            "/pool/properties/acquireTimeout",
            "/timeouts/properties/call",
            "/timeouts/properties/maxCall",
            "/timeouts/properties/initialize",
            "/timeouts/properties/tools/additionalProperties",
            "/breaker/properties/window",
            "/breaker/properties/openDuration",
            "/health/properties/interval",
            "/health/properties/timeout",
        ] {
            let field = spec["properties"].pointer(pointer).expect(pointer);
            assert_eq!(field["pattern"], DURATION_PATTERN, "{pointer}");
            assert_eq!(field["type"], "string", "{pointer}");
        }
    }

    /// No `uint32`-style formats (the API server ignores formats it does
    /// not know), and the `u32` bounds the control plane parses.
    #[test]
    fn unsigned_integers_use_openapi_formats_and_bounds() {
        let breaker = &crd_spec_schema()["properties"]["breaker"]["properties"];
        let threshold = &breaker["consecutiveFailures"];
        assert_eq!(threshold["format"], "int64");
        assert_eq!(threshold["minimum"], 0.0);
        assert_eq!(threshold["maximum"], f64::from(u32::MAX));
        assert_eq!(breaker["failureRatePercent"]["maximum"], 100.0, "kept");
        assert!(!crd_yaml().expect("CRD").contains("uint"));
    }

    /// A CEL rule runs once per item of every list above it; each such list
    /// is bounded, so the rule's estimated cost stays small.
    #[test]
    fn lists_above_cel_rules_are_bounded() {
        fn walk(node: &Value, bounded: bool, path: &str, found: &mut Vec<String>) {
            if node.get("x-kubernetes-validations").is_some() {
                assert!(bounded, "{path}: a CEL rule under an unbounded list");
                found.push(path.to_owned());
            }
            let bounded = bounded && (node["type"] != "array" || node["maxItems"].is_u64());
            if let Some(items) = node.get("items") {
                walk(items, bounded, &format!("{path}[]"), found);
            }
            for (name, property) in node["properties"].as_object().into_iter().flatten() {
                walk(property, bounded, &format!("{path}.{name}"), found);
            }
        }
        let mut found = Vec::new();
        walk(&crd_spec_schema(), true, "spec", &mut found);
        assert_eq!(
            found,
            [
                "spec",
                "spec.transport",
                "spec.transport.http.headers[].valueFrom",
                "spec.transport.sse.env[].valueFrom",
                "spec.transport.sse.headers[].valueFrom",
                "spec.transport.stdio.env[].valueFrom",
            ]
        );
    }
}
