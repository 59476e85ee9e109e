//! Wires the stages together: binds the listeners, loads discovery, serves until told to stop, then
//! drains (see [`crate::drain`]): not ready but still accepting for the accept period, then the
//! listeners close and what is left may finish within the grace period.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::{
    admin::{Admin, probe::Prober},
    config::{Config, DiscoverySource},
    discover::{Discovery, remote::Identity, static_file},
    drain::Drain,
    identity::{self, certify::Certifier},
    tls::Tls,
    inbound::Inbound,
    metrics::Metrics,
    outbound::Outbound,
    ready::Readiness,
};

/// How often readiness is re-evaluated for `strait_ready`, `strait_identity_certificate_valid` and
/// the log (`/ready` itself always answers from the current state).
const READINESS_INTERVAL: Duration = Duration::from_millis(250);

/// How often a static mesh file is checked for changes: edits show up within a second.
const STATIC_RELOAD_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("binding {what} listener on {addr}: {source}")]
    Bind { what: &'static str, addr: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Discovery(#[from] static_file::StaticError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0:?} is not a valid identity (check STRAIT_TRUST_DOMAIN, STRAIT_NAMESPACE, STRAIT_SERVICE_ACCOUNT)")]
    Identity(String),
}

/// Runs the proxy until SIGTERM/SIGINT or `/shutdown`, then drains. Returns once everything stopped.
pub async fn run(cfg: Config) -> Result<(), RunError> {
    let cfg = Arc::new(cfg);
    let metrics = Metrics::new();
    let drain = Drain::new();
    let mut discovery = Discovery::new();
    let dns = crate::dns::Dns::from_system();

    let bind = |what: &'static str, addr| async move {
        TcpListener::bind(addr).await.map_err(|source| RunError::Bind { what, addr, source })
    };
    let admin_l = bind("admin", cfg.admin_addr).await?;
    let outbound_ls = bind_all("outbound", &cfg.outbound_addrs, &cfg.optional_addrs)?;
    let inbound_ls = bind_all("inbound", &cfg.inbound_addrs, &cfg.optional_addrs)?;

    match &cfg.discovery {
        DiscoverySource::File(path) => {
            discovery.replace(static_file::load(path, &cfg.namespace, &cfg.workload)?);
            metrics.discovery_connected.set(1);
            metrics.discovery_current();
            tokio::spawn(watch_file(path.clone(), cfg.clone(), discovery.clone(), metrics.clone()));
        }
        DiscoverySource::Controller(addr) => {
            let who = Identity {
                namespace: cfg.namespace.clone(),
                workload: cfg.workload.clone(),
                service_account: cfg.service_account.clone(),
            };
            let (d, task) = Discovery::remote(addr.clone(), who, metrics.clone(), dns.clone(), cfg.discovery_wait, cfg.max_subscriptions);
            discovery = d;
            tokio::spawn(task);
        }
        DiscoverySource::None => metrics.discovery_current(),
    }

    let mut identity_store = None;
    // A file (re-read when it changes) or PEM text; the configuration allows only one.
    let anchors = cfg.trust_anchors.as_deref().map(Ok).or_else(|| cfg.trust_anchors_pem.as_deref().map(Err));
    let tls = match (&cfg.identity_addr, anchors) {
        (Some(addr), Some(anchors)) => {
            let spiffe = identity::spiffe_id(&cfg.trust_domain, &cfg.namespace, &cfg.service_account);
            let server_name = identity::server_name_for(&spiffe).ok_or_else(|| RunError::Identity(spiffe.clone()))?;
            let store = identity::Store::new(spiffe, server_name);
            identity_store = Some(store.clone());
            let tls = match anchors {
                Ok(path) => Tls::new(path, store.clone(), cfg.tls_handshake_timeout)?,
                Err(pem) => Tls::from_pem(pem, store.clone(), cfg.tls_handshake_timeout)?,
            };
            let certifier = Certifier {
                addr: addr.clone(),
                server_id: cfg.identity_server_id.clone(),
                tls: tls.clone(),
                workload: cfg.workload.clone(),
                token_file: cfg.identity_token_file.clone(),
                store,
                metrics: metrics.clone(),
                dns: dns.clone(),
            };
            tokio::spawn(certifier.run());
            tokio::spawn(watch_anchors(tls.clone()));
            Some(tls)
        }
        _ => None,
    };

    // The admin port answers from the start: `/ready` says what it still waits for.
    let ready = Readiness::new(identity_store, discovery.remote_client().cloned());
    let probes = Arc::new(Prober::new(cfg.app_probes.clone()));
    let admin = Admin { cfg: cfg.clone(), metrics: metrics.clone(), drain: drain.clone(), ready: ready.clone(), probes };
    tokio::spawn(admin.serve(admin_l));

    let outbound = Outbound::new(cfg.clone(), discovery.clone(), metrics.clone(), drain.clone(), tls.clone(), dns);
    let inbound = Inbound::new(
        cfg.clone(),
        metrics.clone(),
        drain.clone(),
        tls.clone(),
        discovery.remote_client().map(|c| c.inbound_policy()),
        discovery.clone(),
    );
    let ob_tasks: Vec<_> = outbound_ls.into_iter().map(|l| tokio::spawn(outbound.clone().serve(l))).collect();
    let ib_tasks: Vec<_> = inbound_ls.into_iter().map(|l| tokio::spawn(inbound.clone().serve(l))).collect();
    ready.set_listening();
    tokio::spawn(watch_readiness(ready, metrics.clone(), drain.clone(), cfg.clone()));

    wait_for_stop(&drain).await;
    let deadline = tokio::time::Instant::now() + cfg.shutdown_grace;
    drain.start();
    metrics.ready.set(0);
    tracing::info!(accept = ?cfg.shutdown_accept, grace = ?cfg.shutdown_grace, "draining: not ready, still accepting");
    tokio::time::sleep(cfg.shutdown_accept).await;
    drain.close();
    for t in ob_tasks.into_iter().chain(ib_tasks) {
        let _ = t.await;
    }
    tracing::info!(active = drain.active(), "listeners closed; waiting for open connections");
    if tokio::time::timeout_at(deadline, drain.idle()).await.is_err() {
        tracing::warn!(active = drain.active(), "grace period over; closing remaining connections");
    } else {
        tracing::info!("drained");
    }
    Ok(())
}

/// Binds every listener of one kind. An IPv6 address on the same port as an IPv4 one listens for
/// IPv6 only (both can then share the port); an optional one (added by the defaults) is skipped
/// where the host has no IPv6.
fn bind_all(what: &'static str, addrs: &[SocketAddr], optional: &[SocketAddr]) -> Result<Vec<TcpListener>, RunError> {
    let mut out = Vec::new();
    for &addr in addrs {
        let v6_only = addr.is_ipv6() && addrs.iter().any(|a| a.is_ipv4() && a.port() == addr.port());
        match listen(addr, v6_only) {
            Ok(l) => out.push(l),
            Err(e) if optional.contains(&addr) && is_no_ipv6(&e) => {
                tracing::info!(%addr, error = %e, "no IPv6 here; not listening on the default IPv6 {what} address");
            }
            Err(source) => return Err(RunError::Bind { what, addr, source }),
        }
    }
    Ok(out)
}

fn listen(addr: SocketAddr, v6_only: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if v6_only {
        sock.set_only_v6(true)?;
    }
    // As tokio's own bind: a restarted proxy rebinds at once despite connections in TIME_WAIT.
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}

/// The errors binding an IPv6 address gives where IPv6 is disabled or absent.
fn is_no_ipv6(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT))
}

async fn wait_for_stop(drain: &Drain) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::warn!("cannot install signal handlers; stop through /shutdown");
            return drain.signaled().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = drain.signaled() => {}
    }
}

/// Reloads a static mesh file when it changes; a bad edit is reported and the last good table kept.
async fn watch_file(path: std::path::PathBuf, cfg: Arc<Config>, discovery: Discovery, metrics: Metrics) {
    let stamp = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last: Option<SystemTime> = stamp(&path);
    loop {
        tokio::time::sleep(STATIC_RELOAD_INTERVAL).await;
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        match static_file::load(&path, &cfg.namespace, &cfg.workload) {
            Ok(t) => {
                discovery.replace(t);
                metrics.discovery_updates.with_label_values(&["applied"]).inc();
                tracing::info!(path = %path.display(), "mesh file reloaded");
            }
            Err(e) => {
                metrics.discovery_updates.with_label_values(&["rejected"]).inc();
                tracing::warn!(error = %e, "mesh file rejected; keeping the last good one");
            }
        }
    }
}

/// How often the trust anchors file is checked: an anchor rotation reaches every proxy within seconds.
const ANCHORS_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Re-reads the trust anchors when the file changes; a bad file is reported and the old anchors kept.
async fn watch_anchors(tls: Arc<Tls>) {
    loop {
        tokio::time::sleep(ANCHORS_RELOAD_INTERVAL).await;
        match tls.reload_anchors() {
            Ok(true) => tracing::info!("trust anchors reloaded"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "trust anchors rejected; keeping the current ones"),
        }
    }
}

/// Keeps `strait_ready` and `strait_identity_certificate_valid` current and logs every change of
/// readiness (what it waits for, or that the proxy is ready).
async fn watch_readiness(ready: Arc<Readiness>, metrics: Metrics, drain: Drain, cfg: Arc<Config>) {
    let mut last: Option<Vec<&'static str>> = None;
    let mut tick = tokio::time::interval(READINESS_INTERVAL);
    loop {
        tick.tick().await;
        if let Some(valid) = ready.certificate_valid() {
            metrics.identity_valid.set(i64::from(valid));
        }
        if drain.is_draining() {
            metrics.ready.set(0);
            continue;
        }
        let missing = ready.missing();
        metrics.ready.set(i64::from(missing.is_empty()));
        if last.as_ref() == Some(&missing) {
            continue;
        }
        if missing.is_empty() {
            tracing::info!(outbound = %cfg.outbound_addr, inbound = %cfg.inbound_addr, admin = %cfg.admin_addr, "proxy ready");
        } else if last.as_ref().is_some_and(|l| l.is_empty()) {
            tracing::warn!(waiting_for = %missing.join(", "), "proxy no longer ready");
        } else {
            tracing::info!(waiting_for = %missing.join(", "), "proxy not ready yet");
        }
        last = Some(missing);
    }
}
