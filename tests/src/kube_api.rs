//! A small Kubernetes API server for tests: list and watch (and create, update, patch, delete) over
//! plain HTTP/1 on loopback, fed with real manifests, with the semantics a client such as kube-rs's
//! `runtime::watcher` relies on:
//!
//! - One global resourceVersion counter (etcd's revision): every change of any object takes the
//!   next number, written to the object's `metadata.resourceVersion`.
//! - List: `GET /api/v1/services`, `/apis/discovery.k8s.io/v1/endpointslices`, and the namespaced
//!   forms (`/api/v1/namespaces/<ns>/pods`): items in storage order with the list's
//!   `metadata.resourceVersion`; `labelSelector` and `fieldSelector` (equality-based), and
//!   pagination with `limit` and `continue` (a continue token is only good while nothing changed:
//!   after any change it gets 410 Gone, as a compacted one does on a real server).
//! - Watch (`?watch=true`): from `resourceVersion` N it replays every change after N, then streams
//!   live ones, as newline-delimited JSON events (`ADDED`, `MODIFIED`, `DELETED`, with `BOOKMARK`s
//!   each second when `allowWatchBookmarks=true`); objects entering or leaving a selector are
//!   `ADDED` or `DELETED`. Without a version (or with `0`) it starts with an `ADDED` per existing
//!   object. A version older than the last compaction gets an `ERROR` event with a 410 `Expired`
//!   status (HTTP 200, as the API server's watch cache answers). `timeoutSeconds` ends the stream.
//! - The test changes objects while watches run ([`KubeApi::apply`], [`KubeApi::modify`],
//!   [`KubeApi::delete`]), can stall watches ([`KubeApi::pause_watches`]) and end them all with
//!   410 Gone after a compaction ([`KubeApi::expire_watches`]), so the client must list again.
//! - `POST …/tokenreviews` answers from a token table ([`KubeApi::add_token`]), or fails on
//!   demand ([`KubeApi::fail_token_reviews`]).
//! - `POST …/selfsubjectaccessreviews` answers from the stored ClusterRoles and
//!   ClusterRoleBindings for the requester the test sets ([`KubeApi::set_requester`]; see
//!   [`rbac`] for the matching rules).
//! - `GET /version` answers Kubernetes [`DEFAULT_VERSION`], another one
//!   ([`KubeApi::set_version`]) or 404 ([`KubeApi::hide_version`]).
//! - Get by name of every stored kind, 404 `NotFound` for a missing one: besides the watched kinds,
//!   Secrets, Deployments (their `status` is what the test stored), MutatingWebhookConfigurations,
//!   ClusterRoles and ClusterRoleBindings, which `strait check` reads.
//! - Every request is recorded ([`KubeApi::requests`]).
//!
//! Not there: authentication (every request is allowed), protobuf, server-side apply, field
//! managers, generations, garbage collection, `sendInitialEvents`.

pub mod rbac;
mod state;
mod token_review;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{body::Frame, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::mpsc, sync::watch, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;

use state::{Key, Resource, Selection, Storage, parse_selector};
pub use state::{EventType, RESOURCES};
pub use rbac::Requester;
pub use token_review::TokenUser;

use crate::dir::TestDir;

/// What `GET /version` answers unless told otherwise: (major, minor).
pub const DEFAULT_VERSION: (&str, &str) = ("1", "31");

/// How often a watch that allows bookmarks gets one.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// The directory of the Kubernetes manifests the tests serve: `tests/fixtures/k8s`.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/k8s")
}

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
}

impl Seen {
    pub fn is_watch(&self) -> bool {
        self.method == "GET" && matches!(self.query.get("watch").map(String::as_str), Some("true" | "1"))
    }

    /// A list (a GET of a collection that is not a watch) of `path`.
    pub fn is_list_of(&self, path: &str) -> bool {
        self.method == "GET" && self.path == path && !self.is_watch()
    }
}

#[derive(Default)]
struct State {
    storage: Storage,
    /// Bumped by [`KubeApi::expire_watches`]: every watch started before ends with 410 Gone.
    epoch: u64,
    /// Bumped by [`KubeApi::close_watches`]: every watch started before ends without an error.
    closings: u64,
    paused: bool,
    /// Resources whose every request is answered with this error status.
    failing: BTreeMap<Resource, StatusCode>,
    requests: Vec<Seen>,
    tokens: BTreeMap<String, TokenUser>,
    /// Every TokenReview is answered with this error status, when set.
    token_reviews_failing: Option<StatusCode>,
    /// Who SelfSubjectAccessReviews are about.
    requester: Requester,
    /// `/version`'s (major, minor) instead of [`DEFAULT_VERSION`].
    version: Option<(String, String)>,
    /// `/version` answers 404.
    version_hidden: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Ticks on every change of the storage or of the watches' fate.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// A running test API server; it stops when dropped.
pub struct KubeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeApi {
    /// Starts an empty server on a free loopback port (on the current tokio runtime).
    pub async fn start() -> KubeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the test API server");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), changed: watch::channel(0).0 });
        let task = tokio::spawn(serve(listener, shared.clone()));
        KubeApi { addr, shared, task }
    }

    /// Starts a server holding every manifest in `dir`'s `*.yaml` files (in name order).
    pub async fn with_manifests(dir: &Path) -> KubeApi {
        let api = Self::start().await;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        for f in files {
            api.apply_yaml(&std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display())));
        }
        api
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server: plain HTTP, no credentials, namespace `default`.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\nusers:\n- name: test\n  user: {{}}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\ncurrent-context: test\n",
            url = self.url()
        )
    }

    /// Writes [`KubeApi::kubeconfig`] to `<dir>/kubeconfig` and returns its path.
    pub fn write_kubeconfig(&self, dir: &TestDir) -> PathBuf {
        dir.write("kubeconfig", self.kubeconfig())
    }

    /// The last resourceVersion given out.
    pub fn revision(&self) -> u64 {
        self.shared.lock().storage.revision
    }

    /// Creates or replaces an object (JSON, with `apiVersion`, `kind` and `metadata.name`); returns
    /// its new resourceVersion.
    pub fn apply(&self, object: Value) -> u64 {
        let (revision, _) = self.shared.lock().storage.put(object).unwrap_or_else(|e| panic!("apply: {e}"));
        self.shared.notify();
        revision
    }

    /// Applies every document of a (multi-document) YAML text; returns the last resourceVersion.
    pub fn apply_yaml(&self, yaml: &str) -> u64 {
        use serde::Deserialize;
        let mut revision = self.revision();
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let value = serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("manifest: {e}"));
            if value.is_null() {
                continue;
            }
            let json = serde_json::to_value(value).unwrap_or_else(|e| panic!("manifest: {e}"));
            revision = self.apply(json);
        }
        revision
    }

    /// The stored object of `kind` (e.g. `Service`, `EndpointSlice`) named `namespace`/`name`.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = key(kind, namespace, name);
        self.shared.lock().storage.objects.get(&key).cloned()
    }

    /// Every stored object of `kind`, in storage order.
    pub fn objects(&self, kind: &str) -> Vec<Value> {
        let resource = resource(kind);
        self.shared.lock().storage.list(resource, &Selection::default()).map(|(_, v)| v.clone()).collect()
    }

    /// Changes a stored object in place (one update, one new resourceVersion, which it returns).
    pub fn modify(&self, kind: &str, namespace: &str, name: &str, change: impl FnOnce(&mut Value)) -> u64 {
        let mut object = self.get(kind, namespace, name).unwrap_or_else(|| panic!("no {kind} {namespace}/{name}"));
        change(&mut object);
        self.apply(object)
    }

    /// Deletes an object; returns the deletion's resourceVersion. Panics if there is none.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> u64 {
        let revision = self.shared.lock().storage.delete(&key(kind, namespace, name));
        self.shared.notify();
        revision.unwrap_or_else(|| panic!("no {kind} {namespace}/{name} to delete"))
    }

    /// Stalls every watch: changes are stored but not delivered until [`KubeApi::resume_watches`]
    /// or [`KubeApi::expire_watches`], as when a watch connection hangs.
    pub fn pause_watches(&self) {
        self.shared.lock().paused = true;
        self.shared.notify();
    }

    /// Delivers what paused watches held back.
    pub fn resume_watches(&self) {
        self.shared.lock().paused = false;
        self.shared.notify();
    }

    /// Forgets the history (etcd compaction): a watch from a version before now gets 410 Gone.
    /// Running watches are not disturbed.
    pub fn compact(&self) {
        self.shared.lock().storage.compact();
        self.shared.notify();
    }

    /// Compacts, then ends every running watch with an `ERROR` event of status 410 Gone ("too old
    /// resource version"), undelivered changes included: clients must list again. Also resumes
    /// watches (new ones deliver).
    pub fn expire_watches(&self) {
        let mut state = self.shared.lock();
        state.storage.compact();
        state.epoch += 1;
        state.paused = false;
        drop(state);
        self.shared.notify();
    }

    /// Answers every request on `kind` with `status` (e.g. 403 Forbidden, as without RBAC rights,
    /// or 503) until [`KubeApi::heal`]; watches already running are not touched.
    pub fn fail(&self, kind: &str, status: StatusCode) {
        self.shared.lock().failing.insert(resource(kind), status);
    }

    /// Serves `kind` again after [`KubeApi::fail`].
    pub fn heal(&self, kind: &str) {
        self.shared.lock().failing.remove(&resource(kind));
    }

    /// Ends every running watch cleanly, as `timeoutSeconds` or an API server restart does (the
    /// client resumes from its last version, which may meanwhile have been compacted). Also
    /// resumes watches.
    pub fn close_watches(&self) {
        let mut state = self.shared.lock();
        state.closings += 1;
        state.paused = false;
        drop(state);
        self.shared.notify();
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.lock().requests.clone()
    }

    /// How many lists (not watches) of every `kind` across all namespaces were made.
    pub fn lists_of(&self, kind: &str) -> usize {
        let path = collection_path(kind);
        self.shared.lock().requests.iter().filter(|r| r.is_list_of(&path)).count()
    }

    /// Registers a token for `POST /apis/authentication.k8s.io/v1/tokenreviews`.
    pub fn add_token(&self, token: &str, user: TokenUser) {
        self.shared.lock().tokens.insert(token.to_string(), user);
    }

    /// Revokes a token: reviews of it answer `authenticated: false` from now on.
    pub fn remove_token(&self, token: &str) {
        self.shared.lock().tokens.remove(token);
    }

    /// Answers every TokenReview with `status` (403 as without RBAC rights, 503, …) until
    /// [`KubeApi::heal_token_reviews`].
    pub fn fail_token_reviews(&self, status: StatusCode) {
        self.shared.lock().token_reviews_failing = Some(status);
    }

    pub fn heal_token_reviews(&self) {
        self.shared.lock().token_reviews_failing = None;
    }

    /// Who the server takes every request to come from, for SelfSubjectAccessReviews (by default
    /// [`Requester::default`], a user no binding names).
    pub fn set_requester(&self, requester: Requester) {
        self.shared.lock().requester = requester;
    }

    /// `GET /version` answers this major and minor (e.g. `"1"`, `"28+"`).
    pub fn set_version(&self, major: &str, minor: &str) {
        let mut state = self.shared.lock();
        state.version = Some((major.to_string(), minor.to_string()));
        state.version_hidden = false;
    }

    /// `GET /version` answers 404, as a server without it would.
    pub fn hide_version(&self) {
        self.shared.lock().version_hidden = true;
    }

    /// How many TokenReviews were asked for.
    pub fn token_reviews(&self) -> usize {
        self.shared.lock().requests.iter().filter(|r| r.method == "POST" && r.path == TOKEN_REVIEWS).count()
    }
}

/// The URL path of every object of `kind` across all namespaces, e.g. `/api/v1/pods`.
pub fn collection_path(kind: &str) -> String {
    resource(kind).path(None)
}

fn resource(kind: &str) -> Resource {
    Resource::by_kind(None, kind).unwrap_or_else(|| panic!("unknown kind {kind}"))
}

fn key(kind: &str, namespace: &str, name: &str) -> Key {
    let resource = resource(kind);
    let namespace = if resource.namespaced { namespace.to_string() } else { String::new() };
    Key { resource, namespace, name: name.to_string() }
}

type Body = BoxBody<Bytes, Infallible>;

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            // A client going away mid-watch is normal.
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// The URL of a request, taken apart.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
}

/// `/api/v1[/namespaces/<ns>]/<plural>[/<name>]` or `/apis/<group>/<version>[/namespaces/<ns>]/<plural>[/<name>]`.
fn target(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => (version.to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name) = match rest {
        [plural] => (*plural, None),
        [plural, name] => (*plural, Some(name.to_string())),
        _ => return None,
    };
    let resource = Resource::by_plural(&api_version, plural)?;
    Some(Target { resource, namespace, name })
}

fn query(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    Some((decode(k)?, decode(v)?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Percent-decoding (and `+` as space) of a query component.
fn decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

/// A `Status` object as the API server sends for errors.
fn status(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    })
}

fn error(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status(code, reason, message))
}

/// Where TokenReviews are posted.
pub const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// Where SelfSubjectAccessReviews are posted.
pub const SELF_SUBJECT_ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
fn version_info(major: &str, minor: &str) -> Value {
    let digits: String = minor.chars().take_while(char::is_ascii_digit).collect();
    json!({
        "major": major, "minor": minor, "gitVersion": format!("v{major}.{digits}.0"), "gitCommit": "",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn failure_reason(code: StatusCode) -> &'static str {
    match code {
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
        _ => "InternalError",
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = query(req.uri());
    let method = req.method().clone();
    shared.lock().requests.push(Seen { method: method.to_string(), path: path.clone(), query: query.clone() });

    if method == Method::GET && path == "/version" {
        let state = shared.lock();
        if state.version_hidden {
            return error(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource");
        }
        let (major, minor) = state.version.clone().unwrap_or((DEFAULT_VERSION.0.into(), DEFAULT_VERSION.1.into()));
        return json_response(StatusCode::OK, &version_info(&major, &minor));
    }
    if method == Method::POST && path == TOKEN_REVIEWS {
        if let Some(code) = shared.lock().token_reviews_failing {
            return error(code, failure_reason(code), "tokenreviews are failing on purpose (test server)");
        }
        let Some(body) = read_json(req).await else { return error(StatusCode::BAD_REQUEST, "BadRequest", "the body is not JSON") };
        let tokens = shared.lock().tokens.clone();
        return match token_review::review(&tokens, &body) {
            Ok(answer) => json_response(StatusCode::CREATED, &answer),
            Err(e) => error(StatusCode::BAD_REQUEST, "BadRequest", &e),
        };
    }
    if method == Method::POST && path == SELF_SUBJECT_ACCESS_REVIEWS {
        let Some(body) = read_json(req).await else { return error(StatusCode::BAD_REQUEST, "BadRequest", "the body is not JSON") };
        let (requester, roles, bindings) = {
            let state = shared.lock();
            let all = |kind: &str| -> Vec<Value> {
                state.storage.list(resource(kind), &Selection::default()).map(|(_, v)| v.clone()).collect()
            };
            (state.requester.clone(), all("ClusterRole"), all("ClusterRoleBinding"))
        };
        return match rbac::review(&requester, &roles, &bindings, &body) {
            Ok(answer) => json_response(StatusCode::CREATED, &answer),
            Err(e) => error(StatusCode::BAD_REQUEST, "BadRequest", &e),
        };
    }
    let Some(t) = target(&path) else {
        return error(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource");
    };
    if let Some(&code) = shared.lock().failing.get(&t.resource) {
        return error(code, failure_reason(code), &format!("{} is failing on purpose (test server)", t.resource.plural));
    }
    let selection = match selection(&t, &query) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    match (method, &t.name) {
        (Method::GET, None) if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) => {
            watch(shared, t.resource, selection, &query)
        }
        (Method::GET, None) => list(&shared, t.resource, &selection, &query),
        (Method::GET, Some(name)) => match shared.lock().storage.objects.get(&item_key(&t, name)) {
            Some(object) => json_response(StatusCode::OK, object),
            None => not_found(&t, name),
        },
        (Method::POST, None) => match read_json(req).await {
            Some(object) => create(&shared, &t, object),
            None => error(StatusCode::BAD_REQUEST, "BadRequest", "the body is not JSON"),
        },
        (Method::PUT, Some(name)) => match read_json(req).await {
            Some(object) => update(&shared, &t, name, object),
            None => error(StatusCode::BAD_REQUEST, "BadRequest", "the body is not JSON"),
        },
        (Method::PATCH, Some(name)) => {
            let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            if !matches!(content_type.as_str(), "application/merge-patch+json" | "application/strategic-merge-patch+json") {
                return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", "only merge patches are supported by the test server");
            }
            match read_json(req).await {
                Some(patch) => patch_object(&shared, &t, name, &patch),
                None => error(StatusCode::BAD_REQUEST, "BadRequest", "the body is not JSON"),
            }
        }
        (Method::DELETE, Some(name)) => {
            let key = item_key(&t, name);
            let mut state = shared.lock();
            let object = state.storage.objects.get(&key).cloned();
            match object {
                Some(object) => {
                    state.storage.delete(&key);
                    drop(state);
                    shared.notify();
                    json_response(StatusCode::OK, &object)
                }
                None => not_found(&t, name),
            }
        }
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "the server does not allow this method on the requested resource"),
    }
}

async fn read_json(req: Request<Incoming>) -> Option<Value> {
    let bytes = req.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&bytes).ok()
}

fn item_key(t: &Target, name: &str) -> Key {
    let namespace = if t.resource.namespaced { t.namespace.clone().unwrap_or_default() } else { String::new() };
    Key { resource: t.resource, namespace, name: name.to_string() }
}

fn not_found(t: &Target, name: &str) -> Response<Body> {
    error(StatusCode::NOT_FOUND, "NotFound", &format!("{} \"{name}\" not found", t.resource.plural))
}

fn selection(t: &Target, query: &BTreeMap<String, String>) -> Result<Selection, String> {
    let fields = parse_selector(query.get("fieldSelector").map_or("", String::as_str))?;
    for f in &fields {
        let (state::Requirement::Equals(k, _) | state::Requirement::NotEquals(k, _)) = f else {
            return Err("field selectors must be key=value or key!=value".into());
        };
        if !matches!(k.as_str(), "metadata.name" | "metadata.namespace") {
            return Err(format!("field label not supported by the test server: {k}"));
        }
    }
    Ok(Selection {
        namespace: t.namespace.clone().filter(|_| t.resource.namespaced),
        labels: parse_selector(query.get("labelSelector").map_or("", String::as_str))?,
        fields,
    })
}

/// The collection's type for a list: `ServiceList` etc.
fn list_kind(resource: Resource) -> String {
    format!("{}List", resource.kind)
}

fn list(shared: &Shared, resource: Resource, selection: &Selection, query: &BTreeMap<String, String>) -> Response<Body> {
    let state = shared.lock();
    let revision = state.storage.revision;
    if query.get("resourceVersionMatch").map(String::as_str) == Some("Exact")
        && query.get("resourceVersion").is_some_and(|rv| *rv != revision.to_string())
    {
        return error(StatusCode::GONE, "Expired", "too old resource version: the test server keeps no past states");
    }
    // A continue token is "<revision of the first page>/<namespace>/<name of the last item>".
    let after = match query.get("continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(token) => {
            let mut parts = token.splitn(3, '/');
            let (Some(rv), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
                return error(StatusCode::BAD_REQUEST, "BadRequest", "continue key is not valid");
            };
            if rv != revision.to_string() {
                return error(
                    StatusCode::GONE,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                );
            }
            Some((ns.to_string(), name.to_string()))
        }
    };
    let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|&l| l > 0);
    let mut matching = state
        .storage
        .list_after(resource, selection, after.as_ref().map(|(ns, name)| (ns.as_str(), name.as_str())))
        .peekable();
    let mut items = Vec::new();
    let mut last: Option<&Key> = None;
    while let Some((k, v)) = matching.next_if(|_| limit.is_none_or(|l| items.len() < l)) {
        let mut item = v.clone();
        // Items of a list carry no type of their own: the list's kind says it.
        if let Some(o) = item.as_object_mut() {
            o.remove("apiVersion");
            o.remove("kind");
        }
        items.push(item);
        last = Some(k);
    }
    let remaining = matching.count();
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if remaining > 0
        && let Some(k) = last
    {
        metadata["continue"] = json!(format!("{revision}/{}/{}", k.namespace, k.name));
        metadata["remainingItemCount"] = json!(remaining);
    }
    let body = json!({"apiVersion": resource.api_version, "kind": list_kind(resource), "metadata": metadata, "items": items});
    json_response(StatusCode::OK, &body)
}

fn create(shared: &Shared, t: &Target, mut object: Value) -> Response<Body> {
    if object["kind"] != t.resource.kind {
        return error(StatusCode::BAD_REQUEST, "BadRequest", &format!("the body is not a {}", t.resource.kind));
    }
    if let Some(ns) = &t.namespace {
        object["metadata"]["namespace"] = json!(ns);
    }
    if object["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        match object["metadata"]["generateName"].as_str() {
            Some(prefix) => object["metadata"]["name"] = json!(format!("{prefix}{:05x}", fastrand::u32(..0x100000))),
            None => return error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name: Required value"),
        }
    }
    object["apiVersion"] = json!(t.resource.api_version);
    let state = shared.lock();
    let key = match Storage::key(&object) {
        Ok(k) => k,
        Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    if state.storage.objects.contains_key(&key) {
        return error(StatusCode::CONFLICT, "AlreadyExists", &format!("{} \"{}\" already exists", t.resource.plural, key.name));
    }
    object["metadata"].as_object_mut().map(|m| m.remove("resourceVersion"));
    store(shared, state, object, &key, StatusCode::CREATED)
}

/// Stores `object` (whose key is `key`) and answers with what was stored.
fn store(shared: &Shared, mut state: MutexGuard<'_, State>, object: Value, key: &Key, status: StatusCode) -> Response<Body> {
    let result = state.storage.put(object).map(|_| state.storage.objects[key].clone());
    drop(state);
    shared.notify();
    match result {
        Ok(stored) => json_response(status, &stored),
        Err(e) => error(StatusCode::BAD_REQUEST, "BadRequest", &e),
    }
}

/// PUT: a full replacement, refused with 409 Conflict when `metadata.resourceVersion` is set and
/// is not the stored one (optimistic concurrency).
fn update(shared: &Shared, t: &Target, name: &str, mut object: Value) -> Response<Body> {
    let key = item_key(t, name);
    let state = shared.lock();
    let Some(current) = state.storage.objects.get(&key) else { return not_found(t, name) };
    let given = object["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if !given.is_empty() && given != current["metadata"]["resourceVersion"] {
        return error(
            StatusCode::CONFLICT,
            "Conflict",
            &format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", t.resource.plural),
        );
    }
    object["apiVersion"] = json!(t.resource.api_version);
    object["kind"] = json!(t.resource.kind);
    object["metadata"]["name"] = json!(name);
    object["metadata"]["namespace"] = json!(key.namespace);
    store(shared, state, object, &key, StatusCode::OK)
}

fn patch_object(shared: &Shared, t: &Target, name: &str, patch: &Value) -> Response<Body> {
    let key = item_key(t, name);
    let Some(mut object) = shared.lock().storage.objects.get(&key).cloned() else { return not_found(t, name) };
    merge_patch(&mut object, patch);
    object["metadata"]["name"] = json!(name);
    object["metadata"].as_object_mut().map(|m| m.remove("resourceVersion"));
    update(shared, t, name, object)
}

/// JSON merge patch (RFC 7386).
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch(shared: Arc<Shared>, resource: Resource, selection: Selection, query: &BTreeMap<String, String>) -> Response<Body> {
    if query.get("sendInitialEvents").is_some_and(|v| v == "true") {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "sendInitialEvents is not supported by the test server");
    }
    let from = match query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(rv) => match rv.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => return error(StatusCode::BAD_REQUEST, "BadRequest", &format!("invalid resource version {rv:?}")),
        },
    };
    let timeout = query.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).map(Duration::from_secs);
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(run_watch(shared, resource, selection, from, timeout, bookmarks, tx));
    let body = StreamBody::new(ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b))));
    let mut r = Response::new(BodyExt::boxed(body));
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

async fn run_watch(
    shared: Arc<Shared>,
    resource: Resource,
    selection: Selection,
    from: Option<u64>,
    timeout: Option<Duration>,
    bookmarks: bool,
    tx: mpsc::Sender<Bytes>,
) {
    let mut changes = shared.changed.subscribe();
    let start = {
        let state = shared.lock();
        let storage = &state.storage;
        match from {
            Some(rv) if rv < storage.compacted => {
                let message = format!("too old resource version: {rv} ({})", storage.compacted);
                Err(event_line("ERROR", &status(StatusCode::GONE, "Expired", &message)))
            }
            Some(rv) => Ok((rv, state.epoch, state.closings, Vec::new())),
            None => {
                let added: Vec<Bytes> = storage.list(resource, &selection).map(|(_, v)| event_line("ADDED", v)).collect();
                Ok((storage.revision, state.epoch, state.closings, added))
            }
        }
    };
    let (mut cursor, epoch, closings, initial) = match start {
        Ok(start) => start,
        Err(gone) => {
            let _ = tx.send(gone).await;
            return;
        }
    };
    for line in initial {
        if tx.send(line).await.is_err() {
            return;
        }
    }
    let deadline = tokio::time::Instant::now() + timeout.unwrap_or(Duration::from_secs(3600));
    let mut bookmark = tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_INTERVAL, BOOKMARK_INTERVAL);
    loop {
        let (lines, expired, paused) = {
            let state = shared.lock();
            if state.closings != closings {
                return;
            }
            if state.epoch != epoch {
                let message = format!("too old resource version: {cursor} ({})", state.storage.compacted);
                (vec![event_line("ERROR", &status(StatusCode::GONE, "Expired", &message))], true, false)
            } else if state.paused {
                (Vec::new(), false, true)
            } else {
                let lines = state
                    .storage
                    .events_after(cursor, resource, &selection)
                    .iter()
                    .map(|(event, object)| event_line(event.as_str(), object))
                    .collect();
                cursor = state.storage.revision;
                (lines, false, false)
            }
        };
        for line in lines {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if expired {
            return;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = bookmark.tick(), if bookmarks && !paused => {
                let object = json!({"kind": resource.kind, "apiVersion": resource.api_version, "metadata": {"resourceVersion": cursor.to_string()}});
                if tx.send(event_line("BOOKMARK", &object)).await.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = target("/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices/web-1").unwrap();
        assert_eq!((t.resource.kind, t.namespace.as_deref(), t.name.as_deref()), ("EndpointSlice", Some("demo"), Some("web-1")));
        let t = target("/api/v1/pods").unwrap();
        assert_eq!((t.resource.kind, t.namespace, t.name), ("Pod", None, None));
        let t = target("/api/v1/namespaces/demo").unwrap();
        assert_eq!((t.resource.kind, t.name.as_deref()), ("Namespace", Some("demo")));
        assert!(target("/api/v1/widgets").is_none());
        assert!(target("/version").is_none());
    }

    #[test]
    fn queries_are_decoded() {
        let q = query(&"/x?labelSelector=app%3Dweb%2Ctier%21%3Dfront&watch=true&x".parse().unwrap());
        assert_eq!(q["labelSelector"], "app=web,tier!=front");
        assert_eq!(q["watch"], "true");
        assert_eq!(q["x"], "");
    }

    #[test]
    fn merge_patches() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(&mut v, &json!({"a": {"b": null, "e": 3}, "d": [2]}));
        assert_eq!(v, json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }
}
