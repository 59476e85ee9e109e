//! The Kubernetes test API server itself (`strait_tests::kube_api`), over HTTP, as any client sees
//! it: lists with pagination, watches with replay, 410 Gone, writes, TokenReview, and what
//! `strait check` reads (`/version`, Secrets and cluster-scoped objects by name,
//! SelfSubjectAccessReview).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use strait_tests::{
    client::{http1_connect, send_http1},
    kube_api::{KubeApi, Requester, TokenUser, collection_path, fixtures_dir},
};

async fn call(api: &KubeApi, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path).header("host", api.addr().to_string());
    if body.is_some() {
        request = request.header("content-type", "application/merge-patch+json");
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let response = send_http1(api.addr(), request.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap();
    (response.status, serde_json::from_slice(&response.body).unwrap_or(Value::Null))
}

async fn get(api: &KubeApi, path: &str) -> (StatusCode, Value) {
    call(api, Method::GET, path, None).await
}

/// A watch: the response body, read event by event.
struct Watch(Incoming, Vec<u8>);

impl Watch {
    async fn open(api: &KubeApi, path_and_query: &str) -> Watch {
        let mut sender = http1_connect::<Empty<Bytes>>(api.addr()).await.unwrap();
        let request = Request::get(path_and_query).header("host", api.addr().to_string()).body(Empty::new()).unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        Watch(response.into_body(), Vec::new())
    }

    /// The next event's (type, object), `None` when the stream ends.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.1.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.1.drain(..=end).collect();
                let event: Value = serde_json::from_slice(&line).unwrap();
                return Some((event["type"].as_str().unwrap().to_string(), event["object"].clone()));
            }
            let frame = tokio::time::timeout(Duration::from_secs(5), self.0.frame()).await.expect("no event within 5 s")?;
            if let Ok(data) = frame.unwrap().into_data() {
                self.1.extend_from_slice(&data);
            }
        }
    }

    /// The next event that is not a bookmark.
    async fn event(&mut self) -> (String, Value) {
        loop {
            let e = self.next().await.expect("the watch ended");
            if e.0 != "BOOKMARK" {
                return e;
            }
        }
    }
}

fn names(list: &Value) -> Vec<&str> {
    list["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn lists_page_by_page_with_one_resource_version() {
    let api = KubeApi::with_manifests(&fixtures_dir()).await;
    let pods = collection_path("Pod");
    let (status, all) = get(&api, &pods).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((all["kind"].as_str(), all["apiVersion"].as_str()), (Some("PodList"), Some("v1")));
    assert_eq!(all["metadata"]["resourceVersion"], api.revision().to_string());
    assert_eq!(names(&all).len(), 6);
    assert_eq!(all["items"][0].get("kind"), None, "list items carry no type of their own");

    let (_, first) = get(&api, &format!("{pods}?limit=4")).await;
    assert_eq!(names(&first), &names(&all)[..4]);
    assert_eq!(first["metadata"]["remainingItemCount"], 2);
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    let (_, rest) = get(&api, &format!("{pods}?limit=4&continue={token}")).await;
    assert_eq!(names(&rest), &names(&all)[4..]);
    assert_eq!(rest["metadata"].get("continue"), None);

    // After a change, the continue token is too old.
    api.modify("Pod", "demo", "cache-0", |p| p["metadata"]["labels"]["x"] = json!("y"));
    let (status, gone) = get(&api, &format!("{pods}?limit=4&continue={token}")).await;
    assert_eq!((status, gone["code"].as_u64(), gone["reason"].as_str()), (StatusCode::GONE, Some(410), Some("Expired")));

    // Namespaces and selectors.
    let (_, demo) = get(&api, "/api/v1/namespaces/default/services").await;
    assert_eq!(names(&demo), ["kubernetes"]);
    let (_, web) = get(&api, "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dweb").await;
    assert_eq!(names(&web), ["web-m4q9z", "web-x7k2p"]);
    let (_, one) = get(&api, "/api/v1/pods?fieldSelector=metadata.name%3Dcache-0").await;
    assert_eq!(names(&one), ["cache-0"]);
    assert_eq!(get(&api, "/api/v1/pods?labelSelector=app+in+(web)").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(get(&api, "/api/v1/widgets").await.0, StatusCode::NOT_FOUND);
    assert!(api.lists_of("Pod") >= 4);
}

#[tokio::test]
async fn watches_replay_from_a_version_and_stream_changes() {
    let api = KubeApi::with_manifests(&fixtures_dir()).await;
    let (_, list) = get(&api, "/api/v1/services").await;
    let listed: u64 = list["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();

    // A change before the watch starts is replayed; later ones stream; other kinds never show.
    let rv = api.modify("Service", "demo", "web", |s| s["metadata"]["annotations"]["a"] = json!("1"));
    let mut w = Watch::open(&api, &format!("/api/v1/services?watch=true&resourceVersion={listed}&allowWatchBookmarks=true")).await;
    let (kind, object) = w.event().await;
    assert_eq!((kind.as_str(), object["metadata"]["resourceVersion"].as_str()), ("MODIFIED", Some(rv.to_string().as_str())));
    assert_eq!(object["kind"], "Service", "watch events carry the object's type");
    api.modify("Pod", "demo", "cache-0", |p| p["metadata"]["labels"]["x"] = json!("y"));
    api.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "new", "namespace": "demo"}}));
    let (kind, object) = w.event().await;
    assert_eq!((kind.as_str(), object["metadata"]["name"].as_str()), ("ADDED", Some("new")));
    let deleted = api.delete("Service", "demo", "new");
    let (kind, object) = w.event().await;
    assert_eq!((kind.as_str(), object["metadata"]["resourceVersion"].as_str()), ("DELETED", Some(deleted.to_string().as_str())));
    // Bookmarks carry the newest version.
    let (kind, object) = w.next().await.unwrap();
    assert_eq!((kind.as_str(), object["metadata"]["resourceVersion"].as_str()), ("BOOKMARK", Some(deleted.to_string().as_str())));

    // Without a version: the current objects first.
    let mut w2 = Watch::open(&api, "/api/v1/namespaces/default/services?watch=1").await;
    let (kind, object) = w2.event().await;
    assert_eq!((kind.as_str(), object["metadata"]["name"].as_str()), ("ADDED", Some("kubernetes")));

    // Expired: both running watches end with 410, and a watch from before the compaction too.
    api.expire_watches();
    for w in [&mut w, &mut w2] {
        let (kind, status) = w.event().await;
        assert_eq!((kind.as_str(), status["code"].as_u64(), status["reason"].as_str()), ("ERROR", Some(410), Some("Expired")));
        assert!(w.next().await.is_none());
    }
    let mut old = Watch::open(&api, &format!("/api/v1/services?watch=true&resourceVersion={listed}")).await;
    assert_eq!(old.event().await.1["code"], 410);
    let mut current = Watch::open(&api, &format!("/api/v1/services?watch=true&resourceVersion={}", api.revision())).await;
    api.modify("Service", "demo", "web", |s| s["metadata"]["annotations"]["a"] = json!("2"));
    assert_eq!(current.event().await.0, "MODIFIED");

    // A timeout ends the stream cleanly.
    let mut short = Watch::open(&api, &format!("/api/v1/pods?watch=true&resourceVersion={}&timeoutSeconds=1", api.revision())).await;
    assert!(short.next().await.is_none());
}

#[tokio::test]
async fn writes_keep_identity_and_check_versions() {
    let api = KubeApi::start().await;
    let event = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"generateName": "web."}, "reason": "R"});
    let (status, created) = call(&api, Method::POST, "/apis/events.k8s.io/v1/namespaces/demo/events", Some(event)).await;
    assert_eq!(status, StatusCode::CREATED);
    let name = created["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("web."));
    assert_eq!(created["metadata"]["namespace"], "demo");
    let path = format!("/apis/events.k8s.io/v1/namespaces/demo/events/{name}");
    let (status, patched) = call(&api, Method::PATCH, &path, Some(json!({"series": {"count": 2}}))).await;
    assert_eq!((status, &patched["series"]["count"], &patched["reason"]), (StatusCode::OK, &json!(2), &json!("R")));
    assert_eq!(patched["metadata"]["uid"], created["metadata"]["uid"]);
    let stale = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": name, "resourceVersion": "1"}});
    assert_eq!(call(&api, Method::PUT, &path, Some(stale)).await.0, StatusCode::CONFLICT);
    assert_eq!(api.objects("Event").len(), 1);
    assert_eq!(call(&api, Method::DELETE, &path, None).await.0, StatusCode::OK);
    assert_eq!(get(&api, &path).await.0, StatusCode::NOT_FOUND);

    api.fail("Pod", StatusCode::FORBIDDEN);
    let (status, body) = get(&api, "/api/v1/pods").await;
    assert_eq!((status, body["reason"].as_str()), (StatusCode::FORBIDDEN, Some("Forbidden")));
    api.heal("Pod");
    assert_eq!(get(&api, "/api/v1/pods").await.0, StatusCode::OK);
}

#[tokio::test]
async fn token_reviews_answer_from_the_table() {
    let api = KubeApi::start().await;
    api.add_token("sa-token", TokenUser::service_account("demo", "web", "identity.strait.io", Some(("web-0", "uid-0"))));
    let review = |token: &str| {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
               "spec": {"token": token, "audiences": ["identity.strait.io"]}})
    };
    let path = "/apis/authentication.k8s.io/v1/tokenreviews";
    let (status, answer) = call(&api, Method::POST, path, Some(review("sa-token"))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(answer["status"]["authenticated"], true);
    assert_eq!(answer["status"]["user"]["username"], "system:serviceaccount:demo:web");
    api.remove_token("sa-token");
    let (_, answer) = call(&api, Method::POST, path, Some(review("sa-token"))).await;
    assert_eq!(answer["status"]["authenticated"], false);
}

#[tokio::test]
async fn version_objects_by_name_and_access_reviews_from_the_stored_rbac() {
    let api = KubeApi::start().await;
    let (status, v) = get(&api, "/version").await;
    assert_eq!((status, v["major"].as_str(), v["minor"].as_str()), (StatusCode::OK, Some("1"), Some("31")));
    api.set_version("1", "28+");
    assert_eq!(get(&api, "/version").await.1["gitVersion"], "v1.28.0");

    api.apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "strait-system"},
                     "type": "kubernetes.io/tls", "data": {"ca.crt": "Y2E="}}));
    let (status, secret) = get(&api, "/api/v1/namespaces/strait-system/secrets/s").await;
    assert_eq!((status, secret["data"]["ca.crt"].as_str()), (StatusCode::OK, Some("Y2E=")));
    let (status, missing) = get(&api, "/api/v1/namespaces/strait-system/secrets/nope").await;
    assert_eq!((status, missing["reason"].as_str()), (StatusCode::NOT_FOUND, Some("NotFound")));
    api.apply(json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                     "metadata": {"name": "m"}, "webhooks": []}));
    assert_eq!(get(&api, "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/m").await.0, StatusCode::OK);
    assert_eq!(get(&api, "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/x").await.0, StatusCode::NOT_FOUND);
    api.apply(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "n"},
                     "status": {"availableReplicas": 2}}));
    assert_eq!(get(&api, "/apis/apps/v1/namespaces/n/deployments/d").await.1["status"]["availableReplicas"], 2);

    let path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
    let ask = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                     "spec": {"resourceAttributes": {"verb": "create", "group": "rbac.authorization.k8s.io", "resource": "clusterroles"}}});
    let (status, answer) = call(&api, Method::POST, path, Some(ask.clone())).await;
    assert_eq!((status, &answer["status"]["allowed"]), (StatusCode::CREATED, &json!(false)));
    api.apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "admin"},
                     "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}));
    api.apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "ops-admin"},
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
                     "subjects": [{"kind": "User", "name": "ops"}]}));
    assert_eq!(call(&api, Method::POST, path, Some(ask.clone())).await.1["status"]["allowed"], false, "the binding names another user");
    api.set_requester(Requester { username: "ops".into(), groups: vec![] });
    let (_, answer) = call(&api, Method::POST, path, Some(ask)).await;
    assert_eq!(answer["status"]["allowed"], true);
    assert!(answer["status"]["reason"].as_str().unwrap().contains("ops-admin"));
}
