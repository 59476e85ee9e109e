//! Wires the stages together: binds the listeners, loads discovery, serves until told to stop, then
//! drains within the grace period.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::net::TcpListener;

use crate::{
    admin::Admin,
    config::{Config, DiscoverySource},
    discover::{Discovery, remote::Identity, static_file},
    drain::Drain,
    identity::{self, certify::Certifier},
    tls::Tls,
    inbound::Inbound,
    metrics::Metrics,
    outbound::Outbound,
};

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
    let ready = Arc::new(AtomicBool::new(false));
    let mut discovery = Discovery::new();

    let bind = |what: &'static str, addr| async move {
        TcpListener::bind(addr).await.map_err(|source| RunError::Bind { what, addr, source })
    };
    let admin_l = bind("admin", cfg.admin_addr).await?;
    let outbound_l = bind("outbound", cfg.outbound_addr).await?;
    let inbound_l = bind("inbound", cfg.inbound_addr).await?;

    let admin = Admin { cfg: cfg.clone(), metrics: metrics.clone(), drain: drain.clone(), ready: ready.clone() };
    tokio::spawn(admin.serve(admin_l));

    match &cfg.discovery {
        DiscoverySource::File(path) => {
            discovery.replace(static_file::load(path, &cfg.namespace)?);
            metrics.discovery_connected.set(1);
            tokio::spawn(watch_file(path.clone(), cfg.namespace.clone(), discovery.clone(), metrics.clone()));
        }
        DiscoverySource::Controller(addr) => {
            let who = Identity {
                namespace: cfg.namespace.clone(),
                workload: cfg.workload.clone(),
                service_account: cfg.service_account.clone(),
            };
            let (d, task) = Discovery::remote(addr.clone(), who, metrics.clone());
            discovery = d;
            tokio::spawn(task);
        }
        DiscoverySource::None => {}
    }

    let tls = match (&cfg.identity_addr, &cfg.trust_anchors) {
        (Some(addr), Some(anchors)) => {
            let spiffe = identity::spiffe_id(&cfg.trust_domain, &cfg.namespace, &cfg.service_account);
            let server_name = identity::server_name_for(&spiffe).ok_or_else(|| RunError::Identity(spiffe.clone()))?;
            let store = identity::Store::new(spiffe, server_name);
            let tls = Tls::new(anchors, store.clone())?;
            let certifier = Certifier {
                addr: addr.clone(),
                workload: cfg.workload.clone(),
                token_file: cfg.identity_token_file.clone(),
                store,
                metrics: metrics.clone(),
            };
            tokio::spawn(certifier.run());
            tokio::spawn(watch_anchors(tls.clone()));
            Some(tls)
        }
        _ => None,
    };

    let outbound = Outbound::new(cfg.clone(), discovery.clone(), metrics.clone(), drain.clone(), tls.clone());
    let inbound = Inbound::new(cfg.clone(), metrics.clone(), drain.clone(), tls.clone());
    let ob_task = tokio::spawn(outbound.serve(outbound_l));
    let ib_task = tokio::spawn(inbound.serve(inbound_l));
    {
        // Ready once the listeners are up and, with an identity, the first certificate is in.
        let (ready, metrics, tls, cfg) = (ready.clone(), metrics.clone(), tls.clone(), cfg.clone());
        tokio::spawn(async move {
            if let Some(tls) = &tls {
                tls.store.wait_ready().await;
            }
            ready.store(true, Ordering::Release);
            metrics.ready.set(1);
            tracing::info!(outbound = %cfg.outbound_addr, inbound = %cfg.inbound_addr, admin = %cfg.admin_addr, "proxy ready");
        });
    }

    wait_for_stop(&drain).await;
    drain.start();
    metrics.ready.set(0);
    let _ = tokio::join!(ob_task, ib_task);
    tracing::info!(active = drain.active(), grace = ?cfg.shutdown_grace, "draining");
    if tokio::time::timeout(cfg.shutdown_grace, drain.idle()).await.is_err() {
        tracing::warn!(active = drain.active(), "grace period over; closing remaining connections");
    }
    Ok(())
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
async fn watch_file(path: std::path::PathBuf, namespace: String, discovery: Discovery, metrics: Metrics) {
    let stamp = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last: Option<SystemTime> = stamp(&path);
    loop {
        tokio::time::sleep(STATIC_RELOAD_INTERVAL).await;
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        match static_file::load(&path, &namespace) {
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
