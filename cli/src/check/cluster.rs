//! The cluster itself: is the API server there and new enough, may this user install Strait
//! (`--pre`), and does the controller have the rights the chart gives it.

use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule},
};
use kube::{Api, api::PostParams};

use super::{Check, Ctx, Group, OLDEST_SUPPORTED_MINOR, describe, read_hint};

/// `api-reachable` and `api-version`.
pub async fn api(ctx: &Ctx) -> Group {
    let mut checks = Vec::new();
    match ctx.client.apiserver_version().await {
        Err(e) => checks.push(Check::fail(
            "api-reachable",
            describe(&e).0,
            "check that the cluster is up and that the kubeconfig's server, credentials and context are right \
             (kubectl cluster-info uses the same)",
        )),
        Ok(info) => {
            checks.push(Check::ok("api-reachable", format!("Kubernetes {}", info.git_version)));
            checks.push(version_check(&info.major, &info.minor));
        }
    }
    Group { name: "kubernetes-api", checks }
}

/// The minor version as a number: `"28"`, or `"28+"` as some providers write it.
fn minor_number(minor: &str) -> Option<u32> {
    let digits: String = minor.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn version_check(major: &str, minor: &str) -> Check {
    let name = "api-version";
    match (major, minor_number(minor)) {
        ("1", Some(m)) if m >= OLDEST_SUPPORTED_MINOR => {
            Check::ok(name, format!("1.{m} (1.{OLDEST_SUPPORTED_MINOR} or newer)"))
        }
        ("1", Some(m)) => Check::fail(
            name,
            format!("1.{m} is older than 1.{OLDEST_SUPPORTED_MINOR}"),
            format!("Strait supports Kubernetes 1.{OLDEST_SUPPORTED_MINOR} and newer: upgrade the cluster"),
        ),
        _ => Check::warn(
            name,
            format!("the API server says version {major:?}.{minor:?}, which is not a number"),
            format!("make sure the cluster runs Kubernetes 1.{OLDEST_SUPPORTED_MINOR} or newer"),
        ),
    }
}

/// One right: verb, API group, resource, and whether it is namespaced (then asked in the release
/// namespace).
type Right = (&'static str, &'static str, &'static str, bool);

/// What `helm install charts/strait` creates, and the rights the controller's ClusterRole grants
/// (RBAC lets a user grant only rights it holds).
const INSTALL_RIGHTS: &[Right] = &[
    ("create", "rbac.authorization.k8s.io", "clusterroles", false),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings", false),
    ("create", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", false),
    ("create", "apps", "deployments", true),
    ("create", "", "services", true),
    ("create", "", "serviceaccounts", true),
    ("create", "", "secrets", true),
    ("create", "", "configmaps", true),
    ("create", "policy", "poddisruptionbudgets", true),
    ("list", "", "services", false),
    ("watch", "", "services", false),
    ("list", "", "pods", false),
    ("watch", "", "pods", false),
    ("list", "", "namespaces", false),
    ("watch", "", "namespaces", false),
    ("list", "discovery.k8s.io", "endpointslices", false),
    ("watch", "discovery.k8s.io", "endpointslices", false),
    ("create", "authentication.k8s.io", "tokenreviews", false),
    ("create", "events.k8s.io", "events", false),
];

fn right_text((verb, group, resource, namespaced): &Right, namespace: &str) -> String {
    let group = if group.is_empty() { String::new() } else { format!(".{group}") };
    let scope = if *namespaced { format!(" in {namespace}") } else { String::new() };
    format!("{verb} {resource}{group}{scope}")
}

/// `--pre`: `install-rights`, from SelfSubjectAccessReviews.
pub async fn install_rights(ctx: &Ctx) -> Group {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(ctx.client.clone());
    let mut missing = Vec::new();
    let mut errors = Vec::new();
    for right in INSTALL_RIGHTS {
        let (verb, group, resource, namespaced) = *right;
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.to_string()),
                    group: Some(group.to_string()),
                    resource: Some(resource.to_string()),
                    namespace: namespaced.then(|| ctx.namespace.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        match reviews.create(&PostParams::default(), &review).await {
            Ok(answer) if answer.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(_) => missing.push(right_text(right, &ctx.namespace)),
            Err(e) => errors.push(format!("{}: {}", right_text(right, &ctx.namespace), describe(&e).0)),
        }
    }
    let name = "install-rights";
    let check = if !errors.is_empty() {
        Check::fail(name, errors.join("; "), "the API server did not answer SelfSubjectAccessReviews: try again")
    } else if missing.is_empty() {
        Check::ok(name, format!("{} rights the install needs, all granted", INSTALL_RIGHTS.len()))
    } else {
        Check::fail(
            name,
            format!("not allowed: {}", missing.join(", ")),
            "installing Strait needs these rights (cluster-admin has them): ask a cluster admin to install it, \
             or to bind you a role that grants them",
        )
    };
    Group { name: "rbac", checks: vec![check] }
}

/// What the controller must be allowed, cluster-wide: (API group, resource, verbs).
const CONTROLLER_NEEDS: &[(&str, &str, &[&str])] = &[
    ("", "services", &["list", "watch"]),
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
    ("", "pods", &["list", "watch"]),
    ("", "namespaces", &["list", "watch"]),
    ("authentication.k8s.io", "tokenreviews", &["create"]),
];

fn matches(list: &[String], wanted: &str) -> bool {
    list.iter().any(|v| v == "*" || v == wanted)
}

fn allows(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.api_groups.as_deref().is_some_and(|g| matches(g, group))
            && r.resources.as_deref().is_some_and(|res| matches(res, resource))
            && matches(&r.verbs, verb)
            && r.resource_names.as_ref().is_none_or(|n| n.is_empty())
    })
}

/// `controller-cluster-role` and `controller-cluster-role-binding`: the chart's RBAC is there and
/// gives the controller's ServiceAccount what its watchers and TokenReviews need.
pub async fn controller_rbac(ctx: &Ctx) -> Group {
    let ns = &ctx.namespace;
    let name = format!("strait-controller-{ns}");
    let reinstall = format!(
        "the chart creates it: helm upgrade --install strait charts/strait -n {ns} (or kubectl apply the chart's rbac.yaml); \
         without it the controller cannot watch the cluster or check proxies' tokens"
    );
    let mut checks = Vec::new();
    let roles: Api<ClusterRole> = Api::all(ctx.client.clone());
    checks.push(match roles.get_opt(&name).await {
        Err(e) => {
            let (detail, code) = describe(&e);
            Check::fail("controller-cluster-role", detail, read_hint(code, "ClusterRoles"))
        }
        Ok(None) => Check::fail("controller-cluster-role", format!("ClusterRole {name} not found"), reinstall.clone()),
        Ok(Some(role)) => {
            let rules = role.rules.unwrap_or_default();
            let missing: Vec<String> = CONTROLLER_NEEDS
                .iter()
                .flat_map(|(group, resource, verbs)| verbs.iter().map(move |v| (*group, *resource, *v)))
                .filter(|(g, r, v)| !allows(&rules, g, r, v))
                .map(|(g, r, v)| if g.is_empty() { format!("{v} {r}") } else { format!("{v} {r}.{g}") })
                .collect();
            if missing.is_empty() {
                Check::ok("controller-cluster-role", format!("ClusterRole {name} grants what the controller needs"))
            } else {
                Check::fail(
                    "controller-cluster-role",
                    format!("ClusterRole {name} does not grant: {}", missing.join(", ")),
                    reinstall.clone(),
                )
            }
        }
    });
    let bindings: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
    checks.push(match bindings.get_opt(&name).await {
        Err(e) => {
            let (detail, code) = describe(&e);
            Check::fail("controller-cluster-role-binding", detail, read_hint(code, "ClusterRoleBindings"))
        }
        Ok(None) => Check::fail(
            "controller-cluster-role-binding",
            format!("ClusterRoleBinding {name} not found"),
            reinstall.clone(),
        ),
        Ok(Some(b)) => {
            let binds_sa = b.subjects.unwrap_or_default().iter().any(|s| {
                s.kind == "ServiceAccount"
                    && s.name == "strait-controller"
                    && s.namespace.as_deref() == Some(ns.as_str())
            });
            if b.role_ref.kind != "ClusterRole" || b.role_ref.name != name {
                Check::fail(
                    "controller-cluster-role-binding",
                    format!(
                        "ClusterRoleBinding {name} binds {} {}, not ClusterRole {name}",
                        b.role_ref.kind, b.role_ref.name
                    ),
                    reinstall,
                )
            } else if !binds_sa {
                Check::fail(
                    "controller-cluster-role-binding",
                    format!("ClusterRoleBinding {name} does not name ServiceAccount {ns}/strait-controller"),
                    reinstall,
                )
            } else {
                Check::ok(
                    "controller-cluster-role-binding",
                    format!("binds {name} to ServiceAccount {ns}/strait-controller"),
                )
            }
        }
    });
    Group { name: "rbac", checks }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Status;

    #[test]
    fn versions() {
        assert_eq!(version_check("1", "28").status, Status::Ok);
        assert_eq!(version_check("1", "31+").status, Status::Ok);
        assert_eq!(version_check("1", "27").status, Status::Fail);
        assert_eq!(version_check("1", "").status, Status::Warn);
    }

    #[test]
    fn rules() {
        let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| PolicyRule {
            api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
            resources: Some(resources.iter().map(|s| s.to_string()).collect()),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let rules = [rule(&[""], &["pods", "services"], &["list", "watch"]), rule(&["*"], &["tokenreviews"], &["*"])];
        assert!(allows(&rules, "", "pods", "watch"));
        assert!(!allows(&rules, "", "pods", "create"));
        assert!(allows(&rules, "authentication.k8s.io", "tokenreviews", "create"));
        assert!(!allows(&rules, "discovery.k8s.io", "endpointslices", "list"));
    }
}
