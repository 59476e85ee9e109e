//! The nat rules `strait-proxy init` wants, in the exact form `iptables-save` prints them, and the
//! `iptables-restore --noflush` scripts that get a table from what it holds to what we want.
//!
//! Everything here is pure text: the same code renders `--dry-run`, plans an install or a removal
//! against the current `iptables-save -t nat` output, and is unit-tested without root.

use std::collections::BTreeSet;

use super::args::{Options, Subnet};

/// Our chains. Nothing else jumps to them, so every rule that does is ours too.
pub const INBOUND_CHAIN: &str = "STRAIT_INBOUND";
pub const OUTPUT_CHAIN: &str = "STRAIT_OUTPUT";

/// The two rules we add to built-in chains (chain, rule spec): TCP arriving at the pod, and TCP the
/// pod's processes open.
pub const JUMPS: [(&str, &str); 2] = [("PREROUTING", "-p tcp -j STRAIT_INBOUND"), ("OUTPUT", "-p tcp -j STRAIT_OUTPUT")];

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

/// The contents of our two chains (rule specs, without `-A CHAIN`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub inbound: Vec<String>,
    pub output: Vec<String>,
}

/// The rules for one address family, written the way `iptables-save` prints them (so that a second
/// run can see that nothing needs to change).
pub fn desired(o: &Options, family: Family) -> RuleSet {
    let ret_port = |p: &super::args::PortRange| format!("-p tcp -m tcp --dport {} -j RETURN", p.iptables());
    let mut inbound = Vec::new();
    // Peer proxies reach the inbound listener itself, and Prometheus / the kubelet the admin port.
    let mut seen = BTreeSet::new();
    for p in [o.inbound_port, o.admin_port] {
        if seen.insert((p, p)) {
            inbound.push(format!("-p tcp -m tcp --dport {p} -j RETURN"));
        }
    }
    for r in &o.skip_inbound_ports {
        if seen.insert((r.first, r.last)) {
            inbound.push(ret_port(r));
        }
    }
    inbound.push(format!("-p tcp -j REDIRECT --to-ports {}", o.inbound_port));

    let mut output = vec![
        // The proxy's own connections (to peers, to the application, to the controller).
        format!("-m owner --uid-owner {} -j RETURN", o.proxy_uid),
        // Traffic that stays inside the pod: to loopback, or to the pod's own addresses (routed over lo).
        "-o lo -j RETURN".to_string(),
        format!("-d {} -j RETURN", family.loopback()),
    ];
    let mut seen = BTreeSet::new();
    for r in &o.skip_outbound_ports {
        if seen.insert((r.first, r.last)) {
            output.push(ret_port(r));
        }
    }
    let mut seen = BTreeSet::new();
    for s in o.skip_subnets.iter().filter(|s| s.family() == family) {
        if seen.insert(s.to_string()) {
            output.push(format!("-d {s} -j RETURN"));
        }
    }
    output.push(format!("-p tcp -j REDIRECT --to-ports {}", o.outbound_port));
    RuleSet { inbound, output }
}

/// What the nat table holds, from `iptables-save -t nat`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatState {
    pub chains: BTreeSet<String>,
    /// (chain, rule spec) in order.
    pub rules: Vec<(String, String)>,
}

impl NatState {
    pub fn parse(save: &str) -> NatState {
        let mut state = NatState::default();
        let mut in_nat = false;
        for line in save.lines().map(str::trim) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
                continue;
            }
            if !in_nat || line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line == "COMMIT" {
                in_nat = false;
            } else if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next() {
                    state.chains.insert(name.to_string());
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
                state.rules.push((chain.to_string(), spec.trim().to_string()));
            }
        }
        state
    }

    fn has_chain(&self, c: &str) -> bool {
        self.chains.contains(c)
    }

    fn rules_of(&self, chain: &str) -> Vec<&str> {
        self.rules.iter().filter(|(c, _)| c == chain).map(|(_, s)| s.as_str()).collect()
    }

    /// Rules outside our chains that jump to one of them.
    fn jumps(&self) -> Vec<(&str, &str)> {
        self.rules
            .iter()
            .filter(|(c, _)| c != INBOUND_CHAIN && c != OUTPUT_CHAIN)
            .filter(|(_, s)| {
                let t: Vec<&str> = s.split_whitespace().collect();
                t.windows(2).any(|w| matches!(w[0], "-j" | "-g" | "--jump" | "--goto") && (w[1] == INBOUND_CHAIN || w[1] == OUTPUT_CHAIN))
            })
            .map(|(c, s)| (c.as_str(), s.as_str()))
            .collect()
    }

    /// Whether any of our rules or chains is present.
    pub fn has_ours(&self) -> bool {
        self.has_chain(INBOUND_CHAIN) || self.has_chain(OUTPUT_CHAIN) || !self.jumps().is_empty()
    }
}

/// An `iptables-restore --noflush` script, or nothing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    Unchanged,
    Apply(String),
}

/// From `state` to `want`: our chains are (re)built in one transaction, the jumps added once, and
/// stray or duplicate jumps to our chains removed. Nothing else in the table is touched.
pub fn plan_install(state: &NatState, want: &RuleSet) -> Plan {
    let jumps = state.jumps();
    let chains_ok = state.has_chain(INBOUND_CHAIN)
        && state.has_chain(OUTPUT_CHAIN)
        && state.rules_of(INBOUND_CHAIN) == want.inbound.iter().map(String::as_str).collect::<Vec<_>>()
        && state.rules_of(OUTPUT_CHAIN) == want.output.iter().map(String::as_str).collect::<Vec<_>>();
    let mut sorted_jumps = jumps.clone();
    sorted_jumps.sort();
    let mut wanted_jumps = JUMPS.to_vec();
    wanted_jumps.sort();
    if chains_ok && sorted_jumps == wanted_jumps {
        return Plan::Unchanged;
    }
    let mut s = String::from("*nat\n");
    // Declaring a chain creates it, or flushes it if it exists (jumps to it stay valid).
    s += &format!(":{INBOUND_CHAIN} - [0:0]\n:{OUTPUT_CHAIN} - [0:0]\n");
    let mut kept = BTreeSet::new();
    for (chain, spec) in &jumps {
        let wanted = JUMPS.contains(&(*chain, *spec));
        if !wanted || !kept.insert((*chain, *spec)) {
            s += &format!("-D {chain} {spec}\n");
        }
    }
    for r in &want.inbound {
        s += &format!("-A {INBOUND_CHAIN} {r}\n");
    }
    for r in &want.output {
        s += &format!("-A {OUTPUT_CHAIN} {r}\n");
    }
    for (chain, spec) in JUMPS {
        if !kept.contains(&(chain, spec)) {
            s += &format!("-A {chain} {spec}\n");
        }
    }
    s += "COMMIT\n";
    Plan::Apply(s)
}

/// Removes exactly what [`plan_install`] adds: the jumps to our chains, then the chains.
pub fn plan_remove(state: &NatState) -> Plan {
    if !state.has_ours() {
        return Plan::Unchanged;
    }
    let mut s = String::from("*nat\n");
    for (chain, spec) in state.jumps() {
        s += &format!("-D {chain} {spec}\n");
    }
    for c in [INBOUND_CHAIN, OUTPUT_CHAIN] {
        if state.has_chain(c) {
            s += &format!("-F {c}\n-X {c}\n");
        }
    }
    s += "COMMIT\n";
    Plan::Apply(s)
}

impl Subnet {
    pub fn family(&self) -> Family {
        if self.addr.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::args::{Parsed, parse};

    fn opts(args: &[&str]) -> Options {
        match parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap() {
            Parsed::Run(o) => o,
            Parsed::Help => panic!("help"),
        }
    }

    /// What `iptables-save -t nat` prints once `want` is installed into an empty table.
    fn saved(want: &RuleSet) -> String {
        let mut s = String::from("# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [3:180]\n:POSTROUTING ACCEPT [0:0]\n");
        s += ":STRAIT_INBOUND - [0:0]\n:STRAIT_OUTPUT - [0:0]\n";
        s += "-A PREROUTING -p tcp -j STRAIT_INBOUND\n-A OUTPUT -p tcp -j STRAIT_OUTPUT\n";
        for r in &want.inbound {
            s += &format!("-A STRAIT_INBOUND {r}\n");
        }
        for r in &want.output {
            s += &format!("-A STRAIT_OUTPUT {r}\n");
        }
        s + "COMMIT\n"
    }

    #[test]
    fn renders_the_rules_with_every_exception() {
        let o = opts(&["--skip-inbound-ports", "22,8000-8010", "--skip-outbound-ports", "5432", "--skip-subnets", "10.1.2.3/16,fd00::1/8,192.0.2.7"]);
        let v4 = desired(&o, Family::V4);
        assert_eq!(
            v4.inbound,
            [
                "-p tcp -m tcp --dport 7143 -j RETURN",
                "-p tcp -m tcp --dport 7191 -j RETURN",
                "-p tcp -m tcp --dport 22 -j RETURN",
                "-p tcp -m tcp --dport 8000:8010 -j RETURN",
                "-p tcp -j REDIRECT --to-ports 7143",
            ]
        );
        assert_eq!(
            v4.output,
            [
                "-m owner --uid-owner 7102 -j RETURN",
                "-o lo -j RETURN",
                "-d 127.0.0.0/8 -j RETURN",
                "-p tcp -m tcp --dport 5432 -j RETURN",
                "-d 10.1.0.0/16 -j RETURN",
                "-d 192.0.2.7/32 -j RETURN",
                "-p tcp -j REDIRECT --to-ports 7140",
            ]
        );
        let v6 = desired(&o, Family::V6);
        assert!(v6.output.contains(&"-d ::1/128 -j RETURN".to_string()));
        assert!(v6.output.contains(&"-d fd00::/8 -j RETURN".to_string()));
        assert!(!v6.output.iter().any(|r| r.contains("10.1.0.0")));
    }

    #[test]
    fn install_into_an_empty_table_then_nothing_to_do() {
        let want = desired(&opts(&[]), Family::V4);
        let empty = NatState::parse("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n");
        let Plan::Apply(script) = plan_install(&empty, &want) else { panic!("must install") };
        assert!(script.starts_with("*nat\n:STRAIT_INBOUND - [0:0]\n:STRAIT_OUTPUT - [0:0]\n"));
        assert!(script.ends_with("-A PREROUTING -p tcp -j STRAIT_INBOUND\n-A OUTPUT -p tcp -j STRAIT_OUTPUT\nCOMMIT\n"));
        assert!(!script.contains("-D "));
        assert_eq!(plan_install(&NatState::parse(&saved(&want)), &want), Plan::Unchanged);
    }

    #[test]
    fn changed_options_rebuild_the_chains_without_a_second_jump() {
        let old = desired(&opts(&[]), Family::V4);
        let new = desired(&opts(&["--skip-outbound-ports", "9000"]), Family::V4);
        let Plan::Apply(script) = plan_install(&NatState::parse(&saved(&old)), &new) else { panic!() };
        assert!(script.contains("--dport 9000"));
        assert!(!script.contains("-A PREROUTING"), "the jump is already there: {script}");
    }

    #[test]
    fn duplicate_jumps_are_reduced_to_one() {
        let want = desired(&opts(&[]), Family::V4);
        let twice = saved(&want).replace("-A OUTPUT -p tcp -j STRAIT_OUTPUT\n", "-A OUTPUT -p tcp -j STRAIT_OUTPUT\n-A OUTPUT -p tcp -j STRAIT_OUTPUT\n");
        let Plan::Apply(script) = plan_install(&NatState::parse(&twice), &want) else { panic!() };
        assert_eq!(script.matches("-D OUTPUT -p tcp -j STRAIT_OUTPUT").count(), 1);
        assert!(!script.contains("-A OUTPUT -p tcp -j STRAIT_OUTPUT"));
    }

    #[test]
    fn remove_touches_only_our_rules() {
        let want = desired(&opts(&[]), Family::V4);
        let text = saved(&want).replace("COMMIT", "-A OUTPUT -d 192.0.2.1/32 -j RETURN\nCOMMIT");
        let state = NatState::parse(&text);
        let Plan::Apply(script) = plan_remove(&state) else { panic!() };
        assert_eq!(
            script,
            "*nat\n-D PREROUTING -p tcp -j STRAIT_INBOUND\n-D OUTPUT -p tcp -j STRAIT_OUTPUT\n-F STRAIT_INBOUND\n-X STRAIT_INBOUND\n-F STRAIT_OUTPUT\n-X STRAIT_OUTPUT\nCOMMIT\n"
        );
        assert_eq!(plan_remove(&NatState::parse("*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j RETURN\nCOMMIT\n")), Plan::Unchanged);
    }

    #[test]
    fn other_tables_are_ignored() {
        let s = NatState::parse("*filter\n:STRAIT_INBOUND - [0:0]\n-A INPUT -j STRAIT_INBOUND\nCOMMIT\n*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n");
        assert!(!s.has_ours());
    }
}
