//! The proxy's configuration, read from the environment in one place (DESIGN §9).
//!
//! Every variable is checked at start-up and all errors are reported together, so a broken pod spec
//! shows every mistake at once instead of one per restart.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

mod app_probes;

pub use app_probes::{AppProbe, AppProbes, DEFAULT_PROBE_TIMEOUT, HttpProbe, PROBE_KINDS, ProbeAction};

/// Loopback only: in a pod, iptables sends the application's outbound traffic here; on a laptop the
/// application uses it as an HTTP proxy. Nothing outside the pod should reach it.
pub const DEFAULT_OUTBOUND_ADDR: &str = "127.0.0.1:7140";
/// All interfaces: peers' proxies and redirected inbound traffic arrive on the pod's IP.
pub const DEFAULT_INBOUND_ADDR: &str = "0.0.0.0:7143";
/// With the defaults, the proxy also listens on these when the host has IPv6, so that the IPv6
/// traffic `strait-proxy init` redirects (to `::1` outbound, to the pod's IPv6 address inbound)
/// finds a listener. Skipped, with a log line, where IPv6 is off; listed addresses are never skipped.
pub const DEFAULT_OUTBOUND_ADDR_V6: &str = "[::1]:7140";
pub const DEFAULT_INBOUND_ADDR_V6: &str = "[::]:7143";
/// Loopback: the admin port answers `/config` and `/metrics` to whoever reaches it, so nothing
/// outside the pod does unless asked. The injector sets `STRAIT_ADMIN_ADDR=0.0.0.0:7191` explicitly,
/// since the kubelet's probes and Prometheus arrive on the pod's IP.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:7191";
/// A client of the admin port has this long to send a request's headers. Probes and scrapes send
/// theirs in one packet; 10 s is well above a kubelet probe's default timeout (1 s) on a loaded
/// node, yet closes a slow-loris connection long before many pile up.
pub const DEFAULT_ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent admin connections. A pod sees a few probes per container per period, a Prometheus
/// scrape and an occasional `strait stat`; 64 leaves room for slow probes in every container while
/// bounding what a flood of idle connections costs (past it, new connections are closed at once).
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;
/// Concurrent connections per inbound or outbound listener. Each costs two file descriptors
/// (client and upstream) and, while busy, two 16 KiB copy buffers: 10 000 keep a listener within a
/// 65 536 open-files limit with room for the others and ~320 MB of buffers at worst, far above what a
/// sidecar serves. Past it, new connections are closed at once and counted.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// A TLS handshake between proxies, either way: one round trip and a signature in-cluster, so 5 s
/// is generous even for a CPU-throttled sidecar, while a peer that opens TCP and stalls mid-handshake
/// (or a partial ClientHello) is closed instead of holding the connection forever.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent streams a client may open on one HTTP/2 connection to the proxy. A peer proxy carries
/// every request its pod sends to one port of this pod over a single connection, so hyper's 200
/// would queue a busy client behind its own requests; a stream costs a task and its header block
/// (bodies are bounded by the connection's flow-control window, not by the stream count).
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 1024;
/// An HTTP/2 connection to the proxy on which no request started for this long is closed
/// gracefully (GOAWAY; open streams finish). Clients reconnect on demand with one handshake, and
/// 10 min keeps bursty callers on warm connections while idle ones stop holding a task and buffers.
pub const DEFAULT_H2_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Any HTTP/2 connection to the proxy is closed gracefully after this long, so a peer's
/// certificate (checked at the handshake only) and the trust anchors are checked again at least
/// this often: after an anchor rotation or a revoked workload, old connections do not live on.
pub const DEFAULT_H2_MAX_CONNECTION_AGE: Duration = Duration::from_secs(30 * 60);
/// Where the controller runs and as whom, for the identity it proves to proxies by default: the
/// chart installs it in this namespace with this ServiceAccount (the controller's default too).
pub const DEFAULT_CONTROLLER_NAMESPACE: &str = "strait-system";
pub const DEFAULT_CONTROLLER_SERVICE_ACCOUNT: &str = "strait-controller";
/// A sidecar's CPU budget is small; one worker serves a typical pod and keeps RSS low.
pub const DEFAULT_WORKER_THREADS: usize = 1;
/// How long protocol detection waits for the client's first bytes. Short, so that a
/// server-speaks-first protocol on a port nobody marked opaque costs one second, not a hang.
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_secs(1);
/// In-flight work may finish for this long after SIGTERM; Kubernetes' default
/// terminationGracePeriodSeconds is 30 s, so the proxy exits a little before the kubelet kills it.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
/// After SIGTERM the listeners keep accepting this long (within the grace period): Kubernetes
/// removes a terminating pod from its EndpointSlices at the same time as it signals the pod, and
/// the removal reaches client proxies through the API server's watch and the controller (on a
/// busy cluster a second or two, kube-proxy's iptables for non-meshed clients as long); clients
/// that have not heard of it yet are served instead of refused. Istio's drain duration is also 5 s.
pub const DEFAULT_SHUTDOWN_ACCEPT_PERIOD: Duration = Duration::from_secs(5);
/// Connecting to a peer proxy or an application: local or in-cluster, so a second is generous.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a request waits for the controller's first answer about a destination (and an inbound
/// connection for the workload's first inbound policy) before it fails closed. Controller answers
/// take milliseconds; this only bounds the wait while the controller is unreachable.
pub const DEFAULT_DISCOVERY_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct Config {
    /// The first of `outbound_addrs`.
    pub outbound_addr: SocketAddr,
    /// Every outbound listener (`STRAIT_OUTBOUND_ADDR` may list several, comma-separated).
    pub outbound_addrs: Vec<SocketAddr>,
    /// The first of `inbound_addrs`.
    pub inbound_addr: SocketAddr,
    pub inbound_addrs: Vec<SocketAddr>,
    /// Listeners the defaults added for IPv6, not asked for: skipped where the host has no IPv6.
    pub optional_addrs: Vec<SocketAddr>,
    pub admin_addr: SocketAddr,
    /// Where the inbound side reaches the workload. `None` (the default): the address the
    /// connection arrived on — the original destination of a redirected connection, the local
    /// address a peer proxy dialled — so the workload is reached exactly as a client outside the mesh
    /// would reach it (an application that listens on loopback only stays private).
    pub inbound_local_ip: Option<std::net::IpAddr>,
    pub namespace: String,
    pub workload: String,
    pub service_account: String,
    pub discovery: DiscoverySource,
    pub identity_addr: Option<String>,
    /// The SPIFFE identity the identity service must prove (it is served over TLS: the proxy sends
    /// its token there).
    pub identity_server_id: String,
    pub trust_anchors: Option<PathBuf>,
    /// The anchors as PEM text (`STRAIT_TRUST_ANCHORS_PEM`, what the injector sets) instead of a
    /// file; at most one of the two is set. Text cannot change, so a rotation restarts the pod.
    pub trust_anchors_pem: Option<String>,
    pub trust_domain: String,
    pub inbound_mode: InboundMode,
    pub identity_token_file: Option<PathBuf>,
    pub worker_threads: usize,
    pub log: String,
    pub log_json: bool,
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
    /// `STRAIT_DISCOVERY_WAIT`: see [`DEFAULT_DISCOVERY_WAIT`].
    pub discovery_wait: Duration,
    pub shutdown_grace: Duration,
    /// How long after SIGTERM the listeners keep accepting (never beyond `shutdown_grace`).
    pub shutdown_accept: Duration,
    /// Ports whose traffic skips protocol detection (server-speaks-first protocols).
    pub inbound_opaque_ports: Vec<u16>,
    pub outbound_opaque_ports: Vec<u16>,
    /// The application's kubelet probes, run through the admin port (`STRAIT_APP_PROBES`).
    pub app_probes: AppProbes,
    pub admin_header_timeout: Duration,
    pub admin_max_connections: usize,
    /// Per inbound or outbound listener.
    pub max_connections: usize,
    pub tls_handshake_timeout: Duration,
    /// Authorities followed through the controller at once (`STRAIT_MAX_SUBSCRIPTIONS`).
    pub max_subscriptions: usize,
    /// Ports of the workload a peer proxy may name, besides those the controller's inbound policy
    /// lists (`STRAIT_INBOUND_PORTS`).
    pub inbound_ports: Vec<u16>,
}

/// Whether the inbound side accepts plaintext from outside the mesh.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum InboundMode {
    /// Mesh TLS or plaintext (the default: meshing a workload never breaks its existing clients).
    Permissive,
    /// Only mesh TLS; plaintext to a meshed port is refused and counted.
    Strict,
}

#[derive(Clone, Debug)]
pub enum DiscoverySource {
    /// A mesh file read directly (no controller): tests, demos, single-machine setups.
    File(PathBuf),
    /// The controller's discovery gRPC address.
    Controller(String),
    /// Nothing is meshed: everything passes through.
    None,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid proxy configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get`, so tests need not touch the process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut errors = Vec::new();
        let mut addr = |key: &str, default: &str| -> SocketAddr {
            let v = get(key).unwrap_or_else(|| default.to_string());
            v.parse().unwrap_or_else(|_| {
                errors.push(format!("{key}={v:?} is not an ip:port socket address"));
                SocketAddr::from(([0, 0, 0, 0], 0))
            })
        };
        let admin_addr = addr("STRAIT_ADMIN_ADDR", DEFAULT_ADMIN_ADDR);
        let mut addrs = |key: &str, defaults: &[&str]| -> Vec<SocketAddr> {
            let v = get(key).unwrap_or_else(|| defaults.join(","));
            let parsed: Result<Vec<SocketAddr>, _> = v.split(',').map(|a| a.trim().parse::<SocketAddr>()).collect();
            match parsed {
                Ok(list) if !list.is_empty() => list,
                _ => {
                    errors.push(format!("{key}={v:?} is not an ip:port socket address (or a comma-separated list of them)"));
                    vec![SocketAddr::from(([0, 0, 0, 0], 0))]
                }
            }
        };
        let outbound_addrs = addrs("STRAIT_OUTBOUND_ADDR", &[DEFAULT_OUTBOUND_ADDR, DEFAULT_OUTBOUND_ADDR_V6]);
        let inbound_addrs = addrs("STRAIT_INBOUND_ADDR", &[DEFAULT_INBOUND_ADDR, DEFAULT_INBOUND_ADDR_V6]);
        let optional_addrs: Vec<SocketAddr> = [("STRAIT_OUTBOUND_ADDR", DEFAULT_OUTBOUND_ADDR_V6), ("STRAIT_INBOUND_ADDR", DEFAULT_INBOUND_ADDR_V6)]
            .into_iter()
            .filter(|(key, _)| get(key).is_none())
            .filter_map(|(_, a)| a.parse().ok())
            .collect();

        let inbound_local_ip = get("STRAIT_INBOUND_LOCAL_IP").and_then(|v| match v.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                errors.push(format!("STRAIT_INBOUND_LOCAL_IP={v:?} is not an IP address"));
                None
            }
        });

        let discovery = match (get("STRAIT_DISCOVERY_FILE"), get("STRAIT_DISCOVERY_ADDR")) {
            (Some(_), Some(_)) => {
                errors.push("set only one of STRAIT_DISCOVERY_FILE and STRAIT_DISCOVERY_ADDR".into());
                DiscoverySource::None
            }
            (Some(f), None) => DiscoverySource::File(f.into()),
            (None, Some(a)) => DiscoverySource::Controller(a),
            (None, None) => DiscoverySource::None,
        };

        let worker_threads = match get("STRAIT_WORKER_THREADS") {
            None => DEFAULT_WORKER_THREADS,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    errors.push(format!("STRAIT_WORKER_THREADS={v:?} is not a whole number >= 1"));
                    DEFAULT_WORKER_THREADS
                }
            },
        };

        let mut count = |key: &str, default: usize| -> usize {
            match get(key) {
                None => default,
                Some(v) => match v.parse::<usize>() {
                    Ok(n) if n >= 1 => n,
                    _ => {
                        errors.push(format!("{key}={v:?} is not a whole number >= 1"));
                        default
                    }
                },
            }
        };
        let admin_max_connections = count("STRAIT_ADMIN_MAX_CONNECTIONS", DEFAULT_ADMIN_MAX_CONNECTIONS);
        let max_connections = count("STRAIT_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS);
        let max_subscriptions =
            count("STRAIT_MAX_SUBSCRIPTIONS", crate::discover::remote::DEFAULT_MAX_SUBSCRIPTIONS);

        let mut duration = |key: &str, default: Duration| -> Duration {
            match get(key) {
                None => default,
                Some(v) => parse_duration(&v).unwrap_or_else(|| {
                    errors.push(format!("{key}={v:?} is not a duration such as 500ms, 2s or 1m"));
                    default
                }),
            }
        };
        let detect_timeout = duration("STRAIT_DETECT_TIMEOUT", DEFAULT_DETECT_TIMEOUT);
        let connect_timeout = duration("STRAIT_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT);
        let discovery_wait = duration("STRAIT_DISCOVERY_WAIT", DEFAULT_DISCOVERY_WAIT);
        let shutdown_grace = duration("STRAIT_SHUTDOWN_GRACE_PERIOD", DEFAULT_SHUTDOWN_GRACE);
        let admin_header_timeout = duration("STRAIT_ADMIN_HEADER_TIMEOUT", DEFAULT_ADMIN_HEADER_TIMEOUT);
        let tls_handshake_timeout = duration("STRAIT_TLS_HANDSHAKE_TIMEOUT", DEFAULT_TLS_HANDSHAKE_TIMEOUT);
        let shutdown_accept = match get("STRAIT_SHUTDOWN_ACCEPT_PERIOD") {
            // The default never outlasts a short grace period someone configured.
            None => DEFAULT_SHUTDOWN_ACCEPT_PERIOD.min(shutdown_grace),
            Some(_) => duration("STRAIT_SHUTDOWN_ACCEPT_PERIOD", DEFAULT_SHUTDOWN_ACCEPT_PERIOD),
        };
        if shutdown_accept > shutdown_grace {
            errors.push(format!(
                "STRAIT_SHUTDOWN_ACCEPT_PERIOD ({shutdown_accept:?}) is longer than STRAIT_SHUTDOWN_GRACE_PERIOD ({shutdown_grace:?})"
            ));
        }

        let mut ports = |key: &str| -> Vec<u16> {
            match get(key) {
                None => Vec::new(),
                Some(v) => parse_ports(&v).unwrap_or_else(|e| {
                    errors.push(format!("{key}={v:?}: {e}"));
                    Vec::new()
                }),
            }
        };
        let inbound_opaque_ports = ports("STRAIT_INBOUND_OPAQUE_PORTS");
        let outbound_opaque_ports = ports("STRAIT_OUTBOUND_OPAQUE_PORTS");
        let inbound_ports = ports("STRAIT_INBOUND_PORTS");

        let log_json = match get("STRAIT_LOG_FORMAT").as_deref() {
            None | Some("plain") => false,
            Some("json") => true,
            Some(v) => {
                errors.push(format!("STRAIT_LOG_FORMAT={v:?} is not plain or json"));
                false
            }
        };

        let inbound_mode = match get("STRAIT_INBOUND_MODE").as_deref() {
            None | Some("permissive") => InboundMode::Permissive,
            Some("strict") => InboundMode::Strict,
            Some(v) => {
                errors.push(format!("STRAIT_INBOUND_MODE={v:?} is not permissive or strict"));
                InboundMode::Permissive
            }
        };
        let app_probes = match get("STRAIT_APP_PROBES") {
            None => AppProbes::default(),
            Some(v) => AppProbes::parse(&v).unwrap_or_else(|errs| {
                errors.extend(errs.into_iter().map(|e| format!("STRAIT_APP_PROBES: {e}")));
                AppProbes::default()
            }),
        };
        let trust_domain = get("STRAIT_TRUST_DOMAIN").unwrap_or_else(|| "cluster.local".into());
        let identity_server_id = get("STRAIT_IDENTITY_SERVER_ID").unwrap_or_else(|| {
            format!("spiffe://{trust_domain}/ns/{DEFAULT_CONTROLLER_NAMESPACE}/sa/{DEFAULT_CONTROLLER_SERVICE_ACCOUNT}")
        });
        if crate::identity::server_name_for(&identity_server_id).is_none() {
            errors.push(format!(
                "STRAIT_IDENTITY_SERVER_ID={identity_server_id:?} is not spiffe://<trust domain>/ns/<namespace>/sa/<service account>"
            ));
        }
        let trust_anchors_pem = get("STRAIT_TRUST_ANCHORS_PEM").filter(|p| !p.trim().is_empty());
        match (get("STRAIT_TRUST_ANCHORS").is_some(), trust_anchors_pem.is_some()) {
            (true, true) => errors.push("set only one of STRAIT_TRUST_ANCHORS and STRAIT_TRUST_ANCHORS_PEM".into()),
            (false, false) if get("STRAIT_IDENTITY_ADDR").is_some() => errors.push(
                "STRAIT_IDENTITY_ADDR needs STRAIT_TRUST_ANCHORS or STRAIT_TRUST_ANCHORS_PEM (the PEM bundle peers are checked against)"
                    .into(),
            ),
            _ => {}
        }

        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        Ok(Config {
            outbound_addr: outbound_addrs[0],
            outbound_addrs,
            inbound_addr: inbound_addrs[0],
            inbound_addrs,
            optional_addrs,
            admin_addr,
            inbound_local_ip,
            namespace: get("STRAIT_NAMESPACE").unwrap_or_else(|| "default".into()),
            workload: get("STRAIT_WORKLOAD").unwrap_or_default(),
            service_account: get("STRAIT_SERVICE_ACCOUNT").unwrap_or_else(|| "default".into()),
            discovery,
            identity_addr: get("STRAIT_IDENTITY_ADDR"),
            identity_server_id,
            trust_anchors: get("STRAIT_TRUST_ANCHORS").map(Into::into),
            trust_anchors_pem,
            trust_domain,
            inbound_mode,
            identity_token_file: get("STRAIT_IDENTITY_TOKEN_FILE").map(Into::into),
            worker_threads,
            log: get("STRAIT_LOG").unwrap_or_else(|| "info".into()),
            log_json,
            detect_timeout,
            connect_timeout,
            discovery_wait,
            shutdown_grace,
            shutdown_accept,
            inbound_opaque_ports,
            outbound_opaque_ports,
            app_probes,
            admin_header_timeout,
            admin_max_connections,
            max_connections,
            tls_handshake_timeout,
            max_subscriptions,
            inbound_ports,
        })
    }
}

/// `500ms`, `2s`, `1m`, `1h`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// `25,3306,8000-8010`.
pub fn parse_ports(s: &str) -> Result<Vec<u16>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: u16 = a.trim().parse().map_err(|_| format!("{part:?} is not a port range"))?;
            let b: u16 = b.trim().parse().map_err(|_| format!("{part:?} is not a port range"))?;
            if a > b {
                return Err(format!("{part:?} is an empty range"));
            }
            out.extend(a..=b);
        } else {
            out.push(part.parse().map_err(|_| format!("{part:?} is not a port"))?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.outbound_addr.to_string(), "127.0.0.1:7140");
        assert_eq!(c.inbound_addr.to_string(), "0.0.0.0:7143");
        // Loopback unless asked (the injector asks for 0.0.0.0:7191).
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:7191");
        assert_eq!(c.admin_header_timeout, DEFAULT_ADMIN_HEADER_TIMEOUT);
        assert_eq!((c.admin_max_connections, c.max_connections), (64, 10_000));
        assert_eq!(c.worker_threads, 1);
        // Dual-stack by default (the IPv6 listeners are skipped where IPv6 is off).
        assert_eq!(c.outbound_addrs, ["127.0.0.1:7140".parse().unwrap(), "[::1]:7140".parse().unwrap()]);
        assert_eq!(c.inbound_addrs, ["0.0.0.0:7143".parse().unwrap(), "[::]:7143".parse().unwrap()]);
        assert_eq!(c.optional_addrs, [c.outbound_addrs[1], c.inbound_addrs[1]]);
        assert_eq!(c.inbound_local_ip, None);
    }

    #[test]
    fn listeners_may_be_listed() {
        let c = cfg(&[("STRAIT_OUTBOUND_ADDR", "127.0.0.1:1, [::1]:1"), ("STRAIT_INBOUND_ADDR", "127.0.0.1:2")]).unwrap();
        assert_eq!(c.outbound_addr.to_string(), "127.0.0.1:1");
        assert_eq!(c.outbound_addrs.len(), 2);
        assert_eq!(c.inbound_addrs, [c.inbound_addr]);
        assert!(c.optional_addrs.is_empty());
        assert!(cfg(&[("STRAIT_OUTBOUND_ADDR", "127.0.0.1:1,")]).is_err());
    }

    #[test]
    fn reports_every_error_at_once() {
        let e = cfg(&[
            ("STRAIT_OUTBOUND_ADDR", "nope"),
            ("STRAIT_WORKER_THREADS", "0"),
            ("STRAIT_DETECT_TIMEOUT", "fast"),
            ("STRAIT_INBOUND_OPAQUE_PORTS", "25,x"),
        ])
        .unwrap_err();
        assert_eq!(e.0.len(), 4, "{e}");
    }

    #[test]
    fn app_probes_are_checked_at_start_up() {
        let c = cfg(&[("STRAIT_APP_PROBES", r#"{"app/readiness": {"port": 8080, "path": "/ready"}}"#)]).unwrap();
        assert_eq!(c.app_probes.get("app", "readiness").map(|p| p.port), Some(8080));
        assert!(cfg(&[]).unwrap().app_probes.is_empty());
        let e = cfg(&[("STRAIT_APP_PROBES", r#"{"app/readiness": {"port": 8080, "scheme": "ftp"}}"#)]).unwrap_err();
        assert_eq!(e.0, [r#"STRAIT_APP_PROBES: "app/readiness": scheme "ftp" is not HTTP or HTTPS"#], "{e}");
        let e = cfg(&[("STRAIT_APP_PROBES", "{not json")]).unwrap_err();
        assert!(e.0[0].starts_with("STRAIT_APP_PROBES: key must be a string"), "{e}");
    }

    #[test]
    fn trust_anchors_from_a_file_or_as_text_never_both() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let c = cfg(&[("STRAIT_IDENTITY_ADDR", "c:8080"), ("STRAIT_TRUST_ANCHORS_PEM", pem)]).unwrap();
        assert_eq!(c.trust_anchors_pem.as_deref(), Some(pem));
        assert!(c.trust_anchors.is_none());
        assert!(cfg(&[("STRAIT_IDENTITY_ADDR", "c:8080"), ("STRAIT_TRUST_ANCHORS", "/a.pem")]).is_ok());
        let both = cfg(&[("STRAIT_TRUST_ANCHORS", "/a.pem"), ("STRAIT_TRUST_ANCHORS_PEM", pem)]).unwrap_err();
        assert!(both.to_string().contains("only one"), "{both}");
        assert!(cfg(&[("STRAIT_IDENTITY_ADDR", "c:8080")]).is_err());
    }

    #[test]
    fn parses_durations_and_ports() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("1y"), None);
        assert_eq!(parse_ports("25, 8000-8002").unwrap(), vec![25, 8000, 8001, 8002]);
        assert!(parse_ports("9-1").is_err());
    }
}
