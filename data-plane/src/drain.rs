//! Drain, then stop. Work in flight holds a [`Blocker`]: a call to a
//! server, a POSTed message's answer still being written. When the gateway
//! is told to stop, [`Drain::start`] turns readiness off and makes the
//! edge refuse new requests (`mcp/guard.rs`), and [`Drain::wait`] resolves
//! once the last blocker is gone, so servers and sessions are stopped only
//! after what clients were promised has been answered.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::gauge::ConstGauge,
};
use tokio::sync::Notify;

/// The replica's drain state; cheap to clone. Taking and dropping a
/// blocker is two atomic operations: it sits on every call's path.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    state: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    /// Woken when the last blocker goes.
    idle: Notify,
}

/// Holds off the end of the drain while it lives.
#[derive(Debug)]
#[must_use = "a blocker holds the drain only while it lives"]
pub struct Blocker {
    state: Arc<State>,
}

// === impl Drain ===

impl Drain {
    /// Counts one piece of work in flight until the blocker is dropped.
    /// Always granted: whether new work is taken is the edge's decision.
    pub fn blocker(&self) -> Blocker {
        self.state.in_flight.fetch_add(1, Ordering::AcqRel);
        Blocker {
            state: self.state.clone(),
        }
    }

    /// From now on the replica is not ready and takes no new requests.
    pub fn start(&self) {
        self.state.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.state.draining.load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::Acquire)
    }

    /// Resolves when nothing holds a blocker any more.
    pub async fn wait(&self) {
        loop {
            // Registered before the count is read, so a blocker dropped in
            // between still wakes this wait.
            let idle = self.state.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Drop for Blocker {
    fn drop(&mut self) {
        if self.state.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.state.idle.notify_waiters();
        }
    }
}

impl Collector for Drain {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let draining = ConstGauge::new(i64::from(self.is_draining()));
        draining.encode(encoder.encode_descriptor(
            "draining",
            "1 once the replica is stopping: not ready, refusing new requests",
            None,
            draining.metric_type(),
        )?)?;
        let in_flight = ConstGauge::new(i64::try_from(self.in_flight()).unwrap_or(i64::MAX));
        in_flight.encode(encoder.encode_descriptor(
            "drain_in_flight",
            "Requests and calls in flight: what a stop would wait for",
            None,
            in_flight.metric_type(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_drain_ends_when_the_last_blocker_goes() {
        let drain = Drain::default();
        let first = drain.blocker();
        let second = drain.blocker();
        drain.start();
        assert!(drain.is_draining());
        assert_eq!(drain.in_flight(), 2);
        let waiting = tokio::spawn({
            let drain = drain.clone();
            async move { drain.wait().await }
        });
        drop(first);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "one blocker is left");
        // Work that joins an ongoing call still counts.
        let joined = drain.blocker();
        drop(second);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "the joined blocker is left");
        drop(joined);
        waiting.await.expect("the drain ends");
        assert_eq!(drain.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_in_flight_drains_at_once() {
        let drain = Drain::default();
        drain.start();
        drain.wait().await;
    }
}
