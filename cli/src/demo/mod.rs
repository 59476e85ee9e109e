//! `strait demo`: a whole mesh on this machine — a controller (or a static mesh file), demo
//! services each behind its own sidecar, a client workload sending steady traffic through its
//! sidecar, faults switched on and off on a schedule, and the client's golden metrics printed live.

mod apps;
mod load;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::Ordering,
    time::Duration,
};

#[derive(clap::Args)]
pub struct Args {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Requests per second from the client workload.
    #[arg(long, default_value_t = 40)]
    pub rps: u32,
    /// Seconds between metric printouts.
    #[arg(long, default_value_t = 2)]
    pub interval: u64,
    /// Read the mesh file in each proxy instead of running a controller.
    #[arg(long)]
    pub no_controller: bool,
}

struct Proc {
    name: String,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first so proxies drain; the demo owns these processes.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        std::thread::sleep(Duration::from_millis(50));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.name;
    }
}

fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let p = exe.parent().map(|d| d.join(name)).ok_or("no parent dir")?;
    if p.exists() { Ok(p) } else { Err(format!("{} not found next to strait; run `make build` first", p.display())) }
}

fn free_addr() -> std::io::Result<SocketAddr> {
    // The port is free now; the small window before a child binds it is acceptable for a demo.
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn spawn(dir: &Path, name: &str, bin: &Path, args: &[String], env: &[(&str, String)]) -> Result<Proc, String> {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdout(log.try_clone().map_err(|e| e.to_string())?).stderr(log).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().map_err(|e| format!("starting {name}: {e}"))?;
    Ok(Proc { name: name.to_string(), child })
}

struct Workload {
    name: &'static str,
    sa: &'static str,
    inbound: SocketAddr,
    outbound: SocketAddr,
    admin: SocketAddr,
}

pub async fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("strait-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let proxy_bin = sibling("strait-proxy")?;

    let orders1 = apps::start("orders-1").await?;
    let orders2 = apps::start("orders-2").await?;
    let payments = apps::start("payments").await?;
    payments.faults.latency_ms.store(20, Ordering::Relaxed);

    let wl = |name, sa| -> std::io::Result<Workload> {
        Ok(Workload { name, sa, inbound: free_addr()?, outbound: free_addr()?, admin: free_addr()? })
    };
    let workloads = [wl("web", "web")?, wl("orders-1", "orders")?, wl("orders-2", "orders")?, wl("payments", "payments")?];
    let mesh = format!(
        r#"trustDomain: cluster.local
workloads:
{wls}
services:
  - name: orders
    namespace: demo
    ports: [{{port: 8080, protocol: http}}]
    annotations:
      retry.strait.io/http: "5xx"
      circuit.strait.io/consecutive-failures: "5"
    endpoints:
      - {{address: "{o1}", proxy: "{p1}", workload: orders-1}}
      - {{address: "{o2}", proxy: "{p2}", workload: orders-2}}
  - name: payments
    namespace: demo
    ports: [{{port: 8080, protocol: http}}]
    endpoints:
      - {{address: "{pa}", proxy: "{p3}", workload: payments}}
"#,
        wls = workloads
            .iter()
            .map(|w| format!("  - {{name: {}, namespace: demo, serviceAccount: {}, token: demo-{}}}", w.name, w.sa, w.name))
            .collect::<Vec<_>>()
            .join("\n"),
        o1 = orders1.addr,
        o2 = orders2.addr,
        pa = payments.addr,
        p1 = workloads[1].inbound,
        p2 = workloads[2].inbound,
        p3 = workloads[3].inbound,
    );
    let mesh_path = dir.join("mesh.yaml");
    std::fs::write(&mesh_path, mesh)?;

    let mut procs = Vec::new();
    let state = dir.join("state");
    // With a controller, every proxy gets a certificate and proxies speak mutual TLS.
    let mut identity: Option<String> = None;
    let discovery: (&str, String) = match (a.no_controller, sibling("strait-controller")) {
        (false, Ok(ctl)) => {
            let disc = free_addr()?;
            let ident = free_addr()?;
            let admin = free_addr()?;
            identity = Some(ident.to_string());
            let args = vec![
                "--mesh-file".into(),
                mesh_path.display().to_string(),
                "--state-dir".into(),
                state.display().to_string(),
                "--discovery-addr".into(),
                disc.to_string(),
                "--identity-addr".into(),
                ident.to_string(),
                "--admin-addr".into(),
                admin.to_string(),
                "--webhook-addr".into(),
                free_addr()?.to_string(),
            ];
            procs.push(spawn(&dir, "controller", &ctl, &args, &[])?);
            println!("controller    discovery on {disc}, identity on {ident}, admin on {admin}");
            let anchors = state.join("trust-anchors.pem");
            for _ in 0..100 {
                if anchors.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ("STRAIT_DISCOVERY_ADDR", disc.to_string())
        }
        _ => ("STRAIT_DISCOVERY_FILE", mesh_path.display().to_string()),
    };

    for w in &workloads {
        let mut env = vec![
            ("STRAIT_OUTBOUND_ADDR", w.outbound.to_string()),
            ("STRAIT_INBOUND_ADDR", w.inbound.to_string()),
            ("STRAIT_ADMIN_ADDR", w.admin.to_string()),
            ("STRAIT_NAMESPACE", "demo".to_string()),
            ("STRAIT_WORKLOAD", w.name.to_string()),
            ("STRAIT_SERVICE_ACCOUNT", w.sa.to_string()),
            (discovery.0, discovery.1.clone()),
            ("STRAIT_LOG", "warn".to_string()),
        ];
        if let Some(ident) = &identity {
            let token = dir.join(format!("{}.token", w.name));
            std::fs::write(&token, format!("demo-{}", w.name))?;
            env.push(("STRAIT_IDENTITY_ADDR", ident.clone()));
            env.push(("STRAIT_TRUST_ANCHORS", state.join("trust-anchors.pem").display().to_string()));
            env.push(("STRAIT_IDENTITY_TOKEN_FILE", token.display().to_string()));
        }
        procs.push(spawn(&dir, &format!("proxy-{}", w.name), &proxy_bin, &[], &env)?);
        println!("proxy {:<8} outbound {}  inbound {}  admin {}", w.name, w.outbound, w.inbound, w.admin);
    }
    for w in &workloads {
        wait_ready(w.admin).await.map_err(|e| format!("proxy {} not ready: {e} (logs in {})", w.name, dir.display()))?;
    }
    println!("apps          orders-1 {}  orders-2 {}  payments {}", orders1.addr, orders2.addr, payments.addr);
    println!("logs          {}\n", dir.display());
    println!("client 'web' sends {} req/s through its sidecar to orders.demo:8080 and payments.demo:8080", a.rps);
    if identity.is_some() {
        println!("every hop between sidecars is mutual TLS; the apps see the caller as spiffe://cluster.local/ns/demo/sa/web");
    }
    println!("try: curl -x http://{} http://orders.demo:8080/\n", workloads[0].outbound);

    let targets = vec!["http://orders.demo:8080/order", "http://payments.demo:8080/pay"];
    let counts = load::spawn(workloads[0].outbound, targets.clone(), a.rps);

    let start = tokio::time::Instant::now();
    let mut before = client_snapshot(workloads[0].admin).await;
    let mut tick = tokio::time::interval(Duration::from_secs(a.interval.max(1)));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let t = start.elapsed().as_secs();
        // The fault schedule: orders-2 fails a third of its requests from 10 s to 30 s (orders
        // retries 5xx, so callers hardly see it), payments fails a tenth from 15 s to 30 s (no
        // retries: callers see it) and slows down from 20 s to 30 s; then everything heals, and the
        // cycle repeats every 40 s.
        let phase = t % 40;
        let (err, slow) = (if (10..30).contains(&phase) { 33 } else { 0 }, if (20..30).contains(&phase) { 200 } else { 20 });
        if orders2.faults.error_percent.swap(err, Ordering::Relaxed) != err {
            println!("-- t={t}s fault: orders-2 now fails {err}% of requests");
        }
        let pay_err = if (15..30).contains(&phase) { 10 } else { 0 };
        if payments.faults.error_percent.swap(pay_err, Ordering::Relaxed) != pay_err {
            println!("-- t={t}s fault: payments now fails {pay_err}% of requests");
        }
        if payments.faults.latency_ms.swap(slow, Ordering::Relaxed) != slow {
            println!("-- t={t}s fault: payments latency now ~{slow} ms");
        }
        let now = client_snapshot(workloads[0].admin).await;
        println!("t={t}s  golden metrics of 'web' (outbound, last {}s)", a.interval);
        print!("{}", crate::stat::render(&now.delta(&before), "outbound", a.interval as f64));
        // What the load generator itself got back so far (completed requests, not a rate).
        let seen: Vec<String> = targets
            .iter()
            .zip(counts.iter())
            .map(|(t, c)| {
                let host = t.trim_start_matches("http://").split('/').next().unwrap_or(t);
                format!("{host} ok {} failed {}", c.ok.load(Ordering::Relaxed), c.failed.load(Ordering::Relaxed))
            })
            .collect();
        println!("load totals   {}", seen.join(", "));
        before = now;
        if a.duration.is_some_and(|d| t >= d) {
            break;
        }
    }
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The client proxy's counters now; empty if a scrape fails (the next one will do).
async fn client_snapshot(admin: SocketAddr) -> crate::stat::Snapshot {
    match crate::stat::scrape(admin).await {
        Ok(text) => crate::stat::Snapshot::parse(&text).unwrap_or_default(),
        Err(_) => crate::stat::Snapshot::default(),
    }
}

async fn wait_ready(admin: SocketAddr) -> Result<(), String> {
    for _ in 0..100 {
        if let Ok(tcp) = tokio::net::TcpStream::connect(admin).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut tcp = tcp;
            let _ = tcp.write_all(b"GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
            let mut buf = Vec::new();
            let _ = tcp.read_to_end(&mut buf).await;
            if buf.starts_with(b"HTTP/1.1 200") {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("timed out after 10 s".into())
}
