//! Registry source for one machine: a directory of `McpServer` and
//! `McpClient` YAML files (`*.yaml`, `*.yml`, several documents per file
//! allowed), watched for changes. Editing a file is the local `kubectl apply`.
//!
//! A file that fails to parse or validate keeps contributing its last good
//! resources, so a typo never takes a working server away.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use parking_lot::Mutex;
use proto::otel::sdk::{self, WORK};
use serde::Deserialize;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, field, info, info_span, warn};

use super::{
    Cause, Document, Registry, RegistryIssue, ResourceError, UnknownFields, parse_document,
};
use crate::resource::{ValidServer, ValidTransport};

/// Editors save in bursts (write, rename, chmod); wait this long after the
/// last event before rescanning.
const DEBOUNCE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("registry directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch registry directory {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// Loads a directory and remembers each file's last good resources.
#[derive(Debug)]
pub struct DirectorySource {
    dir: PathBuf,
    last_good: BTreeMap<PathBuf, Vec<Document>>,
}

/// What one file parsed into.
type FileOutcome = Result<Vec<Document>, Vec<RegistryIssue>>;

// === impl DirectorySource ===

impl DirectorySource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            last_good: BTreeMap::new(),
        }
    }

    /// Reads every file once. Files are taken in path order, which decides
    /// who wins a duplicate name or namespace.
    pub fn scan(&mut self) -> Result<Registry, Error> {
        let read_err = |source| Error::ReadDir {
            path: self.dir.clone(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(read_err)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| is_registry_file(path))
            .collect();
        files.sort();

        let mut issues = Vec::new();
        let mut last_good = BTreeMap::new();
        for path in files {
            match load_file(&path) {
                Ok(documents) => {
                    last_good.insert(path, documents);
                }
                Err(file_issues) => {
                    for issue in &file_issues {
                        error!(
                            file = %issue.source,
                            resource = issue.resource.as_deref().unwrap_or("-"),
                            field = issue.field.as_deref().unwrap_or("-"),
                            "invalid resource, keeping the file's last good resources: {}",
                            issue.message
                        );
                    }
                    issues.extend(file_issues);
                    if let Some(previous) = self.last_good.remove(&path) {
                        last_good.insert(path, previous);
                    }
                }
            }
        }
        self.last_good = last_good;

        let documents = || {
            self.last_good.iter().flat_map(|(path, documents)| {
                documents
                    .iter()
                    .map(move |d| (path.display().to_string(), d))
            })
        };
        let servers = documents().filter_map(|(source, document)| match document {
            Document::Server(server) => Some((source, (**server).clone())),
            _ => None,
        });
        let mut registry = Registry::assemble(servers, issues);
        registry.add_clients(documents().filter_map(|(source, document)| match document {
            Document::Client(client) => Some((source, client.clone())),
            _ => None,
        }));
        registry.add_policies(documents().filter_map(|(source, document)| match document {
            Document::Policy(policy) => Some((source, policy.clone())),
            _ => None,
        }));
        registry.add_gateway_configs(documents().filter_map(|(source, document)| match document {
            Document::Gateway(config) => Some((source, config.clone())),
            _ => None,
        }));
        for issue in registry.issues.iter().filter(|i| i.field.is_some()) {
            warn!(file = %issue.source, resource = issue.resource.as_deref(), "{}", issue.message);
        }
        Ok(registry)
    }

    /// Scans now, then again after every change in the directory, sending
    /// each result that differs from the previous one. Ends on `cancel`.
    ///
    /// The first scan's errors are returned (the directory must exist); later
    /// read errors are logged and the last registry stays in place.
    pub async fn watch(
        self,
        tx: watch::Sender<Registry>,
        cancel: CancellationToken,
    ) -> Result<(), Error> {
        let changed = Arc::new(Notify::new());
        let notifier = changed.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Reading the files is an event too: a rescan must not
                // wake the next one.
                if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                    notifier.notify_one();
                }
            })
            .map_err(|source| Error::Watch {
                path: self.dir.clone(),
                source,
            })?;
        watcher
            .watch(&self.dir, RecursiveMode::NonRecursive)
            .map_err(|source| Error::Watch {
                path: self.dir.clone(),
                source,
            })?;
        info!(dir = %self.dir.display(), "watching registry directory");

        let source = Arc::new(Mutex::new(self));
        tx.send_replace(rescan(&source).await?);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = changed.notified() => {}
            }
            tokio::time::sleep(DEBOUNCE).await;
            // A change is one trace: this scan, the snapshot built from it,
            // its push to each replica and each replica's apply.
            let span = info_span!(
                target: WORK,
                "registry.change",
                source = "directory",
                servers = field::Empty,
                issues = field::Empty,
                changed = field::Empty,
                trace_id = field::Empty,
                span_id = field::Empty,
            );
            sdk::correlate(&span);
            match rescan(&source).instrument(span.clone()).await {
                Ok(mut registry) => {
                    span.record("servers", registry.servers.len());
                    span.record("issues", registry.issues.len());
                    registry.cause = Cause(sdk::traceparent(&span));
                    let changed = tx.send_if_modified(|current| {
                        let modified = *current != registry;
                        // Equal registries differ in their cause alone.
                        if modified {
                            *current = registry;
                        }
                        modified
                    });
                    span.record("changed", changed);
                }
                Err(err) => {
                    error!(error = %err, "registry rescan failed, keeping the last registry");
                }
            }
        }
    }
}

/// Scans off the async runtime: directory reads are blocking I/O.
async fn rescan(source: &Arc<Mutex<DirectorySource>>) -> Result<Registry, Error> {
    let source = source.clone();
    let dir = source.lock().dir.clone();
    tokio::task::spawn_blocking(move || source.lock().scan())
        .await
        .unwrap_or_else(|join| {
            Err(Error::ReadDir {
                path: dir,
                source: std::io::Error::other(join),
            })
        })
}

fn is_registry_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    !hidden && yaml && path.is_file()
}

/// Parses and validates every document in a file. Any bad document makes
/// the whole file bad, so its resources never change half-way.
fn load_file(path: &Path) -> FileOutcome {
    let source = path.display().to_string();
    let issue = |resource: Option<String>, field: Option<String>, message: String| RegistryIssue {
        source: source.clone(),
        resource,
        field,
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![issue(None, None, format!("cannot read file: {e}"))])?;

    let mut documents = Vec::new();
    let mut issues = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(value) => value,
            Err(e) => {
                issues.push(issue(None, None, format!("invalid YAML: {e}")));
                // The parser cannot resynchronise after a syntax error.
                break;
            }
        };
        // Files are written by hand: an unknown field is a typo.
        match parse_document(value, UnknownFields::Refuse) {
            Ok(Document::Server(server)) => match without_references(*server) {
                Ok(server) => {
                    debug!(file = %source, resource = %server.name, "loaded McpServer");
                    documents.push(Document::Server(Box::new(server)));
                }
                Err((resource, field, message)) => issues.push(issue(resource, field, message)),
            },
            Ok(Document::Client(client)) => {
                debug!(file = %source, resource = %client.name, "loaded McpClient");
                documents.push(Document::Client(client));
            }
            Ok(Document::Policy(policy)) => {
                debug!(file = %source, resource = %policy.name, "loaded McpAccessPolicy");
                documents.push(Document::Policy(policy));
            }
            Ok(Document::Gateway(config)) => {
                debug!(file = %source, resource = %config.name, "loaded McpGatewayConfig");
                documents.push(Document::Gateway(config));
            }
            Err((resource, field, message)) => issues.push(issue(resource, field, message)),
        }
    }
    if issues.is_empty() {
        Ok(documents)
    } else {
        Err(issues)
    }
}

/// Files cannot read Secrets or ConfigMaps.
pub(crate) fn without_references(server: ValidServer) -> Result<ValidServer, ResourceError> {
    let field = match &server.transport {
        ValidTransport::Stdio { env_from, .. } if !env_from.is_empty() => {
            "spec.transport.stdio.env.valueFrom"
        }
        ValidTransport::Http { headers_from, .. } if !headers_from.is_empty() => {
            "spec.transport.http.headers.valueFrom"
        }
        ValidTransport::Sse { headers_from, .. } if !headers_from.is_empty() => {
            "spec.transport.sse.headers.valueFrom"
        }
        _ => return Ok(server),
    };
    Err((
        Some(server.name.clone()),
        Some(field.into()),
        "valueFrom (secretKeyRef/configMapKeyRef) needs the Kubernetes source; use value in a registry file".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIME: &str = "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata: {name: time}\nspec: {transport: {stdio: {command: mcp-server-time}}}\n";

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::write(dir.join(file), text).expect("write test file");
    }

    #[test]
    fn clients_and_access_policies_load_beside_servers_and_the_first_name_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let policy = "apiVersion: switchboard.dev/v1alpha1\nkind: McpAccessPolicy\nmetadata: {name: no-admin}\nspec: {subjects: {groups: [dev]}, deny: {tools: ['utils.*']}}\n";
        let access = format!(
            "apiVersion: switchboard.dev/v1alpha1\nkind: McpClient\nmetadata: {{name: alice}}\nspec: {{groups: [dev], token: {{sha256: {digest}}}}}\n---\n{policy}"
        );
        write(dir.path(), "a-access.yaml", &access);
        write(dir.path(), "b-again.yaml", policy);
        write(dir.path(), "time.yaml", TIME);
        let registry = DirectorySource::new(dir.path()).scan().expect("scan");
        assert_eq!(registry.servers.keys().collect::<Vec<_>>(), ["time"]);
        assert_eq!(registry.clients.keys().collect::<Vec<_>>(), ["alice"]);
        assert_eq!(registry.policies["no-admin"].deny.tools, ["utils.*"]);
        let [issue] = &registry.issues[..] else {
            panic!("{:?}", registry.issues);
        };
        assert!(issue.source.ends_with("b-again.yaml"), "{issue:?}");
        assert!(issue.message.contains("already defined"), "{issue:?}");

        // A policy that names no subject is reported with its field.
        write(
            dir.path(),
            "b-again.yaml",
            &policy
                .replace("{groups: [dev]}", "{}")
                .replace("no-admin", "other"),
        );
        let registry = DirectorySource::new(dir.path()).scan().expect("scan");
        let issue = &registry.issues[0];
        assert_eq!(issue.field.as_deref(), Some("spec.subjects"), "{issue:?}");
    }

    #[test]
    fn loads_multi_document_files_and_skips_other_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let two = format!(
            "{TIME}---\n{}",
            TIME.replace("name: time", "name: clock")
                .replace("{transport", "{namespace: clock, transport")
        );
        write(dir.path(), "servers.yaml", &two);
        write(dir.path(), "README.md", "not yaml");
        write(dir.path(), ".hidden.yaml", "{{{");
        let registry = DirectorySource::new(dir.path()).scan().expect("scan");
        assert_eq!(
            registry.servers.keys().collect::<Vec<_>>(),
            ["clock", "time"]
        );
        assert!(registry.issues.is_empty(), "{:?}", registry.issues);
    }

    #[test]
    fn invalid_file_keeps_its_last_good_resources() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "time.yaml", TIME);
        let mut source = DirectorySource::new(dir.path());
        assert_eq!(source.scan().expect("scan").servers.len(), 1);

        write(
            dir.path(),
            "time.yaml",
            &TIME.replace("command: mcp-server-time", "command: ''"),
        );
        let registry = source.scan().expect("scan");
        assert_eq!(registry.servers.len(), 1, "last good copy kept");
        let issue = &registry.issues[0];
        assert!(issue.source.ends_with("time.yaml"));
        assert_eq!(issue.resource.as_deref(), Some("time"));
        assert_eq!(issue.field.as_deref(), Some("spec.transport.stdio.command"));
    }

    #[test]
    fn unknown_field_names_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "t.yaml", &TIME.replace("command:", "comand:"));
        let registry = DirectorySource::new(dir.path()).scan().expect("scan");
        assert!(registry.servers.is_empty());
        let issue = &registry.issues[0];
        assert_eq!(issue.field.as_deref(), Some("spec.transport.stdio.comand"));
        assert_eq!(
            issue.message,
            "unknown field `comand`, expected one of `args`, `command`, `cwd`, `env`"
        );
    }

    /// What a cluster object may carry (a newer CRD's field) is an error in
    /// a file: there it is a typo.
    #[test]
    fn unknown_fields_are_refused_anywhere_in_the_resource() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (file, text, field) in [
            (
                "spec.yaml",
                TIME.replace("spec: {", "spec: {rateLimit: {perMinute: 1}, "),
                "spec.rateLimit",
            ),
            (
                "metadata.yaml",
                TIME.replace("{name: time}", "{name: time, lables: {a: b}}"),
                "metadata.lables",
            ),
            (
                "root.yaml",
                format!("{TIME}spec_version: 2\n"),
                "spec_version",
            ),
        ] {
            write(dir.path(), file, &text);
            let registry = DirectorySource::new(dir.path()).scan().expect("scan");
            assert!(registry.servers.is_empty(), "{file}");
            let issue = &registry.issues[0];
            assert_eq!(issue.field.as_deref(), Some(field), "{file}");
            assert!(
                issue.message.starts_with("unknown field"),
                "{}",
                issue.message
            );
            std::fs::remove_file(dir.path().join(file)).expect("remove");
        }
    }

    #[test]
    fn syntax_error_and_wrong_kind_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.yaml", "metadata: [unclosed");
        write(
            dir.path(),
            "b.yaml",
            &TIME.replace("kind: McpServer", "kind: Pod"),
        );
        let registry = DirectorySource::new(dir.path()).scan().expect("scan");
        assert!(registry.issues[0].message.starts_with("invalid YAML"));
        assert_eq!(registry.issues[1].field.as_deref(), Some("kind"));
    }

    #[test]
    fn duplicate_names_and_namespaces_keep_the_first_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.yaml", TIME);
        write(dir.path(), "b.yaml", TIME);
        write(
            dir.path(),
            "c.yaml",
            &TIME
                .replace("name: time", "name: other")
                .replace("{transport", "{namespace: time, transport"),
        );
        let registry = DirectorySource::new(dir.path()).scan().expect("scan");
        assert_eq!(registry.servers.keys().collect::<Vec<_>>(), ["time"]);
        assert_eq!(registry.issues.len(), 2);
        assert!(registry.issues[0].message.contains("already defined in"));
        assert!(
            registry.issues[1]
                .message
                .contains("namespace `time` is already used")
        );
    }

    #[test]
    fn value_from_needs_the_kubernetes_source() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(
            dir.path(),
            "secret.yaml",
            "apiVersion: switchboard.dev/v1alpha1\nkind: McpServer\nmetadata: {name: s}\nspec: {transport: {stdio: {command: x, env: [{name: T, valueFrom: {secretKeyRef: {name: n, key: k}}}]}}}\n",
        );
        let registry = DirectorySource::new(dir.path()).scan().expect("scan");
        assert!(registry.servers.is_empty());
        assert_eq!(
            registry.issues[0].field.as_deref(),
            Some("spec.transport.stdio.env.valueFrom")
        );
    }

    #[test]
    fn missing_directory_is_an_error() {
        let err = DirectorySource::new("/nonexistent/registry")
            .scan()
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/registry"));
    }
}
