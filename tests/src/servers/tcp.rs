//! Plain TCP test servers: `banner` (server speaks first) and `tcp-echo`.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::{BoxError, accept_loop};

/// Longest line the banner server reads; a longer one is cut into several.
const MAX_LINE: u64 = 64 * 1024;

/// `strait-testsrv banner`: on accept writes `220 NAME ready\r\n` at once, then answers each line
/// with `echo: <line>\r\n`; closes on a `QUIT` line or at the client's EOF.
pub async fn serve_banner(listener: TcpListener, name: &str) -> io::Result<()> {
    let greeting = format!("220 {name} ready\r\n");
    accept_loop(listener, move |stream| banner(stream, greeting.clone())).await
}

async fn banner(stream: TcpStream, greeting: String) -> Result<(), BoxError> {
    let (read, mut write) = stream.into_split();
    write.write_all(greeting.as_bytes()).await?;
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        if (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await?
            == 0
        {
            break;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text == b"QUIT" {
            break;
        }
        let mut answer = Vec::with_capacity(text.len() + 8);
        answer.extend_from_slice(b"echo: ");
        answer.extend_from_slice(text);
        answer.extend_from_slice(b"\r\n");
        write.write_all(&answer).await?;
    }
    write.shutdown().await?;
    Ok(())
}

/// `strait-testsrv tcp-echo`: echoes everything until the client's EOF, then shuts down its own
/// write side (so a half-closing client still reads the whole echo).
pub async fn serve_echo(listener: TcpListener) -> io::Result<()> {
    accept_loop(listener, echo).await
}

async fn echo(mut stream: TcpStream) -> Result<(), BoxError> {
    let (mut read, mut write) = stream.split();
    tokio::io::copy(&mut read, &mut write).await?;
    write.shutdown().await?;
    Ok(())
}
