//! `strait-bench-controller`: the load generator of `make bench-controller` (`bench/controller.sh`,
//! described in `bench/README.md`).
//!
//! - `strait-bench-controller mesh --services N --out FILE` writes the starting mesh file: N services
//!   of 10 endpoints each.
//! - `strait-bench-controller run ...` holds P simulated proxies on a running controller (one
//!   `Discovery.Watch` stream each, multiplexed over connections), waits until every subscription has
//!   its first snapshot, then moves endpoints in the mesh file at a fixed rate and measures, for every
//!   change, when each subscriber of the changed service receives it. It writes a Markdown report.
//! - `strait-bench-controller run --source kubernetes ... -- CONTROLLER COMMAND` does the same in
//!   Kubernetes mode: it starts the test API server in this process (`kube` module), fills it with
//!   the mesh as Services, EndpointSlices and Pods, writes a kubeconfig, starts the controller with
//!   the given command, and changes one EndpointSlice per change.
//!
//! How a change is recognised: each service has a generation `g`, 0 at the start. Change `g` moves
//! endpoint `g % 10` of the service to port `10000 + g`, so the highest endpoint port of a snapshot
//! tells a subscriber which generation it holds (8080 everywhere: 0), and every generation up to it
//! counts as delivered at that moment (a change superseded before it was served is delivered by the
//! snapshot that contains it). The mutator is in this process, so both ends use one clock.

#[path = "bench_controller/kube.rs"]
mod kube;

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use clap::{Args, Parser, Subcommand};
use strait_proto::discovery::v1::{
    self as pb, discovery_client::DiscoveryClient, watch_request::Request, watch_response::Response,
};
use strait_tests::metrics;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

const ENDPOINTS_PER_SERVICE: usize = 10;
const SERVICE_PORT: u16 = 8080;
/// Sidecar inbound port of every endpoint (meshed endpoints).
const PROXY_PORT: u16 = 4143;
/// Endpoint ports at and above this encode the service's generation.
const GENERATION_PORT_BASE: u32 = 10_000;
const MAX_GENERATION: u32 = 65_535 - GENERATION_PORT_BASE;
const NAMESPACES: usize = 100;
const CLUSTER_DOMAIN: &str = "cluster.local";

#[derive(Parser)]
#[command(
    name = "strait-bench-controller",
    about = "Load generator of `make bench-controller`"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes the starting mesh file (every service at generation 0).
    Mesh(MeshFileArgs),
    /// Runs the simulated proxies and the mutator against a running controller (embedded mode) or
    /// one it starts against its own test API server (Kubernetes mode); writes the report.
    Run(Box<RunArgs>),
}

#[derive(Args, Clone)]
struct MeshArgs {
    /// Services in the mesh; each has 10 endpoints.
    #[arg(long)]
    services: usize,
    /// Meshed endpoints: each service has its own workload (identity), and its endpoints a sidecar
    /// address. `false`: plain endpoints, no workloads (Kubernetes mode: Pods without the sidecar).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    meshed: bool,
}

#[derive(Args, Clone)]
struct MeshFileArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// The mesh file to write.
    #[arg(long)]
    out: PathBuf,
}

/// Where the controller reads the mesh from.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Source {
    /// `--mesh-file`: changes are rewrites of the file.
    Embedded,
    /// `--kubernetes`: changes are EndpointSlice updates in the test API server.
    Kubernetes,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// The mesh's source.
    #[arg(long, value_enum, default_value_t = Source::Embedded)]
    source: Source,
    /// Embedded mode: the mesh file the controller serves (rewritten with every batch of changes).
    #[arg(long, required_if_eq("source", "embedded"))]
    out: Option<PathBuf>,
    /// The controller's discovery address.
    #[arg(long)]
    discovery: SocketAddr,
    /// The controller's admin address (for /metrics, and /ready in Kubernetes mode).
    #[arg(long)]
    admin: SocketAddr,
    /// Embedded mode: the running controller's process id (for its RSS and CPU time from /proc).
    #[arg(long, required_if_eq("source", "embedded"))]
    controller_pid: Option<u32>,
    /// Kubernetes mode: where to write the kubeconfig of the test API server (the controller
    /// command names the same file).
    #[arg(long, required_if_eq("source", "kubernetes"))]
    kubeconfig: Option<PathBuf>,
    /// Kubernetes mode: the controller's output is appended to this file.
    #[arg(long, default_value = "controller.log")]
    controller_log: PathBuf,
    /// Kubernetes mode: the started controller's pid is written to this file.
    #[arg(long)]
    controller_pid_file: Option<PathBuf>,
    /// Kubernetes mode: seconds to wait for the controller's /ready.
    #[arg(long, default_value_t = 900)]
    ready_timeout: u64,
    /// Kubernetes mode: the command that starts the controller (after `--`), e.g.
    /// `taskset -c 1 strait-controller --kubernetes --kubeconfig FILE ...`.
    #[arg(last = true)]
    controller: Vec<String>,
    /// Simulated proxies: one Discovery.Watch stream each.
    #[arg(long)]
    proxies: usize,
    /// Streams per HTTP/2 connection (1: a connection per proxy, as real sidecars have).
    #[arg(long, default_value_t = 1)]
    streams_per_connection: usize,
    /// Services each proxy subscribes to.
    #[arg(long, default_value_t = 10)]
    subscriptions: usize,
    /// Endpoint changes per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// How often the mesh file is rewritten with the changes due, in milliseconds.
    #[arg(long, default_value_t = 200)]
    write_interval_ms: u64,
    /// Seconds of changes.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seconds to wait for every subscription's first snapshot.
    #[arg(long, default_value_t = 600)]
    sync_timeout: u64,
    /// Seconds to wait after the last change for its deliveries.
    #[arg(long, default_value_t = 20)]
    drain_timeout: u64,
    /// Connections opened at the same time while connecting.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Where to write the Markdown report (it is printed too).
    #[arg(long)]
    report: PathBuf,
    /// A line about the run's context (commit, mode, limits) put under the report's title; repeatable.
    #[arg(long)]
    note: Vec<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Mesh(args) => {
            let mesh = MeshGen::new(args.mesh.services, args.mesh.meshed);
            match mesh.write(&args.out) {
                Ok(bytes) => {
                    eprintln!(
                        "wrote {} ({} services, {} endpoints, {bytes} bytes)",
                        args.out.display(),
                        args.mesh.services,
                        args.mesh.services * ENDPOINTS_PER_SERVICE
                    );
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!(
                        "strait-bench-controller: writing {}: {e}",
                        args.out.display()
                    );
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => {
            // One runtime thread: the script pins this process to one core, and a current-thread
            // runtime serves 10k streams on it without cross-thread wake-ups. File writes run on
            // the blocking pool; in Kubernetes mode the test API server has a thread (and runtime)
            // of its own, on the same core.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match runtime.block_on(run(*args)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("strait-bench-controller: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// The mesh

fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

fn namespace(i: usize) -> String {
    format!("ns-{}", i % NAMESPACES)
}

fn authority(i: usize) -> String {
    format!(
        "{}.{}.svc.{CLUSTER_DOMAIN}:{SERVICE_PORT}",
        service_name(i),
        namespace(i)
    )
}

fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32)
}

fn endpoint_ip(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * ENDPOINTS_PER_SERVICE + j) as u32)
}

/// The whole mesh as a function of each service's generation; services are rendered once per change.
struct MeshGen {
    meshed: bool,
    generations: Vec<u32>,
    ports: Vec<[u16; ENDPOINTS_PER_SERVICE]>,
    rendered: Vec<String>,
    head: String,
}

impl MeshGen {
    fn new(services: usize, meshed: bool) -> Self {
        let mut head = format!(
            "# strait-bench-controller: {services} services x {ENDPOINTS_PER_SERVICE} endpoints\ntrustDomain: {CLUSTER_DOMAIN}\n"
        );
        if meshed {
            head.push_str("workloads:\n");
            for i in 0..services {
                let (name, ns) = (service_name(i), namespace(i));
                let _ = writeln!(
                    head,
                    "  - {{name: {name}, namespace: {ns}, serviceAccount: {name}}}"
                );
            }
        }
        head.push_str("services:\n");
        let mut mesh = Self {
            meshed,
            generations: vec![0; services],
            ports: vec![[SERVICE_PORT; ENDPOINTS_PER_SERVICE]; services],
            rendered: Vec::with_capacity(services),
            head,
        };
        for i in 0..services {
            let r = mesh.render(i);
            mesh.rendered.push(r);
        }
        mesh
    }

    fn render(&self, i: usize) -> String {
        let (name, ns) = (service_name(i), namespace(i));
        let mut s = format!(
            "  - name: {name}\n    namespace: {ns}\n    clusterIP: {}\n    ports: [{{port: {SERVICE_PORT}, protocol: http}}]\n    endpoints:\n",
            cluster_ip(i)
        );
        for (j, port) in self.ports[i].iter().enumerate() {
            let ip = endpoint_ip(i, j);
            if self.meshed {
                let _ = writeln!(
                    s,
                    "      - {{address: \"{ip}:{port}\", proxy: \"{ip}:{PROXY_PORT}\", workload: {name}}}"
                );
            } else {
                let _ = writeln!(s, "      - {{address: \"{ip}:{port}\"}}");
            }
        }
        s
    }

    /// Moves one endpoint of service `i`; returns the service's new generation.
    fn change(&mut self, i: usize) -> u32 {
        let g = self.generations[i] + 1;
        assert!(
            g <= MAX_GENERATION,
            "service {i} changed more than {MAX_GENERATION} times"
        );
        self.generations[i] = g;
        self.ports[i][g as usize % ENDPOINTS_PER_SERVICE] = (GENERATION_PORT_BASE + g) as u16;
        self.rendered[i] = self.render(i);
        g
    }

    fn text(&self) -> String {
        let len = self.head.len() + self.rendered.iter().map(String::len).sum::<usize>();
        let mut text = String::with_capacity(len);
        text.push_str(&self.head);
        for s in &self.rendered {
            text.push_str(s);
        }
        text
    }

    /// Writes the file atomically (a temporary file renamed over it); returns its size.
    fn write(&self, path: &Path) -> std::io::Result<usize> {
        write_atomically(path, &self.text(), || {})
    }
}

/// Writes `text` to a temporary file, calls `before_rename`, then renames it over `path`: the
/// controller never reads a half-written file.
fn write_atomically(
    path: &Path,
    text: &str,
    before_rename: impl FnOnce(),
) -> std::io::Result<usize> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    before_rename();
    std::fs::rename(&tmp, path)?;
    Ok(text.len())
}

/// The generation a snapshot holds: from its highest endpoint port.
fn generation_of(service: &pb::Service) -> u32 {
    let top = service
        .endpoints
        .iter()
        .filter_map(|e| {
            e.address
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u32>().ok())
        })
        .max()
        .unwrap_or(0);
    top.saturating_sub(GENERATION_PORT_BASE)
}

// ---------------------------------------------------------------------------------------------------
// Bookkeeping shared by the streams and the mutator

#[derive(Default)]
struct Book {
    /// Per service, per generation (index g - 1): the write that carried it.
    changes: Vec<Vec<usize>>,
    /// Per write (a file rewrite; in Kubernetes mode one EndpointSlice update): when it was
    /// renamed into place (resp. when the update was made), its first and last delivery.
    writes: Vec<Write>,
    /// Change-to-delivery latencies, microseconds, one per (change, subscriber).
    latencies_us: Vec<u64>,
    /// Deliveries of a generation older than the newest the subscription had (never expected).
    regressions: u64,
}

struct Write {
    at: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
}

struct Shared {
    source: Source,
    book: Mutex<Book>,
    /// Per service: subscribers whose stream is still open (a change is expected at those only).
    live: Vec<AtomicUsize>,
    /// Subscriptions that have received their first snapshot.
    synced: AtomicUsize,
    /// Streams that received their first message.
    streams_up: AtomicUsize,
    streams_ended: AtomicUsize,
    not_found: AtomicU64,
    updates: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// When streams ended, in order.
    ended_at: Mutex<Vec<Instant>>,
}

impl Shared {
    fn new(source: Source, subscribers: &[usize]) -> Self {
        Self {
            source,
            book: Mutex::new(Book {
                changes: vec![Vec::new(); subscribers.len()],
                ..Book::default()
            }),
            live: subscribers.iter().map(|&n| AtomicUsize::new(n)).collect(),
            synced: AtomicUsize::new(0),
            streams_up: AtomicUsize::new(0),
            streams_ended: AtomicUsize::new(0),
            not_found: AtomicU64::new(0),
            updates: AtomicU64::new(0),
            first_error: Mutex::new(None),
            ended_at: Mutex::new(Vec::new()),
        }
    }

    /// A write that carries these `(service, generation)` changes is about to be renamed into place.
    fn book_write(&self, generations: Vec<(usize, u32)>) {
        let mut book = self.book.lock().unwrap();
        let w = book.writes.len();
        book.writes.push(Write {
            at: Instant::now(),
            first: None,
            last: None,
        });
        for (s, g) in generations {
            let changes = &mut book.changes[s];
            debug_assert_eq!(changes.len() + 1, g as usize);
            changes.push(w);
        }
    }

    fn delivered_count(&self) -> usize {
        self.book.lock().unwrap().latencies_us.len()
    }

    /// A stream ended: its subscriptions expect nothing more.
    fn ended(&self, services: impl Iterator<Item = usize>, e: String) {
        for s in services {
            self.live[s].fetch_sub(1, Ordering::Relaxed);
        }
        self.streams_ended.fetch_add(1, Ordering::Relaxed);
        self.ended_at.lock().unwrap().push(Instant::now());
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(e);
        }
    }

    /// A subscriber of `service` received generation `g` (it had `seen` before).
    fn delivered(&self, service: usize, seen: u32, g: u32, now: Instant) {
        let mut book = self.book.lock().unwrap();
        let Book {
            changes,
            writes,
            latencies_us,
            regressions,
        } = &mut *book;
        if g < seen {
            *regressions += 1;
            return;
        }
        for gen_ in seen + 1..=g {
            let Some(&w) = changes.get(service).and_then(|c| c.get(gen_ as usize - 1)) else {
                continue;
            };
            let write = &mut writes[w];
            latencies_us.push(now.saturating_duration_since(write.at).as_micros() as u64);
            write.first.get_or_insert(now);
            write.last = Some(now);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Simulated proxies

/// Services subscribed to by proxy `p`: a contiguous run (no service twice), so that the proxies
/// together cover every service as evenly as their number allows.
fn subscriptions_of(p: usize, per_proxy: usize, services: usize) -> Vec<usize> {
    (0..per_proxy.min(services))
        .map(|j| (p * per_proxy + j) % services)
        .collect()
}

async fn proxy(
    p: usize,
    channel: tonic::transport::Channel,
    services: Vec<usize>,
    shared: Arc<Shared>,
) {
    let e = watch(p, channel, services.clone(), &shared).await;
    shared.ended(services.into_iter(), format!("proxy {p}: {e}"));
}

/// One simulated proxy's stream, until it ends (the reason is returned).
async fn watch(
    p: usize,
    channel: tonic::transport::Channel,
    services: Vec<usize>,
    shared: &Shared,
) -> String {
    let (tx, rx) = mpsc::channel::<pb::WatchRequest>(services.len() + 64);
    let request = |r: Request| pb::WatchRequest { request: Some(r) };
    let hello = pb::Hello {
        namespace: namespace(p),
        // The proxy of workload `svc-<p>` (a mesh workload while p < services); in Kubernetes mode
        // a workload is a Pod: the first Pod of `svc-<p>`.
        workload: match shared.source {
            Source::Embedded => service_name(p),
            Source::Kubernetes => kube::pod_name(p, 0),
        },
        service_account: service_name(p),
        proxy_version: "strait-bench-controller".into(),
    };
    let _ = tx.send(request(Request::Hello(hello))).await;
    let mut subs: HashMap<String, (usize, Option<u32>)> = HashMap::with_capacity(services.len());
    for s in services {
        let a = authority(s);
        let _ = tx
            .send(request(Request::Subscribe(pb::Subscribe {
                authority: a.clone(),
            })))
            .await;
        subs.insert(a, (s, None));
    }
    let mut stream = match DiscoveryClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .watch(ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => return format!("Watch refused: {status}"),
    };
    let mut up = false;
    loop {
        let message = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return "the controller ended the stream".into(),
            Err(status) => return status.to_string(),
        };
        let now = Instant::now();
        if !up {
            up = true;
            shared.streams_up.fetch_add(1, Ordering::Relaxed);
        }
        match message.response {
            Some(Response::Service(update)) => {
                shared.updates.fetch_add(1, Ordering::Relaxed);
                let g = update.service.as_ref().map_or(0, generation_of);
                if let Some((service, seen)) = subs.get_mut(&update.authority) {
                    match *seen {
                        None => {
                            shared.synced.fetch_add(1, Ordering::Relaxed);
                            // A first snapshot that already holds changes (never in this bench:
                            // the changes start after every first snapshot) counts from there.
                            *seen = Some(g);
                        }
                        Some(before) => {
                            shared.delivered(*service, before, g, now);
                            *seen = Some(g.max(before));
                        }
                    }
                }
                let ack = pb::Ack {
                    authority: update.authority,
                    version: update.version,
                };
                let _ = tx.send(request(Request::Ack(ack))).await;
            }
            Some(Response::NotFound(nf)) => {
                shared.not_found.fetch_add(1, Ordering::Relaxed);
                let _ = tx
                    .send(request(Request::Ack(pb::Ack {
                        authority: nf.authority,
                        version: nf.version,
                    })))
                    .await;
            }
            Some(Response::Inbound(policy)) => {
                let _ = tx
                    .send(request(Request::Ack(pb::Ack {
                        authority: String::new(),
                        version: policy.version,
                    })))
                    .await;
            }
            None => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// /proc and /metrics

#[derive(Clone, Copy, Default)]
struct ProcStat {
    cpu_s: f64,
    rss_kib: u64,
    hwm_kib: u64,
    threads: u64,
    /// Time the process's threads were runnable but waited for a CPU (schedstat), seconds: what
    /// other work on the same core took from it.
    runqueue_wait_s: f64,
}

/// Sum of the run-queue wait of every thread of `pid` (second field of each task's schedstat).
fn runqueue_wait_s(pid: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|w| w.parse::<u64>().ok())
        })
        .sum::<u64>() as f64
        / 1e9
}

fn proc_stat(pid: &str) -> std::io::Result<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start with the state (field 3).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_s = (ticks(11) + ticks(12)) as f64 / hz;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(ProcStat {
        cpu_s,
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
        threads: kib("Threads:"),
        runqueue_wait_s: runqueue_wait_s(pid),
    })
}

async fn scrape(admin: SocketAddr) -> Result<String, String> {
    let url = format!("http://{admin}/metrics");
    let r = strait_tests::client::http_get(&url)
        .await
        .map_err(|e| format!("scraping {url}: {e}"))?;
    if r.status != 200 {
        return Err(format!("scraping {url}: status {}", r.status));
    }
    Ok(r.text())
}

/// Cumulative bucket counts of a histogram, `(le, count)` sorted by `le`.
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let mut b: Vec<(f64, f64)> = metrics::series(text, &format!("{name}_bucket"), &[])
        .into_iter()
        .filter_map(|s| {
            let le = s.label("le")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, s.value))
        })
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    b
}

/// Quantile `q` of the observations between two scrapes of a histogram, interpolated linearly
/// within its bucket (as Prometheus' histogram_quantile does). `None` without observations.
fn histogram_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            (
                le,
                n - before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1),
            )
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, n) in &delta {
        if n >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let in_bucket = n - prev.1;
            let frac = if in_bucket > 0.0 {
                (rank - prev.1) / in_bucket
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, n);
    }
    None
}

/// Two scrapes of the controller's metrics: before and after the measured phase.
struct Scrapes {
    before: String,
    after: String,
}

impl Scrapes {
    /// How much a counter (or histogram `_sum`/`_count`) grew between the scrapes.
    fn growth(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metrics::value(&self.after, name, labels) - metrics::value(&self.before, name, labels)
    }

    /// A gauge at the second scrape.
    fn gauge(&self, name: &str) -> f64 {
        metrics::value(&self.after, name, &[])
    }

    /// Quantile of a histogram's observations between the scrapes, in microseconds.
    fn quantile_us(&self, name: &str, q: f64) -> Option<u64> {
        let (before, after) = (buckets(&self.before, name), buckets(&self.after, name));
        histogram_quantile(&before, &after, q).map(|s| (s * 1e6) as u64)
    }
}

// ---------------------------------------------------------------------------------------------------
// The run

/// Which services each proxy subscribes to.
struct Plan {
    per_proxy: usize,
    proxies: Vec<Vec<usize>>,
    /// Per service: how many proxies subscribe to it.
    subscribers: Vec<usize>,
    /// The services with at least one subscriber: the mutator changes only these.
    covered: Vec<usize>,
    total: usize,
}

impl Plan {
    fn new(proxies: usize, per_proxy: usize, services: usize) -> Self {
        let per_proxy = per_proxy.max(1);
        let proxies: Vec<Vec<usize>> = (0..proxies)
            .map(|p| subscriptions_of(p, per_proxy, services))
            .collect();
        let mut subscribers = vec![0usize; services];
        for &s in proxies.iter().flatten() {
            subscribers[s] += 1;
        }
        let covered = (0..services).filter(|&s| subscribers[s] > 0).collect();
        let total = subscribers.iter().sum();
        Self {
            per_proxy,
            proxies,
            subscribers,
            covered,
            total,
        }
    }
}

struct Connected {
    connections: usize,
    per_connection: usize,
    failed: usize,
    first_error: Option<String>,
    took: Duration,
}

/// Opens the connections (a few at a time) and starts every proxy's stream on its connection.
async fn connect(
    args: &RunArgs,
    proxies: Vec<Vec<usize>>,
    shared: &Arc<Shared>,
) -> Result<Connected, String> {
    let started = Instant::now();
    let per_connection = args.streams_per_connection.max(1);
    let connections = proxies.len().div_ceil(per_connection);
    eprintln!(
        "connecting {} proxies over {connections} connections ({per_connection} streams each)",
        proxies.len()
    );
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", args.discovery))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(30));
    let mut proxies = proxies.into_iter().enumerate();
    let mut connecting = tokio::task::JoinSet::new();
    for c in 0..connections {
        let batch: Vec<(usize, Vec<usize>)> = proxies.by_ref().take(per_connection).collect();
        let (endpoint, gate, shared) = (endpoint.clone(), gate.clone(), shared.clone());
        connecting.spawn(async move {
            let permit = gate.acquire_owned().await;
            let connected = endpoint.connect().await;
            drop(permit);
            match connected {
                Ok(channel) => {
                    for (p, subs) in batch {
                        tokio::spawn(proxy(p, channel.clone(), subs, shared.clone()));
                    }
                    Ok(())
                }
                Err(e) => {
                    let e = format!("connection {c}: {e:?}");
                    for (_, subs) in batch {
                        shared.ended(subs.into_iter(), e.clone());
                    }
                    Err(e)
                }
            }
        });
    }
    let (mut failed, mut first_error) = (0, None);
    while let Some(done) = connecting.join_next().await {
        if let Ok(Err(e)) = done {
            failed += 1;
            first_error.get_or_insert(e);
        }
    }
    let took = started.elapsed();
    eprintln!(
        "connections open in {:.1} s ({failed} failed)",
        took.as_secs_f64()
    );
    Ok(Connected {
        connections,
        per_connection,
        failed,
        first_error,
        took,
    })
}

/// Waits until every subscription has its first snapshot, the timeout, or a minute without
/// progress; returns how many have one.
async fn wait_for_sync(shared: &Shared, total: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    let mut last_log = Instant::now();
    let (mut last, mut progress) = (0, Instant::now());
    loop {
        let synced = shared.synced.load(Ordering::Relaxed);
        if synced >= total || Instant::now() >= deadline {
            return synced;
        }
        if synced != last {
            (last, progress) = (synced, Instant::now());
        } else if progress.elapsed() > Duration::from_secs(60) {
            eprintln!("no new first snapshot for 60 s; going on with what is synced");
            return synced;
        }
        if last_log.elapsed() > Duration::from_secs(5) {
            last_log = Instant::now();
            eprintln!(
                "  {synced} of {total} subscriptions have their first snapshot, {} streams up, {} ended",
                shared.streams_up.load(Ordering::Relaxed),
                shared.streams_ended.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the measured phase did.
struct Phase {
    started: Instant,
    took: Duration,
    changes: usize,
    /// Deliveries due: the open subscribers of each changed service, summed.
    expected: usize,
    write_us: Vec<u64>,
    /// The controller's RSS, sampled after each write.
    peak_rss_kib: u64,
    controller: (ProcStat, ProcStat),
    generator: (ProcStat, ProcStat),
}

/// What both mutators measure around their changes: the controller's and this process's figures
/// from /proc at the start and the end, the controller's highest RSS sampled in between, and a
/// progress line every 5 s.
struct Meter<'a> {
    pid: &'a str,
    shared: &'a Shared,
    started: Instant,
    controller_before: ProcStat,
    generator_before: ProcStat,
    peak_rss_kib: u64,
    last_log: Instant,
    changes: usize,
    /// Deliveries due: the open subscribers of each changed service, summed.
    expected: usize,
    write_us: Vec<u64>,
}

impl<'a> Meter<'a> {
    fn start(pid: &'a str, shared: &'a Shared) -> Result<Self, String> {
        let controller_before = proc_stat(pid).map_err(|e| format!("controller: {e}"))?;
        let generator_before = proc_stat("self").map_err(|e| e.to_string())?;
        Ok(Self {
            pid,
            shared,
            started: Instant::now(),
            peak_rss_kib: controller_before.rss_kib,
            controller_before,
            generator_before,
            last_log: Instant::now(),
            changes: 0,
            expected: 0,
            write_us: Vec::new(),
        })
    }

    /// Changes of these services are about to be made.
    fn changing(&mut self, services: &[usize]) {
        self.changes += services.len();
        self.expected += services
            .iter()
            .map(|&s| self.shared.live[s].load(Ordering::Relaxed))
            .sum::<usize>();
    }

    /// Samples the controller's RSS, and says how far the phase is every 5 s.
    fn sample(&mut self) {
        let Ok(now) = proc_stat(self.pid) else { return };
        self.peak_rss_kib = self.peak_rss_kib.max(now.rss_kib);
        if self.last_log.elapsed() >= Duration::from_secs(5) {
            self.last_log = Instant::now();
            let before = &self.controller_before;
            eprintln!(
                "  {:>4.0} s: {} changes, {} of {} deliveries, {} streams ended; controller RSS {}, CPU {:.1} s, waited for a CPU {:.1} s",
                self.started.elapsed().as_secs_f64(),
                self.changes,
                self.shared.delivered_count(),
                self.expected,
                self.shared.streams_ended.load(Ordering::Relaxed),
                mib(now.rss_kib),
                now.cpu_s - before.cpu_s,
                now.runqueue_wait_s - before.runqueue_wait_s
            );
        }
    }

    fn finish(self) -> Result<Phase, String> {
        let took = self.started.elapsed();
        let controller_after = proc_stat(self.pid).map_err(|e| format!("controller: {e}"))?;
        let generator_after = proc_stat("self").map_err(|e| e.to_string())?;
        Ok(Phase {
            started: self.started,
            took,
            changes: self.changes,
            expected: self.expected,
            write_us: self.write_us,
            peak_rss_kib: self.peak_rss_kib,
            controller: (self.controller_before, controller_after),
            generator: (self.generator_before, generator_after),
        })
    }
}

/// Moves endpoints at `args.rate` for `args.duration`, rewriting the mesh file about every
/// `args.write_interval_ms` with the changes due.
async fn mutate(
    args: &RunArgs,
    mesh: &Arc<Mutex<MeshGen>>,
    plan: &Plan,
    shared: &Arc<Shared>,
    pid: &str,
) -> Result<Phase, String> {
    let mut meter = Meter::start(pid, shared)?;
    let started = meter.started;
    let end = started + Duration::from_secs(args.duration);
    let interval = Duration::from_millis(args.write_interval_ms.max(1));
    let mut rng = fastrand::Rng::with_seed(0x5712a17);
    loop {
        // Writes at a random phase to the controller's poll: each gap is uniform in 0.5..1.5
        // intervals, so a write lands anywhere in the poll period (a fixed period equal to the
        // poll interval would lock onto one phase and measure that phase only).
        tokio::time::sleep(interval.mul_f64(0.5 + rng.f64())).await;
        let now = Instant::now();
        if now >= end {
            break;
        }
        let due = ((now - started).as_secs_f64() * args.rate) as usize;
        if due <= meter.changes {
            continue;
        }
        let picked: Vec<usize> = (meter.changes..due)
            .map(|_| plan.covered[rng.usize(..plan.covered.len())])
            .collect();
        meter.changing(&picked);
        let (mesh, book, path) = (
            mesh.clone(),
            shared.clone(),
            args.out.clone().unwrap_or_default(),
        );
        let took = tokio::task::spawn_blocking(move || {
            let begun = Instant::now();
            let mut mesh = mesh.lock().unwrap();
            let generations: Vec<(usize, u32)> =
                picked.iter().map(|&s| (s, mesh.change(s))).collect();
            // Booked before the rename, so that no delivery can come before its change is known.
            write_atomically(&path, &mesh.text(), || book.book_write(generations))?;
            Ok::<Duration, std::io::Error>(begun.elapsed())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("writing the mesh file: {e}"))?;
        meter.write_us.push(took.as_micros() as u64);
        meter.sample();
    }
    meter.finish()
}

/// Kubernetes mode: one EndpointSlice update per change, evenly spaced at `args.rate` for
/// `args.duration` (a late change is made at once, so the count keeps to the rate).
async fn mutate_kubernetes(
    args: &RunArgs,
    cluster: &mut kube::Cluster,
    plan: &Plan,
    shared: &Arc<Shared>,
    pid: &str,
) -> Result<Phase, String> {
    let mut meter = Meter::start(pid, shared)?;
    let end = meter.started + Duration::from_secs(args.duration);
    let period = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let mut rng = fastrand::Rng::with_seed(0x5712a17);
    let mut last_sample = Instant::now();
    loop {
        let at = meter.started + period.mul_f64(meter.changes as f64);
        if at >= end {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let s = plan.covered[rng.usize(..plan.covered.len())];
        meter.changing(&[s]);
        let begun = Instant::now();
        // Booked just before the update, so that no delivery can come before its change is known.
        cluster.change(s, |g| shared.book_write(vec![(s, g)]));
        meter.write_us.push(begun.elapsed().as_micros() as u64);
        // /proc is read 5 times a second, not at every change.
        if last_sample.elapsed() >= Duration::from_millis(200) {
            last_sample = Instant::now();
            meter.sample();
        }
    }
    meter.finish()
}

/// Kubernetes mode until the proxies connect: the filled test API server, its kubeconfig, and the
/// controller started against it and ready.
struct KubeStart {
    cluster: kube::Cluster,
    controller: kube::Controller,
    /// From the controller's start to its /ready answering 200 (every kind listed, mesh built).
    ready_after: Duration,
    /// List requests per kind until then.
    lists: [usize; 3],
}

async fn start_kubernetes(args: &RunArgs) -> Result<KubeStart, String> {
    let services = args.mesh.services;
    eprintln!(
        "filling the test API server: {services} Services, {services} EndpointSlices, {} Pods",
        services * ENDPOINTS_PER_SERVICE
    );
    let meshed = args.mesh.meshed;
    let cluster = tokio::task::spawn_blocking(move || kube::Cluster::start(services, meshed))
        .await
        .map_err(|e| e.to_string())??;
    eprintln!(
        "filled in {:.1} s (resourceVersion {}); API server at {}",
        cluster.fill_time.as_secs_f64(),
        cluster.revision,
        cluster.api.url()
    );
    let kubeconfig = args
        .kubeconfig
        .as_ref()
        .ok_or("--kubeconfig is required in Kubernetes mode")?;
    std::fs::write(kubeconfig, cluster.api.kubeconfig())
        .map_err(|e| format!("{}: {e}", kubeconfig.display()))?;
    let mut controller = kube::Controller::spawn(
        &args.controller,
        &args.controller_log,
        args.controller_pid_file.as_ref(),
    )?;
    let started = Instant::now();
    eprintln!(
        "controller started (pid {}); waiting for its /ready",
        controller.pid
    );
    let url = format!("http://{}/ready", args.admin);
    let deadline = started + Duration::from_secs(args.ready_timeout);
    let mut last_log = Instant::now();
    loop {
        if let Ok(r) = strait_tests::client::http_get(&url).await
            && r.status == 200
        {
            break;
        }
        controller.running()?;
        if Instant::now() >= deadline {
            return Err(format!(
                "the controller was not ready within {} s",
                args.ready_timeout
            ));
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            let lists = cluster.lists();
            eprintln!(
                "  {:.0} s: list requests so far: {} Services, {} EndpointSlices, {} Pods",
                started.elapsed().as_secs_f64(),
                lists[0],
                lists[1],
                lists[2]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready_after = started.elapsed();
    eprintln!("controller ready after {:.1} s", ready_after.as_secs_f64());
    Ok(KubeStart {
        lists: cluster.lists(),
        cluster,
        controller,
        ready_after,
    })
}

async fn run(args: RunArgs) -> Result<(), String> {
    let services = args.mesh.services;
    if services == 0 || args.proxies == 0 {
        return Err("--services and --proxies must be at least 1".into());
    }
    let started = Instant::now();
    // Embedded mode: the mutator's view of the mesh is the file as the script wrote it (same
    // generator, generation 0). Kubernetes mode: the API server is filled and the controller
    // started here.
    let (mut mesh, mut kube) = (None, None);
    let pid = match args.source {
        Source::Embedded => {
            mesh = Some(Arc::new(Mutex::new(MeshGen::new(
                services,
                args.mesh.meshed,
            ))));
            args.controller_pid
                .ok_or("--controller-pid is required in embedded mode")?
        }
        Source::Kubernetes => {
            let k = start_kubernetes(&args).await?;
            let pid = k.controller.pid;
            kube = Some(k);
            pid
        }
    }
    .to_string();
    let idle = proc_stat(&pid).map_err(|e| format!("controller pid {pid}: {e}"))?;
    let mut plan = Plan::new(args.proxies, args.subscriptions, services);
    let shared = Arc::new(Shared::new(args.source, &plan.subscribers));

    let connecting = Instant::now();
    let connected = connect(&args, std::mem::take(&mut plan.proxies), &shared).await?;
    let synced = wait_for_sync(&shared, plan.total, Duration::from_secs(args.sync_timeout)).await;
    let sync_time = connecting.elapsed();
    eprintln!(
        "{synced} of {} subscriptions synced in {:.1} s",
        plan.total,
        sync_time.as_secs_f64()
    );
    // Let the controller settle (acks, the scheduler) before the measured phase.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_sync = proc_stat(&pid).map_err(|e| format!("controller: {e}"))?;
    let before = scrape(args.admin).await?;

    let phase = match (&mesh, &mut kube) {
        (Some(mesh), _) => mutate(&args, mesh, &plan, &shared, &pid).await?,
        (None, Some(k)) => mutate_kubernetes(&args, &mut k.cluster, &plan, &shared, &pid).await?,
        (None, None) => unreachable!("one source is set up"),
    };
    eprintln!(
        "{} changes in {:.1} s; waiting for their {} deliveries",
        phase.changes,
        phase.took.as_secs_f64(),
        phase.expected
    );
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_timeout);
    while shared.delivered_count() < phase.expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = proc_stat(&pid).map_err(|e| format!("controller: {e}"))?;
    let scrapes = Scrapes {
        before,
        after: scrape(args.admin).await?,
    };

    let source = match (mesh, kube) {
        (Some(mesh), _) => {
            // After the measurement: what one parse of the final file costs with the controller's
            // YAML parser (on this process's core).
            let text = mesh.lock().unwrap().text();
            let bytes = text.len();
            let parse = tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                let ok = strait_proto::mesh::MeshFile::parse(&text).is_ok();
                (t.elapsed(), ok)
            })
            .await
            .map_err(|e| e.to_string())?;
            SourceFacts::File { bytes, parse }
        }
        (None, Some(mut k)) => {
            let facts = KubeFacts {
                counts: k.cluster.counts,
                sizes: k.cluster.sizes,
                revision: k.cluster.revision,
                fill_time: k.cluster.fill_time,
                ready_after: k.ready_after,
                lists: k.lists,
                lists_at_end: k.cluster.lists(),
                watches: k
                    .cluster
                    .api
                    .requests()
                    .iter()
                    .filter(|r| r.is_watch())
                    .count(),
            };
            // The controller goes before the API server it watches.
            if let Err(e) = k.controller.stop() {
                eprintln!("stopping the controller: {e}");
            }
            SourceFacts::Kubernetes(facts)
        }
        (None, None) => unreachable!("one source is set up"),
    };

    let outcome = Outcome {
        args: &args,
        plan: &plan,
        shared: &shared,
        source,
        connected,
        synced,
        sync_time,
        idle,
        at_sync,
        drained,
        phase,
        scrapes,
        run_time: started.elapsed(),
    };
    let missing = outcome.missing();
    let report = outcome.report();
    print!("{report}");
    if let Some(dir) = args.report.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&args.report, &report)
        .map_err(|e| format!("writing {}: {e}", args.report.display()))?;
    if missing > 0 || synced < plan.total {
        eprintln!(
            "strait-bench-controller: {missing} deliveries missing, {} subscriptions never synced",
            plan.total - synced
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// The report

/// Sorted samples in microseconds.
struct Dist(Vec<u64>);

impl Dist {
    fn new(mut samples: Vec<u64>) -> Self {
        samples.sort_unstable();
        Self(samples)
    }

    fn quantile(&self, q: f64) -> Option<u64> {
        if self.0.is_empty() {
            return None;
        }
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        Some(self.0[rank - 1])
    }

    /// `min | p50 | p90 | p99 | max` cells.
    fn cells(&self) -> String {
        let q = |q| ms(self.quantile(q));
        format!(
            "{} | {} | {} | {} | {}",
            ms(self.0.first().copied()),
            q(0.5),
            q(0.9),
            q(0.99),
            ms(self.0.last().copied())
        )
    }
}

fn ms(us: Option<u64>) -> String {
    us.map_or("n/a".into(), |us| format!("{:.1} ms", us as f64 / 1000.0))
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn goal(goal: &str, met: bool) -> String {
    format!("{goal}: {}", if met { "met" } else { "not met" })
}

/// What the report says about the mesh's source.
enum SourceFacts {
    /// Embedded mode: the final mesh file's size, and one parse of it (time, success).
    File {
        bytes: usize,
        parse: (Duration, bool),
    },
    Kubernetes(KubeFacts),
}

struct KubeFacts {
    /// Objects per kind in the API server ([`kube::KINDS`] order), and one object's JSON size.
    counts: [usize; 3],
    sizes: [usize; 3],
    /// The resourceVersion after the fill, and how long the fill took.
    revision: u64,
    fill_time: Duration,
    /// From the controller's start to its /ready.
    ready_after: Duration,
    /// List requests (pages) per kind until /ready, and in the whole run.
    lists: [usize; 3],
    lists_at_end: [usize; 3],
    /// Watch requests in the whole run.
    watches: usize,
}

struct Outcome<'a> {
    args: &'a RunArgs,
    plan: &'a Plan,
    shared: &'a Shared,
    source: SourceFacts,
    connected: Connected,
    synced: usize,
    sync_time: Duration,
    /// The controller with its mesh loaded, before any proxy.
    idle: ProcStat,
    at_sync: ProcStat,
    drained: ProcStat,
    phase: Phase,
    scrapes: Scrapes,
    run_time: Duration,
}

impl Outcome<'_> {
    fn missing(&self) -> usize {
        self.phase
            .expected
            .saturating_sub(self.shared.delivered_count())
    }

    fn report(&self) -> String {
        let mut r = String::from(match self.source {
            SourceFacts::File { .. } => "# Controller benchmark (`make bench-controller`)\n\n",
            SourceFacts::Kubernetes(_) => {
                "# Controller benchmark, Kubernetes mode (`make bench-controller-k8s`)\n\n"
            }
        });
        self.setup(&mut r);
        self.latencies(&mut r);
        self.resources(&mut r);
        if let Some(e) = self
            .shared
            .first_error
            .lock()
            .unwrap()
            .as_ref()
            .or(self.connected.first_error.as_ref())
        {
            let _ = writeln!(r, "\nFirst stream or connection error: `{e}`");
        }
        let _ = writeln!(
            r,
            "\nTotal run time of the load generator: {:.0} s.",
            self.run_time.as_secs_f64()
        );
        r
    }

    fn setup(&self, r: &mut String) {
        let (args, plan, c) = (self.args, self.plan, &self.connected);
        let services = args.mesh.services;
        for n in &args.note {
            let _ = writeln!(r, "- {n}");
        }
        let endpoints = services * ENDPOINTS_PER_SERVICE;
        match &self.source {
            SourceFacts::File { bytes, .. } => {
                let _ = writeln!(
                    r,
                    "- source: embedded mode (`strait-controller --mesh-file`)\n- mesh: {services} services x {ENDPOINTS_PER_SERVICE} endpoints = {endpoints} endpoints ({}), mesh file {:.1} MiB",
                    if args.mesh.meshed {
                        "meshed: one workload per service, endpoints with a sidecar address and identity"
                    } else {
                        "plain endpoints, no workloads"
                    },
                    *bytes as f64 / 1048576.0
                );
            }
            SourceFacts::Kubernetes(k) => {
                let [services_n, slices_n, pods_n] = k.counts;
                let total_bytes: usize = k.counts.iter().zip(k.sizes).map(|(n, b)| n * b).sum();
                let _ = writeln!(
                    r,
                    "- source: Kubernetes mode (`strait-controller --kubernetes --kubeconfig`), watching the test API server the load generator runs in-process (`strait_tests::kube_api`: HTTP/1, JSON, lists in pages, watches with bookmarks) on its own thread and core"
                );
                let _ = writeln!(
                    r,
                    "- mesh: {services} services x {ENDPOINTS_PER_SERVICE} endpoints = {endpoints} endpoints ({})",
                    if args.mesh.meshed {
                        "meshed: every Pod has a `strait-proxy` container, identity from its service account `svc-<i>`"
                    } else {
                        "Pods without the sidecar: plain endpoints, no workloads"
                    }
                );
                let _ = writeln!(
                    r,
                    "- API server: {services_n} Services + {slices_n} EndpointSlices + {pods_n} Pods = {} objects, about {:.0} MiB as JSON (one Service {} B, one EndpointSlice of {ENDPOINTS_PER_SERVICE} endpoints {} B, one Pod {} B), filled in {:.1} s up to resourceVersion {}",
                    services_n + slices_n + pods_n,
                    total_bytes as f64 / 1048576.0,
                    k.sizes[0],
                    k.sizes[1],
                    k.sizes[2],
                    k.fill_time.as_secs_f64(),
                    k.revision
                );
                let later: Vec<usize> = k
                    .lists_at_end
                    .iter()
                    .zip(k.lists)
                    .map(|(end, ready)| end - ready)
                    .collect();
                let _ = writeln!(
                    r,
                    "- initial list: the controller's `/ready` answered 200 **{:.1} s** after it started (the first complete list of all three kinds, then the first mesh built), after {} + {} + {} list requests (Services + EndpointSlices + Pods, kube's watcher pages of 500); later in the run: {} more list requests (a re-list after 410 Gone would show here) and {} watch requests",
                    k.ready_after.as_secs_f64(),
                    k.lists[0],
                    k.lists[1],
                    k.lists[2],
                    later.iter().sum::<usize>(),
                    k.watches
                );
            }
        }
        let _ = writeln!(
            r,
            "- proxies: {} asked, {} streams up, {} held by the controller at the end (`strait_controller_discovery_streams`), over {} HTTP/2 connections ({} stream(s) each; {} connections failed)",
            args.proxies,
            self.shared.streams_up.load(Ordering::Relaxed),
            self.scrapes.gauge("strait_controller_discovery_streams"),
            c.connections,
            c.per_connection,
            c.failed
        );
        let _ = writeln!(
            r,
            "- subscriptions: {} services per proxy, {} in all ({} held by the controller), {} of {services} services have subscribers, {:.1} subscribers per service on average",
            plan.per_proxy,
            plan.total,
            self.scrapes.gauge("strait_controller_subscriptions"),
            plan.covered.len(),
            plan.total as f64 / plan.covered.len().max(1) as f64
        );
        let _ = writeln!(
            r,
            "- initial sync: {} of {} first snapshots {:.1} s after the proxies began to connect (all connections open after {:.1} s)",
            self.synced,
            plan.total,
            self.sync_time.as_secs_f64(),
            c.took.as_secs_f64()
        );
        let book = self.shared.book.lock().unwrap();
        let writes = book.writes.len();
        let phase_s = self.phase.took.as_secs_f64();
        match self.source {
            SourceFacts::File { .. } => {
                let _ = writeln!(
                    r,
                    "- changes: {} endpoint moves in {phase_s:.1} s = {:.1}/s (asked {}/s), written as {writes} file rewrites ({:.1} changes each, one every {} ms on average, at a random phase to the controller's poll); {} deliveries expected\n",
                    self.phase.changes,
                    self.phase.changes as f64 / phase_s,
                    args.rate,
                    self.phase.changes as f64 / writes.max(1) as f64,
                    args.write_interval_ms,
                    self.phase.expected
                );
            }
            SourceFacts::Kubernetes(_) => {
                let _ = writeln!(
                    r,
                    "- changes: {} EndpointSlice updates in {phase_s:.1} s = {:.1}/s (asked {}/s), one `KubeApi::modify` per change, evenly spaced, each setting the slice's port (so all {ENDPOINTS_PER_SERVICE} endpoints of the service move); {} deliveries expected\n",
                    self.phase.changes,
                    self.phase.changes as f64 / phase_s,
                    args.rate,
                    self.phase.expected
                );
            }
        }
    }

    fn latencies(&self, r: &mut String) {
        let book = self.shared.book.lock().unwrap();
        let deliveries = Dist::new(book.latencies_us.clone());
        let since_write = |at: fn(&Write) -> Option<Instant>| {
            Dist::new(
                book.writes
                    .iter()
                    .filter_map(|w| at(w).map(|t| (t - w.at).as_micros() as u64))
                    .collect(),
            )
        };
        let (first, last) = (since_write(|w| w.first), since_write(|w| w.last));
        let push = "strait_controller_push_duration_seconds";
        let pushes = self.scrapes.growth(&format!("{push}_count"), &[]);
        let push_mean = if pushes > 0.0 {
            let sum = self.scrapes.growth(&format!("{push}_sum"), &[]);
            format!("{:.1} ms", sum / pushes * 1000.0)
        } else {
            "n/a".into()
        };
        let push_q = |q| ms(self.scrapes.quantile_us(push, q));
        let p99 = deliveries.quantile(0.99);
        let kubernetes = matches!(self.source, SourceFacts::Kubernetes(_));
        let (from, write, published, mutator) = if kubernetes {
            (
                "the EndpointSlice update (`modify` call)",
                "slice update",
                "mesh published (after the conversion of the three stores)",
                "the mutator's `modify` call (get, change, store, wake the watches)",
            )
        } else {
            (
                "the file write",
                "file write",
                "mesh published (after the file's read and parse)",
                "the mutator's file render + write",
            )
        };
        let _ = writeln!(r, "| measure | min | p50 | p90 | p99 | max | goal |");
        let _ = writeln!(r, "| --- | ---: | ---: | ---: | ---: | ---: | --- |");
        let _ = writeln!(
            r,
            "| change → delivery at every subscriber, end to end from {from} ({} deliveries) | {} | {} |",
            deliveries.0.len(),
            deliveries.cells(),
            goal("p99 < 100 ms", p99.is_some_and(|p| p < 100_000))
        );
        let _ = writeln!(
            r,
            "| {write} → its first delivery anywhere ({} {write}s) | {} | |",
            first.0.len(),
            first.cells()
        );
        let _ = writeln!(r, "| {write} → its last delivery | {} | |", last.cells());
        let _ = writeln!(
            r,
            "| controller's own view: `{push}`, {published} → update written to the stream ({pushes:.0} updates, mean {push_mean}) | | {} | {} | {} | | |",
            push_q(0.5),
            push_q(0.9),
            push_q(0.99)
        );
        let _ = writeln!(
            r,
            "| {mutator} ({} {}) | {} | |\n",
            self.phase.write_us.len(),
            if kubernetes { "calls" } else { "writes" },
            Dist::new(self.phase.write_us.clone()).cells()
        );
    }

    fn resources(&self, r: &mut String) {
        let (args, s, phase) = (self.args, &self.scrapes, &self.phase);
        let phase_s = phase.took.as_secs_f64();
        let delivered = self.shared.delivered_count();
        let (ctl0, ctl1) = phase.controller;
        let (gen0, gen1) = phase.generator;
        let ctl_cpu = ctl1.cpu_s - ctl0.cpu_s;
        let ctl_wait = ctl1.runqueue_wait_s - ctl0.runqueue_wait_s;
        let gen_cpu = gen1.cpu_s - gen0.cpu_s;
        let kinds_growth = |name: &str| {
            kube::KINDS
                .iter()
                .map(|k| format!("{:.0}", s.growth(name, &[("kind", k)])))
                .collect::<Vec<_>>()
                .join(" + ")
        };
        // What the source did during the changes, and one more fact about it.
        let (source_row, fact_row) = match &self.source {
            SourceFacts::File { parse, .. } => (
                (
                    "mesh reloads during the changes (ok / error)".to_string(),
                    format!(
                        "{:.0} / {:.0}",
                        s.growth("strait_controller_config_reloads_total", &[("result", "ok")]),
                        s.growth("strait_controller_config_reloads_total", &[("result", "error")])
                    ),
                    String::new(),
                ),
                (
                    "one parse of the final mesh file (`MeshFile::parse`, the controller's YAML parser), timed in the load generator after the run".to_string(),
                    format!(
                        "{:.0} ms{}",
                        parse.0.as_secs_f64() * 1000.0,
                        if parse.1 { "" } else { " (failed!)" }
                    ),
                    String::new(),
                ),
            ),
            SourceFacts::Kubernetes(k) => (
                (
                    "complete lists / failed lists and watches during the changes, Services + EndpointSlices + Pods (`strait_controller_watch_lists_total`, `strait_controller_watch_errors_total`)".to_string(),
                    format!(
                        "{} / {}",
                        kinds_growth("strait_controller_watch_lists_total"),
                        kinds_growth("strait_controller_watch_errors_total")
                    ),
                    "0 / 0".into(),
                ),
                (
                    "objects in the controller's view at the end, Services / EndpointSlices / Pods (`strait_controller_watched_objects`; the API server holds the counts above)".to_string(),
                    kube::KINDS
                        .iter()
                        .map(|kind| format!("{:.0}", metrics::value(&s.after, "strait_controller_watched_objects", &[("kind", kind)])))
                        .collect::<Vec<_>>()
                        .join(" / "),
                    k.counts.map(|n| n.to_string()).join(" / "),
                ),
            ),
        };
        let kubernetes = matches!(self.source, SourceFacts::Kubernetes(_));
        let rows: Vec<(String, String, String)> = vec![
            (
                "deliveries received / expected at the streams open when the change was written"
                    .into(),
                format!(
                    "{delivered} / {} ({} missing after a {} s drain)",
                    phase.expected,
                    self.missing(),
                    args.drain_timeout
                ),
                String::new(),
            ),
            (
                "deliveries per second".into(),
                format!("{:.0}", delivered as f64 / phase_s),
                String::new(),
            ),
            (
                "ServiceUpdates sent by the controller during the changes / received by the proxies in the whole run".into(),
                format!(
                    "{:.0} / {}",
                    s.growth("strait_discovery_updates_total", &[("kind", "service")]),
                    self.shared.updates.load(Ordering::Relaxed)
                ),
                String::new(),
            ),
            source_row,
            (
                "controller peak RSS (VmHWM)".into(),
                mib(self.drained.hwm_kib),
                goal("< 1 GiB", self.drained.hwm_kib < 1024 * 1024),
            ),
            (
                format!(
                    "controller RSS: {}, no proxies / all subscribed / highest seen during the changes / end",
                    if kubernetes { "objects listed" } else { "mesh loaded" }
                ),
                format!(
                    "{} / {} / {} / {}",
                    mib(self.idle.rss_kib),
                    mib(self.at_sync.rss_kib),
                    mib(phase.peak_rss_kib),
                    mib(self.drained.rss_kib)
                ),
                String::new(),
            ),
            (
                "controller CPU during the changes".into(),
                format!(
                    "{ctl_cpu:.1} s in {phase_s:.1} s = {:.0} % of its one core",
                    ctl_cpu / phase_s * 100.0
                ),
                String::new(),
            ),
            (
                "controller time runnable but waiting for its core during the changes (schedstat: other processes on that core)".into(),
                format!(
                    "{ctl_wait:.1} s = {:.0} % of the phase",
                    ctl_wait / phase_s * 100.0
                ),
                String::new(),
            ),
            (
                format!(
                    "controller CPU: start and {} / initial sync of every proxy",
                    if kubernetes { "initial list" } else { "load" }
                ),
                format!(
                    "{:.1} s / {:.1} s",
                    self.idle.cpu_s,
                    self.at_sync.cpu_s - self.idle.cpu_s
                ),
                String::new(),
            ),
            (
                "controller threads".into(),
                self.drained.threads.to_string(),
                String::new(),
            ),
            (
                format!(
                    "load generator CPU during the changes{} / time waiting for its core",
                    if kubernetes { " (the test API server's thread included)" } else { "" }
                ),
                format!(
                    "{gen_cpu:.1} s = {:.0} % of its one core / {:.1} s",
                    gen_cpu / phase_s * 100.0,
                    gen1.runqueue_wait_s - gen0.runqueue_wait_s
                ),
                String::new(),
            ),
            fact_row,
            (
                "NotFound answers / stale snapshots".into(),
                format!(
                    "{} / {}",
                    self.shared.not_found.load(Ordering::Relaxed),
                    self.shared.book.lock().unwrap().regressions
                ),
                "0 / 0".into(),
            ),
            (
                "streams that ended (the simulated proxies do not reconnect; changes after that are not expected at them)".into(),
                self.ended(),
                "0".into(),
            ),
        ];
        let _ = writeln!(r, "| measure | value | goal |");
        let _ = writeln!(r, "| --- | ---: | --- |");
        for (measure, value, goal) in rows {
            let _ = writeln!(r, "| {measure} | {value} | {goal} |");
        }
        let mut reasons: Vec<String> =
            metrics::series(&s.after, "strait_discovery_stream_errors_total", &[])
                .iter()
                .filter(|s| s.value > 0.0)
                .map(|s| format!("{} {}", s.label("reason").unwrap_or("?"), s.value))
                .collect();
        reasons.sort();
        if !reasons.is_empty() {
            let _ = writeln!(
                r,
                "| the controller's `strait_discovery_stream_errors_total` by reason | {} | |",
                reasons.join(", ")
            );
        }
    }

    /// How many streams ended, and when.
    fn ended(&self) -> String {
        let ended_at = self.shared.ended_at.lock().unwrap();
        let when = |t: Instant| {
            if t < self.phase.started {
                "before the changes".to_string()
            } else {
                let s = (t - self.phase.started).as_secs_f64();
                format!("{s:.0} s into the changes")
            }
        };
        match (ended_at.first(), ended_at.last()) {
            (Some(&first), Some(&last)) => format!(
                "{}: the first {}, the last {}",
                ended_at.len(),
                when(first),
                when(last)
            ),
            _ => "0".into(),
        }
    }
}
