//! The test application servers run by `strait-testsrv`, one mode per process. They can also be run
//! in-process by a test: each `serve` takes a bound listener and runs until the task is dropped.
//!
//! A server never panics on a connection's behalf: per-connection errors are logged to stderr and end
//! that connection only.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

mod body;
pub mod grpc;
pub mod http;
pub mod tcp;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Accepts connections forever, handling each one in its own task. Accept errors (such as running
/// out of file descriptors) are logged and retried after a short pause.
pub(crate) async fn accept_loop<F, Fut>(listener: TcpListener, mut handle: F) -> io::Result<()>
where
    F: FnMut(TcpStream) -> Fut,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let _ = stream.set_nodelay(true);
        let connection = handle(stream);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}
