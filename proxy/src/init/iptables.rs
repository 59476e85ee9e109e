//! Running the iptables tools: finding them, choosing the back end (nft or legacy), reading a
//! table with `*-save` and applying a script with `*-restore --noflush` (one transaction).

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use super::{InitError, args::ModeChoice, rules::Family};

/// Where the tools live besides `$PATH` (an init container's PATH may lack the sbin directories).
const EXTRA_DIRS: [&str; 3] = ["/usr/sbin", "/sbin", "/usr/local/sbin"];
/// Seconds `*-restore` waits for the xtables lock that other writers (kube-proxy, a CNI) may hold.
const LOCK_WAIT_SECS: &str = "10";

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Nft,
    Legacy,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Nft => "nft",
            Mode::Legacy => "legacy",
        }
    }
}

/// One family's save and restore commands.
#[derive(Clone, Debug)]
pub struct Tools {
    pub save: PathBuf,
    pub restore: PathBuf,
}

#[derive(Clone, Debug)]
pub struct Backend {
    pub mode: Mode,
    pub v4: Tools,
    pub v6: Option<Tools>,
    /// How the mode was chosen, for the report.
    pub why: String,
}

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `iptables-nft-save`/`-restore` (or the legacy ones), else the unsuffixed tools when they are
/// that back end (`iptables-save --version` says `nf_tables` or `legacy`; old versions say
/// neither and are legacy).
fn tools(mode: Mode, family: Family) -> Option<Tools> {
    let prefix = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    let m = mode.name();
    if let (Some(save), Some(restore)) = (find(&format!("{prefix}-{m}-save")), find(&format!("{prefix}-{m}-restore"))) {
        return Some(Tools { save, restore });
    }
    let (save, restore) = (find(&format!("{prefix}-save"))?, find(&format!("{prefix}-restore"))?);
    let out = Command::new(&save).arg("--version").stdin(Stdio::null()).output().ok()?;
    let version = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let plain = if version.contains("nf_tables") { Mode::Nft } else { Mode::Legacy };
    (plain == mode).then_some(Tools { save, restore })
}

/// Picks the back end. `auto` follows the usual iptables-wrapper logic: the one that already holds
/// the host's (or the pod's) rules, with the kubelet's hint chains winning, else the one with more
/// rules, else nft.
pub fn select(choice: ModeChoice, want_v6: bool) -> Result<Backend, InitError> {
    let v6_for = |mode: Mode| -> Result<Option<Tools>, InitError> {
        if !want_v6 {
            return Ok(None);
        }
        match tools(mode, Family::V6) {
            Some(t) => Ok(Some(t)),
            None => Err(InitError::NotFound(format!(
                "ip6tables-{m}-save/-restore not found, but this kernel has IPv6: install them (Debian: iptables), \
                 or pass --no-ipv6 to leave IPv6 traffic unintercepted",
                m = mode.name()
            ))),
        }
    };
    let pick = |mode: Mode, why: String| -> Result<Backend, InitError> {
        let v4 = tools(mode, Family::V4).ok_or_else(|| {
            InitError::NotFound(format!(
                "iptables-{m}-save/-restore not found (looked in $PATH and {dirs}): install iptables, or choose \
                 the other back end with --iptables-mode",
                m = mode.name(),
                dirs = EXTRA_DIRS.join(", ")
            ))
        })?;
        Ok(Backend { mode, v4, v6: v6_for(mode)?, why })
    };
    match choice {
        ModeChoice::Nft => pick(Mode::Nft, "--iptables-mode nft".into()),
        ModeChoice::Legacy => pick(Mode::Legacy, "--iptables-mode legacy".into()),
        ModeChoice::Auto => {
            let nft = tools(Mode::Nft, Family::V4);
            let legacy = tools(Mode::Legacy, Family::V4);
            match (nft, legacy) {
                (None, None) => Err(InitError::NotFound(format!(
                    "no iptables found (iptables-nft-restore, iptables-legacy-restore or iptables-restore, in $PATH \
                     and {}): install iptables",
                    EXTRA_DIRS.join(", ")
                ))),
                (Some(_), None) => pick(Mode::Nft, "auto: only the nft back end is installed".into()),
                (None, Some(_)) => pick(Mode::Legacy, "auto: only the legacy back end is installed".into()),
                (Some(n), Some(l)) => {
                    let (mode, why) = detect(&n, &l)?;
                    pick(mode, why)
                }
            }
        }
    }
}

/// Both back ends are installed: read every table of each (IPv4 and IPv6), as they are.
fn detect(nft: &Tools, legacy: &Tools) -> Result<(Mode, String), InitError> {
    let dump = |t: &Tools, mode: Mode| -> Result<String, InitError> {
        let mut text = run_save(&t.save, &[])?;
        if let Some(v6) = tools(mode, Family::V6) {
            // A kernel without IPv6 has no ip6 tables to read; that is not an error here.
            text += &run_save(&v6.save, &[]).unwrap_or_default();
        }
        Ok(text)
    };
    let (n, l) = (dump(nft, Mode::Nft)?, dump(legacy, Mode::Legacy)?);
    let hint = |t: &str| t.lines().any(|l| l.starts_with(":KUBE-IPTABLES-HINT") || l.starts_with(":KUBE-KUBELET-CANARY"));
    let rules = |t: &str| t.lines().filter(|l| l.starts_with('-')).count();
    Ok(if hint(&n) {
        (Mode::Nft, "auto: the kubelet's hint chain is in nft".into())
    } else if hint(&l) {
        (Mode::Legacy, "auto: the kubelet's hint chain is in legacy".into())
    } else if rules(&l) > rules(&n) {
        (Mode::Legacy, format!("auto: legacy holds {} rules, nft {}", rules(&l), rules(&n)))
    } else {
        (Mode::Nft, format!("auto: nft holds {} rules, legacy {}", rules(&n), rules(&l)))
    })
}

/// `*-save -t nat`.
pub fn save_nat(t: &Tools) -> Result<String, InitError> {
    run_save(&t.save, &["-t", "nat"])
}

fn run_save(save: &Path, args: &[&str]) -> Result<String, InitError> {
    let what = std::iter::once(save.display().to_string()).chain(args.iter().map(|a| a.to_string())).collect::<Vec<_>>().join(" ");
    let out = Command::new(save)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| InitError::Failed { what: what.clone(), detail: e.to_string() })?;
    if !out.status.success() {
        return Err(failure(what, &String::from_utf8_lossy(&out.stderr), out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `*-restore --noflush` with `script` on stdin: all of it applies, or none.
pub fn restore(t: &Tools, script: &str) -> Result<(), InitError> {
    let what = format!("{} --noflush", t.restore.display());
    let mut child = Command::new(&t.restore)
        .args(["--noflush", "-w", LOCK_WAIT_SECS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| InitError::Failed { what: what.clone(), detail: e.to_string() })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A restore that died early shows up in its status and stderr below.
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| InitError::Failed { what: what.clone(), detail: e.to_string() })?;
    if !out.status.success() {
        return Err(failure(what, &String::from_utf8_lossy(&out.stderr), out.status));
    }
    Ok(())
}

fn failure(what: String, stderr: &str, status: std::process::ExitStatus) -> InitError {
    let detail = match stderr.trim() {
        "" => format!("exited with {status}"),
        s => s.to_string(),
    };
    let denied = ["Permission denied", "Operation not permitted", "you must be root"];
    if denied.iter().any(|d| detail.contains(d)) {
        InitError::NotPermitted { what, detail }
    } else {
        InitError::Failed { what, detail }
    }
}
