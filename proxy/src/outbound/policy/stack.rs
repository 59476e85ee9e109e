//! One destination service's stack, cached by authority and updated in place when discovery sends
//! a new snapshot (endpoints keep their load and breaker state; a new policy applies to the next
//! request without a restart).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Instant,
};

use tower::retry::budget::{Budget, TpsBudget};

use super::{
    balance::{Balancer, EndpointState},
    breaker::{Outcome, Transition},
    bulkhead::Bulkhead,
    config::{MAX_REPLAY_BODY, Policy},
    retry,
};
use crate::{
    discover::ServiceProfile,
    http::{ProxyError, Request, client::Upstream, replay::Replay},
    metrics::Metrics,
};

/// Stacks by service authority (`name.namespace:port`).
#[derive(Default)]
pub struct Logicals {
    map: RwLock<HashMap<Arc<str>, Arc<Logical>>>,
}

impl Logicals {
    /// The stack for `profile`'s service, brought up to date with it.
    pub fn get(&self, profile: &Arc<ServiceProfile>, metrics: &Metrics) -> Arc<Logical> {
        let found = self.map.read().unwrap_or_else(|p| p.into_inner()).get(&profile.authority).cloned();
        let logical = match found {
            Some(l) => l,
            None => {
                let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
                map.entry(profile.authority.clone()).or_insert_with(|| Arc::new(Logical::new(profile, metrics))).clone()
            }
        };
        logical.refresh(profile, metrics);
        logical
    }
}

struct Current {
    profile: Arc<ServiceProfile>,
    policy: Arc<Policy>,
    budget: Arc<TpsBudget>,
    bulkhead: Arc<Bulkhead>,
}

pub struct Logical {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub balancer: Balancer,
    current: RwLock<Option<Current>>,
}

/// What one request's trip through the stack produced.
pub struct Sent {
    pub result: Result<Upstream, ProxyError>,
    /// The identity the endpoint that answered proved (mesh TLS), for metrics.
    pub peer: Option<Arc<str>>,
    /// The workload of the endpoint that answered, when discovery names it, for metrics.
    pub workload: Option<Arc<str>>,
}

impl Logical {
    fn new(profile: &ServiceProfile, _metrics: &Metrics) -> Self {
        Logical {
            name: profile.name.clone(),
            namespace: profile.namespace.clone(),
            balancer: Balancer::default(),
            current: RwLock::new(None),
        }
    }

    fn refresh(&self, profile: &Arc<ServiceProfile>, metrics: &Metrics) {
        if let Some(c) = &*self.current.read().unwrap_or_else(|p| p.into_inner()) {
            if Arc::ptr_eq(&c.profile, profile) {
                return;
            }
        }
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(&c.profile, profile)) {
            return;
        }
        let policy = Policy::from_proto(&profile.policy);
        for gone in self.balancer.update(&profile.endpoints) {
            let _ = metrics.circuit_open.remove_label_values(&[&self.name, &gone.label]);
        }
        if policy.circuit.consecutive_failures > 0 {
            // With a breaker, every endpoint has its `strait_circuit_open` series from the start (0:
            // closed), so "nothing ejected" reads as 0 rather than as no data; a 1 already set stays.
            for s in self.balancer.snapshot().iter() {
                let _ = metrics.circuit_open.with_label_values(&[&self.name, &s.label]);
            }
        }
        let same = |f: &dyn Fn(&Policy) -> bool| cur.as_ref().is_some_and(|c| f(&c.policy));
        let budget = match cur.as_ref() {
            Some(c)
                if c.policy.retry.budget_percent == policy.retry.budget_percent
                    && c.policy.retry.budget_min_per_second == policy.retry.budget_min_per_second =>
            {
                c.budget.clone()
            }
            _ => Arc::new(policy.retry.budget()),
        };
        let bulkhead = match cur.as_ref() {
            Some(c) if same(&|p| p.bulkhead == policy.bulkhead) => c.bulkhead.clone(),
            _ => Arc::new(Bulkhead::new(
                policy.bulkhead.max_concurrent,
                policy.bulkhead.max_pending,
                metrics.bulkhead_in_flight.with_label_values(&[&self.name]),
                metrics.bulkhead_rejected.with_label_values(&[&self.name]),
            )),
        };
        tracing::debug!(service = %self.name, endpoints = profile.endpoints.len(), ?policy, "service stack updated");
        *cur = Some(Current { profile: profile.clone(), policy: Arc::new(policy), budget, bulkhead });
    }

    fn current(&self) -> Option<(Arc<Policy>, Arc<TpsBudget>, Arc<Bulkhead>)> {
        let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
        cur.as_ref().map(|c| (c.policy.clone(), c.budget.clone(), c.bulkhead.clone()))
    }

    /// One request through bulkhead, request timeout, retries, per-try timeout, balancer and the
    /// endpoint (`send`).
    pub async fn call<F, Fut>(&self, req: Request, metrics: &Metrics, send: F) -> Sent
    where
        F: Fn(Request, Arc<EndpointState>) -> Fut,
        Fut: Future<Output = Result<Upstream, ProxyError>>,
    {
        let Some((policy, budget, bulkhead)) = self.current() else {
            return Sent { result: Err(ProxyError::NoEndpoints), peer: None, workload: None };
        };
        let _permit = match bulkhead.enter().await {
            Ok(p) => p,
            Err(e) => return Sent { result: Err(e), peer: None, workload: None },
        };
        let attempts = self.attempts(req, &policy, &budget, metrics, &send);
        match policy.request_timeout {
            Some(t) => tokio::time::timeout(t, attempts)
                .await
                .unwrap_or(Sent { result: Err(ProxyError::Timeout), peer: None, workload: None }),
            None => attempts.await,
        }
    }

    async fn attempts<F, Fut>(&self, req: Request, policy: &Policy, budget: &TpsBudget, metrics: &Metrics, send: &F) -> Sent
    where
        F: Fn(Request, Arc<EndpointState>) -> Fut,
        Fut: Future<Output = Result<Upstream, ProxyError>>,
    {
        let rp = &policy.retry;
        if !rp.enabled() {
            return self.attempt(req, policy, None, metrics, send).await.0;
        }
        budget.deposit();
        let (parts, body) = req.into_parts();
        let replay = Replay::new(body, MAX_REPLAY_BODY);
        let idempotent = retry::idempotent(&parts.method);
        let mut avoid = None;
        let mut n = 0;
        let mut body = replay.attempt();
        loop {
            let Some(b) = body.take() else {
                return Sent { result: Err(ProxyError::BadRequest("request body")), peer: None, workload: None };
            };
            let (sent, addr) = self.attempt(retry::rebuild(&parts, b), policy, avoid, metrics, send).await;
            let Some(reason) = retry::reason(rp, &sent.result, idempotent) else { return sent };
            if n >= rp.limit {
                return sent;
            }
            // The body outgrew what is kept for replay: this attempt's answer stands.
            let Some(next) = replay.attempt() else { return sent };
            body = Some(next);
            if !budget.withdraw() {
                metrics.retry_budget_exhausted.with_label_values(&[&self.name]).inc();
                return sent;
            }
            n += 1;
            metrics.retries.with_label_values(&[&self.name, reason]).inc();
            tracing::debug!(service = %self.name, reason, attempt = n + 1, "retrying");
            avoid = addr;
            drop(sent);
            tokio::time::sleep(retry::backoff(n)).await;
        }
    }

    /// One attempt: choose an endpoint, send, record what happened in its breaker.
    async fn attempt<F, Fut>(
        &self,
        req: Request,
        policy: &Policy,
        avoid: Option<SocketAddr>,
        metrics: &Metrics,
        send: &F,
    ) -> (Sent, Option<SocketAddr>)
    where
        F: Fn(Request, Arc<EndpointState>) -> Fut,
        Fut: Future<Output = Result<Upstream, ProxyError>>,
    {
        let pick = match self.balancer.pick(policy.round_robin, avoid) {
            Ok(p) => p,
            Err(e) => return (Sent { result: Err(e), peer: None, workload: None }, None),
        };
        let fut = send(req, pick.state.clone());
        let result = match policy.retry.per_try_timeout {
            Some(t) => tokio::time::timeout(t, fut).await.unwrap_or(Err(ProxyError::Timeout)),
            None => fut.await,
        };
        let outcome = if retry::never_reached_server(&result) {
            Outcome::ConnectFailure
        } else {
            match &result {
                Ok(r) if !r.status().is_server_error() => Outcome::Success,
                _ => Outcome::Failure,
            }
        };
        if outcome == Outcome::Success {
            pick.observe();
        } else {
            pick.observe_failure();
        }
        let s = &pick.state;
        let c = &policy.circuit;
        let t = s.breaker.record(
            Instant::now(),
            outcome,
            c.consecutive_failures,
            c.ejection_time,
            &self.balancer.ejections,
            self.balancer.len(),
            c.max_ejection_percent,
        );
        match t {
            Transition::Ejected => {
                metrics.circuit_ejections.with_label_values(&[&self.name]).inc();
                metrics.circuit_open.with_label_values(&[&self.name, &s.label]).set(1);
                tracing::info!(service = %self.name, endpoint = %s.label, "endpoint ejected");
            }
            Transition::Restored => {
                metrics.circuit_open.with_label_values(&[&self.name, &s.label]).set(0);
                tracing::info!(service = %self.name, endpoint = %s.label, "endpoint restored");
            }
            Transition::None => {}
        }
        let peer = s.endpoint.identity.clone().filter(|_| s.endpoint.proxy.is_some());
        let addr = Some(s.endpoint.addr);
        (Sent { result, peer, workload: s.endpoint.workload.clone() }, addr)
    }
}
