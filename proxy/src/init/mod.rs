//! `strait-proxy init`: writes the pod's nat rules so that its TCP traffic goes through the proxy
//! without the application knowing (DESIGN §2, §3). Run once per pod, before the application, with
//! CAP_NET_ADMIN in the pod's network namespace (in Kubernetes: the injected init container).
//!
//! - PREROUTING: TCP arriving at the pod → `REDIRECT` to the inbound listener, except the inbound
//!   and admin ports themselves and `--skip-inbound-ports`.
//! - OUTPUT: TCP the pod opens → `REDIRECT` to the outbound listener, except connections of the
//!   proxy's own UID (so its upstream connections are never looped back), loopback (`-o lo`,
//!   127.0.0.0/8, ::1), `--skip-outbound-ports` and `--skip-subnets`.
//!
//! The rules live in two chains of our own, `STRAIT_INBOUND` and `STRAIT_OUTPUT`, reached from one
//! jump rule each. Every change goes through one `iptables-restore --noflush` transaction per
//! family, so a pod never sees half a rule set; a second run that finds the rules in place changes
//! nothing; `--remove` deletes exactly the jumps and the chains. IPv4 with iptables, IPv6 with
//! ip6tables, on the nft or the legacy back end.

pub mod args;
pub mod iptables;
pub mod rules;

use args::{Options, Parsed, USAGE};
use rules::{Family, NatState, Plan};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    NotFound(String),
    #[error(
        "not permitted to change the pod's iptables rules ({what}: {detail}). This needs CAP_NET_ADMIN \
         (and CAP_NET_RAW) in the pod's network namespace: run as root, or give the init container those \
         capabilities"
    )]
    NotPermitted { what: String, detail: String },
    #[error("{what} failed: {detail}")]
    Failed { what: String, detail: String },
}

/// Runs `strait-proxy init` with the arguments after `init`; returns the exit code
/// (0 done, 1 failed, 2 bad arguments).
pub fn main(args: &[String]) -> i32 {
    let opts = match args::parse(args) {
        Ok(Parsed::Run(o)) => o,
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return 0;
        }
        Err(e) => {
            eprintln!("strait-proxy init: {}\n\n{USAGE}", e.replace('\n', "\nstrait-proxy init: "));
            return 2;
        }
    };
    if opts.dry_run {
        print!("{}", dry_run(&opts));
        return 0;
    }
    match run(&opts) {
        Ok(report) => {
            for line in report {
                println!("strait-proxy init: {line}");
            }
            0
        }
        Err(e) => {
            eprintln!("strait-proxy init: {e}");
            if matches!(e, InitError::Usage(_)) { 2 } else { 1 }
        }
    }
}

/// Whether this network namespace's kernel speaks IPv6 (and so needs ip6tables rules).
fn kernel_has_ipv6() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
}

/// Applies (or removes) the rules; returns one line per step for the log.
pub fn run(opts: &Options) -> Result<Vec<String>, InitError> {
    let want_v6 = opts.ipv6 && kernel_has_ipv6();
    let backend = iptables::select(opts.mode, want_v6)?;
    let mut report = vec![format!("iptables back end: {} ({})", backend.mode.name(), backend.why)];
    if opts.ipv6 && !want_v6 {
        report.push("ipv6: the kernel has no IPv6; IPv4 rules only".into());
    }
    let families = [(Family::V4, Some(&backend.v4)), (Family::V6, backend.v6.as_ref())];
    for (family, tools) in families {
        let Some(tools) = tools else { continue };
        let state = NatState::parse(&iptables::save_nat(tools)?);
        let plan = if opts.remove { rules::plan_remove(&state) } else { rules::plan_install(&state, &rules::desired(opts, family)) };
        let what = match (&plan, opts.remove) {
            (Plan::Unchanged, false) => "rules already in place; nothing changed",
            (Plan::Unchanged, true) => "no Strait rules to remove",
            (Plan::Apply(_), false) if state.has_ours() => "rules updated",
            (Plan::Apply(_), false) => "rules installed",
            (Plan::Apply(_), true) => "rules removed",
        };
        if let Plan::Apply(script) = &plan {
            iptables::restore(tools, script)?;
        }
        report.push(format!("{}: {what} (nat: {}, {})", family.name(), rules::INBOUND_CHAIN, rules::OUTPUT_CHAIN));
    }
    Ok(report)
}

/// The `iptables-restore --noflush` input init would apply to a pod without Strait rules (or, with
/// `--remove`, to one with them), for each family. Reads nothing and needs no privileges.
pub fn dry_run(opts: &Options) -> String {
    let mut out = String::new();
    for family in [Family::V4, Family::V6] {
        if family == Family::V6 && !opts.ipv6 {
            continue;
        }
        let tool = match family {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        };
        let want = rules::desired(opts, family);
        let plan = if opts.remove {
            // The state right after an install: its script parses like `iptables-save` output.
            let installed = match rules::plan_install(&NatState::default(), &want) {
                Plan::Apply(s) => NatState::parse(&s),
                Plan::Unchanged => NatState::default(),
            };
            rules::plan_remove(&installed)
        } else {
            rules::plan_install(&NatState::default(), &want)
        };
        if let Plan::Apply(script) = plan {
            out += &format!("# {}: {tool} --noflush\n{script}", family.name());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_prints_both_families_or_the_removal() {
        let Parsed::Run(o) = args::parse(&["--skip-subnets".into(), "10.0.0.0/8".into()]).unwrap() else { panic!() };
        let text = dry_run(&o);
        assert!(text.contains("# ipv4: iptables-restore --noflush\n*nat\n"));
        assert!(text.contains("# ipv6: ip6tables-restore --noflush\n*nat\n"));
        assert!(text.contains("-A STRAIT_OUTPUT -d 10.0.0.0/8 -j RETURN"));
        assert_eq!(text.matches("COMMIT").count(), 2);

        let removal = dry_run(&Options { remove: true, ipv6: false, ..o });
        assert_eq!(
            removal,
            "# ipv4: iptables-restore --noflush\n*nat\n-D PREROUTING -p tcp -j STRAIT_INBOUND\n-D OUTPUT -p tcp -j STRAIT_OUTPUT\n\
             -F STRAIT_INBOUND\n-X STRAIT_INBOUND\n-F STRAIT_OUTPUT\n-X STRAIT_OUTPUT\nCOMMIT\n"
        );
    }
}
