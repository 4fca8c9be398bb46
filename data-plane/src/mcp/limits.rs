//! What one declared client (`McpClient`) may use of a gateway it shares
//! with others: requests per second, as a token bucket (beyond it, 429
//! with `Retry-After`), sessions at once (counted by the session table,
//! `session.rs`), and per-session server connections at once (counted by
//! the servers, `downstream.rs`). Anonymous callers only meet the
//! gateway-wide caps.

use std::{collections::HashMap, sync::Arc, time::Duration};

use parking_lot::Mutex;
use prometheus_client::{
    collector::Collector, encoding::DescriptorEncoder, metrics::counter::Counter,
};
use tokio::time::Instant;

use crate::telemetry::metrics::encode_counters;

/// Per-client limits, as configured.
#[derive(Clone, Debug)]
pub struct ClientLimits {
    /// Sessions one client may hold at once.
    pub sessions: usize,
    /// Per-session server connections (processes, for stdio servers) one
    /// client's sessions may hold together.
    pub session_connections: usize,
    /// Average requests per second; 0: no limit.
    pub requests_per_second: f64,
    /// Requests at once above the average.
    pub burst: u32,
}

/// Buckets kept before the full ones are forgotten.
const PRUNE_AT: usize = 1024;

/// One token bucket per client; cheap to clone.
#[derive(Clone)]
pub struct RateLimits {
    rate: f64,
    burst: f64,
    buckets: Arc<Mutex<HashMap<Arc<str>, Bucket>>>,
    limited: Counter,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimits {
    pub fn new(limits: &ClientLimits) -> Self {
        Self {
            rate: limits.requests_per_second,
            burst: f64::from(limits.burst),
            buckets: Arc::default(),
            limited: Counter::default(),
        }
    }

    /// Takes a request's token from `client`'s bucket; when it is empty,
    /// how long until the next token.
    pub fn take(&self, client: &Arc<str>) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        // A full bucket is as good as none: forget those, so callers that
        // came once (every JWT subject, say) do not stay for ever.
        if buckets.len() >= PRUNE_AT {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, bucket| {
                let idle = now.saturating_duration_since(bucket.at).as_secs_f64();
                bucket.tokens + idle * rate < burst
            });
        }
        let bucket = buckets.entry(client.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refilled = now.saturating_duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refilled).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        self.limited.inc();
        Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RateLimits")
    }
}

impl Collector for RateLimits {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        encode_counters(
            &mut encoder,
            &[(
                "rate_limited",
                "Requests refused because their client was over its requests per second",
                &self.limited,
            )],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: f64, burst: u32) -> RateLimits {
        RateLimits::new(&ClientLimits {
            sessions: 1,
            session_connections: 1,
            requests_per_second: rate,
            burst,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_gets_its_burst_then_its_rate() {
        let rates = limits(2.0, 3);
        let (alice, bob): (Arc<str>, Arc<str>) = ("alice".into(), "bob".into());
        for _ in 0..3 {
            assert_eq!(rates.take(&alice), Ok(()));
        }
        let wait = rates.take(&alice).expect_err("the burst is spent");
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(rates.take(&bob), Ok(()), "each client has its own bucket");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(rates.take(&alice), Ok(()), "one token back");
        assert!(rates.take(&alice).is_err());
        // Idle for long: the bucket fills to the burst, no more.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert_eq!(rates.take(&alice), Ok(()));
        }
        assert!(rates.take(&alice).is_err());
        assert_eq!(rates.limited.get(), 3);
    }

    #[test]
    fn a_rate_of_zero_is_no_limit() {
        let rates = limits(0.0, 1);
        let alice: Arc<str> = "alice".into();
        for _ in 0..1000 {
            assert_eq!(rates.take(&alice), Ok(()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_of_callers_gone_quiet_are_forgotten() {
        let rates = limits(10.0, 5);
        for n in 0..PRUNE_AT {
            rates
                .take(&format!("caller-{n}").into())
                .expect("a first request");
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let busy: Arc<str> = "busy".into();
        for _ in 0..5 {
            rates.take(&busy).expect("within the burst");
        }
        assert_eq!(
            rates.buckets.lock().len(),
            1,
            "only the busy caller's is kept"
        );
        assert!(rates.take(&busy).is_err(), "and it is still empty");
    }
}
