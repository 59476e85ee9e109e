//! The command line of `strait-proxy init`, parsed by hand: the sidecar binary stays small.

use std::net::IpAddr;

pub const USAGE: &str = "\
usage: strait-proxy init [options]

Writes the pod's nat rules (iptables and ip6tables) that send its TCP traffic through the proxy:
inbound TCP to the inbound listener, outbound TCP to the outbound listener, except the proxy's own
traffic (owner match on --proxy-uid), loopback, and the ports and subnets skipped below.
Idempotent; needs CAP_NET_ADMIN in the pod's network namespace.

options:
  --inbound-port PORT          inbound listener (default 7143)
  --outbound-port PORT         outbound listener (default 7140)
  --admin-port PORT            admin listener, never redirected (default 7191)
  --proxy-uid UID              the proxy's user id; its connections are not redirected (default 7102)
  --skip-inbound-ports LIST    e.g. 22,8000-8010: reach the application directly
  --skip-outbound-ports LIST   e.g. 5432: leave the pod without the proxy
  --skip-subnets LIST          e.g. 10.0.0.0/8,fd00::/8: destinations reached without the proxy
  --iptables-mode MODE         nft, legacy or auto (default: auto, the back end that already holds rules)
  --no-ipv6                    IPv4 rules only (default: IPv6 too when the kernel has IPv6)
  --remove                     remove exactly the rules init added
  --dry-run                    print the iptables-restore input instead of applying it
  -h, --help                   this text
";

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ModeChoice {
    Auto,
    Nft,
    Legacy,
}

/// `first..=last`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// `22` or `8000:8010`, as iptables writes it.
    pub fn iptables(&self) -> String {
        if self.first == self.last { self.first.to_string() } else { format!("{}:{}", self.first, self.last) }
    }
}

/// A destination network, stored with the host bits cleared (as iptables prints it).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub proxy_uid: u32,
    pub skip_inbound_ports: Vec<PortRange>,
    pub skip_outbound_ports: Vec<PortRange>,
    pub skip_subnets: Vec<Subnet>,
    pub mode: ModeChoice,
    pub ipv6: bool,
    pub remove: bool,
    pub dry_run: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            inbound_port: 7143,
            outbound_port: 7140,
            admin_port: 7191,
            proxy_uid: 7102,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_subnets: Vec::new(),
            mode: ModeChoice::Auto,
            ipv6: true,
            remove: false,
            dry_run: false,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Run(Options),
    Help,
}

/// Parses the arguments after `init`. `--flag value` and `--flag=value` both work; list flags may
/// repeat. Every mistake is reported at once.
pub fn parse(args: &[String]) -> Result<Parsed, String> {
    let mut o = Options::default();
    let mut errors = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        match flag {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--remove" | "--dry-run" | "--no-ipv6" => {
                if inline.is_some() {
                    errors.push(format!("{flag} takes no value"));
                }
                match flag {
                    "--remove" => o.remove = true,
                    "--dry-run" => o.dry_run = true,
                    _ => o.ipv6 = false,
                }
                continue;
            }
            _ => {}
        }
        if !flag.starts_with('-') {
            errors.push(format!("unexpected argument {arg:?}"));
            continue;
        }
        let known = [
            "--inbound-port",
            "--outbound-port",
            "--admin-port",
            "--proxy-uid",
            "--skip-inbound-ports",
            "--skip-outbound-ports",
            "--skip-subnets",
            "--iptables-mode",
        ];
        if !known.contains(&flag) {
            errors.push(format!("unknown option {flag}"));
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None if i < args.len() => {
                i += 1;
                args[i - 1].clone()
            }
            None => {
                errors.push(format!("{flag} needs a value"));
                continue;
            }
        };
        let port = |errors: &mut Vec<String>, default: u16| match value.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                errors.push(format!("{flag} {value:?} is not a port (1-65535)"));
                default
            }
        };
        match flag {
            "--inbound-port" => o.inbound_port = port(&mut errors, o.inbound_port),
            "--outbound-port" => o.outbound_port = port(&mut errors, o.outbound_port),
            "--admin-port" => o.admin_port = port(&mut errors, o.admin_port),
            "--proxy-uid" => match value.trim().parse::<u32>() {
                Ok(u) => o.proxy_uid = u,
                Err(_) => errors.push(format!("{flag} {value:?} is not a user id")),
            },
            "--skip-inbound-ports" | "--skip-outbound-ports" => match parse_port_ranges(&value) {
                Ok(r) if flag == "--skip-inbound-ports" => o.skip_inbound_ports.extend(r),
                Ok(r) => o.skip_outbound_ports.extend(r),
                Err(e) => errors.push(format!("{flag} {value:?}: {e}")),
            },
            "--skip-subnets" => {
                for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    match parse_subnet(part) {
                        Ok(s) => o.skip_subnets.push(s),
                        Err(e) => errors.push(format!("{flag}: {e}")),
                    }
                }
            }
            "--iptables-mode" => match value.as_str() {
                "auto" => o.mode = ModeChoice::Auto,
                "nft" => o.mode = ModeChoice::Nft,
                "legacy" => o.mode = ModeChoice::Legacy,
                _ => errors.push(format!("{flag} {value:?} is not nft, legacy or auto")),
            },
            _ => unreachable!("checked against the known flags"),
        }
    }
    let mut ports = vec![("--inbound-port", o.inbound_port), ("--outbound-port", o.outbound_port), ("--admin-port", o.admin_port)];
    ports.sort_by_key(|(_, p)| *p);
    for w in ports.windows(2) {
        if w[0].1 == w[1].1 {
            errors.push(format!("{} and {} are both {}", w[0].0, w[1].0, w[0].1));
        }
    }
    if errors.is_empty() { Ok(Parsed::Run(o)) } else { Err(errors.join("\n")) }
}

/// `22,8000-8010` (ports from 1 to 65535).
pub fn parse_port_ranges(s: &str) -> Result<Vec<PortRange>, String> {
    let port = |p: &str| match p.trim().parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{p:?} is not a port (1-65535)")),
    };
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-').or_else(|| part.split_once(':')) {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(part)?, port(part)?),
        };
        if first > last {
            return Err(format!("{part:?} is an empty range"));
        }
        out.push(PortRange { first, last });
    }
    Ok(out)
}

/// `10.0.0.0/8`, `fd00::/8`, or one address (`/32`, `/128`); host bits are cleared.
pub fn parse_subnet(s: &str) -> Result<Subnet, String> {
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = ip.trim().parse().map_err(|_| format!("{s:?} is not an address or a subnet"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.trim().parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
        },
    };
    let addr = match addr {
        IpAddr::V4(a) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
            IpAddr::from((u32::from(a) & mask).to_be_bytes())
        }
        IpAddr::V6(a) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
            IpAddr::from((u128::from(a) & mask).to_be_bytes())
        }
    };
    Ok(Subnet { addr, prefix })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Parsed, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn defaults_follow_the_design() {
        assert_eq!(p(&[]).unwrap(), Parsed::Run(Options::default()));
        let o = Options::default();
        assert_eq!((o.inbound_port, o.outbound_port, o.admin_port, o.proxy_uid), (7143, 7140, 7191, 7102));
    }

    #[test]
    fn both_value_forms_and_repeats() {
        let Parsed::Run(o) = p(&["--inbound-port=1", "--outbound-port", "2", "--skip-outbound-ports", "5", "--skip-outbound-ports=6-7", "--iptables-mode", "legacy", "--remove", "--dry-run", "--no-ipv6"]).unwrap() else {
            panic!()
        };
        assert_eq!((o.inbound_port, o.outbound_port), (1, 2));
        assert_eq!(o.skip_outbound_ports, [PortRange { first: 5, last: 5 }, PortRange { first: 6, last: 7 }]);
        assert_eq!(o.mode, ModeChoice::Legacy);
        assert!(o.remove && o.dry_run && !o.ipv6);
        assert_eq!(p(&["--help"]).unwrap(), Parsed::Help);
    }

    #[test]
    fn every_mistake_at_once() {
        let e = p(&["--inbound-port", "0", "--skip-subnets", "10.0.0.0/33,nope", "--iptables-mode", "fast", "--bogus", "--proxy-uid"]).unwrap_err();
        for want in ["--inbound-port", "10.0.0.0/33", "nope", "fast", "--bogus", "--proxy-uid needs a value"] {
            assert!(e.contains(want), "{want} missing from {e}");
        }
        assert!(p(&["--admin-port", "7143"]).unwrap_err().contains("both 7143"));
        assert!(p(&["--skip-inbound-ports", "9-1"]).is_err());
    }

    #[test]
    fn subnets_are_normalized() {
        assert_eq!(parse_subnet("10.1.2.3/16").unwrap().to_string(), "10.1.0.0/16");
        assert_eq!(parse_subnet("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(parse_subnet("fd00::1/8").unwrap().to_string(), "fd00::/8");
        assert_eq!(parse_subnet("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(parse_subnet("2001:db8::1").unwrap().to_string(), "2001:db8::1/128");
    }
}
