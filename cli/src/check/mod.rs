//! `strait check`: is the mesh installed and healthy on this cluster, and if not, what to do.
//!
//! The checks come in groups, in the order a broken install is best debugged (nothing after an
//! unreachable API server is worth reading): kubernetes-api, rbac, controller, webhook, identity,
//! data-plane. Every check has a stable name, a status (ok, warn, fail), what it found and, when it
//! is not ok, a hint with the next step. `--pre` runs only what applies before `helm install`
//! (API, version, the installing user's rights). The exit code is 1 when any check fails, so CI and
//! scripts can gate on it; `--output json` is for them too (schema in [`output`]).
//!
//! It only reads (gets and lists, plus SelfSubjectAccessReviews, which change nothing), with the
//! user's kubeconfig, as kubectl would: `--kubeconfig`, else `KUBECONFIG`, else `~/.kube/config`,
//! else the in-cluster account.

mod certs;
mod cluster;
mod control_plane;
mod data_plane;
mod output;

use std::{path::PathBuf, time::Duration};

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::Serialize;

/// The oldest Kubernetes minor version Strait supports (the chart's `kubeVersion`).
pub const OLDEST_SUPPORTED_MINOR: u32 = 28;
/// An issuer, anchor or webhook certificate closer than this to its end is a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long to wait for the API server to accept a connection or to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(clap::Args)]
pub struct Args {
    /// The kubeconfig to use (default: KUBECONFIG, then ~/.kube/config, then the in-cluster account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The context of the kubeconfig to use (default: its current context).
    #[arg(long)]
    context: Option<String>,
    /// The namespace Strait is (or will be) installed in.
    #[arg(long, short = 'n', default_value = "strait-system")]
    namespace: String,
    /// Before `helm install`: only the API server, its version and the rights the install needs.
    #[arg(long)]
    pre: bool,
    /// The identity issuer Secret (the chart's `identity.issuer.existingSecret`, when set).
    #[arg(long, default_value = "strait-identity-issuer")]
    issuer_secret: String,
    /// `text` for people, `json` for scripts (groups[].checks[]{name,status,detail,hint}).
    #[arg(long, short = 'o', default_value = "text", value_parser = ["text", "json"])]
    output: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0} failed")]
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Stable: scripts and the docs refer to it.
    pub name: &'static str,
    pub status: Status,
    /// What was found, for people (not stable).
    pub detail: String,
    /// The next step when the status is not ok.
    pub hint: Option<String>,
}

impl Check {
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Check { name, status: Status::Ok, detail: detail.into(), hint: None }
    }

    pub fn warn(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Check { name, status: Status::Warn, detail: detail.into(), hint: Some(hint.into()) }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Check { name, status: Status::Fail, detail: detail.into(), hint: Some(hint.into()) }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub name: &'static str,
    pub checks: Vec<Check>,
}

/// What the checks share: the client and where Strait lives.
pub struct Ctx {
    pub client: Client,
    pub namespace: String,
    pub issuer_secret: String,
}

async fn client(a: &Args) -> Result<Client, String> {
    let options = KubeConfigOptions { context: a.context.clone(), ..Default::default() };
    let mut config = match &a.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
        None if a.context.is_some() => Config::from_kubeconfig(&options).await.map_err(|e| e.to_string())?,
        None => Config::infer().await.map_err(|e| e.to_string())?,
    };
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    Client::try_from(config).map_err(|e| e.to_string())
}

/// Runs every group that applies; a group whose prerequisite failed is left out (its checks
/// would only repeat the failure).
pub async fn checks(a: &Args) -> Vec<Group> {
    let client = match client(a).await {
        Ok(c) => c,
        Err(e) => {
            let check = Check::fail(
                "kubeconfig",
                e,
                "give --kubeconfig FILE, set KUBECONFIG, or write ~/.kube/config (kubectl config view shows what kubectl uses)",
            );
            return vec![Group { name: "kubernetes-api", checks: vec![check] }];
        }
    };
    let ctx = Ctx { client, namespace: a.namespace.clone(), issuer_secret: a.issuer_secret.clone() };
    let api = cluster::api(&ctx).await;
    let reachable = api.checks.first().is_some_and(|c| c.status != Status::Fail);
    let mut groups = vec![api];
    if !reachable {
        return groups;
    }
    if a.pre {
        groups.push(cluster::install_rights(&ctx).await);
        return groups;
    }
    groups.push(cluster::controller_rbac(&ctx).await);
    groups.push(control_plane::controller(&ctx).await);
    groups.push(control_plane::webhook(&ctx).await);
    groups.push(control_plane::identity(&ctx).await);
    groups.push(data_plane::pods(&ctx).await);
    groups
}

pub async fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let groups = checks(&a).await;
    let text = match a.output.as_str() {
        "json" => output::json(&groups)?,
        _ => output::text(&groups),
    };
    print!("{text}");
    let failed: Vec<&str> =
        groups.iter().flat_map(|g| &g.checks).filter(|c| c.status == Status::Fail).map(|c| c.name).collect();
    match failed.len() {
        0 => Ok(()),
        1 => Err(Box::new(CheckError::Failed(format!("check {}", failed[0])))),
        n => Err(Box::new(CheckError::Failed(format!("{n} checks ({})", failed.join(", "))))),
    }
}

/// A kube error as a check's detail, and whether it was a 403 (the user may not read it) or 404.
pub fn describe(e: &kube::Error) -> (String, Option<u16>) {
    match e {
        kube::Error::Api(status) => (format!("{} ({})", status.message, status.code), Some(status.code)),
        other => (other.to_string(), None),
    }
}

/// The hint for an object the checks could not read.
pub fn read_hint(code: Option<u16>, what: &str) -> String {
    match code {
        Some(403) => format!(
            "your user may not read {what}: ask for get/list rights on it, or run with a kubeconfig that has them"
        ),
        _ => format!(
            "the API server did not answer a read of {what}: try again, or look at `kubectl get --raw /readyz?verbose`"
        ),
    }
}
