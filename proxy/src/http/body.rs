//! One body type for every request and response the proxy forwards or produces, so nothing is
//! boxed per request: a streamed hyper body, a small fixed one (error responses), a body kept
//! for retries, or a gRPC response body whose metrics wait for its trailers.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

pin_project_lite::pin_project! {
    #[project = BodyProj]
    pub enum Body {
        Incoming { #[pin] body: hyper::body::Incoming },
        Fixed { data: Option<Bytes> },
        Replay { cursor: super::replay::Cursor },
        /// A gRPC response with its status in trailers: recorded when they pass.
        Trailed { #[pin] body: hyper::body::Incoming, metrics: super::metrics::Deferred },
    }
}

impl Body {
    pub fn empty() -> Self {
        Body::Fixed { data: None }
    }

    pub fn from_static(s: &'static str) -> Self {
        Body::Fixed { data: Some(Bytes::from_static(s.as_bytes())) }
    }

    pub fn from_bytes(b: Bytes) -> Self {
        Body::Fixed { data: (!b.is_empty()).then_some(b) }
    }
}

impl From<hyper::body::Incoming> for Body {
    fn from(body: hyper::body::Incoming) -> Self {
        Body::Incoming { body }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            BodyProj::Incoming { body } => body.poll_frame(cx),
            BodyProj::Fixed { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            BodyProj::Replay { cursor } => cursor.poll_frame(cx),
            BodyProj::Trailed { body, metrics } => {
                let polled = body.poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(trailers) = frame.trailers_ref() {
                            // Trailers without a status are a broken call, as gRPC clients see it.
                            let status = trailers.get("grpc-status").and_then(|v| v.to_str().ok());
                            metrics.finish(status, status.is_none());
                        }
                    }
                    Poll::Ready(Some(Err(_))) => metrics.finish(None, true),
                    // The end without any trailers: no status, a broken call.
                    Poll::Ready(None) => metrics.finish(None, true),
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Incoming { body } => body.is_end_stream(),
            Body::Fixed { data } => data.is_none(),
            Body::Replay { cursor } => cursor.is_end_stream(),
            Body::Trailed { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Incoming { body } => body.size_hint(),
            Body::Fixed { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Body::Replay { .. } => SizeHint::default(),
            Body::Trailed { body, .. } => body.size_hint(),
        }
    }
}
