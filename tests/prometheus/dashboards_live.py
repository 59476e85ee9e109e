#!/usr/bin/env python3
"""Every dashboard panel and every rule, run against a real Prometheus scraping the demo mesh.

    dashboards_live.py BIN_DIR OUT_DIR

Starts `strait demo` (controller, four proxies, faulty apps, a load generator), a Prometheus on
loopback scraping every proxy's and the controller's /metrics each second and loading
charts/strait/rules/*.yaml, and then:

- `promtool check metrics` on every /metrics body;
- every panel `expr` read from charts/strait/dashboards/*.json (template variables replaced by
  real values) must return a non-empty result through /api/v1/query, and so must every recording
  rule, both its expression and the series it records;
- every metric an alert reads must have series, and every rule must evaluate without error (the
  alerts themselves cannot fire in a healthy mesh: tests/prometheus/strait.test.yaml makes each
  of them fire in `promtool test rules`, and this script checks each alert has such a test);
- the mesh overview's per-service success rate must be within 2 points of what the demo's load
  generator counted over the same window.

Only the standard library: it runs on a bare CI machine with the Debian `prometheus` package.
"""

import glob
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = sorted(glob.glob(str(ROOT / "charts/strait/rules/*.yaml")))
TESTS = sorted(glob.glob(str(ROOT / "tests/prometheus/*.test.yaml")))
DASHBOARDS = sorted(glob.glob(str(ROOT / "charts/strait/dashboards/*.json")))
WAIT_SECONDS = 30  # data before the queries: two fault phases of the demo begin within it
RATE_INTERVAL = "10s"


def log(msg):
    print(f"[prometheus] {msg}", file=sys.stderr, flush=True)


def fail(msg):
    log(f"FAILED: {msg}")
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        fail(f"GET {urllib.parse.unquote(url)}: {e.code} {e.read().decode(errors='replace')}")


def query(prom, expr, at=None):
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    body = json.loads(get(f"{prom}/api/v1/query?{urllib.parse.urlencode(params)}"))
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


class Demo:
    """`strait demo` in the background; its stdout parsed for addresses and load totals."""

    def __init__(self, bin_dir, out_dir):
        self.log = open(out_dir / "demo.out", "w")
        self.proc = subprocess.Popen(
            [str(bin_dir / "strait"), "demo", "--duration", "600", "--interval", "1", "--rps", "40"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.proxies, self.controller, self.totals, self.dir = {}, None, [], None
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            with self.lock:
                if m := re.match(r"controller .* admin on (\S+)", line):
                    self.controller = m.group(1)
                elif m := re.match(r"logs\s+(\S+)", line):
                    self.dir = pathlib.Path(m.group(1))
                elif m := re.match(r"proxy (\S+)\s.*admin (\S+)", line):
                    self.proxies[m.group(1)] = m.group(2)
                elif line.startswith("load totals"):
                    seen = {h: (int(ok), int(bad)) for h, ok, bad in
                            re.findall(r"(\S+?)\.\S*? ok (\d+) failed (\d+)", line)}
                    self.totals.append((time.time(), seen))

    def wait_started(self):
        for _ in range(300):
            with self.lock:
                if self.controller and self.dir and len(self.proxies) == 4 and self.totals:
                    return
            if self.proc.poll() is not None:
                fail(f"strait demo exited ({self.proc.returncode}); see {self.log.name}")
            time.sleep(0.1)
        fail(f"strait demo did not start within 30 s; see {self.log.name}")

    def churn(self, stop):
        """Mesh changes while traffic flows, so the controller pushes (its push-latency panels need
        pushes in the window): a request timeout on payments, added and removed every 3 s."""
        mesh = self.dir / "mesh.yaml"
        plain = mesh.read_text()
        ports = "  - name: payments\n    namespace: demo\n    ports: [{port: 8080, protocol: http}]\n"
        if ports not in plain:
            fail(f"the demo's mesh file changed shape; update churn():\n{plain}")
        timed = plain.replace(ports, ports + '    annotations:\n      timeout.strait.io/request: "10s"\n')
        n = 0
        while not stop.wait(3):
            n += 1
            tmp = mesh.with_suffix(".tmp")
            tmp.write_text(timed if n % 2 else plain)
            tmp.replace(mesh)
        mesh.write_text(plain)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def prometheus_config(demo, out_dir):
    proxies = [f"'{a}'" for a in demo.proxies.values()]
    rules = "\n".join(f"  - '{r}'" for r in RULES)
    text = f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
{rules}
scrape_configs:
  - job_name: strait-proxy
    static_configs:
      - targets: [{', '.join(proxies)}]
  - job_name: strait-controller
    static_configs:
      - targets: ['{demo.controller}']
"""
    path = out_dir / "prometheus.yml"
    path.write_text(text)
    return path


def check_alert_tests():
    """Each alert of the rule files has an alert_rule_test in a promtool test file."""
    alerts = {a for r in RULES for a in re.findall(r"^\s*- alert:\s*(\S+)", pathlib.Path(r).read_text(), re.M)}
    tested = {a for t in TESTS for a in re.findall(r"alertname:\s*(\S+)", pathlib.Path(t).read_text())}
    if missing := sorted(alerts - tested):
        fail(f"alerts without a promtool unit test: {', '.join(missing)}")
    return sorted(alerts)


def panel_queries(values):
    """(dashboard, panel title, expr) for every target of every panel, variables substituted."""
    out = []
    for path in DASHBOARDS:
        board = json.loads(pathlib.Path(path).read_text())
        name = pathlib.Path(path).name
        variables = {v["name"] for v in board["templating"]["list"]}
        if "datasource" not in variables:
            fail(f"{name}: no datasource variable")
        for v in board["templating"]["list"]:
            if v["type"] == "datasource" and v.get("query") != "prometheus":
                fail(f"{name}: the datasource variable is not of type prometheus")
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            if panel.get("datasource") != {"type": "prometheus", "uid": "${datasource}"}:
                fail(f"{name} / {panel['title']}: datasource is {panel.get('datasource')}, not ${{datasource}}")
            if not panel.get("targets"):
                fail(f"{name} / {panel['title']}: no query")
            for t in panel["targets"]:
                if t.get("datasource") != {"type": "prometheus", "uid": "${datasource}"}:
                    fail(f"{name} / {panel['title']}: a target's datasource is {t.get('datasource')}")
                expr = t["expr"].replace("$__rate_interval", RATE_INTERVAL)
                for var in sorted(variables, key=len, reverse=True):
                    if var in values.get(name, {}):
                        expr = expr.replace(f"${var}", values[name][var])
                if "$" in expr:
                    fail(f"{name} / {panel['title']}: unsubstituted variable in {expr}")
                out.append((name, panel["title"], t.get("legendFormat", ""), expr))
    return out


def recording_rules():
    text = "\n".join(pathlib.Path(r).read_text() for r in RULES)
    return re.findall(r"^\s*- record:\s*(\S+)\s*\n\s*expr:\s*(.+)$", text, re.M)


def alert_rules():
    text = "\n".join(pathlib.Path(r).read_text() for r in RULES)
    return re.findall(r"^\s*- alert:\s*(\S+)\s*\n\s*expr:\s*(.+)$", text, re.M)


def metric_names(expr):
    """Metric (or recorded series) names an expression reads."""
    bare = re.sub(r"\{[^}]*\}", "", expr)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    return {n for n in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare) if n.startswith(("strait_", "process_")) or ":" in n}


def success_check(prom, demo, scraping_since):
    """The mesh overview's success rate per service against the load generator's own counts."""
    board = json.loads((ROOT / "charts/strait/dashboards/mesh.json").read_text())
    panel = next(p for p in board["panels"] if p["type"] == "timeseries" and p["title"] == "Success rate")
    expr_t = panel["targets"][0]["expr"].replace('$namespace', 'demo')
    with demo.lock:
        totals = list(demo.totals)
    # Two load printouts at least 15 s apart, both within what Prometheus scraped: the first a
    # couple of scrapes after the first one (a window reaching back before it would count requests
    # Prometheus never saw), the last a few scrapes back from now.
    t2, seen2 = totals[-3]
    t1, seen1 = next(((t, s) for t, s in totals if t >= scraping_since + 2), totals[-1])
    if t2 - t1 < 15:
        fail(f"load totals span only {t2 - t1:.0f} s of the scraped time")
    window = t2 - t1
    expr = expr_t.replace("$__rate_interval", f"{round(window * 1000)}ms")
    got = {r["metric"].get("dst_service"): float(r["value"][1]) for r in query(prom, expr, at=t2)}
    lines = []
    for svc in sorted(seen2):
        ok = seen2[svc][0] - seen1.get(svc, (0, 0))[0]
        bad = seen2[svc][1] - seen1.get(svc, (0, 0))[1]
        if ok + bad < 100:
            fail(f"the load generator completed only {ok + bad} requests to {svc} in {window:.0f} s")
        want = ok / (ok + bad)
        if svc not in got:
            fail(f"the mesh overview has no success rate for {svc}: {got}")
        if abs(got[svc] - want) > 0.02:
            fail(f"{svc}: dashboard success rate {got[svc]:.2%}, load generator {want:.2%} ({ok} ok, {bad} failed)")
        lines.append(f"{svc} {got[svc]:.2%} vs {want:.2%} ({ok + bad} requests, {bad} failed)")
    return window, lines


def main():
    bin_dir, out_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    alerts = check_alert_tests()
    demo = Demo(bin_dir, out_dir)
    prom_proc = None
    stop_churn = threading.Event()
    try:
        demo.wait_started()
        log(f"demo up: controller {demo.controller}, proxies {demo.proxies}")
        threading.Thread(target=demo.churn, args=(stop_churn,), daemon=True).start()
        port = free_port()
        cfg = prometheus_config(demo, out_dir)
        subprocess.run(["promtool", "check", "config", str(cfg)], check=True, stdout=subprocess.DEVNULL)
        prom_log = open(out_dir / "prometheus.log", "w")
        prom_proc = subprocess.Popen(
            ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={out_dir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=prom_log, stderr=subprocess.STDOUT, start_new_session=True)
        prom = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                get(f"{prom}/-/ready")
                break
            except OSError:
                if prom_proc.poll() is not None:
                    fail(f"prometheus exited; see {prom_log.name}")
                time.sleep(0.2)
        else:
            fail("prometheus not ready in 20 s")
        scraping_since = time.time()
        log(f"prometheus {prom} scraping {len(demo.proxies)} proxies and the controller every 1 s")

        # promtool check metrics on every /metrics body (lint problems are failures).
        for name, addr in [("controller", demo.controller)] + sorted(demo.proxies.items()):
            body = get(f"http://{addr}/metrics")
            (out_dir / f"metrics-{name}.txt").write_text(body)
            r = subprocess.run(["promtool", "check", "metrics"], input=body, text=True, capture_output=True)
            if r.returncode != 0:
                fail(f"promtool check metrics on {name}'s /metrics:\n{r.stdout}{r.stderr}")
        log("promtool check metrics: clean on the controller and every proxy")

        log(f"waiting {WAIT_SECONDS} s for data")
        time.sleep(WAIT_SECONDS)
        targets = json.loads(get(f"{prom}/api/v1/targets"))["data"]["activeTargets"]
        down = [t["scrapeUrl"] for t in targets if t["health"] != "up"]
        if down or len(targets) != len(demo.proxies) + 1:
            fail(f"scrape targets not all up: {down or targets}")

        web = demo.proxies["web"]
        values = {
            "mesh.json": {"namespace": "demo"},
            "service.json": {"namespace": "demo", "service": "orders"},
            "proxy.json": {"instance": web},
            "control-plane.json": {"instance": demo.controller},
        }
        # The variables' own queries must list the values substituted.
        for path in DASHBOARDS:
            board = json.loads(pathlib.Path(path).read_text())
            name = pathlib.Path(path).name
            for v in board["templating"]["list"]:
                if v["type"] != "query":
                    continue
                m = re.fullmatch(r"label_values\((.*), *(\w+)\)", v["query"]["query"])
                if not m:
                    fail(f"{name}: variable {v['name']} is not label_values(selector, label)")
                sel = m.group(1)
                for var, val in values[name].items():
                    sel = sel.replace(f"${var}", val)
                series = json.loads(get(f"{prom}/api/v1/series?{urllib.parse.urlencode({'match[]': sel})}"))["data"]
                found = {s.get(m.group(2)) for s in series}
                if values[name][v["name"]] not in found:
                    fail(f"{name}: variable {v['name']} offers {sorted(found)}, not {values[name][v['name']]}")

        results = []
        empty = []
        for board, title, legend, expr in panel_queries(values):
            res = query(prom, expr)
            results.append({"dashboard": board, "panel": title, "legend": legend, "expr": expr,
                            "series": len(res), "result": res})
            if not res:
                empty.append(f"{board} / {title}: {expr}")
            elif all(r["value"][1] == "NaN" for r in res):
                empty.append(f"{board} / {title}: only NaN: {expr}")
        for record, expr in recording_rules():
            for e in (expr, record):
                res = query(prom, e)
                results.append({"rule": record, "expr": e, "series": len(res), "result": res})
                if not res:
                    empty.append(f"recording rule {record}: {e}")
                elif all(r["value"][1] == "NaN" for r in res):
                    empty.append(f"recording rule {record}: only NaN: {e}")
        for alert, expr in alert_rules():
            for name in sorted(metric_names(expr)):
                res = query(prom, name)
                results.append({"alert": alert, "expr": name, "series": len(res), "result": res})
                if not res:
                    empty.append(f"alert {alert} reads {name}, which has no series")
        (out_dir / "queries.json").write_text(json.dumps(results, indent=1))
        if empty:
            fail("queries with an empty result:\n  " + "\n  ".join(empty))
        rules = json.loads(get(f"{prom}/api/v1/rules"))["data"]["groups"]
        bad = [f"{r['name']}: {r.get('lastError')}" for g in rules for r in g["rules"] if r.get("health") != "ok"]
        if bad:
            fail("rules that do not evaluate: " + "; ".join(bad))
        n_rules = sum(len(g["rules"]) for g in rules)
        panels = sum(1 for r in results if "dashboard" in r)
        log(f"{panels} panel queries of {len(DASHBOARDS)} dashboards, {len(recording_rules())} recording rules "
            f"and the metrics of {len(alerts)} alerts: all non-empty; {n_rules} rules healthy")

        window, lines = success_check(prom, demo, scraping_since)
        log(f"success rate over {window:.0f} s, dashboard vs load generator: " + "; ".join(lines))
        print(f"ran: {panels} panel queries, {len(recording_rules())} recording rules, {len(alerts)} alerts' metrics "
              f"non-empty on a real Prometheus; success rate within 2 points of the load generator "
              f"({'; '.join(lines)})")
    finally:
        stop_churn.set()
        if prom_proc and prom_proc.poll() is None:
            prom_proc.terminate()
            prom_proc.wait(timeout=10)
        demo.stop()


if __name__ == "__main__":
    main()
