//! The registry: every `McpServer` the control plane knows, after validation,
//! with the problems found on the way. Sources (a YAML directory today, the
//! Kubernetes API later) produce [`Registry`] values; the snapshot builder
//! consumes them.

pub mod directory;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::resource::ValidServer;

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
