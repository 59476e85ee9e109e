//! `strait stat`: golden metrics per destination service — success rate, request rate, latency
//! percentiles and retries — either from proxies' `/metrics` (two scrapes, the difference between
//! them) or from a Prometheus server's HTTP API (`--prometheus URL`, PromQL over a window).
//!
//! The exposition text is parsed with `prom_text_format_parser` (a grammar for the whole text
//! format, including escaped label values). `prometheus-parse` was considered and left: it splits
//! label lists on `,` and `=` and keeps escapes as they are, so a value holding `"`, `,`, `}` or a
//! newline comes out wrong. Label values are unescaped here (`unescape`), since that crate keeps
//! them as written. Quantiles follow PromQL's `histogram_quantile` (`histogram_quantile` below), so
//! the figures match a dashboard's over the same interval.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// Seconds between the two scrapes unless `--interval` says otherwise: long enough for a few
/// requests at a low rate, short enough to watch a change.
const DEFAULT_INTERVAL_SECS: u64 = 2;
/// The PromQL range of `--prometheus` queries unless `--window` says otherwise: four scrapes at
/// Prometheus's usual 15 s interval, the least `rate()` needs to be steady.
const DEFAULT_WINDOW: &str = "1m";
/// How long one scrape or query may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The quantiles the table shows.
const QUANTILES: [f64; 3] = [0.5, 0.95, 0.99];

#[derive(Debug, thiserror::Error)]
pub enum StatError {
    #[error("metrics text: {0}")]
    Parse(String),
    #[error("{0}: {1}")]
    Http(String, String),
    #[error("{url}: timed out after {REQUEST_TIMEOUT:?}")]
    Timeout { url: String },
    #[error(
        "--prometheus {0}: only http:// URLs are supported (port-forward or proxy a TLS endpoint)"
    )]
    Url(String),
    #[error("Prometheus query {query:?}: {message}")]
    Query { query: String, message: String },
    #[error("--direction {0}: must be outbound or inbound")]
    Direction(String),
}

#[derive(clap::Args)]
#[command(after_help = "\
Percentiles are interpolated within the bucket they fall in, as PromQL's histogram_quantile does \
(linearly between the bucket's bounds; a quantile in the +Inf bucket shows the highest finite bound), \
so they match a Grafana panel over the same interval. Without --prometheus the figures cover the \
INTERVAL between two scrapes of each --proxy, summed over the proxies.")]
pub struct Args {
    /// A proxy's admin address; repeat for several proxies (their figures are summed).
    #[arg(long, default_value = "127.0.0.1:7191")]
    pub proxy: Vec<SocketAddr>,
    /// Seconds between the two scrapes.
    #[arg(long, default_value_t = DEFAULT_INTERVAL_SECS)]
    pub interval: u64,
    /// `outbound` (what this workload calls) or `inbound` (who calls it).
    #[arg(long, default_value = "outbound")]
    pub direction: String,
    /// Query this Prometheus server (e.g. http://127.0.0.1:9090) instead of scraping proxies.
    #[arg(long, value_name = "URL")]
    pub prometheus: Option<String>,
    /// With --prometheus: the PromQL range of the rates (`30s`, `1m`, `5m`).
    #[arg(long, default_value = DEFAULT_WINDOW)]
    pub window: String,
    /// With --prometheus: extra label matchers for every series, e.g. `namespace="demo"`.
    #[arg(long, default_value = "")]
    pub selector: String,
}

pub async fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    if a.direction != "outbound" && a.direction != "inbound" {
        return Err(StatError::Direction(a.direction).into());
    }
    let rates = match &a.prometheus {
        Some(url) => query_prometheus(url, &a.direction, &a.window, &a.selector).await?,
        None => {
            let before = scrape_all(&a.proxy).await?;
            tokio::time::sleep(Duration::from_secs(a.interval)).await;
            let after = scrape_all(&a.proxy).await?;
            Rates::from_delta(&after.delta(&before), a.interval as f64)
        }
    };
    print!("{}", render_rates(&rates, &a.direction));
    Ok(())
}

async fn scrape_all(proxies: &[SocketAddr]) -> Result<Snapshot, StatError> {
    let mut total = Snapshot::default();
    for p in proxies {
        total.add(&Snapshot::parse(&scrape(*p).await?)?);
    }
    Ok(total)
}

/// `GET http://<addr>/metrics`.
pub async fn scrape(addr: SocketAddr) -> Result<String, StatError> {
    get(addr.to_string(), "/metrics".to_string()).await
}

/// A plain HTTP/1.1 GET of `path` on `authority`; the body as text unless the status is not 200.
async fn get(authority: String, path: String) -> Result<String, StatError> {
    let url = format!("http://{authority}{path}");
    let err = |e: &dyn std::fmt::Display| StatError::Http(url.clone(), e.to_string());
    let fetch = async {
        let tcp = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| err(&e))?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| err(&e))?;
        tokio::spawn(conn);
        let req = http::Request::get(&path)
            .header("host", &authority)
            .body(Empty::<Bytes>::new())
            .map_err(|e| err(&e))?;
        let rsp = tx.send_request(req).await.map_err(|e| err(&e))?;
        let status = rsp.status();
        let body = rsp
            .into_body()
            .collect()
            .await
            .map_err(|e| err(&e))?
            .to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        if status != http::StatusCode::OK {
            return Err(err(&format!("{status}: {}", text.trim())));
        }
        Ok(text)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fetch)
        .await
        .map_err(|_| StatError::Timeout { url: url.clone() })?
}

/// A series' labels, by name.
pub type Labels = HashMap<String, String>;

/// (direction, service): the key of every figure.
type Key = (String, String);

/// Counters and histogram buckets keyed by (direction, service), summed over the other labels.
#[derive(Default, Debug, Clone)]
pub struct Snapshot {
    /// (all requests, successful requests).
    pub requests: BTreeMap<Key, (f64, f64)>,
    /// Retries by destination service name.
    pub retries: BTreeMap<String, f64>,
    /// Cumulative bucket counts by upper bound (`f64::to_bits` of a non-negative bound keeps
    /// the numeric order, `+Inf` last).
    pub buckets: BTreeMap<Key, BTreeMap<u64, f64>>,
}

/// Resolves the text format's escapes in a label value: `\\`, `\"` and `\n`.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn parse_error(e: prom_text_format_parser::ScrapeParseError) -> String {
    use prom_text_format_parser::ScrapeParseError;
    match e {
        ScrapeParseError::Parse(message) => message,
        ScrapeParseError::Collect(errors) => errors
            .iter()
            .map(|e| {
                format!(
                    "lines {}-{}: {}",
                    e.line_no.start + 1,
                    e.line_no.end,
                    e.error
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// `service.namespace`, or the authority when the request named no service of the mesh.
fn service(l: &HashMap<String, String>) -> String {
    match (l.get("dst_service"), l.get("dst_namespace")) {
        (Some(s), Some(n)) if !s.is_empty() => format!("{s}.{n}"),
        _ => l.get("authority").cloned().unwrap_or_default(),
    }
}

impl Snapshot {
    pub fn parse(text: &str) -> Result<Self, StatError> {
        use prom_text_format_parser::{Scrape, Type, ValueType};
        let scrape = Scrape::parse(text).map_err(|e| StatError::Parse(parse_error(e)))?;
        let mut s = Snapshot::default();
        for metric in &scrape.metrics {
            for sample in &metric.samples {
                let l: HashMap<String, String> = sample
                    .labels
                    .iter()
                    .map(|l| (l.key.clone(), unescape(&l.value)))
                    .collect();
                let value = sample.value.value.as_f64();
                let key = || (l.get("direction").cloned().unwrap_or_default(), service(&l));
                match (metric.name.as_str(), metric.kind, sample.value.value_type) {
                    ("strait_requests_total", _, _) => {
                        let e = s.requests.entry(key()).or_default();
                        e.0 += value;
                        if l.get("outcome").map(String::as_str) == Some("success") {
                            e.1 += value;
                        }
                    }
                    ("strait_retries_total", _, _) => {
                        let svc = l.get("dst_service").cloned().unwrap_or_default();
                        *s.retries.entry(svc).or_default() += value;
                    }
                    ("strait_request_duration_seconds", Type::Histogram, ValueType::Sample) => {
                        let le = l
                            .get("le")
                            .map_or(f64::INFINITY, |le| le.parse().unwrap_or(f64::INFINITY));
                        if le >= 0.0 {
                            *s.buckets
                                .entry(key())
                                .or_default()
                                .entry(le.to_bits())
                                .or_default() += value;
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(s)
    }

    /// Adds another proxy's figures to these.
    pub fn add(&mut self, other: &Snapshot) {
        for (k, v) in &other.requests {
            let e = self.requests.entry(k.clone()).or_default();
            e.0 += v.0;
            e.1 += v.1;
        }
        for (k, v) in &other.retries {
            *self.retries.entry(k.clone()).or_default() += v;
        }
        for (k, m) in &other.buckets {
            let e = self.buckets.entry(k.clone()).or_default();
            for (le, v) in m {
                *e.entry(*le).or_default() += v;
            }
        }
    }

    /// What happened between `before` and this snapshot.
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

/// The `q` quantile of a histogram given as (upper bound, cumulative count) pairs, computed as
/// PromQL's `histogram_quantile` does: NaN without a `+Inf` bucket, with fewer than two buckets or
/// with no observations; the bucket where the rank `q × count` falls is found, and the value is
/// interpolated linearly between its lower bound (the previous bucket's upper bound, or 0 for the
/// first bucket) and its upper bound; a rank in the `+Inf` bucket gives the highest finite bound.
/// `q` below 0 gives -Inf, above 1 +Inf. Counts that decrease from one bucket to the next (from a
/// scrape between two bucket updates) are taken as flat, as Prometheus does.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    let mut b: Vec<(f64, f64)> = buckets.to_vec();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let Some(last) = b.last() else {
        return f64::NAN;
    };
    if b.len() < 2 || last.0 != f64::INFINITY {
        return f64::NAN;
    }
    let mut max = f64::NEG_INFINITY;
    for bucket in b.iter_mut() {
        max = max.max(bucket.1);
        bucket.1 = max;
    }
    let total = b[b.len() - 1].1;
    if total <= 0.0 {
        return f64::NAN;
    }
    let mut rank = q * total;
    let i = b[..b.len() - 1]
        .iter()
        .position(|x| x.1 >= rank)
        .unwrap_or(b.len() - 1);
    if i == b.len() - 1 {
        return b[b.len() - 2].0;
    }
    if i == 0 && b[0].0 <= 0.0 {
        return b[0].0;
    }
    let (start, below) = if i == 0 {
        (0.0, 0.0)
    } else {
        (b[i - 1].0, b[i - 1].1)
    };
    let (end, count) = (b[i].0, b[i].1 - below);
    rank -= below;
    start + (end - start) * (rank / count)
}

/// Per (direction, service), per second: what the table shows.
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Rates {
    pub services: BTreeMap<Key, ServiceRates>,
    /// Retries per second by destination service name.
    pub retries: BTreeMap<String, f64>,
}

#[derive(Default, Debug, Clone, PartialEq)]
pub struct ServiceRates {
    pub rps: f64,
    /// Share of successful requests, 0 to 1 (NaN without requests).
    pub success: f64,
    /// p50, p95, p99 in seconds (NaN when unknown).
    pub quantiles: [f64; 3],
}

impl Rates {
    /// Rates from the difference of two snapshots `secs` apart.
    pub fn from_delta(d: &Snapshot, secs: f64) -> Rates {
        let secs = secs.max(f64::MIN_POSITIVE);
        let mut r = Rates::default();
        for (key, (total, ok)) in &d.requests {
            if *total <= 0.0 {
                continue;
            }
            let buckets: Vec<(f64, f64)> = d
                .buckets
                .get(key)
                .map(|m| m.iter().map(|(le, c)| (f64::from_bits(*le), *c)).collect())
                .unwrap_or_default();
            let quantiles = QUANTILES.map(|q| histogram_quantile(q, &buckets));
            r.services.insert(
                key.clone(),
                ServiceRates {
                    rps: total / secs,
                    success: ok / total,
                    quantiles,
                },
            );
        }
        r.retries = d
            .retries
            .iter()
            .map(|(k, v)| (k.clone(), v / secs))
            .collect();
        r
    }
}

/// Milliseconds with three significant digits, or `-`.
fn ms(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "-".to_string();
    }
    let v = seconds * 1000.0;
    if v < 1.0 {
        format!("{v:.3}ms")
    } else if v < 10.0 {
        format!("{v:.2}ms")
    } else if v < 100.0 {
        format!("{v:.1}ms")
    } else {
        format!("{v:.0}ms")
    }
}

pub fn render_rates(r: &Rates, direction: &str) -> String {
    let mut out = format!(
        "{:<28} {:>9} {:>8} {:>9} {:>9} {:>9} {:>10}\n",
        "SERVICE", "SUCCESS", "RPS", "P50", "P95", "P99", "RETRIES/S"
    );
    for ((dir, svc), s) in &r.services {
        if dir != direction {
            continue;
        }
        let name = svc.split('.').next().unwrap_or("");
        let retries = r.retries.get(name).copied().unwrap_or(0.0);
        let success = if s.success.is_finite() {
            format!("{:.2}%", 100.0 * s.success)
        } else {
            "-".to_string()
        };
        out.push_str(&format!(
            "{:<28} {:>9} {:>8.1} {:>9} {:>9} {:>9} {:>10.1}\n",
            if svc.is_empty() { "(unknown)" } else { svc },
            success,
            s.rps,
            ms(s.quantiles[0]),
            ms(s.quantiles[1]),
            ms(s.quantiles[2]),
            retries
        ));
    }
    out
}

/// The table for the difference of two snapshots `secs` apart (what `strait demo` prints).
pub fn render(d: &Snapshot, direction: &str, secs: f64) -> String {
    render_rates(&Rates::from_delta(d, secs), direction)
}

/// The PromQL of one `--prometheus` figure, grouped by destination service.
fn promql(figure: Figure, direction: &str, window: &str, selector: &str) -> String {
    let extra = if selector.trim().is_empty() {
        String::new()
    } else {
        format!(",{selector}")
    };
    let m = |name: &str, more: &str| format!("{name}{{direction=\"{direction}\"{more}{extra}}}");
    let by = "dst_namespace, dst_service";
    match figure {
        Figure::Requests => format!(
            "sum by ({by}) (rate({}[{window}]))",
            m("strait_requests_total", "")
        ),
        Figure::Successes => {
            format!(
                "sum by ({by}) (rate({}[{window}]))",
                m("strait_requests_total", ",outcome=\"success\"")
            )
        }
        Figure::Quantile(q) => format!(
            "histogram_quantile({q}, sum by ({by}, le) (rate({}[{window}])))",
            m("strait_request_duration_seconds_bucket", "")
        ),
        Figure::Retries => {
            let sel = if selector.trim().is_empty() {
                String::new()
            } else {
                format!("{{{selector}}}")
            };
            format!("sum by (dst_service) (rate(strait_retries_total{sel}[{window}]))")
        }
    }
}

#[derive(Clone, Copy)]
enum Figure {
    Requests,
    Successes,
    Quantile(f64),
    Retries,
}

/// The golden metrics over `window` from a Prometheus server's `/api/v1/query`.
async fn query_prometheus(
    base: &str,
    direction: &str,
    window: &str,
    selector: &str,
) -> Result<Rates, StatError> {
    let uri: http::Uri = base.parse().map_err(|_| StatError::Url(base.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(StatError::Url(base.to_string()));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| StatError::Url(base.to_string()))?
        .to_string();
    let prefix = uri.path().trim_end_matches('/').to_string();
    let query = |figure| {
        let q = promql(figure, direction, window, selector);
        let (authority, prefix) = (authority.clone(), prefix.clone());
        async move {
            let encoded: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("query", &q)
                .finish();
            let body = get(authority, format!("{prefix}/api/v1/query?{encoded}")).await?;
            parse_vector(&body).map_err(|message| StatError::Query { query: q, message })
        }
    };
    let mut r = Rates::default();
    let key = |l: &HashMap<String, String>| (direction.to_string(), service(l));
    for (l, v) in query(Figure::Requests).await? {
        if v > 0.0 {
            r.services.insert(
                key(&l),
                ServiceRates {
                    rps: v,
                    success: 0.0,
                    quantiles: [f64::NAN; 3],
                },
            );
        }
    }
    for (l, v) in query(Figure::Successes).await? {
        if let Some(s) = r.services.get_mut(&key(&l)) {
            s.success = v / s.rps;
        }
    }
    for (i, q) in QUANTILES.iter().enumerate() {
        for (l, v) in query(Figure::Quantile(*q)).await? {
            if let Some(s) = r.services.get_mut(&key(&l)) {
                s.quantiles[i] = v;
            }
        }
    }
    for (l, v) in query(Figure::Retries).await? {
        r.retries
            .insert(l.get("dst_service").cloned().unwrap_or_default(), v);
    }
    Ok(r)
}

/// The samples of an instant-vector answer of the Prometheus HTTP API:
/// `{"status":"success","data":{"resultType":"vector","result":[{"metric":{..},"value":[t,"v"]}]}}`.
pub fn parse_vector(body: &str) -> Result<Vec<(Labels, f64)>, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        status: String,
        #[serde(default)]
        error: String,
        data: Option<Data>,
    }
    #[derive(serde::Deserialize)]
    struct Data {
        #[serde(rename = "resultType")]
        result_type: String,
        result: Vec<Series>,
    }
    #[derive(serde::Deserialize)]
    struct Series {
        metric: HashMap<String, String>,
        value: (f64, String),
    }
    let a: Answer =
        serde_json::from_str(body).map_err(|e| format!("not a Prometheus API answer: {e}"))?;
    if a.status != "success" {
        return Err(format!("{}: {}", a.status, a.error));
    }
    let data = a.data.ok_or("no data in the answer")?;
    if data.result_type != "vector" {
        return Err(format!("expected a vector, got a {}", data.result_type));
    }
    Ok(data
        .result
        .into_iter()
        .map(|s| {
            let v = match s.value.1.as_str() {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or(f64::NAN),
            };
            (s.metric, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDERS: &str = r#"# HELP strait_requests_total HTTP requests the proxy handled.
# TYPE strait_requests_total counter
strait_requests_total{authority="a:1",direction="outbound",dst_namespace="demo",dst_service="orders",grpc_status="",outcome="success",peer_id="",status_code="200",tls="true"} 90
strait_requests_total{authority="a:1",direction="outbound",dst_namespace="demo",dst_service="orders",grpc_status="",outcome="failure",peer_id="",status_code="500",tls="true"} 10
# HELP strait_request_duration_seconds Time to the response headers.
# TYPE strait_request_duration_seconds histogram
strait_request_duration_seconds_bucket{authority="a:1",direction="outbound",dst_namespace="demo",dst_service="orders",outcome="success",peer_id="",tls="true",le="0.005"} 50
strait_request_duration_seconds_bucket{authority="a:1",direction="outbound",dst_namespace="demo",dst_service="orders",outcome="success",peer_id="",tls="true",le="0.01"} 99
strait_request_duration_seconds_bucket{authority="a:1",direction="outbound",dst_namespace="demo",dst_service="orders",outcome="success",peer_id="",tls="true",le="+Inf"} 100
strait_request_duration_seconds_sum{authority="a:1",direction="outbound",dst_namespace="demo",dst_service="orders",outcome="success",peer_id="",tls="true"} 0.6
strait_request_duration_seconds_count{authority="a:1",direction="outbound",dst_namespace="demo",dst_service="orders",outcome="success",peer_id="",tls="true"} 100
"#;

    fn key() -> Key {
        ("outbound".to_string(), "orders.demo".to_string())
    }

    #[test]
    fn computes_rates_and_quantiles() {
        let d = Snapshot::parse(ORDERS).unwrap().delta(&Snapshot::default());
        assert_eq!(d.requests[&key()], (100.0, 90.0));
        let r = Rates::from_delta(&d, 10.0);
        let s = &r.services[&key()];
        assert_eq!((s.rps, s.success), (10.0, 0.9));
        // Rank 50 is the end of the first bucket; rank 99 the end of the second.
        assert_eq!(s.quantiles[0], 0.005);
        assert!((s.quantiles[2] - 0.01).abs() < 1e-12, "{:?}", s.quantiles);
        let table = render_rates(&r, "outbound");
        assert!(
            table.contains("orders.demo") && table.contains("90.00%") && table.contains("5.00ms"),
            "{table}"
        );
    }

    #[test]
    fn interpolates_as_histogram_quantile() {
        // Hand-computed as PromQL does it: rank = q × 100, found in the first bucket whose
        // cumulative count reaches it, interpolated between that bucket's bounds.
        let b = [(0.005, 50.0), (0.01, 99.0), (f64::INFINITY, 100.0)];
        let close = |q: f64, want: f64| {
            let got = histogram_quantile(q, &b);
            assert!((got - want).abs() < 1e-12, "q={q}: got {got}, want {want}");
        };
        close(0.25, 0.0025); // rank 25 of 50 in [0, 0.005]
        close(0.5, 0.005); // rank 50: the first bucket's upper bound
        close(0.9, 0.005 + 0.005 * 40.0 / 49.0); // rank 90: 40 of the 49 in (0.005, 0.01]
        close(0.99, 0.01); // rank 99
        close(0.995, 0.01); // in the +Inf bucket: the highest finite bound
        close(0.0, 0.0);
        // The proxy's layout: 0.1 ms buckets and a 0.25 ms one.
        let b = [
            (0.0001, 10.0),
            (0.00025, 70.0),
            (0.0005, 100.0),
            (f64::INFINITY, 100.0),
        ];
        let got = histogram_quantile(0.5, &b);
        assert!(
            (got - (0.0001 + 0.00015 * 40.0 / 60.0)).abs() < 1e-15,
            "{got}"
        );
        // Input order does not matter; decreasing counts are taken as flat.
        let b = [(f64::INFINITY, 10.0), (1.0, 10.0), (0.5, 12.0)];
        // Sorted and made monotonic: (0.5, 12), (1, 12), (+Inf, 12); rank 6 of 12 in [0, 0.5].
        assert_eq!(histogram_quantile(0.5, &b), 0.25);
        // What Prometheus answers NaN or infinities for.
        assert!(
            histogram_quantile(0.5, &[(0.1, 5.0), (1.0, 9.0)]).is_nan(),
            "no +Inf bucket"
        );
        assert!(
            histogram_quantile(0.5, &[(f64::INFINITY, 5.0)]).is_nan(),
            "one bucket"
        );
        assert!(
            histogram_quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]).is_nan(),
            "no observations"
        );
        assert_eq!(histogram_quantile(-0.1, &b), f64::NEG_INFINITY);
        assert_eq!(histogram_quantile(1.1, &b), f64::INFINITY);
    }

    #[test]
    fn label_values_with_quotes_backslashes_and_newlines_round_trip() {
        // The proxy's own encoder escapes the value; the parser must give back the same string.
        let odd = "or\"ders\\x\nnext,a=b}";
        let registry = prometheus::Registry::new();
        let c = prometheus::IntCounterVec::new(
            prometheus::Opts::new("strait_requests_total", "HTTP requests."),
            &["direction", "authority", "outcome"],
        )
        .unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.with_label_values(&["outbound", odd, "success"]).inc_by(3);
        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut text)
            .unwrap();
        assert!(
            text.contains(r#"authority="or\"ders\\x\nnext,a=b}""#),
            "{text}"
        );
        let s = Snapshot::parse(&text).unwrap();
        assert_eq!(
            s.requests.get(&("outbound".to_string(), odd.to_string())),
            Some(&(3.0, 3.0)),
            "{s:?}"
        );
        assert_eq!(unescape(r#"a\"b\\c\nd"#), "a\"b\\c\nd");
    }

    #[test]
    fn bad_text_is_an_error() {
        assert!(Snapshot::parse("strait_requests_total{direction=\"outbound} 1\n").is_err());
    }

    #[test]
    fn sums_proxies() {
        let one = Snapshot::parse(ORDERS).unwrap();
        let mut two = one.clone();
        two.add(&one);
        assert_eq!(two.requests[&key()], (200.0, 180.0));
        assert_eq!(two.buckets[&key()][&f64::INFINITY.to_bits()], 200.0);
    }

    #[test]
    fn reads_prometheus_answers_and_writes_promql() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"dst_service":"orders","dst_namespace":"demo"},"value":[1700000000.1,"12.5"]},
            {"metric":{"dst_service":"pay","dst_namespace":"demo"},"value":[1700000000.1,"NaN"]}]}}"#;
        let v = parse_vector(body).unwrap();
        assert_eq!(v[0].1, 12.5);
        assert!(v[1].1.is_nan());
        let err =
            parse_vector(r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#)
                .unwrap_err();
        assert!(err.contains("parse error"), "{err}");
        assert_eq!(
            promql(
                Figure::Quantile(0.99),
                "outbound",
                "1m",
                "namespace=\"demo\""
            ),
            "histogram_quantile(0.99, sum by (dst_namespace, dst_service, le) \
             (rate(strait_request_duration_seconds_bucket{direction=\"outbound\",namespace=\"demo\"}[1m])))"
        );
        assert_eq!(
            promql(Figure::Retries, "outbound", "30s", ""),
            "sum by (dst_service) (rate(strait_retries_total[30s]))"
        );
    }
}
