//! The transport header: the first bytes a client proxy writes on a connection to a peer proxy
//! (inside mTLS once identity exists), telling the peer which local port of its workload the
//! connection is for and how the bytes that follow are framed. The inbound side therefore needs no
//! per-port configuration, and forwards only to its own workload.
//!
//! Wire format: 8 bytes magic `strait\0\x01`, u16 big-endian body length, then the body:
//! u16 port, u8 protocol (1 = HTTP/2 between proxies, 2 = HTTP/1 for upgrades, 3 = opaque bytes).

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const MAGIC: &[u8; 8] = b"strait\0\x01";
/// Far above what the current body needs (3 bytes), small enough that garbage cannot make us buffer.
const MAX_BODY: usize = 512;

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Requests multiplexed over one HTTP/2 connection (HTTP/1 requests travel upgraded).
    Http2,
    /// One HTTP/1 connection, used for requests that upgrade (WebSocket) and so cannot be multiplexed.
    Http1,
    /// Opaque bytes.
    Opaque,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("not a transport header")]
    BadMagic,
    #[error("transport header too long ({0} bytes)")]
    TooLong(usize),
    #[error("transport header is malformed")]
    Malformed,
    #[error("reading the transport header: {0}")]
    Io(#[from] std::io::Error),
}

impl Header {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(MAGIC.len() + 2 + 3);
        b.put_slice(MAGIC);
        b.put_u16(3);
        b.put_u16(self.port);
        b.put_u8(match self.protocol {
            Protocol::Http2 => 1,
            Protocol::Http1 => 2,
            Protocol::Opaque => 3,
        });
        b.freeze()
    }

    /// Reads a header from the start of `io`. Fails on the first byte that cannot belong to one.
    pub async fn read<T: AsyncRead + Unpin>(io: &mut T) -> Result<Header, HeaderError> {
        let mut magic = [0u8; 8];
        let mut got = 0;
        while got < magic.len() {
            let n = io.read(&mut magic[got..]).await?;
            if n == 0 || magic[..got + n] != MAGIC[..got + n] {
                return Err(HeaderError::BadMagic);
            }
            got += n;
        }
        let len = io.read_u16().await? as usize;
        if len > MAX_BODY {
            return Err(HeaderError::TooLong(len));
        }
        if len < 3 {
            return Err(HeaderError::Malformed);
        }
        let mut body = [0u8; MAX_BODY];
        io.read_exact(&mut body[..len]).await?;
        let port = u16::from_be_bytes([body[0], body[1]]);
        let protocol = match body[2] {
            1 => Protocol::Http2,
            2 => Protocol::Http1,
            3 => Protocol::Opaque,
            _ => return Err(HeaderError::Malformed),
        };
        if port == 0 {
            return Err(HeaderError::Malformed);
        }
        Ok(Header { port, protocol })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trips() {
        for protocol in [Protocol::Http2, Protocol::Http1, Protocol::Opaque] {
            let h = Header { port: 8080, protocol };
            let bytes = h.encode();
            let mut r: &[u8] = &bytes;
            assert_eq!(Header::read(&mut r).await.unwrap(), h);
        }
    }

    #[tokio::test]
    async fn rejects_garbage_early() {
        let mut r: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        assert!(matches!(Header::read(&mut r).await, Err(HeaderError::BadMagic)));
        let mut long = MAGIC.to_vec();
        long.extend_from_slice(&[0xff, 0xff]);
        let mut r: &[u8] = &long;
        assert!(matches!(Header::read(&mut r).await, Err(HeaderError::TooLong(_))));
    }
}
