//! Ready-to-use processes: test application servers and Strait proxies on loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::net::free_addr;
use crate::process::{Process, bin};

/// How long a fixture may take to become ready.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts `strait-testsrv <mode> --listen 127.0.0.1:0 --name <name>` (modes: `http`, `grpc`,
/// `banner`, `tcp-echo`) and returns it with the address it reports as bound (race-free: the server
/// binds port 0 itself). Its log goes to a temporary directory that it owns.
pub async fn testsrv(mode: &str, name: &str) -> (Process, SocketAddr) {
    let process =
        Process::spawn_owning_dir(name, bin("strait-testsrv"), &testsrv_args(mode, name), &[]);
    wait_listening(process).await
}

/// Like [`testsrv`], logging to `<log_dir>/<name>.log`.
pub async fn testsrv_in(log_dir: &Path, mode: &str, name: &str) -> (Process, SocketAddr) {
    let process = Process::spawn(
        name,
        bin("strait-testsrv"),
        &testsrv_args(mode, name),
        &[],
        log_dir,
    );
    wait_listening(process).await
}

fn testsrv_args<'a>(mode: &'a str, name: &'a str) -> [&'a str; 5] {
    [mode, "--listen", "127.0.0.1:0", "--name", name]
}

async fn wait_listening(mut process: Process) -> (Process, SocketAddr) {
    let line = process
        .wait_for_log_line("listening ", STARTUP_TIMEOUT)
        .await;
    let addr = line
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: bad listening address {line:?}: {e}", process.name()));
    (process, addr)
}

/// A running `strait-proxy` and its three listeners.
#[derive(Debug)]
pub struct ProxyHandle {
    pub process: Process,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

impl ProxyHandle {
    /// Its metrics, scraped from the admin port.
    pub async fn metrics(&self) -> String {
        crate::metrics::scrape(self.admin).await
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// Starts `strait-proxy` with `STRAIT_OUTBOUND_ADDR`, `STRAIT_INBOUND_ADDR` and `STRAIT_ADMIN_ADDR` on
/// free loopback ports (unless `env` sets them) plus `env` (e.g. `STRAIT_DISCOVERY_FILE`,
/// `STRAIT_NAMESPACE`, `STRAIT_WORKLOAD`, `STRAIT_LOG`; `STRAIT_LOG` defaults to `info`), and waits
/// until `GET http://<admin>/ready` answers 200. Panics with the proxy's log if it does not within
/// 30 s. If it exits because a port was taken meanwhile (see [`crate::net::free_port`]), it is
/// started again on other ports.
pub async fn proxy(env: &[(&str, &str)]) -> ProxyHandle {
    proxy_named("proxy", env).await
}

/// [`proxy`] with a name for its log file and messages (`<name>.log`), for tests that run several.
pub async fn proxy_named(name: &str, env: &[(&str, &str)]) -> ProxyHandle {
    const ATTEMPTS: usize = 3;
    for attempt in 1..=ATTEMPTS {
        let handle = spawn_proxy(name, env);
        match wait_ready(handle).await {
            Ok(handle) => return handle,
            Err(log) if attempt < ATTEMPTS && log.contains("in use") => continue,
            Err(log) => {
                panic!("{name} did not become ready within {STARTUP_TIMEOUT:?}; log:\n{log}")
            }
        }
    }
    unreachable!("the last attempt returns or panics")
}

fn spawn_proxy(name: &str, env: &[(&str, &str)]) -> ProxyHandle {
    let given = |key: &str| env.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let addr = |key: &str| match given(key) {
        Some(value) => value
            .parse()
            .unwrap_or_else(|e| panic!("{key}={value}: {e}")),
        None => free_addr(),
    };
    let outbound = addr("STRAIT_OUTBOUND_ADDR");
    let inbound = addr("STRAIT_INBOUND_ADDR");
    let admin = addr("STRAIT_ADMIN_ADDR");
    let (outbound_s, inbound_s, admin_s) =
        (outbound.to_string(), inbound.to_string(), admin.to_string());
    let mut full_env: Vec<(&str, &str)> = vec![
        ("STRAIT_OUTBOUND_ADDR", &outbound_s),
        ("STRAIT_INBOUND_ADDR", &inbound_s),
        ("STRAIT_ADMIN_ADDR", &admin_s),
    ];
    if given("STRAIT_LOG").is_none() {
        full_env.push(("STRAIT_LOG", "info"));
    }
    // Later entries win, so the caller's own values (the same addresses, if given) apply last.
    full_env.extend(env.iter().copied());
    let process = Process::spawn_owning_dir(name, bin("strait-proxy"), &[], &full_env);
    ProxyHandle {
        process,
        outbound,
        inbound,
        admin,
    }
}

/// Waits for `/ready`; on failure returns the log (the process is killed when dropped).
async fn wait_ready(mut handle: ProxyHandle) -> Result<ProxyHandle, String> {
    let url = format!("http://{}/ready", handle.admin);
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(status) = handle.process.try_exit_status() {
            return Err(format!("(exited: {status})\n{}", handle.log()));
        }
        if crate::client::wait_for_http_ok(&url, Duration::from_millis(200))
            .await
            .is_ok()
        {
            return Ok(handle);
        }
        if Instant::now() >= deadline {
            return Err(handle.log());
        }
    }
}
