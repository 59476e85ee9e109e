//! Per-endpoint circuit breaker: after N consecutive failures (5xx, connect error, reset) the
//! endpoint is ejected for the ejection time, doubled on each repeat up to a cap; then one probe
//! request decides whether it comes back. Never more than the service's max-ejection share of
//! endpoints is ejected at once (the caller checks that through [`Ejections`]).
//!
//! Independently of the configured breaker, an endpoint that refuses connections is avoided for a
//! short, growing backoff, so that retries and new requests go to endpoints that can answer.
//!
//! The service-wide ejected count is only ever changed under the endpoint's own lock, together
//! with the state change it accounts for: one slot is taken when an endpoint goes from closed to
//! open and given back exactly once, by the probe that restores it or by [`Breaker::release`] when
//! discovery removes it. A removed endpoint's breaker may still see the outcome of a request that
//! was in flight; it no longer counts. (Giving the slot back twice wrapped the count to
//! `usize::MAX`, after which nothing was ever ejected again.)
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
    /// The endpoint left the service: its slot was given back, and it takes no other.
    released: bool,
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
                released: false,
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
        if g.released {
            return Transition::None;
        }
        let failed = outcome != Outcome::Success;
        match (&g.state, failed) {
            (State::HalfOpen { .. }, false) => {
                g.state = State::Closed;
                g.consecutive = 0;
                g.ejections = 0;
                ejections.give_back();
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
    /// Idempotent; checked and changed under the same lock as [`Breaker::record`], so a probe that
    /// finishes at the same time cannot give the slot back a second time.
    pub fn release(&self, ejections: &Ejections) {
        let mut g = self.lock();
        if g.released {
            return;
        }
        g.released = true;
        if g.state != State::Closed {
            ejections.give_back();
        }
    }
}

impl Ejections {
    /// Gives one slot back; never below zero (the callers guard against a second give-back, this
    /// keeps a mistake from wrapping the count and disabling ejection for good).
    fn give_back(&self) {
        let _ = self.ejected.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
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

    mod props {
        //! Any sequence of outcomes, probes, ejections, recoveries and removals (with requests to a
        //! removed endpoint still finishing afterwards) keeps the ejected count equal to the number
        //! of ejected endpoints in the service, and leaves the breaker able to eject.
        use super::*;
        use proptest::{collection::vec, prelude::*};

        const ENDPOINTS: usize = 4;
        const THRESHOLD: u32 = 2;
        /// Of 4 endpoints, 3 may be ejected at once.
        const MAX_PERCENT: u32 = 75;

        #[derive(Debug, Clone)]
        enum Op {
            /// A request to this endpoint finishes; `stale`: to a removed one it was sent to before.
            Record { slot: usize, outcome: Outcome, stale: bool },
            /// The balancer takes this endpoint's half-open probe, if it has one.
            Probe(usize),
            /// Time passes.
            Advance(u64),
            /// Discovery replaces this endpoint (the old one may still see outcomes).
            Replace(usize),
            /// Every ejected endpoint's time is over and its probe succeeds.
            RecoverAll,
        }

        fn op() -> impl Strategy<Value = Op> {
            let outcome = prop_oneof![Just(Outcome::Success), Just(Outcome::Failure), Just(Outcome::ConnectFailure)];
            prop_oneof![
                4 => (0..ENDPOINTS, outcome, any::<bool>())
                    .prop_map(|(slot, outcome, stale)| Op::Record { slot, outcome, stale }),
                2 => (0..ENDPOINTS).prop_map(Op::Probe),
                2 => (0u64..40_000).prop_map(Op::Advance),
                1 => (0..ENDPOINTS).prop_map(Op::Replace),
                1 => Just(Op::RecoverAll),
            ]
        }

        struct Service {
            e: Ejections,
            now: Instant,
            current: Vec<Breaker>,
            stale: Vec<Vec<Breaker>>,
        }

        impl Service {
            fn record(&self, b: &Breaker, o: Outcome) -> Transition {
                b.record(self.now, o, THRESHOLD, T, &self.e, ENDPOINTS, MAX_PERCENT)
            }

            fn recover_all(&mut self) {
                self.now += MAX_EJECTION_TIME + CONNECT_BACKOFF_MAX;
                for b in &self.current {
                    if b.is_ejected() {
                        // Takes the probe, unless one is in flight already (it answers now).
                        b.admit(self.now, true);
                        assert_eq!(self.record(b, Outcome::Success), Transition::Restored);
                    }
                }
            }

            fn count(&self) -> usize {
                self.e.ejected.load(Ordering::Acquire)
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]
            #[test]
            fn the_ejected_count_never_wraps_and_ejection_keeps_working(ops in vec(op(), 1..80)) {
                let mut s = Service {
                    e: Ejections::default(),
                    now: Instant::now(),
                    current: (0..ENDPOINTS).map(|_| Breaker::default()).collect(),
                    stale: (0..ENDPOINTS).map(|_| Vec::new()).collect(),
                };
                for op in ops {
                    match op {
                        Op::Record { slot, outcome, stale } => {
                            let b = if stale { s.stale[slot].last() } else { None };
                            s.record(b.unwrap_or(&s.current[slot]), outcome);
                        }
                        Op::Probe(slot) => {
                            s.current[slot].admit(s.now, true);
                        }
                        Op::Advance(ms) => s.now += Duration::from_millis(ms),
                        Op::Replace(slot) => {
                            let old = std::mem::take(&mut s.current[slot]);
                            old.release(&s.e);
                            // Discovery may send the same removal twice.
                            old.release(&s.e);
                            s.stale[slot].push(old);
                        }
                        Op::RecoverAll => s.recover_all(),
                    }
                    let ejected = s.current.iter().filter(|b| b.is_ejected()).count();
                    prop_assert!(s.count() <= ENDPOINTS, "count {} of {} endpoints", s.count(), ENDPOINTS);
                    prop_assert_eq!(s.count(), ejected);
                }
                // Whatever happened, once everything has recovered an endpoint is ejected again.
                s.recover_all();
                prop_assert_eq!(s.count(), 0);
                s.record(&s.current[0], Outcome::Success);
                let mut last = Transition::None;
                for _ in 0..THRESHOLD {
                    last = s.record(&s.current[0], Outcome::Failure);
                }
                prop_assert_eq!(last, Transition::Ejected);
                prop_assert_eq!(s.count(), 1);
            }
        }
    }
}
