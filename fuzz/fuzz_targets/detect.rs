//! Protocol detection over the first bytes a client sends (any bytes, any split into reads).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncReadExt;

fuzz_target!(|data: &[u8]| {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        // The first byte chooses how the rest is split into reads, so short reads are covered.
        let (chunk, rest) = match data.split_first() {
            Some((c, rest)) => (usize::from(*c % 16) + 1, rest),
            None => (1, data),
        };
        let mut b = tokio_test_io(rest, chunk);
        let Ok((_, mut prefixed)) =
            strait_proxy::detect::detect(&mut b, Duration::from_secs(1)).await
        else {
            return;
        };
        // Whatever was read for detection is given back first: the stream is unchanged.
        let mut all = Vec::new();
        let _ = prefixed.read_to_end(&mut all).await;
        assert_eq!(all, rest, "detection must give back every byte it read");
    });
});

/// A reader that returns `data` in reads of at most `chunk` bytes, then end of stream.
fn tokio_test_io(data: &[u8], chunk: usize) -> Chunked<'_> {
    Chunked { data, chunk }
}

struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl tokio::io::AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        let (head, tail) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = tail;
        std::task::Poll::Ready(Ok(()))
    }
}
