#!/usr/bin/env python3
"""Turns bench/run.sh's raw output into the Markdown table of bench/results/latest.md.

    report.py RAW_DIR > latest.md

RAW_DIR holds meta.env and one directory per run, named SETUP.LOAD.REP, containing:
  na             the run could not happen, and why (one line)
  oha.json       oha's JSON output (HTTP/1.1 loads)
  h2load.txt     h2load's text output, h2load.log its per-request log (gRPC load)
  proxies.txt    one line per proxy: ROLE CPU_SECONDS PEAK_RSS_KB
  note           anything that went wrong during the run (shown under the table)
"""

import json
import re
import statistics
import sys
from pathlib import Path

SETUPS = ["direct", "strait", "haproxy", "nginx"]
SETUP_TITLES = {"direct": "direct", "strait": "Strait", "haproxy": "HAProxy", "nginx": "nginx"}
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


def table(load, runs, reps):
    """runs: setup -> list of parsed runs (one per repetition)."""
    lines = [f"### {LOAD_TITLES.get(load, load)}", ""]
    present = [s for s in SETUPS if s in runs]
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
        if latency and ok.get("direct"):
            direct, _, _ = summarize(values("direct", key))
        for s in present:
            if not ok[s]:
                cells.append("n/a")
                continue
            if role is not None and s == "direct":
                cells.append("—")
                continue
            text, med = cell(values(s, key, role), fmt, added_to=direct if latency and s != "direct" else None)
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

    notes = []
    for s in present:
        reasons = sorted({r["na"] for r in runs[s] if "na" in r})
        for reason in reasons:
            notes.append(f"- {SETUP_TITLES[s]}: n/a in {sum(1 for r in runs[s] if r.get('na') == reason)} of {reps} run(s): {reason}")
        kinds = {}
        for r in ok[s]:
            for k, v in r.get("error_kinds", {}).items():
                kinds[k] = kinds.get(k, 0) + v
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


def main():
    raw = Path(sys.argv[1])
    meta = read_meta(raw)
    reps = int(meta.get("reps", "1"))
    runs = {}
    for run in sorted(p for p in raw.iterdir() if p.is_dir()):
        setup, load, rep = run.name.split(".")
        runs.setdefault(load, {}).setdefault(setup, []).append(parse_run(run))

    smoke = meta.get("mode") == "smoke"
    out = [
        "# Strait bench results" + (" (smoke run)" if smoke else ""),
        "",
        f"- date: {meta.get('date')}; git commit: `{meta.get('commit')}`",
        f"- machine: {meta.get('nproc')} CPUs, {meta.get('cpu')}, {meta.get('memory')}, {meta.get('kernel')}; "
        f"load average (1, 5, 15 min) before the run {meta.get('loadavg_before')}, after {meta.get('loadavg_after')} "
        "(the bench itself adds up to 2; more means other work shared the cores)",
        f"- mode: {meta.get('mode')}: {reps} repetition(s), {meta.get('duration')} s per load"
        + ("; smoke figures only show that the harness works, they are no measurement" if smoke else ""),
        f"- pinning (taskset): load tool on CPU {meta.get('client_cpu')}; both proxies and the app server on "
        f"CPU {meta.get('sut_cpu')}",
        f"- HTTP/1.1 loads: {meta.get('oha')} with `-q RATE --latency-correction` (coordinated omission corrected), "
        f"{meta.get('rate_connections')} connections at fixed rates, {meta.get('max_connections')} open-throttle; "
        f"gRPC: {meta.get('h2load')}, {meta.get('grpc_connections')} connections × {meta.get('grpc_streams')} streams",
        f"- peers: {meta.get('haproxy')}, {meta.get('nginx')}",
    ]
    if meta.get("strait_tls", "off") == "off":
        out.append(
            "- **caveat: the Strait pair runs WITHOUT TLS between its two proxies** (plain HTTP/2; mTLS arrives "
            "with the identity work), while the HAProxy and nginx pairs run mutual TLS (ECDSA P-256 certificates, "
            "client certificate verified). Strait is spared the TLS cost here, so its figures are not yet like-for-like."
        )
    out += [
        "- each cell: median over the repetitions (min–max); **+x**: added over direct (median minus direct's "
        "median); Strait/X: for latencies the ratio of added latencies, otherwise the ratio of medians "
        "(below 1× is better for Strait, except req/s).",
        "",
    ]
    for load in [l for l in LOAD_TITLES if l in runs] + [l for l in runs if l not in LOAD_TITLES]:
        out += table(load, runs[load], reps)
    print("\n".join(out))


if __name__ == "__main__":
    main()
