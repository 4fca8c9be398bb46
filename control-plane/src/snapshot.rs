//! Snapshot builder: turns each new [`Registry`] into a versioned
//! `proto::config::Snapshot`, one resource per enabled `McpServer`.
//! A registry change that does not change what gateways run (an issue
//! appearing, a disabled server edited) makes no new version.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use proto::config::{self as pb, mcp_server::Transport, resource::Kind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    registry::Registry,
    resource::{ValidServer, ValidTransport},
};

/// The current snapshot; version 0 means "nothing loaded yet".
pub type SnapshotWatch = watch::Receiver<Arc<pb::Snapshot>>;

/// Builds a snapshot for every registry change until `cancel`.
pub async fn run_builder(
    mut registry: watch::Receiver<Registry>,
    snapshots: watch::Sender<Arc<pb::Snapshot>>,
    cancel: CancellationToken,
) {
    loop {
        let resources = build_resources(&registry.borrow_and_update());
        snapshots.send_if_modified(|current| {
            if current.version != 0 && current.resources == resources {
                return false;
            }
            let version = next_version(current.version);
            info!(version, resources = resources.len(), "new config snapshot");
            *current = Arc::new(pb::Snapshot { version, resources });
            true
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = registry.changed() => if changed.is_err() { return },
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
    registry
        .enabled()
        .map(|server| pb::Resource {
            kind: Some(Kind::McpServer(to_proto(server))),
        })
        .collect()
}

fn to_proto(server: &ValidServer) -> pb::McpServer {
    let transport = match &server.transport {
        ValidTransport::Stdio {
            command,
            args,
            env,
            cwd,
        } => Transport::Stdio(pb::StdioTransport {
            command: command.clone(),
            args: args.clone(),
            env: env.clone().into_iter().collect(),
            cwd: cwd.clone().unwrap_or_default(),
        }),
    };
    pb::McpServer {
        name: server.name.clone(),
        namespace: server.namespace.clone(),
        transport: Some(transport),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use super::*;

    fn server(name: &str, enabled: bool) -> ValidServer {
        ValidServer {
            name: name.into(),
            namespace: name.into(),
            enabled,
            transport: ValidTransport::Stdio {
                command: "cmd".into(),
                args: vec!["a".into()],
                env: BTreeMap::from([("K".into(), "V".into())]),
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
            issues: vec![],
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
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_builder(registry_rx, snap_tx, cancel.clone()));

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

        cancel.cancel();
        task.await.expect("builder ends on cancel");
    }
}
