//! Kubernetes mode: a proxy proves its identity with its pod's projected ServiceAccount token
//! (audience [`AUDIENCE`]), which the controller hands to the API server in a TokenReview
//! (`POST /apis/authentication.k8s.io/v1/tokenreviews`, RBAC: `create` on `tokenreviews`).
//!
//! - Authenticated for the audience: the token proves the user `system:serviceaccount:<ns>:<sa>`;
//!   the identity service then signs only that namespace and service account.
//! - Authenticated, but the API server does not list [`AUDIENCE`] in `status.audiences`: the token
//!   is good for another audience only (the API server's own, such as a legacy Secret token), or the
//!   authenticator ignores audiences. Not a proof.
//! - Authenticated as a user that is not a service account: denied.
//! - A token bound to a pod (the kubelet's projected tokens are) presented by a proxy that names
//!   another workload: denied.
//! - Not authenticated (unknown, expired, revoked or wrong-audience token, deleted pod): refused.
//! - The API cannot answer (unreachable, 5xx, 403 without RBAC rights, timeout): unavailable, so the
//!   proxy retries and nobody mistakes it for a bad token.
//!
//! The token itself is never logged, and never part of an error message (the API server's
//! messages are scrubbed of it in case one ever quotes it).

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::{Api, Client, api::PostParams};

use super::auth::{AuthError, Authenticator, Principal, Proof};

/// The audience proxies' tokens are projected for (DESIGN §4).
pub const AUDIENCE: &str = "identity.strait.io";

/// How long one TokenReview may take before the request is answered `Unavailable`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A JWT of a projected token is about 1 KiB; anything much bigger is not one, and is not sent on.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The API server's extra field naming the pod a bound token belongs to.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

pub struct TokenReviewAuthenticator {
    api: Api<TokenReview>,
    audience: String,
    timeout: Duration,
}

impl TokenReviewAuthenticator {
    pub fn new(client: Client) -> Self {
        Self { api: Api::all(client), audience: AUDIENCE.to_string(), timeout: DEFAULT_TIMEOUT }
    }

    /// Another audience or timeout (tests).
    pub fn with(client: Client, audience: &str, timeout: Duration) -> Self {
        Self { api: Api::all(client), audience: audience.to_string(), timeout }
    }
}

#[tonic::async_trait]
impl Authenticator for TokenReviewAuthenticator {
    async fn authenticate(&self, proof: &Proof<'_>) -> Result<Principal, AuthError> {
        let token = proof.token.trim();
        if token.is_empty() {
            return Err(AuthError::Unauthenticated(
                "no token presented (STRAIT_IDENTITY_TOKEN_FILE: the pod's projected ServiceAccount token with audience identity.strait.io)".into(),
            ));
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Unauthenticated(format!("the token presented is {} bytes; not a ServiceAccount token", token.len())));
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_string(), audiences: Some(vec![self.audience.clone()]) },
            ..TokenReview::default()
        };
        let answer = match tokio::time::timeout(self.timeout, self.api.create(&PostParams::default(), &review)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(scrub(api_error(&e), token)),
            Err(_) => {
                return Err(AuthError::Unavailable(format!("the Kubernetes API did not answer the TokenReview within {:?}", self.timeout)));
            }
        };
        let status = answer.status.unwrap_or_default();
        let result = judge(&status, &self.audience)
            .and_then(|p| same_pod(&status, &p, proof.workload).map(|()| p))
            .map_err(|e| scrub(e, token));
        match &result {
            Ok(p) => tracing::debug!(
                namespace = %p.namespace,
                service_account = %p.service_account,
                pod = pod_name(&status).unwrap_or(""),
                workload = proof.workload,
                "TokenReview: authenticated"
            ),
            Err(e) => tracing::debug!(error = %e, workload = proof.workload, "TokenReview: not a proof"),
        }
        result
    }
}

/// What a TokenReview's status proves.
pub fn judge(status: &TokenReviewStatus, audience: &str) -> Result<Principal, AuthError> {
    if status.authenticated != Some(true) {
        let why = status.error.as_deref().filter(|e| !e.is_empty()).unwrap_or("no reason given");
        return Err(AuthError::Unauthenticated(format!("the Kubernetes API did not authenticate the token: {why}")));
    }
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(AuthError::Unauthenticated(format!(
            "the token is not valid for the audience {audience} (the API server accepted it for {audiences:?}); \
             mount a projected ServiceAccount token with audience {audience}"
        )));
    }
    let username = status.user.as_ref().and_then(|u| u.username.as_deref()).unwrap_or_default();
    match service_account(username) {
        Some((namespace, service_account)) => {
            Ok(Principal { namespace: namespace.to_string(), service_account: service_account.to_string() })
        }
        None => Err(AuthError::Denied(format!("the token authenticates {username:?}, which is not a ServiceAccount"))),
    }
}

/// A token bound to a pod proves only that pod: a proxy naming another workload (`STRAIT_WORKLOAD`)
/// is not the pod the token was mounted in, so it is refused even though the service account
/// matches. A token bound to no pod, or a proxy that names no workload, is not checked here.
fn same_pod(status: &TokenReviewStatus, principal: &Principal, workload: &str) -> Result<(), AuthError> {
    match pod_name(status) {
        Some(pod) if !workload.is_empty() && pod != workload => Err(AuthError::Denied(format!(
            "the token belongs to pod {}/{pod}, not to the workload {workload} the proxy names (STRAIT_WORKLOAD)",
            principal.namespace
        ))),
        _ => Ok(()),
    }
}

/// `system:serviceaccount:<namespace>:<name>` → (namespace, name).
fn service_account(username: &str) -> Option<(&str, &str)> {
    let (namespace, name) = username.strip_prefix(SERVICE_ACCOUNT_PREFIX)?.split_once(':')?;
    let valid = |s: &str| !s.is_empty() && !s.contains(':');
    (valid(namespace) && valid(name)).then_some((namespace, name))
}

fn pod_name(status: &TokenReviewStatus) -> Option<&str> {
    status.user.as_ref()?.extra.as_ref()?.get(POD_NAME_EXTRA)?.first().map(String::as_str)
}

/// A failed TokenReview call: the proof cannot be checked now, whatever the reason.
fn api_error(e: &kube::Error) -> AuthError {
    let message = match e {
        kube::Error::Api(s) if s.code == 401 || s.code == 403 => format!(
            "the Kubernetes API refused the controller's TokenReview ({} {}): it needs `create` on tokenreviews.authentication.k8s.io (RBAC)",
            s.code, s.message
        ),
        kube::Error::Api(s) => format!("the Kubernetes API answered the TokenReview with {} {}: {}", s.code, s.reason, s.message),
        e => format!("the TokenReview could not be sent to the Kubernetes API: {e}"),
    };
    AuthError::Unavailable(message)
}

/// Removes the token from a message, should the API server ever quote it.
fn scrub(e: AuthError, token: &str) -> AuthError {
    let clean = |m: String| if m.contains(token) { m.replace(token, "<token>") } else { m };
    match e {
        AuthError::Unauthenticated(m) => AuthError::Unauthenticated(clean(m)),
        AuthError::Denied(m) => AuthError::Denied(clean(m)),
        AuthError::Unavailable(m) => AuthError::Unavailable(clean(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(authenticated: bool, username: &str, audiences: &[&str], error: Option<&str>) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            error: error.map(String::from),
            user: Some(UserInfo { username: Some(username.into()), ..UserInfo::default() }),
        }
    }

    #[test]
    fn an_authenticated_service_account_token_for_the_audience_proves_its_account() {
        let s = status(true, "system:serviceaccount:demo:client-sa", &[AUDIENCE], None);
        assert_eq!(judge(&s, AUDIENCE), Ok(Principal { namespace: "demo".into(), service_account: "client-sa".into() }));
    }

    #[test]
    fn anything_else_is_no_proof() {
        let unauthenticated = |s: &TokenReviewStatus, why: &str| match judge(s, AUDIENCE) {
            Err(AuthError::Unauthenticated(m)) => assert!(m.contains(why), "{m}"),
            other => panic!("{s:?}: {other:?}"),
        };
        unauthenticated(
            &status(false, "", &[], Some("[invalid bearer token, token lookup failed]")),
            "did not authenticate the token: [invalid bearer token",
        );
        unauthenticated(&TokenReviewStatus::default(), "no reason given");
        // Authenticated, but not for our audience: the API server's own (a legacy token), or an
        // authenticator that ignores audiences and returns none.
        let sa = "system:serviceaccount:demo:client-sa";
        unauthenticated(&status(true, sa, &["https://kubernetes.default.svc.cluster.local"], None), "not valid for the audience");
        unauthenticated(&status(true, sa, &[], None), "not valid for the audience");
        unauthenticated(&TokenReviewStatus { audiences: None, ..status(true, sa, &[], None) }, "not valid for the audience");

        for user in ["alice", "system:node:node-a", "system:serviceaccount:demo", "system:serviceaccount::sa", "system:serviceaccount:demo:", "system:serviceaccount:a:b:c", ""] {
            match judge(&status(true, user, &[AUDIENCE], None), AUDIENCE) {
                Err(AuthError::Denied(m)) => assert!(m.contains("not a ServiceAccount"), "{m}"),
                other => panic!("{user:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn api_failures_are_unavailable_and_never_carry_the_token() {
        let api = |code: u16, reason: &str| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                reason: reason.into(),
                message: "tokenreviews.authentication.k8s.io is forbidden".into(),
                ..Default::default()
            }))
        };
        match api_error(&api(403, "Forbidden")) {
            AuthError::Unavailable(m) => assert!(m.contains("RBAC") && m.contains("403"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(api_error(&api(503, "ServiceUnavailable")), AuthError::Unavailable(m) if m.contains("503")));
        let quoted = AuthError::Unauthenticated("token eyJhbGciOi.secret is expired".into());
        assert_eq!(scrub(quoted, "eyJhbGciOi.secret"), AuthError::Unauthenticated("token <token> is expired".into()));
    }
}
