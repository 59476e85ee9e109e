//! The network-namespace tier: a small cluster on one machine, with real iptables interception.
//!
//! ```text
//!  node namespace: bridge br0 10.200.0.1/24, fd00:200::1/64; the controller listens here
//!    ├─ veth ── pod namespace "a": eth0 10.200.0.2, fd00:200::2   app, proxy (UID 7102), init's rules
//!    ├─ veth ── pod namespace "b": eth0 10.200.0.3, fd00:200::3   ...
//!    └─ ...
//! ```
//!
//! Sealed (DESIGN §8): nothing is attached to the host's namespace and no namespace has a default
//! route. A pod only routes its own /24 (/64) and the service ranges 10.96.0.0/16 and fd00:96::/112,
//! the latter to the node; the node does not forward, so a packet that escapes interception (to a
//! service's virtual IP, say) dies inside the test cluster instead of leaving the machine.
//!
//! Everything is torn down by `Drop`, also when a test fails: the processes in a namespace are
//! killed (by pid, from `ip netns pids`), then the namespace is deleted, which takes its veth ends and
//! the bridge with it. Namespaces left by a test binary that was killed outright (named
//! `strait-<pid>-…` after a pid that no longer runs) are removed when the next cluster is built.
//!
//! The tier needs root, `ip` (iproute2), iptables and curl. It runs only when `STRAIT_NETNS_TESTS=1`
//! (`make test` sets it as root); see [`enabled`].

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        Mutex,
        OnceLock,
        atomic::{AtomicU8, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    dir::TestDir,
    process::{Process, bin},
};

/// Set to `1` to run the tier (then missing root or tools fail the tests instead of skipping them).
pub const GATE_ENV: &str = "STRAIT_NETNS_TESTS";
/// The proxy's UID (DESIGN §3); it need not exist in /etc/passwd.
pub const PROXY_UID: u32 = 7102;
/// The proxy's default listeners (DESIGN §3): the pods run it without any address configuration.
pub const OUTBOUND_PORT: u16 = 7140;
pub const INBOUND_PORT: u16 = 7143;
pub const ADMIN_PORT: u16 = 7191;
/// The node's end of the bridge, where the controller listens.
pub const NODE_IP4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
pub const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);
pub const DISCOVERY_PORT: u16 = 8086;
pub const IDENTITY_PORT: u16 = 8080;
pub const CONTROLLER_ADMIN_PORT: u16 = 9990;
/// Service virtual IPs come from these ranges; pods route them to the node (where they die).
pub const SERVICE_CIDR4: &str = "10.96.0.0/16";
pub const SERVICE_CIDR6: &str = "fd00:96::/112";

const STARTUP: Duration = Duration::from_secs(30);

/// Whether the tier runs. Without `STRAIT_NETNS_TESTS=1` it prints why `test` is skipped and returns
/// false, so `cargo test` on a laptop passes; with it, missing root or tools panic, so CI cannot
/// skip the tier silently.
pub fn enabled(test: &str) -> bool {
    if std::env::var(GATE_ENV).as_deref() != Ok("1") {
        eprintln!(
            "skipping {test}: the network-namespace tier runs only with {GATE_ENV}=1, as root, with ip, iptables \
             and curl installed (`make test` as root sets it up)"
        );
        return false;
    }
    if let Err(why) = requirements() {
        panic!("{GATE_ENV}=1 but the network-namespace tier cannot run: {why}");
    }
    true
}

/// Root, and the tools the tier runs.
pub fn requirements() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root (namespaces, veths and iptables need it)".into());
    }
    let missing: Vec<&str> =
        ["ip", "iptables-save", "curl"].into_iter().filter(|t| find_tool(t).is_none()).collect();
    if !missing.is_empty() {
        return Err(format!("missing {} (Debian: iproute2, iptables, curl)", missing.join(", ")));
    }
    Ok(())
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs a command to completion; `run_ok` panics with its output unless it succeeds.
pub fn run(argv: &[&str]) -> Output {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null());
    // An "unmodified client" must not be steered by the developer's proxy settings.
    for var in ["http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"] {
        cmd.env_remove(var);
    }
    cmd.output().unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"))
}

pub fn run_ok(argv: &[&str]) -> String {
    let out = run(argv);
    if !out.status.success() {
        panic!(
            "{argv:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip netns add` mounts /run/netns on first use; two tests doing that at once can race.
static NETNS_ADD: Mutex<()> = Mutex::new(());

/// A named network namespace (`ip netns`), deleted with everything running in it on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME`, with loopback up.
    pub fn create(name: &str) -> Netns {
        {
            let _one_at_a_time = NETNS_ADD.lock().unwrap_or_else(|p| p.into_inner());
            run_ok(&["ip", "netns", "add", name]);
        }
        let ns = Netns { name: name.to_owned() };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS...`; panics on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend_from_slice(args);
        run_ok(&argv)
    }

    /// `ip netns exec NAME ARGV...` as root.
    pub fn exec(&self, argv: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        run(&full)
    }

    /// Like [`Netns::exec`]; panics unless it succeeds, returns stdout.
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        run_ok(&full)
    }

    /// Starts a long-running process in this namespace, as `uid` (and the same gid, no
    /// supplementary groups) when given, else as root. Its output goes to `<log_dir>/<name>.log`.
    pub fn spawn(
        &self,
        name: &str,
        program: impl AsRef<Path>,
        args: &[&str],
        env: &[(&str, &str)],
        uid: Option<u32>,
        log_dir: &Path,
    ) -> Process {
        self.spawn_with_binds(name, program, args, env, uid, log_dir, &[])
    }

    /// [`Netns::spawn`] in a private mount namespace of its own, where each `(source, target)`
    /// folder of `binds` is bind-mounted on `target` (which must exist): a container's volume
    /// mounts, so a path in a pod spec can be used as written while every pod sees its own files.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_with_binds(
        &self,
        name: &str,
        program: impl AsRef<Path>,
        args: &[&str],
        env: &[(&str, &str)],
        uid: Option<u32>,
        log_dir: &Path,
        binds: &[(PathBuf, PathBuf)],
    ) -> Process {
        use std::{ffi::CString, os::unix::ffi::OsStrExt};
        let ns = File::open(self.path()).unwrap_or_else(|e| panic!("opening {}: {e}", self.path().display()));
        let fd = ns.as_raw_fd();
        let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).expect("a path without NUL");
        let binds: Vec<(CString, CString)> = binds.iter().map(|(s, t)| (cstr(s), cstr(t))).collect();
        let process = Process::spawn_with(name, program, args, env, log_dir, |cmd| {
            // SAFETY: runs between fork and exec, calling async-signal-safe syscalls only; `fd` stays
            // open until after the spawn (it is close-on-exec), the C strings were made before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    if !binds.is_empty() {
                        let root = c"/";
                        if libc::unshare(libc::CLONE_NEWNS) != 0
                            || libc::mount(
                                std::ptr::null(),
                                root.as_ptr(),
                                std::ptr::null(),
                                libc::MS_REC | libc::MS_PRIVATE,
                                std::ptr::null(),
                            ) != 0
                        {
                            return Err(io::Error::last_os_error());
                        }
                        for (source, target) in &binds {
                            if libc::mount(
                                source.as_ptr(),
                                target.as_ptr(),
                                std::ptr::null(),
                                libc::MS_BIND,
                                std::ptr::null(),
                            ) != 0
                            {
                                return Err(io::Error::last_os_error());
                            }
                        }
                    }
                    if let Some(uid) = uid {
                        if libc::setgroups(0, std::ptr::null()) != 0
                            || libc::setgid(uid as libc::gid_t) != 0
                            || libc::setuid(uid as libc::uid_t) != 0
                        {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        });
        drop(ns);
        process
    }

    /// A TCP connection opened from inside this namespace, by the test process (as root, so the
    /// pod's OUTPUT rules apply to it like to any application).
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        self.run_in(move || connect_here(addr, timeout))?
    }

    /// Runs `f` on a thread that entered this namespace: every socket `f` creates lives in it (and
    /// stays there after the thread ends). setns changes only the calling thread's namespace.
    pub fn run_in<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> io::Result<R> {
        let path = self.path();
        std::thread::spawn(move || -> io::Result<R> {
            let ns = File::open(&path)?;
            // SAFETY: setns on a valid namespace fd; affects this thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// One HTTP/1.1 request on a fresh connection from inside this namespace.
    pub fn http(&self, addr: SocketAddr, method: &str, target: &str, host: &str) -> io::Result<Http1Response> {
        let mut c = Http1::new(self.connect(addr, Duration::from_secs(5))?);
        c.request(method, target, host, &[("connection", "close")])
    }

    /// The pids of every process in this namespace.
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name, &self.pids());
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// A TCP connection from the calling thread's namespace, with no delay and 10 s I/O timeouts.
pub fn connect_here(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// SIGKILL to each of these pids (all started by this test inside its own namespace), then a short
/// wait for them to be gone so the namespace really goes away with the delete.
fn kill_all_in(ns: &str, pids: &[i32]) {
    for &pid in pids {
        // SAFETY: kill(2) on a pid read from our own namespace.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(*p)) {
        if Instant::now() > deadline {
            eprintln!("netns {ns}: processes {pids:?} still alive after SIGKILL");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `ip netns pids NAME`.
fn pids_in(ns: &str) -> Vec<i32> {
    run(&["ip", "netns", "pids", ns])
        .stdout
        .split(|b| *b == b'\n')
        .filter_map(|l| std::str::from_utf8(l).ok()?.trim().parse().ok())
        .collect()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// Deletes namespaces named `strait-<pid>-…` whose test process is gone (killed before its drops ran).
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("strait-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            kill_all_in(&name, &pids_in(&name));
            let _ = run(&["ip", "netns", "del", &name]);
            eprintln!("removed stale test namespace {name}");
        }
    }
}

/// Where [`proxy_binary`] keeps its copy: `<temp dir>/strait-bin-<pid of the test process>`.
const PROXY_BIN_DIR_PREFIX: &str = "strait-bin-";

/// `strait-proxy` at a path UID 7102 can execute.
///
/// The proxy runs as UID 7102, which cannot reach a binary inside a private checkout (a clone
/// under root's 0700 home, say). So every test process copies the binary once into a fresh
/// `0755` folder under the temp dir and runs the copy; folders of test processes that no longer
/// run are removed by the next cluster ([`remove_stale_namespaces`]).
pub fn proxy_binary() -> PathBuf {
    static COPY: OnceLock<PathBuf> = OnceLock::new();
    COPY.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let src = bin("strait-proxy");
        let dir = std::env::temp_dir().join(format!("{PROXY_BIN_DIR_PREFIX}{}", std::process::id()));
        let dst = dir.join("strait-proxy");
        let copy = || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
            std::fs::copy(&src, &dst)?;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))
        };
        copy().unwrap_or_else(|e| {
            panic!("copying {} to {} (for UID {PROXY_UID}): {e}", src.display(), dst.display())
        });
        dst
    })
    .clone()
}

/// Removes the binary folders of [`proxy_binary`] whose test process is gone.
fn remove_stale_binary_copies() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PROXY_BIN_DIR_PREFIX).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

static NEXT_CLUSTER: AtomicU32 = AtomicU32::new(0);

/// A node namespace with a bridge, pods joined to it, and (optionally) a controller on the node.
#[derive(Debug)]
pub struct Cluster {
    id: String,
    pub dir: TestDir,
    next_pod: AtomicU8,
    controller: Mutex<Option<Process>>,
    /// The controller's trust anchors (copied where the proxy's UID can read them), once it serves
    /// identity.
    anchors: Mutex<Option<PathBuf>>,
    // Dropped last: deleting it removes the bridge.
    node: Netns,
}

impl Cluster {
    /// An empty cluster: the node namespace and its bridge.
    pub fn new(label: &str) -> Cluster {
        remove_stale_namespaces();
        remove_stale_binary_copies();
        let id = format!("strait-{}-{}", std::process::id(), NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed));
        let node = Netns::create(&format!("{id}-node"));
        node.ip(&["link", "add", "br0", "type", "bridge"]);
        node.ip(&["addr", "add", &format!("{NODE_IP4}/24"), "dev", "br0"]);
        node.ip(&["-6", "addr", "add", &format!("{NODE_IP6}/64"), "dev", "br0", "nodad"]);
        node.ip(&["link", "set", "br0", "up"]);
        // New namespaces do not forward, but say it: a packet that escapes a pod dies here.
        node.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0"]);
        Cluster {
            id,
            dir: TestDir::new(label),
            next_pod: AtomicU8::new(2),
            controller: Mutex::new(None),
            anchors: Mutex::new(None),
            node,
        }
    }

    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// A new pod: a namespace with a veth into the bridge, the next addresses (10.200.0.2, .3, …;
    /// fd00:200::2, …) and routes to the pod network and the service ranges only.
    pub fn pod(&self, name: &str) -> Pod {
        let n = self.next_pod.fetch_add(1, Ordering::Relaxed);
        assert!(n < 250, "too many pods");
        let ns = Netns::create(&format!("{}-{name}", self.id));
        let host_end = format!("veth{n}");
        self.node.ip(&["link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", ns.name()]);
        self.node.ip(&["link", "set", &host_end, "master", "br0", "up"]);
        let ip4 = Ipv4Addr::new(10, 200, 0, n);
        let ip6 = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, n as u16);
        ns.ip(&["addr", "add", &format!("{ip4}/24"), "dev", "eth0"]);
        ns.ip(&["-6", "addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", SERVICE_CIDR4, "via", &NODE_IP4.to_string()]);
        ns.ip(&["-6", "route", "add", SERVICE_CIDR6, "via", &NODE_IP6.to_string()]);
        Pod { name: name.to_owned(), ip4, ip6, log_dir: self.dir.path().to_owned(), ns }
    }

    /// Writes `mesh.yaml` (the controller reloads it on change) and returns its path.
    pub fn write_mesh(&self, yaml: &str) -> PathBuf {
        // Write-then-rename, so the controller never reads half a file.
        let tmp = self.dir.write("mesh.yaml.tmp", yaml);
        let path = self.dir.join("mesh.yaml");
        std::fs::rename(&tmp, &path).expect("rename mesh file");
        path
    }

    /// Starts `strait-controller` on the node (embedded mode, `mesh` as its mesh file, state in
    /// `<dir>/controller-state`) and waits for `/ready`. Discovery: `10.200.0.1:8086`.
    pub fn start_controller(&self, mesh: &str) {
        let mesh_path = self.write_mesh(mesh);
        let state = self.dir.join("controller-state");
        let addr = |port: u16| SocketAddr::from((NODE_IP4, port)).to_string();
        let (d, a, i, w) = (addr(DISCOVERY_PORT), addr(CONTROLLER_ADMIN_PORT), addr(IDENTITY_PORT), addr(8443));
        let args = [
            "--mesh-file",
            mesh_path.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--discovery-addr",
            &d,
            "--admin-addr",
            &a,
            "--identity-addr",
            &i,
            "--webhook-addr",
            &w,
        ];
        let mut p =
            self.node.spawn("controller", bin("strait-controller"), &args, &[("STRAIT_LOG", "info")], None, self.dir.path());
        wait_ready(&self.node, &mut p, SocketAddr::from((NODE_IP4, CONTROLLER_ADMIN_PORT)));
        *self.controller.lock().unwrap() = Some(p);
        // A controller that serves identity created its trust anchor in the state directory.
        let created = state.join("trust-anchors.pem");
        if created.is_file() {
            let anchors = self.dir.join("trust-anchors.pem");
            std::fs::copy(&created, &anchors).expect("copy the trust anchors");
            *self.anchors.lock().unwrap() = Some(anchors);
        }
    }

    /// The controller's discovery address, as the proxies get it.
    pub fn discovery_addr(&self) -> String {
        SocketAddr::from((NODE_IP4, DISCOVERY_PORT)).to_string()
    }

    /// Whether the controller serves identity (then [`Cluster::proxy_env`] gives mTLS).
    pub fn has_identity(&self) -> bool {
        self.anchors.lock().unwrap().is_some()
    }

    /// The environment a pod's proxy needs from this cluster's controller: discovery, and, when the
    /// controller serves identity, `STRAIT_IDENTITY_ADDR`, `STRAIT_TRUST_ANCHORS`,
    /// `STRAIT_SERVICE_ACCOUNT=<pod name>` and `STRAIT_IDENTITY_TOKEN_FILE` holding `token-<pod name>`
    /// (the mesh file's workload entries must say so).
    pub fn proxy_env(&self, pod: &Pod) -> Vec<(String, String)> {
        let mut env = vec![("STRAIT_DISCOVERY_ADDR".to_owned(), self.discovery_addr())];
        if let Some(anchors) = self.anchors.lock().unwrap().clone() {
            let token = self.dir.write(format!("token-{}", pod.name), format!("token-{}", pod.name));
            env.extend([
                ("STRAIT_IDENTITY_ADDR".to_owned(), SocketAddr::from((NODE_IP4, IDENTITY_PORT)).to_string()),
                ("STRAIT_TRUST_ANCHORS".to_owned(), anchors.display().to_string()),
                ("STRAIT_SERVICE_ACCOUNT".to_owned(), pod.name.clone()),
                ("STRAIT_IDENTITY_TOKEN_FILE".to_owned(), token.display().to_string()),
            ]);
        }
        env
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut p) = self.controller.lock().unwrap_or_else(|p| p.into_inner()).take() {
            p.kill();
        }
    }
}

/// Polls `GET /ready` on `admin` from inside `ns` until 200; panics (showing the log) when the
/// process exits first or 30 s pass.
fn wait_ready(ns: &Netns, p: &mut Process, admin: SocketAddr) {
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Ok(r) = ns.http(admin, "GET", "/ready", &admin.to_string()) {
            if r.status == 200 {
                return;
            }
        }
        if let Some(status) = p.try_exit_status() {
            panic!("{} exited ({status}) before it was ready; log:\n{}", p.name(), p.log());
        }
        if Instant::now() > deadline {
            panic!("{} was not ready within {STARTUP:?}; log:\n{}", p.name(), p.log());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A pod: a network namespace on the cluster's bridge.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    log_dir: PathBuf,
    pub ns: Netns,
}

impl Pod {
    /// `strait-testsrv MODE --listen [::]:PORT --name NAME` (IPv4 and IPv6, all addresses, as an
    /// application in a pod listens), as root; returns once it listens.
    pub fn app(&self, mode: &str, name: &str, port: u16) -> Process {
        let listen = format!("[::]:{port}");
        let mut p = self.ns.spawn(
            name,
            bin("strait-testsrv"),
            &[mode, "--listen", &listen, "--name", name],
            &[],
            None,
            &self.log_dir,
        );
        let deadline = Instant::now() + STARTUP;
        while !p.log().lines().any(|l| l.starts_with("listening ")) {
            if let Some(s) = p.try_exit_status() {
                panic!("{name} exited ({s}); log:\n{}", p.log());
            }
            assert!(Instant::now() < deadline, "{name} did not listen; log:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(10));
        }
        p
    }

    /// `strait-proxy init ARGS...` in this pod, as root. Returns its output, whatever the status.
    pub fn init(&self, args: &[&str]) -> Output {
        let proxy = bin("strait-proxy");
        let mut argv = vec![proxy.to_str().unwrap(), "init"];
        argv.extend_from_slice(args);
        self.ns.exec(&argv)
    }

    /// [`Pod::init`]; panics with the output unless it succeeds. Returns stdout.
    pub fn init_ok(&self, args: &[&str]) -> String {
        let out = self.init(args);
        assert!(
            out.status.success(),
            "strait-proxy init {args:?} in pod {} failed ({}):\n{}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `strait-proxy` in this pod as UID 7102 with its default listeners, on top of
    /// `STRAIT_NAMESPACE=demo`, `STRAIT_WORKLOAD=<pod name>`, `STRAIT_LOG=info`,
    /// `STRAIT_ADMIN_ADDR=0.0.0.0:7191` and `env`; waits for
    /// `/ready` on the admin port.
    pub fn proxy(&self, env: &[(&str, &str)]) -> Process {
        // The admin port on all interfaces, as the injector sets it: the node's probes and other
        // pods reach it on the pod's IP (the proxy's own default is loopback).
        let mut full = vec![
            ("STRAIT_NAMESPACE", "demo"),
            ("STRAIT_WORKLOAD", self.name.as_str()),
            ("STRAIT_LOG", "info"),
            ("STRAIT_ADMIN_ADDR", "0.0.0.0:7191"),
        ];
        full.extend_from_slice(env);
        let mut p = self.ns.spawn(
            &format!("proxy-{}", self.name),
            proxy_binary(),
            &[],
            &full,
            Some(PROXY_UID),
            &self.log_dir,
        );
        wait_ready(&self.ns, &mut p, self.admin());
        p
    }

    /// Runs the proxy image's entrypoint with `args` in this pod, as root: an init container whose
    /// `args` come from a pod spec (`init --proxy-uid 7102 ...`). Panics unless it succeeds.
    pub fn init_container_ok(&self, args: &[&str]) -> String {
        let proxy = bin("strait-proxy");
        let mut argv = vec![proxy.to_str().unwrap()];
        argv.extend_from_slice(args);
        let out = self.ns.exec(&argv);
        assert!(
            out.status.success(),
            "strait-proxy {args:?} in pod {} failed ({}):\n{}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `strait-proxy` in this pod as UID 7102 with exactly `env` (nothing added, unlike
    /// [`Pod::proxy`]) and the folder bind mounts `binds` (see [`Netns::spawn_with_binds`]); waits
    /// for `/ready` on the admin port.
    pub fn proxy_exactly(&self, env: &[(&str, &str)], binds: &[(PathBuf, PathBuf)]) -> Process {
        let mut p = self.ns.spawn_with_binds(
            &format!("proxy-{}", self.name),
            proxy_binary(),
            &[],
            env,
            Some(PROXY_UID),
            &self.log_dir,
            binds,
        );
        wait_ready(&self.ns, &mut p, self.admin());
        p
    }

    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, ADMIN_PORT))
    }

    /// The proxy's metrics, scraped from inside the pod.
    pub fn metrics(&self) -> String {
        let r = self
            .ns
            .http(self.admin(), "GET", "/metrics", "localhost")
            .unwrap_or_else(|e| panic!("scraping the proxy of pod {}: {e}", self.name));
        assert_eq!(r.status, 200, "metrics of pod {}", self.name);
        r.text()
    }

    /// `curl -sS --max-time 10 ARGS...` run in this pod as root: an unmodified client.
    pub fn curl(&self, args: &[&str]) -> Output {
        let mut argv = vec!["curl", "-sS", "--max-time", "10", "--noproxy", "*"];
        argv.extend_from_slice(args);
        self.ns.exec(&argv)
    }

    /// A TCP connection from inside this pod (see [`Netns::connect`]).
    pub fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        self.ns.connect(addr, Duration::from_secs(5))
    }
}

/// A response read by [`Http1`].
#[derive(Debug, Clone)]
pub struct Http1Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Http1Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A minimal blocking HTTP/1.1 client over one connection (keep-alive), for connections opened
/// inside a namespace and for timing request after request without a runtime in the way.
pub struct Http1 {
    r: BufReader<TcpStream>,
}

impl Http1 {
    pub fn new(stream: TcpStream) -> Http1 {
        Http1 { r: BufReader::new(stream) }
    }

    /// Sends a request without a body and reads the whole response.
    pub fn request(&mut self, method: &str, target: &str, host: &str, headers: &[(&str, &str)]) -> io::Result<Http1Response> {
        let mut req = format!("{method} {target} HTTP/1.1\r\nhost: {host}\r\n");
        for (k, v) in headers {
            req += &format!("{k}: {v}\r\n");
        }
        req += "\r\n";
        self.r.get_mut().write_all(req.as_bytes())?;
        self.read_response(method == "HEAD")
    }

    fn line(&mut self) -> io::Result<String> {
        let mut l = String::new();
        if self.r.read_line(&mut l)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        Ok(l.trim_end_matches(['\r', '\n']).to_owned())
    }

    fn read_response(&mut self, head: bool) -> io::Result<Http1Response> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        let status_line = self.line()?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let l = self.line()?;
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').ok_or_else(|| bad(format!("bad header {l:?}")))?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if head || status == 204 || status == 304 || (100..200).contains(&status) {
        } else if get("transfer-encoding").is_some_and(|t| t.to_ascii_lowercase().contains("chunked")) {
            loop {
                let size_line = self.line()?;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| bad(format!("bad chunk size {size_line:?}")))?;
                if size == 0 {
                    while !self.line()?.is_empty() {}
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                self.r.read_exact(&mut body[start..])?;
                self.line()?;
            }
        } else if let Some(len) = get("content-length") {
            let len: usize = len.parse().map_err(|_| bad(format!("bad content-length {len:?}")))?;
            body.resize(len, 0);
            self.r.read_exact(&mut body)?;
        } else {
            self.r.read_to_end(&mut body)?;
        }
        Ok(Http1Response { status, headers, body })
    }
}

/// `iptables-save`-style text with what changes on its own removed (comment lines with timestamps,
/// packet and byte counters), so two snapshots of the same rule set compare equal.
pub fn normalize_save(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
            (true, Some(i)) => format!("{} [0:0]", &l[..i]),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Nearest-rank percentile of `sorted` (ascending), `p` in 0..=100.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_counters_and_comments() {
        let a = "# Generated by iptables-save v1.8.9 on Mon\n*nat\n:PREROUTING ACCEPT [12:720]\n:STRAIT_INBOUND - [0:0]\n-A OUTPUT -j RETURN\nCOMMIT\n# Completed on Mon\n";
        let b = "# Generated by iptables-save v1.8.9 on Tue\n*nat\n:PREROUTING ACCEPT [0:0]\n:STRAIT_INBOUND - [3:180]\n-A OUTPUT -j RETURN\nCOMMIT\n";
        assert_eq!(normalize_save(a), normalize_save(b));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 100.0), Duration::from_millis(100));
    }
}
