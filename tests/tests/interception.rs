//! Transparent interception with real iptables rules, pods as network namespaces (DESIGN §2, §8):
//! unmodified clients reach services by their virtual IPs through both proxies, skipped ports and
//! subnets bypass the proxy, unknown destinations pass through, the proxy's own connections are
//! never intercepted, and `strait-proxy init` is idempotent and removes exactly what it added.
//!
//! Runs only with `STRAIT_NETNS_TESTS=1` as root (`make test` sets it up); otherwise each test says
//! it is skipped and passes. See `tests/README.md` and `strait_tests::netns`.

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use strait_tests::{
    Process,
    metrics::value,
    netns::{self, Cluster, Http1, Pod, enabled, normalize_save, percentile},
};

/// A meshed service's virtual IPs (IPv4, IPv6) and the opaque banner service's.
const WEB_IP4: &str = "10.96.0.10";
const WEB_IP6: &str = "fd00:96::10";
const BANNER_IP4: &str = "10.96.0.25";

/// Pod a (client, meshed), pod b (server, meshed: `web` on 8080 and `banner` on 2525, plus
/// `extra` on 9091 that no service names), pod c (outside the mesh: no proxy, no rules).
struct Mesh {
    // Fields drop in order: processes, then the pods' namespaces, then the node.
    _procs: Vec<Process>,
    a: Pod,
    b: Pod,
    c: Pod,
    /// The proxies have identities and speak mTLS to each other.
    tls: bool,
    _cluster: Cluster,
}

fn mesh_yaml(b: &Pod) -> String {
    let (b4, b6) = (b.ip4, b.ip6);
    format!(
        r#"trustDomain: cluster.local
workloads:
  - {{name: a, namespace: demo, serviceAccount: a, token: token-a}}
  - {{name: b, namespace: demo, serviceAccount: b, token: token-b}}
services:
  - name: web
    namespace: demo
    clusterIP: {WEB_IP4}
    ports: [{{port: 8080, protocol: http}}]
    endpoints: [{{address: "{b4}:8080", proxy: "{b4}:7143", workload: b}}]
  - name: web6
    namespace: demo
    clusterIP: {WEB_IP6}
    ports: [{{port: 8080, protocol: http}}]
    endpoints: [{{address: "[{b6}]:8080", proxy: "[{b6}]:7143", workload: b}}]
  - name: banner
    namespace: demo
    clusterIP: {BANNER_IP4}
    ports: [{{port: 2525, protocol: opaque}}]
    endpoints: [{{address: "{b4}:2525", proxy: "{b4}:7143", workload: b}}]
"#
    )
}

/// Builds the cluster: controller on the node, apps, `init` with `init_a` / `init_b` extra
/// arguments in pods a and b, then their proxies (with `proxy_a` / `proxy_b` extra environment).
/// With a controller that serves identity, the proxies get certificates and speak mTLS.
fn mesh(label: &str, init_a: &[&str], init_b: &[&str], proxy_a: &[(&str, &str)], proxy_b: &[(&str, &str)]) -> Mesh {
    let cluster = Cluster::new(label);
    let (a, b, c) = (cluster.pod("a"), cluster.pod("b"), cluster.pod("c"));
    cluster.start_controller(&mesh_yaml(&b));
    let mut procs = vec![
        b.app("http", "web-b", 8080),
        b.app("banner", "banner-b", 2525),
        b.app("http", "extra-b", 9091),
        c.app("http", "outside-c", 8080),
    ];
    a.init_ok(init_a);
    b.init_ok(init_b);
    for (pod, extra) in [(&b, proxy_b), (&a, proxy_a)] {
        let env = cluster.proxy_env(pod);
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.extend_from_slice(extra);
        procs.push(pod.proxy(&env));
    }
    let tls = cluster.has_identity();
    if !tls {
        eprintln!("note: this controller does not serve identity; the pods' proxies speak plaintext");
    }
    Mesh { _procs: procs, a, b, c, tls, _cluster: cluster }
}

/// curl's output: status line and headers (`-D -`), then the body.
struct Curl {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Curl {
    fn header(&self, name: &str) -> &str {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map_or("", |(_, v)| v.as_str())
    }
}

fn curl(pod: &Pod, url: &str) -> Curl {
    let out = pod.curl(&["-g", "-D", "-", url]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {url} in pod {} failed ({}): {}{text}",
        pod.name,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Curl { status, headers, body: body.to_owned() }
}

/// The IP of an `x-seen-peer` value (`[::ffff:10.200.0.3]:41234` → 10.200.0.3).
fn peer_ip(seen: &str) -> IpAddr {
    let addr: SocketAddr = seen.parse().unwrap_or_else(|e| panic!("x-seen-peer {seen:?}: {e}"));
    match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn opened(metrics: &str, direction: &str) -> f64 {
    value(metrics, "strait_tcp_connections_opened_total", &[("direction", direction)])
}

#[test]
fn unmodified_curl_reaches_a_service_ip_through_both_proxies() {
    if !enabled("unmodified_curl_reaches_a_service_ip_through_both_proxies") {
        return;
    }
    let m = mesh("curl-service-ip", &[], &[], &[], &[]);
    let r = curl(&m.a, &format!("http://{WEB_IP4}:8080/hello"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "web-b GET /hello");
    // The server saw the request come from its own pod's address: from its local proxy, not from pod a.
    assert_eq!(peer_ip(r.header("x-seen-peer")), IpAddr::V4(m.b.ip4), "x-seen-peer");
    assert_eq!(r.header("x-seen-host"), format!("{WEB_IP4}:8080"));

    let (ma, mb) = (m.a.metrics(), m.b.metrics());
    let out = [("direction", "outbound"), ("dst_service", "web"), ("status_code", "200")];
    assert_eq!(value(&ma, "strait_requests_total", &out), 1.0, "pod a's proxy routed it to the service:\n{ma}");
    assert_eq!(value(&ma, "strait_passthrough_total", &[]), 0.0);
    assert_eq!(value(&mb, "strait_requests_total", &[("direction", "inbound"), ("status_code", "200")]), 1.0, "{mb}");
    if m.tls {
        // mTLS between the pods: b's proxy verified a's identity and vouches for it to the app.
        assert_eq!(r.header("x-seen-client-id"), "spiffe://cluster.local/ns/demo/sa/a");
        let a_id = "spiffe://cluster.local/ns/demo/sa/a";
        let b_id = "spiffe://cluster.local/ns/demo/sa/b";
        assert_eq!(value(&ma, "strait_requests_total", &[("dst_service", "web"), ("tls", "true"), ("peer_id", b_id)]), 1.0, "{ma}");
        assert_eq!(value(&mb, "strait_requests_total", &[("direction", "inbound"), ("tls", "true"), ("peer_id", a_id)]), 1.0, "{mb}");
    }
}

#[test]
fn ipv6_service_ip_through_both_proxies_and_ipv6_passthrough() {
    if !enabled("ipv6_service_ip_through_both_proxies_and_ipv6_passthrough") {
        return;
    }
    let m = mesh("curl-ipv6", &[], &[], &[], &[]);
    let r = curl(&m.a, &format!("http://[{WEB_IP6}]:8080/six"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "web-b GET /six");
    assert_eq!(peer_ip(r.header("x-seen-peer")), IpAddr::V6(m.b.ip6));
    let ma = m.a.metrics();
    assert_eq!(value(&ma, "strait_requests_total", &[("direction", "outbound"), ("dst_service", "web6")]), 1.0, "{ma}");
    let mb = m.b.metrics();
    assert_eq!(value(&mb, "strait_requests_total", &[("direction", "inbound")]), 1.0, "{mb}");

    // An IPv6 destination no service names: passed through by a, reached directly on c.
    let r = curl(&m.a, &format!("http://[{}]:8080/direct", m.c.ip6));
    assert_eq!(r.body, "outside-c GET /direct");
    assert_eq!(peer_ip(r.header("x-seen-peer")), IpAddr::V6(m.a.ip6));
    assert_eq!(value(&m.a.metrics(), "strait_passthrough_total", &[("protocol", "http")]), 1.0);
}

#[test]
fn a_destination_outside_the_mesh_is_passed_through() {
    if !enabled("a_destination_outside_the_mesh_is_passed_through") {
        return;
    }
    let m = mesh("passthrough", &[], &[], &[], &[]);
    // Pod c runs no proxy and no service names its IP.
    let r = curl(&m.a, &format!("http://{}:8080/outside", m.c.ip4));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "outside-c GET /outside");
    assert_eq!(peer_ip(r.header("x-seen-peer")), IpAddr::V4(m.a.ip4));
    let ma = m.a.metrics();
    assert_eq!(value(&ma, "strait_passthrough_total", &[("direction", "outbound"), ("protocol", "http")]), 1.0, "{ma}");
    assert_eq!(value(&ma, "strait_requests_total", &[("dst_service", "web")]), 0.0);

    // Pod b's own IP is no service either: a passes it through, and b's rules redirect it to b's
    // inbound side, which forwards it to the original port of its workload.
    let r = curl(&m.a, &format!("http://{}:8080/pod-ip", m.b.ip4));
    assert_eq!(r.body, "web-b GET /pod-ip");
    assert_eq!(peer_ip(r.header("x-seen-peer")), IpAddr::V4(m.b.ip4), "through b's proxy");
    assert_eq!(value(&m.a.metrics(), "strait_passthrough_total", &[("protocol", "http")]), 2.0);
    let mb = m.b.metrics();
    assert_eq!(value(&mb, "strait_requests_total", &[("direction", "inbound"), ("status_code", "200")]), 1.0, "{mb}");
}

#[test]
fn skipped_ports_and_subnets_bypass_the_proxy() {
    if !enabled("skipped_ports_and_subnets_bypass_the_proxy") {
        return;
    }
    let c_subnet = "10.200.0.4/32";
    let m = mesh(
        "skips",
        &["--skip-outbound-ports", "9091", "--skip-subnets", c_subnet],
        &["--skip-inbound-ports", "9091"],
        &[],
        &[],
    );
    assert_eq!(m.c.ip4.to_string() + "/32", c_subnet);
    let before_a = opened(&m.a.metrics(), "outbound");
    let before_b = opened(&m.b.metrics(), "inbound");

    // Port 9091 is skipped on a's way out and on b's way in: neither proxy sees the connection,
    // and the application sees pod a's address.
    let r = curl(&m.a, &format!("http://{}:9091/skipped-port", m.b.ip4));
    assert_eq!(r.body, "extra-b GET /skipped-port");
    assert_eq!(peer_ip(r.header("x-seen-peer")), IpAddr::V4(m.a.ip4));

    // Pod c's address is a skipped subnet for a.
    let r = curl(&m.a, &format!("http://{}:8080/skipped-subnet", m.c.ip4));
    assert_eq!(r.body, "outside-c GET /skipped-subnet");

    let (ma, mb) = (m.a.metrics(), m.b.metrics());
    assert_eq!(opened(&ma, "outbound"), before_a, "a's proxy saw a skipped connection:\n{ma}");
    assert_eq!(value(&ma, "strait_passthrough_total", &[]), 0.0);
    assert_eq!(opened(&mb, "inbound"), before_b, "b's proxy saw a skipped connection:\n{mb}");

    // The same port on c (not skipped inbound there, but c has no rules) from a: still skipped by a.
    // And a port that is not skipped still goes through a's proxy.
    let r = curl(&m.a, &format!("http://{}:8080/not-skipped", m.b.ip4));
    assert_eq!(r.body, "web-b GET /not-skipped");
    assert_eq!(opened(&m.a.metrics(), "outbound"), before_a + 1.0);
}

#[test]
fn the_proxys_own_upstream_connections_are_never_intercepted() {
    if !enabled("the_proxys_own_upstream_connections_are_never_intercepted") {
        return;
    }
    let m = mesh("no-loop", &[], &[], &[], &[]);
    const N: usize = 20;
    let base_a = m.a.metrics();
    let base_b = m.b.metrics();
    for i in 0..N {
        let r = curl(&m.a, &format!("http://{WEB_IP4}:8080/n/{i}"));
        assert_eq!(r.body, format!("web-b GET /n/{i}"));
    }
    let (ma, mb) = (m.a.metrics(), m.b.metrics());
    // Exactly one accepted outbound connection per curl on a: the proxy's connections to b's proxy
    // and to the controller would show up here (and loop) if they were redirected.
    assert_eq!(opened(&ma, "outbound") - opened(&base_a, "outbound"), N as f64, "{ma}");
    assert_eq!(opened(&ma, "inbound"), 0.0, "{ma}");
    assert_eq!(value(&ma, "strait_requests_total", &[("direction", "outbound")]), N as f64);
    assert_eq!(value(&ma, "strait_passthrough_total", &[]), 0.0);
    // On b: peer connections only (the h2 connection a's proxy keeps), N requests, and nothing
    // on b's outbound side — b's proxy connecting to its application was not redirected.
    let peer_conns = opened(&mb, "inbound") - opened(&base_b, "inbound");
    assert!((1.0..=2.0).contains(&peer_conns), "{peer_conns} peer connections for {N} requests:\n{mb}");
    assert_eq!(opened(&mb, "outbound"), 0.0, "{mb}");
    assert_eq!(value(&mb, "strait_requests_total", &[("direction", "inbound")]), N as f64);
    assert_eq!(
        m.b.ns.http(SocketAddr::from(([127, 0, 0, 1], 8080)), "GET", "/count", "x").unwrap().text(),
        N.to_string(),
        "the application served each request once"
    );
}

#[test]
fn server_speaks_first_on_an_opaque_port_through_interception() {
    if !enabled("server_speaks_first_on_an_opaque_port_through_interception") {
        return;
    }
    // Through the service IP the port is opaque by discovery. Through the pod IP, which no service
    // names, both proxies are told (their opaque-ports settings): otherwise each would wait out its
    // detection timeout for a first client byte that never comes.
    let opaque_out = [("STRAIT_OUTBOUND_OPAQUE_PORTS", "2525")];
    let m = mesh("banner", &[], &[], &opaque_out, &[("STRAIT_INBOUND_OPAQUE_PORTS", "2525")]);
    for target in [format!("{BANNER_IP4}:2525"), format!("{}:2525", m.b.ip4)] {
        // The client writes nothing until it has read the greeting.
        let s = m.a.connect(target.parse().unwrap()).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "220 banner-b ready\r\n", "via {target}");
        (&s).write_all(b"hello\r\n").unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "echo: hello\r\n");
        (&s).write_all(b"QUIT\r\n").unwrap();
    }
    let (ma, mb) = (m.a.metrics(), m.b.metrics());
    // Neither proxy waited for a first client byte: detection was skipped every time, never timed out.
    let detect = |text: &str, dir: &str, result: &str| {
        value(text, "strait_protocol_detect_total", &[("direction", dir), ("result", result)])
    };
    assert_eq!(detect(&ma, "outbound", "skipped"), 2.0, "{ma}");
    assert_eq!(detect(&ma, "outbound", "timeout"), 0.0, "{ma}");
    // Through the service: a peer connection with an opaque transport header; through the pod IP:
    // redirected. Either way b's opaque port skips detection.
    assert_eq!(detect(&mb, "inbound", "skipped"), 2.0, "{mb}");
    assert_eq!(detect(&mb, "inbound", "timeout"), 0.0, "{mb}");
    assert_eq!(value(&ma, "strait_passthrough_total", &[("protocol", "tcp")]), 1.0, "the pod IP is passed through");
    assert_eq!(opened(&mb, "inbound"), 2.0, "{mb}");
}

#[test]
fn the_proxys_own_ports_reached_from_outside_do_not_loop() {
    if !enabled("the_proxys_own_ports_reached_from_outside_do_not_loop") {
        return;
    }
    for local_ip in [None, Some("127.0.0.1")] {
        let env: Vec<(&str, &str)> = local_ip.map(|ip| ("STRAIT_INBOUND_LOCAL_IP", ip)).into_iter().collect();
        let m = mesh("own-ports", &[], &[], &[], &env);
        let b = m.b.ip4;
        // Pod c (no rules) tries to use b's outbound side as a proxy to reach itself through b.
        let open_proxy = m.c.ns.http(
            SocketAddr::from((b, netns::OUTBOUND_PORT)),
            "GET",
            &format!("http://{}:8080/via-b", m.c.ip4),
            &format!("{}:8080", m.c.ip4),
        );
        assert!(open_proxy.is_err() || open_proxy.as_ref().unwrap().status >= 500, "{open_proxy:?}");
        // The admin port is reached directly (not redirected to the inbound side).
        let admin = m.c.ns.http(SocketAddr::from((b, netns::ADMIN_PORT)), "GET", "/ready", "b").unwrap();
        assert_eq!(admin.status, 200);
        // The inbound port is the peer-proxy port: plain HTTP there is not a transport header.
        let inbound = m.c.ns.http(SocketAddr::from((b, netns::INBOUND_PORT)), "GET", "/", "b");
        assert!(inbound.is_err(), "{inbound:?}");

        let mb = m.b.metrics();
        assert_eq!(opened(&mb, "outbound"), 0.0, "nothing reached b's outbound side:\n{mb}");
        assert_eq!(value(&mb, "strait_inbound_rejected_connections_total", &[]), 1.0, "{mb}");
        if local_ip.is_some() {
            assert_eq!(value(&mb, "strait_inbound_refused_total", &[("reason", "loop")]), 1.0, "{mb}");
        }
        let count = m.c.ns.http(SocketAddr::from(([127, 0, 0, 1], 8080)), "GET", "/count", "c").unwrap();
        assert_eq!(count.text(), "0", "c's application was never reached through b");
        drop(m);
    }
}

/// The rule set of a pod's namespace, for both families, as one normalized text.
fn saved_rules(pod: &Pod, mode: &str) -> String {
    let v4 = pod.ns.exec_ok(&[&format!("iptables-{mode}-save")]);
    let v6 = pod.ns.exec_ok(&[&format!("ip6tables-{mode}-save")]);
    normalize_save(&format!("{v4}\n{v6}"))
}

#[test]
fn init_twice_then_remove_restores_the_rule_set() {
    if !enabled("init_twice_then_remove_restores_the_rule_set") {
        return;
    }
    for mode in ["nft", "legacy"] {
        let cluster = Cluster::new(&format!("init-{mode}"));
        let pod = cluster.pod("p");
        // Rules someone else wrote, in the tables we touch and in one we do not.
        for (tool, dst) in [("iptables", "192.0.2.1/32"), ("ip6tables", "2001:db8::1/128")] {
            let t = format!("{tool}-{mode}");
            pod.ns.exec_ok(&[&t, "-t", "nat", "-A", "OUTPUT", "-d", dst, "-j", "RETURN"]);
            pod.ns.exec_ok(&[&t, "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"]);
        }
        let before = saved_rules(&pod, mode);

        let first = pod.init_ok(&["--iptables-mode", mode, "--skip-subnets", "10.0.0.0/8,fd00:1::/64"]);
        assert!(first.contains("ipv4: rules installed") && first.contains("ipv6: rules installed"), "{first}");
        let installed = saved_rules(&pod, mode);
        for want in [
            ":STRAIT_INBOUND - [0:0]",
            "-A PREROUTING -p tcp -j STRAIT_INBOUND",
            "-A OUTPUT -p tcp -j STRAIT_OUTPUT",
            "-A STRAIT_OUTPUT -m owner --uid-owner 7102 -j RETURN",
            "-A STRAIT_OUTPUT -d 10.0.0.0/8 -j RETURN",
            "-A STRAIT_OUTPUT -d fd00:1::/64 -j RETURN",
            "-A STRAIT_INBOUND -p tcp -j REDIRECT --to-ports 7143",
        ] {
            assert!(installed.contains(want), "{mode}: {want:?} missing from\n{installed}");
        }

        let second = pod.init_ok(&["--iptables-mode", mode, "--skip-subnets", "10.0.0.0/8,fd00:1::/64"]);
        assert!(second.contains("ipv4: rules already in place") && second.contains("ipv6: rules already in place"), "{second}");
        assert_eq!(saved_rules(&pod, mode), installed, "{mode}: the second run changed the rules");

        let removed = pod.init_ok(&["--iptables-mode", mode, "--remove"]);
        assert!(removed.contains("ipv4: rules removed"), "{removed}");
        assert_eq!(saved_rules(&pod, mode), before, "{mode}: --remove did not restore the rule set");
        let again = pod.init_ok(&["--iptables-mode", mode, "--remove"]);
        assert!(again.contains("no Strait rules to remove"), "{again}");
        assert_eq!(saved_rules(&pod, mode), before);
    }
}

#[test]
fn init_auto_mode_follows_the_back_end_that_holds_rules() {
    if !enabled("init_auto_mode_follows_the_back_end_that_holds_rules") {
        return;
    }
    let cluster = Cluster::new("init-auto");
    let (fresh, legacy) = (cluster.pod("fresh"), cluster.pod("legacy"));
    legacy.ns.exec_ok(&["iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-d", "192.0.2.1/32", "-j", "RETURN"]);
    legacy.ns.exec_ok(&["iptables-legacy", "-t", "filter", "-A", "INPUT", "-j", "ACCEPT"]);

    let out = fresh.init_ok(&[]);
    assert!(out.contains("back end: nft"), "{out}");
    assert!(fresh.ns.exec_ok(&["iptables-nft-save", "-t", "nat"]).contains("STRAIT_OUTPUT"));

    let out = legacy.init_ok(&[]);
    assert!(out.contains("back end: legacy"), "{out}");
    assert!(legacy.ns.exec_ok(&["iptables-legacy-save", "-t", "nat"]).contains("-j STRAIT_OUTPUT"));
    assert!(!legacy.ns.exec_ok(&["iptables-nft-save"]).contains("STRAIT"), "nothing went to nft");
}

#[test]
fn init_without_privileges_fails_clearly_and_dry_run_needs_none() {
    if !enabled("init_without_privileges_fails_clearly_and_dry_run_needs_none") {
        return;
    }
    let cluster = Cluster::new("init-eperm");
    let pod = cluster.pod("p");
    let proxy = netns::proxy_binary();
    let as_user = |args: &[&str]| {
        let uid = netns::PROXY_UID.to_string();
        let mut argv = vec!["setpriv", "--reuid", &uid, "--regid", &uid, "--clear-groups", proxy.to_str().unwrap(), "init"];
        argv.extend_from_slice(args);
        pod.ns.exec(&argv)
    };
    let out = as_user(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not permitted") && err.contains("CAP_NET_ADMIN"), "{err}");

    let out = as_user(&["--dry-run", "--skip-inbound-ports", "22"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("-A STRAIT_INBOUND -p tcp -m tcp --dport 22 -j RETURN"), "{text}");
    assert!(!pod.ns.exec_ok(&["iptables-nft-save"]).contains("STRAIT"), "a dry run changes nothing");

    let out = pod.init(&["--skip-subnets", "nonsense"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Report, not assert: the latency the transparent path adds over explicit proxy mode, same load.
/// One client in pod a (a thread inside its namespace), sequential `GET /`, each timed from the
/// first byte written (or the connect) to the last byte read; after a warm-up, `ROUNDS` rounds of
/// `STRAIT_NETNS_BENCH_N` requests per case, interleaved so drift on a shared machine hits every case
/// alike. Transparent: to the service IP (iptables redirects to a's outbound listener, which routes by
/// the original destination). Explicit: to 127.0.0.1:7140 with absolute-form requests naming
/// `web.demo:8080`. Both then go a's proxy → b's proxy (its inbound port, not redirected) → the
/// application. Two loads: one keep-alive connection (the redirect costs only per-packet NAT), and
/// a new connection per request (plus the redirect's connection setup and `SO_ORIGINAL_DST`).
#[test]
fn measure_transparent_vs_explicit_latency() {
    if !enabled("measure_transparent_vs_explicit_latency") {
        return;
    }
    const ROUNDS: usize = 5;
    let n: usize = std::env::var("STRAIT_NETNS_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let m = mesh("latency", &[], &[], &[], &[]);
    let transparent: SocketAddr = format!("{WEB_IP4}:8080").parse().unwrap();
    let explicit = SocketAddr::from(([127, 0, 0, 1], netns::OUTBOUND_PORT));
    let cases: [(&str, SocketAddr, &str, &str, bool); 4] = [
        ("transparent, keep-alive", transparent, "/", "10.96.0.10:8080", false),
        ("explicit, keep-alive", explicit, "http://web.demo:8080/", "web.demo:8080", false),
        ("transparent, new conn", transparent, "/", "10.96.0.10:8080", true),
        ("explicit, new conn", explicit, "http://web.demo:8080/", "web.demo:8080", true),
    ];
    let samples: Vec<Vec<Duration>> = m
        .a
        .ns
        .run_in(move || {
            let connect = |a: SocketAddr| netns::connect_here(a, Duration::from_secs(5)).unwrap();
            let one = |c: &mut Http1, target: &str, host: &str, close: bool| {
                let extra: &[(&str, &str)] = if close { &[("connection", "close")] } else { &[] };
                let r = c.request("GET", target, host, extra).unwrap();
                assert_eq!(r.status, 200, "{}", r.text());
            };
            let mut all = vec![Vec::new(); cases.len()];
            for round in 0..=ROUNDS {
                for (i, &(_, addr, target, host, fresh)) in cases.iter().enumerate() {
                    // Round 0 warms up (connections between the proxies, discovery answers).
                    let count = if round == 0 { n / 10 } else { n };
                    let mut kept = (!fresh).then(|| Http1::new(connect(addr)));
                    for _ in 0..count {
                        let t = Instant::now();
                        match &mut kept {
                            Some(c) => one(c, target, host, false),
                            None => one(&mut Http1::new(connect(addr)), target, host, true),
                        }
                        if round > 0 {
                            all[i].push(t.elapsed());
                        }
                    }
                }
            }
            all
        })
        .unwrap();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mut report = format!("transparent vs explicit, pod a → b through both proxies, {ROUNDS} rounds × {n} requests per case:\n");
    let mut p = Vec::new();
    for ((name, ..), mut v) in cases.iter().zip(samples) {
        v.sort();
        let (p50, p90, p99) = (us(percentile(&v, 50.0)), us(percentile(&v, 90.0)), us(percentile(&v, 99.0)));
        report += &format!("  {name:<24} p50={p50:.0}us p90={p90:.0}us p99={p99:.0}us max={:.0}us\n", us(percentile(&v, 100.0)));
        p.push((p50, p99));
    }
    for (label, t, e) in [("keep-alive", p[0], p[1]), ("new connection per request", p[2], p[3])] {
        report += &format!("  added by the transparent path, {label}: p50 {:+.0}us, p99 {:+.0}us\n", t.0 - e.0, t.1 - e.1);
    }
    eprint!("{report}");
    let ma = m.a.metrics();
    assert_eq!(value(&ma, "strait_passthrough_total", &[]), 0.0);
}

/// Writes `request` on a connection opened from pod c (outside the mesh) to `dst`, after `pause`,
/// and returns what came back (empty when the connection was closed unanswered).
fn paused_request(from: &Pod, dst: SocketAddr, pause: Duration, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = from.ns.connect(dst, Duration::from_secs(5)).expect("connect from pod c");
    std::thread::sleep(pause);
    let _ = s.write_all(request.as_bytes());
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).to_lowercase()
}

/// Security: a plaintext client outside the mesh that pauses past the detection timeout before
/// its request, or starts it with an empty line, must not reach the application with an identity
/// header of its own (it used to be forwarded unparsed as opaque TCP). In strict mode the same
/// client is refused.
#[test]
fn a_paused_plaintext_client_cannot_forge_the_identity_header() {
    if !enabled("a_paused_plaintext_client_cannot_forge_the_identity_header") {
        return;
    }
    let forged = "strait-client-id: spiffe://cluster.local/ns/kube-system/sa/admin";
    for strict in [false, true] {
        let env: Vec<(&str, &str)> = if strict { vec![("STRAIT_INBOUND_MODE", "strict")] } else { vec![] };
        let m = mesh("forge", &[], &[], &[], &env);
        let dst = SocketAddr::from((m.b.ip4, 8080));
        for (name, pause, lead) in [("pause", Duration::from_millis(1500), ""), ("empty line", Duration::ZERO, "\r\n")] {
            let req = format!("{lead}GET /who HTTP/1.1\r\nHost: web\r\n{forged}\r\nConnection: close\r\n\r\n");
            let got = paused_request(&m.c, dst, pause, &req);
            assert!(!got.contains("kube-system"), "{name} (strict: {strict}): the application saw the forged identity:\n{got}");
            if strict {
                assert!(got.is_empty(), "{name}: strict mode answered plaintext:\n{got}");
            } else {
                assert!(got.starts_with("http/1.1 200"), "{name}: the request was not served:\n{got}");
                assert!(got.contains("x-seen-client-id: \r\n"), "{name}: {got}");
            }
        }
        drop(m);
    }
}

/// Kubelet's probes in strict mode (issue 13, item 4): kubelet runs on the node and has no mesh
/// identity, so a plain request from the node to the application's port is refused; the probe
/// rewritten to the admin port (`/app-probe/<container>/<kind>`) reaches the application, which the
/// proxy probes on 127.0.0.1 directly (its UID is exempt from interception), not through the mesh.
#[test]
fn kubelet_probes_reach_a_strict_pod_through_the_admin_port() {
    if !enabled("kubelet_probes_reach_a_strict_pod_through_the_admin_port") {
        return;
    }
    let probes = r#"{"app/readiness": {"port": 8080, "path": "/ready-check"},
                     "app/liveness": {"port": 8080, "tcp": true},
                     "app/startup": {"port": 8080, "path": "/status/500"}}"#;
    let m = mesh("probes", &[], &[], &[], &[("STRAIT_INBOUND_MODE", "strict"), ("STRAIT_APP_PROBES", probes)]);
    let node = m._cluster.node();
    let admin = SocketAddr::from((m.b.ip4, netns::ADMIN_PORT));

    let ready = node.http(admin, "GET", "/app-probe/app/readiness", &admin.to_string()).unwrap();
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.text(), "web-b GET /ready-check", "the application answered the probe");
    let live = node.http(admin, "GET", "/app-probe/app/liveness", &admin.to_string()).unwrap();
    assert_eq!(live.status, 200, "{}", live.text());
    let startup = node.http(admin, "GET", "/app-probe/app/startup", &admin.to_string()).unwrap();
    assert_eq!(startup.status, 503, "{}", startup.text());
    assert_eq!(startup.header("strait-error"), Some("probe-failed"));
    assert!(startup.text().contains("the application answered 500"), "{}", startup.text());
    let unknown = node.http(admin, "GET", "/app-probe/other/readiness", &admin.to_string()).unwrap();
    assert_eq!(unknown.status, 404);
    let mb = m.b.metrics();
    assert_eq!(opened(&mb, "inbound"), 0.0, "the probes did not go through the inbound side:\n{mb}");
    assert_eq!(opened(&mb, "outbound"), 0.0, "nor through the outbound side:\n{mb}");

    // The same application port, asked directly from the node: refused (strict, no identity).
    let direct = node.http(SocketAddr::from((m.b.ip4, 8080)), "GET", "/ready-check", "web");
    assert!(direct.is_err(), "strict mode answered plaintext from the node: {direct:?}");
    let mb = m.b.metrics();
    assert_eq!(value(&mb, "strait_inbound_refused_total", &[("reason", "strict-plaintext")]), 1.0, "{mb}");
}

/// A pod manifest as a user writes it: one `app` container, opted in to injection, with an
/// httpGet readiness probe on a named port when `probe` is set.
fn pod_manifest(name: &str, service_account: &str, probe: bool) -> serde_json::Value {
    let mut app = serde_json::json!({
        "name": "app",
        "image": "strait-testsrv",
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    });
    if probe {
        app["readinessProbe"] = serde_json::json!({"httpGet": {"path": "/ready-check", "port": "http"}});
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "annotations": {"strait.io/inject": "enabled"}},
        "spec": {"serviceAccountName": service_account, "containers": [app]}
    })
}

/// The containers of an injected pod, init containers first, by name.
fn injected_container<'a>(pod: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|list| pod["spec"][list].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in the injected pod:\n{pod:#}"))
}

/// A pod as the injector wrote it, run the way a kubelet would: the `strait-init` container's args
/// with the proxy image's entrypoint, then the `strait-proxy` container with its env (literal values
/// as written; `fieldRef`s resolved like the downward API) and its token volume mounted at its
/// `mountPath`, holding the workload's bootstrap token where the projected volume's `path` says.
fn run_injected(cluster: &Cluster, pod: &Pod, injected: &serde_json::Value) -> Process {
    let init = injected_container(injected, "strait-init");
    let args: Vec<&str> =
        init["args"].as_array().expect("strait-init has args").iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args.first(), Some(&"init"), "strait-init runs `strait-proxy init ...`: {args:?}");
    pod.init_container_ok(&args);

    let proxy = injected_container(injected, "strait-proxy");
    let mut env: Vec<(String, String)> = Vec::new();
    let mut literals = Vec::new();
    for e in proxy["env"].as_array().expect("strait-proxy has env") {
        let name = e["name"].as_str().expect("env name").to_owned();
        assert!(env.iter().all(|(k, _)| *k != name), "{name} injected twice:\n{proxy:#}");
        let value = if let Some(v) = e.get("value") {
            let v = v.as_str().unwrap_or_else(|| panic!("{name}: value is not a string")).to_owned();
            literals.push((name.clone(), v.clone()));
            v
        } else {
            match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => injected["metadata"]["name"].as_str().unwrap().to_owned(),
                Some("metadata.namespace") => injected["metadata"]["namespace"].as_str().unwrap().to_owned(),
                Some("status.podIP") => pod.ip4.to_string(),
                Some("spec.serviceAccountName") => injected["spec"]["serviceAccountName"].as_str().unwrap().to_owned(),
                other => panic!("{name}: a source the test does not resolve: {other:?} in {e}"),
            }
        };
        env.push((name, value));
    }

    // The token volume: a folder of this pod's own, bind-mounted where the spec mounts it.
    let mounts = proxy["volumeMounts"].as_array().expect("strait-proxy has volume mounts");
    assert_eq!(mounts.len(), 1, "the proxy mounts only its token: {mounts:?}");
    let mount_path = std::path::PathBuf::from(mounts[0]["mountPath"].as_str().unwrap());
    let volume = injected["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mounts[0]["name"])
        .expect("the mounted volume is in the pod");
    let token_path =
        volume["projected"]["sources"][0]["serviceAccountToken"]["path"].as_str().expect("a projected token");
    let source = cluster.dir.join(format!("volume-{}", pod.name));
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join(token_path), format!("token-{}", pod.name)).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(source.join(token_path), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::create_dir_all(&mount_path)
        .unwrap_or_else(|e| panic!("creating the mount point {}: {e}", mount_path.display()));

    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let p = pod.proxy_exactly(&pairs, &[(source, mount_path)]);

    // What the proxy really got: the injected variables and nothing else of ours, every literal
    // value unchanged.
    let environ = std::fs::read(format!("/proc/{}/environ", p.pid())).expect("the proxy's environment");
    let got: Vec<(String, String)> = environ
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('='))
        .filter(|(k, _)| k.starts_with("STRAIT_"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let mut want = env.clone();
    want.sort();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    assert_eq!(got_sorted, want, "the proxy's STRAIT_* environment is the injected one");
    for (k, v) in &literals {
        assert!(got.iter().any(|(gk, gv)| gk == k && gv == v), "{k} was changed");
    }
    p
}

/// Issue 13: the injected pod spec is not just text. Two pods go through `inject_template` with
/// the node's controller as discovery and identity; each runs what its spec says; the client
/// reaches the server (strict, from the controller's workload entry) over mTLS, the node's
/// plaintext is refused, and the rewritten readiness probe passes through the admin port.
#[test]
fn injected_pods_run_as_written_with_mtls_in_strict_mode_and_a_probe() {
    use strait_controller::inject::{Context, InjectorConfig, Outcome, inject_template};
    if !enabled("injected_pods_run_as_written_with_mtls_in_strict_mode_and_a_probe") {
        return;
    }
    let cluster = Cluster::new("injected");
    let (client, server) = (cluster.pod("client"), cluster.pod("server"));
    let s4 = server.ip4;
    cluster.start_controller(&format!(
        r#"trustDomain: cluster.local
workloads:
  - {{name: client, namespace: demo, serviceAccount: client-sa, token: token-client}}
  - {{name: server, namespace: demo, serviceAccount: server-sa, token: token-server, inboundMode: strict}}
services:
  - name: web
    namespace: demo
    clusterIP: {WEB_IP4}
    ports: [{{port: 8080, protocol: http}}]
    endpoints: [{{address: "{s4}:8080", proxy: "{s4}:7143", workload: server}}]
"#
    ));
    assert!(cluster.has_identity(), "the node's controller serves identity");
    let anchors =
        std::fs::read_to_string(cluster.dir.join("trust-anchors.pem")).expect("the controller's trust anchors");
    let node_addr = |port: u16| SocketAddr::from((netns::NODE_IP4, port)).to_string();
    let config = InjectorConfig {
        proxy_image: "strait-proxy:test".into(),
        discovery_addr: node_addr(netns::DISCOVERY_PORT),
        identity_addr: node_addr(netns::IDENTITY_PORT),
        ..InjectorConfig::default()
    };
    config.validate().expect("a valid injector config");
    let ctx = Context {
        config: &config,
        trust_anchors_pem: &anchors,
        namespace: "demo",
        namespace_annotations: None,
        native_sidecars: true,
    };
    let inject = |manifest: serde_json::Value| match inject_template(&manifest, &ctx) {
        Outcome::Injected { template, warnings } => {
            assert!(warnings.is_empty(), "{warnings:?}");
            template
        }
        other => panic!("not injected: {other:?}"),
    };
    let client_pod = inject(pod_manifest("client", "client-sa", false));
    let server_pod = inject(pod_manifest("server", "server-sa", true));

    let _app = server.app("http", "web-server", 8080);
    let _server_proxy = run_injected(&cluster, &server, &server_pod);
    let _client_proxy = run_injected(&cluster, &client, &client_pod);

    // Client → server through both proxies, mTLS: the server's proxy vouches for the client.
    let r = curl(&client, &format!("http://{WEB_IP4}:8080/hello"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("web-server GET /hello"), "{}", r.body);
    let client_id = "spiffe://cluster.local/ns/demo/sa/client-sa";
    assert_eq!(r.header("x-seen-client-id"), client_id);
    let ms = server.metrics();
    assert_eq!(
        value(&ms, "strait_requests_total", &[("direction", "inbound"), ("tls", "true"), ("peer_id", client_id)]),
        1.0,
        "{ms}"
    );

    // Strict: the node's plaintext to the app port is refused.
    let node = cluster.node();
    let direct = node.http(SocketAddr::from((s4, 8080)), "GET", "/hello", "web");
    assert!(direct.is_err(), "strict mode answered plaintext from the node: {direct:?}");
    let ms = server.metrics();
    assert_eq!(value(&ms, "strait_inbound_refused_total", &[("reason", "strict-plaintext")]), 1.0, "{ms}");

    // The readiness probe as the injector rewrote it, asked the way the kubelet asks it.
    let probe = &injected_container(&server_pod, "app")["readinessProbe"]["httpGet"];
    let (port, path) = (probe["port"].as_u64().expect("a numeric probe port") as u16, probe["path"].as_str().unwrap());
    assert_eq!((port, path), (netns::ADMIN_PORT, "/app-probe/app/readiness"), "{probe}");
    let ready = node.http(SocketAddr::from((s4, port)), "GET", path, &format!("{s4}:{port}")).unwrap();
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.text(), "web-server GET /ready-check", "the application answered the probe");
}
