//! The client sessions connected to this replica, as the relay needs them:
//! how to reach each one (its outbox: the stream a client reads what comes
//! outside its requests from), the log level it asked for, and the
//! resources it subscribed to. Notifications a server sends outside any
//! request (log messages, `resources/updated`, list changes) are delivered
//! through here, only to the sessions that asked for them. What travels to
//! a client on a stream ([`ToStream`]) is defined here too: the relay puts
//! it on streams, the session layer (`mcp/session.rs`) writes it out.

// Logging is deprecated by SEP-2577 but clients on older protocol
// versions still use it, so the relay keeps serving it.
#![allow(deprecated)]

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
};

use axum::body::Bytes;
use parking_lot::{Mutex, RwLock};
use rmcp::{
    ErrorData,
    model::{
        ClientResult, LoggingLevel, ProgressNotificationParam, RequestId, ServerNotification,
        ServerRequest,
    },
};
use tokio::sync::{mpsc, oneshot};

/// Identifies a client session on this replica.
pub type SessionKey = u64;

/// Every connected client session; cheap to clone.
#[derive(Clone, Default)]
pub struct Clients {
    by_key: Arc<RwLock<HashMap<SessionKey, Arc<ClientSession>>>>,
}

/// What a server (or the gateway) sends a client on one of its streams.
/// The large messages are boxed: a stream's buffer is allocated for its
/// largest item, and every session and many requests have one.
pub enum ToStream {
    Progress(Box<ProgressNotificationParam>),
    /// A server request under an id of the gateway's; the client's answer,
    /// when it POSTs one, goes to `answer_to`.
    Request {
        id: RequestId,
        request: Box<ServerRequest>,
        answer_to: oneshot::Sender<Result<ClientResult, ErrorData>>,
    },
    /// The server stopped waiting for its request (it cancelled it, or the
    /// client took too long): the client is told.
    Withdrawn(RequestId),
    Notification(Box<ServerNotification>),
    /// A JSON-RPC response, encoded (legacy SSE answers on the session's
    /// one stream).
    Answer(Bytes),
}

/// One client session.
pub struct ClientSession {
    pub key: SessionKey,
    /// The authenticated client that opened it, if any.
    pub owner: Option<Arc<str>>,
    /// The session's own stream: what belongs to none of its requests.
    pub outbox: mpsc::Sender<ToStream>,
    /// Set by `logging/setLevel`; no log messages before that.
    log_level: Mutex<Option<LoggingLevel>>,
    /// Client-facing URIs this session subscribed to.
    subscriptions: Mutex<HashSet<String>>,
    /// How a server's question reaches the client ([`Asking`]).
    asking: AtomicU8,
    /// Another replica opened the session (`mcp/session.rs` adopted it).
    moved: AtomicBool,
}

/// How a server's question (sampling, elicitation, roots) reaches a
/// session's client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Asking {
    /// As a request on a stream the client reads.
    Directly,
    /// Not at all: a one-off request's session (REST).
    Never,
    /// On the session's outbox, which turns it into an input-required
    /// round (MCP 2026-07-28, `mcp/rounds.rs`).
    InRounds,
}

// === impl Clients ===

impl Clients {
    pub fn register(
        &self,
        key: SessionKey,
        owner: Option<Arc<str>>,
        outbox: mpsc::Sender<ToStream>,
    ) -> Arc<ClientSession> {
        let session = Arc::new(ClientSession {
            key,
            owner,
            outbox,
            log_level: Mutex::new(None),
            subscriptions: Mutex::default(),
            asking: AtomicU8::new(Asking::Directly as u8),
            moved: AtomicBool::new(false),
        });
        self.by_key.write().insert(key, session.clone());
        session
    }

    pub fn remove(&self, key: SessionKey) {
        self.by_key.write().remove(&key);
    }

    pub fn get(&self, key: SessionKey) -> Option<Arc<ClientSession>> {
        self.by_key.read().get(&key).cloned()
    }

    /// The authenticated client a session belongs to.
    pub fn owner_of(&self, key: SessionKey) -> Option<Arc<str>> {
        self.by_key.read().get(&key)?.owner.clone()
    }

    /// Every session.
    pub fn all(&self) -> Vec<Arc<ClientSession>> {
        self.matching(|_| true)
    }

    /// Sessions whose log level lets a message of `level` through.
    pub fn logging_at(&self, level: LoggingLevel) -> Vec<Arc<ClientSession>> {
        self.matching(|session| session.wants_log(level))
    }

    /// The most verbose level any session asked for.
    pub fn most_verbose_level(&self) -> Option<LoggingLevel> {
        self.by_key
            .read()
            .values()
            .filter_map(|s| *s.log_level.lock())
            .min_by_key(|level| severity(*level))
    }

    /// Sessions subscribed to a client-facing URI.
    pub fn subscribed_to(&self, uri: &str) -> Vec<Arc<ClientSession>> {
        self.matching(|session| session.is_subscribed(uri))
    }

    /// Whether any session other than `except` is subscribed to `uri`.
    pub fn others_subscribed(&self, uri: &str, except: SessionKey) -> bool {
        self.by_key
            .read()
            .values()
            .any(|s| s.key != except && s.is_subscribed(uri))
    }

    fn matching(&self, wanted: impl Fn(&ClientSession) -> bool) -> Vec<Arc<ClientSession>> {
        self.by_key
            .read()
            .values()
            .filter(|s| wanted(s))
            .cloned()
            .collect()
    }
}

// === impl ClientSession ===

impl ClientSession {
    pub fn asking(&self) -> Asking {
        match self.asking.load(Ordering::Relaxed) {
            1 => Asking::Never,
            2 => Asking::InRounds,
            _ => Asking::Directly,
        }
    }

    pub fn set_asking(&self, asking: Asking) {
        self.asking.store(asking as u8, Ordering::Relaxed);
    }

    /// Whether another replica opened the session.
    pub fn moved(&self) -> bool {
        self.moved.load(Ordering::Relaxed)
    }

    pub fn set_moved(&self) {
        self.moved.store(true, Ordering::Relaxed);
    }

    /// Sends a notification on the session's own stream. Best effort: a
    /// client that reads none (or too slowly) misses it rather than hold up
    /// the server that sent it.
    pub fn notify(&self, notification: ServerNotification) {
        let _ = self
            .outbox
            .try_send(ToStream::Notification(Box::new(notification)));
    }

    pub fn set_log_level(&self, level: LoggingLevel) {
        *self.log_level.lock() = Some(level);
    }

    pub fn wants_log(&self, level: LoggingLevel) -> bool {
        allows(*self.log_level.lock(), level)
    }

    pub fn is_subscribed(&self, uri: &str) -> bool {
        self.subscriptions.lock().contains(uri)
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.lock().len()
    }

    /// Records a subscription; `false` if it was already there.
    pub fn subscribe(&self, uri: &str) -> bool {
        self.subscriptions.lock().insert(uri.to_owned())
    }

    /// Drops a subscription; `false` if there was none.
    pub fn unsubscribe(&self, uri: &str) -> bool {
        self.subscriptions.lock().remove(uri)
    }
}

/// Whether a client that asked for `minimum` gets a message at `level`.
fn allows(minimum: Option<LoggingLevel>, level: LoggingLevel) -> bool {
    minimum.is_some_and(|minimum| severity(level) >= severity(minimum))
}

/// RFC 5424 order, least severe first.
fn severity(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_filter_by_severity() {
        assert!(!allows(None, LoggingLevel::Emergency), "no level set");
        let warning = Some(LoggingLevel::Warning);
        assert!(!allows(warning, LoggingLevel::Info));
        assert!(allows(warning, LoggingLevel::Warning));
        assert!(allows(warning, LoggingLevel::Critical));
    }
}
