//! Connections to one server and how calls get one. In shared mode a call
//! takes the least-busy connection with room (`pool.maxConcurrency`),
//! asks the supervisor for another connection when all are full and the
//! pool may grow, and waits up to `pool.acquireTimeout` for room.
//!
//! Exclusive acquisition (for a server that asks clients things, where
//! nothing on a stdio pipe says which client a question is for): a call
//! takes only a connection carrying no other client session's calls, so
//! whatever the server asks while it runs has one session to go to.

use std::{
    collections::HashMap,
    ops::Deref,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use parking_lot::{Mutex, RwLock};
use rmcp::service::{Peer, RoleClient};
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{lines::Direct, relay::Relay};
use crate::clients::SessionKey;

/// One live connection (one process, for stdio).
pub struct Connection {
    pub id: u64,
    pub peer: Peer<RoleClient>,
    /// Routes what the server sends back to the clients it concerns.
    pub relay: Arc<Relay>,
    /// Requests past rmcp (stdio connections).
    pub direct: Option<Arc<Direct>>,
    in_flight: AtomicU32,
    /// Client sessions with calls in flight here, and how many each.
    sessions: Mutex<HashMap<SessionKey, u32>>,
    last_used: Mutex<Instant>,
    /// Cancelled to ask the connection's task to shut it down.
    pub stop: CancellationToken,
}

/// One call of a client session in flight on a connection, until dropped.
pub struct InFlight<'a> {
    connection: Arc<Connection>,
    session: SessionKey,
    pool: &'a Pool,
}

/// The shared connections of one server.
#[derive(Default)]
pub struct Pool {
    connections: RwLock<Vec<Arc<Connection>>>,
    /// Woken when a slot frees up or a connection is added.
    available: Notify,
    /// Held while an exclusive call picks its connection and counts
    /// itself on it, so two sessions never both take the last one.
    picking: Mutex<()>,
    /// A connection is being started on behalf of waiting calls.
    growing: AtomicBool,
    next_id: AtomicU64,
}

/// Why no connection could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireError {
    /// Every connection stayed full for the acquire timeout.
    Busy,
    /// There is no connection at all (the server is down).
    Down,
}

// === impl Connection ===

impl Connection {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn idle_for(&self) -> Duration {
        if self.in_flight() > 0 {
            return Duration::ZERO;
        }
        self.last_used.lock().elapsed()
    }

    /// Whether no client session but (maybe) `session` has calls here.
    fn serves_only(&self, session: SessionKey) -> bool {
        self.sessions.lock().keys().all(|s| *s == session)
    }

    fn serves(&self, session: SessionKey) -> bool {
        self.sessions.lock().contains_key(&session)
    }
}

impl Deref for InFlight<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.connection
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let connection = &self.connection;
        *connection.last_used.lock() = Instant::now();
        {
            let mut sessions = connection.sessions.lock();
            if let Some(calls) = sessions.get_mut(&self.session) {
                *calls -= 1;
                if *calls == 0 {
                    sessions.remove(&self.session);
                }
            }
        }
        connection.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.pool.available.notify_waiters();
    }
}

// === impl Pool ===

impl Pool {
    /// Wraps a new peer as a connection; not yet in the pool.
    pub fn connection(
        &self,
        peer: Peer<RoleClient>,
        relay: Arc<Relay>,
        direct: Option<Arc<Direct>>,
    ) -> Arc<Connection> {
        Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            peer,
            relay,
            direct,
            in_flight: AtomicU32::new(0),
            sessions: Mutex::default(),
            last_used: Mutex::new(Instant::now()),
            stop: CancellationToken::new(),
        })
    }

    pub fn add(&self, connection: Arc<Connection>) {
        self.connections.write().push(connection);
        self.growing.store(false, Ordering::Release);
        self.available.notify_waiters();
    }

    pub fn remove(&self, id: u64) -> Option<Arc<Connection>> {
        let mut connections = self.connections.write();
        let index = connections.iter().position(|c| c.id == id)?;
        Some(connections.swap_remove(index))
    }

    pub fn len(&self) -> usize {
        self.connections.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn all(&self) -> Vec<Arc<Connection>> {
        self.connections.read().clone()
    }

    pub fn in_flight(&self) -> u32 {
        self.connections.read().iter().map(|c| c.in_flight()).sum()
    }

    /// A grow request failed or was dropped: let the next waiter ask again.
    pub fn grow_done(&self) {
        self.growing.store(false, Ordering::Release);
        self.available.notify_waiters();
    }

    /// Counts a call of `session` in flight on `connection` until the
    /// guard drops.
    pub fn begin(&self, connection: Arc<Connection>, session: SessionKey) -> InFlight<'_> {
        connection.in_flight.fetch_add(1, Ordering::AcqRel);
        *connection.sessions.lock().entry(session).or_default() += 1;
        InFlight {
            connection,
            session,
            pool: self,
        }
    }

    /// Takes the least-busy connection with room for a call of `session`
    /// (with `exclusive`, one no other session's calls are on, preferring
    /// one already carrying this session's). When none has room and
    /// `may_grow` says the pool may grow, `grow` is called once (until the
    /// new connection arrives or [`Pool::grow_done`]).
    pub async fn acquire(
        &self,
        session: SessionKey,
        exclusive: bool,
        max_concurrency: u32,
        timeout: Duration,
        may_grow: impl Fn(usize) -> bool,
        grow: impl Fn(),
    ) -> Result<InFlight<'_>, AcquireError> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Only exclusive picks race each other for the same idle
            // connection; shared ones may land together as before.
            let picking = exclusive.then(|| self.picking.lock());
            let (best, count) = {
                let connections = self.connections.read();
                let best = connections
                    .iter()
                    .filter(|c| c.in_flight() < max_concurrency && !c.stop.is_cancelled())
                    .filter(|c| !exclusive || c.serves_only(session))
                    .min_by_key(|c| (exclusive && !c.serves(session), c.in_flight()))
                    .cloned();
                (best, connections.len())
            };
            if let Some(connection) = best {
                let in_flight = self.begin(connection, session);
                drop(picking);
                return Ok(in_flight);
            }
            drop(picking);
            if may_grow(count) && !self.growing.swap(true, Ordering::AcqRel) {
                grow();
            }
            if count == 0 && !self.growing.load(Ordering::Acquire) {
                return Err(AcquireError::Down);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(if count == 0 {
                    AcquireError::Down
                } else {
                    AcquireError::Busy
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Peers need a live service; pool arithmetic is covered end to end
    // (tests/scenarios/resilience.rs). Here: the acquire contract when empty.
    #[tokio::test(start_paused = true)]
    async fn empty_pool_that_cannot_grow_is_down_at_once() {
        let pool = Pool::default();
        let result = pool
            .acquire(1, false, 1, Duration::from_secs(10), |_| false, || {})
            .await;
        assert_eq!(result.err(), Some(AcquireError::Down));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_growth_times_out_as_down() {
        let pool = Pool::default();
        let asked = std::sync::atomic::AtomicU32::new(0);
        let result = pool
            .acquire(
                1,
                false,
                1,
                Duration::from_secs(1),
                |count| count < 2,
                || {
                    asked.fetch_add(1, Ordering::Relaxed);
                },
            )
            .await;
        assert_eq!(result.err(), Some(AcquireError::Down));
        assert_eq!(asked.load(Ordering::Relaxed), 1, "grow is asked once");
    }
}
