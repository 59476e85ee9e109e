//! Per-endpoint circuit breaker: after N consecutive failures (5xx, connect error, reset) the
//! endpoint is ejected for the ejection time, doubled on each repeat up to a cap; then one probe
//! request decides whether it comes back. Never more than the service's max-ejection share of
//! endpoints is ejected at once (the caller checks that through [`Ejections`]).
//!
//! Independently of the configured breaker, an endpoint that refuses connections is avoided for a
//! short, growing backoff, so that retries and new requests go to endpoints that can answer.
//!
//! Written by hand: no maintained tower middleware ejects endpoints out of a shared balancer. The
//! state is a small mutex held only for a few instructions, never across an await; time is passed
//! in, so the state machine is tested without sleeping.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// Ejection time never grows beyond this, however often an endpoint fails again.
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
/// First pause after a refused connection; doubles per consecutive refusal up to the max.
const CONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// 5xx, reset, timeout: counts towards ejection.
    Failure,
    /// The connection was refused or could not be made: also backs off at once.
    ConnectFailure,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant },
    /// The ejection time is over; `probing` while the one probe request is in flight.
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive: u32,
    /// How many times in a row the endpoint was ejected (drives the doubling).
    ejections: u32,
    connect_failures: u32,
    connect_backoff_until: Option<Instant>,
}

/// Service-wide count of ejected endpoints, for the max-ejection cap.
#[derive(Debug, Default)]
pub struct Ejections {
    pub ejected: AtomicUsize,
}

#[derive(Debug)]
pub struct Breaker {
    inner: Mutex<Inner>,
}

/// What [`Breaker::admit`] decided.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Yes, as the one half-open probe.
    Probe,
    No,
}

/// What a recorded outcome changed, for metrics.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    Ejected,
    Restored,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive: 0,
                ejections: 0,
                connect_failures: 0,
                connect_backoff_until: None,
            }),
        }
    }
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request may go to this endpoint now. `probe_ok`: the caller would use a
    /// half-open probe slot (the balancer asks without taking one first).
    pub fn admit(&self, now: Instant, take_probe: bool) -> Admit {
        let mut g = self.lock();
        if g.connect_backoff_until.is_some_and(|t| now < t) {
            return Admit::No;
        }
        match g.state {
            State::Closed => Admit::Yes,
            State::Open { until } if now < until => Admit::No,
            State::Open { .. } | State::HalfOpen { probing: false } => {
                if take_probe {
                    g.state = State::HalfOpen { probing: true };
                }
                Admit::Probe
            }
            State::HalfOpen { probing: true } => Admit::No,
        }
    }

    pub fn is_ejected(&self) -> bool {
        !matches!(self.lock().state, State::Closed)
    }

    /// Records a finished request. `threshold` 0 disables ejection; `may_eject` says whether the
    /// max-ejection cap leaves room for one more.
    pub fn record(
        &self,
        now: Instant,
        outcome: Outcome,
        threshold: u32,
        ejection_time: Duration,
        ejections: &Ejections,
        total_endpoints: usize,
        max_ejection_percent: u32,
    ) -> Transition {
        let mut g = self.lock();
        if outcome == Outcome::ConnectFailure {
            g.connect_failures += 1;
            let backoff = CONNECT_BACKOFF_MIN
                .saturating_mul(1 << (g.connect_failures - 1).min(16))
                .min(CONNECT_BACKOFF_MAX);
            g.connect_backoff_until = Some(now + backoff);
        } else {
            g.connect_failures = 0;
            g.connect_backoff_until = None;
        }
        let failed = outcome != Outcome::Success;
        match (&g.state, failed) {
            (State::HalfOpen { .. }, false) => {
                g.state = State::Closed;
                g.consecutive = 0;
                g.ejections = 0;
                ejections.ejected.fetch_sub(1, Ordering::AcqRel);
                Transition::Restored
            }
            (State::HalfOpen { .. }, true) => {
                g.ejections += 1;
                g.state = State::Open { until: now + ejection_for(ejection_time, g.ejections) };
                Transition::None
            }
            (State::Open { .. }, _) => Transition::None,
            (State::Closed, false) => {
                g.consecutive = 0;
                Transition::None
            }
            (State::Closed, true) => {
                g.consecutive += 1;
                if threshold == 0 || g.consecutive < threshold {
                    return Transition::None;
                }
                // Reserve a slot under the cap, or stay in (there are too many ejected already).
                let cap = total_endpoints * max_ejection_percent as usize / 100;
                let reserved = ejections
                    .ejected
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1))
                    .is_ok();
                if !reserved {
                    return Transition::None;
                }
                g.ejections += 1;
                g.state = State::Open { until: now + ejection_for(ejection_time, g.ejections) };
                Transition::Ejected
            }
        }
    }

    /// An ejected endpoint left the service (discovery removed it): give its slot back.
    pub fn release(&self, ejections: &Ejections) {
        if self.is_ejected() {
            ejections.ejected.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn ejection_for(base: Duration, nth: u32) -> Duration {
    base.saturating_mul(1 << (nth.saturating_sub(1)).min(16)).min(MAX_EJECTION_TIME.max(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    fn rec(b: &Breaker, now: Instant, o: Outcome, e: &Ejections) -> Transition {
        b.record(now, o, 3, T, e, 3, 50)
    }

    #[test]
    fn ejects_after_n_failures_and_probes_back() {
        let (b, e, t0) = (Breaker::default(), Ejections::default(), Instant::now());
        assert_eq!(rec(&b, t0, Outcome::Failure, &e), Transition::None);
        assert_eq!(rec(&b, t0, Outcome::Failure, &e), Transition::None);
        assert_eq!(rec(&b, t0, Outcome::Failure, &e), Transition::Ejected);
        assert_eq!(b.admit(t0 + T / 2, true), Admit::No);
        // Half-open: one probe only.
        assert_eq!(b.admit(t0 + T, true), Admit::Probe);
        assert_eq!(b.admit(t0 + T, true), Admit::No);
        // The probe fails: ejected again for twice as long.
        rec(&b, t0 + T, Outcome::Failure, &e);
        assert_eq!(b.admit(t0 + T + T + T / 2, true), Admit::No);
        assert_eq!(b.admit(t0 + T + 2 * T, true), Admit::Probe);
        assert_eq!(rec(&b, t0 + 3 * T, Outcome::Success, &e), Transition::Restored);
        assert_eq!(b.admit(t0 + 3 * T, true), Admit::Yes);
        assert_eq!(e.ejected.load(Ordering::Acquire), 0);
    }

    #[test]
    fn success_resets_the_count() {
        let (b, e, t0) = (Breaker::default(), Ejections::default(), Instant::now());
        rec(&b, t0, Outcome::Failure, &e);
        rec(&b, t0, Outcome::Failure, &e);
        rec(&b, t0, Outcome::Success, &e);
        rec(&b, t0, Outcome::Failure, &e);
        assert_eq!(b.admit(t0, true), Admit::Yes);
    }

    #[test]
    fn never_more_than_the_max_share() {
        let e = Ejections::default();
        let t0 = Instant::now();
        let (a, b) = (Breaker::default(), Breaker::default());
        for _ in 0..3 {
            rec(&a, t0, Outcome::Failure, &e);
            rec(&b, t0, Outcome::Failure, &e);
        }
        // 50 % of 3 endpoints = 1.
        assert!(a.is_ejected());
        assert!(!b.is_ejected());
        assert_eq!(b.admit(t0, true), Admit::Yes);
    }

    #[test]
    fn connect_failures_back_off_without_a_breaker() {
        let (b, e, t0) = (Breaker::default(), Ejections::default(), Instant::now());
        b.record(t0, Outcome::ConnectFailure, 0, T, &e, 3, 50);
        assert_eq!(b.admit(t0, true), Admit::No);
        assert_eq!(b.admit(t0 + Duration::from_millis(150), true), Admit::Yes);
        b.record(t0, Outcome::ConnectFailure, 0, T, &e, 3, 50);
        assert_eq!(b.admit(t0 + Duration::from_millis(150), true), Admit::No);
    }
}
