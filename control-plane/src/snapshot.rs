//! Snapshot builder: turns each new [`Registry`] into a versioned
//! `proto::config::Snapshot`, one resource per enabled `McpServer`.
//! A registry change that does not change what gateways run (an issue
//! appearing, a disabled server edited) makes no new version.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::gauge::ConstGauge,
};
use proto::config::{self as pb, mcp_server::Transport, resource::Kind};
use proto::otel::sdk::{self, WORK};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{field, info, info_span};

use crate::{
    registry::Registry,
    resource::{
        Handshake, ValidServer, ValidTransport,
        naming::{Naming, PrefixMode},
        policy::Rules,
        resilience::{Probe, Resilience, SessionMode},
    },
    session_keys::KeySet,
};

/// The current snapshot; version 0 means "nothing loaded yet".
pub type SnapshotWatch = watch::Receiver<Arc<pb::Snapshot>>;

/// The registry and the snapshot built from it, as gauges read at scrape.
#[derive(Debug)]
pub struct SnapshotGauges {
    pub registry: watch::Receiver<Registry>,
    pub snapshots: SnapshotWatch,
}

impl Collector for SnapshotGauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let (servers, issues) = {
            let registry = self.registry.borrow();
            (count(registry.servers.len()), count(registry.issues.len()))
        };
        let version = i64::try_from(self.snapshots.borrow().version).unwrap_or(i64::MAX);
        for (name, help, value) in [
            (
                "snapshot_version",
                "Version of the current config snapshot",
                version,
            ),
            (
                "registry_servers",
                "Valid McpServer resources in the registry",
                servers,
            ),
            (
                "registry_issues",
                "Registry files or resources that were refused",
                issues,
            ),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// Builds a snapshot for every change of the registry or the session key
/// set until `cancel`.
pub async fn run_builder(
    mut registry: watch::Receiver<Registry>,
    mut session_keys: watch::Receiver<KeySet>,
    snapshots: watch::Sender<Arc<pb::Snapshot>>,
    cancel: CancellationToken,
) {
    // A change's trace is continued by the first snapshot built from it.
    let mut continued = String::new();
    loop {
        let (resources, mut cause) = {
            let registry = registry.borrow_and_update();
            (build_resources(&registry), registry.cause.0.clone())
        };
        if cause == continued {
            cause.clear();
        } else {
            continued.clone_from(&cause);
        }
        let keys: Vec<Vec<u8>> = session_keys.borrow_and_update().to_vec();
        snapshots.send_if_modified(|current| {
            if current.version != 0
                && current.resources == resources
                && current.session_keys == keys
            {
                return false;
            }
            let version = next_version(current.version);
            let span = info_span!(
                target: WORK,
                "config.snapshot",
                version,
                resources = resources.len(),
                trace_id = field::Empty,
                span_id = field::Empty,
            );
            sdk::continue_from(&span, &cause);
            let _built = span.enter();
            info!("new config snapshot");
            *current = Arc::new(pb::Snapshot {
                version,
                resources,
                session_keys: keys,
                traceparent: sdk::traceparent(&span),
            });
            true
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = registry.changed() => if changed.is_err() { return },
            changed = session_keys.changed() => if changed.is_err() { return },
        }
    }
}

/// Versions grow across control-plane restarts too: a restarted control
/// plane starts from the wall clock, so replicas never see a version go back.
fn next_version(previous: u64) -> u64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default();
    now_ms.max(previous + 1)
}

pub fn build_resources(registry: &Registry) -> Vec<pb::Resource> {
    let servers = registry.enabled().map(|server| pb::Resource {
        kind: Some(Kind::McpServer(to_proto(server))),
    });
    // Only clients whose token is known by its digest are in a registry.
    let clients = registry.clients.values().filter_map(|client| {
        Some(pb::Resource {
            kind: Some(Kind::McpClient(pb::McpClient {
                name: client.name.clone(),
                groups: client.groups.clone(),
                token_sha256: client.token_sha256()?.to_owned(),
            })),
        })
    });
    let gateway = registry.gateway.iter().map(|config| pb::Resource {
        kind: Some(Kind::McpGatewayConfig(pb::McpGatewayConfig {
            name: config.name.clone(),
            allow_anonymous: config.allow_anonymous,
            jwt_issuers: config
                .issuers
                .iter()
                .map(|issuer| pb::JwtIssuer {
                    issuer: issuer.issuer.clone(),
                    audiences: issuer.audiences.clone(),
                    jwks_uri: issuer.jwks_uri.clone(),
                    leeway_ms: u64::try_from(issuer.leeway.as_millis()).unwrap_or(u64::MAX),
                    name_claim: issuer.name_claim.clone(),
                    groups_claim: issuer.groups_claim.clone(),
                })
                .collect(),
        })),
    });
    let policies = registry.policies.values().map(|policy| pb::Resource {
        kind: Some(Kind::McpAccessPolicy(pb::McpAccessPolicy {
            name: policy.name.clone(),
            groups: policy.groups.clone(),
            clients: policy.clients.clone(),
            allow: policy.allow.as_ref().map(rules_to_proto),
            deny: Some(rules_to_proto(&policy.deny)),
            claims: policy.claims.clone().into_iter().collect(),
        })),
    });
    servers
        .chain(clients)
        .chain(policies)
        .chain(gateway)
        .collect()
}

fn rules_to_proto(rules: &Rules) -> pb::AccessRules {
    pb::AccessRules {
        tools: rules.tools.clone(),
        prompts: rules.prompts.clone(),
        resources: rules.resources.clone(),
    }
}

fn to_proto(server: &ValidServer) -> pb::McpServer {
    let transport = match &server.transport {
        // Registry sources resolve (or refuse) every `valueFrom` before a
        // server gets here.
        ValidTransport::Stdio {
            command,
            args,
            env,
            cwd,
            env_from: _,
        } => Transport::Stdio(pb::StdioTransport {
            command: command.clone(),
            args: args.clone(),
            env: env.clone().into_iter().collect(),
            cwd: cwd.clone().unwrap_or_default(),
        }),
        // Registry sources resolve (or refuse) every header `valueFrom` too.
        ValidTransport::Http { url, headers, .. } => Transport::Http(pb::HttpTransport {
            url: url.clone(),
            headers: headers.clone().into_iter().collect(),
        }),
        ValidTransport::Sse {
            url,
            headers,
            launch,
            ..
        } => Transport::Sse(pb::SseTransport {
            url: url.clone(),
            headers: headers.clone().into_iter().collect(),
            launch: launch.as_ref().map(|launch| pb::StdioTransport {
                command: launch.command.clone(),
                args: launch.args.clone(),
                env: launch.env.clone().into_iter().collect(),
                cwd: String::new(),
            }),
        }),
    };
    let r = &server.resilience;
    pb::McpServer {
        name: server.name.clone(),
        namespace: server.namespace.clone(),
        transport: Some(transport),
        session_mode: match r.session_mode {
            SessionMode::Shared => pb::SessionMode::Shared,
            SessionMode::PerSession => pb::SessionMode::PerSession,
        }
        .into(),
        pool: Some(pool_to_proto(r)),
        timeouts: Some(pb::Timeouts {
            call_ms: millis(r.timeouts.call),
            max_call_ms: millis(r.timeouts.max_call),
            tool_call_ms: r
                .timeouts
                .tools
                .iter()
                .map(|(tool, d)| (tool.clone(), millis(*d)))
                .collect(),
            initialize_ms: millis(r.timeouts.initialize),
        }),
        breaker: Some(breaker_to_proto(r)),
        health: Some(health_to_proto(r)),
        naming: Some(naming_to_proto(&server.naming)),
        handshake: match server.handshake {
            Handshake::Auto => pb::Handshake::Auto,
            Handshake::Initialize => pb::Handshake::Initialize,
            Handshake::Discover => pb::Handshake::Discover,
        }
        .into(),
    }
}

fn naming_to_proto(naming: &Naming) -> pb::Naming {
    pb::Naming {
        prefix_mode: match naming.prefix_mode {
            PrefixMode::Always => pb::PrefixMode::Always,
            PrefixMode::Never => pb::PrefixMode::Never,
            PrefixMode::Conditional => pb::PrefixMode::Conditional,
        }
        .into(),
        separator: naming.separator.clone(),
        include: naming.tools.include.clone(),
        exclude: naming.tools.exclude.clone(),
        rename: naming.tools.rename.clone().into_iter().collect(),
        descriptions: naming.tools.descriptions.clone().into_iter().collect(),
        prompts: Some(pb::NameRules {
            include: naming.prompts.include.clone(),
            exclude: naming.prompts.exclude.clone(),
            rename: naming.prompts.rename.clone().into_iter().collect(),
            descriptions: naming.prompts.descriptions.clone().into_iter().collect(),
        }),
    }
}

fn pool_to_proto(r: &Resilience) -> pb::Pool {
    pb::Pool {
        min: r.pool.min,
        max: r.pool.max,
        max_concurrency: r.pool.max_concurrency,
        idle_timeout_ms: millis(r.pool.idle_timeout),
        acquire_timeout_ms: millis(r.pool.acquire_timeout),
    }
}

fn breaker_to_proto(r: &Resilience) -> pb::Breaker {
    let b = &r.breaker;
    pb::Breaker {
        consecutive_failures: b.consecutive_failures,
        failure_rate: f64::from(b.failure_rate_percent) / 100.0,
        min_requests: b.min_requests,
        window_ms: millis(b.window),
        open_ms: millis(b.open_duration),
        half_open_probes: b.half_open_probes,
        count_jsonrpc_errors: b.count_json_rpc_errors,
        count_tool_errors: b.count_tool_errors,
        hide_tools_when_open: b.hide_tools_when_open,
        per_tool: b.per_tool,
    }
}

fn health_to_proto(r: &Resilience) -> pb::HealthCheck {
    let h = &r.health;
    let probe = match &h.probe {
        Probe::Ping => pb::health_check::Probe::Ping(pb::Ping {}),
        Probe::Initialize => pb::health_check::Probe::Initialize(pb::Initialize {}),
        Probe::Tool {
            name,
            arguments_json,
        } => pb::health_check::Probe::Tool(pb::ToolProbe {
            name: name.clone(),
            arguments_json: arguments_json.clone(),
        }),
    };
    pb::HealthCheck {
        interval_ms: millis(h.interval),
        timeout_ms: millis(h.timeout),
        failure_threshold: h.failure_threshold,
        probe: Some(probe),
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use super::*;

    fn server(name: &str, enabled: bool) -> ValidServer {
        let resilience = crate::resource::resilience::RawResilience {
            session_mode: SessionMode::Shared,
            pool: None,
            timeouts: None,
            breaker: None,
            health: None,
        }
        .validate()
        .expect("defaults are valid");
        ValidServer {
            resilience,
            handshake: Handshake::Auto,
            naming: Naming::default(),
            name: name.into(),
            namespace: name.into(),
            enabled,
            transport: ValidTransport::Stdio {
                command: "cmd".into(),
                args: vec!["a".into()],
                env: BTreeMap::from([("K".into(), "V".into())]),
                env_from: BTreeMap::new(),
                cwd: None,
            },
        }
    }

    fn registry(servers: &[ValidServer]) -> Registry {
        Registry {
            servers: servers
                .iter()
                .map(|s| (s.name.clone(), s.clone()))
                .collect(),
            ..Registry::default()
        }
    }

    #[test]
    fn disabled_servers_are_not_pushed() {
        let resources = build_resources(&registry(&[server("a", true), server("b", false)]));
        assert_eq!(resources.len(), 1);
        let Some(Kind::McpServer(a)) = &resources[0].kind else {
            panic!("expected an McpServer resource")
        };
        assert_eq!(a.name, "a");
        let Some(Transport::Stdio(stdio)) = &a.transport else {
            panic!("expected stdio")
        };
        assert_eq!(stdio.env.get("K").map(String::as_str), Some("V"));
    }

    #[test]
    fn versions_only_grow() {
        let first = next_version(0);
        assert!(first > 0);
        assert_eq!(next_version(u64::MAX - 1), u64::MAX);
        assert!(next_version(first) > first);
    }

    #[tokio::test]
    async fn only_effective_changes_make_a_new_version() {
        let (registry_tx, registry_rx) = watch::channel(registry(&[server("a", true)]));
        let (snap_tx, mut snap_rx) = watch::channel(Arc::new(pb::Snapshot::default()));
        let (keys_tx, keys_rx) = watch::channel(Arc::new(vec![vec![1; 32]]));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_builder(registry_rx, keys_rx, snap_tx, cancel.clone()));

        snap_rx.changed().await.expect("first snapshot");
        let v1 = snap_rx.borrow_and_update().version;

        registry_tx.send_replace(registry(&[server("a", true), server("b", false)]));
        let unchanged = tokio::time::timeout(Duration::from_millis(200), snap_rx.changed()).await;
        assert!(
            unchanged.is_err(),
            "disabled server must not bump the version"
        );

        registry_tx.send_replace(registry(&[server("a", true), server("b", true)]));
        snap_rx.changed().await.expect("second snapshot");
        let snapshot = snap_rx.borrow_and_update().clone();
        assert!(snapshot.version > v1);
        assert_eq!(snapshot.resources.len(), 2);
        assert_eq!(snapshot.session_keys, vec![vec![1; 32]]);

        // A rotated key set is a new snapshot too.
        keys_tx.send_replace(Arc::new(vec![vec![2; 32], vec![1; 32]]));
        snap_rx.changed().await.expect("third snapshot");
        let rotated = snap_rx.borrow_and_update().clone();
        assert!(rotated.version > snapshot.version);
        assert_eq!(rotated.session_keys, vec![vec![2; 32], vec![1; 32]]);
        assert_eq!(rotated.resources, snapshot.resources);

        cancel.cancel();
        task.await.expect("builder ends on cancel");
    }
}
