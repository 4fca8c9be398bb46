//! The registry: every `McpServer` the control plane knows, after validation,
//! with the problems found on the way. Sources (a YAML directory, or the
//! Kubernetes API) produce [`Registry`] values; the snapshot builder
//! consumes them.

pub mod directory;
pub mod kubernetes;

use std::collections::BTreeMap;

use kube::CustomResourceExt;
use serde::Serialize;
use serde_ignored::Path;
use tracing::debug;

use serde::de::DeserializeOwned;

use crate::resource::{
    McpServer, ValidServer, ValidationError,
    client::{self, McpClient, ValidClient},
    gateway::{self, McpGatewayConfig, ValidGatewayConfig},
    policy::{self, McpAccessPolicy, ValidPolicy},
};

const API_VERSION: &str = "switchboard.dev/v1alpha1";
const KIND: &str = "McpServer";

/// The registry as one source currently sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Registry {
    /// Accepted servers by name, enabled or not. Names and namespaces are unique.
    pub servers: BTreeMap<String, ValidServer>,
    /// Where each accepted server came from (its file, or its object).
    pub origins: BTreeMap<String, String>,
    /// Accepted clients by name; names and tokens are unique.
    pub clients: BTreeMap<String, ValidClient>,
    /// Accepted access policies by name.
    pub policies: BTreeMap<String, ValidPolicy>,
    /// The gateway-wide settings, when declared.
    pub gateway: Option<ValidGatewayConfig>,
    /// Every problem found; none of them stops the rest of the registry.
    pub issues: Vec<RegistryIssue>,
    /// The change that produced it, as a trace to continue.
    pub cause: Cause,
}

/// The W3C `traceparent` of the change that produced a registry, so the
/// snapshot built from it joins the change's trace. Not part of what the
/// registry says: two registries differing only here are equal.
#[derive(Clone, Debug, Default)]
pub struct Cause(pub String);

impl PartialEq for Cause {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A problem with one file or resource, precise enough to fix without logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RegistryIssue {
    /// Where the resource came from (a file path in directory mode).
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

/// What parsing does with a field the `McpServer` types do not know. The
/// parse is the same for every source; only this policy differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownFields {
    /// Refuse the resource, naming the field. For files written by hand,
    /// where an unknown field is a typo and dropping it would silently lose
    /// a setting.
    Refuse,
    /// Parse the rest and log the fields at debug. For objects from the API
    /// server, which already pruned them to the installed CRD's schema: a
    /// field left is one a newer CRD defines (upgrades apply the CRD before
    /// the control plane), and refusing the resource would take a working
    /// server away over a setting this control plane cannot apply anyway.
    Ignore,
}

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

// === impl Registry ===

impl Registry {
    /// Builds a registry from candidates in priority order: the first
    /// resource to claim a name or namespace keeps it, later ones are
    /// reported and left out.
    pub fn assemble(
        candidates: impl IntoIterator<Item = (String, ValidServer)>,
        mut issues: Vec<RegistryIssue>,
    ) -> Self {
        let mut servers: BTreeMap<String, ValidServer> = BTreeMap::new();
        let mut origin: BTreeMap<String, String> = BTreeMap::new();
        let mut namespaces: BTreeMap<String, String> = BTreeMap::new();
        for (source, server) in candidates {
            if let Some(first) = origin.get(&server.name) {
                issues.push(RegistryIssue {
                    source,
                    resource: Some(server.name.clone()),
                    field: Some("metadata.name".into()),
                    message: format!("`{}` is already defined in {first}", server.name),
                });
                continue;
            }
            if server.enabled {
                if let Some(owner) = namespaces.get(&server.namespace) {
                    issues.push(RegistryIssue {
                        source,
                        resource: Some(server.name.clone()),
                        field: Some("spec.namespace".into()),
                        message: format!(
                            "namespace `{}` is already used by McpServer `{owner}`",
                            server.namespace
                        ),
                    });
                    continue;
                }
                namespaces.insert(server.namespace.clone(), server.name.clone());
            }
            origin.insert(server.name.clone(), source);
            servers.insert(server.name.clone(), server);
        }
        Self {
            servers,
            origins: origin,
            clients: BTreeMap::new(),
            policies: BTreeMap::new(),
            gateway: None,
            issues,
            cause: Cause::default(),
        }
    }

    /// Takes the first gateway config in priority order; later ones are
    /// reported and left out.
    pub fn add_gateway_configs(
        &mut self,
        candidates: impl IntoIterator<Item = (String, ValidGatewayConfig)>,
    ) {
        for (source, config) in candidates {
            match &self.gateway {
                Some(first) => self.issues.push(RegistryIssue {
                    source,
                    resource: Some(config.name.clone()),
                    field: None,
                    message: format!(
                        "McpGatewayConfig `{}` is already in effect: a registry has one",
                        first.name
                    ),
                }),
                None => self.gateway = Some(config),
            }
        }
    }

    /// Adds access policies in priority order: the first to claim a name
    /// keeps it, later ones are reported and left out.
    pub fn add_policies(&mut self, candidates: impl IntoIterator<Item = (String, ValidPolicy)>) {
        for (source, policy) in candidates {
            if self.policies.contains_key(&policy.name) {
                self.issues.push(RegistryIssue {
                    source,
                    resource: Some(policy.name.clone()),
                    field: Some("metadata.name".into()),
                    message: format!("McpAccessPolicy `{}` is already defined", policy.name),
                });
            } else {
                self.policies.insert(policy.name.clone(), policy);
            }
        }
    }

    /// Adds clients in priority order: the first to claim a name or a
    /// token keeps it, later ones are reported and left out, as is a
    /// client whose token is not known by its digest (only the Kubernetes
    /// source reads Secrets).
    pub fn add_clients(&mut self, candidates: impl IntoIterator<Item = (String, ValidClient)>) {
        for (source, client) in candidates {
            let taken = match client.token_sha256() {
                None => Some((
                    "spec.token.valueFrom",
                    "valueFrom (secretKeyRef) needs the Kubernetes source; use sha256 in a registry file".to_owned(),
                )),
                Some(_) if self.clients.contains_key(&client.name) => Some((
                    "metadata.name",
                    format!("McpClient `{}` is already defined", client.name),
                )),
                Some(digest) => self
                    .clients
                    .values()
                    .find(|c| c.token_sha256() == Some(digest))
                    .map(|owner| {
                        (
                            "spec.token",
                            format!(
                                "McpClient `{}` has the same token: give each client its own",
                                owner.name
                            ),
                        )
                    }),
            };
            match taken {
                Some((field, message)) => self.issues.push(RegistryIssue {
                    source,
                    resource: Some(client.name.clone()),
                    field: Some(field.into()),
                    message,
                }),
                None => {
                    self.clients.insert(client.name.clone(), client);
                }
            }
        }
    }

    /// The servers gateways should run.
    pub fn enabled(&self) -> impl Iterator<Item = &ValidServer> {
        self.servers.values().filter(|s| s.enabled)
    }
}

/// What is wrong with one resource: its name (if it has one), the field,
/// and the message.
pub type ResourceError = (Option<String>, Option<String>, String);

/// One registry document, of any kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Document {
    Server(Box<ValidServer>),
    Client(ValidClient),
    Policy(ValidPolicy),
    Gateway(ValidGatewayConfig),
}

/// Parses a document by its `kind`: an `McpClient`, an `McpAccessPolicy`,
/// or else an `McpServer` (whose parse names a wrong kind).
pub fn parse_document(
    value: serde_yaml::Value,
    unknown_fields: UnknownFields,
) -> Result<Document, ResourceError> {
    match value.get("kind").and_then(|k| k.as_str()) {
        Some(client::KIND) => parse_kind(value, McpClient::validate).map(Document::Client),
        Some(policy::KIND) => parse_kind(value, McpAccessPolicy::validate).map(Document::Policy),
        Some(gateway::KIND) => parse_kind(value, McpGatewayConfig::validate).map(Document::Gateway),
        _ => parse_resource(value, unknown_fields).map(|s| Document::Server(Box::new(s))),
    }
}

/// Parses and validates a document of a kind other than `McpServer`:
/// unknown fields are refused, as everywhere in files.
fn parse_kind<T: DeserializeOwned, V>(
    value: serde_yaml::Value,
    validate: fn(T) -> Result<V, ValidationError>,
) -> Result<V, ResourceError> {
    let resource = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if api_version != API_VERSION {
        return Err((
            resource,
            Some("apiVersion".into()),
            format!("expected `{API_VERSION}`, found `{api_version}`"),
        ));
    }
    if let Some(mapping) = value.as_mapping() {
        let known = ["apiVersion", "kind", "metadata", "spec"];
        if let Some(key) = mapping
            .keys()
            .filter_map(|k| k.as_str())
            .find(|k| !known.contains(k))
        {
            return Err((resource, Some(key.to_owned()), "unknown field".into()));
        }
    }
    let parsed: T = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        (resource.clone(), Some(field), e.into_inner().to_string())
    })?;
    validate(parsed).map_err(|e| (resource, Some(e.field), e.reason))
}

/// Parses and validates one `McpServer` document, from a file or the
/// Kubernetes API, naming the field that is wrong. Fields the types do not
/// know are refused or ignored as `unknown_fields` says; a refused one is
/// reported before any other error, since a misspelt field is what makes a
/// required one look missing.
pub fn parse_resource(
    value: serde_yaml::Value,
    unknown_fields: UnknownFields,
) -> Result<ValidServer, ResourceError> {
    let resource = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    let text_field = |key: &str| value.get(key).and_then(|v| v.as_str()).unwrap_or("");
    if text_field("apiVersion") != API_VERSION {
        return Err((
            resource,
            Some("apiVersion".into()),
            format!(
                "expected `{API_VERSION}`, found `{}`",
                text_field("apiVersion")
            ),
        ));
    }
    if text_field("kind") != KIND {
        return Err((
            resource,
            Some("kind".into()),
            format!("expected `{KIND}`, found `{}`", text_field("kind")),
        ));
    }
    let mut unknown: Vec<Vec<Segment>> = Vec::new();
    let parsed: Result<McpServer, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut |path| {
            let segments = segments(&path);
            // The root type leaves `apiVersion` and `kind`, checked above, to `Resource`.
            let type_meta = matches!(
                segments.as_slice(),
                [Segment::Key(key)] if key == "apiVersion" || key == "kind"
            );
            if !type_meta {
                unknown.push(segments);
            }
        }));
    match unknown_fields {
        UnknownFields::Refuse => {
            if let Some(first) = unknown.first() {
                return Err((resource, Some(display(first)), unknown_field_message(first)));
            }
        }
        UnknownFields::Ignore if !unknown.is_empty() => {
            let fields: Vec<String> = unknown.iter().map(|s| display(s)).collect();
            debug!(
                resource = resource.as_deref().unwrap_or("-"),
                fields = %fields.join(", "),
                "ignoring McpServer fields this control plane does not know (a newer CRD?)"
            );
        }
        UnknownFields::Ignore => {}
    }
    let server = parsed.map_err(|e| {
        let field = e.path().to_string();
        (resource.clone(), Some(field), e.into_inner().to_string())
    })?;
    server
        .validate()
        .map_err(|e| (resource, Some(e.field), e.reason))
}

/// The path serde_ignored reports, without its `Option` and newtype steps.
fn segments(path: &Path<'_>) -> Vec<Segment> {
    let (parent, last) = match path {
        Path::Root => return Vec::new(),
        Path::Seq { parent, index } => (parent, Some(Segment::Index(*index))),
        Path::Map { parent, key } => (parent, Some(Segment::Key(key.clone()))),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => (parent, None),
    };
    let mut path = segments(parent);
    path.extend(last);
    path
}

/// A field path as validation errors write it: `spec.transport.stdio.env[0].name`.
fn display(segments: &[Segment]) -> String {
    let mut path = String::new();
    for segment in segments {
        match segment {
            Segment::Key(key) if path.is_empty() => path.push_str(key),
            Segment::Key(key) => {
                path.push('.');
                path.push_str(key);
            }
            Segment::Index(index) => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

/// `unknown field `x``, with the fields the CRD allows there when it lists
/// them (everywhere under `spec`; not in `metadata`, which it leaves to the
/// API server).
fn unknown_field_message(segments: &[Segment]) -> String {
    let Some((Segment::Key(name), parent)) = segments.split_last() else {
        return format!("unknown field `{}`", display(segments));
    };
    let schema = serde_json::to_value(McpServer::crd()).unwrap_or_default();
    let mut node = &schema["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    for segment in parent {
        node = match segment {
            Segment::Key(key) => &node["properties"][key],
            Segment::Index(_) => &node["items"],
        };
    }
    match node["properties"].as_object() {
        Some(known) if !parent.is_empty() => {
            let known: Vec<String> = known.keys().map(|k| format!("`{k}`")).collect();
            format!(
                "unknown field `{name}`, expected one of {}",
                known.join(", ")
            )
        }
        _ => format!("unknown field `{name}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> serde_yaml::Value {
        serde_yaml::from_str(text).expect("test YAML")
    }

    fn server(spec: &str) -> serde_yaml::Value {
        yaml(&format!(
            "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: time}}\nspec: {spec}"
        ))
    }

    /// An object as the API server returns it, with fields a newer CRD
    /// added (`spec.rateLimit`, `spec.transport.stdio.sandbox`, an env
    /// entry's `description`): the API server keeps them, as they are in
    /// the installed CRD's schema.
    const FROM_A_NEWER_CRD: &str = "
apiVersion: switchboard.dev/v1alpha1
kind: McpServer
metadata:
  name: time
  namespace: team
  uid: 0b7c1f1e-5a41-4c3e-9d1e-2f5b8f0e7a11
  resourceVersion: '42'
  generation: 3
  creationTimestamp: '2025-01-01T00:00:00Z'
  managedFields: [{manager: kubectl, operation: Apply, apiVersion: switchboard.dev/v1alpha1}]
spec:
  rateLimit: {perMinute: 60}
  transport:
    stdio:
      command: mcp-server-time
      sandbox: {network: none}
      env: [{name: TZ, value: UTC, description: zone}]
status:
  observedGeneration: 2
  replicas: 2
";

    #[test]
    fn unknown_fields_are_refused_naming_the_field_and_what_is_allowed() {
        for (value, field, message) in [
            (
                server("{transport: {stdio: {command: c, argz: []}}}"),
                "spec.transport.stdio.argz",
                "unknown field `argz`, expected one of `args`, `command`, `cwd`, `env`",
            ),
            (
                server("{transport: {stdio: {command: c, env: [{name: A, vaule: x}]}}}"),
                "spec.transport.stdio.env[0].vaule",
                "unknown field `vaule`, expected one of `name`, `value`, `valueFrom`",
            ),
            (
                server("{pool: {mxa: 2}, transport: {stdio: {command: c}}}"),
                "spec.pool.mxa",
                "unknown field `mxa`, expected one of",
            ),
            (
                server("{session_mode: perSession, transport: {stdio: {command: c}}}"),
                "spec.session_mode",
                "`sessionMode`",
            ),
            (
                yaml(
                    "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata: {name: time, lables: {}}\nspec: {transport: {stdio: {command: c}}}",
                ),
                "metadata.lables",
                "unknown field `lables`",
            ),
        ] {
            let (resource, got_field, got_message) =
                parse_resource(value, UnknownFields::Refuse).expect_err(field);
            assert_eq!(resource.as_deref(), Some("time"));
            assert_eq!(got_field.as_deref(), Some(field));
            assert!(got_message.contains(message), "{field}: {got_message}");
        }
    }

    /// `comand` makes `command` look missing; the typo is the error to report.
    #[test]
    fn an_unknown_field_is_reported_before_the_missing_field_it_hides() {
        let value = server("{transport: {stdio: {comand: c}}}");
        let (_, field, message) =
            parse_resource(value, UnknownFields::Refuse).expect_err("refused");
        assert_eq!(field.as_deref(), Some("spec.transport.stdio.comand"));
        assert!(message.starts_with("unknown field `comand`"), "{message}");
        let (_, field, message) = parse_resource(
            server("{transport: {stdio: {comand: c}}}"),
            UnknownFields::Ignore,
        )
        .expect_err("still refused: command is required");
        assert_eq!(field.as_deref(), Some("spec.transport.stdio"));
        assert!(message.contains("missing field `command`"), "{message}");
    }

    #[test]
    fn fields_from_a_newer_crd_are_ignored_on_cluster_objects() {
        let parsed = parse_resource(yaml(FROM_A_NEWER_CRD), UnknownFields::Ignore)
            .expect("a newer CRD's fields do not refuse the resource");
        let known = parse_resource(
            server(
                "{transport: {stdio: {command: mcp-server-time, env: [{name: TZ, value: UTC}]}}}",
            ),
            UnknownFields::Ignore,
        )
        .expect("valid");
        assert_eq!(parsed, known, "the fields it knows are applied as written");

        let (_, field, _) = parse_resource(yaml(FROM_A_NEWER_CRD), UnknownFields::Refuse)
            .expect_err("the same object from a file");
        assert_eq!(field.as_deref(), Some("spec.rateLimit"));
    }

    /// Everything the API server sets on an object is known: nothing is
    /// ignored or refused but the fields the CRD does not describe.
    #[test]
    fn server_set_metadata_and_status_are_known_fields() {
        let object = FROM_A_NEWER_CRD
            .replace("  rateLimit: {perMinute: 60}\n", "")
            .replace("      sandbox: {network: none}\n", "")
            .replace(", description: zone", "");
        parse_resource(yaml(&object), UnknownFields::Refuse).expect("nothing unknown");
    }

    mod properties {
        use proptest::prelude::*;
        use serde_json::Value;

        use super::*;

        /// Field names the spec knows, and a few it does not.
        const KEYS: &[&str] = &[
            "transport",
            "stdio",
            "http",
            "sse",
            "command",
            "args",
            "env",
            "name",
            "value",
            "valueFrom",
            "url",
            "headers",
            "namespace",
            "enabled",
            "sessionMode",
            "pool",
            "min",
            "max",
            "timeouts",
            "call",
            "breaker",
            "health",
            "probe",
            "tool",
            "arguments",
            "tools",
            "include",
            "exclude",
            "rename",
            "prompts",
            "unknown",
            "subjects",
            "groups",
            "clients",
            "allow",
            "deny",
            "resources",
        ];

        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                "[ -~]{0,12}".prop_map(Value::from),
                Just(Value::from("1s")),
                Just(Value::from("http://127.0.0.1:1/mcp")),
            ];
            leaf.prop_recursive(5, 48, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    prop::collection::btree_map(prop::sample::select(KEYS), inner, 0..5).prop_map(
                        |m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                    ),
                ]
            })
        }

        proptest! {
            /// Any spec: a resource or a reason naming a field, never a panic.
            #[test]
            fn any_spec_parses_or_says_why(spec in value()) {
                let document = serde_json::json!({
                    "apiVersion": API_VERSION, "kind": KIND,
                    "metadata": { "name": "time" }, "spec": spec,
                });
                let document: serde_yaml::Value =
                    serde_yaml::to_value(&document).expect("JSON is YAML");
                for policy in [UnknownFields::Refuse, UnknownFields::Ignore] {
                    match parse_resource(document.clone(), policy) {
                        Ok(server) => {
                            prop_assert_eq!(&server.name, "time");
                            prop_assert!(!server.namespace.is_empty());
                        }
                        Err((_, _, message)) => prop_assert!(!message.is_empty()),
                    }
                }
            }

            /// Any access policy spec: a policy with subjects and rules, or
            /// a reason naming a field, never a panic.
            #[test]
            fn any_access_policy_parses_or_says_why(spec in value()) {
                let document = serde_json::json!({
                    "apiVersion": API_VERSION, "kind": policy::KIND,
                    "metadata": { "name": "p" }, "spec": spec,
                });
                let document: serde_yaml::Value =
                    serde_yaml::to_value(&document).expect("JSON is YAML");
                match parse_document(document, UnknownFields::Refuse) {
                    Ok(Document::Policy(policy)) => {
                        prop_assert!(!(policy.groups.is_empty() && policy.clients.is_empty()));
                        let rules = policy.allow.iter().chain([&policy.deny]);
                        for pattern in rules.flat_map(|r| r.tools.iter().chain(&r.prompts).chain(&r.resources)) {
                            prop_assert!(!pattern.is_empty());
                        }
                    }
                    Ok(_) => prop_assert!(false, "an McpAccessPolicy parses as one"),
                    Err((_, _, message)) => prop_assert!(!message.is_empty()),
                }
            }
        }
    }
}
