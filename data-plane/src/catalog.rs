//! The catalog: the merged view of every ready server's tools, prompts,
//! resources and resource templates, named by each server's naming rules
//! (prefix mode, separator, include/exclude, renames, descriptions),
//! rebuilt by one task whenever a server changes, and read lock-free by
//! every request. Name collisions are resolved deterministically (servers
//! in name order; the first keeps a contested name, later ones get it
//! prefixed) and reported, never dropped. Resource URIs of prefixed
//! servers become `{prefix}+{uri}` (see `ServerSpec::uri_prefix`).
//! Subscribers are told which lists changed (`list_changed`).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, OnceLock},
};

use arc_swap::ArcSwap;
use rmcp::model::{
    Prompt, PromptsCapability, Resource, ResourceTemplate, ResourcesCapability, ServerCapabilities,
    Tool, ToolsCapability,
};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    downstream::{ServerHandle, Servers},
    spec::PrefixMode,
};

/// Longest tool name common LLM providers accept.
pub const MAX_TOOL_NAME_LEN: usize = 64;

/// One immutable view of all servers' offers.
#[derive(Default)]
pub struct Catalog {
    /// Tools as clients see them, namespaced, ordered by server then tool.
    tools: Vec<Tool>,
    tool_routes: HashMap<Arc<str>, Route>,
    prompts: Vec<Prompt>,
    prompt_routes: HashMap<Arc<str>, Route>,
    resources: Vec<Resource>,
    templates: Vec<ResourceTemplate>,
    uris: UriRoutes,
    capabilities: ServerCapabilities,
    /// Names two servers wanted, and how each was resolved.
    collisions: Vec<Collision>,
    prompt_collisions: Vec<Collision>,
    /// Exposed names longer than [`MAX_TOOL_NAME_LEN`].
    long_names: Vec<String>,
    /// Each list's items as JSON, encoded on first use (by [`List`]).
    encoded: [OnceLock<Option<Encoded>>; 4],
}

/// A list's items, each encoded as JSON once per catalog: a list request
/// copies them instead of cloning and encoding typed items every time.
pub type Encoded = Box<[Box<RawValue>]>;

/// The catalog's lists, as clients ask for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum List {
    Tools,
    Prompts,
    Resources,
    ResourceTemplates,
}

/// A name more than one server wanted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Collision {
    pub name: String,
    /// The server that keeps the name (first by server name).
    pub kept_by: String,
    /// The other servers and the names they got instead.
    pub renamed: Vec<(String, String)>,
}

/// A name on its way into the catalog.
struct Candidate<'a> {
    handle: &'a Arc<ServerHandle>,
    /// After `rename`, before any prefix.
    base: String,
}

/// Where a namespaced tool or prompt goes.
#[derive(Clone)]
pub struct Route {
    pub server: Arc<ServerHandle>,
    /// The name on its server.
    pub name: Arc<str>,
}

/// How a client-facing resource URI finds its server.
#[derive(Default)]
struct UriRoutes {
    /// Servers whose URIs carry their prefix.
    prefixed: HashMap<Arc<str>, Arc<ServerHandle>>,
    /// Unprefixed servers' listed URIs (the first server listing one wins).
    exact: HashMap<String, Arc<ServerHandle>>,
    /// Unprefixed servers' templates.
    templates: Vec<(String, Arc<ServerHandle>)>,
    /// Unprefixed servers with resources at all.
    unprefixed: Vec<Arc<ServerHandle>>,
}

/// Counters of list changes, one per kind a client can be told about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub tools: u64,
    pub prompts: u64,
    pub resources: u64,
}

/// The current catalog and its change notifications; cheap to clone.
#[derive(Clone)]
pub struct CatalogReader {
    current: Arc<ArcSwap<Catalog>>,
    changes: watch::Receiver<Changes>,
}

// === impl Catalog ===

impl Catalog {
    /// Builds the view from the servers that are ready now. Tools hidden
    /// by an open breaker stay routable, so a client with an older list is
    /// told the breaker is open rather than that the tool does not exist.
    pub fn build(servers: &Servers) -> Self {
        let handles = servers.list();
        let ready: Vec<_> = handles
            .iter()
            .filter_map(|handle| {
                let (offer, listed) = handle.routable()?;
                Some((handle, offer, listed))
            })
            .collect();
        let mut catalog = Catalog::default();
        let mut capabilities = ServerCapabilities::default();
        let mut tools_capability = ToolsCapability::default();
        tools_capability.list_changed = Some(true);
        capabilities.tools = Some(tools_capability);

        let mut tool_candidates = Vec::new();
        let mut tools = Vec::new();
        for (handle, offer, listed) in &ready {
            let rules = &handle.spec.naming.tools;
            for tool in offer.tools.iter().filter(|t| rules.serves(&t.name)) {
                let base = rules.renamed(&tool.name).to_owned();
                tool_candidates.push(Candidate { handle, base });
                tools.push((tool, *listed));
            }
        }
        let (names, collisions) = resolve_names(&tool_candidates);
        for ((name, candidate), (tool, listed)) in
            names.into_iter().zip(&tool_candidates).zip(tools)
        {
            if name.len() > MAX_TOOL_NAME_LEN {
                catalog.long_names.push(name.clone());
            }
            let name: Arc<str> = name.into();
            if listed {
                let mut exposed = tool.clone();
                exposed.name = name.to_string().into();
                let descriptions = &candidate.handle.spec.naming.tools.descriptions;
                if let Some(description) = descriptions.get(tool.name.as_ref()) {
                    exposed.description = Some(description.clone().into());
                }
                catalog.tools.push(exposed);
            }
            let route = Route {
                server: candidate.handle.clone(),
                name: tool.name.as_ref().into(),
            };
            catalog.tool_routes.insert(name, route);
        }
        catalog.collisions = collisions;

        let mut prompt_candidates = Vec::new();
        let mut prompts = Vec::new();
        for (handle, offer, _) in &ready {
            let rules = &handle.spec.naming.prompts;
            for prompt in offer.prompts.iter().filter(|p| rules.serves(&p.name)) {
                let base = rules.renamed(&prompt.name).to_owned();
                prompt_candidates.push(Candidate { handle, base });
                prompts.push(prompt);
            }
        }
        let (names, collisions) = resolve_names(&prompt_candidates);
        for ((name, candidate), prompt) in names.into_iter().zip(&prompt_candidates).zip(prompts) {
            let mut exposed = prompt.clone();
            exposed.name = name.clone();
            let descriptions = &candidate.handle.spec.naming.prompts.descriptions;
            if let Some(description) = descriptions.get(&prompt.name) {
                exposed.description = Some(description.clone());
            }
            catalog.prompts.push(exposed);
            let route = Route {
                server: candidate.handle.clone(),
                name: prompt.name.as_str().into(),
            };
            catalog.prompt_routes.insert(name.into(), route);
        }
        catalog.prompt_collisions = collisions;

        for (handle, offer, _) in &ready {
            let server_capabilities = &offer.capabilities;
            if server_capabilities.prompts.is_some() {
                let mut prompts = PromptsCapability::default();
                prompts.list_changed = Some(true);
                capabilities.prompts = Some(prompts);
            }
            if server_capabilities.completions.is_some() {
                capabilities.completions = Some(Default::default());
            }
            if server_capabilities.logging.is_some() {
                capabilities.logging = Some(Default::default());
            }
            let Some(resources) = &server_capabilities.resources else {
                continue;
            };
            let merged = capabilities
                .resources
                .get_or_insert_with(ResourcesCapability::default);
            merged.list_changed = Some(true);
            if resources.subscribe == Some(true) {
                merged.subscribe = Some(true);
            }
            catalog.add_resources(handle, offer);
        }
        catalog.capabilities = capabilities;
        catalog
    }

    fn add_resources(&mut self, handle: &Arc<ServerHandle>, offer: &crate::downstream::Offer) {
        let prefix = handle.spec.uri_prefix();
        let expose = |uri: &str| match &prefix {
            Some(prefix) => format!("{prefix}+{uri}"),
            None => uri.to_owned(),
        };
        for resource in offer.resources.iter() {
            let mut exposed = resource.clone();
            exposed.uri = expose(&resource.uri);
            self.resources.push(exposed);
        }
        for template in offer.templates.iter() {
            let mut exposed = template.clone();
            exposed.uri_template = expose(&template.uri_template);
            self.templates.push(exposed);
        }
        let routes = &mut self.uris;
        match prefix {
            Some(prefix) => {
                if let Some(first) = routes.prefixed.get(&prefix) {
                    warn!(prefix = %prefix, kept_by = %first.spec.name, server = %handle.spec.name, "two servers' namespaces make the same resource URI prefix");
                } else {
                    routes.prefixed.insert(prefix, handle.clone());
                }
            }
            None => {
                for resource in offer.resources.iter() {
                    routes
                        .exact
                        .entry(resource.uri.clone())
                        .or_insert_with(|| handle.clone());
                }
                for template in offer.templates.iter() {
                    routes
                        .templates
                        .push((template.uri_template.clone(), handle.clone()));
                }
                routes.unprefixed.push(handle.clone());
            }
        }
    }

    /// Tool names more than one server wanted, and how they were resolved.
    pub fn collisions(&self) -> &[Collision] {
        &self.collisions
    }

    /// Prompt names more than one server wanted.
    pub fn prompt_collisions(&self) -> &[Collision] {
        &self.prompt_collisions
    }

    /// Exposed names longer than [`MAX_TOOL_NAME_LEN`] characters.
    pub fn long_names(&self) -> &[String] {
        &self.long_names
    }

    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    /// A list's items as JSON; `None` if one does not encode.
    pub fn encoded(&self, list: List) -> Option<&[Box<RawValue>]> {
        self.encoded[list as usize]
            .get_or_init(|| match list {
                List::Tools => encode(&self.tools),
                List::Prompts => encode(&self.prompts),
                List::Resources => encode(&self.resources),
                List::ResourceTemplates => encode(&self.templates),
            })
            .as_deref()
    }

    pub fn prompts(&self) -> &[Prompt] {
        &self.prompts
    }

    /// The name (tools, prompts), URI (resources) or URI template
    /// (templates) of each of a list's items, in the list's order.
    pub fn names(&self, list: List) -> Vec<&str> {
        match list {
            List::Tools => self.tools.iter().map(|t| t.name.as_ref()).collect(),
            List::Prompts => self.prompts.iter().map(|p| p.name.as_str()).collect(),
            List::Resources => self.resources.iter().map(|r| r.uri.as_str()).collect(),
            List::ResourceTemplates => self
                .templates
                .iter()
                .map(|t| t.uri_template.as_str())
                .collect(),
        }
    }

    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    pub fn templates(&self) -> &[ResourceTemplate] {
        &self.templates
    }

    /// What the servers behind this catalog support, together.
    pub fn capabilities(&self) -> &ServerCapabilities {
        &self.capabilities
    }

    pub fn route(&self, tool: &str) -> Option<&Route> {
        self.tool_routes.get(tool)
    }

    /// The name clients call `server`'s tool `tool` by, if it is served.
    pub fn exposed_tool(&self, server: &str, tool: &str) -> Option<&str> {
        self.tool_routes
            .iter()
            .find(|(_, route)| &*route.server.spec.name == server && &*route.name == tool)
            .map(|(exposed, _)| &**exposed)
    }

    pub fn prompt_route(&self, prompt: &str) -> Option<&Route> {
        self.prompt_routes.get(prompt)
    }

    /// A client-facing resource URI as it routes: a known prefix in lower
    /// case (schemes are case-insensitive), the rest as written. Policies
    /// judge this form, so a prefix's case cannot get around them.
    pub fn canonical_uri<'a>(&self, uri: &'a str) -> std::borrow::Cow<'a, str> {
        match uri.split_once('+') {
            Some((prefix, rest))
                if prefix.bytes().any(|b| b.is_ascii_uppercase())
                    && self
                        .uris
                        .prefixed
                        .contains_key(prefix.to_ascii_lowercase().as_str()) =>
            {
                format!("{}+{rest}", prefix.to_ascii_lowercase()).into()
            }
            _ => uri.into(),
        }
    }

    /// The server a client-facing resource URI belongs to, and the URI the
    /// server knows. `template` says `uri` is a template (completion refs).
    pub fn resource_route(&self, uri: &str, template: bool) -> Option<Route> {
        let routes = &self.uris;
        let route = |server: &Arc<ServerHandle>, uri: &str| Route {
            server: server.clone(),
            name: uri.into(),
        };
        // Schemes are case-insensitive (RFC 3986).
        if let Some((prefix, rest)) = uri.split_once('+')
            && let Some(server) = routes.prefixed.get(prefix.to_ascii_lowercase().as_str())
        {
            return Some(route(server, rest));
        }
        let by_template = routes.templates.iter().find(|(t, _)| {
            if template {
                t == uri
            } else {
                template_matches(t, uri)
            }
        });
        let server = routes
            .exact
            .get(uri)
            .filter(|_| !template)
            .or(by_template.map(|(_, server)| server))
            .or(match routes.unprefixed.as_slice() {
                [only] => Some(only),
                _ => None,
            })?;
        Some(route(server, uri))
    }
}

/// Names each candidate: prefixed or not by its server's prefix mode, the
/// first free of (preferred, prefixed, prefixed~2, …) on a collision.
fn resolve_names(candidates: &[Candidate<'_>]) -> (Vec<String>, Vec<Collision>) {
    let prefixed = |c: &Candidate<'_>| {
        let spec = &c.handle.spec;
        format!("{}{}{}", spec.namespace, spec.naming.separator, c.base)
    };
    // How many servers want each bare name.
    let mut wanted: HashMap<&str, HashSet<&str>> = HashMap::new();
    for c in candidates {
        if c.handle.spec.naming.prefix_mode != PrefixMode::Always {
            wanted
                .entry(&c.base)
                .or_default()
                .insert(&c.handle.spec.name);
        }
    }
    let mut names = Vec::with_capacity(candidates.len());
    let mut owner: HashMap<String, String> = HashMap::new();
    let mut collisions: Vec<Collision> = Vec::new();
    for c in candidates {
        let server = c.handle.spec.name.to_string();
        let preferred = match c.handle.spec.naming.prefix_mode {
            PrefixMode::Always => prefixed(c),
            PrefixMode::Never => c.base.clone(),
            PrefixMode::Conditional if wanted.get(c.base.as_str()).is_some_and(|s| s.len() > 1) => {
                prefixed(c)
            }
            PrefixMode::Conditional => c.base.clone(),
        };
        let fallback = prefixed(c);
        let name = std::iter::once(preferred.clone())
            .chain(std::iter::once(fallback.clone()))
            .chain((2..).map(|n| format!("{fallback}~{n}")))
            .find(|name| !owner.contains_key(name))
            .unwrap_or(fallback);
        if name != preferred {
            let kept_by = owner.get(&preferred).cloned().unwrap_or_default();
            match collisions.iter_mut().find(|x| x.name == preferred) {
                Some(collision) => collision.renamed.push((server.clone(), name.clone())),
                None => collisions.push(Collision {
                    name: preferred.clone(),
                    kept_by,
                    renamed: vec![(server.clone(), name.clone())],
                }),
            }
        }
        owner.insert(name.clone(), server);
        names.push(name);
    }
    (names, collisions)
}

/// Whether `uri` is an expansion of an RFC 6570 level-1 `template`: each
/// `{var}` stands for a non-empty run up to the next literal part.
fn template_matches(template: &str, uri: &str) -> bool {
    let mut parts = template.split('{');
    let Some(mut rest) = uri.strip_prefix(parts.next().unwrap_or_default()) else {
        return false;
    };
    for part in parts {
        let Some((_, literal)) = part.split_once('}') else {
            return false;
        };
        if literal.is_empty() {
            if rest.is_empty() {
                return false;
            }
            rest = "";
            continue;
        }
        match rest.find(literal) {
            Some(at) if at > 0 => rest = &rest[at + literal.len()..],
            _ => return false,
        }
    }
    rest.is_empty()
}

fn encode<T: Serialize>(items: &[T]) -> Option<Encoded> {
    items
        .iter()
        .map(|item| serde_json::value::to_raw_value(item).ok())
        .collect()
}

// === impl Collision ===

impl Collision {
    /// `server=name` pairs for the log: who was renamed to what.
    fn renamed_list(&self) -> String {
        let pairs = self
            .renamed
            .iter()
            .map(|(server, name)| format!("{server}={name}"));
        pairs.collect::<Vec<_>>().join(",")
    }
}

// === impl List ===

impl List {
    pub fn from_method(method: &str) -> Option<Self> {
        Some(match method {
            "tools/list" => Self::Tools,
            "prompts/list" => Self::Prompts,
            "resources/list" => Self::Resources,
            "resources/templates/list" => Self::ResourceTemplates,
            _ => return None,
        })
    }

    pub fn method(self) -> &'static str {
        match self {
            Self::Tools => "tools/list",
            Self::Prompts => "prompts/list",
            Self::Resources => "resources/list",
            Self::ResourceTemplates => "resources/templates/list",
        }
    }

    /// The result's field holding the items.
    pub fn key(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources => "resources",
            Self::ResourceTemplates => "resourceTemplates",
        }
    }
}

// === impl CatalogReader ===

impl CatalogReader {
    pub fn load(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    /// Ticks whenever a list clients see changes.
    pub fn subscribe(&self) -> watch::Receiver<Changes> {
        self.changes.clone()
    }
}

/// Starts the single task that rebuilds the catalog on every server change.
pub fn spawn_builder(servers: Servers, cancel: CancellationToken) -> CatalogReader {
    let current = Arc::new(ArcSwap::from_pointee(Catalog::build(&servers)));
    let (changes_tx, changes) = watch::channel(Changes::default());
    let reader = CatalogReader {
        current: current.clone(),
        changes,
    };
    let mut changes = servers.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            let next = Catalog::build(&servers);
            let previous = current.load();
            if next.collisions != previous.collisions {
                for collision in &next.collisions {
                    warn!(name = %collision.name, kept_by = %collision.kept_by, renamed = %collision.renamed_list(), "tool name collision");
                }
            }
            if next.prompt_collisions != previous.prompt_collisions {
                for collision in &next.prompt_collisions {
                    warn!(name = %collision.name, kept_by = %collision.kept_by, renamed = %collision.renamed_list(), "prompt name collision");
                }
            }
            if next.long_names != previous.long_names && !next.long_names.is_empty() {
                warn!(names = %next.long_names.join(","), limit = MAX_TOOL_NAME_LEN, "tool names longer than LLM providers accept");
            }
            // Always store: a changed spec keeps the lists but replaces the handle.
            let tools = previous.tools != next.tools;
            let prompts = previous.prompts != next.prompts;
            let resources =
                previous.resources != next.resources || previous.templates != next.templates;
            current.store(Arc::new(next));
            if tools || prompts || resources {
                debug!(tools, prompts, resources, "catalog changed");
                changes_tx.send_modify(|changes| {
                    changes.tools += u64::from(tools);
                    changes.prompts += u64::from(prompts);
                    changes.resources += u64::from(resources);
                });
            }
        }
    });
    reader
}

#[cfg(test)]
mod tests {
    use super::template_matches;

    #[test]
    fn templates_match_their_expansions_only() {
        let template = "demo://resource/dynamic/text/{index}";
        assert!(template_matches(template, "demo://resource/dynamic/text/7"));
        assert!(!template_matches(template, "demo://resource/dynamic/text/"));
        assert!(!template_matches(
            template,
            "demo://resource/dynamic/blob/7"
        ));
        let template = "file:///{dir}/{name}.txt";
        assert!(template_matches(template, "file:///a/b.txt"));
        assert!(!template_matches(template, "file:///a/b.md"));
        assert!(template_matches("plain://x", "plain://x"));
        assert!(!template_matches("plain://x", "plain://xy"));
    }
}
