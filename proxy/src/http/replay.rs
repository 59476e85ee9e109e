//! A request body that can be sent again: it streams through to the first attempt while keeping a
//! copy of what passed (up to a cap), and a retry replays that copy and then continues with
//! whatever the client has not sent yet. Nothing waits for the whole body first, so a streaming
//! request (gRPC client or bidirectional streaming) flows as it would without retries.
//!
//! An attempt that is superseded by a newer one ends its body; only the newest attempt reads from
//! the client. Once more than the cap has passed, the copy is dropped and no further attempt is
//! possible.

use std::{
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame};

use super::Body;

pub struct Replay {
    cap: u64,
    state: Mutex<State>,
}

struct State {
    body: Option<Body>,
    frames: Vec<Bytes>,
    len: u64,
    over_cap: bool,
    trailers: Option<HeaderMap>,
    ended: bool,
    current: u32,
}

/// One attempt's view: where it is in the kept frames.
pub struct Cursor {
    replay: Arc<Replay>,
    id: u32,
    pos: usize,
    trailers_done: bool,
}

impl Replay {
    pub fn new(body: Body, cap: u64) -> Arc<Self> {
        Arc::new(Replay {
            cap,
            state: Mutex::new(State {
                body: Some(body),
                frames: Vec::new(),
                len: 0,
                over_cap: false,
                trailers: None,
                ended: false,
                current: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The body for the next attempt, or `None` when the body outgrew the cap and cannot be replayed.
    pub fn attempt(self: &Arc<Self>) -> Option<Body> {
        let mut s = self.lock();
        if s.over_cap {
            return None;
        }
        s.current += 1;
        Some(Body::Replay { cursor: Cursor { replay: self.clone(), id: s.current, pos: 0, trailers_done: false } })
    }
}

impl Cursor {
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut s = self.replay.lock();
        if s.current != self.id {
            return Poll::Ready(None);
        }
        if self.pos < s.frames.len() {
            self.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(s.frames[self.pos - 1].clone()))));
        }
        if s.ended {
            if !self.trailers_done {
                self.trailers_done = true;
                if let Some(t) = s.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        }
        let Some(body) = s.body.as_mut() else { return Poll::Ready(None) };
        match std::pin::Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if !s.over_cap {
                        if s.len + n > self.replay.cap {
                            s.over_cap = true;
                            s.frames = Vec::new();
                        } else {
                            s.len += n;
                            s.frames.push(data.clone());
                            self.pos += 1;
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    s.trailers = Some(t.clone());
                    s.ended = true;
                    self.trailers_done = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                s.ended = true;
                self.trailers_done = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }

    pub fn is_end_stream(&self) -> bool {
        let s = self.replay.lock();
        s.current != self.id || (s.ended && self.pos >= s.frames.len() && (self.trailers_done || s.trailers.is_none()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn replays_what_passed_then_continues() {
        let r = Replay::new(Body::from_bytes(Bytes::from_static(b"hello")), 64);
        let first = r.attempt().unwrap();
        assert_eq!(first.collect().await.unwrap().to_bytes(), "hello");
        let second = r.attempt().unwrap();
        assert_eq!(second.collect().await.unwrap().to_bytes(), "hello");
    }

    #[tokio::test]
    async fn an_unread_body_is_read_by_the_retry() {
        let r = Replay::new(Body::from_bytes(Bytes::from_static(b"never sent")), 64);
        drop(r.attempt().unwrap());
        assert_eq!(r.attempt().unwrap().collect().await.unwrap().to_bytes(), "never sent");
    }

    #[tokio::test]
    async fn over_the_cap_no_more_attempts() {
        let r = Replay::new(Body::from_bytes(Bytes::from(vec![1u8; 100])), 64);
        let first = r.attempt().unwrap();
        assert_eq!(first.collect().await.unwrap().to_bytes().len(), 100);
        assert!(r.attempt().is_none());
    }

    #[tokio::test]
    async fn a_superseded_attempt_stops_reading() {
        let r = Replay::new(Body::from_bytes(Bytes::from_static(b"x")), 64);
        let old = r.attempt().unwrap();
        let new = r.attempt().unwrap();
        assert_eq!(old.collect().await.unwrap().to_bytes(), "");
        assert_eq!(new.collect().await.unwrap().to_bytes(), "x");
    }
}
