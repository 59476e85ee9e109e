//! Golden metrics from a proxy's `/metrics`: per destination service, success rate, request rate
//! and latency percentiles over an interval (two scrapes, the difference between them).

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

#[derive(clap::Args)]
pub struct Args {
    /// A proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:7191")]
    pub proxy: SocketAddr,
    /// Seconds between the two scrapes.
    #[arg(long, default_value_t = 2)]
    pub interval: u64,
    /// `outbound` (what this workload calls) or `inbound` (who calls it).
    #[arg(long, default_value = "outbound")]
    pub direction: String,
}

pub async fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let before = Snapshot::parse(&scrape(a.proxy).await?);
    tokio::time::sleep(Duration::from_secs(a.interval)).await;
    let after = Snapshot::parse(&scrape(a.proxy).await?);
    print!("{}", render(&after.delta(&before), &a.direction, a.interval as f64));
    Ok(())
}

pub async fn scrape(addr: SocketAddr) -> Result<String, Box<dyn std::error::Error>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::get("/metrics").header("host", addr.to_string()).body(Empty::<bytes::Bytes>::new())?;
    let rsp = tx.send_request(req).await?;
    let body = rsp.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Counters and histogram buckets keyed by (direction, service), summed over the other labels.
#[derive(Default, Debug, Clone)]
pub struct Snapshot {
    pub requests: BTreeMap<(String, String), (f64, f64)>,
    /// Retries by destination service name.
    pub retries: BTreeMap<String, f64>,
    pub buckets: BTreeMap<(String, String), BTreeMap<u64, f64>>,
}

fn labels(s: &str) -> BTreeMap<&str, &str> {
    let mut m = BTreeMap::new();
    for part in s.split("\",").map(|p| p.trim_end_matches('"')) {
        if let Some((k, v)) = part.split_once("=\"") {
            m.insert(k.trim_start_matches(','), v);
        }
    }
    m
}

fn service(l: &BTreeMap<&str, &str>) -> String {
    match (l.get("dst_service"), l.get("dst_namespace")) {
        (Some(s), Some(n)) if !s.is_empty() => format!("{s}.{n}"),
        _ => l.get("authority").map(|a| a.to_string()).unwrap_or_default(),
    }
}

impl Snapshot {
    pub fn parse(text: &str) -> Self {
        let mut s = Snapshot::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let Some((name, rest)) = series.split_once('{') else { continue };
            let l = labels(rest.trim_end_matches('}'));
            let key = (l.get("direction").copied().unwrap_or("").to_string(), service(&l));
            match name {
                "strait_requests_total" => {
                    let e = s.requests.entry(key).or_default();
                    e.0 += value;
                    if l.get("outcome") == Some(&"success") {
                        e.1 += value;
                    }
                }
                "strait_retries_total" => {
                    let svc = l.get("dst_service").copied().unwrap_or("").to_string();
                    *s.retries.entry(svc).or_default() += value;
                }
                "strait_request_duration_seconds_bucket" => {
                    let le = l.get("le").copied().unwrap_or("+Inf");
                    let le = if le == "+Inf" { u64::MAX } else { (le.parse::<f64>().unwrap_or(0.0) * 1e6) as u64 };
                    *s.buckets.entry(key).or_default().entry(le).or_default() += value;
                }
                _ => {}
            }
        }
        s
    }

    pub fn delta(&self, before: &Snapshot) -> Snapshot {
        let mut d = self.clone();
        for (k, v) in d.requests.iter_mut() {
            if let Some(b) = before.requests.get(k) {
                v.0 -= b.0;
                v.1 -= b.1;
            }
        }
        for (k, v) in d.retries.iter_mut() {
            *v -= before.retries.get(k).copied().unwrap_or(0.0);
        }
        for (k, m) in d.buckets.iter_mut() {
            if let Some(b) = before.buckets.get(k) {
                for (le, v) in m.iter_mut() {
                    *v -= b.get(le).copied().unwrap_or(0.0);
                }
            }
        }
        d
    }
}

/// The `q` quantile in milliseconds from cumulative buckets (upper bound of the bucket it falls in).
pub fn quantile_ms(buckets: &BTreeMap<u64, f64>, q: f64) -> Option<f64> {
    let total = *buckets.get(&u64::MAX)?;
    if total <= 0.0 {
        return None;
    }
    let want = total * q;
    buckets.iter().find(|(_, c)| **c >= want).map(|(le, _)| if *le == u64::MAX { f64::INFINITY } else { *le as f64 / 1000.0 })
}

pub fn render(d: &Snapshot, direction: &str, secs: f64) -> String {
    let mut out = format!(
        "{:<28} {:>9} {:>8} {:>9} {:>9} {:>9} {:>10}\n",
        "SERVICE", "SUCCESS", "RPS", "P50", "P95", "P99", "RETRIES/S"
    );
    for ((dir, svc), (total, ok)) in &d.requests {
        if dir != direction || *total <= 0.0 {
            continue;
        }
        let b = d.buckets.get(&(dir.clone(), svc.clone()));
        let q = |q| b.and_then(|b| quantile_ms(b, q)).map_or("-".to_string(), |v| format!("{v}ms"));
        let name = svc.split('.').next().unwrap_or("");
        let retries = d.retries.get(name).copied().unwrap_or(0.0) / secs;
        out.push_str(&format!(
            "{:<28} {:>8.2}% {:>8.1} {:>9} {:>9} {:>9} {:>10.1}\n",
            if svc.is_empty() { "(unknown)" } else { svc },
            100.0 * ok / total,
            total / secs,
            q(0.5),
            q(0.95),
            q(0.99),
            retries
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_rates_and_quantiles() {
        let a = r#"strait_requests_total{authority="a:1",direction="outbound",dst_namespace="demo",dst_service="orders",grpc_status="",outcome="success",peer_id="",status_code="200",tls="true"} 90
strait_requests_total{authority="a:1",direction="outbound",dst_namespace="demo",dst_service="orders",grpc_status="",outcome="failure",peer_id="",status_code="500",tls="true"} 10
strait_request_duration_seconds_bucket{authority="a:1",direction="outbound",dst_namespace="demo",dst_service="orders",outcome="success",peer_id="",tls="true",le="0.005"} 50
strait_request_duration_seconds_bucket{authority="a:1",direction="outbound",dst_namespace="demo",dst_service="orders",outcome="success",peer_id="",tls="true",le="0.01"} 99
strait_request_duration_seconds_bucket{authority="a:1",direction="outbound",dst_namespace="demo",dst_service="orders",outcome="success",peer_id="",tls="true",le="+Inf"} 100
"#;
        let s = Snapshot::parse(a);
        let d = s.delta(&Snapshot::default());
        let k = ("outbound".to_string(), "orders.demo".to_string());
        assert_eq!(d.requests[&k], (100.0, 90.0));
        assert_eq!(quantile_ms(&d.buckets[&k], 0.5), Some(5.0));
        assert_eq!(quantile_ms(&d.buckets[&k], 0.99), Some(10.0));
        let table = render(&d, "outbound", 10.0);
        assert!(table.contains("orders.demo") && table.contains("90.00%") && table.contains("10.0"), "{table}");
    }
}
