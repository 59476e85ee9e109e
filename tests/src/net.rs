//! Loopback ports and readiness waits.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago: binds port 0, reads the port the kernel chose
/// and closes the socket.
///
/// There is a small race: another process (or a parallel test) may take the port between this call
/// and the bind of whoever uses it. The kernel hands out ephemeral ports in rotation, so a clash is
/// rare; where a program can report the address it bound (such as `strait-testsrv --listen
/// 127.0.0.1:0`), prefer that.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// `127.0.0.1:<free_port()>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Retries connecting to `addr` until it accepts or `timeout` passes (error `TimedOut` carrying the
/// last connect error).
pub async fn wait_for_tcp(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    retry_until(&format!("{addr} not accepting"), timeout, || async move {
        match tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connect timed out".to_owned()),
        }
    })
    .await
}

/// Runs `attempt` every 20 ms until it succeeds or `timeout` passes; then fails with `TimedOut`,
/// `what` and the last attempt's error. Makes at least one attempt.
pub async fn retry_until<F, Fut>(what: &str, timeout: Duration, mut attempt: F) -> io::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let failure = match attempt().await {
            Ok(()) => return Ok(()),
            Err(failure) => failure,
        };
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} after {timeout:?}: {failure}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
