//! Load balancing over a service's endpoints: power of two choices (P2C) by peak-EWMA cost
//! (latency × outstanding requests), or round robin, among the endpoints the circuit breakers
//! admit.
//!
//! Written here rather than taken from `tower::balance`: tower's `p2c::Balance` needs `&mut self`,
//! so sharing one per service across all client connections needs `tower::buffer` — a worker task,
//! a queue every request waits in, and requests parked in that queue when no endpoint is ready.
//! This balancer keeps each endpoint's load in atomics shared by every connection, picks without
//! locks or allocation, fails fast when nothing is available, and can avoid the endpoint that just
//! failed when a request is retried. The cost function is tower's `PeakEwma`, with one addition:
//! failures count as slow responses.

use std::{
    net::SocketAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use super::breaker::{Admit, Breaker, Ejections};
use crate::{discover::Endpoint, http::ProxyError};

/// Latency assumed for an endpoint before its first response: optimistic enough that new
/// endpoints get traffic, pessimistic enough not to flood them.
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Decay of the moving average (tower's default): a slow spike is forgotten in tens of seconds.
const DECAY: Duration = Duration::from_secs(10);
/// A failed attempt (5xx, refused, reset) counts as a response this slow in the moving average, so
/// a server that fails fast does not attract traffic by looking fast; the penalty decays like any
/// latency, so the endpoint is tried again after a while.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);
/// How many random pairs to draw before scanning for any available endpoint.
const SAMPLES: usize = 4;

pub struct EndpointState {
    pub endpoint: Endpoint,
    pub label: Arc<str>,
    pub breaker: Breaker,
    outstanding: AtomicU32,
    /// Peak-EWMA latency in nanoseconds (f64 bits).
    rtt: AtomicU64,
    /// Nanoseconds since the balancer's epoch at the last update.
    stamp: AtomicU64,
}

impl EndpointState {
    /// The latency estimate in nanoseconds, decayed towards zero while idle so a once-slow
    /// endpoint is tried again eventually.
    fn decayed_rtt(&self, now_ns: u64) -> f64 {
        let rtt = f64::from_bits(self.rtt.load(Ordering::Relaxed));
        let elapsed = now_ns.saturating_sub(self.stamp.load(Ordering::Relaxed)) as f64;
        rtt * (-elapsed / DECAY.as_nanos() as f64).exp()
    }

    fn cost(&self, now_ns: u64) -> f64 {
        let decayed = self.decayed_rtt(now_ns);
        let pending = self.outstanding.load(Ordering::Relaxed) as f64;
        decayed.max(1.0) * (pending + 1.0)
    }

    fn observe(&self, rtt: Duration, now_ns: u64) {
        let sample = rtt.as_nanos() as f64;
        let prev = f64::from_bits(self.rtt.load(Ordering::Relaxed));
        let elapsed = now_ns.saturating_sub(self.stamp.swap(now_ns, Ordering::Relaxed)) as f64;
        let next = if sample > prev {
            sample // peak: jump up at once
        } else {
            let w = (-elapsed / DECAY.as_nanos() as f64).exp();
            prev * w + sample * (1.0 - w)
        };
        self.rtt.store(next.to_bits(), Ordering::Relaxed);
    }
}

/// An endpoint chosen for one attempt; counts as outstanding until dropped.
pub struct Pick {
    pub state: Arc<EndpointState>,
    epoch: Instant,
    started: Instant,
}

impl Pick {
    /// Records the response latency into the endpoint's moving average.
    pub fn observe(&self) {
        let now = Instant::now();
        self.state.observe(now - self.started, (now - self.epoch).as_nanos() as u64);
    }

    /// Records a failed attempt: its latency, but at least [`FAILURE_PENALTY`].
    pub fn observe_failure(&self) {
        let now = Instant::now();
        self.state.observe((now - self.started).max(FAILURE_PENALTY), (now - self.epoch).as_nanos() as u64);
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.state.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Balancer {
    endpoints: RwLock<Arc<[Arc<EndpointState>]>>,
    pub ejections: Ejections,
    epoch: Instant,
    next: AtomicUsize,
}

impl Default for Balancer {
    fn default() -> Self {
        Balancer {
            endpoints: RwLock::new(Arc::from(Vec::new())),
            ejections: Ejections::default(),
            epoch: Instant::now(),
            next: AtomicUsize::new(0),
        }
    }
}

impl Balancer {
    pub fn snapshot(&self) -> Arc<[Arc<EndpointState>]> {
        self.endpoints.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies a new endpoint set, keeping the load and breaker state of endpoints that stay.
    /// Returns the endpoints that left (for their metrics to be cleared).
    pub fn update(&self, eps: &[Endpoint]) -> Vec<Arc<EndpointState>> {
        let old = self.snapshot();
        let now_ns = (Instant::now() - self.epoch).as_nanos() as u64;
        // A newcomer starts at the service's lowest current latency estimate (DEFAULT_RTT only for
        // the first endpoints): started above its peers' it would lose every P2C draw until the
        // decay brought it down, and a replaced pod would get no traffic for half a minute. Its own
        // first responses replace the estimate at once if they are slower (peaks count in full).
        let start_rtt = old
            .iter()
            .map(|s| s.decayed_rtt(now_ns))
            .min_by(f64::total_cmp)
            .unwrap_or(DEFAULT_RTT.as_nanos() as f64);
        let mut next = Vec::with_capacity(eps.len());
        for e in eps {
            match old.iter().find(|s| s.endpoint == *e) {
                Some(s) => next.push(s.clone()),
                None => next.push(Arc::new(EndpointState {
                    label: Arc::from(e.addr.to_string()),
                    endpoint: e.clone(),
                    breaker: Breaker::default(),
                    outstanding: AtomicU32::new(0),
                    rtt: AtomicU64::new(start_rtt.to_bits()),
                    stamp: AtomicU64::new(now_ns),
                })),
            }
        }
        let gone: Vec<_> = old.iter().filter(|s| !eps.contains(&s.endpoint)).cloned().collect();
        for s in &gone {
            s.breaker.release(&self.ejections);
        }
        *self.endpoints.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(next);
        gone
    }

    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// Chooses an endpoint for one attempt, avoiding `avoid` when there is another choice.
    pub fn pick(&self, round_robin: bool, avoid: Option<SocketAddr>) -> Result<Pick, ProxyError> {
        let eps = self.snapshot();
        if eps.is_empty() {
            return Err(ProxyError::NoEndpoints);
        }
        let now = Instant::now();
        let now_ns = (now - self.epoch).as_nanos() as u64;
        let usable = |s: &EndpointState| {
            s.breaker.admit(now, false) != Admit::No && (eps.len() == 1 || Some(s.endpoint.addr) != avoid)
        };
        let chosen = if round_robin {
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            (0..eps.len()).map(|i| &eps[(start + i) % eps.len()]).find(|s| usable(s))
        } else {
            self.p2c(&eps, now_ns, &usable)
        };
        // Nothing usable while avoiding the failed endpoint: allow it after all. Nothing usable
        // because every endpoint is backing off from refused connections: try one anyway, so the
        // caller gets the real error (and a recovered endpoint is found) rather than a guess.
        let chosen = chosen
            .or_else(|| avoid.and_then(|_| eps.iter().find(|s| s.breaker.admit(now, false) != Admit::No)))
            .or_else(|| {
                let open: Vec<_> = eps.iter().filter(|s| !s.breaker.is_ejected()).collect();
                (!open.is_empty()).then(|| open[fastrand::usize(..open.len())])
            });
        let Some(s) = chosen else {
            return Err(ProxyError::CircuitOpen);
        };
        if s.breaker.is_ejected() && s.breaker.admit(now, true) == Admit::No {
            // Another request took the half-open probe between the check and now.
            return Err(ProxyError::CircuitOpen);
        }
        s.outstanding.fetch_add(1, Ordering::Relaxed);
        Ok(Pick { state: s.clone(), epoch: self.epoch, started: now })
    }

    fn p2c<'a>(
        &self,
        eps: &'a [Arc<EndpointState>],
        now_ns: u64,
        usable: &impl Fn(&EndpointState) -> bool,
    ) -> Option<&'a Arc<EndpointState>> {
        let n = eps.len();
        if n == 1 {
            return usable(&eps[0]).then_some(&eps[0]);
        }
        for _ in 0..SAMPLES {
            let a = fastrand::usize(..n);
            let mut b = fastrand::usize(..n - 1);
            if b >= a {
                b += 1;
            }
            let (ea, eb) = (&eps[a], &eps[b]);
            match (usable(ea), usable(eb)) {
                (true, true) => return Some(if ea.cost(now_ns) <= eb.cost(now_ns) { ea } else { eb }),
                (true, false) => return Some(ea),
                (false, true) => return Some(eb),
                (false, false) => continue,
            }
        }
        eps.iter().filter(|s| usable(s)).min_by(|a, b| a.cost(now_ns).total_cmp(&b.cost(now_ns)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint { addr: ([127, 0, 0, 1], port).into(), proxy: None, identity: None, workload: None, weight: 1 }
    }

    #[test]
    fn prefers_the_faster_endpoint() {
        let b = Balancer::default();
        b.update(&[ep(1), ep(2)]);
        let eps = b.snapshot();
        let now = (Instant::now() - b.epoch).as_nanos() as u64;
        eps[0].observe(Duration::from_secs(2), now);
        eps[1].observe(Duration::from_millis(1), now);
        let mut slow = 0;
        for _ in 0..1000 {
            if b.pick(false, None).unwrap().state.endpoint.addr.port() == 1 {
                slow += 1;
            }
        }
        assert_eq!(slow, 0);
    }

    #[test]
    fn keeps_state_across_updates_and_avoids_the_failed_one() {
        let b = Balancer::default();
        b.update(&[ep(1), ep(2)]);
        let first = b.snapshot()[0].clone();
        b.update(&[ep(1), ep(3)]);
        assert!(Arc::ptr_eq(&first, &b.snapshot()[0]));
        for _ in 0..100 {
            let p = b.pick(false, Some(ep(1).addr)).unwrap();
            assert_eq!(p.state.endpoint.addr.port(), 3);
        }
        let p = b.pick(false, None).unwrap();
        assert_eq!(p.state.outstanding.load(Ordering::Relaxed), 1);
        drop(p);
    }

    #[test]
    fn a_new_endpoint_among_fast_ones_gets_its_share() {
        let b = Balancer::default();
        b.update(&[ep(1), ep(2)]);
        let now = (Instant::now() - b.epoch).as_nanos() as u64;
        for s in b.snapshot().iter() {
            s.observe(Duration::from_micros(500), now);
        }
        b.update(&[ep(1), ep(2), ep(3)]);
        let new = (0..300).filter(|_| b.pick(false, None).unwrap().state.endpoint.addr.port() == 3).count();
        assert!(new > 30, "the newcomer got {new} of 300 picks");
    }

    #[test]
    fn round_robin_visits_each_in_turn() {
        let b = Balancer::default();
        b.update(&[ep(1), ep(2), ep(3)]);
        let ports: Vec<u16> = (0..6).map(|_| b.pick(true, None).unwrap().state.endpoint.addr.port()).collect();
        assert_eq!(ports, vec![1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn empty_service_has_no_endpoints() {
        let b = Balancer::default();
        assert!(matches!(b.pick(false, None), Err(ProxyError::NoEndpoints)));
    }

    mod props {
        //! Any sequence of endpoint updates, picks, responses and failures keeps the balancer's
        //! books straight.
        use super::*;
        use proptest::{collection::vec, prelude::*};

        #[derive(Debug, Clone)]
        enum Op {
            /// The endpoint set becomes these ports (1..=5).
            Update(Vec<u16>),
            /// Pick (P2C or round robin), avoiding this port if given; keep the pick open.
            Pick { round_robin: bool, avoid: Option<u16> },
            /// The oldest open pick answers after this many ms, or fails.
            Finish { ms: u64, failed: bool },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                vec(1u16..=5, 0..5).prop_map(Op::Update),
                (any::<bool>(), proptest::option::of(1u16..=5)).prop_map(|(round_robin, avoid)| Op::Pick { round_robin, avoid }),
                (0u64..3000, any::<bool>()).prop_map(|(ms, failed)| Op::Finish { ms, failed }),
            ]
        }

        proptest! {
            #[test]
            fn picks_come_from_the_current_set_and_outstanding_counts_balance(ops in vec(op(), 1..60)) {
                let b = Balancer::default();
                let mut open: Vec<Pick> = Vec::new();
                let mut current: Vec<u16> = Vec::new();
                for op in ops {
                    match op {
                        Op::Update(ports) => {
                            let mut ports = ports;
                            ports.sort_unstable();
                            ports.dedup();
                            b.update(&ports.iter().map(|p| ep(*p)).collect::<Vec<_>>());
                            current = ports;
                        }
                        Op::Pick { round_robin, avoid } => match b.pick(round_robin, avoid.map(|p| ep(p).addr)) {
                            Ok(p) => {
                                let port = p.state.endpoint.addr.port();
                                prop_assert!(current.contains(&port), "picked {port}, set {current:?}");
                                // Without breakers, the endpoint to avoid is avoided whenever there is another.
                                if current.len() > 1 {
                                    prop_assert_ne!(Some(port), avoid);
                                }
                                open.push(p);
                            }
                            Err(e) => prop_assert!(current.is_empty() && matches!(e, ProxyError::NoEndpoints), "{e:?} with {current:?}"),
                        },
                        Op::Finish { ms, failed } => {
                            if !open.is_empty() {
                                let p = open.remove(0);
                                let now = (Instant::now() - b.epoch).as_nanos() as u64;
                                if failed {
                                    p.state.observe(Duration::from_millis(ms).max(FAILURE_PENALTY), now);
                                } else {
                                    p.state.observe(Duration::from_millis(ms), now);
                                }
                            }
                        }
                    }
                    // Outstanding = the open picks of each endpoint still in the set.
                    for s in b.snapshot().iter() {
                        let mine = open.iter().filter(|p| Arc::ptr_eq(&p.state, s)).count() as u32;
                        prop_assert_eq!(s.outstanding.load(Ordering::Relaxed), mine);
                        prop_assert!(s.cost(0).is_finite() && s.cost(0) >= 1.0);
                    }
                }
                drop(open);
                for s in b.snapshot().iter() {
                    prop_assert_eq!(s.outstanding.load(Ordering::Relaxed), 0);
                }
            }

            #[test]
            fn p2c_never_picks_the_most_expensive_endpoint(rtts in vec(1u64..10_000, 2..6)) {
                prop_assume!({
                    let mut sorted = rtts.clone();
                    sorted.sort_unstable();
                    sorted.windows(2).all(|w| w[0] != w[1])
                });
                let b = Balancer::default();
                let eps: Vec<Endpoint> = (1..=rtts.len() as u16).map(ep).collect();
                b.update(&eps);
                let now = (Instant::now() - b.epoch).as_nanos() as u64;
                for (s, ms) in b.snapshot().iter().zip(&rtts) {
                    s.stamp.store(now, Ordering::Relaxed);
                    s.rtt.store((Duration::from_millis(*ms).as_nanos() as f64).to_bits(), Ordering::Relaxed);
                }
                let worst = rtts.iter().enumerate().max_by_key(|(_, r)| **r).map(|(i, _)| i as u16 + 1).unwrap();
                for _ in 0..200 {
                    let p = b.pick(false, None).unwrap();
                    prop_assert_ne!(p.state.endpoint.addr.port(), worst);
                }
            }
        }
    }
}
