//! Open-loop HTTP/1 load through a proxy's outbound listener, for the reliability runs: requests
//! are started at a fixed rate whatever the answers take (latency is measured from the moment a
//! request was due, so a stall shows in the tail instead of lowering the rate), over a pool of
//! keep-alive connections, with a bound on requests in flight. `GET /` and `POST /record` (a body
//! and a unique `x-request-id`, which `strait-testsrv http` remembers, so duplicates and losses can
//! be counted on the server side).
//!
//! Hand-written rather than a load tool: the runs need each request's outcome, time and id.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::client::conn::http1;
use tokio::{sync::Semaphore, task::JoinSet};

use crate::client::{self, HttpResponse};

/// Requests in flight at most; beyond it a due request waits (and its latency shows it).
pub const MAX_IN_FLIGHT: usize = 256;
/// A request that takes longer counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Pooled connections idle longer are not reused: the proxy may be closing them just then.
const IDLE_REUSE: Duration = Duration::from_secs(5);
/// Body of each `POST /record`.
pub const POST_BODY_BYTES: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Get,
    Post,
}

/// One request's outcome.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it was due, from the start of the load.
    pub at: Duration,
    /// From when it was due to the end of its response.
    pub latency: Duration,
    pub kind: Kind,
    /// Its `x-request-id` (also for GETs, unused there).
    pub id: u64,
    /// `None` when it succeeded (200 and the expected body); otherwise what went wrong.
    pub error: Option<String>,
}

impl Sample {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// What a load targets: `GET http://<authority>/` and `POST http://<authority>/record`.
#[derive(Clone, Debug)]
pub struct Target {
    pub proxy: SocketAddr,
    pub authority: String,
    pub rps: u32,
    /// Share of POSTs, in percent.
    pub post_percent: u32,
}

/// A running load; [`Load::stop`] ends it and returns every sample.
pub struct Load {
    started: Instant,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    pub fn start(target: Target) -> Load {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(run(target, started, stop.clone(), samples.clone()));
        Load { started, stop, samples, task }
    }

    /// Time since the load started (the `at` of a sample due now).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Samples of the requests finished so far.
    pub fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops starting requests, waits for those in flight, returns all samples in completion order.
    pub async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

async fn run(target: Target, started: Instant, stop: Arc<AtomicBool>, samples: Arc<Mutex<Vec<Sample>>>) {
    let pool = Arc::new(Pool { addr: target.proxy, idle: Mutex::new(Vec::new()) });
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(target.rps.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let body = Bytes::from(vec![b'x'; POST_BODY_BYTES]);
    let mut tasks = JoinSet::new();
    let mut id = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = tick.tick().await.into_std();
        id += 1;
        let kind = if id % 100 < u64::from(target.post_percent) { Kind::Post } else { Kind::Get };
        let Ok(permit) = limit.clone().acquire_owned().await else { break };
        let (pool, samples, authority, body) = (pool.clone(), samples.clone(), target.authority.clone(), body.clone());
        tasks.spawn(async move {
            let outcome = tokio::time::timeout(REQUEST_TIMEOUT, one(&pool, &authority, kind, id, body)).await;
            let error = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(format!("no answer within {REQUEST_TIMEOUT:?}")),
            };
            let sample = Sample { at: due.saturating_duration_since(started), latency: due.elapsed(), kind, id, error };
            samples.lock().unwrap_or_else(|p| p.into_inner()).push(sample);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn one(pool: &Pool, authority: &str, kind: Kind, id: u64, body: Bytes) -> Result<(), String> {
    let req = match kind {
        Kind::Get => {
            Request::get(format!("http://{authority}/")).header("host", authority).body(Full::new(Bytes::new()))
        }
        Kind::Post => Request::post(format!("http://{authority}/record"))
            .header("host", authority)
            .header("x-request-id", id.to_string())
            .body(Full::new(body)),
    }
    .map_err(|e| e.to_string())?;
    let rsp = pool.send(req).await.map_err(|e| e.to_string())?;
    if rsp.status != StatusCode::OK {
        let why = rsp.header("strait-error").unwrap_or("");
        return Err(format!("status {} {why} {}", rsp.status, rsp.text().trim()));
    }
    if kind == Kind::Post && rsp.text() != format!("recorded {id} bytes={POST_BODY_BYTES}") {
        return Err(format!("unexpected answer {:?}", rsp.text()));
    }
    Ok(())
}

/// Keep-alive HTTP/1 connections to the proxy, most recently used first.
struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<(Instant, http1::SendRequest<Full<Bytes>>)>>,
}

impl Pool {
    fn take(&self) -> Option<http1::SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((since, sender)) = idle.pop() {
            if since.elapsed() < IDLE_REUSE && sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> std::io::Result<HttpResponse> {
        let mut sender = match self.take() {
            Some(s) => s,
            None => client::http1_connect(self.addr).await?,
        };
        let rsp = sender.send_request(req).await.map_err(std::io::Error::other)?;
        let rsp = client::collect(rsp).await?;
        if rsp.header("connection") != Some("close") {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push((Instant::now(), sender));
        }
        Ok(rsp)
    }
}

/// Figures over a set of samples.
#[derive(Debug, Default)]
pub struct Summary {
    pub requests: usize,
    pub failures: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Summary {
        let mut lat = Vec::new();
        let mut failures = 0;
        for s in samples {
            lat.push(s.latency);
            failures += usize::from(!s.ok());
        }
        lat.sort();
        Summary {
            requests: lat.len(),
            failures,
            p50: crate::netns::percentile(&lat, 50.0),
            p99: crate::netns::percentile(&lat, 99.0),
            max: lat.last().copied().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests, {} failed, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.requests,
            self.failures,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3
        )
    }
}

/// Ids a set of `strait-testsrv http` servers recorded (their `GET /recorded`, concatenated),
/// checked against the POSTs that were answered.
#[derive(Debug, Default)]
pub struct Recorded {
    pub entries: usize,
    pub unique: usize,
    /// Ids recorded more than once (over all servers).
    pub duplicates: usize,
    /// POSTs answered 200 whose id no server recorded.
    pub lost: usize,
}

impl Recorded {
    pub fn check(recorded: &[String], samples: &[Sample]) -> Recorded {
        let mut seen = std::collections::HashMap::<&str, usize>::new();
        for id in recorded.iter().flat_map(|r| r.lines()).filter(|l| !l.is_empty()) {
            *seen.entry(id).or_default() += 1;
        }
        let entries = seen.values().sum();
        let duplicates = seen.values().filter(|&&n| n > 1).count();
        let lost = samples
            .iter()
            .filter(|s| s.kind == Kind::Post && s.ok())
            .filter(|s| !seen.contains_key(s.id.to_string().as_str()))
            .count();
        Recorded { entries, unique: seen.len(), duplicates, lost }
    }
}

/// `name`'s value from the environment, else `default` (the runs' sizes: `STRAIT_RELIABILITY_RPS`
/// and the like).
pub fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}
