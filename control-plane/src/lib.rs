//! strait-controller: the Strait control plane. It serves discovery to the proxies over gRPC from a
//! source-independent mesh model, fed by the embedded mesh file or by Kubernetes watchers ([`k8s`]),
//! signs the proxies' certificates (`Identity.Certify`) when [`Config::identity`] is set, and in
//! Kubernetes mode serves the injector's admission webhook ([`webhook`]) when [`Config::webhook`] is.
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
pub mod reload;
pub mod store;
pub mod webhook;

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
    #[error("webhook: {0}")]
    Webhook(#[from] webhook::WebhookError),
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
    /// Serve the injector webhook (Kubernetes mode only).
    pub webhook: Option<webhook::WebhookConfig>,
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
            webhook: None,
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
    webhook_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tasks: JoinSet<(&'static str, Result<(), Error>)>,
}

/// The mutation the webhook applies: [`inject`], the same code `strait inject` runs.
pub const WEBHOOK_MUTATOR: webhook::BuildMutator = injector_mutator;

/// Builds the injector from what start-up read: the injector config (the chart's ConfigMap; the
/// built-in defaults without one), the trust anchors, the cluster's version and the namespaces' store.
fn injector_mutator(ctx: &webhook::Context) -> Result<webhook::Mutator, webhook::WebhookError> {
    let path = || ctx.injector_config_path.as_ref().map_or_else(|| "(built in)".to_string(), |p| p.display().to_string());
    let config = match &ctx.injector_config {
        Some(yaml) => {
            let text = serde_yaml::to_string(yaml).map_err(|e| webhook::WebhookError::InjectorConfig(path(), e.to_string()))?;
            inject::InjectorConfig::from_yaml(&text).map_err(|e| webhook::WebhookError::InjectorConfig(path(), e.to_string()))?
        }
        None => inject::InjectorConfig { trust_domain: ctx.trust_domain.clone(), ..Default::default() },
    };
    let anchors = ctx.trust_anchors_pem.clone().unwrap_or_default();
    if anchors.is_empty() {
        tracing::warn!("no trust anchors for the injector (--trust-anchors): injected proxies will not get an identity");
    }
    let native_sidecars = ctx.kubernetes_version.is_some_and(|v| v.has_native_sidecars());
    let namespaces = ctx.namespaces.clone();
    Ok(Arc::new(move |pod: &serde_json::Value, namespace: &str| {
        let namespace_annotations = namespaces.as_ref().and_then(|n| n.annotations(namespace));
        let context = inject::Context {
            config: &config,
            trust_anchors_pem: &anchors,
            namespace,
            namespace_annotations: namespace_annotations.as_ref(),
            native_sidecars,
        };
        match inject::inject_template(pod, &context) {
            inject::Outcome::Injected { template, warnings } => {
                webhook::Mutation { patched: Some(template), warnings, reason: None }
            }
            inject::Outcome::Unchanged { reason } => webhook::Mutation { reason: Some(reason), ..Default::default() },
        }
    }))
}

/// How long start-up waits for the API server's `/version`; without it, the injector assumes a
/// cluster too old for native sidecars.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster's version, read once: `None` (and a warning) when it cannot be read or parsed.
async fn kubernetes_version(client: &kube::Client) -> Option<webhook::KubernetesVersion> {
    match tokio::time::timeout(VERSION_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(info)) => {
            let version = webhook::KubernetesVersion::parse(&info.major, &info.minor);
            if version.is_none() {
                tracing::warn!(major = %info.major, minor = %info.minor, "the cluster's version is not a number; injecting classic sidecars");
            }
            version
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "reading the cluster's version failed; injecting classic sidecars");
            None
        }
        Err(_) => {
            tracing::warn!(timeout = ?VERSION_TIMEOUT, "the cluster's version did not come in time; injecting classic sidecars");
            None
        }
    }
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
    let mut namespaces_task = None;
    let webhook = match (&config.webhook, &kubernetes) {
        (Some(wc), Some((client, options))) => {
            let kubernetes_version = kubernetes_version(client).await;
            let (namespaces, task) = k8s::namespaces::watch(client.clone(), metrics.clone(), shutdown.clone());
            namespaces_task = Some(task);
            let injector_config = wc.injector_config.as_deref().map(webhook::Context::read_injector_config).transpose()?;
            let anchors = identity.as_ref().and_then(|(ca, ..)| ca.files().anchors.clone());
            let trust_anchors_pem = anchors.and_then(|path| match std::fs::read_to_string(&path) {
                Ok(pem) => Some(pem),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "the trust anchors cannot be read for the injector");
                    None
                }
            });
            let context = webhook::Context {
                kubernetes_version,
                injector_config_path: wc.injector_config.clone(),
                injector_config,
                trust_anchors_pem,
                trust_domain: options.trust_domain.clone(),
                cluster_domain: config.cluster_domain.clone(),
                namespaces: Some(namespaces),
            };
            let mutator = (wc.build)(&context)?;
            let cert = webhook::server::WebhookCert::load(&wc.cert, &wc.key)?;
            let tls = webhook::server::server_config(cert.clone())?;
            let listener = bind("webhook", wc.addr).await?;
            let addr = local("webhook", &listener, wc.addr)?;
            Some((listener, addr, tls, cert, mutator, wc.limits, kubernetes_version))
        }
        (Some(_), None) => {
            tracing::warn!("--webhook-cert and --webhook-key are for Kubernetes mode; the injector is not served from a mesh file");
            None
        }
        (None, _) => None,
    };

    let (store, reader, publisher) = store::new(&config.cluster_domain, config.push_interval, metrics.clone());
    let (services, endpoints, workloads) = mesh.counts();
    if kubernetes.is_none() {
        store.publish(mesh);
    }

    let mut tasks = JoinSet::new();
    if let Some(task) = namespaces_task {
        tasks.spawn(named("namespace watcher", async move {
            task.await;
            Ok(())
        }));
    }
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
    let webhook_addr = webhook.as_ref().map(|(_, addr, ..)| *addr);
    if let Some((listener, addr, tls, cert, mutator, limits, version)) = webhook {
        tracing::info!(
            webhook_addr = %addr,
            cert = %cert.cert_path().display(),
            kubernetes_version = %version.map_or_else(|| "unknown".to_string(), |v| v.to_string()),
            "injector webhook serving POST /inject"
        );
        tasks.spawn(named("webhook certificate watcher", {
            let watch = reload::watch(cert.clone(), config.poll_interval, shutdown.clone(), move |result| match result {
                Ok(()) => tracing::info!(cert = %cert.cert_path().display(), "webhook certificate reloaded"),
                Err(e) => tracing::warn!(error = %e, "webhook certificate files changed but cannot be used; the current one serves"),
            });
            async move {
                watch.await;
                Ok(())
            }
        }));
        let state = Arc::new(webhook::server::State { mutator, metrics: metrics.clone(), limits });
        tasks.spawn(named("webhook server", {
            let shutdown = shutdown.clone();
            async move {
                webhook::server::serve(listener, tls, state, shutdown).await;
                Ok(())
            }
        }));
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
        return Ok(Controller { discovery_addr, admin_addr, identity_addr, webhook_addr, metrics, shutdown, tasks });
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
    Ok(Controller { discovery_addr, admin_addr, identity_addr, webhook_addr, metrics, shutdown, tasks })
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

    /// Where the injector webhook listens, when it is served.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook_addr
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
