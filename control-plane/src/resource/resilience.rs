//! The resilience part of an `McpServer` spec: session mode, connection
//! pool, timeouts, circuit breaker and health probe. Every field is
//! optional in YAML; validation fills in the defaults below, so replicas
//! always receive explicit values.

use std::{collections::BTreeMap, time::Duration};

use proto::defaults;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use super::{DURATION_PATTERN, ValidationError};

/// How client sessions map to server connections.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SessionMode {
    /// Client sessions share the pooled connections (the default).
    #[default]
    Shared,
    /// Each client session gets its own connection (its own process for
    /// stdio), closed with the session. For servers that keep per-client state.
    PerSession,
}

/// Durations are written as `<number><unit>` with unit `ms`, `s`, `m` or `h`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    /// Connections kept open even when idle (default 1).
    pub min: Option<u32>,
    /// Most connections per replica (default 1: many servers keep state).
    #[schemars(range(min = 1, max = 64))]
    pub max: Option<u32>,
    /// Calls in flight on one connection before another is opened (default 32).
    #[schemars(range(min = 1))]
    pub max_concurrency: Option<u32>,
    /// Connections above `min` idle this long are closed (default 5m).
    #[schemars(pattern(DURATION_PATTERN))]
    pub idle_timeout: Option<String>,
    /// How long a call waits for a connection when all are busy (default 10s).
    #[schemars(pattern(DURATION_PATTERN))]
    pub acquire_timeout: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutsSpec {
    /// Per call; restarted by every progress notification (default 60s).
    #[schemars(pattern(DURATION_PATTERN))]
    pub call: Option<String>,
    /// Absolute cap per call, progress or not (default 10m).
    #[schemars(pattern(DURATION_PATTERN))]
    pub max_call: Option<String>,
    /// Per-tool `call` overrides, by the tool's name on its server.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = duration_values)]
    pub tools: BTreeMap<String, String>,
    /// Start-up: process spawn plus the `initialize` handshake (default 30s).
    #[schemars(pattern(DURATION_PATTERN))]
    pub initialize: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BreakerSpec {
    /// Consecutive failures that open the breaker (default 5; 0 = off).
    pub consecutive_failures: Option<u32>,
    /// Failure percentage within `window` that opens it (default 50; 0 = off).
    #[schemars(range(max = 100))]
    pub failure_rate_percent: Option<u32>,
    /// Calls within `window` before the rate counts (default 20).
    pub min_requests: Option<u32>,
    /// Window for the failure rate (default 30s).
    #[schemars(pattern(DURATION_PATTERN))]
    pub window: Option<String>,
    /// How long it stays open before trial calls (default 30s).
    #[schemars(pattern(DURATION_PATTERN))]
    pub open_duration: Option<String>,
    /// Trial calls when half-open; all must succeed to close (default 1).
    pub half_open_probes: Option<u32>,
    /// Count JSON-RPC errors answered by the server (default false: they are
    /// usually the caller's fault). Transport failures and timeouts always count.
    pub count_json_rpc_errors: Option<bool>,
    /// Count results with `isError: true` (default false).
    pub count_tool_errors: Option<bool>,
    /// While open, remove the server's tools from `tools/list` (default false).
    pub hide_tools_when_open: Option<bool>,
    /// Also keep a breaker per tool (default false).
    pub per_tool: Option<bool>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ProbeKind {
    /// MCP `ping` on the live connection (the default).
    #[default]
    Ping,
    /// A full `initialize` handshake on a fresh short-lived connection.
    Initialize,
    /// Call `health.tool`; an error or `isError` fails the probe.
    Tool,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthSpec {
    /// Time between probes (default 30s).
    #[schemars(pattern(DURATION_PATTERN))]
    pub interval: Option<String>,
    /// Probe timeout (default 5s).
    #[schemars(pattern(DURATION_PATTERN))]
    pub timeout: Option<String>,
    /// Consecutive failed probes before the connection is restarted (default 3).
    pub failure_threshold: Option<u32>,
    pub probe: Option<ProbeKind>,
    /// For `probe: tool`.
    pub tool: Option<ToolProbeSpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ToolProbeSpec {
    /// The tool's name on its server (no namespace).
    pub name: String,
    /// The call's arguments: whatever JSON object the tool takes, kept as
    /// written (default `{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub arguments: Option<serde_json::Value>,
}

/// Any JSON object, kept whole by the API server. Without
/// `x-kubernetes-preserve-unknown-fields` a structural schema must give the
/// field a type and would prune every key it does not list; with only the
/// type missing, apiextensions.k8s.io/v1 refuses the whole CRD.
fn any_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A map whose values are durations.
fn duration_values(schema: &mut Schema) {
    schema.insert(
        "additionalProperties".into(),
        serde_json::json!({ "type": "string", "pattern": DURATION_PATTERN }),
    );
}

/// Validated resilience settings, every default filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resilience {
    pub session_mode: SessionMode,
    pub pool: Pool,
    pub timeouts: Timeouts,
    pub breaker: Breaker,
    pub health: Health,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub min: u32,
    pub max: u32,
    pub max_concurrency: u32,
    pub idle_timeout: Duration,
    pub acquire_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub call: Duration,
    pub max_call: Duration,
    pub tools: BTreeMap<String, Duration>,
    pub initialize: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Breaker {
    pub consecutive_failures: u32,
    pub failure_rate_percent: u32,
    pub min_requests: u32,
    pub window: Duration,
    pub open_duration: Duration,
    pub half_open_probes: u32,
    pub count_json_rpc_errors: bool,
    pub count_tool_errors: bool,
    pub hide_tools_when_open: bool,
    pub per_tool: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
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
        arguments_json: String,
    },
}

/// Most connections one server may have per replica: each is a process.
const MAX_POOL: u32 = 64;

/// The raw fields, as they sit in `McpServerSpec`.
pub struct RawResilience<'a> {
    pub session_mode: SessionMode,
    pub pool: Option<&'a PoolSpec>,
    pub timeouts: Option<&'a TimeoutsSpec>,
    pub breaker: Option<&'a BreakerSpec>,
    pub health: Option<&'a HealthSpec>,
}

// === impl RawResilience ===

impl RawResilience<'_> {
    pub fn validate(&self) -> Result<Resilience, ValidationError> {
        Ok(Resilience {
            session_mode: self.session_mode,
            pool: validate_pool(self.pool.cloned().unwrap_or_default())?,
            timeouts: validate_timeouts(self.timeouts.cloned().unwrap_or_default())?,
            breaker: validate_breaker(self.breaker.cloned().unwrap_or_default())?,
            health: validate_health(self.health.cloned().unwrap_or_default())?,
        })
    }
}

fn validate_pool(spec: PoolSpec) -> Result<Pool, ValidationError> {
    let min = spec.min.unwrap_or(defaults::POOL_MIN);
    let max = spec.max.unwrap_or(min.max(1));
    if max == 0 || max > MAX_POOL {
        return Err(ValidationError::new(
            "spec.pool.max",
            format!("must be between 1 and {MAX_POOL}, got {max}"),
        ));
    }
    if min > max {
        return Err(ValidationError::new(
            "spec.pool.min",
            format!("must not exceed pool.max ({max}), got {min}"),
        ));
    }
    let max_concurrency = spec
        .max_concurrency
        .unwrap_or(defaults::POOL_MAX_CONCURRENCY);
    if max_concurrency == 0 {
        return Err(ValidationError::new(
            "spec.pool.maxConcurrency",
            "must be at least 1",
        ));
    }
    Ok(Pool {
        min,
        max,
        max_concurrency,
        idle_timeout: duration_or(
            "spec.pool.idleTimeout",
            spec.idle_timeout,
            defaults::POOL_IDLE_TIMEOUT,
        )?,
        acquire_timeout: duration_or(
            "spec.pool.acquireTimeout",
            spec.acquire_timeout,
            defaults::POOL_ACQUIRE_TIMEOUT,
        )?,
    })
}

fn validate_timeouts(spec: TimeoutsSpec) -> Result<Timeouts, ValidationError> {
    let call = duration_or("spec.timeouts.call", spec.call, defaults::CALL_TIMEOUT)?;
    let max_call = duration_or(
        "spec.timeouts.maxCall",
        spec.max_call,
        defaults::MAX_CALL_TIMEOUT,
    )?;
    if max_call < call {
        return Err(ValidationError::new(
            "spec.timeouts.maxCall",
            "must not be shorter than timeouts.call",
        ));
    }
    let mut tools = BTreeMap::new();
    for (tool, text) in spec.tools {
        let field = format!("spec.timeouts.tools.{tool}");
        let timeout =
            parse_duration(&text).map_err(|reason| ValidationError::new(&field, reason))?;
        if timeout.is_zero() || timeout > max_call {
            return Err(ValidationError::new(
                field,
                "must be positive and not longer than timeouts.maxCall",
            ));
        }
        tools.insert(tool, timeout);
    }
    Ok(Timeouts {
        call,
        max_call,
        tools,
        initialize: duration_or(
            "spec.timeouts.initialize",
            spec.initialize,
            defaults::INITIALIZE_TIMEOUT,
        )?,
    })
}

fn validate_breaker(spec: BreakerSpec) -> Result<Breaker, ValidationError> {
    let failure_rate_percent = spec
        .failure_rate_percent
        .unwrap_or(defaults::BREAKER_FAILURE_RATE_PERCENT);
    if failure_rate_percent > 100 {
        return Err(ValidationError::new(
            "spec.breaker.failureRatePercent",
            format!("must be 0-100, got {failure_rate_percent}"),
        ));
    }
    let half_open_probes = spec
        .half_open_probes
        .unwrap_or(defaults::BREAKER_HALF_OPEN_PROBES);
    if half_open_probes == 0 {
        return Err(ValidationError::new(
            "spec.breaker.halfOpenProbes",
            "must be at least 1",
        ));
    }
    Ok(Breaker {
        consecutive_failures: spec
            .consecutive_failures
            .unwrap_or(defaults::BREAKER_CONSECUTIVE_FAILURES),
        failure_rate_percent,
        min_requests: spec.min_requests.unwrap_or(defaults::BREAKER_MIN_REQUESTS),
        window: duration_or("spec.breaker.window", spec.window, defaults::BREAKER_WINDOW)?,
        open_duration: duration_or(
            "spec.breaker.openDuration",
            spec.open_duration,
            defaults::BREAKER_OPEN,
        )?,
        half_open_probes,
        count_json_rpc_errors: spec.count_json_rpc_errors.unwrap_or(false),
        count_tool_errors: spec.count_tool_errors.unwrap_or(false),
        hide_tools_when_open: spec.hide_tools_when_open.unwrap_or(false),
        per_tool: spec.per_tool.unwrap_or(false),
    })
}

fn validate_health(spec: HealthSpec) -> Result<Health, ValidationError> {
    let probe = match (spec.probe.unwrap_or_default(), spec.tool) {
        (ProbeKind::Ping, None) => Probe::Ping,
        (ProbeKind::Initialize, None) => Probe::Initialize,
        (ProbeKind::Tool, Some(tool)) if !tool.name.is_empty() => {
            let arguments = tool.arguments.unwrap_or_else(|| serde_json::json!({}));
            if !arguments.is_object() {
                return Err(ValidationError::new(
                    "spec.health.tool.arguments",
                    "must be an object",
                ));
            }
            Probe::Tool {
                name: tool.name,
                arguments_json: arguments.to_string(),
            }
        }
        (ProbeKind::Tool, _) => {
            return Err(ValidationError::new(
                "spec.health.tool.name",
                "is required when probe is `tool`",
            ));
        }
        (_, Some(_)) => {
            return Err(ValidationError::new(
                "spec.health.tool",
                "is only used with `probe: tool`",
            ));
        }
    };
    let failure_threshold = spec
        .failure_threshold
        .unwrap_or(defaults::HEALTH_FAILURE_THRESHOLD);
    if failure_threshold == 0 {
        return Err(ValidationError::new(
            "spec.health.failureThreshold",
            "must be at least 1",
        ));
    }
    Ok(Health {
        interval: duration_or(
            "spec.health.interval",
            spec.interval,
            defaults::HEALTH_INTERVAL,
        )?,
        timeout: duration_or(
            "spec.health.timeout",
            spec.timeout,
            defaults::HEALTH_TIMEOUT,
        )?,
        failure_threshold,
        probe,
    })
}

fn duration_or(
    field: &str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ValidationError> {
    let Some(text) = value else {
        return Ok(default);
    };
    let duration = parse_duration(&text).map_err(|reason| ValidationError::new(field, reason))?;
    if duration.is_zero() {
        return Err(ValidationError::new(field, "must be positive"));
    }
    Ok(duration)
}

/// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h`, e.g. `250ms`, `90s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` needs a unit (ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 30s, 5m or 1h"))?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "`{text}` has unknown unit `{unit}` (ms, s, m or h)"
            ));
        }
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw<'a>(
        pool: Option<&'a PoolSpec>,
        breaker: Option<&'a BreakerSpec>,
        health: Option<&'a HealthSpec>,
    ) -> RawResilience<'a> {
        RawResilience {
            session_mode: SessionMode::Shared,
            pool,
            timeouts: None,
            breaker,
            health,
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "10", "s", "1.5s", "10d", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let r = raw(None, None, None).validate().expect("valid");
        assert_eq!((r.pool.min, r.pool.max, r.pool.max_concurrency), (1, 1, 32));
        assert_eq!(r.timeouts.call, Duration::from_secs(60));
        assert_eq!(r.timeouts.max_call, Duration::from_secs(600));
        assert_eq!(r.breaker.consecutive_failures, 5);
        assert!(!r.breaker.count_json_rpc_errors);
        assert_eq!(r.health.probe, Probe::Ping);
        assert_eq!(r.health.interval, Duration::from_secs(30));
    }

    #[test]
    fn bad_values_name_their_field() {
        let pool = PoolSpec {
            min: Some(3),
            max: Some(2),
            ..Default::default()
        };
        let err = raw(Some(&pool), None, None).validate().unwrap_err();
        assert_eq!(err.field, "spec.pool.min");

        let breaker = BreakerSpec {
            window: Some("soon".into()),
            ..Default::default()
        };
        let err = raw(None, Some(&breaker), None).validate().unwrap_err();
        assert_eq!(err.field, "spec.breaker.window");

        let health = HealthSpec {
            probe: Some(ProbeKind::Tool),
            ..Default::default()
        };
        let err = raw(None, None, Some(&health)).validate().unwrap_err();
        assert_eq!(err.field, "spec.health.tool.name");
    }

    #[test]
    fn tool_probe_keeps_its_arguments() {
        let health = HealthSpec {
            probe: Some(ProbeKind::Tool),
            tool: Some(ToolProbeSpec {
                name: "echo".into(),
                arguments: Some(serde_json::json!({ "text": "ok" })),
            }),
            ..Default::default()
        };
        let r = raw(None, None, Some(&health)).validate().expect("valid");
        assert_eq!(
            r.health.probe,
            Probe::Tool {
                name: "echo".into(),
                arguments_json: r#"{"text":"ok"}"#.into()
            }
        );
    }
}
