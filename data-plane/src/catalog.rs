//! The catalog: the merged view of every ready server's tools, named by
//! each server's naming rules (prefix mode, separator, include/exclude,
//! renames, descriptions), rebuilt by one task whenever a server changes,
//! and read lock-free by every request. Name collisions are resolved
//! deterministically (servers in name order; the first keeps a contested
//! name, later ones get it prefixed) and reported, never dropped.
//! Subscribers are told when it changes (`list_changed`).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use arc_swap::ArcSwap;
use rmcp::model::Tool;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    downstream::{ServerHandle, Servers},
    spec::PrefixMode,
};

/// Longest tool name common LLM providers accept.
pub const MAX_TOOL_NAME_LEN: usize = 64;

/// One immutable view of all tools.
#[derive(Default)]
pub struct Catalog {
    /// Tools as clients see them, namespaced, ordered by server then tool.
    tools: Vec<Tool>,
    routes: HashMap<Arc<str>, ToolRoute>,
    /// Names two servers wanted, and how each was resolved.
    collisions: Vec<Collision>,
    /// Exposed names longer than [`MAX_TOOL_NAME_LEN`].
    long_names: Vec<String>,
}

/// A name more than one server wanted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Collision {
    pub name: String,
    /// The server that keeps the name (first by server name).
    pub kept_by: String,
    /// The other servers and the names their tools got instead.
    pub renamed: Vec<(String, String)>,
}

/// A tool on its way into the catalog.
struct Candidate<'a> {
    handle: &'a Arc<ServerHandle>,
    tool: &'a Tool,
    /// After `rename`, before any prefix.
    base: String,
    listed: bool,
}

/// Where a namespaced tool goes.
#[derive(Clone)]
pub struct ToolRoute {
    pub server: Arc<ServerHandle>,
    /// The tool's name on its server.
    pub tool: Arc<str>,
}

/// The current catalog and its change notifications; cheap to clone.
#[derive(Clone)]
pub struct CatalogReader {
    current: Arc<ArcSwap<Catalog>>,
    generation: watch::Receiver<u64>,
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
                let (tools, listed) = handle.routable_tools()?;
                Some((handle, tools, listed))
            })
            .collect();
        let mut candidates = Vec::new();
        for (handle, tools, listed) in &ready {
            let naming = &handle.spec.naming;
            for tool in tools.iter().filter(|t| naming.serves(&t.name)) {
                let base = naming
                    .rename
                    .get(tool.name.as_ref())
                    .cloned()
                    .unwrap_or_else(|| tool.name.to_string());
                candidates.push(Candidate {
                    handle,
                    tool,
                    base,
                    listed: *listed,
                });
            }
        }
        Self::from_candidates(&candidates)
    }

    fn from_candidates(candidates: &[Candidate<'_>]) -> Self {
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
        let mut catalog = Catalog::default();
        let mut owner: HashMap<String, String> = HashMap::new();
        let mut collisions: Vec<Collision> = Vec::new();
        for c in candidates {
            let server = c.handle.spec.name.to_string();
            let preferred = match c.handle.spec.naming.prefix_mode {
                PrefixMode::Always => prefixed(c),
                PrefixMode::Never => c.base.clone(),
                PrefixMode::Conditional
                    if wanted.get(c.base.as_str()).is_some_and(|s| s.len() > 1) =>
                {
                    prefixed(c)
                }
                PrefixMode::Conditional => c.base.clone(),
            };
            // The first free name of: preferred, prefixed, prefixed~2, …
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
            if name.len() > MAX_TOOL_NAME_LEN {
                catalog.long_names.push(name.clone());
            }
            let name: Arc<str> = name.into();
            if c.listed {
                let mut exposed = c.tool.clone();
                exposed.name = name.to_string().into();
                if let Some(description) =
                    c.handle.spec.naming.descriptions.get(c.tool.name.as_ref())
                {
                    exposed.description = Some(description.clone().into());
                }
                catalog.tools.push(exposed);
            }
            catalog.routes.insert(
                name,
                ToolRoute {
                    server: c.handle.clone(),
                    tool: c.tool.name.as_ref().into(),
                },
            );
        }
        catalog.collisions = collisions;
        catalog
    }

    /// Names more than one server wanted, and how they were resolved.
    pub fn collisions(&self) -> &[Collision] {
        &self.collisions
    }

    /// Exposed names longer than [`MAX_TOOL_NAME_LEN`] characters.
    pub fn long_names(&self) -> &[String] {
        &self.long_names
    }

    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    pub fn route(&self, name: &str) -> Option<&ToolRoute> {
        self.routes.get(name)
    }
}

// === impl CatalogReader ===

impl CatalogReader {
    pub fn load(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    /// Ticks whenever the set of tools changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.clone()
    }
}

/// Starts the single task that rebuilds the catalog on every server change.
pub fn spawn_builder(servers: Servers, cancel: CancellationToken) -> CatalogReader {
    let current = Arc::new(ArcSwap::from_pointee(Catalog::build(&servers)));
    let (generation_tx, generation) = watch::channel(0u64);
    let reader = CatalogReader {
        current: current.clone(),
        generation,
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
                    warn!(name = %collision.name, kept_by = %collision.kept_by, renamed = ?collision.renamed, "tool name collision");
                }
            }
            if next.long_names != previous.long_names && !next.long_names.is_empty() {
                warn!(names = ?next.long_names, limit = MAX_TOOL_NAME_LEN, "tool names longer than LLM providers accept");
            }
            // Always store: a changed spec keeps the tools but replaces the handle.
            let tools_changed = previous.tools != next.tools;
            current.store(Arc::new(next));
            if tools_changed {
                debug!("catalog changed");
                generation_tx.send_modify(|g| *g += 1);
            }
        }
    });
    reader
}
