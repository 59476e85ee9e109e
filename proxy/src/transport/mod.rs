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
///
/// At most `limit` connections are served at once; past it a new connection is closed as soon as it
/// is accepted (rather than left in the backlog, where the client cannot tell a full proxy from a
/// slow one) and counted in `strait_connections_refused_total{listener=direction}`.
pub async fn accept_until_drained<F, Fut>(
    listener: tokio::net::TcpListener,
    drain: &crate::drain::Drain,
    direction: &'static str,
    limit: &ConnectionLimit,
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
                let Some(permit) = limit.admit(tcp, peer) else { continue };
                let conn = handle(permit.tcp, peer, drain.watch());
                let slot = permit.slot;
                tokio::spawn(async move {
                    conn.await;
                    drop(slot);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off briefly rather than spin.
                tracing::warn!(error = %e, direction, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// A listener's cap on concurrent connections (a semaphore; one permit per accepted connection).
#[derive(Clone)]
pub struct ConnectionLimit {
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    listener: &'static str,
    refused: prometheus::IntCounter,
}

/// An admitted connection and the slot it holds until it is dropped.
pub struct Admitted {
    pub tcp: tokio::net::TcpStream,
    pub slot: tokio::sync::OwnedSemaphorePermit,
}

impl ConnectionLimit {
    /// `listener` names it in `strait_connections_refused_total`.
    pub fn new(max: usize, listener: &'static str, metrics: &crate::metrics::Metrics) -> Self {
        ConnectionLimit {
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(max.min(tokio::sync::Semaphore::MAX_PERMITS))),
            listener,
            refused: metrics.connections_refused.with_label_values(&[listener]),
        }
    }

    /// The connection with its slot, or `None` (the connection closed, counted) when all are taken.
    pub fn admit(&self, tcp: tokio::net::TcpStream, peer: std::net::SocketAddr) -> Option<Admitted> {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Some(Admitted { tcp, slot }),
            Err(_) => {
                self.refused.inc();
                tracing::debug!(%peer, listener = self.listener, "connection limit reached; closing");
                None
            }
        }
    }
}
