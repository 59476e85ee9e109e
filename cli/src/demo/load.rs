//! The demo's load generator: a steady request rate through the client workload's proxy, used as
//! an HTTP proxy (absolute-form requests), the way an application on a laptop would. It counts what
//! it got back per target, so the proxies' metrics (and dashboards built on them) can be checked
//! against what the client itself saw.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

/// Completed requests of one target: `ok` got a response below 500, `failed` a 5xx or no response.
#[derive(Default)]
pub struct Count {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

/// Requests per second, spread over `targets` in turn; the counts are in the order of `targets`.
pub fn spawn(proxy: SocketAddr, targets: Vec<&'static str>, rps: u32) -> Arc<Vec<Count>> {
    let counts: Arc<Vec<Count>> = Arc::new(targets.iter().map(|_| Count::default()).collect());
    let c = counts.clone();
    let period = Duration::from_secs_f64(1.0 / rps.max(1) as f64);
    let conns: Arc<Mutex<Vec<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>>> = Arc::default();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut i = 0usize;
        loop {
            tick.tick().await;
            let n = i % targets.len();
            let url = targets[n];
            i += 1;
            let conns = conns.clone();
            let c = c.clone();
            tokio::spawn(async move {
                let ok = one(proxy, url, &conns).await.is_ok_and(|status| status < 500);
                if let Some(count) = c.get(n) {
                    if ok { &count.ok } else { &count.failed }.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    counts
}

async fn one(
    proxy: SocketAddr,
    url: &str,
    pool: &Mutex<Vec<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>>,
) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    let mut tx = match pool.lock().await.pop() {
        Some(tx) if !tx.is_closed() => tx,
        _ => {
            let tcp = tokio::net::TcpStream::connect(proxy).await?;
            let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            tx
        }
    };
    tx.ready().await?;
    let uri: http::Uri = url.parse()?;
    let host = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let req = http::Request::get(uri).header("host", host).body(Empty::new())?;
    let rsp = tx.send_request(req).await?;
    let status = rsp.status().as_u16();
    rsp.into_body().collect().await?;
    pool.lock().await.push(tx);
    Ok(status)
}
