//! strait-controller: the Strait control plane. It serves discovery to the proxies over gRPC from a
//! source-independent mesh model, fed by the embedded mesh file or by Kubernetes watchers ([`k8s`]),
//! and signs the proxies' certificates (`Identity.Certify`) when [`Config::identity`] is set.
//!
//! [`start`] binds every listener, loads the mesh and returns a running [`Controller`]; tests run
//! one in-process on loopback ports with it, and `main` runs one until a signal.

pub mod admin;
pub mod authority;
pub mod cli;
pub mod discovery;
pub mod identity;
pub mod index;
pub mod inject;
pub mod k8s;
pub mod logging;
pub mod mesh_file;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod store;

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use strait_proto::{discovery::v1::discovery_server::DiscoveryServer, identity::v1::identity_server::IdentityServer};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{discovery::DiscoveryService, metrics::Metrics};

/// How long a shutdown waits for streams and connections to close before dropping them.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// HTTP/2 pings on idle discovery connections: a proxy that vanished without closing its socket
/// (node lost, network partition) is noticed within interval + timeout, and its stream freed.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding the {what} listener on {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    MeshFile(#[from] mesh_file::MeshFileError),
    #[error(transparent)]
    Kubernetes(#[from] k8s::Error),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error("discovery server: {0}")]
    Discovery(#[from] tonic::transport::Error),
    #[error("identity: {0}")]
    Ca(#[from] identity::ca::CaError),
    #[error("identity server: {0}")]
    IdentityServer(tonic::transport::Error),
    #[error("--identity-server-id {id:?}: {reason}")]
    IdentityServerId { id: String, reason: String },
    #[error("installing the signal handlers: {0}")]
    Signal(std::io::Error),
    #[error("the {0} task stopped unexpectedly")]
    TaskEnded(&'static str),
}

/// What a controller serves and where.
#[derive(Debug, Clone)]
pub struct Config {
    pub mesh_file: PathBuf,
    pub discovery_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub cluster_domain: String,
    pub poll_interval: Duration,
    pub push_interval: Duration,
    pub limits: discovery::Limits,
    /// Kubernetes mode: the mesh comes from the cluster, and `mesh_file` is not read.
    pub kubernetes: Option<k8s::Options>,
    /// Serve `Identity.Certify` (the command line always does); `None` serves discovery only.
    pub identity: Option<IdentityConfig>,
}

/// Where the identity service listens and what it signs with.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub addr: SocketAddr,
    pub ca: CaSource,
    /// Lifetime of the proxies' certificates (never beyond the issuer's own expiry).
    pub cert_lifetime: Duration,
    /// The SPIFFE identity the service proves to proxies over TLS; `None`:
    /// [`identity::default_server_id`] in the mesh's trust domain.
    pub server_id: Option<String>,
}

/// Where the trust anchor and the issuer come from.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// Embedded mode: `trust-anchors.pem` and the issuer in this directory, created on first start.
    StateDir(PathBuf),
    /// Given files (`--trust-anchors`, `--issuer-cert`, `--issuer-key`).
    Files(identity::ca::IssuerFiles),
}

impl Config {
    /// Embedded mode from `mesh_file`, with the default addresses and timings.
    pub fn embedded(mesh_file: impl Into<PathBuf>) -> Self {
        Self {
            mesh_file: mesh_file.into(),
            discovery_addr: SocketAddr::from(([0, 0, 0, 0], 8086)),
            admin_addr: SocketAddr::from(([0, 0, 0, 0], 9990)),
            cluster_domain: "cluster.local".into(),
            poll_interval: mesh_file::DEFAULT_POLL_INTERVAL,
            push_interval: store::DEFAULT_PUSH_INTERVAL,
            limits: discovery::Limits::default(),
            kubernetes: None,
            identity: None,
        }
    }

    /// Kubernetes mode, with the default addresses and timings.
    pub fn kubernetes(options: k8s::Options) -> Self {
        Self { kubernetes: Some(options), ..Self::embedded(PathBuf::new()) }
    }
}

/// A running controller.
pub struct Controller {
    discovery_addr: SocketAddr,
    admin_addr: SocketAddr,
    identity_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tasks: JoinSet<(&'static str, Result<(), Error>)>,
}

/// Binds the listeners, loads the mesh file (a bad one is an error, with its line) and starts
/// serving. Returns once the first mesh is published, so the controller is ready. In Kubernetes
/// mode it returns once serving, without waiting for the cluster: `/ready` tells when the first
/// full list of every watched kind is in, and discovery answers nothing before.
pub async fn start(config: Config) -> Result<Controller, Error> {
    let metrics = Arc::new(Metrics::new()?);
    let kubernetes = match &config.kubernetes {
        Some(options) => Some((k8s::client::connect(options.kubeconfig.as_deref()).await?, options.clone())),
        None => None,
    };
    let (loaded, fingerprint) = match kubernetes {
        Some(_) => (mesh_file::Loaded { mesh: model::Mesh::default(), tokens: Default::default() }, None),
        None => {
            let (loaded, fingerprint) = mesh_file::load(&config.mesh_file).await.inspect_err(|_| {
                metrics.config_reloads.with_label_values(&["error"]).inc();
            })?;
            (loaded, Some(fingerprint))
        }
    };
    let mesh = loaded.mesh;
    let (tokens_tx, tokens) = tokio::sync::watch::channel(Arc::new(loaded.tokens));
    metrics.config_reloads.with_label_values(&["ok"]).inc();
    let bind = |what, addr| async move {
        TcpListener::bind(addr).await.map_err(|source| Error::Bind { what, addr, source })
    };
    let discovery_listener = bind("discovery", config.discovery_addr).await?;
    let admin_listener = bind("admin", config.admin_addr).await?;
    let local = |what, l: &TcpListener, addr| l.local_addr().map_err(|source| Error::Bind { what, addr, source });
    let discovery_addr = local("discovery", &discovery_listener, config.discovery_addr)?;
    let admin_addr = local("admin", &admin_listener, config.admin_addr)?;
    let identity = match &config.identity {
        Some(ic) => {
            let ca = match &ic.ca {
                CaSource::StateDir(dir) => identity::ca::Ca::load_or_create(dir, ic.cert_lifetime)?,
                CaSource::Files(files) => identity::ca::Ca::from_files(files.clone(), ic.cert_lifetime)?,
            };
            let listener = bind("identity", ic.addr).await?;
            let addr = local("identity", &listener, ic.addr)?;
            let trust_domain = match &kubernetes {
                Some((_, options)) => options.trust_domain.clone(),
                None => mesh.trust_domain.clone(),
            };
            let server_id = ic.server_id.clone().unwrap_or_else(|| identity::default_server_id(&trust_domain));
            identity::SpiffeId::parse(&server_id).map_err(|reason| Error::IdentityServerId { id: server_id.clone(), reason })?;
            let ca = Arc::new(ca);
            let own = identity::server_tls::OwnCert::new(ca.clone(), &server_id)?;
            let tls = identity::server_tls::server_config(own).map_err(|e| Error::Ca(identity::ca::CaError::Key(e.to_string())))?;
            Some((ca, listener, addr, tls, server_id))
        }
        None => None,
    };

    let shutdown = CancellationToken::new();
    let (store, reader, publisher) = store::new(&config.cluster_domain, config.push_interval, metrics.clone());
    let (services, endpoints, workloads) = mesh.counts();
    if kubernetes.is_none() {
        store.publish(mesh);
    }

    let mut tasks = JoinSet::new();
    tasks.spawn(named("publisher", {
        let shutdown = shutdown.clone();
        async move {
            publisher.run(shutdown).await;
            Ok(())
        }
    }));
    if let Some((client, options)) = kubernetes.clone() {
        let settings = k8s::Settings { trust_domain: options.trust_domain, ..k8s::Settings::default() };
        let watch = k8s::run(client, settings, store, metrics.clone(), shutdown.clone());
        tasks.spawn(named("Kubernetes watcher", async move {
            watch.await;
            Ok(())
        }));
    } else if let Some(fingerprint) = fingerprint {
        tasks.spawn(named("mesh file watcher", {
            let watch = mesh_file::watch(
                config.mesh_file.clone(),
                config.poll_interval,
                fingerprint,
                store,
                tokens_tx,
                metrics.clone(),
                shutdown.clone(),
            );
            async move {
                watch.await;
                Ok(())
            }
        }));
    }
    let service = DiscoveryService::new(reader.clone(), metrics.clone(), config.limits, shutdown.clone());
    let incoming = tonic::transport::server::TcpIncoming::from(discovery_listener).with_nodelay(Some(true));
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .add_service(DiscoveryServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    tasks.spawn(named("discovery server", async move { server.await.map_err(Error::from) }));
    let identity_addr = identity.as_ref().map(|(_, _, addr, _, _)| *addr);
    if let Some((ca, listener, addr, tls, server_id)) = identity {
        metrics.issuer_expiry.set(i64::try_from(ca.issuer_not_after_unix()).unwrap_or(i64::MAX));
        let anchors = ca.files().anchors.as_ref().map_or_else(|| "(not given)".to_string(), |p| p.display().to_string());
        tracing::info!(
            identity_addr = %addr,
            server_id = %server_id,
            issuer = %ca.issuer_subject(),
            issuer_cert = %ca.files().cert.display(),
            cert_lifetime = ?ca.lifetime(),
            proofs = if kubernetes.is_some() {
                "projected ServiceAccount tokens (audience identity.strait.io) checked with TokenReview"
            } else {
                "the mesh file's bootstrap tokens"
            },
            "identity serving; proxies trust the anchors in {anchors} (STRAIT_TRUST_ANCHORS)"
        );
        tasks.spawn(named("issuer watcher", {
            let watch = identity::service::watch_issuer(ca.clone(), config.poll_interval, metrics.clone(), shutdown.clone());
            async move {
                watch.await;
                Ok(())
            }
        }));
        let auth: Arc<dyn identity::auth::Authenticator> = match &kubernetes {
            Some((client, _)) => Arc::new(identity::tokenreview::TokenReviewAuthenticator::new(client.clone())),
            None => Arc::new(identity::auth::BootstrapAuthenticator::new(tokens)),
        };
        let service = identity::service::IdentityService::new(ca, auth, reader.status(), metrics.clone());
        let incoming = identity::server_tls::incoming(listener, tls, shutdown.clone());
        let server = tonic::transport::Server::builder()
            .add_service(IdentityServer::new(service))
            .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
        tasks.spawn(named("identity server", async move { server.await.map_err(Error::IdentityServer) }));
    }
    let admin_state = admin::AdminState { metrics: metrics.clone(), status: reader.status() };
    tasks.spawn(named("admin server", {
        let shutdown = shutdown.clone();
        async move {
            admin::serve(admin_listener, admin_state, shutdown).await;
            Ok(())
        }
    }));

    if kubernetes.is_some() {
        tracing::info!(%discovery_addr, %admin_addr, "controller serving from Kubernetes once the first lists are in");
        return Ok(Controller { discovery_addr, admin_addr, identity_addr, metrics, shutdown, tasks });
    }
    if reader.status().wait_for(|s| s.loaded).await.is_err() {
        return Err(Error::TaskEnded("publisher"));
    }
    tracing::info!(
        mesh_file = %config.mesh_file.display(),
        %discovery_addr,
        %admin_addr,
        services,
        endpoints,
        workloads,
        "controller serving"
    );
    Ok(Controller { discovery_addr, admin_addr, identity_addr, metrics, shutdown, tasks })
}

async fn named(
    name: &'static str,
    task: impl Future<Output = Result<(), Error>>,
) -> (&'static str, Result<(), Error>) {
    (name, task.await)
}

impl Controller {
    /// Where discovery listens (the bound port when the configured one was 0).
    pub fn discovery_addr(&self) -> SocketAddr {
        self.discovery_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Where `Identity.Certify` listens, when identity is served.
    pub fn identity_addr(&self) -> Option<SocketAddr> {
        self.identity_addr
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Serves until `signal` completes (then shuts down cleanly) or a task fails.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<(), Error> {
        let failed = tokio::select! {
            _ = signal => None,
            Some(ended) = self.tasks.join_next() => Some(match ended {
                Ok((_, Err(e))) => e,
                Ok((name, Ok(()))) => Error::TaskEnded(name),
                Err(_) => Error::TaskEnded("a controller"),
            }),
        };
        self.shutdown().await;
        failed.map_or(Ok(()), Err)
    }

    /// Stops serving: streams get `Unavailable`, listeners close. Waits up to
    /// [`DEFAULT_SHUTDOWN_GRACE`], then drops whatever is left.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        let drain = async {
            while let Some(ended) = self.tasks.join_next().await {
                if let Ok((name, Err(e))) = ended {
                    tracing::warn!(task = name, error = %e, "error while shutting down");
                }
            }
        };
        if tokio::time::timeout(DEFAULT_SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!("shutdown grace period over; closing the remaining connections");
            self.tasks.abort_all();
        }
        tracing::info!("controller stopped");
    }
}
