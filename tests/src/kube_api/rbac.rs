//! `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`, answered from the ClusterRoles
//! and ClusterRoleBindings the test stored, with the RBAC authorizer's matching rules: a binding
//! applies to a `User` subject by name, a `Group` by one of the requester's groups and a
//! `ServiceAccount` by `system:serviceaccount:<ns>:<name>`; a rule allows when its apiGroups,
//! resources (`pods` or `pods/log`) and verbs contain the request's or `*`, and its resourceNames
//! (when given) contain the name. `system:masters` is allowed everything, as the API server's
//! authorizer does before RBAC. Namespaced Roles and RoleBindings are not there: a test that needs
//! rights in one namespace grants them cluster-wide.

use serde_json::{Value, json};

/// Who the test server says is asking (it has no authentication: every request is this user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    pub username: String,
    pub groups: Vec<String>,
}

impl Default for Requester {
    /// A user with no rights until a ClusterRoleBinding names it or one of its groups.
    fn default() -> Self {
        Requester { username: "test-user".to_string(), groups: vec!["system:authenticated".to_string()] }
    }
}

/// What a review asks: `resourceAttributes` of the spec.
#[derive(Debug, Default)]
struct Attributes<'a> {
    verb: &'a str,
    group: &'a str,
    resource: &'a str,
    subresource: &'a str,
    name: &'a str,
}

fn contains(list: &Value, wanted: &str) -> bool {
    list.as_array().is_some_and(|l| l.iter().any(|v| v == "*" || v == wanted))
}

fn subject_matches(subject: &Value, who: &Requester) -> bool {
    let name = subject["name"].as_str().unwrap_or("");
    match subject["kind"].as_str() {
        Some("User") => who.username == name,
        Some("Group") => who.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            who.username == format!("system:serviceaccount:{}:{name}", subject["namespace"].as_str().unwrap_or(""))
        }
        _ => false,
    }
}

fn rule_allows(rule: &Value, a: &Attributes<'_>) -> bool {
    let resource =
        if a.subresource.is_empty() { a.resource.to_string() } else { format!("{}/{}", a.resource, a.subresource) };
    let names_ok = match rule["resourceNames"].as_array() {
        Some(names) if !names.is_empty() => !a.name.is_empty() && names.iter().any(|n| n == a.name),
        _ => true,
    };
    contains(&rule["apiGroups"], a.group)
        && contains(&rule["resources"], &resource)
        && contains(&rule["verbs"], a.verb)
        && names_ok
}

/// Answers a SelfSubjectAccessReview request body for `who`; `Err` is a bad request.
pub fn review(who: &Requester, roles: &[Value], bindings: &[Value], request: &Value) -> Result<Value, String> {
    if request["kind"] != "SelfSubjectAccessReview" || request["apiVersion"] != "authorization.k8s.io/v1" {
        return Err("the body is not an authorization.k8s.io/v1 SelfSubjectAccessReview".into());
    }
    let spec = &request["spec"];
    let status = if spec["nonResourceAttributes"].is_object() {
        json!({"allowed": false, "reason": "non-resource URLs are not authorized by the test server"})
    } else {
        let ra = &spec["resourceAttributes"];
        let a = Attributes {
            verb: ra["verb"].as_str().filter(|v| !v.is_empty()).ok_or("spec.resourceAttributes.verb is required")?,
            group: ra["group"].as_str().unwrap_or(""),
            resource: ra["resource"].as_str().unwrap_or(""),
            subresource: ra["subresource"].as_str().unwrap_or(""),
            name: ra["name"].as_str().unwrap_or(""),
        };
        if who.groups.iter().any(|g| g == "system:masters") {
            json!({"allowed": true, "reason": "system:masters"})
        } else {
            let by = bindings.iter().find(|b| {
                let subjects = b["subjects"].as_array().map(Vec::as_slice).unwrap_or_default();
                subjects.iter().any(|s| subject_matches(s, who))
                    && b["roleRef"]["kind"] == "ClusterRole"
                    && roles.iter().any(|r| {
                        r["metadata"]["name"] == b["roleRef"]["name"]
                            && r["rules"].as_array().is_some_and(|rules| rules.iter().any(|rule| rule_allows(rule, &a)))
                    })
            });
            match by {
                Some(b) => json!({
                    "allowed": true,
                    "reason": format!("RBAC: allowed by ClusterRoleBinding \"{}\"", b["metadata"]["name"].as_str().unwrap_or("")),
                }),
                None => json!({"allowed": false, "reason": ""}),
            }
        }
    };
    let mut answer = request.clone();
    answer["metadata"] = json!({"creationTimestamp": null});
    answer["status"] = status;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(verb: &str, group: &str, resource: &str) -> Value {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
               "spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": resource}}})
    }

    #[test]
    fn reviews_follow_the_stored_rbac() {
        let roles = [json!({"metadata": {"name": "r"}, "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
            {"apiGroups": ["apps"], "resources": ["*"], "verbs": ["*"]},
        ]})];
        let bindings = [json!({"metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": "r"},
                               "subjects": [{"kind": "Group", "name": "devs"}]})];
        let dev = Requester { username: "ann".into(), groups: vec!["devs".into()] };
        let allowed = |who: &Requester, v, g, r| {
            review(who, &roles, &bindings, &ask(v, g, r)).unwrap()["status"]["allowed"] == true
        };
        assert!(allowed(&dev, "list", "", "pods"));
        assert!(!allowed(&dev, "create", "", "pods"));
        assert!(allowed(&dev, "create", "apps", "deployments"));
        assert!(!allowed(&dev, "list", "", "secrets"));
        assert!(!allowed(&Requester::default(), "list", "", "pods"), "no binding names the default user");
        let admin = Requester { username: "root".into(), groups: vec!["system:masters".into()] };
        assert!(allowed(&admin, "delete", "", "nodes"));
        assert!(review(&dev, &roles, &bindings, &json!({"kind": "Pod"})).is_err());
    }
}
