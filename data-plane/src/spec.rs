//! What a downstream server should be, as the gateway uses it: validated
//! IR converted from the control plane's proto resources. Request code only
//! ever sees these types.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use proto::{config as pb, defaults};

/// Separator between a server's namespace and its tool names, unless the
/// server names another.
pub const NAME_SEPARATOR: &str = ".";

/// One downstream MCP server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    /// Unique resource name.
    pub name: Arc<str>,
    /// Tool prefix.
    pub namespace: Arc<str>,
    pub transport: Transport,
    pub handshake: Handshake,
    pub session_mode: SessionMode,
    pub pool: PoolSpec,
    pub timeouts: TimeoutSpec,
    pub breaker: BreakerSpec,
    pub health: HealthSpec,
    pub naming: NamingSpec,
}

/// How the server's tools and prompts are named and which are served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamingSpec {
    pub prefix_mode: PrefixMode,
    pub separator: Arc<str>,
    pub tools: NameRules,
    pub prompts: NameRules,
}

/// Which of one list's names are served, and as what.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameRules {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub rename: BTreeMap<String, String>,
    pub descriptions: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefixMode {
    Always,
    Never,
    Conditional,
}

/// Which MCP lifecycle the server's connections are opened with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// `initialize`, and `server/discover` with a server that refuses it.
    Auto,
    Initialize,
    Discover,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionMode {
    Shared,
    PerSession,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    pub min: u32,
    pub max: u32,
    pub max_concurrency: u32,
    pub idle_timeout: Duration,
    pub acquire_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeoutSpec {
    pub call: Duration,
    pub max_call: Duration,
    pub tools: BTreeMap<String, Duration>,
    pub initialize: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BreakerSpec {
    /// 0 = off.
    pub consecutive_failures: u32,
    /// 0.0 = off.
    pub failure_rate: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub open: Duration,
    pub half_open_probes: u32,
    pub count_jsonrpc_errors: bool,
    pub count_tool_errors: bool,
    pub hide_tools_when_open: bool,
    pub per_tool: bool,
}

// A rate from the control plane is a plain number, never NaN: equality is total.
impl Eq for BreakerSpec {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSpec {
    pub interval: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub probe: Probe,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Ping,
    Initialize,
    Tool {
        name: String,
        arguments: serde_json::Map<String, serde_json::Value>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    Stdio(StdioSpec),
    Http(HttpSpec),
    Sse(SseSpec),
}

/// A legacy HTTP+SSE server, and the process to start beside it, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseSpec {
    pub remote: HttpSpec,
    pub launch: Option<StdioSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSpec {
    pub url: String,
    pub headers: BTreeMap<String, String>,
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

impl ServerSpec {
    /// What clients see in front of this server's resource URIs
    /// (`{prefix}+{uri}`), when its names are always prefixed: the
    /// namespace made a URI scheme (lower case, `_` as `-`, a leading `x`
    /// unless it starts with a letter). `+` joins scheme characters, so the
    /// result is still a URI, URI templates still expand, and stripping the
    /// prefix gives the server's URI back.
    pub fn uri_prefix(&self) -> Option<Arc<str>> {
        if self.naming.prefix_mode != PrefixMode::Always {
            return None;
        }
        let mut scheme: String = self
            .namespace
            .chars()
            .map(|c| {
                if c == '_' {
                    '-'
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        if !scheme.starts_with(|c: char| c.is_ascii_alphabetic()) {
            scheme.insert(0, 'x');
        }
        Some(scheme.into())
    }
}

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
            Some(pb::mcp_server::Transport::Http(http)) => Transport::Http(http.try_into()?),
            Some(pb::mcp_server::Transport::Sse(sse)) => Transport::Sse(SseSpec {
                remote: HttpSpec::new("sse.url", &sse.url, &sse.headers)?,
                launch: sse.launch.as_ref().map(StdioSpec::try_from).transpose()?,
            }),
            None => return Err(ProtoError::Missing("transport")),
        };
        let session_mode = match server.session_mode() {
            pb::SessionMode::Unspecified | pb::SessionMode::Shared => SessionMode::Shared,
            pb::SessionMode::PerSession => SessionMode::PerSession,
        };
        let handshake = match server.handshake() {
            pb::Handshake::Unspecified | pb::Handshake::Auto => Handshake::Auto,
            pb::Handshake::Initialize => Handshake::Initialize,
            pb::Handshake::Discover => Handshake::Discover,
        };
        Ok(Self {
            name: server.name.as_str().into(),
            namespace: server.namespace.as_str().into(),
            transport,
            handshake,
            session_mode,
            pool: server
                .pool
                .as_ref()
                .map_or_else(|| Ok(PoolSpec::default()), PoolSpec::try_from)?,
            timeouts: server
                .timeouts
                .as_ref()
                .map_or_else(TimeoutSpec::default, TimeoutSpec::from),
            breaker: server
                .breaker
                .as_ref()
                .map_or_else(BreakerSpec::default, BreakerSpec::from),
            health: server
                .health
                .as_ref()
                .map_or_else(|| Ok(HealthSpec::default()), HealthSpec::try_from)?,
            naming: server
                .naming
                .as_ref()
                .map_or_else(NamingSpec::default, NamingSpec::from),
        })
    }
}

impl Default for NamingSpec {
    /// What an older control plane that sends no naming means.
    fn default() -> Self {
        Self {
            prefix_mode: PrefixMode::Always,
            separator: NAME_SEPARATOR.into(),
            tools: NameRules::default(),
            prompts: NameRules::default(),
        }
    }
}

impl From<&pb::Naming> for NamingSpec {
    fn from(naming: &pb::Naming) -> Self {
        Self {
            prefix_mode: match naming.prefix_mode() {
                pb::PrefixMode::Unspecified | pb::PrefixMode::Always => PrefixMode::Always,
                pb::PrefixMode::Never => PrefixMode::Never,
                pb::PrefixMode::Conditional => PrefixMode::Conditional,
            },
            separator: if naming.separator.is_empty() {
                NAME_SEPARATOR.into()
            } else {
                naming.separator.as_str().into()
            },
            tools: NameRules {
                include: naming.include.clone(),
                exclude: naming.exclude.clone(),
                rename: naming.rename.clone().into_iter().collect(),
                descriptions: naming.descriptions.clone().into_iter().collect(),
            },
            prompts: naming
                .prompts
                .as_ref()
                .map(NameRules::from)
                .unwrap_or_default(),
        }
    }
}

impl From<&pb::NameRules> for NameRules {
    fn from(rules: &pb::NameRules) -> Self {
        Self {
            include: rules.include.clone(),
            exclude: rules.exclude.clone(),
            rename: rules.rename.clone().into_iter().collect(),
            descriptions: rules.descriptions.clone().into_iter().collect(),
        }
    }
}

impl NameRules {
    /// Whether the server's `name` is served.
    pub fn serves(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| glob_match(g, name)))
            && !self.exclude.iter().any(|g| glob_match(g, name))
    }

    /// The name clients see, before any prefix.
    pub fn renamed<'a>(&'a self, name: &'a str) -> &'a str {
        self.rename.get(name).map_or(name, String::as_str)
    }
}

/// `*` matches any run of characters, `?` any one; everything else itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), text.chars().collect());
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((star, matched)) => {
                    p = star + 1;
                    t = matched + 1;
                    backtrack = Some((star, matched + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
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

impl TryFrom<&pb::HttpTransport> for HttpSpec {
    type Error = ProtoError;

    fn try_from(http: &pb::HttpTransport) -> Result<Self, ProtoError> {
        Self::new("http.url", &http.url, &http.headers)
    }
}

impl HttpSpec {
    fn new(
        field: &'static str,
        url: &str,
        headers: &std::collections::HashMap<String, String>,
    ) -> Result<Self, ProtoError> {
        let host = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        if host.is_none_or(str::is_empty) {
            return Err(ProtoError::Invalid {
                field,
                reason: format!("`{url}` is not an http:// or https:// URL"),
            });
        }
        Ok(Self {
            url: url.to_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    /// The host part of the URL, for traces.
    pub fn host(&self) -> Option<String> {
        let uri = self.url.parse::<::http::Uri>().ok()?;
        uri.host().map(str::to_owned)
    }
}

// For fields an older control plane does not send: the control plane's own
// defaults (`proto::defaults`).

impl Default for PoolSpec {
    fn default() -> Self {
        Self {
            min: defaults::POOL_MIN,
            max: defaults::POOL_MIN,
            max_concurrency: defaults::POOL_MAX_CONCURRENCY,
            idle_timeout: defaults::POOL_IDLE_TIMEOUT,
            acquire_timeout: defaults::POOL_ACQUIRE_TIMEOUT,
        }
    }
}

impl Default for TimeoutSpec {
    fn default() -> Self {
        Self {
            call: defaults::CALL_TIMEOUT,
            max_call: defaults::MAX_CALL_TIMEOUT,
            tools: BTreeMap::new(),
            initialize: defaults::INITIALIZE_TIMEOUT,
        }
    }
}

impl Default for BreakerSpec {
    fn default() -> Self {
        Self {
            consecutive_failures: defaults::BREAKER_CONSECUTIVE_FAILURES,
            failure_rate: f64::from(defaults::BREAKER_FAILURE_RATE_PERCENT) / 100.0,
            min_requests: defaults::BREAKER_MIN_REQUESTS,
            window: defaults::BREAKER_WINDOW,
            open: defaults::BREAKER_OPEN,
            half_open_probes: defaults::BREAKER_HALF_OPEN_PROBES,
            count_jsonrpc_errors: false,
            count_tool_errors: false,
            hide_tools_when_open: false,
            per_tool: false,
        }
    }
}

impl Default for HealthSpec {
    fn default() -> Self {
        Self {
            interval: defaults::HEALTH_INTERVAL,
            timeout: defaults::HEALTH_TIMEOUT,
            failure_threshold: defaults::HEALTH_FAILURE_THRESHOLD,
            probe: Probe::Ping,
        }
    }
}

/// A zero duration means "not sent": keep the default.
fn millis_or(ms: u64, default: Duration) -> Duration {
    if ms == 0 {
        default
    } else {
        Duration::from_millis(ms)
    }
}

impl TryFrom<&pb::Pool> for PoolSpec {
    type Error = ProtoError;

    fn try_from(pool: &pb::Pool) -> Result<Self, ProtoError> {
        let default = PoolSpec::default();
        let max = if pool.max == 0 { default.max } else { pool.max };
        if pool.min > max {
            return Err(ProtoError::Invalid {
                field: "pool.min",
                reason: format!("{} exceeds pool.max {max}", pool.min),
            });
        }
        Ok(Self {
            min: pool.min,
            max,
            max_concurrency: if pool.max_concurrency == 0 {
                default.max_concurrency
            } else {
                pool.max_concurrency
            },
            idle_timeout: millis_or(pool.idle_timeout_ms, default.idle_timeout),
            acquire_timeout: millis_or(pool.acquire_timeout_ms, default.acquire_timeout),
        })
    }
}

impl From<&pb::Timeouts> for TimeoutSpec {
    fn from(t: &pb::Timeouts) -> Self {
        let default = TimeoutSpec::default();
        Self {
            call: millis_or(t.call_ms, default.call),
            max_call: millis_or(t.max_call_ms, default.max_call),
            tools: t
                .tool_call_ms
                .iter()
                .filter(|(_, ms)| **ms > 0)
                .map(|(tool, ms)| (tool.clone(), Duration::from_millis(*ms)))
                .collect(),
            initialize: millis_or(t.initialize_ms, default.initialize),
        }
    }
}

impl From<&pb::Breaker> for BreakerSpec {
    fn from(b: &pb::Breaker) -> Self {
        let default = BreakerSpec::default();
        let rate = if b.failure_rate.is_finite() {
            b.failure_rate.clamp(0.0, 1.0)
        } else {
            0.0
        };
        Self {
            consecutive_failures: b.consecutive_failures,
            failure_rate: rate,
            min_requests: b.min_requests,
            window: millis_or(b.window_ms, default.window),
            open: millis_or(b.open_ms, default.open),
            half_open_probes: b.half_open_probes.max(1),
            count_jsonrpc_errors: b.count_jsonrpc_errors,
            count_tool_errors: b.count_tool_errors,
            hide_tools_when_open: b.hide_tools_when_open,
            per_tool: b.per_tool,
        }
    }
}

impl TryFrom<&pb::HealthCheck> for HealthSpec {
    type Error = ProtoError;

    fn try_from(h: &pb::HealthCheck) -> Result<Self, ProtoError> {
        let default = HealthSpec::default();
        let probe = match &h.probe {
            None | Some(pb::health_check::Probe::Ping(_)) => Probe::Ping,
            Some(pb::health_check::Probe::Initialize(_)) => Probe::Initialize,
            Some(pb::health_check::Probe::Tool(tool)) => {
                let arguments = if tool.arguments_json.is_empty() {
                    serde_json::Map::new()
                } else {
                    serde_json::from_str(&tool.arguments_json).map_err(|e| ProtoError::Invalid {
                        field: "health.tool.arguments_json",
                        reason: e.to_string(),
                    })?
                };
                if tool.name.is_empty() {
                    return Err(ProtoError::Missing("health.tool.name"));
                }
                Probe::Tool {
                    name: tool.name.clone(),
                    arguments,
                }
            }
        };
        Ok(Self {
            interval: millis_or(h.interval_ms, default.interval),
            timeout: millis_or(h.timeout_ms, default.timeout),
            failure_threshold: h.failure_threshold.max(1),
            probe,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_become_valid_uri_schemes() {
        let prefix = |namespace: &str, mode| {
            let server = pb::McpServer {
                name: "s".into(),
                namespace: namespace.into(),
                transport: Some(pb::mcp_server::Transport::Stdio(pb::StdioTransport {
                    command: "c".into(),
                    ..Default::default()
                })),
                naming: Some(pb::Naming {
                    prefix_mode: mode as i32,
                    ..Default::default()
                }),
                ..Default::default()
            };
            ServerSpec::try_from(&server)
                .expect("valid")
                .uri_prefix()
                .map(|p| p.to_string())
        };
        let always = pb::PrefixMode::Always;
        assert_eq!(prefix("time", always).as_deref(), Some("time"));
        assert_eq!(prefix("My_Files", always).as_deref(), Some("my-files"));
        assert_eq!(prefix("2fa", always).as_deref(), Some("x2fa"));
        assert_eq!(prefix("time", pb::PrefixMode::Never), None);
    }

    #[test]
    fn globs_match_like_shell_patterns() {
        for (pattern, text, matches) in [
            ("echo", "echo", true),
            ("e*", "echo", true),
            ("*o", "echo", true),
            ("*", "", true),
            ("e?ho", "echo", true),
            ("get_*_time", "get_current_time", true),
            ("e*x", "echo", false),
            ("echo", "echoes", false),
            ("?", "", false),
        ] {
            assert_eq!(glob_match(pattern, text), matches, "{pattern} ~ {text}");
        }
    }

    fn stdio_server(name: &str, namespace: &str, command: &str) -> pb::McpServer {
        pb::McpServer {
            name: name.into(),
            namespace: namespace.into(),
            transport: Some(pb::mcp_server::Transport::Stdio(pb::StdioTransport {
                command: command.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn missing_resilience_fields_take_defaults() {
        let spec = ServerSpec::try_from(&stdio_server("a", "ns", "cmd")).expect("valid");
        assert_eq!(spec.pool, PoolSpec::default());
        assert_eq!(spec.breaker, BreakerSpec::default());
        assert_eq!(spec.session_mode, SessionMode::Shared);
    }

    #[test]
    fn invalid_probe_arguments_are_rejected() {
        let mut server = stdio_server("a", "ns", "cmd");
        server.health = Some(pb::HealthCheck {
            probe: Some(pb::health_check::Probe::Tool(pb::ToolProbe {
                name: "echo".into(),
                arguments_json: "[1]".into(),
            })),
            ..Default::default()
        });
        let err = ServerSpec::try_from(&server).unwrap_err();
        assert!(
            err.to_string().starts_with("health.tool.arguments_json"),
            "{err}"
        );
    }

    #[test]
    fn converts_a_stdio_server() {
        let spec = ServerSpec::try_from(&stdio_server("a", "ns", "cmd")).expect("valid");
        assert_eq!(&*spec.namespace, "ns");
        let Transport::Stdio(stdio) = spec.transport else {
            panic!("expected stdio");
        };
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
