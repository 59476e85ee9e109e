//! AdmissionReview v1: reading a review, deciding it and writing the answer.
//!
//! The request is read leniently, field by field from JSON, so that whatever is wrong with it the
//! uid can still be echoed and the pod allowed: the API server matches answers by uid, and an
//! answer it cannot match is a webhook failure (which, under `failurePolicy: Fail`, blocks the
//! pod). Only a body that carries no uid at all (not JSON, not a review) gets an HTTP error.
//!
//! The patch is `json_patch::diff` of the Pod as received and the Pod the mutator returns, so it
//! applies exactly to what the API server holds and is empty when nothing changed.

use std::{collections::BTreeMap, panic::AssertUnwindSafe};

use base64::Engine;
use serde::Serialize;
use serde_json::Value;

use super::{Mutation, Mutator};

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";
/// Prefixed to every warning, so a user knows where it comes from.
pub const WARNING_PREFIX: &str = "strait injector: ";
/// Kubernetes truncates longer warnings; keep ours whole by cutting them here, at a character.
pub const MAX_WARNING_LEN: usize = 256;
/// Warnings past this many are dropped (a review answers one Pod; more is noise).
pub const MAX_WARNINGS: usize = 8;

/// How a review went, as counted in `strait_webhook_reviews_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewResult {
    /// A non-empty patch was sent.
    Injected,
    /// The Pod was understood and left as it is.
    Unchanged,
    /// Bad input, a mutator that panicked or missed its deadline: allowed without a patch.
    Error,
}

impl ReviewResult {
    pub const ALL: [ReviewResult; 3] = [Self::Injected, Self::Unchanged, Self::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Unchanged => "unchanged",
            Self::Error => "error",
        }
    }
}

/// A body that is not an AdmissionReview at all (no uid to answer to).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an AdmissionReview: {0}")]
pub struct NotAReview(pub String);

/// A review, as far as it could be read.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub uid: String,
    /// Echoed in the answer (`admission.k8s.io/v1`, or `v1beta1` whose answer has the same shape).
    pub api_version: String,
    /// The Pod to mutate, or why there is none (answered with that warning).
    pub target: Result<Target, String>,
}

/// A Pod being created.
#[derive(Debug, Clone)]
pub struct Target {
    pub pod: Value,
    pub namespace: String,
}

impl Target {
    /// `name` or `generateName*`, for logs.
    pub fn display_name(&self) -> String {
        let meta = &self.pod["metadata"];
        match (meta["name"].as_str(), meta["generateName"].as_str()) {
            (Some(n), _) if !n.is_empty() => n.to_string(),
            (_, Some(g)) => format!("{g}*"),
            _ => "(unnamed)".to_string(),
        }
    }
}

/// Reads a review. Only a body without a `request.uid` is an error; anything else wrong with it
/// becomes the reason in [`Parsed::target`].
pub fn parse(body: &[u8]) -> Result<Parsed, NotAReview> {
    let review: Value = serde_json::from_slice(body).map_err(|e| NotAReview(format!("the body is not JSON ({e})")))?;
    let request = &review["request"];
    let uid = request["uid"]
        .as_str()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| NotAReview("it has no request.uid".to_string()))?
        .to_string();
    let api_version = match review["apiVersion"].as_str() {
        Some(v @ ("admission.k8s.io/v1" | "admission.k8s.io/v1beta1")) => v.to_string(),
        _ => API_VERSION.to_string(),
    };
    Ok(Parsed { uid, api_version, target: target(&review) })
}

fn target(review: &Value) -> Result<Target, String> {
    let request = &review["request"];
    let (api_version, kind) = (review["apiVersion"].as_str(), review["kind"].as_str());
    if kind != Some(KIND) || !matches!(api_version, Some("admission.k8s.io/v1" | "admission.k8s.io/v1beta1")) {
        return Err(format!(
            "expected kind AdmissionReview, apiVersion {API_VERSION}; got kind {kind:?}, apiVersion {api_version:?}"
        ));
    }
    let gvk = &request["kind"];
    let (group, version, kind) = (gvk["group"].as_str(), gvk["version"].as_str(), gvk["kind"].as_str());
    if !group.unwrap_or("").is_empty() || version != Some("v1") || kind != Some("Pod") {
        return Err(format!(
            "only Pods are injected; this review is for {}/{} {}",
            group.unwrap_or(""),
            version.unwrap_or("?"),
            kind.unwrap_or("(no kind)")
        ));
    }
    if let Some(sub) = request["subResource"].as_str().filter(|s| !s.is_empty()) {
        return Err(format!("subresource {sub:?} is not injected"));
    }
    let operation = request["operation"].as_str().unwrap_or("");
    if operation != "CREATE" {
        return Err(format!("only CREATE is injected; this review is for {operation:?}"));
    }
    let pod = &request["object"];
    if !pod.is_object() {
        return Err("request.object is not a Pod object".to_string());
    }
    // The mutator may rely on the object being a Pod (the shape k8s-openapi reads).
    if let Err(e) = serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(pod.clone()) {
        return Err(format!("request.object is not a valid Pod: {e}"));
    }
    if pod["spec"]["containers"].as_array().is_none_or(|c| c.is_empty()) {
        return Err("request.object has no containers".to_string());
    }
    let namespace = request["namespace"]
        .as_str()
        .or_else(|| pod["metadata"]["namespace"].as_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| "request.namespace is missing".to_string())?;
    Ok(Target { pod: pod.clone(), namespace: namespace.to_string() })
}

/// What to answer for one review.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub result: ReviewResult,
    /// The JSONPatch (a JSON array), when not empty.
    pub patch: Option<Vec<u8>>,
    pub warnings: Vec<String>,
    pub reason: Option<String>,
}

impl Decision {
    /// Allowed, no patch, and why.
    pub fn error(warning: impl Into<String>) -> Self {
        let warning = warning.into();
        Decision { result: ReviewResult::Error, patch: None, warnings: vec![warning.clone()], reason: Some(warning) }
    }
}

/// Runs the mutator on `target` (a panic is caught: the pod is allowed as it is) and turns its
/// Pod into a patch.
pub fn decide(target: &Target, mutator: &Mutator) -> Decision {
    let mutation = match std::panic::catch_unwind(AssertUnwindSafe(|| mutator(&target.pod, &target.namespace))) {
        Ok(m) => m,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_string());
            return Decision::error(format!(
                "the injector failed on this pod ({what}); it was created without a proxy"
            ));
        }
    };
    let Mutation { patched, warnings, reason } = mutation;
    let Some(patched) = patched else {
        return Decision { result: ReviewResult::Unchanged, patch: None, warnings, reason };
    };
    if !patched.is_object() || patched["kind"] != target.pod["kind"] {
        let mut d =
            Decision::error("the injector returned something that is not a Pod; it was created without a proxy");
        d.warnings.extend(warnings);
        return d;
    }
    let patch = json_patch::diff(&target.pod, &patched);
    if patch.0.is_empty() {
        return Decision { result: ReviewResult::Unchanged, patch: None, warnings, reason };
    }
    match serde_json::to_vec(&patch) {
        Ok(bytes) => Decision { result: ReviewResult::Injected, patch: Some(bytes), warnings, reason },
        Err(e) => Decision::error(format!("the patch could not be written ({e}); the pod was created without a proxy")),
    }
}

/// The AdmissionReview answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    pub api_version: String,
    pub kind: &'static str,
    pub response: AdmissionResponse,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// Base64 of the JSONPatch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub audit_annotations: BTreeMap<String, String>,
}

/// The answer to `uid`: always allowed.
pub fn answer(uid: &str, api_version: &str, decision: &Decision) -> AdmissionReview {
    let patch = decision.patch.as_ref().map(|p| base64::engine::general_purpose::STANDARD.encode(p));
    let warnings = decision.warnings.iter().take(MAX_WARNINGS).map(|w| warning(w)).collect();
    let mut audit_annotations = BTreeMap::new();
    if let Some(reason) = &decision.reason {
        audit_annotations.insert("reason".to_string(), reason.clone());
    }
    AdmissionReview {
        api_version: api_version.to_string(),
        kind: KIND,
        response: AdmissionResponse {
            uid: uid.to_string(),
            allowed: true,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            warnings,
            audit_annotations,
        },
    }
}

/// Printable, prefixed, at most [`MAX_WARNING_LEN`] bytes.
fn warning(w: &str) -> String {
    let mut out = String::from(WARNING_PREFIX);
    for c in w.chars().map(|c| if c.is_control() { ' ' } else { c }) {
        if out.len() + c.len_utf8() > MAX_WARNING_LEN {
            break;
        }
        out.push(c);
    }
    out
}

/// One review, start to end, without a deadline (the server runs [`decide`] under one).
pub fn review(body: &[u8], mutator: &Mutator) -> Result<(AdmissionReview, Decision), NotAReview> {
    let parsed = parse(body)?;
    let decision = match &parsed.target {
        Ok(target) => decide(target, mutator),
        Err(reason) => Decision::error(format!("{reason}; the object was admitted unchanged")),
    };
    Ok((answer(&parsed.uid, &parsed.api_version, &decision), decision))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use serde_json::json;

    const FIXTURE: &str = include_str!("../../../tests/fixtures/webhook/admission-review-pod.json");

    /// Adds an annotation when `strait.io/inject: enabled`, once: what matters here is the
    /// machinery, not the injection.
    fn annotate() -> Mutator {
        Arc::new(|pod: &Value, _ns: &str| {
            let meta = &pod["metadata"];
            if meta["annotations"]["strait.io/inject"] != "enabled" {
                return Mutation { reason: Some("not asked for".into()), ..Mutation::default() };
            }
            let mut p = pod.clone();
            p["metadata"]["annotations"]["strait.io/injected"] = json!("test");
            Mutation { patched: Some(p), warnings: vec!["a warning\nwith a newline".into()], reason: None }
        })
    }

    fn body(review: &Value) -> Vec<u8> {
        serde_json::to_vec(review).unwrap()
    }

    fn fixture() -> Value {
        serde_json::from_str(FIXTURE).unwrap()
    }

    fn to_value(r: &AdmissionReview) -> Value {
        serde_json::to_value(r).unwrap()
    }

    fn decoded_patch(answer: &Value) -> json_patch::Patch {
        let b64 = answer["response"]["patch"].as_str().unwrap();
        serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
    }

    #[test]
    fn a_pod_is_patched_and_the_patched_pod_is_left_alone() {
        let review = fixture();
        let (answer, decision) = super::review(&body(&review), &annotate()).unwrap();
        assert_eq!(decision.result, ReviewResult::Injected);
        let a = to_value(&answer);
        assert_eq!(a["apiVersion"], API_VERSION);
        assert_eq!(a["kind"], KIND);
        assert_eq!(a["response"]["uid"], review["request"]["uid"]);
        assert_eq!(a["response"]["allowed"], true);
        assert_eq!(a["response"]["patchType"], "JSONPatch");
        assert_eq!(a["response"]["warnings"], json!(["strait injector: a warning with a newline"]));
        let mut pod = review["request"]["object"].clone();
        json_patch::patch(&mut pod, &decoded_patch(&a)).unwrap();
        assert_eq!(pod["metadata"]["annotations"]["strait.io/injected"], "test");
        assert_eq!(pod["spec"], review["request"]["object"]["spec"], "only the annotation changed");

        // Injecting the injected pod changes nothing.
        let mut again = review.clone();
        again["request"]["object"] = pod;
        let (answer, decision) = super::review(&body(&again), &annotate()).unwrap();
        assert_eq!(decision.result, ReviewResult::Unchanged);
        let a = to_value(&answer);
        assert_eq!(a["response"]["allowed"], true);
        assert!(a["response"].get("patch").is_none() && a["response"].get("patchType").is_none(), "{a}");
    }

    #[test]
    fn a_pod_not_asked_for_is_allowed_with_the_reason_audited() {
        let mut review = fixture();
        review["request"]["object"]["metadata"]["annotations"] = json!({});
        let (answer, decision) = super::review(&body(&review), &annotate()).unwrap();
        assert_eq!(decision.result, ReviewResult::Unchanged);
        let a = to_value(&answer);
        assert_eq!(a["response"]["auditAnnotations"], json!({"reason": "not asked for"}));
        assert!(a["response"].get("warnings").is_none());
    }

    #[test]
    fn bad_input_is_allowed_with_a_warning() {
        type Change = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "Deployment",
                Box::new(|r| r["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"})),
            ),
            ("DELETE", Box::new(|r| r["request"]["operation"] = json!("DELETE"))),
            ("subresource", Box::new(|r| r["request"]["subResource"] = json!("ephemeralcontainers"))),
            ("not a Pod object", Box::new(|r| r["request"]["object"] = json!("a string"))),
            ("not a valid Pod", Box::new(|r| r["request"]["object"]["spec"]["containers"] = json!({"a": 1}))),
            ("no containers", Box::new(|r| r["request"]["object"]["spec"]["containers"] = json!([]))),
            ("kind AdmissionReview", Box::new(|r| r["kind"] = json!("Pod"))),
            (
                "namespace",
                Box::new(|r| {
                    r["request"]["namespace"] = Value::Null;
                    r["request"]["object"]["metadata"]["namespace"] = Value::Null;
                }),
            ),
        ];
        for (expect, change) in cases {
            let mut review = fixture();
            change(&mut review);
            let (answer, decision) = super::review(&body(&review), &annotate()).unwrap();
            assert_eq!(decision.result, ReviewResult::Error, "{expect}");
            let a = to_value(&answer);
            assert_eq!(a["response"]["uid"], review["request"]["uid"], "{expect}");
            assert_eq!(a["response"]["allowed"], true, "{expect}");
            assert!(a["response"].get("patch").is_none(), "{expect}");
            let warning = a["response"]["warnings"][0].as_str().unwrap();
            assert!(warning.starts_with(WARNING_PREFIX) && warning.contains(expect), "{expect}: {warning}");
        }
        // The namespace may come from the object instead.
        let mut review = fixture();
        review["request"]["namespace"] = Value::Null;
        assert_eq!(review["request"]["object"]["metadata"]["namespace"], "demo");
        assert_eq!(super::review(&body(&review), &annotate()).unwrap().1.result, ReviewResult::Injected);
    }

    #[test]
    fn a_body_without_a_uid_is_not_a_review() {
        for bad in [&b"not json"[..], b"{}", b"[]", br#"{"request": {"uid": ""}}"#, br#"{"request": {"uid": 7}}"#] {
            assert!(super::review(bad, &annotate()).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_panicking_or_confused_mutator_lets_the_pod_through() {
        let review = fixture();
        let panics: Mutator = Arc::new(|_: &Value, _: &str| panic!("injector bug"));
        let (answer, decision) = super::review(&body(&review), &panics).unwrap();
        assert_eq!(decision.result, ReviewResult::Error);
        let a = to_value(&answer);
        assert_eq!(a["response"]["allowed"], true);
        assert!(a["response"]["warnings"][0].as_str().unwrap().contains("injector bug"));

        let confused: Mutator =
            Arc::new(|_: &Value, _: &str| Mutation { patched: Some(json!([1])), ..Mutation::default() });
        let (answer, decision) = super::review(&body(&review), &confused).unwrap();
        assert_eq!(decision.result, ReviewResult::Error);
        assert!(to_value(&answer)["response"].get("patch").is_none());
    }

    #[test]
    fn warnings_are_bounded_and_printable() {
        let long = "é".repeat(400);
        let w = warning(&long);
        assert!(w.len() <= MAX_WARNING_LEN && w.starts_with(WARNING_PREFIX));
        let d = Decision { warnings: vec!["w".into(); 20], ..Decision::error("x") };
        assert_eq!(answer("u", API_VERSION, &d).response.warnings.len(), MAX_WARNINGS);
    }
}
