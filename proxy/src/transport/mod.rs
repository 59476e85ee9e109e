//! Byte-level plumbing shared by both directions: replaying peeked bytes, counting bytes,
//! the original destination of a redirected connection, the proxy-to-proxy transport header, and
//! bidirectional copy for opaque TCP.

pub mod counted;
pub mod header;
pub mod orig_dst;
pub mod prefixed;
pub mod tcp;

pub use counted::Counted;
pub use prefixed::Prefixed;

/// Any byte stream a connection can be served over (TCP, TLS, an upgraded HTTP connection).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A stream whose concrete type is decided per connection (plain or TLS), boxed once per connection.
pub type BoxedIo = Box<dyn Io>;
