//! The demo's application servers: plain HTTP services with faults that can be switched on while
//! traffic flows (a share of 500s, added latency).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Default)]
pub struct Faults {
    /// Share of requests answered with 500, in percent.
    pub error_percent: AtomicU32,
    /// Added latency per request, in milliseconds.
    pub latency_ms: AtomicU32,
}

pub struct App {
    pub addr: SocketAddr,
    pub faults: Arc<Faults>,
}

pub async fn start(name: &'static str) -> std::io::Result<App> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let faults = Arc::new(Faults::default());
    let f = faults.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let f = f.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let f = f.clone();
                    async move { Ok::<_, Infallible>(respond(name, &f, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(App { addr, faults })
}

async fn respond<B>(name: &str, f: &Faults, req: http::Request<B>) -> http::Response<Full<Bytes>> {
    let latency = f.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        // Some jitter so the latency percentiles look like a real service's.
        let ms = latency / 2 + fastrand::u32(0..=latency);
        tokio::time::sleep(Duration::from_millis(ms as u64)).await;
    }
    let fail = fastrand::u32(0..100) < f.error_percent.load(Ordering::Relaxed);
    let status = if fail { 500 } else { 200 };
    let who = req.headers().get("strait-client-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
    let body = format!("{name}: {} {} (client {who})\n", req.method(), req.uri().path());
    let mut rsp = http::Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    rsp
}
