//! `strait-proxy await-ready`: waits until the proxy in this pod answers `GET /ready` with 200.
//! The injector runs it as the proxy container's postStart hook on clusters without native
//! sidecars (Kubernetes < 1.29): the kubelet starts the next container only once the hook exits, so
//! the app never sends traffic before the proxy can carry it. Blocking std I/O, no runtime: it
//! runs once, for a few seconds at most.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

pub const USAGE: &str = "\
usage: strait-proxy await-ready [options]

Waits until the proxy's admin endpoint answers GET /ready with 200; exits 0 then, 1 on timeout.

options:
  --addr ADDR        the admin listener (default 127.0.0.1:7191)
  --timeout DURATION how long to wait, e.g. 30s or 2m (default 120s)
  -h, --help         this text
";

pub const DEFAULT_ADDR: &str = "127.0.0.1:7191";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(200);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    pub addr: SocketAddr,
    pub timeout: Duration,
}

pub fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut addr = DEFAULT_ADDR.to_string();
    let mut timeout = DEFAULT_TIMEOUT;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        if matches!(flag, "-h" | "--help") {
            return Ok(None);
        }
        if !matches!(flag, "--addr" | "--timeout") {
            return Err(format!("unknown argument {arg:?}"));
        }
        let value = inline.or_else(|| it.next().cloned()).ok_or_else(|| format!("{flag} needs a value"))?;
        if flag == "--addr" {
            addr = value;
        } else {
            timeout = crate::config::parse_duration(&value)
                .ok_or_else(|| format!("--timeout {value:?} is not a duration"))?;
        }
    }
    let addr = addr.parse().map_err(|_| format!("--addr {addr:?} is not an ip:port socket address"))?;
    Ok(Some(Options { addr, timeout }))
}

/// One `GET /ready`: the status code, if the proxy answered.
fn status(addr: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT).ok()?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT)).ok()?;
    s.set_write_timeout(Some(REQUEST_TIMEOUT)).ok()?;
    s.write_all(format!("GET /ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
        if buf[..n].contains(&b'\n') {
            break;
        }
    }
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// Polls until ready (true) or the timeout passes (false).
pub fn wait(opts: &Options) -> bool {
    let deadline = Instant::now() + opts.timeout;
    loop {
        if status(opts.addr) == Some(200) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

/// Runs `strait-proxy await-ready` with the arguments after it; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let opts = match parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return 0;
        }
        Err(e) => {
            eprintln!("strait-proxy await-ready: {e}\n\n{USAGE}");
            return 2;
        }
    };
    if wait(&opts) {
        println!("strait-proxy await-ready: the proxy is ready");
        0
    } else {
        eprintln!("strait-proxy await-ready: http://{}/ready did not answer 200 within {:?}", opts.addr, opts.timeout);
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn p(args: &[&str]) -> Result<Option<Options>, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn arguments() {
        assert_eq!(p(&[]).unwrap(), Some(Options { addr: DEFAULT_ADDR.parse().unwrap(), timeout: DEFAULT_TIMEOUT }));
        let o = p(&["--addr=127.0.0.1:1", "--timeout", "2s"]).unwrap().unwrap();
        assert_eq!((o.addr.port(), o.timeout), (1, Duration::from_secs(2)));
        assert_eq!(p(&["--help"]).unwrap(), None);
        assert!(p(&["--timeout", "soon"]).is_err());
        assert!(p(&["--bogus"]).is_err());
        assert!(p(&["--addr"]).is_err());
    }

    #[test]
    fn waits_for_a_200_and_gives_up_at_the_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for (i, conn) in l.incoming().take(3).enumerate() {
                let mut c = conn.unwrap();
                let mut buf = [0u8; 256];
                let _ = c.read(&mut buf);
                let status = if i < 2 { "503 Service Unavailable" } else { "200 OK" };
                let _ = c.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes());
            }
        });
        assert!(wait(&Options { addr, timeout: Duration::from_secs(30) }));
        server.join().unwrap();
        // Nobody listens there any more.
        assert!(!wait(&Options { addr, timeout: Duration::from_millis(300) }));
    }
}
