//! The catalog: the merged, namespaced view of every ready server's tools,
//! rebuilt by one task whenever a server changes, and read lock-free by
//! every request. Subscribers are told when it changes (`list_changed`).

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwap;
use rmcp::model::Tool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{
    downstream::{ServerHandle, Servers},
    spec::NAME_SEPARATOR,
};

/// One immutable view of all tools.
#[derive(Default)]
pub struct Catalog {
    /// Tools as clients see them, namespaced, ordered by server then tool.
    tools: Vec<Tool>,
    routes: HashMap<Arc<str>, ToolRoute>,
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
        let mut catalog = Catalog::default();
        for handle in servers.list() {
            let Some((tools, listed)) = handle.routable_tools() else {
                continue;
            };
            for tool in tools.iter() {
                let name: Arc<str> =
                    format!("{}{NAME_SEPARATOR}{}", handle.spec.namespace, tool.name).into();
                if listed {
                    let mut exposed = tool.clone();
                    exposed.name = name.to_string().into();
                    catalog.tools.push(exposed);
                }
                catalog.routes.insert(
                    name,
                    ToolRoute {
                        server: handle.clone(),
                        tool: tool.name.as_ref().into(),
                    },
                );
            }
        }
        catalog
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
            // Always store: a changed spec keeps the tools but replaces the handle.
            let tools_changed = current.load().tools != next.tools;
            current.store(Arc::new(next));
            if tools_changed {
                debug!("catalog changed");
                generation_tx.send_modify(|g| *g += 1);
            }
        }
    });
    reader
}
