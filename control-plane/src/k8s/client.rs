//! The Kubernetes API client.

use std::path::Path;

use kube::{
    Client,
    config::{KubeConfigOptions, Kubeconfig},
};

use super::Error;

/// A client from `kubeconfig`, or, without one, from the pod's service account when run in a pod
/// (`KUBERNETES_SERVICE_HOST`), else from `$KUBECONFIG` or `~/.kube/config`.
///
/// TLS is rustls with the ring provider, the one the whole workspace uses (kube is built without
/// aws-lc-rs and OpenSSL); it is installed as the process default here if nothing else was.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<Client, Error> {
    // Fails only when a provider is installed already, which is then the one to use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match kubeconfig {
        Some(path) => {
            let error = |source| Error::Kubeconfig { path: path.display().to_string(), source };
            let file = Kubeconfig::read_from(path).map_err(error)?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await.map_err(error)?
        }
        None => kube::Config::infer().await?,
    };
    tracing::info!(cluster = %config.cluster_url, "Kubernetes API");
    Ok(Client::try_from(config)?)
}
