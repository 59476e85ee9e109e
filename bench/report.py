#!/usr/bin/env python3
"""Turns bench/run.sh's raw output into the Markdown table of bench/results/latest.md.

    report.py RAW_DIR > latest.md

RAW_DIR holds meta.env and one directory per run, named SETUP.LOAD.REP, containing:
  na             the run could not happen, and why (one line)
  oha.json       oha's JSON output (HTTP/1.1 loads)
  h2load.txt     h2load's text output, h2load.log its per-request log (gRPC load)
  proxies.txt    one line per proxy: ROLE CPU_SECONDS PEAK_RSS_KB
  controller.txt the Strait setups' controller: controller CPU_SECONDS PEAK_RSS_KB
  handshakes.before, handshakes.after
                 Strait setups: "A_OUTBOUND B_INBOUND" counters of strait_tls_handshakes_total{result="ok"}
                 before and after the measured load (the warm-up comes before "before")
  warmup         how many warm-up requests preceded the measured load
  note           anything that went wrong during the run (shown under the table)

meta.env may name a `baseline` setup (default: direct) that latencies are added over, and a `title`.
Extra sections (bench/tls.sh, bench/policy.sh) come from RAW_DIR/handshake-rate/ and RAW_DIR/memory/,
see extra_sections().
"""

import json
import re
import statistics
import sys
from pathlib import Path

SETUPS = ["direct", "strait-plain", "strait", "strait-policy", "haproxy", "nginx"]
SETUP_TITLES = {
    "direct": "direct",
    "strait": "Strait",
    "strait-plain": "Strait, no TLS",
    "strait-policy": "Strait + policy",
    "haproxy": "HAProxy",
    "nginx": "nginx",
}
LOAD_TITLES = {
    "rate1000": "HTTP/1.1, 1 KiB response, fixed 1000 req/s",
    "rate5000": "HTTP/1.1, 1 KiB response, fixed 5000 req/s",
    "max": "HTTP/1.1, 1 KiB response, open throttle (maximum throughput)",
    "grpc": "gRPC unary over HTTP/2 (h2load, fixed concurrency)",
}
PERCENTILES = [("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p999")]


def read_meta(raw):
    meta = {}
    for line in (raw / "meta.env").read_text().splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            meta[key] = value
    return meta


def percentile(sorted_values, q):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, int(-(-q * len(sorted_values) // 100)))  # ceil(q/100 * n)
    return sorted_values[min(rank, len(sorted_values)) - 1]


def parse_oha(run):
    data = json.loads((run / "oha.json").read_text())
    codes = {int(k): v for k, v in data.get("statusCodeDistribution", {}).items()}
    ok = sum(v for k, v in codes.items() if 200 <= k < 300)
    non_2xx = sum(v for k, v in codes.items() if not 200 <= k < 300)
    socket_errors = sum(data.get("errorDistribution", {}).values())
    seconds = data["summary"]["total"]
    lp = data.get("latencyPercentiles", {})
    result = {
        "requests": ok + non_2xx + socket_errors,
        "errors": non_2xx + socket_errors,
        "rps": ok / seconds if seconds else 0.0,
        "error_kinds": {f"HTTP {k}": v for k, v in codes.items() if not 200 <= k < 300}
        | dict(data.get("errorDistribution", {})),
    }
    for name, key in PERCENTILES:
        value = lp.get(name)
        result[key] = value * 1000 if value is not None else None
    return result


def parse_h2load(run):
    text = (run / "h2load.txt").read_text()

    def number(pattern, default=None):
        m = re.search(pattern, text)
        return float(m.group(1)) if m else default

    finished = re.search(r"finished in ([\d.]+)(ms|s)", text)
    if not finished:
        raise ValueError("h2load did not finish: " + " ".join(text.strip().splitlines()[-2:])[:200])
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    done = int(number(r"(\d+) done", 0))
    succeeded = int(number(r"(\d+) succeeded", 0))
    data_bytes = int(number(r"headers \(space savings [^)]*\), [^(]*\((\d+)\) data", 0))
    latencies = []
    log = run / "h2load.log"
    if log.exists():
        for line in log.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1].startswith("2"):
                latencies.append(int(parts[2]) / 1000.0)
    latencies.sort()
    # Streams still in flight when the duration ends are neither done nor counted (like oha -w's).
    errors = done - succeeded
    kinds = {}
    if errors:
        kinds["failed, errored or timed-out streams"] = errors
    # h2load sees HTTP status only, not grpc-status. A gRPC error is a response without a message:
    # a successful Unary reply carries at least 5 bytes of framing plus the echoed 7-byte message.
    if succeeded and data_bytes < succeeded * 12:
        kinds["responses without a gRPC message (error in trailers?)"] = succeeded
        errors = done
        succeeded = 0
    result = {
        "requests": done,
        "errors": errors,
        "rps": succeeded / seconds if seconds else 0.0,
        "error_kinds": kinds,
    }
    for name, key in PERCENTILES:
        q = float(name[1:])
        result[key] = percentile(latencies, q)
    return result


def parse_run(run):
    """One run's figures, or {'na': reason}."""
    if (run / "na").exists():
        return {"na": (run / "na").read_text().strip()}
    try:
        if (run / "oha.json").exists() and (run / "oha.json").stat().st_size:
            result = parse_oha(run)
        elif (run / "h2load.txt").exists():
            result = parse_h2load(run)
        else:
            err = (run / "oha.err").read_text().strip() if (run / "oha.err").exists() else ""
            return {"na": "the load tool produced no result " + err[:200]}
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        return {"na": f"unreadable load tool output: {e}"}
    proxies = {}
    if (run / "proxies.txt").exists():
        for line in (run / "proxies.txt").read_text().splitlines():
            role, cpu, rss_kb = line.split()
            proxies[role] = {"cpu": float(cpu), "rss": int(rss_kb) / 1024.0}
    result["proxies"] = proxies
    if (run / "controller.txt").exists():
        _, cpu, rss_kb = (run / "controller.txt").read_text().split()
        result["controller"] = {"cpu": float(cpu), "rss": int(rss_kb) / 1024.0}
    before, after = run / "handshakes.before", run / "handshakes.after"
    if before.exists() and after.exists() and after.read_text().strip():
        a0, b0 = (int(x) for x in before.read_text().split())
        a1, b1 = (int(x) for x in after.read_text().split())
        warmup = int((run / "warmup").read_text()) if (run / "warmup").exists() else 0
        result["hs_load"] = a1 - a0
        result["hs_per_1000_load"] = (a1 - a0) / result["requests"] * 1000 if result["requests"] else None
        result["hs_total"] = a1
        total_requests = result["requests"] + warmup
        result["hs_per_1000_total"] = a1 / total_requests * 1000 if total_requests else None
        result["hs_inbound_total"] = b1
    notes = []
    for name in ("note", "proxies.txt.note"):
        if (run / name).exists():
            notes += (run / name).read_text().split("\n")
    result["notes"] = [n for n in notes if n.strip()]
    return result


# --- formatting -----------------------------------------------------------------------------------


def fmt_ms(v):
    if v is None:
        return "n/a"
    if v < 1:
        return f"{v:.3f}"
    if v < 10:
        return f"{v:.2f}"
    return f"{v:.1f}"


def fmt_int(v):
    return "n/a" if v is None else f"{v:,.0f}"


def fmt_2(v):
    return "n/a" if v is None else f"{v:.2f}"


def fmt_3(v):
    return "n/a" if v is None else f"{v:.3f}"


def fmt_1(v):
    return "n/a" if v is None else f"{v:.1f}"


def summarize(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


def cell(values, fmt, added_to=None):
    med, lo, hi = summarize(values)
    if med is None:
        return "n/a", None
    text = fmt(med)
    if len(values) > 1:
        text += f" ({fmt(lo)}–{fmt(hi)})"
    if added_to is not None:
        text += f" **+{fmt(med - added_to)}**" if med >= added_to else f" **−{fmt(added_to - med)}**"
    return text, med


def ratio(a, b):
    # Not meaningful when either side is missing or not positive (e.g. an "added" latency below direct's).
    if a is None or b is None or a <= 0 or b <= 0:
        return "—"
    return f"{a / b:.2f}×"


def summed_error_kinds(runs):
    """Errors by kind over several runs."""
    kinds = {}
    for r in runs:
        for k, v in r.get("error_kinds", {}).items():
            kinds[k] = kinds.get(k, 0) + v
    return kinds


def table(load, runs, reps, baseline="direct"):
    """runs: setup -> list of parsed runs (one per repetition)."""
    lines = [f"### {LOAD_TITLES.get(load, load)}", ""]
    present = [s for s in SETUPS if s in runs] + sorted(s for s in runs if s not in SETUPS)
    ok = {s: [r for r in runs[s] if "na" not in r] for s in present}
    head = ["figure"] + [SETUP_TITLES[s] for s in present]
    ratio_cols = [o for o in ("haproxy", "nginx") if o in present and "strait" in present]
    head += [f"Strait/{SETUP_TITLES[o]}" for o in ratio_cols]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|")

    def values(setup, key, role=None):
        out = []
        for r in ok[setup]:
            if role is None:
                out.append(r.get(key))
            elif role == "controller":
                out.append(r["controller"][key] if "controller" in r else None)
            elif role == "A+B per request":
                cpu = [p["cpu"] for p in r["proxies"].values()]
                ok_requests = r["requests"] - r["errors"]
                out.append(sum(cpu) / ok_requests * 1e6 if cpu and ok_requests > 0 else None)
            else:
                p = r.get("proxies", {}).get(role)
                out.append(p[key] if p else None)
        return out

    def row(title, key, fmt, role=None, latency=False, ratios=True):
        cells, medians = [title], {}
        direct = None
        if latency and ok.get(baseline):
            direct, _, _ = summarize(values(baseline, key))
        for s in present:
            if not ok[s]:
                cells.append("n/a")
                continue
            vals = values(s, key, role)
            if all(v is None for v in vals):
                cells.append("—")
                continue
            text, med = cell(vals, fmt, added_to=direct if latency and s != baseline else None)
            cells.append(text)
            medians[s] = (med - direct) if latency and direct is not None and med is not None else med
        for o in ratio_cols:
            cells.append(ratio(medians.get("strait"), medians.get(o)) if ratios else "—")
        lines.append("| " + " | ".join(cells) + " |")

    for name, key in PERCENTILES:
        row(f"{name} latency, ms", key, fmt_ms, latency=True)
    row("achieved req/s", "rps", fmt_int)
    row("errors (non-2xx + socket)", "errors", fmt_int, ratios=False)
    row("requests sent", "requests", fmt_int, ratios=False)
    row("CPU s, proxy A (client side)", "cpu", fmt_2, role="A")
    row("CPU s, proxy B (server side)", "cpu", fmt_2, role="B")
    row("CPU µs per request, A+B", "cpu", fmt_1, role="A+B per request")
    row("peak RSS MiB, proxy A", "rss", fmt_1, role="A")
    row("peak RSS MiB, proxy B", "rss", fmt_1, role="B")
    if any("controller" in r for s in present for r in ok[s]):
        row("CPU s, controller (pinned with the proxies)", "cpu", fmt_2, role="controller", ratios=False)
    if any("hs_total" in r for s in present for r in ok[s]):
        row("proxy-to-proxy TLS handshakes (A, outbound) during the load", "hs_load", fmt_int, ratios=False)
        row("… per 1000 requests during the load", "hs_per_1000_load", fmt_3, ratios=False)
        row("… per 1000 requests since the proxies started (warm-up + load)", "hs_per_1000_total", fmt_3, ratios=False)

    notes = []
    for s in present:
        reasons = sorted({r["na"] for r in runs[s] if "na" in r})
        for reason in reasons:
            notes.append(f"- {SETUP_TITLES[s]}: n/a in {sum(1 for r in runs[s] if r.get('na') == reason)} of {reps} run(s): {reason}")
        kinds = summed_error_kinds(ok[s])
        if kinds:
            listed = ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
            notes.append(f"- {SETUP_TITLES[s]} errors, all repetitions: {listed}")
        for r in ok[s]:
            for n in r.get("notes", []):
                notes.append(f"- {SETUP_TITLES[s]}: {n}")
    if notes:
        lines += [""] + notes
    lines.append("")
    return lines


def runs_of(raw):
    """load -> setup -> parsed runs, from RAW_DIR/SETUP.LOAD.REP directories."""
    runs = {}
    for run in sorted(p for p in raw.iterdir() if p.is_dir() and p.name.count(".") == 2):
        setup, load, rep = run.name.split(".")
        runs.setdefault(load, {}).setdefault(setup, []).append(parse_run(run))
    return runs


def read_pairs(path):
    """ROLE VALUE... lines -> {role: [floats]}."""
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if parts:
                out[parts[0]] = [float(x) for x in parts[1:]]
    return out


HANDSHAKE_SETUPS = {
    "strait-tcp-plain": "Strait, no TLS",
    "strait-tcp": "Strait, mTLS",
}


def handshake_section(raw):
    """bench/tls.sh: new connections through the pair (opaque TCP via CONNECT), open throttle."""
    base = raw / "handshake-rate"
    if not base.is_dir():
        return []
    per = {}
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        setup, _rep = d.name.split(".")
        r = {}
        if (d / "na").exists():
            r["na"] = (d / "na").read_text().strip()
            per.setdefault(setup, []).append(r)
            continue
        churn = json.loads((d / "churn.json").read_text())
        proxies = read_pairs(d / "proxies.txt")
        hs0 = [int(x) for x in (d / "handshakes.before").read_text().split()]
        hs1 = [int(x) for x in (d / "handshakes.after").read_text().split()]
        ok = churn["ok"]
        r["conn_rate"] = ok / churn["seconds"] if churn["seconds"] else None
        r["errors"] = churn["errors"]
        r["error_kinds"] = churn.get("error_kinds", {})
        r["p50"], r["p99"] = churn.get("p50_ms"), churn.get("p99_ms")
        r["hs_a"], r["hs_b"] = hs1[0] - hs0[0], hs1[1] - hs0[1]
        r["hs_per_conn"] = r["hs_a"] / ok if ok else None
        r["cpu_a"], r["cpu_b"] = proxies.get("A", [None])[0], proxies.get("B", [None])[0]
        r["us_a"] = r["cpu_a"] / ok * 1e6 if ok and r["cpu_a"] else None
        r["us_b"] = r["cpu_b"] / ok * 1e6 if ok and r["cpu_b"] else None
        r["util"] = ((r["cpu_a"] or 0) + (r["cpu_b"] or 0)) / churn["seconds"] if churn["seconds"] else None
        r["hs_rate_a"] = r["hs_a"] / r["cpu_a"] if r["hs_a"] and r["cpu_a"] else None
        r["hs_rate_b"] = r["hs_b"] / r["cpu_b"] if r["hs_b"] and r["cpu_b"] else None
        if (d / "resumption.json").exists():
            res = json.loads((d / "resumption.json").read_text())
            total = res["full"] + res["resumed"]
            r["resumed_share"] = res["resumed"] / total * 100 if total else None
            r["resumption_sample"] = total
        per.setdefault(setup, []).append(r)
    present = [s for s in HANDSHAKE_SETUPS if s in per]
    lines = [
        "### New connections between the proxies: opaque TCP through CONNECT, open throttle",
        "",
        "Each client connection: CONNECT tcp.bench:9000 to A's outbound listener, 32 bytes echoed by the app, "
        "close. `tcp.bench:9000` is an opaque port, so A opens a new connection to B for every client "
        "connection — with identity, a new mTLS handshake. Handshake counts are read from the proxies' "
        "`strait_tls_handshakes_total{result=\"ok\"}`; CPU from /proc. \"Per CPU-second\" is the rate one "
        "fully busy proxy core would sustain at this cost per connection.",
        "",
        "| figure | " + " | ".join(HANDSHAKE_SETUPS[s] for s in present) + " |",
        "|---|" + "--:|" * len(present),
    ]
    ok = {s: [r for r in per[s] if "na" not in r] for s in present}

    def row(title, key, fmt):
        cells = [title]
        for s in present:
            text, _ = cell([r.get(key) for r in ok[s]], fmt) if ok[s] else ("n/a", None)
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")

    row("client connections per second achieved", "conn_rate", fmt_int)
    row("errors", "errors", fmt_int)
    row("connection latency p50, ms (connect, CONNECT, echo)", "p50", fmt_ms)
    row("connection latency p99, ms", "p99", fmt_ms)
    row("TLS handshakes, A outbound (ok)", "hs_a", fmt_int)
    row("TLS handshakes, B inbound (ok)", "hs_b", fmt_int)
    row("handshakes per client connection", "hs_per_conn", fmt_2)
    row("share of handshakes resumed (TLS 1.3 PSK), sampled with tcpdump, %", "resumed_share", fmt_1)
    row("CPU s, proxy A", "cpu_a", fmt_2)
    row("CPU s, proxy B", "cpu_b", fmt_2)
    row("CPU use of the SUT core by A+B, share of the run", "util", fmt_2)
    row("CPU µs per connection, proxy A (client side)", "us_a", fmt_1)
    row("CPU µs per connection, proxy B (server side)", "us_b", fmt_1)
    row("**handshakes per CPU-second, A (client side)**", "hs_rate_a", fmt_int)
    row("**handshakes per CPU-second, B (server side)**", "hs_rate_b", fmt_int)
    med = {s: {k: summarize([r.get(k) for r in ok[s]])[0] for k in ("us_a", "us_b")} for s in present}
    if "strait-tcp" in med and "strait-tcp-plain" in med:
        lines.append("")
        for side, key in (("A (client side)", "us_a"), ("B (server side)", "us_b")):
            t, p = med["strait-tcp"][key], med["strait-tcp-plain"][key]
            if t is not None and p is not None and t > p:
                lines.append(
                    f"- mTLS adds {t - p:.1f} µs of CPU per new connection on {side}: "
                    f"the TLS part alone would allow about {1e6 / (t - p):,.0f} handshakes per CPU-second."
                )
    for s in present:
        for r in per[s]:
            if "na" in r:
                lines.append(f"- {HANDSHAKE_SETUPS[s]}: n/a: {r['na']}")
        kinds = summed_error_kinds(ok[s])
        if kinds:
            lines.append(f"- {HANDSHAKE_SETUPS[s]} errors: " + ", ".join(f"{k}: {v}" for k, v in kinds.items()))
        samples = [r.get("resumption_sample") for r in ok[s] if r.get("resumption_sample")]
        if samples:
            lines.append(f"- {HANDSHAKE_SETUPS[s]}: resumption sampled over {sum(samples)} ServerHello(s) from B")
    lines.append("")
    return lines


MEMORY_VARIANTS = {"none": "no policy annotations", "policy": "full policy stack (strait-policy's annotations)"}


def memory_section(raw):
    """bench/policy.sh: proxy A's RSS growth per destination service it talks to."""
    base = raw / "memory"
    if not base.is_dir():
        return []
    per = {}
    for f in sorted(base.glob("*.json")):
        variant, _rep = f.stem.split(".")
        per.setdefault(variant, []).append(json.loads(f.read_text()))
    lines = [
        "### Memory per destination service stack (proxy A)",
        "",
        "N services in the mesh, all served by the same endpoint behind B; one request to each through A's "
        "outbound listener, one after the other on one keep-alive connection. A subscribes to each service "
        "on demand and builds its stack (discovery state, balancer, breakers, retry budget, bulkhead, "
        "metrics labels). RSS (VmRSS) of A after the first service, then after all N; the difference "
        "÷ (N − 1) is the cost of one more destination service. All services share one HTTP/2 "
        "connection to B (same peer), so connections are not part of it.",
        "",
        "| figure | " + " | ".join(MEMORY_VARIANTS.get(v, v) for v in per) + " |",
        "|---|" + "--:|" * len(per),
    ]

    def row(title, fn, fmt):
        cells = [title]
        for v in per:
            text, _ = cell([fn(r) for r in per[v]], fmt)
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")

    row("services (N)", lambda r: r["services"], fmt_int)
    row("requests answered 2xx", lambda r: r["ok"], fmt_int)
    row("RSS of A after the first service, MiB", lambda r: r["rss_first_kb"] / 1024, fmt_1)
    row("RSS of A after N services, MiB", lambda r: r["rss_after_kb"] / 1024, fmt_1)
    row("**KiB per destination service**", lambda r: (r["rss_after_kb"] - r["rss_first_kb"]) / (r["services"] - 1), fmt_1)
    row("proxy-to-proxy TLS handshakes by A (all N services)", lambda r: r.get("handshakes"), fmt_int)
    row("RSS of the controller after, MiB", lambda r: r.get("controller_rss_kb", 0) / 1024 or None, fmt_1)
    for v in per:
        errs = sum(r["errors"] for r in per[v])
        if errs:
            lines.append(f"- {MEMORY_VARIANTS.get(v, v)}: {errs} request(s) failed: "
                         + "; ".join(r.get("first_error", "") for r in per[v] if r["errors"]))
    lines.append("")
    return lines


def main():
    raw = Path(sys.argv[1])
    meta = read_meta(raw)
    reps = int(meta.get("reps", "1"))
    runs = runs_of(raw)
    baseline = meta.get("baseline", "direct")
    setups = meta.get("setups", "").split()

    smoke = meta.get("mode") == "smoke"
    out = [
        f"# {meta.get('title', 'Strait bench results')}" + (" (smoke run)" if smoke else ""),
        "",
        f"- date: {meta.get('date')}; git commit: `{meta.get('commit')}`",
        f"- machine: {meta.get('nproc')} CPUs, {meta.get('cpu')}, {meta.get('memory')}, {meta.get('kernel')}; "
        f"**load average (1, 5, 15 min) before the run {meta.get('loadavg_before')}, after {meta.get('loadavg_after')}** "
        "(the bench itself adds up to 2; more means other work shared the cores)",
        f"- mode: {meta.get('mode')}: {reps} repetition(s), {meta.get('duration')} s per load"
        + ("; smoke figures only show that the harness works, they are no measurement" if smoke else ""),
        f"- pinning (taskset): load tool on CPU {meta.get('client_cpu')}; both proxies, the Strait controller and "
        f"the app server on CPU {meta.get('sut_cpu')}",
    ]
    if runs:
        out.append(
            f"- HTTP/1.1 loads: {meta.get('oha')} with `-q RATE --latency-correction` (coordinated omission corrected), "
            f"{meta.get('rate_connections')} connections at fixed rates, {meta.get('max_connections')} open-throttle"
            + (f"; gRPC: {meta.get('h2load')}, {meta.get('grpc_connections')} connections × {meta.get('grpc_streams')} streams"
               if "grpc" in runs else "")
        )
    if any(s in setups for s in ("haproxy", "nginx")):
        out.append(f"- peers: {meta.get('haproxy')}, {meta.get('nginx')}")
    if any(s.startswith("strait") for s in setups) or "handshake-rate" in meta.get("sections", ""):
        out.append(
            "- Strait: strait-controller in embedded mode (mesh file, discovery and identity) and two strait-proxy "
            "processes with one worker thread each; "
            + ("`Strait`: mutual TLS between the proxies with certificates the controller's CA issued (ECDSA P-256, "
               "TLS 1.3, SPIFFE identities checked), the same key type as the peers' certificates"
               if meta.get("strait_tls", "off") == "on" else "`Strait`: no identity, plain HTTP/2 between the proxies")
            + ("; `Strait, no TLS`: the same pair without identity (plain HTTP/2 between the proxies)"
               if "strait-plain" in setups else "")
            + ("; `Strait + policy`: the `Strait` pair with the full policy stack on the service" if "strait-policy" in setups else "")
        )
    if meta.get("strait_tls", "off") == "off" and "strait" in setups:
        out.append(
            "- **caveat: the `Strait` column runs WITHOUT TLS between its two proxies** (BENCH_STRAIT_TLS=off: "
            "plain HTTP/2), while the HAProxy and nginx pairs run mutual TLS (ECDSA P-256 certificates, "
            "client certificate verified). Strait is spared the TLS cost here, so its figures are not like-for-like."
        )
    for line in meta.get("notes", "").split(" | "):
        if line.strip():
            out.append(f"- {line.strip()}")
    if runs:
        ratio_note = ("; Strait/X: for latencies the ratio of added latencies, otherwise the ratio of medians "
                      "(below 1× is better for Strait, except req/s)") if any(s in setups for s in ("haproxy", "nginx")) else ""
        out.append(
            f"- each cell: median over the repetitions (min–max); **+x**: added over {SETUP_TITLES.get(baseline, baseline)} "
            f"(median minus its median){ratio_note}."
        )
    out.append("")
    for load in [l for l in LOAD_TITLES if l in runs] + [l for l in runs if l not in LOAD_TITLES]:
        out += table(load, runs[load], reps, baseline)
    out += handshake_section(raw)
    out += memory_section(raw)
    print("\n".join(out))


if __name__ == "__main__":
    main()
