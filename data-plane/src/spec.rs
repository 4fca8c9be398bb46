//! What a downstream server should be, as the gateway uses it: validated
//! IR converted from the control plane's proto resources. Request code only
//! ever sees these types.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use proto::config as pb;

/// Separator between a server's namespace and its tool names.
pub const NAME_SEPARATOR: char = '.';

/// One downstream MCP server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    /// Unique resource name.
    pub name: Arc<str>,
    /// Tool prefix.
    pub namespace: Arc<str>,
    pub transport: Transport,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    Stdio(StdioSpec),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StdioSpec {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
}

/// Why a proto resource cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

// === impl ServerSpec ===

impl TryFrom<&pb::McpServer> for ServerSpec {
    type Error = ProtoError;

    fn try_from(server: &pb::McpServer) -> Result<Self, ProtoError> {
        if server.name.is_empty() {
            return Err(ProtoError::Missing("name"));
        }
        let namespace_ok = !server.namespace.is_empty()
            && server
                .namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !namespace_ok {
            return Err(ProtoError::Invalid {
                field: "namespace",
                reason: format!("`{}` must be letters, digits, '-' or '_'", server.namespace),
            });
        }
        let transport = match &server.transport {
            Some(pb::mcp_server::Transport::Stdio(stdio)) => Transport::Stdio(stdio.try_into()?),
            None => return Err(ProtoError::Missing("transport")),
        };
        Ok(Self {
            name: server.name.as_str().into(),
            namespace: server.namespace.as_str().into(),
            transport,
        })
    }
}

impl TryFrom<&pb::StdioTransport> for StdioSpec {
    type Error = ProtoError;

    fn try_from(stdio: &pb::StdioTransport) -> Result<Self, ProtoError> {
        if stdio.command.trim().is_empty() {
            return Err(ProtoError::Missing("stdio.command"));
        }
        if let Some(bad) = stdio.env.keys().find(|k| k.is_empty() || k.contains('=')) {
            return Err(ProtoError::Invalid {
                field: "stdio.env",
                reason: format!("`{bad}` is not a valid variable name"),
            });
        }
        Ok(Self {
            command: stdio.command.clone(),
            args: stdio.args.clone(),
            env: stdio
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cwd: (!stdio.cwd.is_empty()).then(|| PathBuf::from(&stdio.cwd)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stdio_server(name: &str, namespace: &str, command: &str) -> pb::McpServer {
        pb::McpServer {
            name: name.into(),
            namespace: namespace.into(),
            transport: Some(pb::mcp_server::Transport::Stdio(pb::StdioTransport {
                command: command.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn converts_a_stdio_server() {
        let spec = ServerSpec::try_from(&stdio_server("a", "ns", "cmd")).expect("valid");
        assert_eq!(&*spec.namespace, "ns");
        let Transport::Stdio(stdio) = spec.transport;
        assert_eq!(stdio.command, "cmd");
        assert_eq!(stdio.cwd, None);
    }

    #[test]
    fn rejects_what_the_gateway_cannot_run() {
        let cases = [
            (stdio_server("", "ns", "cmd"), "missing name"),
            (
                stdio_server("a", "a.b", "cmd"),
                "namespace: `a.b` must be letters, digits, '-' or '_'",
            ),
            (stdio_server("a", "ns", ""), "missing stdio.command"),
            (
                pb::McpServer {
                    transport: None,
                    ..stdio_server("a", "ns", "c")
                },
                "missing transport",
            ),
        ];
        for (server, want) in cases {
            let err = ServerSpec::try_from(&server).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
    }
}
