//! The `strait-controller` command line (DESIGN §9).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

use crate::{
    CaSource, Config, IdentityConfig, discovery,
    identity::ca::IssuerFiles,
    k8s,
    logging::LogFormat,
    webhook::{self, WebhookConfig},
};

/// Set in every Kubernetes pod; where it is, Kubernetes mode is the default.
pub const IN_CLUSTER_ENV: &str = "KUBERNETES_SERVICE_HOST";

/// The state directory's name when `--state-dir` is not given: next to the mesh file.
pub const DEFAULT_STATE_DIR_NAME: &str = "strait-state";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("no mesh to serve: give --mesh-file FILE (embedded mode) or --kubernetes")]
    NoSource,
}

/// The Strait control plane: discovery for the proxies, from a mesh file or from Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "strait-controller", version)]
pub struct Args {
    /// Embedded mode: serve the mesh described in this YAML file, reloading it when it changes.
    #[arg(long, value_name = "FILE", conflicts_with = "kubernetes")]
    pub mesh_file: Option<PathBuf>,
    /// Where embedded mode keeps its state: the trust anchor and issuer it creates on first start
    /// (`trust-anchors.pem` there is what proxies trust). Default: `strait-state` in the mesh
    /// file's directory.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Kubernetes mode: watch the cluster's Services, EndpointSlices and Pods. The default when
    /// run in a pod without --mesh-file.
    #[arg(long)]
    pub kubernetes: bool,
    /// Kubernetes mode with this kubeconfig (its current context) instead of the in-cluster
    /// configuration.
    #[arg(long, value_name = "FILE", conflicts_with = "mesh_file")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes mode: the SPIFFE trust domain of the workloads' identities (a mesh file names
    /// its own).
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local", conflicts_with = "mesh_file")]
    pub trust_domain: String,
    /// Discovery gRPC listen address.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8086")]
    pub discovery_addr: SocketAddr,
    /// Identity gRPC listen address (`Identity.Certify`: proxies' certificates).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub identity_addr: SocketAddr,
    /// Trust anchors (PEM bundle) the issuer must chain to. With --issuer-cert and --issuer-key,
    /// these are used instead of the state directory's.
    #[arg(long, value_name = "FILE", requires_all = ["issuer_cert", "issuer_key"])]
    pub trust_anchors: Option<PathBuf>,
    /// The issuer's certificate (PEM; intermediates may follow it), re-read when it changes.
    #[arg(long, value_name = "FILE", requires_all = ["trust_anchors", "issuer_key"])]
    pub issuer_cert: Option<PathBuf>,
    /// The issuer's private key (PEM), re-read when it changes.
    #[arg(long, value_name = "FILE", requires_all = ["trust_anchors", "issuer_cert"])]
    pub issuer_key: Option<PathBuf>,
    /// Lifetime of the proxies' certificates, e.g. `24h`, `90m`, `1m`, `30s` (proxies renew at 70 %).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_lifetime)]
    pub cert_lifetime: Duration,
    /// The SPIFFE identity the identity service proves to proxies over TLS (its certificate comes
    /// from the same issuer); proxies expect it in STRAIT_IDENTITY_SERVER_ID. Default:
    /// `spiffe://<trust domain>/ns/strait-system/sa/strait-controller`.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub identity_server_id: Option<String>,
    /// Admin HTTP listen address: /live, /ready, /metrics.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9990")]
    pub admin_addr: SocketAddr,
    /// Injector webhook HTTPS listen address (Kubernetes mode, with --webhook-cert and --webhook-key).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8443")]
    pub webhook_addr: SocketAddr,
    /// Subscriptions one discovery stream (one proxy) may hold; past it the stream ends with
    /// RESOURCE_EXHAUSTED naming the cap, and the proxy backs off before it reconnects.
    #[arg(long, value_name = "N", default_value_t = discovery::DEFAULT_MAX_SUBSCRIPTIONS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_subscriptions: u64,
    /// The webhook's serving certificate (PEM; intermediates may follow), re-read when it changes.
    #[arg(long, value_name = "FILE", requires = "webhook_key")]
    pub webhook_cert: Option<PathBuf>,
    /// The webhook's private key (PEM: PKCS#8, SEC1 `EC PRIVATE KEY` or RSA), re-read when it changes.
    #[arg(long, value_name = "FILE", requires = "webhook_cert")]
    pub webhook_key: Option<PathBuf>,
    /// The injector's settings (YAML: proxy image, addresses, resources; the chart's ConfigMap).
    #[arg(long, value_name = "FILE")]
    pub injector_config: Option<PathBuf>,
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
        self.config_in(std::env::var_os(IN_CLUSTER_ENV).is_some())
    }

    /// [`Args::config`] for a process that runs in a pod (`in_pod`) or not.
    fn config_in(&self, in_pod: bool) -> Result<Config, CliError> {
        let kubernetes = self.kubernetes || self.kubeconfig.is_some() || (self.mesh_file.is_none() && in_pod);
        let base = if kubernetes {
            let options = k8s::Options { kubeconfig: self.kubeconfig.clone(), trust_domain: self.trust_domain.clone() };
            Config::kubernetes(options)
        } else {
            Config::embedded(self.mesh_file.clone().ok_or(CliError::NoSource)?)
        };
        let mesh_file = base.mesh_file.clone();
        let ca = match (&self.trust_anchors, &self.issuer_cert, &self.issuer_key) {
            (Some(anchors), Some(cert), Some(key)) => {
                CaSource::Files(IssuerFiles { cert: cert.clone(), key: key.clone(), anchors: Some(anchors.clone()) })
            }
            _ => CaSource::StateDir(self.state_dir.clone().unwrap_or_else(|| {
                mesh_file.parent().unwrap_or_else(|| std::path::Path::new("")).join(DEFAULT_STATE_DIR_NAME)
            })),
        };
        let identity = IdentityConfig {
            addr: self.identity_addr,
            ca,
            cert_lifetime: self.cert_lifetime,
            server_id: self.identity_server_id.clone(),
        };
        // In Kubernetes mode nothing is created in a pod's working directory: the issuer comes from
        // files (a Secret) or an explicit --state-dir, else identity is not served.
        let identity = (!kubernetes || matches!(identity.ca, CaSource::Files(_)) || self.state_dir.is_some())
            .then_some(identity);
        let webhook = match (&self.webhook_cert, &self.webhook_key) {
            (Some(cert), Some(key)) => Some(WebhookConfig {
                addr: self.webhook_addr,
                cert: cert.clone(),
                key: key.clone(),
                injector_config: self.injector_config.clone(),
                limits: webhook::server::Limits::default(),
                build: crate::WEBHOOK_MUTATOR,
            }),
            _ => None,
        };
        Ok(Config {
            webhook,
            discovery_addr: self.discovery_addr,
            admin_addr: self.admin_addr,
            cluster_domain: self.cluster_domain.clone(),
            identity,
            limits: discovery::Limits {
                max_subscriptions: usize::try_from(self.max_subscriptions).unwrap_or(usize::MAX),
                ..base.limits
            },
            ..base
        })
    }
}

/// `<n>s`, `<n>m`, `<n>h` or `<n>d`, at least one second.
fn parse_lifetime(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?} is not a duration like 24h, 90m or 30s"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err("a certificate lifetime must be at least 1s".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
        let identity = c.identity.unwrap();
        assert_eq!(identity.addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(identity.cert_lifetime, Duration::from_secs(24 * 3600));
        assert!(matches!(identity.ca, CaSource::StateDir(d) if d == Path::new("strait-state")));
        let c = args(&["--mesh-file", "/etc/strait/mesh.yaml"]).unwrap().config().unwrap();
        assert!(matches!(c.identity.unwrap().ca, CaSource::StateDir(d) if d == Path::new("/etc/strait/strait-state")));
    }

    #[test]
    fn identity_flags() {
        let c = args(&["--mesh-file=m.yaml", "--state-dir=/var/lib/strait", "--cert-lifetime=1m", "--identity-addr=127.0.0.1:3"])
            .unwrap()
            .config()
            .unwrap();
        let identity = c.identity.unwrap();
        assert_eq!((identity.addr.port(), identity.cert_lifetime), (3, Duration::from_secs(60)));
        assert!(matches!(identity.ca, CaSource::StateDir(d) if d == Path::new("/var/lib/strait")));
        let c = args(&["--mesh-file=m", "--trust-anchors=a.pem", "--issuer-cert=i.pem", "--issuer-key=k.pem"])
            .unwrap()
            .config()
            .unwrap();
        match c.identity.unwrap().ca {
            CaSource::Files(f) => {
                assert_eq!((f.cert, f.key, f.anchors), ("i.pem".into(), "k.pem".into(), Some("a.pem".into())));
            }
            other => panic!("{other:?}"),
        }
        // The three files go together; lifetimes need a unit and are never zero.
        assert!(args(&["--mesh-file=m", "--issuer-cert=i.pem", "--issuer-key=k.pem"]).is_err());
        assert!(args(&["--mesh-file=m", "--trust-anchors=a.pem"]).is_err());
        for bad in ["0s", "10", "1w", "h", "-1m"] {
            assert!(args(&["--mesh-file=m", "--cert-lifetime", bad]).is_err(), "{bad}");
        }
        assert_eq!(parse_lifetime("2d"), Ok(Duration::from_secs(2 * 86_400)));
        assert_eq!(parse_lifetime("90s"), Ok(Duration::from_secs(90)));
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
    fn kubernetes_mode() {
        let k = |a: &[&str], in_pod| args(a).unwrap().config_in(in_pod).unwrap().kubernetes;
        let options = k(&["--kubernetes"], false).unwrap();
        assert_eq!(options, k8s::Options { kubeconfig: None, trust_domain: "cluster.local".into() });
        let options = k(&["--kubeconfig=/k", "--trust-domain=example.org"], false).unwrap();
        assert_eq!(options, k8s::Options { kubeconfig: Some("/k".into()), trust_domain: "example.org".into() });
        // In a pod, Kubernetes mode is the default; a mesh file still wins.
        assert!(k(&[], true).is_some());
        assert!(k(&["--mesh-file=m"], true).is_none());
        // Identity is served in Kubernetes mode only with an issuer to sign with.
        assert!(args(&["--kubernetes"]).unwrap().config_in(false).unwrap().identity.is_none());
        assert!(args(&["--kubernetes", "--state-dir=/s"]).unwrap().config_in(false).unwrap().identity.is_some());

        assert_eq!(args(&[]).unwrap().config_in(false).unwrap_err(), CliError::NoSource);
        assert!(args(&["--kubernetes", "--mesh-file", "m"]).is_err());
        assert!(args(&["--kubeconfig", "k", "--mesh-file", "m"]).is_err());
        assert!(args(&["--mesh-file", "m", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn webhook_flags() {
        let c = args(&["--kubernetes"]).unwrap().config_in(false).unwrap();
        assert!(c.webhook.is_none(), "served only with a certificate");
        let c = args(&["--kubernetes", "--webhook-addr=127.0.0.1:4", "--webhook-cert=c.pem", "--webhook-key=k.pem", "--injector-config=i.yaml"])
            .unwrap()
            .config_in(false)
            .unwrap();
        let w = c.webhook.unwrap();
        assert_eq!((w.addr.port(), w.cert, w.key), (4, "c.pem".into(), "k.pem".into()));
        assert_eq!(w.injector_config, Some("i.yaml".into()));
        assert_eq!(w.limits, webhook::server::Limits::default());
        // The certificate and the key go together.
        assert!(args(&["--kubernetes", "--webhook-cert=c.pem"]).is_err());
        assert!(args(&["--kubernetes", "--webhook-key=k.pem"]).is_err());
    }
}
