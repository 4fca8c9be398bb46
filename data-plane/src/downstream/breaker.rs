//! Circuit breaker: closed → open after too many failures (consecutive, or
//! a failure rate over a sliding window) → half-open after the open period,
//! letting a few trial calls through → closed when they all succeed, open
//! again when one fails. Pure state; the caller says what counts as failure.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::spec::BreakerSpec;

/// Buckets of the sliding failure-rate window.
const BUCKETS: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// A call may not proceed: the breaker is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub retry_in: Duration,
}

// === impl BreakerState ===

impl BreakerState {
    /// The name `/healthz` and the logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "halfOpen",
        }
    }
}

/// Permission for one call; report its outcome with [`Breaker::record`].
#[derive(Debug)]
#[must_use]
pub struct Permit {
    trial: bool,
}

pub struct Breaker {
    spec: BreakerSpec,
    inner: Mutex<Inner>,
}

struct Inner {
    state: State,
    consecutive_failures: u32,
    window: Window,
}

enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { started: u32, succeeded: u32 },
}

/// Calls and failures in `BUCKETS` slices of the window, each tagged with
/// the period (bucket-length steps since `origin`) it counts.
struct Window {
    origin: Instant,
    bucket_len: Duration,
    buckets: [(u64, u32, u32); BUCKETS],
}

// === impl Breaker ===

impl Breaker {
    pub fn new(spec: BreakerSpec) -> Self {
        let bucket_len = spec.window / BUCKETS as u32;
        Self {
            spec,
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive_failures: 0,
                window: Window::new(bucket_len),
            }),
        }
    }

    /// Whether a call may go through now.
    pub fn try_acquire(&self) -> Result<Permit, Rejected> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        match inner.state {
            State::Closed => Ok(Permit { trial: false }),
            State::Open { until } if now < until => Err(Rejected {
                retry_in: until - now,
            }),
            State::Open { .. } => {
                inner.state = State::HalfOpen {
                    started: 1,
                    succeeded: 0,
                };
                Ok(Permit { trial: true })
            }
            State::HalfOpen {
                ref mut started, ..
            } if *started < self.spec.half_open_probes => {
                *started += 1;
                Ok(Permit { trial: true })
            }
            State::HalfOpen { .. } => Err(Rejected {
                retry_in: Duration::ZERO,
            }),
        }
    }

    /// Records a call's outcome. Returns true when the state changed.
    pub fn record(&self, permit: Permit, failed: bool) -> bool {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let before = inner.state();
        inner.window.record(now, failed);
        if failed {
            inner.consecutive_failures += 1;
        } else {
            inner.consecutive_failures = 0;
        }
        let trips = failed && self.should_open(&inner, now);
        match inner.state {
            State::HalfOpen { .. } if failed && permit.trial => self.open(&mut inner, now),
            State::HalfOpen {
                ref mut succeeded, ..
            } if permit.trial => {
                *succeeded += 1;
                if *succeeded >= self.spec.half_open_probes {
                    inner.state = State::Closed;
                    inner.consecutive_failures = 0;
                    inner.window = Window::new(inner.window.bucket_len);
                }
            }
            State::Closed if trips => self.open(&mut inner, now),
            _ => {}
        }
        inner.state() != before
    }

    /// The state now; an expired open period reads as half-open.
    pub fn state(&self) -> BreakerState {
        let inner = self.inner.lock();
        match inner.state {
            State::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            _ => inner.state(),
        }
    }

    /// When an open breaker turns half-open, if it is open.
    pub fn open_until(&self) -> Option<Instant> {
        match self.inner.lock().state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    fn should_open(&self, inner: &Inner, now: Instant) -> bool {
        let spec = &self.spec;
        if spec.consecutive_failures > 0 && inner.consecutive_failures >= spec.consecutive_failures
        {
            return true;
        }
        let (calls, failures) = inner.window.totals(now);
        spec.failure_rate > 0.0
            && calls >= spec.min_requests.max(1)
            && f64::from(failures) / f64::from(calls) >= spec.failure_rate
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        inner.state = State::Open {
            until: now + self.spec.open,
        };
    }
}

// === impl Inner ===

impl Inner {
    fn state(&self) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

// === impl Window ===

impl Window {
    fn new(bucket_len: Duration) -> Self {
        Self {
            origin: Instant::now(),
            bucket_len: bucket_len.max(Duration::from_millis(1)),
            buckets: [(0, 0, 0); BUCKETS],
        }
    }

    fn period(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin);
        u64::try_from(elapsed.as_nanos() / self.bucket_len.as_nanos()).unwrap_or(u64::MAX)
    }

    fn record(&mut self, now: Instant, failed: bool) {
        let period = self.period(now);
        let bucket = &mut self.buckets[(period % BUCKETS as u64) as usize];
        if bucket.0 != period {
            *bucket = (period, 0, 0);
        }
        bucket.1 += 1;
        bucket.2 += u32::from(failed);
    }

    fn totals(&self, now: Instant) -> (u32, u32) {
        let period = self.period(now);
        self.buckets
            .iter()
            .filter(|(p, ..)| p + BUCKETS as u64 > period)
            .fold((0, 0), |(c, f), (_, calls, failures)| {
                (c + calls, f + failures)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(consecutive: u32, rate: f64) -> BreakerSpec {
        BreakerSpec {
            consecutive_failures: consecutive,
            failure_rate: rate,
            min_requests: 4,
            window: Duration::from_secs(10),
            open: Duration::from_secs(5),
            half_open_probes: 2,
            ..BreakerSpec::default()
        }
    }

    fn call(breaker: &Breaker, failed: bool) -> Result<bool, Rejected> {
        let permit = breaker.try_acquire()?;
        Ok(breaker.record(permit, failed))
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_recovers_through_half_open() {
        let breaker = Breaker::new(spec(3, 0.0));
        assert_eq!(call(&breaker, true), Ok(false));
        assert_eq!(
            call(&breaker, false),
            Ok(false),
            "a success resets the count"
        );
        assert_eq!(call(&breaker, true), Ok(false));
        assert_eq!(call(&breaker, true), Ok(false));
        assert_eq!(
            call(&breaker, true),
            Ok(true),
            "third consecutive failure opens"
        );
        assert_eq!(breaker.state(), BreakerState::Open);
        let rejected = call(&breaker, false).unwrap_err();
        assert_eq!(rejected.retry_in, Duration::from_secs(5));

        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let first = breaker.try_acquire().expect("first probe");
        let second = breaker.try_acquire().expect("second probe");
        assert!(breaker.try_acquire().is_err(), "only two probes at once");
        assert!(!breaker.record(first, false));
        assert!(
            breaker.record(second, false),
            "all probes succeeded: closed"
        );
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_again() {
        let breaker = Breaker::new(spec(1, 0.0));
        assert_eq!(call(&breaker, true), Ok(true));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(call(&breaker, true), Ok(true));
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_failure_rate_once_enough_calls() {
        let breaker = Breaker::new(spec(0, 0.5));
        assert_eq!(call(&breaker, true), Ok(false));
        assert_eq!(call(&breaker, false), Ok(false));
        assert_eq!(call(&breaker, true), Ok(false), "3 calls < min_requests 4");
        assert_eq!(call(&breaker, true), Ok(true), "3 of 4 failed");
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_leave_the_window() {
        let breaker = Breaker::new(spec(0, 0.5));
        for _ in 0..3 {
            assert_eq!(call(&breaker, true), Ok(false));
            tokio::time::advance(Duration::from_secs(4)).await;
        }
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(call(&breaker, false), Ok(false));
        assert_eq!(call(&breaker, true), Ok(false), "earlier failures expired");
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_breaker_never_opens() {
        let breaker = Breaker::new(spec(0, 0.0));
        for _ in 0..100 {
            assert_eq!(call(&breaker, true), Ok(false));
        }
    }
}
