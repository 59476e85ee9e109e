//! Response bodies of the HTTP test server.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Body, Frame, SizeHint};

use super::BoxError;

pub type Boxed = BoxBody<Bytes, BoxError>;

pub fn full(data: impl Into<Bytes>) -> Boxed {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body made of a stream of frames: no size hint, so HTTP/1.1 sends it chunked.
pub fn streamed<S>(frames: S) -> Boxed
where
    S: futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + Sync + 'static,
{
    StreamBody::new(frames).boxed()
}

/// The byte at `offset` of every `/bytes/N` response.
pub fn pattern_byte(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// `len` bytes of [`pattern_byte`], generated as they are sent, with an exact size hint.
pub struct PatternBody {
    offset: u64,
    len: u64,
}

impl PatternBody {
    const CHUNK: u64 = 16 * 1024;

    pub fn new(len: u64) -> PatternBody {
        PatternBody { offset: 0, len }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.offset >= this.len {
            return Poll::Ready(None);
        }
        let end = this.len.min(this.offset + Self::CHUNK);
        let chunk: Vec<u8> = (this.offset..end).map(pattern_byte).collect();
        this.offset = end;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.offset)
    }
}

/// Counts one cancelled request when dropped before [`Completion::finish`]: the request's future
/// was dropped (client gone while the handler waited) or its response body was dropped before its
/// end (client gone mid-response).
pub struct Completion {
    cancelled: Arc<AtomicU64>,
    finished: AtomicBool,
}

impl Completion {
    pub fn new(cancelled: Arc<AtomicU64>) -> Completion {
        Completion {
            cancelled,
            finished: AtomicBool::new(false),
        }
    }

    pub fn finish(&self) {
        self.finished.store(true, Ordering::Relaxed);
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if !self.finished.load(Ordering::Relaxed) {
            self.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A response body that reports to its request's [`Completion`] once it has been sent to the end.
pub struct Tracked {
    inner: Boxed,
    completion: Completion,
}

impl Tracked {
    pub fn new(inner: Boxed, completion: Completion) -> Tracked {
        Tracked { inner, completion }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.completion.finish(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.completion.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.completion.finish();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
