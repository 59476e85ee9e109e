//! Counts the bytes of an accepted connection into the TCP metrics as they flow, so long-lived
//! connections show up while they live, not only when they close.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::Metrics;

pin_project_lite::pin_project! {
    pub struct Counted<T> {
        #[pin]
        io: T,
        sent: IntCounter,
        received: IntCounter,
        closed: IntCounter,
        open: IntGauge,
    }

    impl<T> PinnedDrop for Counted<T> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            this.closed.inc();
            this.open.dec();
        }
    }
}

impl<T> Counted<T> {
    /// Counts the connection as opened now and closed when this is dropped.
    pub fn new(io: T, metrics: &Metrics, direction: &str) -> Self {
        metrics.tcp_opened.with_label_values(&[direction]).inc();
        let open = metrics.tcp_open.with_label_values(&[direction]);
        open.inc();
        Counted {
            io,
            sent: metrics.tcp_sent.with_label_values(&[direction]),
            received: metrics.tcp_received.with_label_values(&[direction]),
            closed: metrics.tcp_closed.with_label_values(&[direction]),
            open,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncRead> AsyncRead for Counted<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.io.poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.received.inc_by(n as u64);
        }
        r
    }
}

impl<T: AsyncWrite> AsyncWrite for Counted<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.io.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.sent.inc_by(n as u64);
        }
        r
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.io.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.sent.inc_by(n as u64);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}
