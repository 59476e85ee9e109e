//! Real child processes for end-to-end tests: locating the workspace's binaries, spawning them with
//! their output captured to a log file, and making sure none outlives its test.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::dir::TestDir;

/// Overrides where [`bin`] looks for binaries (for example a `target/release` directory).
pub const BIN_DIR_ENV: &str = "STRAIT_BIN_DIR";

/// Path of a workspace binary (`strait-proxy`, `strait-controller`, `strait`, `strait-testsrv`), taken
/// from the target directory of the running test: `target/<profile>/deps/<test>` → `target/<profile>/<name>`.
/// `STRAIT_BIN_DIR` overrides the directory.
///
/// Panics with a hint when the binary is missing: cargo builds only the binaries of the package under
/// test, so run `cargo build --workspace --bins` (or `make test`) first.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => target_profile_dir(),
    };
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        panic!(
            "binary {name} not found at {}: run `cargo build --workspace --bins` first \
             (same profile as the tests), or set {BIN_DIR_ENV}",
            path.display()
        );
    }
    path
}

fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test binary has a parent directory")
        .to_path_buf();
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.pop();
    }
    dir
}

/// A running child process, killed with SIGKILL when dropped. Its stdout and stderr both go to
/// `<dir>/<name>.log`; when a test panics, the tail of that log is printed by the drop.
///
/// Children also get `PR_SET_PDEATHSIG(SIGKILL)`: if the test binary dies without running drops,
/// they die too. Linux ties that signal to the *thread* that spawned the child, so a process meant to
/// outlive one test's thread (a fixture shared between tests) must be spawned from a long-lived thread.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    exit: Option<ExitStatus>,
    // Dropped after the child is killed (fields drop after `Drop::drop`).
    owned_dir: Option<TestDir>,
}

impl Process {
    /// Spawns `program` with `args` and `env` (on top of this process's environment with every
    /// inherited `STRAIT_*` variable removed, so the developer's shell cannot change a test, and with
    /// `RUST_BACKTRACE=1` and `NO_COLOR=1` added), logging to
    /// `<log_dir>/<name>.log`. Panics if it cannot start.
    pub fn spawn(
        name: &str,
        program: impl AsRef<Path>,
        args: &[&str],
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> Process {
        Process::spawn_with(name, program, args, env, log_dir, |_| {})
    }

    /// [`Process::spawn`], with `prepare` called on the command first: its `pre_exec` hooks run in
    /// the child before this module's own (so a hook that changes the user keeps the parent-death
    /// signal, which the kernel clears on a credential change). The netns tier enters a pod's
    /// network namespace and drops to the proxy's UID this way.
    pub fn spawn_with(
        name: &str,
        program: impl AsRef<Path>,
        args: &[&str],
        env: &[(&str, &str)],
        log_dir: &Path,
        prepare: impl FnOnce(&mut Command),
    ) -> Process {
        let program = program.as_ref();
        let log = unique_log_path(log_dir, name);
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("cannot create log {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log file handle");

        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        prepare(&mut cmd);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("STRAIT_") {
                cmd.env_remove(key);
            }
        }
        // Readable log files: backtraces on panic, no terminal colours.
        cmd.env("RUST_BACKTRACE", "1").env("NO_COLOR", "1");
        cmd.envs(env.iter().copied());
        let parent = std::process::id();
        // SAFETY: the closure runs between fork and exec and only calls async-signal-safe functions.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() as u32 != parent {
                    // The parent already died before prctl took effect.
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", program.display()));
        Process {
            name: name.to_owned(),
            child,
            log,
            exit: None,
            owned_dir: None,
        }
    }

    /// Like [`Process::spawn`], logging into a fresh [`TestDir`] that this process owns (removed
    /// with it).
    pub fn spawn_owning_dir(
        name: &str,
        program: impl AsRef<Path>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Process {
        let dir = TestDir::new(name);
        let mut process = Process::spawn(name, program, args, env, dir.path());
        process.owned_dir = Some(dir);
        process
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait on child");
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit_status().is_none()
    }

    /// Polls the log until a line starts with `prefix` and returns the rest of that line. Panics
    /// (showing the log) if the process exits first or `timeout` passes.
    pub async fn wait_for_log_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find_map(|l| l.strip_prefix(prefix)) {
                return line.to_owned();
            }
            if let Some(status) = self.try_exit_status() {
                panic!(
                    "{} exited ({status}) before printing {prefix:?}; log:\n{log}",
                    self.name
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not print {prefix:?} within {timeout:?}; log:\n{log}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`) unless the process has already been reaped.
    pub fn signal(&mut self, signal: libc::c_int) {
        if self.is_running() {
            // SAFETY: kill(2) on the pid of our own unreaped child.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, signal);
            }
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit. Returns the exit status, or a `TimedOut`
    /// error (the process is still running and is killed on drop).
    pub async fn terminate(&mut self, timeout: Duration) -> std::io::Result<ExitStatus> {
        self.signal(libc::SIGTERM);
        self.wait_exit(timeout).await
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::io::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{} (pid {}) still running after {timeout:?}",
                        self.name,
                        self.pid()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL and reap (a no-op once it has exited).
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_exit_status() {
            return status;
        }
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .unwrap_or_else(|_| ExitStatus::from_raw(libc::SIGKILL));
        self.exit = Some(status);
        status
    }

    /// Resident set size now (`VmRSS`), in bytes. Panics if the process is gone.
    pub fn rss_bytes(&self) -> u64 {
        self.status_kib("VmRSS") * 1024
    }

    /// Peak resident set size (`VmHWM`), in bytes. Panics if the process is gone.
    pub fn peak_rss_bytes(&self) -> u64 {
        self.status_kib("VmHWM") * 1024
    }

    fn status_kib(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: cannot read {path}: {e}", self.name));
        status_field_kib(&status, field)
            .unwrap_or_else(|| panic!("{}: no {field} in {path} (has it exited?)", self.name))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "---- last {} lines of {} ({}) ----\n{}\n---- end of {} ----",
                tail.len(),
                self.name,
                self.log.display(),
                tail.join("\n"),
                self.name
            );
        }
    }
}

/// Parses `Field:   1234 kB` out of a `/proc/<pid>/status` text.
pub fn status_field_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

fn unique_log_path(dir: &Path, name: &str) -> PathBuf {
    let mut path = dir.join(format!("{name}.log"));
    let mut n = 2;
    while path.exists() {
        path = dir.join(format!("{name}-{n}.log"));
        n += 1;
    }
    // Create it now so that a second spawn with the same name picks another file.
    let _ = File::create(&path);
    path
}
