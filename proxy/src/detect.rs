//! Protocol detection: a bounded first read, with a timeout, classifies a connection as HTTP/2
//! (client preface), HTTP/1 (a request line's method), TLS (a ClientHello record) or opaque.
//!
//! Written by hand: no crate does this small, latency-critical peek, and it must never stall a
//! server-speaks-first protocol longer than the timeout.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::transport::Prefixed;

/// Enough for the 24-byte HTTP/2 preface, the longest HTTP method, or a TLS record header; whatever
/// else arrives in the same read is replayed, so this bounds memory, not correctness.
const DETECT_BUFFER: usize = 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest standard or extension method we expect on a request line (e.g. `VERSION-CONTROL`).
const MAX_METHOD: usize = 24;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Tls,
    Opaque,
    /// The client sent nothing before the timeout (a server-speaks-first protocol, or an idle client).
    Timeout,
    /// The client closed before sending anything.
    Closed,
}

impl Detected {
    pub fn as_str(&self) -> &'static str {
        match self {
            Detected::Http1 => "http1",
            Detected::Http2 => "http2",
            Detected::Tls => "tls",
            Detected::Opaque => "opaque",
            Detected::Timeout => "timeout",
            Detected::Closed => "closed",
        }
    }
}

enum Verdict {
    Done(Detected),
    NeedMore,
}

fn classify(buf: &[u8]) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    // HTTP/2 preface: every byte so far must match.
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() { Verdict::Done(Detected::Http2) } else { Verdict::NeedMore };
    }
    // TLS record: handshake (22), version major 3.
    if buf[0] == 0x16 {
        if buf.len() < 3 {
            return Verdict::NeedMore;
        }
        return Verdict::Done(if buf[1] == 3 { Detected::Tls } else { Detected::Opaque });
    }
    // HTTP/1: a method token (upper-case letters, '-' or '_') followed by a space.
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'A'..=b'Z' | b'-' | b'_' if i < MAX_METHOD => continue,
            b' ' if i > 0 => return Verdict::Done(Detected::Http1),
            _ => return Verdict::Done(Detected::Opaque),
        }
    }
    if buf.len() >= MAX_METHOD { Verdict::Done(Detected::Opaque) } else { Verdict::NeedMore }
}

/// Reads the first bytes of `io` and classifies them. The bytes read are given back inside the
/// returned stream, so whatever handles the connection next sees it from its first byte.
pub async fn detect<T>(mut io: T, timeout: Duration) -> std::io::Result<(Detected, Prefixed<T>)>
where
    T: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(DETECT_BUFFER);
    let deadline = tokio::time::Instant::now() + timeout;
    let result = loop {
        if buf.len() >= DETECT_BUFFER {
            break Detected::Opaque;
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_) => break if buf.is_empty() { Detected::Timeout } else { Detected::Opaque },
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => break if buf.is_empty() { Detected::Closed } else { Detected::Opaque },
            Ok(Ok(_)) => match classify(&buf) {
                Verdict::Done(d) => break d,
                Verdict::NeedMore => continue,
            },
        }
    };
    Ok((result, Prefixed::new(Bytes::from(buf), io)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn verdict(b: &[u8]) -> Option<Detected> {
        match classify(b) {
            Verdict::Done(d) => Some(d),
            Verdict::NeedMore => None,
        }
    }

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(verdict(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(verdict(b"CONNECT a:1 HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(verdict(b"GE"), None);
        assert_eq!(verdict(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(verdict(&H2_PREFACE[..10]), None);
        assert_eq!(verdict(&[0x16, 3, 1, 0, 5]), Some(Detected::Tls));
        assert_eq!(verdict(b"\x00\x01garbage"), Some(Detected::Opaque));
        assert_eq!(verdict(b"get / HTTP/1.1"), Some(Detected::Opaque));
        assert_eq!(verdict(b"SSH-2.0-OpenSSH"), Some(Detected::Opaque));
    }

    #[tokio::test]
    async fn split_preface_and_replay() {
        let (mut client, server) = tokio::io::duplex(64);
        let t = tokio::spawn(async move {
            client.write_all(&H2_PREFACE[..5]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            client.write_all(&H2_PREFACE[5..]).await.unwrap();
            client
        });
        let (d, mut io) = detect(server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(d, Detected::Http2);
        let mut got = vec![0u8; H2_PREFACE.len()];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(got, H2_PREFACE);
        drop(t);
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let (_client, server) = tokio::io::duplex(64);
        let (d, _) = detect(server, Duration::from_millis(20)).await.unwrap();
        assert_eq!(d, Detected::Timeout);
    }
}
