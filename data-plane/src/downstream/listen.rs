//! A connection's `subscriptions/listen` stream to a server of MCP
//! 2026-07-28, which tells of changes only to a client that listens: the
//! list changes its capabilities announce, and updates of the resources
//! clients subscribed to (that revision has no `resources/subscribe`; the
//! gateway's clients' subscriptions become the stream's URIs). Each
//! connection listens for itself (a stdio process each, whose lists may
//! differ; a per-session connection for its own session's URIs). The
//! stream is opened again when the URIs change (the old one is kept until
//! the new one is acknowledged) and, with backoff, when the server ends it.

use std::{collections::BTreeSet, future::Future, pin::Pin, time::Duration};

use rmcp::{
    model::{ServerNotification, SubscriptionFilter},
    service::{Peer, RoleClient, Subscription},
};
use tokio::{sync::watch, time::Instant};
use tracing::{debug, warn};

use super::{SessionKey, Watched};

/// How long a server may take to acknowledge `subscriptions/listen`.
const ACKNOWLEDGED_WITHIN: Duration = Duration::from_secs(10);
/// Backoff before listening again after a stream ended or was refused.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// What a listening connection heard.
pub(super) enum Change {
    /// The server's tools, prompts or resources changed.
    Lists,
    /// A watched resource (the server's URI) changed.
    Resource(String),
}

type Opening = Pin<Box<dyn Future<Output = Result<Subscription, String>> + Send>>;

/// Keeps one connection listening.
pub(super) struct Listener {
    peer: Peer<RoleClient>,
    /// The session a per-session connection serves: only its URIs.
    session: Option<SessionKey>,
    watched: watch::Receiver<Watched>,
    /// The URIs the open (or opening) stream asks for.
    uris: BTreeSet<String>,
    open: Option<Subscription>,
    opening: Option<Opening>,
    retry_at: Option<Instant>,
    failures: u32,
}

impl Listener {
    /// Starts listening on a 2026-07-28 connection (`stateless`).
    pub(super) fn new(
        peer: Peer<RoleClient>,
        session: Option<SessionKey>,
        mut watched: watch::Receiver<Watched>,
    ) -> Self {
        let uris = wanted(&watched.borrow_and_update(), session);
        let mut listener = Self {
            peer,
            session,
            watched,
            uris,
            open: None,
            opening: None,
            retry_at: None,
            failures: 0,
        };
        listener.start();
        listener
    }

    /// The next change heard; pending for ever on a connection with
    /// nothing to listen for. Cancel-safe: what is under way stays here.
    pub(super) async fn next(&mut self) -> Change {
        loop {
            tokio::select! {
                opened = opened(&mut self.opening) => {
                    self.opening = None;
                    match opened {
                        Ok(subscription) => {
                            // The stream it replaces is cancelled as it drops.
                            self.open = Some(subscription);
                            self.failures = 0;
                        }
                        // A stream already open goes on with the URIs it had.
                        Err(error) => self.retry_later(&error),
                    }
                }
                Ok(()) = self.watched.changed() => {
                    let uris = wanted(&self.watched.borrow_and_update(), self.session);
                    if uris != self.uris {
                        self.uris = uris;
                        self.start();
                    }
                }
                heard = heard(&mut self.open) => match heard {
                    Some(change) => return change,
                    None => {
                        self.open = None;
                        self.retry_later("the server ended the stream");
                    }
                },
                () = sleep_until(self.retry_at) => {
                    self.retry_at = None;
                    self.start();
                }
            }
        }
    }

    /// Opens a stream for what there is to listen for now (none: any
    /// open one is closed).
    fn start(&mut self) {
        let Some(filter) = filter(&self.peer, &self.uris) else {
            self.open = None;
            self.opening = None;
            return;
        };
        let peer = self.peer.clone();
        self.opening = Some(Box::pin(async move {
            match tokio::time::timeout(ACKNOWLEDGED_WITHIN, peer.listen(filter)).await {
                Ok(Ok(subscription)) => Ok(subscription),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err(format!("not acknowledged within {ACKNOWLEDGED_WITHIN:?}")),
            }
        }));
    }

    fn retry_later(&mut self, why: &str) {
        let delay = FIRST_RETRY
            .saturating_mul(1 << self.failures.min(6))
            .min(MAX_RETRY);
        self.failures += 1;
        if self.failures == 1 {
            debug!(why, retry_in = ?delay, "subscriptions/listen ended: listening again");
        } else {
            warn!(why, retry_in = ?delay, failures = self.failures, "subscriptions/listen failed: changes go unnoticed until it is open again");
        }
        self.retry_at = Some(Instant::now() + delay);
    }
}

/// The URIs a connection listens for: its session's (per-session), or all.
fn wanted(watched: &Watched, session: Option<SessionKey>) -> BTreeSet<String> {
    watched
        .iter()
        .filter(|(_, sessions)| session.is_none_or(|key| sessions.contains(&key)))
        .map(|(uri, _)| uri.clone())
        .collect()
}

/// What to ask for: the list changes the server announces, and `uris`
/// where it offers resource subscriptions; `None`: nothing.
fn filter(peer: &Peer<RoleClient>, uris: &BTreeSet<String>) -> Option<SubscriptionFilter> {
    let capabilities = peer.peer_info()?.capabilities.clone();
    let announces = |list_changed: Option<Option<bool>>| list_changed.flatten() == Some(true);
    let mut filter = SubscriptionFilter::builder();
    let mut any = false;
    if announces(capabilities.tools.map(|c| c.list_changed)) {
        filter = filter.tools_list_changed();
        any = true;
    }
    if announces(capabilities.prompts.map(|c| c.list_changed)) {
        filter = filter.prompts_list_changed();
        any = true;
    }
    let resources = capabilities.resources.unwrap_or_default();
    if announces(Some(resources.list_changed)) {
        filter = filter.resources_list_changed();
        any = true;
    }
    if resources.subscribe == Some(true) && !uris.is_empty() {
        filter = filter.resource_subscriptions(uris.iter().cloned());
        any = true;
    }
    any.then(|| filter.build())
}

async fn opened(opening: &mut Option<Opening>) -> Result<Subscription, String> {
    match opening {
        Some(opening) => opening.await,
        None => std::future::pending().await,
    }
}

/// The next change on the open stream; `None` once it ended (the server
/// ended it, rmcp gave up on it as lagging, or the connection broke).
async fn heard(open: &mut Option<Subscription>) -> Option<Change> {
    let Some(subscription) = open else {
        return std::future::pending().await;
    };
    loop {
        match subscription.next().await {
            Ok(Some(
                ServerNotification::ToolListChangedNotification(_)
                | ServerNotification::PromptListChangedNotification(_)
                | ServerNotification::ResourceListChangedNotification(_),
            )) => return Some(Change::Lists),
            Ok(Some(ServerNotification::ResourceUpdatedNotification(updated))) => {
                return Some(Change::Resource(updated.params.uri));
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
