//! The demo's load generator: a steady request rate through the client workload's proxy, used as
//! an HTTP proxy (absolute-form requests), the way an application on a laptop would.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

/// Requests per second, spread over `targets` in turn.
pub fn spawn(proxy: SocketAddr, targets: Vec<&'static str>, rps: u32) {
    let period = Duration::from_secs_f64(1.0 / rps.max(1) as f64);
    let conns: Arc<Mutex<Vec<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>>> = Arc::default();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut i = 0usize;
        loop {
            tick.tick().await;
            let url = targets[i % targets.len()];
            i += 1;
            let conns = conns.clone();
            tokio::spawn(async move {
                let _ = one(proxy, url, &conns).await;
            });
        }
    });
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
