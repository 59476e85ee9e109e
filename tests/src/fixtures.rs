//! Ready-to-use processes: test application servers, Strait proxies and controllers on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

/// Like [`testsrv_in`], listening on `listen` (e.g. `127.42.0.7:0`: a loopback address of its
/// own, as a pod has its own IP).
pub async fn testsrv_at(log_dir: &Path, mode: &str, name: &str, listen: &str) -> (Process, SocketAddr) {
    let process = Process::spawn(name, bin("strait-testsrv"), &[mode, "--listen", listen, "--name", name], &[], log_dir);
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

/// Starts `strait-proxy` like [`proxy_named`] without waiting for `/ready`: for proxies a test
/// expects never to become ready (say, refused a certificate).
pub fn spawn_proxy(name: &str, env: &[(&str, &str)]) -> ProxyHandle {
    let given = |key: &str| env.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    // A list (`STRAIT_INBOUND_ADDR=a,b`) is passed on as given; the handle names its first address.
    let addr = |key: &str| match given(key) {
        Some(value) => {
            let first = value.split(',').next().unwrap_or(value);
            first.trim().parse().unwrap_or_else(|e| panic!("{key}={value}: {e}"))
        }
        None => free_addr(),
    };
    let outbound = addr("STRAIT_OUTBOUND_ADDR");
    let inbound = addr("STRAIT_INBOUND_ADDR");
    let admin = addr("STRAIT_ADMIN_ADDR");
    let (outbound_s, inbound_s, admin_s) =
        (outbound.to_string(), inbound.to_string(), admin.to_string());
    let mut full_env: Vec<(&str, &str)> = vec![
        ("STRAIT_OUTBOUND_ADDR", given("STRAIT_OUTBOUND_ADDR").unwrap_or(&outbound_s)),
        ("STRAIT_INBOUND_ADDR", given("STRAIT_INBOUND_ADDR").unwrap_or(&inbound_s)),
        ("STRAIT_ADMIN_ADDR", given("STRAIT_ADMIN_ADDR").unwrap_or(&admin_s)),
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

/// A running `strait-controller` in embedded mode and its listeners.
#[derive(Debug)]
pub struct ControllerHandle {
    pub process: Process,
    pub discovery: SocketAddr,
    pub identity: SocketAddr,
    pub admin: SocketAddr,
    /// Its `--state-dir`: the trust anchor and issuer (`trust-anchors.pem`, `issuer.pem`,
    /// `issuer-key.pem`) it created or found there.
    pub state_dir: PathBuf,
    pub mesh_file: PathBuf,
    /// What [`ControllerHandle::restart`] starts it with again.
    name: String,
    dir: PathBuf,
    extra_args: Vec<String>,
}

impl ControllerHandle {
    /// What proxies trust: `<state_dir>/trust-anchors.pem`.
    pub fn trust_anchors(&self) -> PathBuf {
        self.state_dir.join("trust-anchors.pem")
    }

    /// The environment a proxy needs for discovery and identity from this controller:
    /// `STRAIT_DISCOVERY_ADDR`, `STRAIT_IDENTITY_ADDR` and `STRAIT_TRUST_ANCHORS`.
    pub fn proxy_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("STRAIT_DISCOVERY_ADDR", self.discovery.to_string()),
            ("STRAIT_IDENTITY_ADDR", self.identity.to_string()),
            ("STRAIT_TRUST_ANCHORS", self.trust_anchors().display().to_string()),
        ]
    }

    /// Its metrics, scraped from the admin port.
    pub async fn metrics(&self) -> String {
        crate::metrics::scrape(self.admin).await
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// [`controller_named`] with the name `controller`.
pub async fn controller(dir: &Path, mesh_yaml: &str, extra_args: &[&str]) -> ControllerHandle {
    controller_named("controller", dir, mesh_yaml, extra_args).await
}

/// Writes `mesh_yaml` to `<dir>/mesh.yaml` and starts `strait-controller --mesh-file` on it with
/// `--state-dir <dir>/state` and discovery, identity, admin and webhook listeners on free loopback
/// ports, plus `extra_args` (e.g. `--cert-lifetime 1m`; a `--state-dir` there replaces the default
/// one). Logs to `<dir>/<name>.log`. Waits until `/ready` answers 200 (the mesh is loaded and
/// identity is served); panics with the log if it does not within 30 s, retrying on other ports if
/// one was taken meanwhile. Several controllers may share a directory (and so a state directory:
/// start them one after the other, the first creates the anchor and issuer).
pub async fn controller_named(name: &str, dir: &Path, mesh_yaml: &str, extra_args: &[&str]) -> ControllerHandle {
    const ATTEMPTS: usize = 3;
    let mesh_file = dir.join("mesh.yaml");
    std::fs::write(&mesh_file, mesh_yaml).unwrap_or_else(|e| panic!("writing {}: {e}", mesh_file.display()));
    let state_dir = match extra_args.iter().position(|a| *a == "--state-dir") {
        Some(i) => PathBuf::from(extra_args.get(i + 1).expect("--state-dir needs a value")),
        None => dir.join("state"),
    };
    let extra: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
    for attempt in 1..=ATTEMPTS {
        let (discovery, identity, admin) = (free_addr(), free_addr(), free_addr());
        let mut handle = ControllerHandle {
            process: spawn_controller(name, dir, &mesh_file, &state_dir, [discovery, identity, admin], &extra),
            discovery,
            identity,
            admin,
            state_dir: state_dir.clone(),
            mesh_file: mesh_file.clone(),
            name: name.to_owned(),
            dir: dir.to_owned(),
            extra_args: extra.clone(),
        };
        match wait_controller_ready(&mut handle).await {
            Ok(()) => return handle,
            Err(log) if attempt < ATTEMPTS && log.contains("in use") => continue,
            Err(log) => panic!("{name} did not become ready within {STARTUP_TIMEOUT:?}; log:\n{log}"),
        }
    }
    unreachable!("the last attempt returns or panics")
}

impl ControllerHandle {
    /// Starts the controller again after its process ended (killed, say): the same listeners, mesh
    /// file, state directory and arguments, logging to a new `<name>` log in its directory.
    /// Waits for `/ready`; panics with the log if it does not become ready.
    pub async fn restart(&mut self) {
        self.process.kill();
        self.process = spawn_controller(
            &self.name,
            &self.dir,
            &self.mesh_file,
            &self.state_dir,
            [self.discovery, self.identity, self.admin],
            &self.extra_args,
        );
        if let Err(log) = wait_controller_ready(self).await {
            panic!("{} did not become ready again within {STARTUP_TIMEOUT:?}; log:\n{log}", self.name);
        }
    }
}

fn spawn_controller(
    name: &str,
    dir: &Path,
    mesh_file: &Path,
    state_dir: &Path,
    [discovery, identity, admin]: [SocketAddr; 3],
    extra_args: &[String],
) -> Process {
    let (m, s, d, i, a, w) = (
        mesh_file.display().to_string(),
        state_dir.display().to_string(),
        discovery.to_string(),
        identity.to_string(),
        admin.to_string(),
        free_addr().to_string(),
    );
    let mut args = vec![
        "--mesh-file", &m, "--discovery-addr", &d, "--identity-addr", &i, "--admin-addr", &a, "--webhook-addr", &w,
    ];
    if !extra_args.iter().any(|a| a == "--state-dir") {
        args.extend(["--state-dir", &s]);
    }
    args.extend(extra_args.iter().map(String::as_str));
    Process::spawn(name, bin("strait-controller"), &args, &[("STRAIT_LOG", "info")], dir)
}

/// Waits for `/ready`; on failure returns the log (with the exit status if it exited).
async fn wait_controller_ready(handle: &mut ControllerHandle) -> Result<(), String> {
    let url = format!("http://{}/ready", handle.admin);
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(status) = handle.process.try_exit_status() {
            return Err(format!("(exited: {status})\n{}", handle.process.log()));
        }
        if crate::client::wait_for_http_ok(&url, Duration::from_millis(200)).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(handle.process.log());
        }
    }
}
