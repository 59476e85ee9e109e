//! Reliability runs (process tier): a real controller (embedded mode, mesh file, identity), three
//! endpoints of a meshed HTTP service (`strait-testsrv http`, each behind its own proxy, mTLS
//! between the proxies) and a client proxy, under steady open-loop load of `GET /` and
//! `POST /record` (a 1 KiB body and a unique id the servers remember), while
//!
//! - every endpoint is restarted in turn (rolling restart),
//! - the controller is killed for a while and brought back (controller outage),
//! - endpoints are added and removed 100 times a second (endpoint churn).
//!
//! Each run asserts no failed request (no failed idempotent one under churn), no duplicated and no
//! lost POST, and prints its figures (`--nocapture` shows them). Sizes come from the environment:
//! `STRAIT_RELIABILITY_RPS` (default 150, what two shared cores sustain with debug binaries; 500
//! in the full run), `STRAIT_OUTAGE_SECONDS` (60; 600 in a soak), `STRAIT_CHURN_SECONDS` (15; 60)
//! and `STRAIT_CHURN_RATE` (changes per second, 100). Everything runs on loopback and is bounded.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use strait_tests::{
    ControllerHandle, Process, ProxyHandle, TestDir, controller, free_addr, http_get, http_get_via_proxy,
    load::{Kind, Load, Recorded, Sample, Summary, Target, env_or},
    metrics, proxy_named, testsrv_in,
};

const AUTHORITY: &str = "web.demo:8080";
const DEFAULT_RPS: u64 = 150;
/// Share of the load that is `POST /record`, in percent.
const POST_PERCENT: u32 = 30;
/// A stopped endpoint's proxy keeps accepting this long (the production default is 5 s; the
/// removal reaches the client proxy within a second here).
const ACCEPT_PERIOD: &str = "2s";
const GRACE_PERIOD: &str = "15s";
/// Load before and after the events, so every run has a steady-state baseline.
const SETTLE: Duration = Duration::from_secs(3);

struct Server {
    name: String,
    app: Process,
    app_addr: SocketAddr,
    proxy: ProxyHandle,
}

/// One mesh endpoint of the service, as the mesh file lists it.
#[derive(Clone)]
struct Ep {
    address: String,
    proxy: String,
    workload: String,
}

impl Server {
    fn endpoint(&self) -> Ep {
        Ep { address: self.app_addr.to_string(), proxy: self.proxy.inbound.to_string(), workload: self.name.clone() }
    }

    async fn count(&self) -> u64 {
        match http_get(&format!("http://{}/count", self.app_addr)).await {
            Ok(r) => r.text().trim().parse().unwrap_or(0),
            Err(_) => 0,
        }
    }

    async fn recorded(&self) -> String {
        http_get(&format!("http://{}/recorded", self.app_addr)).await.expect("GET /recorded").text()
    }
}

struct Rig {
    dir: TestDir,
    ctl: ControllerHandle,
    client: ProxyHandle,
    servers: Vec<Server>,
    /// `GET /recorded` of the servers already stopped.
    recorded: Vec<String>,
    generation: usize,
    /// Servers in the mesh file's workloads.
    n: usize,
    /// The service's annotations (policy), as a user sets them.
    annotations: &'static [(&'static str, &'static str)],
}

fn workloads(n: usize) -> String {
    let mut y = String::from("trustDomain: cluster.local\nworkloads:\n");
    for name in std::iter::once("client".to_string()).chain((0..n).map(|k| format!("server-{k}"))) {
        y += &format!("  - {{name: {name}, namespace: demo, serviceAccount: {name}, token: \"token-{name}\"}}\n");
    }
    y
}

fn mesh_yaml(n: usize, annotations: &[(&str, &str)], endpoints: &[Ep]) -> String {
    let mut y = workloads(n);
    y += "services:\n  - name: web\n    namespace: demo\n    ports: [{port: 8080, protocol: http}]\n";
    if !annotations.is_empty() {
        y += "    annotations:\n";
        for (k, v) in annotations {
            y += &format!("      {k}: \"{v}\"\n");
        }
    }
    y += "    endpoints:";
    if endpoints.is_empty() {
        y += " []\n";
    } else {
        y += "\n";
    }
    for e in endpoints {
        y += &format!("      - {{address: \"{}\", proxy: \"{}\", workload: {}}}\n", e.address, e.proxy, e.workload);
    }
    y
}

impl Rig {
    /// The controller, `n` servers (`inbound(k)` gives server k extra proxy environment) and the
    /// client proxy, every endpoint in the mesh and served.
    async fn start(
        label: &str,
        n: usize,
        annotations: &'static [(&'static str, &'static str)],
        inbound: impl Fn(usize) -> Vec<(String, String)>,
    ) -> Rig {
        let dir = TestDir::new(label);
        let ctl = controller(dir.path(), &mesh_yaml(n, annotations, &[]), &[]).await;
        for name in std::iter::once("client".to_string()).chain((0..n).map(|k| format!("server-{k}"))) {
            dir.write(format!("token-{name}"), format!("token-{name}"));
        }
        let client = proxy_named("client", &refs(&proxy_env(&ctl, &dir, "client", &[]))).await;
        let mut rig =
            Rig { dir, ctl, client, servers: Vec::new(), recorded: Vec::new(), generation: 0, n, annotations };
        for k in 0..n {
            let s = rig.start_server(k, &inbound(k)).await;
            rig.servers.push(s);
        }
        rig.publish(&rig.endpoints());
        let deadline = Instant::now() + Duration::from_secs(30);
        for k in 0..n {
            while rig.servers[k].count().await == 0 {
                let _ = http_get_via_proxy(rig.client.outbound, &format!("http://{AUTHORITY}/")).await;
                assert!(Instant::now() < deadline, "server-{k} never served through the client proxy");
            }
        }
        rig
    }

    async fn start_server(&mut self, k: usize, extra: &[(String, String)]) -> Server {
        self.generation += 1;
        let name = format!("server-{k}");
        let (app, app_addr) = testsrv_in(self.dir.path(), "http", &format!("{name}-app-{}", self.generation)).await;
        let env = proxy_env(&self.ctl, &self.dir, &name, extra);
        let proxy = proxy_named(&format!("{name}-proxy-{}", self.generation), &refs(&env)).await;
        Server { name, app, app_addr, proxy }
    }

    fn endpoints(&self) -> Vec<Ep> {
        self.servers.iter().map(Server::endpoint).collect()
    }

    /// Writes the mesh file in one step (a new file renamed over the old), as a ConfigMap update does.
    fn publish(&self, endpoints: &[Ep]) {
        let tmp = self.dir.join("mesh.yaml.new");
        std::fs::write(&tmp, mesh_yaml(self.n, self.annotations, endpoints)).unwrap();
        std::fs::rename(&tmp, &self.ctl.mesh_file).unwrap();
    }

    /// Replaces server `k` as a rolling update replaces a pod: out of the mesh and SIGTERM to its
    /// proxy at the same moment (as Kubernetes does: the proxy's accept period covers the time the
    /// removal takes to reach the client), the application once its proxy is gone; then a new
    /// application and proxy on new addresses, back into the mesh, until it serves. Returns how
    /// long the old proxy took to exit.
    async fn restart(&mut self, k: usize) -> Duration {
        let mut old = self.servers.remove(k);
        self.publish(&self.endpoints());
        old.proxy.process.signal(libc::SIGTERM);
        let signalled = Instant::now();
        let status = old.proxy.process.wait_exit(Duration::from_secs(30)).await.expect("the old proxy exits");
        let drained = signalled.elapsed();
        assert!(status.success(), "{} exited with {status:?}", old.name);
        self.recorded.push(old.recorded().await);
        old.app.terminate(Duration::from_secs(10)).await.expect("the old application exits");

        let new = self.start_server(k, &[]).await;
        self.servers.insert(k, new);
        self.publish(&self.endpoints());
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.servers[k].count().await < 5 {
            assert!(Instant::now() < deadline, "the new server-{k} is never sent traffic");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drained
    }

    /// Every id recorded by the servers, the stopped ones included.
    async fn all_recorded(&self) -> Vec<String> {
        let mut all = self.recorded.clone();
        for s in &self.servers {
            all.push(s.recorded().await);
        }
        all
    }

    fn load(&self, rps: u64) -> Load {
        Load::start(Target {
            proxy: self.client.outbound,
            authority: AUTHORITY.into(),
            rps: rps as u32,
            post_percent: POST_PERCENT,
        })
    }
}

fn proxy_env(ctl: &ControllerHandle, dir: &TestDir, name: &str, extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ctl.proxy_env().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    for (k, v) in [
        ("STRAIT_NAMESPACE", "demo".to_string()),
        ("STRAIT_WORKLOAD", name.to_string()),
        ("STRAIT_SERVICE_ACCOUNT", name.to_string()),
        ("STRAIT_IDENTITY_TOKEN_FILE", dir.join(format!("token-{name}")).display().to_string()),
        ("STRAIT_SHUTDOWN_ACCEPT_PERIOD", ACCEPT_PERIOD.to_string()),
        ("STRAIT_SHUTDOWN_GRACE_PERIOD", GRACE_PERIOD.to_string()),
    ] {
        env.push((k.to_string(), v));
    }
    env.extend(extra.iter().cloned());
    env
}

fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A line of a run's report, printed in one piece at its end (the runs go on in parallel).
macro_rules! say {
    ($out:ident, $($arg:tt)*) => {{
        $out.push_str(&format!($($arg)*));
        $out.push('\n');
    }};
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The first few failures, for the assertion message.
fn failures(samples: &[Sample], kind: Option<Kind>) -> Vec<String> {
    samples
        .iter()
        .filter(|s| !s.ok() && kind.is_none_or(|k| s.kind == k))
        .take(10)
        .map(|s| format!("{:?} #{} at {:.2}s: {}", s.kind, s.id, s.at.as_secs_f64(), s.error.as_deref().unwrap_or("")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load_fails_and_duplicates_nothing() {
    let rps = env_or("STRAIT_RELIABILITY_RPS", DEFAULT_RPS);
    // The default policy: peak-EWMA balancing, no retries. The drain alone must make a restart clean.
    let mut rig = Rig::start("rolling", 3, &[], |_| Vec::new()).await;
    let rss_before = rig.client.process.rss_bytes();
    let load = rig.load(rps);
    tokio::time::sleep(SETTLE).await;
    let mut windows = Vec::new();
    let mut drains = Vec::new();
    for k in 0..3 {
        let from = load.elapsed();
        drains.push(rig.restart(k).await);
        windows.push((from, load.elapsed()));
    }
    tokio::time::sleep(SETTLE).await;
    let samples = load.stop().await;
    let rss_after = rig.client.process.rss_bytes();
    let recorded = Recorded::check(&rig.all_recorded().await, &samples);

    let all = Summary::of(&samples);
    let during = Summary::of(samples.iter().filter(|s| windows.iter().any(|(a, b)| s.at >= *a && s.at < *b)));
    let before = Summary::of(samples.iter().filter(|s| s.at < windows[0].0));
    let posts = samples.iter().filter(|s| s.kind == Kind::Post).count();
    let mut out = String::new();
    say!(out, "reliability: rolling restart of 3 endpoints at {rps} req/s ({POST_PERCENT}% POST):");
    say!(out, "  all:             {all}");
    say!(out, "  before:          {before}");
    say!(out, "  during restarts: {during}");
    say!(
        out,
        "  POSTs: {posts} sent, {} recorded by the servers, {} duplicated, {} answered but not recorded",
        recorded.entries,
        recorded.duplicates,
        recorded.lost
    );
    say!(
        out,
        "  old proxies exited {:?} after SIGTERM (accept period {ACCEPT_PERIOD}); restarts took {:?}",
        drains,
        windows.iter().map(|(a, b)| *b - *a).collect::<Vec<_>>()
    );
    say!(out, "  client proxy RSS: {:.1} MiB before, {:.1} MiB after", mib(rss_before), mib(rss_after));
    print!("{out}");
    assert_eq!(all.failures, 0, "failed requests: {:#?}", failures(&samples, None));
    assert_eq!(recorded.duplicates, 0, "duplicated POSTs");
    assert_eq!(recorded.lost, 0, "POSTs answered 200 that no server recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_outage_keeps_the_last_snapshot_serving() {
    let rps = env_or("STRAIT_RELIABILITY_RPS", DEFAULT_RPS);
    let outage = Duration::from_secs(env_or("STRAIT_OUTAGE_SECONDS", 60));
    // Round robin, so that every endpoint's share of the load shows it is still in the snapshot.
    let mut rig = Rig::start("outage", 3, &[("balancer.strait.io/algorithm", "round-robin")], |_| Vec::new()).await;
    let rss_before = rig.client.process.rss_bytes();
    let load = rig.load(rps);
    tokio::time::sleep(SETTLE).await;
    let updates = |m: &str, result: &str| metrics::value(m, "strait_discovery_updates_total", &[("result", result)]);
    let m0 = rig.client.metrics().await;

    rig.ctl.process.kill();
    let killed = Instant::now();
    let out_at = load.elapsed();
    let mut counts: Vec<u64> = Vec::new();
    for s in &rig.servers {
        counts.push(s.count().await);
    }
    let mut last_stale = (Duration::ZERO, 0.0);
    let mut out = String::new();
    say!(out, "reliability: controller outage of {outage:?} at {rps} req/s ({POST_PERCENT}% POST):");
    while killed.elapsed() < outage {
        tokio::time::sleep(outage.saturating_sub(killed.elapsed()).min(Duration::from_secs(10))).await;
        let m = rig.client.metrics().await;
        let stale = metrics::value(&m, "strait_discovery_stale_seconds", &[]);
        let connected = metrics::value(&m, "strait_discovery_connected", &[]);
        let mut served = Vec::new();
        for (k, s) in rig.servers.iter().enumerate() {
            let c = s.count().await;
            served.push(c - counts[k]);
            counts[k] = c;
        }
        say!(
            out,
            "  {:>5.1}s down: client proxy connected={connected} stale={stale:.1}s; requests per endpoint since the last line {served:?}",
            killed.elapsed().as_secs_f64()
        );
        assert_eq!(connected, 0.0, "no controller to be connected to");
        assert!(served.iter().all(|&n| n > 0), "an endpoint stopped receiving traffic: {served:?}");
        last_stale = (killed.elapsed(), stale);
    }
    rig.ctl.restart().await;
    let back = Instant::now();
    let back_at = load.elapsed();
    let deadline = back + Duration::from_secs(30);
    let (reconnected, m_back) = loop {
        let m = rig.client.metrics().await;
        if metrics::value(&m, "strait_discovery_connected", &[]) == 1.0
            && metrics::value(&m, "strait_discovery_stale_seconds", &[]) == 0.0
        {
            break (back.elapsed(), m);
        }
        assert!(Instant::now() < deadline, "the client proxy never reconnected:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for s in &rig.servers {
        let deadline = Instant::now() + Duration::from_secs(30);
        while metrics::value(&s.proxy.metrics().await, "strait_discovery_connected", &[]) != 1.0 {
            assert!(Instant::now() < deadline, "{} never reconnected", s.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(SETTLE).await;
    let samples = load.stop().await;
    let rss_after = rig.client.process.rss_bytes();
    let m1 = rig.client.metrics().await;
    let ctl_m = rig.ctl.metrics().await;
    let recorded = Recorded::check(&rig.all_recorded().await, &samples);

    let all = Summary::of(&samples);
    let down = Summary::of(samples.iter().filter(|s| s.at >= out_at && s.at < back_at));
    let (applied, unchanged) =
        (updates(&m1, "applied") - updates(&m0, "applied"), updates(&m1, "unchanged") - updates(&m0, "unchanged"));
    let subscriptions = metrics::value(&ctl_m, "strait_controller_subscriptions", &[]);
    say!(out, "  all:                 {all}");
    say!(out, "  controller down:     {down}");
    say!(
        out,
        "  staleness: {:.1}s after {:.1}s down; the client proxy reconnected {:.2}s after the controller was ready again",
        last_stale.1,
        last_stale.0.as_secs_f64(),
        reconnected.as_secs_f64()
    );
    say!(
        out,
        "  updates the client proxy took after the return: {applied} applied, {unchanged} unchanged; {subscriptions} subscriptions at the controller"
    );
    say!(out, "  POSTs: {} recorded, {} duplicated, {} lost", recorded.entries, recorded.duplicates, recorded.lost);
    say!(out, "  client proxy RSS: {:.1} MiB before, {:.1} MiB after", mib(rss_before), mib(rss_after));
    print!("{out}");
    assert_eq!(all.failures, 0, "failed requests: {:#?}", failures(&samples, None));
    assert_eq!((recorded.duplicates, recorded.lost), (0, 0), "duplicated or lost POSTs");
    // The staleness gauge grew with the outage (sampled a few seconds before its end, at most).
    assert!(
        last_stale.1 >= last_stale.0.as_secs_f64() - 5.0,
        "strait_discovery_stale_seconds {:.1} after {:?} down",
        last_stale.1,
        last_stale.0
    );
    // Nothing changed while the controller was away: the answers it sent again changed nothing,
    // one per subscribed authority, no storm.
    assert_eq!(applied, 0.0, "updates applied after the return though the mesh did not change:\n{m_back}");
    assert!((1.0..=4.0).contains(&unchanged), "{unchanged} answers after the return for one subscribed service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_churn_fails_no_idempotent_request() {
    const EXTRA_PER_SERVER: usize = 8;
    const BATCH: u64 = 10;
    let rps = env_or("STRAIT_RELIABILITY_RPS", DEFAULT_RPS);
    let seconds = env_or("STRAIT_CHURN_SECONDS", 15);
    let rate = env_or("STRAIT_CHURN_RATE", 100).max(BATCH);
    // Each server's proxy listens on 127.0.0.1 and on 8 more loopback addresses of its own; each
    // address is an endpoint of its own for the client proxy (a connection, a balancer slot, a
    // breaker), and forwards to the same application (STRAIT_INBOUND_LOCAL_IP).
    let ports: Vec<u16> = (0..3).map(|_| free_addr().port()).collect();
    let extra_ip = |k: usize, j: usize| format!("127.0.{}.{}", 20 + k, j + 1);
    let inbound = |k: usize| {
        let mut addrs = vec![format!("127.0.0.1:{}", ports[k])];
        addrs.extend((0..EXTRA_PER_SERVER).map(|j| format!("{}:{}", extra_ip(k, j), ports[k])));
        vec![
            ("STRAIT_INBOUND_ADDR".to_string(), addrs.join(",")),
            ("STRAIT_INBOUND_LOCAL_IP".to_string(), "127.0.0.1".to_string()),
        ]
    };
    let rig = Rig::start("churn", 3, &[], inbound).await;
    let stable = rig.endpoints();
    let churners: Vec<Ep> = rig
        .servers
        .iter()
        .enumerate()
        .flat_map(|(k, s)| {
            let port = ports[k];
            let app_port = s.app_addr.port();
            let name = s.name.clone();
            (0..EXTRA_PER_SERVER).map(move |j| Ep {
                address: format!("{}:{app_port}", extra_ip(k, j)),
                proxy: format!("{}:{port}", extra_ip(k, j)),
                workload: name.clone(),
            })
        })
        .collect();
    let mut present: Vec<bool> = (0..churners.len()).map(|i| i % 2 == 0).collect();
    let current = |present: &[bool]| {
        let mut eps = stable.clone();
        eps.extend(churners.iter().zip(present).filter(|(_, p)| **p).map(|(e, _)| e.clone()));
        eps
    };
    rig.publish(&current(&present));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let rss_before = rig.client.process.rss_bytes();
    let m0 = rig.client.metrics().await;
    let c0 = rig.ctl.metrics().await;
    let load = rig.load(rps);
    tokio::time::sleep(SETTLE).await;
    let churn_from = load.elapsed();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(BATCH as f64 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut changes = 0u64;
    // The client proxy's RSS every 5 s of churn: a leak per change would show as a steady climb.
    let mut rss = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        if changes % (rate * 5) == 0 {
            rss.push(mib(rig.client.process.rss_bytes()));
        }
        tick.tick().await;
        // BATCH distinct endpoints flip: added if absent, removed if present.
        let mut picked = Vec::new();
        while picked.len() < BATCH as usize {
            let i = fastrand::usize(..churners.len());
            if !picked.contains(&i) {
                picked.push(i);
            }
        }
        for i in picked {
            present[i] = !present[i];
        }
        changes += BATCH;
        rig.publish(&current(&present));
    }
    rss.push(mib(rig.client.process.rss_bytes()));
    let churned_for = started.elapsed();
    let churn_to = load.elapsed();
    tokio::time::sleep(SETTLE).await;
    let samples = load.stop().await;
    let rss_after = rig.client.process.rss_bytes();
    let m1 = rig.client.metrics().await;
    let c1 = rig.ctl.metrics().await;
    let recorded = Recorded::check(&rig.all_recorded().await, &samples);

    let gets: Vec<&Sample> = samples.iter().filter(|s| s.kind == Kind::Get).collect();
    let get_failures = gets.iter().filter(|s| !s.ok()).count();
    let during = Summary::of(samples.iter().filter(|s| s.at >= churn_from && s.at < churn_to));
    let applied = metrics::value(&m1, "strait_discovery_updates_total", &[("result", "applied")])
        - metrics::value(&m0, "strait_discovery_updates_total", &[("result", "applied")]);
    let handshakes =
        |m: &str| metrics::value(m, "strait_tls_handshakes_total", &[("direction", "outbound"), ("result", "ok")]);
    let connections = handshakes(&m1) - handshakes(&m0);
    let reloads = metrics::value(&c1, "strait_controller_config_reloads_total", &[("result", "ok")])
        - metrics::value(&c0, "strait_controller_config_reloads_total", &[("result", "ok")]);
    let mut out = String::new();
    say!(
        out,
        "reliability: endpoint churn, {changes} endpoint changes in {:.1}s ({:.0}/s, {} mesh file writes) over {} endpoints, at {rps} req/s ({POST_PERCENT}% POST):",
        churned_for.as_secs_f64(),
        changes as f64 / churned_for.as_secs_f64(),
        changes / BATCH,
        stable.len() + churners.len()
    );
    say!(out, "  all:    {}", Summary::of(&samples));
    say!(out, "  churn:  {during}");
    say!(
        out,
        "  GETs: {} sent, {get_failures} failed; POSTs: {} failed, {} duplicated, {} lost",
        gets.len(),
        samples.iter().filter(|s| s.kind == Kind::Post && !s.ok()).count(),
        recorded.duplicates,
        recorded.lost
    );
    say!(
        out,
        "  controller reloads {reloads}; updates the client proxy applied {applied}; mTLS connections it opened to endpoints {connections}"
    );
    say!(
        out,
        "  client proxy RSS: {:.1} MiB before, {:.1} MiB after; every 5 s of churn: {:.1?}",
        mib(rss_before),
        mib(rss_after),
        rss
    );
    print!("{out}");
    assert_eq!(get_failures, 0, "failed GETs: {:#?}", failures(&samples, Some(Kind::Get)));
    assert_eq!((recorded.duplicates, recorded.lost), (0, 0), "duplicated or lost POSTs");
    assert!(applied >= 10.0, "the churn reached the client proxy ({applied} updates)");
}
