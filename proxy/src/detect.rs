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
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Tls,
    Opaque,
    /// No verdict before the timeout: the client sent nothing (a server-speaks-first protocol, or an
    /// idle client), or too little to tell (a slow client, or one pausing on purpose).
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

/// The verdict on the bytes read so far, or `None` while they could still be any protocol.
///
/// HTTP/1 is recognized as HTTP servers read it: leading empty lines are skipped (RFC 9112 §2.2)
/// and the method is any token (RFC 9110 §5.6.2: letters of either case, digits and
/// ``!#$%&'*+-.^_`|~``), however long, followed by a space. Anything an application's HTTP parser
/// would take as a request must be detected as HTTP here: the inbound side parses HTTP and removes
/// the identity headers a client wrote, and passes everything else through untouched.
pub fn verdict(buf: &[u8]) -> Option<Detected> {
    let verdict = classify(buf);
    if verdict.is_none() && buf.len() >= DETECT_BUFFER {
        return Some(Detected::Opaque);
    }
    verdict
}

fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    // HTTP/2 preface: every byte so far must match.
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Detected::Http2);
    }
    // TLS record: handshake (22), version major 3.
    if buf[0] == 0x16 {
        if buf.len() < 3 {
            return None;
        }
        return Some(if buf[1] == 3 { Detected::Tls } else { Detected::Opaque });
    }
    // HTTP/1: empty lines, then a method token followed by a space.
    let start = buf.iter().position(|b| !matches!(b, b'\r' | b'\n'))?;
    for (i, &b) in buf[start..].iter().enumerate() {
        match b {
            b' ' if i > 0 => return Some(Detected::Http1),
            b if is_tchar(b) => continue,
            _ => return Some(Detected::Opaque),
        }
    }
    None
}

/// A character of an HTTP token (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
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
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_) => break Detected::Timeout,
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => break if buf.is_empty() { Detected::Closed } else { Detected::Opaque },
            Ok(Ok(_)) => match verdict(&buf) {
                Some(d) => break d,
                None => continue,
            },
        }
    };
    Ok((result, Prefixed::new(Bytes::from(buf), io)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(verdict(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(verdict(b"CONNECT a:1 HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(verdict(b"GE"), None);
        assert_eq!(verdict(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(verdict(&H2_PREFACE[..10]), None);
        assert_eq!(verdict(&[0x16, 3, 1, 0, 5]), Some(Detected::Tls));
        assert_eq!(verdict(b"\x00\x01garbage"), Some(Detected::Opaque));
        assert_eq!(verdict(b"SSH-2.0-OpenSSH_9.2\r\n"), Some(Detected::Opaque));
        assert_eq!(verdict(b"SSH-2.0-OpenSSH"), None, "a token so far: could still be a method");
    }

    #[test]
    fn whatever_an_http_parser_takes_as_a_request_is_http() {
        // Lower-case and extension methods, however long, and leading empty lines.
        assert_eq!(verdict(b"get / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(verdict(b"\r\n\r\nGET / HTTP/1.1\r\n"), Some(Detected::Http1));
        let long = format!("{} / HTTP/1.1\r\n", "X".repeat(200));
        assert_eq!(verdict(long.as_bytes()), Some(Detected::Http1));
        assert_eq!(verdict(b"M-SEARCH * HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(verdict(b"\r\n"), None);
        // A full buffer without a verdict is opaque.
        assert_eq!(verdict(&[b'A'; DETECT_BUFFER]), Some(Detected::Opaque));
        assert_eq!(verdict(b" GET / HTTP/1.1"), Some(Detected::Opaque));
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
    async fn a_client_that_pauses_mid_method_times_out_rather_than_being_opaque() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"GE").await.unwrap();
        let (d, _) = detect(server, Duration::from_millis(20)).await.unwrap();
        assert_eq!(d, Detected::Timeout);
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let (_client, server) = tokio::io::duplex(64);
        let (d, _) = detect(server, Duration::from_millis(20)).await.unwrap();
        assert_eq!(d, Detected::Timeout);
    }
}
