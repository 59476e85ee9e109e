//! `POST /apis/authentication.k8s.io/v1/tokenreviews`, answered from a table of tokens the test
//! registers, with the API server's audience rules.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Who a token authenticates, as the API server reports it in `status.user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUser {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    /// The audiences the token was issued for (a projected token's `audience`).
    pub audiences: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl TokenUser {
    /// A bound, projected ServiceAccount token of a pod, as the kubelet mounts it: username
    /// `system:serviceaccount:<ns>:<sa>`, the service-account groups, and the pod's name and uid in
    /// `extra` (`authentication.kubernetes.io/pod-name`, `…/pod-uid`).
    pub fn service_account(namespace: &str, service_account: &str, audience: &str, pod: Option<(&str, &str)>) -> Self {
        let mut extra = BTreeMap::new();
        if let Some((name, uid)) = pod {
            extra.insert("authentication.kubernetes.io/pod-name".to_string(), vec![name.to_string()]);
            extra.insert("authentication.kubernetes.io/pod-uid".to_string(), vec![uid.to_string()]);
        }
        Self {
            username: format!("system:serviceaccount:{namespace}:{service_account}"),
            uid: format!("uid-of-{namespace}-{service_account}"),
            groups: vec![
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_string(),
            ],
            audiences: vec![audience.to_string()],
            extra,
        }
    }
}

/// The audiences the API server itself accepts when a review names none.
pub const API_SERVER_AUDIENCES: [&str; 1] = ["https://kubernetes.default.svc.cluster.local"];

/// Answers a TokenReview request body; `Err` is a bad request.
pub fn review(tokens: &BTreeMap<String, TokenUser>, request: &Value) -> Result<Value, String> {
    if request["kind"] != "TokenReview" || request["apiVersion"] != "authentication.k8s.io/v1" {
        return Err("the body is not an authentication.k8s.io/v1 TokenReview".into());
    }
    let token = request["spec"]["token"].as_str().filter(|t| !t.is_empty()).ok_or("spec.token is required")?;
    let wanted: Vec<String> = match request["spec"]["audiences"].as_array() {
        Some(a) if !a.is_empty() => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
        _ => API_SERVER_AUDIENCES.iter().map(|s| s.to_string()).collect(),
    };
    let status = match tokens.get(token) {
        None => json!({"authenticated": false, "error": "[invalid bearer token, token lookup failed]", "user": {}}),
        Some(user) => {
            let matched: Vec<&String> = wanted.iter().filter(|a| user.audiences.contains(a)).collect();
            if matched.is_empty() {
                json!({
                    "authenticated": false,
                    "error": format!("[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]", user.audiences, wanted),
                    "user": {},
                })
            } else {
                json!({
                    "authenticated": true,
                    "user": {"username": user.username, "uid": user.uid, "groups": user.groups, "extra": user.extra},
                    "audiences": matched,
                })
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

    fn request(token: &str, audiences: &[&str]) -> Value {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token, "audiences": audiences}})
    }

    #[test]
    fn reviews() {
        let tokens = BTreeMap::from([(
            "t1".to_string(),
            TokenUser::service_account("demo", "web", "identity.strait.io", Some(("web-0", "u-1"))),
        )]);
        let ok = review(&tokens, &request("t1", &["identity.strait.io"])).unwrap();
        assert_eq!(ok["status"]["authenticated"], true);
        assert_eq!(ok["status"]["user"]["username"], "system:serviceaccount:demo:web");
        assert_eq!(ok["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"][0], "web-0");
        assert_eq!(ok["status"]["audiences"], json!(["identity.strait.io"]));

        let other_audience = review(&tokens, &request("t1", &["vault"])).unwrap();
        assert_eq!(other_audience["status"]["authenticated"], false);
        assert!(other_audience["status"]["error"].as_str().unwrap().contains("audiences"));
        let no_audience = review(&tokens, &request("t1", &[])).unwrap();
        assert_eq!(no_audience["status"]["authenticated"], false, "the API server's own audience is not the token's");
        let unknown = review(&tokens, &request("nope", &["identity.strait.io"])).unwrap();
        assert_eq!(unknown["status"]["authenticated"], false);
        assert!(review(&tokens, &json!({"kind": "Pod"})).is_err());
        assert!(review(&tokens, &request("", &[])).is_err());
    }
}
