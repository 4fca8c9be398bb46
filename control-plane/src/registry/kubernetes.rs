//! Registry source for a cluster: `McpServer`, `McpClient`,
//! `McpAccessPolicy` and `McpGatewayConfig` resources watched through the
//! Kubernetes API (all namespaces, or a configured list). A cluster
//! without one of the newer CRDs (a chart upgraded without its new CRDs)
//! still serves its servers, with a warning, and picks the kind up once
//! installed. Objects are
//! watched untyped and parsed one by one, so one malformed resource is an
//! issue on that resource instead of a failed list. `valueFrom` env values
//! are read from Secrets and ConfigMaps in the resource's namespace, again
//! every [`REFRESH`] so rotated secrets reach the gateways; the values are
//! never logged. An `McpClient`'s token is read the same way and only its
//! digest leaves the control plane. Only a missing Secret, ConfigMap or key is a problem with
//! the resource: a read that fails otherwise (429, 5xx, a timeout, RBAC)
//! keeps the value read last and is retried with backoff, so an API server
//! having a bad moment never takes a server off the gateways.
//!
//! Reads run beside the watch, concurrently, each with a timeout: the
//! registry is assembled from the values read last, so a slow or hung read
//! holds up only the server waiting for its first value (which keeps its
//! previous spec on the gateways meanwhile, or joins once the read is
//! done), never the other resources. The first registry is published once
//! every watched namespace has been listed and the values it references
//! have been read (or have failed), so replicas never start without a
//! server only because its Secret was still being read. Status writes do
//! not change any spec, so they never produce a new registry.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use futures::{
    FutureExt, StreamExt,
    future::BoxFuture,
    stream::{FuturesUnordered, SelectAll},
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject},
    runtime::{WatchStreamExt, watcher},
};
use proto::otel::sdk::{self, WORK};
use tokio::{
    sync::{Semaphore, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, field, info, info_span, warn};

use super::{
    API_VERSION, Cause, Document, KIND, Registry, RegistryIssue, ResourceError, UnknownFields,
    parse_document, parse_resource,
};
use crate::resource::{
    McpServer, RefKind, ValidServer, ValidTransport, ValueRef,
    client::{self, ClientToken, McpClient, ValidClient},
    gateway::{self, McpGatewayConfig},
    policy::{self, McpAccessPolicy},
};

/// How often Secret and ConfigMap values are read again.
pub const REFRESH: Duration = Duration::from_secs(30);
/// How long one Secret or ConfigMap read may take (kube sets no timeout).
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Secret and ConfigMap reads in flight at once.
const PARALLEL_READS: usize = 8;
/// The shortest client token taken from a Secret.
const MIN_CLIENT_TOKEN_LEN: usize = 16;
/// After a failed read, the first retry; it doubles up to [`REFRESH`].
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Objects by (Kubernetes namespace, name).
pub type ObjectKey = (String, String);

/// A watch scope: one namespace, or `None` for all of them.
type Scope = Option<String>;

/// Objects of one kind by (Kubernetes namespace, name).
type Objects = BTreeMap<ObjectKey, DynamicObject>;

/// One kind's watch in one scope, its events tagged with both.
type WatchStream = futures::stream::BoxStream<
    'static,
    (
        Watched,
        Scope,
        watcher::Result<watcher::Event<DynamicObject>>,
    ),
>;

/// The kinds a cluster registry is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watched {
    Servers,
    Clients,
    Policies,
    Gateways,
}

/// Watches `McpServer`s and publishes the registry they make.
pub struct KubernetesSource {
    client: Client,
    /// Kubernetes namespaces to watch; empty watches all.
    namespaces: Vec<String>,
    /// The control plane's own namespace.
    home: String,
}

/// The objects of every scope, swapped in scope by scope as each
/// (re)list completes.
struct Listing {
    watched: Watched,
    scopes: usize,
    /// Per scope, objects listed since its last `Init`, swapped in at `InitDone`.
    partial: BTreeMap<Scope, BTreeMap<ObjectKey, DynamicObject>>,
    listed_once: BTreeSet<Scope>,
    current: BTreeMap<ObjectKey, DynamicObject>,
}

/// Parsed objects and the servers last published for them.
#[derive(Default)]
struct Servers {
    /// The control plane's own namespace: the only one whose
    /// `McpGatewayConfig` counts (it decides who may call every gateway);
    /// `None` takes any.
    home: Option<String>,
    /// Each object's parse, with the resourceVersion it was parsed at.
    parsed: BTreeMap<ObjectKey, (Option<String>, Result<ValidServer, ResourceError>)>,
    /// Each object's server as last published, its values resolved: what
    /// stays on the gateways while a changed spec waits for a first read.
    resolved: BTreeMap<ObjectKey, ValidServer>,
}

/// A referenced value: (namespace, kind, object name, key).
type ValueKey = (String, &'static str, String, String);

/// What reading a value gave: the value (`None`: the object or key does
/// not exist), or why it could not be read.
type ReadOutcome = Result<Option<String>, String>;

/// The referenced values: read last, kept through failed reads, read again
/// in the background.
struct Values {
    client: Client,
    /// Every referenced value, and how to read it.
    wanted: BTreeMap<ValueKey, ValueRef>,
    last: BTreeMap<ValueKey, Option<String>>,
    /// Values whose latest read failed.
    failing: BTreeSet<ValueKey>,
    /// Values being read now (each at most once at a time).
    reading: BTreeSet<ValueKey>,
    /// The reads themselves; dropped (and so cancelled) with the source.
    reads: FuturesUnordered<BoxFuture<'static, (ValueKey, ReadOutcome)>>,
    permits: Arc<Semaphore>,
    /// Rounds of reads in a row that had a failure, for the retry backoff.
    failures: u32,
    retry_at: Option<Instant>,
}

/// What is known of one value.
#[derive(Debug, PartialEq)]
enum Lookup<'a> {
    /// Read: the value, or `None` when it does not exist.
    Read(Option<&'a str>),
    /// Never read: every read so far failed (and is retried).
    Failed,
    /// Never read: the first read is under way.
    Pending,
}

/// A server with its values filled in, or why not.
enum Resolved {
    /// Boxed: a server is large, and the other variants small.
    Ready(Box<ValidServer>),
    /// A value's first read is under way.
    Pending,
    Invalid(ResourceError),
}

impl KubernetesSource {
    pub fn new(client: Client, namespaces: Vec<String>, home: String) -> Self {
        Self {
            client,
            namespaces,
            home,
        }
    }

    /// Runs until `cancel`; the watcher retries with backoff on its own,
    /// and the last registry stays in place meanwhile. The first registry
    /// is published once every scope has been listed (and its values read).
    pub async fn watch(
        self,
        registry: watch::Sender<Registry>,
        objects: watch::Sender<BTreeMap<ObjectKey, DynamicObject>>,
        cancel: CancellationToken,
    ) {
        let scopes: Vec<Scope> = if self.namespaces.is_empty() {
            vec![None]
        } else {
            self.namespaces.iter().cloned().map(Some).collect()
        };
        let mut streams = self.streams(&scopes);
        let mut listings = [
            Watched::Servers,
            Watched::Clients,
            Watched::Policies,
            Watched::Gateways,
        ]
        .map(|watched| Listing::new(watched, scopes.len()));
        let mut servers = Servers {
            home: Some(self.home.clone()),
            ..Servers::default()
        };
        let mut values = Values::new(self.client.clone());
        let mut published = false;
        let mut refresh = tokio::time::interval(REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        info!(namespaces = %self.namespaces.join(","), "watching McpServer, McpClient, McpAccessPolicy and McpGatewayConfig resources");
        loop {
            let changed = tokio::select! {
                () = cancel.cancelled() => return,
                _ = refresh.tick() => {
                    values.refresh();
                    false
                }
                () = sleep_until(values.retry_at) => {
                    values.retry();
                    false
                }
                Some(read) = values.reads.next() => {
                    // Settle every read that is done, then assemble once.
                    let mut changed = values.settle(read);
                    while let Some(Some(read)) = values.reads.next().now_or_never() {
                        changed |= values.settle(read);
                    }
                    changed
                }
                event = streams.next() => match event {
                    Some((watched, scope, event)) => listings[watched as usize].apply(scope, event),
                    None => return,
                },
            };
            let [
                listed_servers,
                listed_clients,
                listed_policies,
                listed_gateways,
            ] = &listings;
            let complete = listings.iter().all(Listing::complete);
            if complete && (changed || !published) {
                let next = servers.assemble(
                    &listed_servers.current,
                    &listed_clients.current,
                    &listed_policies.current,
                    &listed_gateways.current,
                    &mut values,
                );
                // The first registry waits for the first reads.
                if published || !values.pending() {
                    registry.send_if_modified(|registry| {
                        let modified = *registry != next || !published;
                        if modified {
                            // The change's trace: its snapshot, pushes and
                            // applies continue it.
                            let span = info_span!(
                                target: WORK,
                                "registry.change",
                                source = "kubernetes",
                                servers = next.servers.len(),
                                issues = next.issues.len(),
                                trace_id = field::Empty,
                                span_id = field::Empty,
                            );
                            sdk::correlate(&span);
                            let _change = span.enter();
                            debug!("registry changed");
                            let mut next = next;
                            next.cause = Cause(sdk::traceparent(&span));
                            *registry = next;
                        }
                        modified
                    });
                    published = true;
                }
            }
            // The status writer needs every object's latest status and
            // generation, status-only changes included.
            if published {
                objects.send_replace(listed_servers.current.clone());
            }
        }
    }

    /// One watch per kind and scope, its events tagged with both so each
    /// relist replaces only its own objects.
    fn streams(&self, scopes: &[Scope]) -> SelectAll<WatchStream> {
        let kinds = [
            (Watched::Servers, ApiResource::erase::<McpServer>(&())),
            (Watched::Clients, ApiResource::erase::<McpClient>(&())),
            (
                Watched::Policies,
                ApiResource::erase::<McpAccessPolicy>(&()),
            ),
            (
                Watched::Gateways,
                ApiResource::erase::<McpGatewayConfig>(&()),
            ),
        ];
        let mut streams = SelectAll::new();
        for (watched, resource) in kinds {
            for scope in scopes {
                let api: Api<DynamicObject> = match scope {
                    None => Api::all_with(self.client.clone(), &resource),
                    Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
                };
                let scope = scope.clone();
                streams.push(
                    watcher(api, watcher::Config::default())
                        .default_backoff()
                        .map(move |event| (watched, scope.clone(), event))
                        .boxed(),
                );
            }
        }
        streams
    }
}

/// Resolves at `at`; never without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

// === impl Listing ===

impl Listing {
    fn new(watched: Watched, scopes: usize) -> Self {
        Self {
            watched,
            scopes,
            partial: BTreeMap::new(),
            listed_once: BTreeSet::new(),
            current: BTreeMap::new(),
        }
    }

    /// Every scope has been listed in full at least once.
    fn complete(&self) -> bool {
        self.listed_once.len() == self.scopes
    }

    /// Takes in one watch event; true when the registry may have changed.
    fn apply(
        &mut self,
        scope: Scope,
        event: watcher::Result<watcher::Event<DynamicObject>>,
    ) -> bool {
        match event {
            Ok(watcher::Event::Init) => {
                self.partial.insert(scope, BTreeMap::new());
                false
            }
            Ok(watcher::Event::InitApply(object)) => {
                if let (Some(listing), Some(key)) = (self.partial.get_mut(&scope), key(&object)) {
                    listing.insert(key, object);
                }
                false
            }
            Ok(watcher::Event::InitDone) => {
                let listed = self.partial.remove(&scope).unwrap_or_default();
                match &scope {
                    None => self.current = listed,
                    Some(ns) => {
                        self.current.retain(|(object_ns, _), _| object_ns != ns);
                        self.current.extend(listed);
                    }
                }
                self.listed_once.insert(scope);
                self.complete()
            }
            // Only a new or changed spec matters: status writes (ours)
            // come back as events too and must not cost a new registry.
            Ok(watcher::Event::Apply(object)) => match key(&object) {
                Some(key) => {
                    let spec_changed = self
                        .current
                        .get(&key)
                        .is_none_or(|old| old.data.get("spec") != object.data.get("spec"));
                    self.current.insert(key, object);
                    spec_changed && self.complete()
                }
                None => false,
            },
            Ok(watcher::Event::Delete(object)) => {
                key(&object)
                    .and_then(|key| self.current.remove(&key))
                    .is_some()
                    && self.complete()
            }
            // Without the kind's CRD the watch keeps retrying (and finds
            // the kind once it is installed); meanwhile there are none of
            // it, and the other kinds are served.
            Err(err) if self.watched != Watched::Servers && not_found(&err) => {
                warn!(
                    namespace = scope.as_deref().unwrap_or("*"),
                    kind = self.watched.kind(),
                    "the kind's CRD is not installed (apply charts/switchboard/crds); serving none until it is"
                );
                self.listed_once.insert(scope) && self.complete()
            }
            Err(err) => {
                warn!(namespace = scope.as_deref().unwrap_or("*"), kind = self.watched.kind(), error = %err, "watch failed; retrying");
                false
            }
        }
    }
}

/// The API server answered 404: the resource type is not served.
fn not_found(err: &watcher::Error) -> bool {
    match err {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 404,
        watcher::Error::WatchError(status) => status.code == 404,
        _ => false,
    }
}

impl Watched {
    fn kind(self) -> &'static str {
        match self {
            Self::Servers => KIND,
            Self::Clients => client::KIND,
            Self::Policies => policy::KIND,
            Self::Gateways => gateway::KIND,
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Self::Servers => "mcpservers",
            Self::Clients => "mcpclients",
            Self::Policies => "mcpaccesspolicies",
            Self::Gateways => "mcpgatewayconfigs",
        }
    }
}

fn key(object: &DynamicObject) -> Option<ObjectKey> {
    Some((
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone()?,
    ))
}

/// A cluster server's identity, the name gateways, metrics and traces know
/// it by: `<namespace>/<name>`, since the CRD is namespaced and two teams
/// may both call a server `github`. Its tool prefix still defaults to the
/// bare name, so such a pair is told apart by `spec.namespace`.
pub fn identity((namespace, name): &ObjectKey) -> String {
    format!("{namespace}/{name}")
}

/// Where a server object's issues are reported from.
pub fn source_of(key: &ObjectKey) -> String {
    source(Watched::Servers, key)
}

fn source(watched: Watched, key: &ObjectKey) -> String {
    format!("{}/{}", watched.plural(), identity(key))
}

/// Objects oldest first: the oldest resource keeps a contested name.
fn oldest_first(objects: &Objects) -> Vec<(&ObjectKey, &DynamicObject)> {
    let mut ordered: Vec<(&ObjectKey, &DynamicObject)> = objects.iter().collect();
    ordered
        .sort_by_key(|(key, object)| (object.metadata.creation_timestamp.clone(), (*key).clone()));
    ordered
}

// === impl Servers ===

impl Servers {
    /// Validates every object, asks for the values they reference, and
    /// fills in those known; the oldest resource keeps a contested name or
    /// prefix, as the first file does in directory mode.
    fn assemble(
        &mut self,
        objects: &Objects,
        clients: &Objects,
        policies: &Objects,
        gateways: &Objects,
        values: &mut Values,
    ) -> Registry {
        self.parsed.retain(|key, _| objects.contains_key(key));
        self.resolved.retain(|key, _| objects.contains_key(key));
        let mut valid = Vec::new();
        let mut issues = Vec::new();
        for (key, object) in oldest_first(objects) {
            let version = &object.metadata.resource_version;
            let parsed = match self.parsed.get(key) {
                Some((parsed_at, parsed)) if parsed_at == version => parsed.clone(),
                _ => {
                    let parsed = parse_object(key, object);
                    self.parsed
                        .insert(key.clone(), (version.clone(), parsed.clone()));
                    parsed
                }
            };
            match parsed {
                Ok(server) => valid.push((key, server)),
                Err(error) => issues.push(issue(key, error)),
            }
        }
        let mut valid_clients = Vec::new();
        for (key, object) in oldest_first(clients) {
            match parse_other(Watched::Clients, key, object) {
                Ok(Document::Client(client)) => valid_clients.push((key, client)),
                Ok(_) => {}
                Err(error) => issues.push(issue_of(Watched::Clients, key, error)),
            }
        }
        let mut valid_policies = Vec::new();
        for (key, object) in oldest_first(policies) {
            match parse_other(Watched::Policies, key, object) {
                // Named by namespace too, so a policy of the same name in
                // another namespace never takes its place.
                Ok(Document::Policy(mut policy)) => {
                    policy.name = identity(key);
                    valid_policies.push((source(Watched::Policies, key), policy));
                }
                Ok(_) => {}
                Err(error) => issues.push(issue_of(Watched::Policies, key, error)),
            }
        }
        let mut valid_gateways = Vec::new();
        for (key, object) in oldest_first(gateways) {
            if let Some(home) = self.home.as_ref().filter(|home| **home != key.0) {
                let message = format!(
                    "an McpGatewayConfig counts only in the control plane's namespace `{home}`: it decides who may call every gateway"
                );
                issues.push(issue_of(
                    Watched::Gateways,
                    key,
                    (Some(key.1.clone()), None, message),
                ));
                continue;
            }
            match parse_other(Watched::Gateways, key, object) {
                Ok(Document::Gateway(config)) => {
                    valid_gateways.push((source(Watched::Gateways, key), config));
                }
                Ok(_) => {}
                Err(error) => issues.push(issue_of(Watched::Gateways, key, error)),
            }
        }
        let server_refs = valid.iter().flat_map(|(key, server)| {
            references(server).map(|reference| (value_key(&key.0, reference), reference.clone()))
        });
        let token_refs = valid_clients
            .iter()
            .filter_map(|(key, client)| match &client.token {
                ClientToken::Secret(reference) => {
                    Some((value_key(&key.0, reference), reference.clone()))
                }
                ClientToken::Sha256(_) => None,
            });
        values.want(server_refs.chain(token_refs).collect());
        let mut candidates = Vec::new();
        for (key, server) in valid {
            match resolve(&key.0, server, values) {
                Resolved::Ready(server) => {
                    self.resolved.insert(key.clone(), (*server).clone());
                    candidates.push((source_of(key), *server));
                }
                Resolved::Pending => {
                    if let Some(server) = self.resolved.get(key) {
                        candidates.push((source_of(key), server.clone()));
                    }
                }
                Resolved::Invalid(error) => {
                    self.resolved.remove(key);
                    issues.push(issue(key, error));
                }
            }
        }
        let mut client_candidates = Vec::new();
        for (key, client) in valid_clients {
            match resolve_token(&key.0, client, values) {
                Ok(Some(client)) => client_candidates.push((source(Watched::Clients, key), client)),
                Ok(None) => {}
                Err(error) => issues.push(issue_of(Watched::Clients, key, error)),
            }
        }
        let mut registry = Registry::assemble(candidates, issues);
        registry.add_clients(client_candidates);
        registry.add_policies(valid_policies);
        registry.add_gateway_configs(valid_gateways);
        registry
    }
}

/// An `McpClient`, `McpAccessPolicy` or `McpGatewayConfig` object, parsed
/// as a file's would be
/// (the API server pruned unknown fields already).
fn parse_other(
    watched: Watched,
    key: &ObjectKey,
    object: &DynamicObject,
) -> Result<Document, ResourceError> {
    let value = to_yaml(watched, key, object)?;
    parse_document(value, UnknownFields::Ignore)
}

/// A client with its token's digest, `None` while its Secret's first
/// read is under way.
fn resolve_token(
    namespace: &str,
    client: ValidClient,
    values: &Values,
) -> Result<Option<ValidClient>, ResourceError> {
    let ClientToken::Secret(reference) = &client.token else {
        return Ok(Some(client));
    };
    let field = Some("spec.token.valueFrom".to_owned());
    let message = match values.lookup(&value_key(namespace, reference)) {
        // A Secret made from a file often ends with a line break.
        Lookup::Read(Some(token)) => {
            let token = token.trim_end_matches(['\r', '\n']);
            // Gateways hold the digest: a short token could be guessed
            // from it offline.
            if token.len() >= MIN_CLIENT_TOKEN_LEN {
                return Ok(Some(client.clone().with_token(token)));
            }
            format!(
                "Secret `{}` key `{}` holds a token shorter than {MIN_CLIENT_TOKEN_LEN} characters",
                reference.name, reference.key
            )
        }
        Lookup::Pending => return Ok(None),
        Lookup::Read(None) => format!(
            "Secret `{}` or its key `{}` does not exist in namespace `{namespace}`",
            reference.name, reference.key
        ),
        Lookup::Failed => format!(
            "Secret `{}` could not be read yet (retrying; see the control plane's log)",
            reference.name
        ),
    };
    Err((Some(client.name), field, message))
}

fn issue(key: &ObjectKey, error: ResourceError) -> RegistryIssue {
    issue_of(Watched::Servers, key, error)
}

fn issue_of(
    watched: Watched,
    key: &ObjectKey,
    (resource, field, message): ResourceError,
) -> RegistryIssue {
    RegistryIssue {
        source: source(watched, key),
        resource,
        field,
        message,
    }
}

// === impl Values ===

impl Values {
    fn new(client: Client) -> Self {
        Self {
            client,
            wanted: BTreeMap::new(),
            last: BTreeMap::new(),
            failing: BTreeSet::new(),
            reading: BTreeSet::new(),
            reads: FuturesUnordered::new(),
            permits: Arc::new(Semaphore::new(PARALLEL_READS)),
            failures: 0,
            retry_at: None,
        }
    }

    /// Makes `wanted` the values to keep; starts the first read of each
    /// new one and forgets the ones no longer referenced.
    fn want(&mut self, wanted: BTreeMap<ValueKey, ValueRef>) {
        self.wanted = wanted;
        self.last.retain(|key, _| self.wanted.contains_key(key));
        self.failing.retain(|key| self.wanted.contains_key(key));
        let new: Vec<ValueKey> = self
            .wanted
            .keys()
            .filter(|key| self.lookup(key) == Lookup::Pending)
            .cloned()
            .collect();
        new.into_iter().for_each(|key| self.start(key));
    }

    /// Reads every value again (rotated secrets).
    fn refresh(&mut self) {
        let keys: Vec<ValueKey> = self.wanted.keys().cloned().collect();
        keys.into_iter().for_each(|key| self.start(key));
    }

    /// Reads the values whose last read failed again.
    fn retry(&mut self) {
        self.retry_at = None;
        let keys: Vec<ValueKey> = self.failing.iter().cloned().collect();
        keys.into_iter().for_each(|key| self.start(key));
    }

    /// Starts reading `key`, unless a read of it is under way.
    fn start(&mut self, key: ValueKey) {
        let Some(reference) = self.wanted.get(&key).cloned() else {
            return;
        };
        if !self.reading.insert(key.clone()) {
            return;
        }
        let client = self.client.clone();
        let permits = self.permits.clone();
        self.reads.push(Box::pin(async move {
            // The semaphore is never closed.
            let _permit = permits.acquire_owned().await;
            let read = read_value(&client, &key.0, &reference);
            let outcome = match tokio::time::timeout(READ_TIMEOUT, read).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no answer within {}s", READ_TIMEOUT.as_secs())),
            };
            (key, outcome)
        }));
    }

    /// Takes in a finished read: a failure keeps the value read last. Once
    /// no read is under way, schedules a retry of the failed ones. True
    /// when what is known of the value changed.
    fn settle(&mut self, (key, outcome): (ValueKey, ReadOutcome)) -> bool {
        self.reading.remove(&key);
        // What resolution sees of the value: read (the value), or never
        // read and failed (`true`) or pending (`false`).
        let known = |values: &Self| {
            values
                .last
                .get(&key)
                .cloned()
                .ok_or(values.failing.contains(&key))
        };
        let changed = if self.wanted.contains_key(&key) {
            let before = known(self);
            match outcome {
                Ok(value) => {
                    self.failing.remove(&key);
                    self.last.insert(key.clone(), value);
                }
                Err(error) => {
                    let (namespace, kind, name, _) = &key;
                    let kept = self.last.contains_key(&key);
                    warn!(%namespace, kind, %name, %error, kept_last_value = kept, "cannot read a referenced value; retrying");
                    self.failing.insert(key.clone());
                }
            }
            before != known(self)
        } else {
            false
        };
        if self.reading.is_empty() {
            if self.failing.is_empty() {
                self.failures = 0;
                self.retry_at = None;
            } else if self.retry_at.is_none() {
                let delay = FIRST_RETRY
                    .saturating_mul(1 << self.failures.min(5))
                    .min(REFRESH);
                self.failures += 1;
                self.retry_at = Some(Instant::now() + delay);
            }
        }
        changed
    }

    fn lookup(&self, key: &ValueKey) -> Lookup<'_> {
        match self.last.get(key) {
            Some(value) => Lookup::Read(value.as_deref()),
            None if self.failing.contains(key) => Lookup::Failed,
            None => Lookup::Pending,
        }
    }

    /// A referenced value's first read is still under way.
    fn pending(&self) -> bool {
        self.wanted
            .keys()
            .any(|key| self.lookup(key) == Lookup::Pending)
    }
}

/// One object as a validated server (its values not read yet).
fn parse_object(key: &ObjectKey, object: &DynamicObject) -> Result<ValidServer, ResourceError> {
    let value = to_yaml(Watched::Servers, key, object)?;
    let mut server = parse_resource(value, UnknownFields::Ignore)?;
    server.name = identity(key);
    Ok(server)
}

/// An object as the document a file would hold.
fn to_yaml(
    watched: Watched,
    key: &ObjectKey,
    object: &DynamicObject,
) -> Result<serde_yaml::Value, ResourceError> {
    let mut object = object.clone();
    // List items may leave out their type; it is known here.
    object.types.get_or_insert_with(|| kube::api::TypeMeta {
        api_version: API_VERSION.to_owned(),
        kind: watched.kind().to_owned(),
    });
    // Read-only bookkeeping the API server adds; the documents' types
    // know only what users write.
    object.metadata.managed_fields = None;
    serde_json::to_value(&object)
        .map_err(|e| e.to_string())
        .and_then(|json| serde_yaml::to_value(json).map_err(|e| e.to_string()))
        .map_err(|message| (Some(key.1.clone()), None, message))
}

/// The values a server's env or headers take from the cluster.
fn references(server: &ValidServer) -> impl Iterator<Item = &ValueRef> {
    let from = match &server.transport {
        ValidTransport::Stdio { env_from, .. } => env_from,
        ValidTransport::Http { headers_from, .. } | ValidTransport::Sse { headers_from, .. } => {
            headers_from
        }
    };
    from.values()
}

/// Where a transport's values from the cluster go: the plain values, the
/// references, and the field they are under.
fn value_slots(
    transport: &mut ValidTransport,
) -> (
    &mut BTreeMap<String, String>,
    &mut BTreeMap<String, ValueRef>,
    &'static str,
) {
    match transport {
        ValidTransport::Stdio { env, env_from, .. } => (env, env_from, "spec.transport.stdio.env"),
        ValidTransport::Http {
            headers,
            headers_from,
            ..
        } => (headers, headers_from, "spec.transport.http.headers"),
        ValidTransport::Sse {
            headers,
            headers_from,
            ..
        } => (headers, headers_from, "spec.transport.sse.headers"),
    }
}

fn value_key(namespace: &str, reference: &ValueRef) -> ValueKey {
    (
        namespace.to_owned(),
        kind_name(reference.kind),
        reference.name.clone(),
        reference.key.clone(),
    )
}

fn kind_name(kind: RefKind) -> &'static str {
    match kind {
        RefKind::Secret => "Secret",
        RefKind::ConfigMap => "ConfigMap",
    }
}

/// Replaces every `valueFrom` with the value read last. A missing value
/// (or one never read) is an issue even while another is still pending.
fn resolve(namespace: &str, mut server: ValidServer, values: &Values) -> Resolved {
    let name = server.name.clone();
    let (resolved, from, path) = value_slots(&mut server.transport);
    let headers = !path.ends_with(".env");
    let mut pending = false;
    for (variable, reference) in std::mem::take(from) {
        let field = Some(format!("{path}[{variable}].valueFrom"));
        let what = kind_name(reference.kind);
        let message = match values.lookup(&value_key(namespace, &reference)) {
            // A header value ends at a line break: a Secret made from a
            // file often has one at the end, and one inside is refused.
            Lookup::Read(Some(value)) if headers => {
                let value = value.trim_end_matches(['\r', '\n']);
                if !value.contains(['\r', '\n']) {
                    resolved.insert(variable, value.to_owned());
                    continue;
                }
                format!(
                    "{what} `{}` key `{}` holds a line break, which a header value cannot",
                    reference.name, reference.key
                )
            }
            Lookup::Read(Some(value)) => {
                resolved.insert(variable, value.to_owned());
                continue;
            }
            Lookup::Read(None) if reference.optional => continue,
            Lookup::Pending => {
                pending = true;
                continue;
            }
            Lookup::Read(None) => format!(
                "{what} `{}` or its key `{}` does not exist in namespace `{namespace}` (set optional: true to allow that)",
                reference.name, reference.key
            ),
            Lookup::Failed => format!(
                "{what} `{}` could not be read yet (retrying; see the control plane's log)",
                reference.name
            ),
        };
        return Resolved::Invalid((Some(name), field, message));
    }
    if pending {
        Resolved::Pending
    } else {
        Resolved::Ready(Box::new(server))
    }
}

/// The value, `None` when the object or key is missing (the API server's
/// 404); any other failure is an error, to be retried.
async fn read_value(client: &Client, namespace: &str, reference: &ValueRef) -> ReadOutcome {
    let cannot_read = |e: kube::Error| format!("cannot read `{}`: {e}", reference.name);
    match reference.kind {
        RefKind::Secret => {
            let secret = Api::<Secret>::namespaced(client.clone(), namespace)
                .get_opt(&reference.name)
                .await
                .map_err(cannot_read)?;
            let Some(bytes) = secret.and_then(|s| s.data?.remove(&reference.key)) else {
                return Ok(None);
            };
            String::from_utf8(bytes.0).map(Some).map_err(|_| {
                format!(
                    "key `{}` of Secret `{}` is not UTF-8 text",
                    reference.key, reference.name
                )
            })
        }
        RefKind::ConfigMap => Ok(Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .get_opt(&reference.name)
            .await
            .map_err(cannot_read)?
            .and_then(|c| c.data?.remove(&reference.key))),
    }
}

#[cfg(test)]
mod tests;
