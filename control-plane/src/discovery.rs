//! The `strait.discovery.v1.Discovery` gRPC service: one task per proxy stream. A stream watches
//! the store's topics of its subscriptions (and of its workload's inbound policy), so a change
//! wakes only the streams it concerns.
//!
//! A stream opens with `Hello`; each `Subscribe` is answered at once with the authority's snapshot
//! (or `NotFound`), and again whenever a new snapshot changes what that authority names. Every
//! message carries a version that grows per stream, so it grows per authority too. A stream that
//! breaks the protocol gets a gRPC error and ends; other streams do not notice.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use strait_proto::discovery::v1::{self as pb, discovery_server::Discovery, watch_request::Request, watch_response};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::Instrument;

use crate::{
    authority,
    index::{self, Index, Resolution, Topic},
    metrics::Metrics,
    store::Reader,
};

/// Subscriptions one stream may hold. A proxy subscribes to the authorities its application talks
/// to, a few dozen in practice; the cap only stops a broken or hostile client from growing the
/// controller's memory without bound.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 10_000;

/// How long a new stream may wait before sending `Hello`. A proxy sends it right after connecting;
/// a stream that stays silent this long is not a proxy.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Responses queued per stream before the stream's task waits for the proxy to read. Snapshots are
/// full, so a slow reader does not need a deep queue: the newest state is sent when it catches up.
/// The queue holds boxes: tokio allocates a channel's slots 32 at a time, at creation, and 32
/// unboxed responses would be 6 KiB per stream (60 MiB at 10,000 proxies) that are nearly always
/// empty.
const RESPONSE_QUEUE: usize = 32;

type Queued = Box<Result<pb::WatchResponse, Status>>;

/// What tonic reads a stream's responses from: the queue, unboxed.
pub struct Responses(ReceiverStream<Queued>);

impl tokio_stream::Stream for Responses {
    type Item = Result<pb::WatchResponse, Status>;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.0).poll_next(cx).map(|queued| queued.map(|r| *r))
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_subscriptions: usize,
    pub hello_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS, hello_timeout: DEFAULT_HELLO_TIMEOUT }
    }
}

/// Why a stream ended early.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the first message of a stream must be Hello")]
    NoHello,
    #[error("no Hello within {0:?}")]
    HelloTimeout(Duration),
    #[error("Hello may be sent only once per stream")]
    HelloTwice,
    #[error("a WatchRequest carried no known message")]
    UnknownMessage,
    #[error("the request stream could not be read: {0}")]
    Receive(String),
    #[error("more than {0} subscriptions on one stream (the controller's --max-subscriptions)")]
    TooManySubscriptions(usize),
    #[error("the controller is shutting down")]
    ShuttingDown,
    #[error("the proxy went away")]
    ClientGone,
}

impl StreamError {
    /// The status the proxy receives, `None` when nobody is left to receive it.
    fn status(&self) -> Option<Status> {
        let msg = self.to_string();
        match self {
            Self::NoHello | Self::HelloTwice | Self::UnknownMessage | Self::Receive(_) => Some(Status::invalid_argument(msg)),
            Self::HelloTimeout(_) => Some(Status::deadline_exceeded(msg)),
            Self::TooManySubscriptions(_) => Some(Status::resource_exhausted(msg)),
            Self::ShuttingDown => Some(Status::unavailable(msg)),
            Self::ClientGone => None,
        }
    }

    /// Bounded label for `strait_discovery_stream_errors_total` (one of [`STREAM_ERROR_REASONS`]).
    fn reason(&self) -> &'static str {
        match self {
            Self::NoHello => "no_hello",
            Self::HelloTimeout(_) => "hello_timeout",
            Self::HelloTwice => "hello_twice",
            Self::UnknownMessage => "unknown_message",
            Self::Receive(_) => "receive",
            Self::TooManySubscriptions(_) => "too_many_subscriptions",
            Self::ShuttingDown => "shutting_down",
            Self::ClientGone => "client_gone",
        }
    }
}

/// Every value of `strait_discovery_stream_errors_total`'s `reason`, exported at 0 from the start so a
/// healthy controller shows no errors rather than no data.
pub const STREAM_ERROR_REASONS: [&str; 8] = [
    "no_hello",
    "hello_timeout",
    "hello_twice",
    "unknown_message",
    "receive",
    "too_many_subscriptions",
    "shutting_down",
    "client_gone",
];

/// The gRPC service. Cheap to clone; all state lives in the stream tasks and the store.
#[derive(Clone)]
pub struct DiscoveryService {
    reader: Reader,
    metrics: Arc<Metrics>,
    limits: Limits,
    /// Ends every stream with `Unavailable`.
    shutdown: CancellationToken,
}

impl DiscoveryService {
    pub fn new(reader: Reader, metrics: Arc<Metrics>, limits: Limits, shutdown: CancellationToken) -> Self {
        Self { reader, metrics, limits, shutdown }
    }
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type WatchStream = Responses;

    async fn watch(
        &self,
        request: tonic::Request<Streaming<pb::WatchRequest>>,
    ) -> Result<tonic::Response<Self::WatchStream>, Status> {
        let peer = request.remote_addr();
        let requests = request.into_inner();
        let (out, rx) = mpsc::channel(RESPONSE_QUEUE);
        let (id, waker) = self.reader.waker();
        let stream = ProxyStream {
            out,
            reader: self.reader.clone(),
            id,
            waker,
            watching: HashMap::new(),
            shutdown: self.shutdown.clone(),
            metrics: self.metrics.clone(),
            limits: self.limits,
            hello: pb::Hello::default(),
            subscriptions: HashMap::new(),
            inbound: InboundState::default(),
            last_version: 0,
        };
        let span = tracing::info_span!(
            "discovery",
            peer = peer.map(|p: SocketAddr| p.to_string()).unwrap_or_default(),
            namespace = tracing::field::Empty,
            workload = tracing::field::Empty,
        );
        tokio::spawn(stream.run(requests).instrument(span));
        Ok(tonic::Response::new(Responses(ReceiverStream::new(rx))))
    }
}

struct Subscription {
    /// The topic and port the authority names; `None` when it names nothing, now or later.
    target: Option<(Topic, u16)>,
    sent: Resolution,
    version: u64,
    acked: Option<u64>,
}

/// One proxy's stream.
struct ProxyStream {
    out: mpsc::Sender<Queued>,
    reader: Reader,
    /// This stream's id and waker in the store's topic table.
    id: u64,
    waker: Arc<Notify>,
    /// The topics this stream watches, with how many of its subscriptions (or its inbound policy)
    /// need each.
    watching: HashMap<Topic, usize>,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    limits: Limits,
    hello: pb::Hello,
    subscriptions: HashMap<String, Subscription>,
    inbound: InboundState,
    last_version: u64,
}

impl ProxyStream {
    async fn run(mut self, mut requests: Streaming<pb::WatchRequest>) {
        self.metrics.streams.inc();
        let result = self.serve(&mut requests).await;
        for topic in std::mem::take(&mut self.watching).into_keys() {
            self.reader.unwatch(&topic, self.id);
        }
        self.metrics.streams.dec();
        self.metrics.subscriptions.sub(gauge(self.subscriptions.len()));
        match result {
            Ok(()) => tracing::debug!("stream closed by the proxy"),
            Err(e) => {
                if !matches!(e, StreamError::ClientGone | StreamError::ShuttingDown) {
                    tracing::info!(error = %e, "discovery stream refused");
                }
                self.metrics.stream_errors.with_label_values(&[e.reason()]).inc();
                if let Some(status) = e.status() {
                    // The proxy may be gone already; there is nobody else to tell.
                    let _ = self.out.send(Box::new(Err(status))).await;
                }
            }
        }
    }

    async fn serve(&mut self, requests: &mut Streaming<pb::WatchRequest>) -> Result<(), StreamError> {
        let timeout = self.limits.hello_timeout;
        let first = tokio::select! {
            first = tokio::time::timeout(timeout, requests.message()) => first,
            _ = self.shutdown.cancelled() => return Err(StreamError::ShuttingDown),
        };
        let first = first
            .map_err(|_| StreamError::HelloTimeout(timeout))?
            .map_err(|s| StreamError::Receive(s.message().to_string()))?;
        match first.and_then(|r| r.request) {
            Some(Request::Hello(hello)) => self.hello = hello,
            Some(_) => return Err(StreamError::NoHello),
            None => return Ok(()),
        }
        let span = tracing::Span::current();
        span.record("namespace", self.hello.namespace.as_str());
        span.record("workload", self.hello.workload.as_str());
        tracing::debug!(proxy = %self.hello.proxy_version, "hello");

        // Answer nothing before the first full load: "not found" from an empty index would be a lie.
        let mut status = self.reader.status();
        tokio::select! {
            loaded = status.wait_for(|s| s.loaded) => { loaded.map_err(|_| StreamError::ShuttingDown)?; }
            _ = self.shutdown.cancelled() => return Err(StreamError::ShuttingDown),
            _ = self.out.closed() => return Err(StreamError::ClientGone),
        }
        drop(status);
        self.inbound.workload = index::workload_key(&self.hello.namespace, &self.hello.workload);
        self.watch(Topic::Workload(self.inbound.workload.clone()));
        let inbound = self.inbound.update(&self.reader.index(), &mut self.last_version);
        if let Some(response) = inbound {
            self.send(response).await?;
        }

        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(StreamError::ShuttingDown),
                _ = self.out.closed() => return Err(StreamError::ClientGone),
                message = requests.message() => match message {
                    Ok(Some(request)) => self.handle(request).await?,
                    Ok(None) => return Ok(()),
                    Err(status) => return Err(StreamError::Receive(status.message().to_string())),
                },
                _ = self.waker.notified() => self.push_changes().await?,
            }
        }
    }

    /// Starts watching a topic (registered once per stream, however many subscriptions need it).
    fn watch(&mut self, topic: Topic) {
        match self.watching.get_mut(&topic) {
            Some(n) => *n += 1,
            None => {
                self.reader.watch(&topic, self.id, &self.waker);
                self.watching.insert(topic, 1);
            }
        }
    }

    fn unwatch(&mut self, topic: &Topic) {
        if let Some(n) = self.watching.get_mut(topic) {
            *n -= 1;
            if *n == 0 {
                self.watching.remove(topic);
                self.reader.unwatch(topic, self.id);
            }
        }
    }

    async fn handle(&mut self, request: pb::WatchRequest) -> Result<(), StreamError> {
        match request.request {
            Some(Request::Hello(_)) => Err(StreamError::HelloTwice),
            Some(Request::Subscribe(pb::Subscribe { authority })) => self.subscribe(authority).await,
            Some(Request::Unsubscribe(pb::Unsubscribe { authority })) => {
                if let Some(sub) = self.subscriptions.remove(&authority) {
                    self.metrics.subscriptions.dec();
                    if let Some((topic, _)) = &sub.target {
                        self.unwatch(topic);
                    }
                }
                Ok(())
            }
            Some(Request::Ack(pb::Ack { authority, version })) => {
                self.metrics.acks.inc();
                match self.subscriptions.get_mut(&authority) {
                    Some(s) if version <= s.version => s.acked = Some(version),
                    _ if authority.is_empty() => {} // the inbound policy's version
                    _ => tracing::debug!(%authority, version, "ack for a version this stream never sent"),
                }
                Ok(())
            }
            Some(Request::Nack(pb::Nack { authority, version, reason })) => {
                self.metrics.nacks.inc();
                tracing::warn!(%authority, version, %reason, "proxy rejected an update");
                Ok(())
            }
            None => Err(StreamError::UnknownMessage),
        }
    }

    async fn subscribe(&mut self, authority: String) -> Result<(), StreamError> {
        let known = self.subscriptions.contains_key(&authority);
        if !known && self.subscriptions.len() >= self.limits.max_subscriptions {
            return Err(StreamError::TooManySubscriptions(self.limits.max_subscriptions));
        }
        let target = match authority::parse(&authority) {
            Ok(a) => index::topic(&a, self.reader.index().cluster_domain(), &self.hello.namespace),
            Err(e) => {
                tracing::debug!(%authority, error = %e, "subscription to an authority that cannot name a service");
                None
            }
        };
        // Watch before reading: a change published in between then wakes this stream again.
        if let Some((topic, _)) = &target {
            self.watch(topic.clone());
        }
        let sent = resolve(&self.reader.index(), target.as_ref());
        let version = self.next_version();
        let response = response(&authority, version, &sent);
        // A repeated Subscribe is answered again (the proxy may have lost its state); the count
        // of subscriptions does not change.
        match self.subscriptions.insert(authority, Subscription { target, sent, version, acked: None }) {
            None => self.metrics.subscriptions.inc(),
            Some(old) => {
                if let Some((topic, _)) = &old.target {
                    self.unwatch(topic);
                }
            }
        }
        self.send(response).await
    }

    /// Sends what changed since the last wake-up, and only that.
    async fn push_changes(&mut self) -> Result<(), StreamError> {
        let mut responses = Vec::new();
        let mut changed_at = Vec::new();
        {
            let index = self.reader.index();
            for (authority, sub) in &mut self.subscriptions {
                let now = resolve(&index, sub.target.as_ref());
                if now != sub.sent {
                    self.last_version += 1;
                    sub.version = self.last_version;
                    responses.push(response(authority, sub.version, &now));
                    if let Resolution::Service(s) = &now {
                        changed_at.push(s.changed_at());
                    }
                    sub.sent = now;
                }
            }
            responses.extend(self.inbound.update(&index, &mut self.last_version));
        }
        for r in responses {
            self.send(r).await?;
        }
        for at in changed_at {
            self.metrics.push_duration.observe(at.elapsed().as_secs_f64());
        }
        Ok(())
    }

    fn next_version(&mut self) -> u64 {
        self.last_version += 1;
        self.last_version
    }

    async fn send(&self, response: pb::WatchResponse) -> Result<(), StreamError> {
        let kind = match &response.response {
            Some(watch_response::Response::Service(_)) => "service",
            Some(watch_response::Response::NotFound(_)) => "not_found",
            Some(watch_response::Response::Inbound(_)) => "inbound",
            None => "none",
        };
        self.out.send(Box::new(Ok(response))).await.map_err(|_| StreamError::ClientGone)?;
        self.metrics.updates.with_label_values(&[kind]).inc();
        Ok(())
    }
}

/// The stream's workload and the inbound policy last sent to it.
#[derive(Default)]
struct InboundState {
    workload: crate::model::WorkloadRef,
    /// `None` before the first send; then the policy sent (`None` inside: the defaults).
    sent: Option<Option<Arc<pb::InboundPolicy>>>,
}

impl InboundState {
    /// The workload's inbound policy, when it differs from what was last sent.
    fn update(&mut self, index: &Index, last_version: &mut u64) -> Option<pb::WatchResponse> {
        let now = index.inbound_of(&self.workload);
        if self.sent.as_ref().is_some_and(|sent| sent.as_ref() == now) {
            return None;
        }
        self.sent = Some(now.cloned());
        *last_version += 1;
        let policy = now.map(|p| (**p).clone()).unwrap_or_default();
        Some(pb::WatchResponse {
            response: Some(watch_response::Response::Inbound(pb::InboundPolicy { version: *last_version, ..policy })),
        })
    }
}

fn resolve(index: &Index, target: Option<&(Topic, u16)>) -> Resolution {
    match target {
        Some((topic, port)) => index.resolve_topic(topic, *port),
        None => Resolution::NotFound(pb::not_found::Reason::DoesNotExist),
    }
}

fn response(authority: &str, version: u64, resolution: &Resolution) -> pb::WatchResponse {
    let response = match resolution {
        Resolution::Service(s) => watch_response::Response::Service(pb::ServiceUpdate {
            authority: authority.to_string(),
            version,
            service: Some(s.service().clone()),
        }),
        Resolution::NotFound(reason) => watch_response::Response::NotFound(pb::NotFound {
            authority: authority.to_string(),
            version,
            reason: *reason as i32,
        }),
    };
    pb::WatchResponse { response: Some(response) }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
