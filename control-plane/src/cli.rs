//! The `strait-controller` command line (DESIGN §9).

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

use crate::{Config, logging::LogFormat};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("Kubernetes mode is not built yet; run the embedded mode with --mesh-file FILE")]
    KubernetesNotBuilt,
    #[error("no mesh to serve: give --mesh-file FILE (Kubernetes mode, --kubernetes, is not built yet)")]
    NoSource,
}

/// The Strait control plane: discovery for the proxies, from a mesh file or from Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "strait-controller", version)]
pub struct Args {
    /// Embedded mode: serve the mesh described in this YAML file, reloading it when it changes.
    #[arg(long, value_name = "FILE", conflicts_with = "kubernetes")]
    pub mesh_file: Option<PathBuf>,
    /// Where embedded mode keeps its state (trust anchor and issuer, once identity is served).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Kubernetes mode: watch the cluster's Services, EndpointSlices and Pods (not built yet).
    #[arg(long)]
    pub kubernetes: bool,
    /// Discovery gRPC listen address.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8086")]
    pub discovery_addr: SocketAddr,
    /// Identity gRPC listen address (identity is not served yet).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub identity_addr: SocketAddr,
    /// Admin HTTP listen address: /live, /ready, /metrics.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9990")]
    pub admin_addr: SocketAddr,
    /// Injector webhook HTTPS listen address (Kubernetes mode; not served yet).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8443")]
    pub webhook_addr: SocketAddr,
    /// The cluster's DNS domain, as in `name.ns.svc.<domain>`.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Log line format. The filter comes from STRAIT_LOG (e.g. `info`, `strait_controller=debug`).
    #[arg(long, value_enum, env = "STRAIT_LOG_FORMAT", default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

impl Args {
    /// The run configuration these flags ask for.
    pub fn config(&self) -> Result<Config, CliError> {
        if self.kubernetes {
            return Err(CliError::KubernetesNotBuilt);
        }
        let mesh_file = self.mesh_file.clone().ok_or(CliError::NoSource)?;
        Ok(Config {
            discovery_addr: self.discovery_addr,
            admin_addr: self.admin_addr,
            cluster_domain: self.cluster_domain.clone(),
            ..Config::embedded(mesh_file)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("strait-controller").chain(a.iter().copied()))
    }

    #[test]
    fn defaults_follow_the_design() {
        let a = args(&["--mesh-file", "mesh.yaml"]).unwrap();
        assert_eq!(a.discovery_addr, "0.0.0.0:8086".parse().unwrap());
        assert_eq!(a.identity_addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(a.admin_addr, "0.0.0.0:9990".parse().unwrap());
        assert_eq!(a.webhook_addr, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(a.cluster_domain, "cluster.local");
        let c = a.config().unwrap();
        assert_eq!(c.mesh_file, PathBuf::from("mesh.yaml"));
        assert_eq!(c.discovery_addr, "0.0.0.0:8086".parse().unwrap());
    }

    #[test]
    fn flags_override_defaults() {
        let a = args(&[
            "--mesh-file=m.yaml",
            "--discovery-addr=127.0.0.1:1",
            "--admin-addr=127.0.0.1:2",
            "--cluster-domain=corp.example",
            "--log-format=json",
            "--state-dir=/tmp/s",
        ])
        .unwrap();
        assert_eq!(a.log_format, LogFormat::Json);
        let c = a.config().unwrap();
        assert_eq!((c.discovery_addr.port(), c.admin_addr.port()), (1, 2));
        assert_eq!(c.cluster_domain, "corp.example");
    }

    #[test]
    fn kubernetes_mode_is_refused_clearly() {
        assert_eq!(args(&["--kubernetes"]).unwrap().config().unwrap_err(), CliError::KubernetesNotBuilt);
        assert_eq!(args(&[]).unwrap().config().unwrap_err(), CliError::NoSource);
        assert!(args(&["--kubernetes", "--mesh-file", "m"]).is_err());
        assert!(args(&["--mesh-file", "m", "--log-format", "xml"]).is_err());
    }
}
