//! The registry: every `McpServer` the control plane knows, after validation,
//! with the problems found on the way. Sources (a YAML directory, or the
//! Kubernetes API) produce [`Registry`] values; the snapshot builder
//! consumes them.

pub mod directory;
pub mod kubernetes;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::resource::{McpServer, ValidServer};

const API_VERSION: &str = "switchboard.dev/v1alpha1";
const KIND: &str = "McpServer";

/// The registry as one source currently sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Registry {
    /// Accepted servers by name, enabled or not. Names and namespaces are unique.
    pub servers: BTreeMap<String, ValidServer>,
    /// Every problem found; none of them stops the rest of the registry.
    pub issues: Vec<RegistryIssue>,
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
        Self { servers, issues }
    }

    /// The servers gateways should run.
    pub fn enabled(&self) -> impl Iterator<Item = &ValidServer> {
        self.servers.values().filter(|s| s.enabled)
    }
}

/// What is wrong with one resource: its name (if it has one), the field,
/// and the message.
pub type ResourceError = (Option<String>, Option<String>, String);

/// Parses and validates one `McpServer` document, from a file or the
/// Kubernetes API, naming the field that is wrong.
pub fn parse_resource(value: serde_yaml::Value) -> Result<ValidServer, ResourceError> {
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
    let server: McpServer = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        (resource.clone(), Some(field), e.into_inner().to_string())
    })?;
    server
        .validate()
        .map_err(|e| (resource, Some(e.field), e.reason))
}
