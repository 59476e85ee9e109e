//! The controller's discovery stream, seen from the proxy: subscribe to an authority the first
//! time the data path asks for it, keep the latest snapshot of each, acknowledge or reject every
//! version, forget authorities nobody used for a while, and keep serving the last good answers
//! while the controller is away (reconnecting with jittered exponential backoff, from `backon`;
//! `strait_discovery_stale_seconds` tells how long the snapshot has gone unconfirmed). After a
//! reconnection the controller sends every subscribed authority again; an answer equal to the one
//! held changes nothing (counted as `unchanged`), so a controller restart is no update storm.
//!
//! The proxy holds at most `STRAIT_MAX_SUBSCRIPTIONS` authorities, below the controller's cap per
//! stream: a new one past it replaces the least recently used (which is subscribed again when
//! next used), so an application that dials ever new hosts never gets the stream refused. If the
//! controller refuses it anyway (RESOURCE_EXHAUSTED: its cap is lower), the proxy keeps backing off
//! between attempts instead of starting the backoff again after a long session.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use strait_proto::discovery::v1::{self as pb, discovery_client::DiscoveryClient, watch_request, watch_response};
use tokio::sync::{mpsc, watch};

use super::ServiceProfile;
use crate::{dns::Dns, metrics::Metrics};

/// How long a request waits for the controller's first answer about a new authority before it
/// fails closed ([`super::Unavailable`]): `STRAIT_DISCOVERY_WAIT`.
pub const DEFAULT_FIRST_ANSWER_TIMEOUT: Duration = crate::config::DEFAULT_DISCOVERY_WAIT;
/// An authority unused for this long is unsubscribed, so a proxy follows only what it talks to.
pub const DEFAULT_IDLE_UNSUBSCRIBE: Duration = Duration::from_secs(300);
/// Reconnect backoff: first retry soon (a controller restart), doubling up to 5 s; backon's jitter
/// adds up to as much again (so 50–100 ms first, 5–10 s at most between attempts), which spreads
/// the reconnections of many proxies after a controller restart.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A session that lasted this long was a working connection: the next failure starts the backoff
/// again from its minimum.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);
/// Authorities a proxy follows at once. An application talks to a few dozen; 1000 is far above
/// that and a tenth of the controller's default cap per stream (10 000), so a proxy never runs into
/// it, while an application that dials random hosts costs bounded memory here and there.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 1000;
/// Commands from the data path to the stream task: one per new authority, so a small bound.
const COMMANDS: usize = 1024;

#[derive(Clone, Debug)]
pub enum Answer {
    Pending,
    Found(Arc<ServiceProfile>),
    NotFound,
}

struct Entry {
    answer: watch::Sender<Answer>,
    /// Milliseconds since `Client::epoch` of the last lookup.
    last_used: AtomicU64,
}

pub struct Client {
    entries: RwLock<HashMap<Arc<str>, Arc<Entry>>>,
    commands: mpsc::Sender<Command>,
    epoch: Instant,
    first_answer_timeout: Duration,
    inbound: watch::Sender<Arc<pb::InboundPolicy>>,
    max_subscriptions: usize,
    /// True once the controller has answered at all (its first message of a stream is the
    /// workload's inbound policy): `/ready` and the inbound side wait for it.
    synced: watch::Sender<bool>,
}

enum Command {
    Subscribe(Arc<str>),
    /// Evicted to stay within `max_subscriptions`.
    Unsubscribe(Arc<str>),
}

#[derive(Clone)]
pub struct Identity {
    pub namespace: String,
    pub workload: String,
    pub service_account: String,
}

impl Client {
    /// The client and the task that runs its stream (spawn it).
    /// `first_answer_timeout`: how long a new authority waits for its first answer.
    /// `max_subscriptions`: see [`DEFAULT_MAX_SUBSCRIPTIONS`].
    pub fn new(
        addr: String,
        who: Identity,
        metrics: Metrics,
        dns: Dns,
        first_answer_timeout: Duration,
        max_subscriptions: usize,
    ) -> (Arc<Self>, impl Future<Output = ()>) {
        let (tx, rx) = mpsc::channel(COMMANDS);
        let (inbound, _) = watch::channel(Arc::new(pb::InboundPolicy::default()));
        let (synced, _) = watch::channel(false);
        let client = Arc::new(Client {
            entries: RwLock::new(HashMap::new()),
            commands: tx,
            epoch: Instant::now(),
            first_answer_timeout,
            inbound,
            max_subscriptions: max_subscriptions.max(1),
            synced,
        });
        let task = run(client.clone(), addr, who, metrics, dns, rx);
        (client, task)
    }

    pub fn inbound_policy(&self) -> watch::Receiver<Arc<pb::InboundPolicy>> {
        self.inbound.subscribe()
    }

    /// Whether the controller has answered at least once since the proxy started.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until [`Client::is_synced`], at most `limit`; returns whether it is.
    pub async fn wait_synced(&self, limit: Duration) -> bool {
        let mut rx = self.synced.subscribe();
        matches!(tokio::time::timeout(limit, rx.wait_for(|s| *s)).await, Ok(Ok(_)))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The controller's answer for `authority` (normal form), subscribing on first use; `Err` when
    /// no answer came within the wait (the controller is unreachable or slow): never a guess that
    /// the destination is outside the mesh.
    pub async fn resolve(&self, authority: &str) -> Result<Option<Arc<ServiceProfile>>, super::Unavailable> {
        let entry = {
            let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
            entries.get(authority).cloned()
        };
        let entry = match entry {
            Some(e) => e,
            None => self.subscribe(authority),
        };
        entry.last_used.store(self.now_ms(), Ordering::Relaxed);
        let mut rx = entry.answer.subscribe();
        let answer = rx.borrow_and_update().clone();
        match answer {
            Answer::Found(p) => Ok(Some(p)),
            Answer::NotFound => Ok(None),
            Answer::Pending => {
                let waited = tokio::time::timeout(self.first_answer_timeout, rx.wait_for(|a| !matches!(a, Answer::Pending)))
                    .await;
                match waited {
                    Ok(Ok(a)) => match &*a {
                        Answer::Found(p) => Ok(Some(p.clone())),
                        _ => Ok(None),
                    },
                    _ => Err(super::Unavailable),
                }
            }
        }
    }

    fn subscribe(&self, authority: &str) -> Arc<Entry> {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.get(authority) {
            return e.clone();
        }
        if entries.len() >= self.max_subscriptions {
            let oldest = entries.iter().min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed)).map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                entries.remove(&oldest);
                tracing::debug!(authority = %oldest, "subscription limit reached; unsubscribing the least recently used");
                // If the queue is full the controller keeps it until the next reconnect, which
                // subscribes only the entries held.
                let _ = self.commands.try_send(Command::Unsubscribe(oldest));
            }
        }
        let key: Arc<str> = Arc::from(authority);
        let (answer, _) = watch::channel(Answer::Pending);
        let e = Arc::new(Entry { answer, last_used: AtomicU64::new(self.now_ms()) });
        entries.insert(key.clone(), e.clone());
        if self.commands.try_send(Command::Subscribe(key)).is_err() {
            // The stream task is behind; it resubscribes every known entry on its next connect.
            tracing::debug!(authority, "discovery command queue full");
        }
        e
    }

    fn set(&self, authority: &str, answer: Answer) {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.get(authority) {
            e.answer.send_replace(answer);
        }
    }

    /// Sets a found answer unless the one held is equal; returns whether it changed.
    fn set_profile(&self, authority: &str, profile: ServiceProfile) -> bool {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let Some(e) = entries.get(authority) else { return false };
        e.answer.send_if_modified(|current| match current {
            Answer::Found(held) if held.same_as(&profile) => false,
            _ => {
                *current = Answer::Found(Arc::new(profile));
                true
            }
        })
    }

    fn known(&self) -> Vec<Arc<str>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.keys().cloned().collect()
    }

    /// Removes entries not used for `idle`; returns them so the stream can unsubscribe.
    fn sweep(&self, idle: Duration) -> Vec<Arc<str>> {
        let now = self.now_ms();
        let idle = idle.as_millis() as u64;
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let stale: Vec<Arc<str>> = entries
            .iter()
            .filter(|(_, e)| now.saturating_sub(e.last_used.load(Ordering::Relaxed)) > idle)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &stale {
            entries.remove(k);
        }
        stale
    }
}

fn req(r: watch_request::Request) -> pb::WatchRequest {
    pb::WatchRequest { request: Some(r) }
}

async fn run(
    client: Arc<Client>,
    addr: String,
    who: Identity,
    metrics: Metrics,
    dns: Dns,
    mut commands: mpsc::Receiver<Command>,
) {
    use backon::BackoffBuilder;
    let policy = backon::ExponentialBuilder::default()
        .with_min_delay(BACKOFF_MIN)
        .with_max_delay(BACKOFF_MAX)
        .with_jitter()
        .without_max_times();
    let mut backoff = policy.build();
    loop {
        let started = Instant::now();
        let refused = match session(&client, &addr, &who, &metrics, &dns, &mut commands).await {
            Ok(()) => {
                tracing::info!(%addr, "discovery stream closed by the controller");
                false
            }
            Err(SessionError::Status(s)) if s.code() == tonic::Code::ResourceExhausted => {
                tracing::warn!(%addr, error = %s.message(), "the controller refused this proxy's subscriptions (STRAIT_MAX_SUBSCRIPTIONS is above its cap); backing off");
                true
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "discovery stream failed; serving the last good answers");
                false
            }
        };
        metrics.discovery_connected.set(0);
        metrics.discovery_lost();
        // A refused stream will be refused again until subscriptions age out: no fresh start.
        if started.elapsed() > BACKOFF_RESET_AFTER && !refused {
            backoff = policy.build();
        }
        tokio::time::sleep(backoff.next().unwrap_or(BACKOFF_MAX)).await;
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("controller address: {0}")]
    Address(std::io::Error),
}

async fn session(
    client: &Arc<Client>,
    addr: &str,
    who: &Identity,
    metrics: &Metrics,
    dns: &Dns,
    commands: &mut mpsc::Receiver<Command>,
) -> Result<(), SessionError> {
    let endpoint = crate::dns::grpc_endpoint(dns, addr, Duration::from_secs(2))
        .await
        .map_err(SessionError::Address)?
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = endpoint.connect().await?;
    let (out_tx, out_rx) = mpsc::channel::<pb::WatchRequest>(COMMANDS);
    let hello = watch_request::Request::Hello(pb::Hello {
        namespace: who.namespace.clone(),
        workload: who.workload.clone(),
        service_account: who.service_account.clone(),
        proxy_version: env!("CARGO_PKG_VERSION").to_string(),
    });
    // Capacity COMMANDS: the hello and a resubscription of every known authority fit unless a
    // proxy talks to more than that many authorities, in which case the sends below wait.
    let _ = out_tx.try_send(req(hello));
    let mut stream = DiscoveryClient::new(channel)
        .watch(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await?
        .into_inner();
    for authority in client.known() {
        let _ = out_tx.send(req(watch_request::Request::Subscribe(pb::Subscribe { authority: authority.to_string() }))).await;
    }
    metrics.discovery_connected.set(1);
    // Current once the controller has answered (it sends every subscription again at once), or
    // right away when nothing is subscribed.
    let mut confirmed = client.known().is_empty();
    if confirmed {
        metrics.discovery_current();
    }
    tracing::info!(%addr, "discovery stream connected");
    let mut sweep = tokio::time::interval(DEFAULT_IDLE_UNSUBSCRIBE / 4);
    loop {
        tokio::select! {
            msg = stream.message() => {
                let Some(msg) = msg? else { return Ok(()) };
                if !confirmed {
                    confirmed = true;
                    metrics.discovery_current();
                }
                client.synced.send_if_modified(|s| !std::mem::replace(s, true));
                if let Some(ack) = apply(client, metrics, msg) {
                    let _ = out_tx.send(req(ack)).await;
                }
            }
            Some(cmd) = commands.recv() => match cmd {
                Command::Subscribe(authority) => {
                    let _ = out_tx.send(req(watch_request::Request::Subscribe(pb::Subscribe { authority: authority.to_string() }))).await;
                }
                Command::Unsubscribe(authority) => {
                    let _ = out_tx.send(req(watch_request::Request::Unsubscribe(pb::Unsubscribe { authority: authority.to_string() }))).await;
                }
            },
            _ = sweep.tick() => {
                for authority in client.sweep(DEFAULT_IDLE_UNSUBSCRIBE) {
                    tracing::debug!(%authority, "unsubscribing idle authority");
                    let _ = out_tx.send(req(watch_request::Request::Unsubscribe(pb::Unsubscribe { authority: authority.to_string() }))).await;
                }
            }
        }
    }
}

/// Applies one message from the controller; returns the ACK or NACK to send.
fn apply(client: &Client, metrics: &Metrics, msg: pb::WatchResponse) -> Option<watch_request::Request> {
    match msg.response? {
        watch_response::Response::Service(u) => {
            let parsed = u.service.as_ref().map(ServiceProfile::from_proto);
            match parsed {
                Some(Ok(p)) => {
                    let result = if client.set_profile(&u.authority, p) { "applied" } else { "unchanged" };
                    metrics.discovery_updates.with_label_values(&[result]).inc();
                    Some(watch_request::Request::Ack(pb::Ack { authority: u.authority, version: u.version }))
                }
                Some(Err(e)) => {
                    metrics.discovery_updates.with_label_values(&["rejected"]).inc();
                    tracing::warn!(authority = %u.authority, version = u.version, error = %e, "rejecting discovery update; keeping the last good one");
                    Some(watch_request::Request::Nack(pb::Nack {
                        authority: u.authority,
                        version: u.version,
                        reason: e.to_string(),
                    }))
                }
                None => {
                    metrics.discovery_updates.with_label_values(&["rejected"]).inc();
                    Some(watch_request::Request::Nack(pb::Nack {
                        authority: u.authority,
                        version: u.version,
                        reason: "update without a service".into(),
                    }))
                }
            }
        }
        watch_response::Response::NotFound(n) => {
            client.set(&n.authority, Answer::NotFound);
            metrics.discovery_updates.with_label_values(&["not-found"]).inc();
            Some(watch_request::Request::Ack(pb::Ack { authority: n.authority, version: n.version }))
        }
        watch_response::Response::Inbound(p) => {
            client.inbound.send_replace(Arc::new(p));
            metrics.discovery_updates.with_label_values(&["inbound-policy"]).inc();
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn past_the_cap_the_least_recently_used_authority_is_dropped() {
        let (client, _task) = Client::new(
            "127.0.0.1:1".into(),
            Identity { namespace: "ns".into(), workload: "w".into(), service_account: "sa".into() },
            Metrics::new(),
            Dns::from_system(),
            Duration::from_secs(2),
            2,
        );
        client.subscribe("a:80");
        client.subscribe("b:80").last_used.store(1, Ordering::Relaxed);
        client.subscribe("a:80").last_used.store(2, Ordering::Relaxed);
        client.subscribe("c:80");
        let mut known: Vec<String> = client.known().iter().map(|k| k.to_string()).collect();
        known.sort();
        assert_eq!(known, ["a:80", "c:80"]);
    }
}
