//! Byte-level plumbing shared by both directions: replaying peeked bytes, counting bytes,
//! the original destination of a redirected connection, the proxy-to-proxy transport header, and
//! bidirectional copy for opaque TCP.

pub mod counted;
pub mod header;
pub mod orig_dst;
pub mod own;
pub mod prefixed;
pub mod tcp;

pub use counted::Counted;
pub use prefixed::Prefixed;

/// Any byte stream a connection can be served over (TCP, TLS, an upgraded HTTP connection).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A stream whose concrete type is decided per connection (plain or TLS), boxed once per connection.
pub type BoxedIo = Box<dyn Io>;

/// One accept loop for both listeners: accepts connections on `listener` until the drain closes
/// the listeners — through the accept period after SIGTERM too, so clients that still use this
/// endpoint are served rather than refused — handing each to `handle` on its own task,
/// registered with the drain so shutdown waits for it. The listener is dropped (closed) on return.
pub async fn accept_until_drained<F, Fut>(
    listener: tokio::net::TcpListener,
    drain: &crate::drain::Drain,
    direction: &'static str,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, std::net::SocketAddr, crate::drain::Watch) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = drain.closing() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                tokio::spawn(handle(tcp, peer, drain.watch()));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off briefly rather than spin.
                tracing::warn!(error = %e, direction, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}
