//! `strait inject` and `strait uninject`: the injector's own code (the controller's `inject`
//! module, the same the admission webhook runs) on manifest files, for GitOps pipelines and for
//! clusters without the webhook. Reads a file or stdin, writes stdout; one line per workload on
//! stderr (injected, or skipped and why, and every ignored annotation).

use std::{io::Read, path::PathBuf};

use strait_controller::inject::{self, Context, InjectorConfig, manifest};

#[derive(clap::Args)]
pub struct InjectArgs {
    /// The manifests (multi-document YAML), or `-` for stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE|-")]
    file: String,
    /// The injector configuration (the chart's `strait-injector` ConfigMap's config.yaml);
    /// default: image strait-proxy:<version>, controller strait-controller.strait-system.svc.
    #[arg(long, value_name = "FILE")]
    injector_config: Option<PathBuf>,
    /// PEM of the trust anchors the proxies check peers against (the chart's `strait-identity-issuer`
    /// Secret's ca.crt). Without it STRAIT_TRUST_ANCHORS_PEM is empty and the proxies get no identity.
    #[arg(long, value_name = "FILE")]
    trust_anchors: Option<PathBuf>,
    /// The cluster's Kubernetes version: 1.29 or later gets a native sidecar, older a classic one.
    #[arg(long, value_name = "X.Y", default_value = "1.31")]
    kubernetes_version: String,
    /// Inject workloads even without `strait.io/inject: enabled` (the annotation is added).
    #[arg(long)]
    enable: bool,
}

#[derive(clap::Args)]
pub struct UninjectArgs {
    /// The manifests (multi-document YAML), or `-` for stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE|-")]
    file: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: {1}")]
    Config(String, inject::ConfigError),
    #[error("--kubernetes-version {0:?} is not a version such as 1.31")]
    Version(String),
    #[error("{0}")]
    Manifest(#[from] inject::ManifestError),
    #[error("writing the manifests: {0}")]
    Write(std::io::Error),
}

fn read(file: &str) -> Result<Vec<u8>, InjectError> {
    if file == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).map_err(|e| InjectError::Read("stdin".into(), e))?;
        Ok(buf)
    } else {
        std::fs::read(file).map_err(|e| InjectError::Read(file.into(), e))
    }
}

fn write(out: &str, report: &[String]) -> Result<(), InjectError> {
    use std::io::Write;
    for line in report {
        eprintln!("{line}");
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush()).map_err(InjectError::Write)
}

pub fn run_inject(a: InjectArgs) -> Result<(), InjectError> {
    let config = match &a.injector_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| InjectError::Read(path.display().to_string(), e))?;
            InjectorConfig::from_yaml(&text).map_err(|e| InjectError::Config(path.display().to_string(), e))?
        }
        None => InjectorConfig::default(),
    };
    let anchors = match &a.trust_anchors {
        Some(path) => std::fs::read_to_string(path).map_err(|e| InjectError::Read(path.display().to_string(), e))?,
        None => String::new(),
    };
    let version = inject::parse_kubernetes_version(&a.kubernetes_version)
        .ok_or_else(|| InjectError::Version(a.kubernetes_version.clone()))?;
    let input = read(&a.file)?;
    let ctx = Context {
        config: &config,
        trust_anchors_pem: &anchors,
        namespace: "default",
        namespace_annotations: None,
        native_sidecars: inject::native_sidecars_supported(version),
    };
    let (out, mut report) = manifest::process(&input, manifest::Mode::Inject { ctx, enable: a.enable })?;
    if a.trust_anchors.is_none() && report.iter().any(|l| l.ends_with(" injected")) {
        report
            .push("warning: no --trust-anchors: the injected proxies have no trust anchors and get no identity".into());
    }
    write(&out, &report)
}

pub fn run_uninject(a: UninjectArgs) -> Result<(), InjectError> {
    let input = read(&a.file)?;
    let (out, report) = manifest::process(&input, manifest::Mode::Uninject)?;
    write(&out, &report)
}
