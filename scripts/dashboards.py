#!/usr/bin/env python3
"""Generates Strait's Grafana dashboards (charts/strait/dashboards/*.json).

One script for the four dashboards, so every panel is built the same way: the datasource is the
`datasource` template variable (no hard-coded UID), rates use `$__rate_interval`, and latency
quantiles come from the histogram buckets. The JSON files are committed; after an edit here run

    python3 scripts/dashboards.py          # rewrite the JSON files
    python3 scripts/dashboards.py --check  # fail if they are out of date (the Prometheus tier runs this)

The Prometheus tier (scripts/tiers/35-prometheus.sh) reads every panel's `expr` back from the JSON
files and runs it against a real Prometheus scraping the demo mesh.

Golden metrics are taken on the callers' side (direction="outbound"), as in the recording rules
(charts/strait/rules/strait.rules.yaml): that is what the mesh's clients get, retries included.
"""

import json
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parent.parent / "charts" / "strait" / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"

# Selectors shared by the panels.
OUT_NS = 'direction="outbound", dst_service!="", dst_namespace=~"$namespace"'
OUT_SVC = 'direction="outbound", dst_namespace=~"$namespace", dst_service=~"$service"'


def rate(metric, sel, by=None):
    agg = f"sum by ({by}) " if by else "sum"
    return f"{agg}(rate({metric}{{{sel}}}[{RI}]))"


def ratio(sel, good, by=None):
    """Share of requests matching `good`; a group with none of them is 0, not absent."""
    total = rate("strait_requests_total", sel, by)
    part = rate("strait_requests_total", f"{sel}, {good}", by)
    return f"({part} or 0 * {total}) / {total}"


def quantile(q, sel, by):
    return f"histogram_quantile({q}, sum by ({by}, le) (rate(strait_request_duration_seconds_bucket{{{sel}}}[{RI}])))"


def target(expr, legend="", ref="A"):
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "range": True, "refId": ref}


class Board:
    def __init__(self, uid, title, description, variables):
        self.uid, self.title, self.description, self.variables = uid, title, description, variables
        self.panels, self.x, self.y, self.row_h = [], 0, 0, 0

    def _place(self, w, h):
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def row(self, title):
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        self.panels.append({"collapsed": False, "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                            "id": len(self.panels) + 1, "panels": [], "title": title, "type": "row"})
        self.y += 1

    def panel(self, kind, title, description, targets, unit, w=8, h=8, minmax=None, thresholds=None):
        defaults = {"unit": unit}
        if minmax:
            defaults["min"], defaults["max"] = minmax
        if kind == "timeseries":
            defaults["custom"] = {"drawStyle": "line", "fillOpacity": 10, "lineWidth": 1, "showPoints": "never",
                                  "spanNulls": False}
        if thresholds:
            defaults["thresholds"] = {"mode": "absolute", "steps": thresholds}
            defaults["color"] = {"mode": "thresholds"}
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "desc"}}
        if kind == "stat":
            options = {"colorMode": "value", "graphMode": "area", "justifyMode": "auto", "textMode": "auto",
                       "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
        refs = "ABCDEFGH"
        self.panels.append({
            "datasource": DS,
            "description": description,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "gridPos": self._place(w, h),
            "id": len(self.panels) + 1,
            "options": options,
            "targets": [target(e, legend, refs[i]) for i, (e, legend) in enumerate(targets)],
            "title": title,
            "type": kind,
        })

    def json(self):
        return {
            "annotations": {"list": []},
            "description": self.description,
            "editable": True,
            "fiscalYearStartMonth": 0,
            "graphTooltip": 1,
            "links": [{"asDropdown": True, "includeVars": False, "keepTime": True, "tags": ["strait"],
                       "title": "Strait dashboards", "type": "dashboards"}],
            "panels": self.panels,
            "refresh": "30s",
            "schemaVersion": 39,
            "tags": ["strait"],
            "templating": {"list": [DATASOURCE_VAR] + self.variables},
            "time": {"from": "now-1h", "to": "now"},
            "timepicker": {},
            "timezone": "",
            "title": self.title,
            "uid": self.uid,
            "version": 1,
        }


DATASOURCE_VAR = {"current": {}, "hide": 0, "includeAll": False, "label": "Data source", "multi": False,
                  "name": "datasource", "options": [], "query": "prometheus", "refresh": 1, "regex": "",
                  "type": "datasource"}


def query_var(name, label, query, multi=True):
    return {"current": {}, "datasource": DS, "definition": query, "hide": 0, "includeAll": multi, "label": label,
            "multi": multi, "name": name, "options": [], "allValue": ".*" if multi else None,
            "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2, "regex": "", "sort": 1, "type": "query"}


NAMESPACE = query_var("namespace", "Namespace", 'label_values(strait_requests_total{direction="outbound"}, dst_namespace)')
SERVICE = query_var("service", "Service",
                    'label_values(strait_requests_total{direction="outbound", dst_namespace=~"$namespace"}, dst_service)')
PERCENT = [{"color": "red", "value": None}, {"color": "orange", "value": 0.95}, {"color": "green", "value": 0.99}]


def mesh():
    b = Board("strait-mesh", "Strait / Mesh overview",
              "Golden metrics of every meshed service, as its callers' proxies see them.", [NAMESPACE])
    by = "dst_namespace, dst_service"
    legend = "{{dst_service}}.{{dst_namespace}}"
    b.panel("stat", "Success rate", "Requests answered without a 5xx, gRPC error or proxy error, over all services.",
            [(ratio(OUT_NS, 'outcome="success"'), "")], "percentunit", w=6, h=4, minmax=(0, 1), thresholds=PERCENT)
    b.panel("stat", "Requests", "Requests per second sent by callers' proxies to meshed services.",
            [(rate("strait_requests_total", OUT_NS), "")], "reqps", w=6, h=4)
    b.panel("stat", "p99 latency", "99th percentile time to the response headers, over all services.",
            [(quantile(0.99, OUT_NS, "dst_namespace"), "{{dst_namespace}}")], "s", w=6, h=4)
    b.panel("stat", "Services", "Services that received requests in the interval.",
            [(f"count(count by ({by}) (rate(strait_requests_total{{{OUT_NS}}}[{RI}]) > 0))", "")], "none", w=6, h=4)
    b.row("Per service")
    b.panel("timeseries", "Success rate", "Share of requests per service answered without failure.",
            [(ratio(OUT_NS, 'outcome="success"', by), legend)], "percentunit", w=12, minmax=(0, 1))
    b.panel("timeseries", "Requests", "Requests per second per service.",
            [(rate("strait_requests_total", OUT_NS, by), legend)], "reqps", w=12)
    for q in ("0.5", "0.95", "0.99"):
        p = f"p{round(float(q) * 100)}"
        b.panel("timeseries", f"Latency {p}", f"{p} time to the response headers per service (histogram_quantile).",
                [(quantile(q, OUT_NS, by), legend)], "s", w=8)
    b.panel("timeseries", "Requests by outcome", "success, failure (the server's 5xx or gRPC error) or error (the proxy's).",
            [(rate("strait_requests_total", OUT_NS, "outcome"), "{{outcome}}")], "reqps", w=12)
    b.panel("timeseries", "Failure rate per service", "Requests per second that did not succeed.",
            [(rate("strait_requests_total", f'{OUT_NS}, outcome!="success"', by) + f" or 0 * {rate('strait_requests_total', OUT_NS, by)}",
              legend)], "reqps", w=12)
    return b


def service():
    b = Board("strait-service", "Strait / Service",
              "One service: what its callers see (outbound, by the server's identity), what its own proxies "
              "receive (inbound, by the caller's identity), and the resilience policy at work.",
              [NAMESPACE, SERVICE])
    b.panel("stat", "Success rate", "Callers' view.", [(ratio(OUT_SVC, 'outcome="success"'), "")], "percentunit",
            w=6, h=4, minmax=(0, 1), thresholds=PERCENT)
    b.panel("stat", "Requests", "Callers' view.", [(rate("strait_requests_total", OUT_SVC), "")], "reqps", w=6, h=4)
    b.panel("stat", "p99 latency", "Callers' view.", [(quantile(0.99, OUT_SVC, "dst_service"), "")], "s", w=6, h=4)
    b.panel("stat", "mTLS share", "Share of the callers' requests sent over mutual TLS to a peer proxy.",
            [(ratio(OUT_SVC, 'tls="true"'), "")], "percentunit", w=6, h=4, minmax=(0, 1), thresholds=PERCENT)
    b.row("Outbound: callers' proxies to the service, by peer (the server proxy's identity)")
    b.panel("timeseries", "Requests by peer", "",
            [(rate("strait_requests_total", OUT_SVC, "peer_id"), "{{peer_id}}")], "reqps")
    b.panel("timeseries", "Success rate by peer", "",
            [(ratio(OUT_SVC, 'outcome="success"', "peer_id"), "{{peer_id}}")], "percentunit", minmax=(0, 1))
    b.panel("timeseries", "Latency", "Time to the response headers.",
            [(quantile(q, OUT_SVC, "dst_service"), f"p{p}") for q, p in (("0.5", 50), ("0.95", 95), ("0.99", 99))],
            "s")
    b.panel("timeseries", "Responses by status", "",
            [(rate("strait_requests_total", OUT_SVC, "status_code"), "{{status_code}}")], "reqps", w=12)
    b.panel("timeseries", "mTLS share", "Share of requests to the service over mutual TLS.",
            [(ratio(OUT_SVC, 'tls="true"'), "mTLS")], "percentunit", w=12, minmax=(0, 1))
    # By caller, as the callers' proxies saw it: a service's own inbound proxies label requests with
    # the mesh's names only (never the caller's Host), and with a controller they do not yet know
    # which service they serve, so the caller side is the one that names the service.
    b.row("Callers: requests to the service, by calling workload")
    b.panel("timeseries", "Requests by caller", "Requests to the service, by the calling workload.",
            [(rate("strait_requests_total", OUT_SVC, "src_workload"), "{{src_workload}}")], "reqps")
    b.panel("timeseries", "Success rate by caller", "",
            [(ratio(OUT_SVC, 'outcome="success"', "src_workload"), "{{src_workload}}")], "percentunit",
            minmax=(0, 1))
    b.panel("timeseries", "Latency seen by callers", "Time from the caller's proxy to the response headers.",
            [(quantile(q, OUT_SVC, "direction"), f"p{p}") for q, p in (("0.5", 50), ("0.95", 95), ("0.99", 99))], "s")
    b.row("Resilience (callers' proxies)")
    b.panel("timeseries", "Retries", "Requests sent again, by reason.",
            [(rate("strait_retries_total", 'dst_service=~"$service"', "reason"), "{{reason}}")], "reqps", w=6)
    b.panel("timeseries", "Circuit breaker: ejected endpoints",
            "Endpoints a caller's breaker keeps out of its balancer (0: all closed), by endpoint.",
            [('max by (endpoint) (strait_circuit_open{dst_service=~"$service"})', "{{endpoint}}")], "none", w=6)
    b.panel("timeseries", "Bulkhead rejections", "Requests refused with 503 bulkhead-full, per second.",
            [(rate("strait_bulkhead_rejected_total", 'dst_service=~"$service"', "dst_service"), "{{dst_service}}")],
            "reqps", w=6)
    b.panel("timeseries", "Bulkhead in flight", "Requests in flight to the service, over all callers.",
            [('sum by (dst_service) (strait_bulkhead_in_flight{dst_service=~"$service"})', "{{dst_service}}")], "none",
            w=6)
    return b


def proxy():
    inst = 'instance=~"$instance"'
    b = Board("strait-proxy", "Strait / Proxy", "One proxy (a sidecar): resources, connections, identity, discovery.",
              [query_var("instance", "Proxy", "label_values(strait_ready, instance)")])
    b.panel("stat", "Certificate expires in", "Time left on the proxy's certificate (renewed at 70 % of its life).",
            [(f"(strait_identity_cert_expiry_timestamp_seconds{{{inst}}} > 0) - time()", "{{instance}}")], "s",
            w=6, h=4, thresholds=[{"color": "red", "value": None}, {"color": "orange", "value": 1800},
                                  {"color": "green", "value": 7200}])
    b.panel("stat", "Discovery connected", "1 while the proxy holds a stream to the controller.",
            [(f"strait_discovery_connected{{{inst}}}", "{{instance}}")], "none", w=6, h=4,
            thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}])
    b.panel("stat", "Control-plane staleness", "Seconds the discovery snapshot has gone unconfirmed (0: current).",
            [(f"strait_discovery_stale_seconds{{{inst}}}", "{{instance}}")], "s", w=6, h=4,
            thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 60}, {"color": "red", "value": 300}])
    b.panel("stat", "Ready", "", [(f"strait_ready{{{inst}}}", "{{instance}}")], "none", w=6, h=4,
            thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}])
    b.row("Resources")
    b.panel("timeseries", "CPU", "CPU seconds per second (the process collector counts whole seconds).",
            [(f"rate(process_cpu_seconds_total{{{inst}}}[{RI}])", "{{instance}}")], "percentunit")
    b.panel("timeseries", "Resident memory", "", [(f"process_resident_memory_bytes{{{inst}}}", "{{instance}}")], "bytes")
    b.panel("timeseries", "Open file descriptors", "",
            [(f"process_open_fds{{{inst}}}", "{{instance}}")], "none")
    b.row("Traffic")
    b.panel("timeseries", "Open connections", "Accepted TCP connections open now, by direction.",
            [(f"sum by (instance, direction) (strait_tcp_connections_open{{{inst}}})", "{{instance}} {{direction}}")],
            "none")
    b.panel("timeseries", "Connections opened", "",
            [(rate("strait_tcp_connections_opened_total", inst, "instance, direction"), "{{instance}} {{direction}}")],
            "cps")
    b.panel("timeseries", "Throughput", "Bytes per second on accepted connections.",
            [(rate("strait_tcp_received_bytes_total", inst, "instance, direction"), "{{instance}} {{direction}} in"),
             (rate("strait_tcp_sent_bytes_total", inst, "instance, direction"), "{{instance}} {{direction}} out")], "Bps")
    b.panel("timeseries", "Requests", "HTTP requests handled, by direction.",
            [(rate("strait_requests_total", inst, "instance, direction"), "{{instance}} {{direction}}")], "reqps")
    b.panel("timeseries", "Protocol detection", "Connections by the protocol found on their first bytes.",
            [(rate("strait_protocol_detect_total", inst, "direction, result"), "{{direction}} {{result}}")], "cps")
    b.panel("timeseries", "mTLS handshakes", "", [(rate("strait_tls_handshakes_total", inst, "direction, result"),
                                                   "{{direction}} {{result}}")], "ops")
    b.row("Identity and discovery")
    b.panel("timeseries", "Certificate time left", "",
            [(f"(strait_identity_cert_expiry_timestamp_seconds{{{inst}}} > 0) - time()", "{{instance}}")], "s")
    b.panel("timeseries", "Certificate requests", "Certify calls to the controller, by result (total so far).",
            [(f"sum by (instance, result) (strait_identity_certify_total{{{inst}}})", "{{instance}} {{result}}")],
            "none")
    b.panel("timeseries", "Control-plane staleness", "", [(f"strait_discovery_stale_seconds{{{inst}}}", "{{instance}}")],
            "s")
    b.panel("timeseries", "Discovery updates", "Updates received, by result (total so far).",
            [(f'sum by (instance, result) (strait_discovery_updates_total{{{inst}, result!=""}})',
              "{{instance}} {{result}}")], "none", w=12)
    b.panel("timeseries", "Discovery connected", "",
            [(f"strait_discovery_connected{{{inst}}}", "{{instance}}")], "none", w=12)
    return b


def controller():
    inst = 'instance=~"$instance"'
    b = Board("strait-controller", "Strait / Control plane",
              "The controller: how fast mesh changes reach proxies, who is subscribed, and what fails.",
              [query_var("instance", "Controller", "label_values(strait_controller_subscriptions, instance)")])
    push = "strait_controller_push_duration_seconds"
    b.panel("stat", "Push latency p99", "From a mesh change to its update written to a proxy's stream.",
            [(f"histogram_quantile(0.99, sum by (le) (rate({push}_bucket{{{inst}}}[{RI}])))", "")], "s", w=6, h=4)
    b.panel("stat", "Discovery streams", "Open Discovery.Watch streams (one per connected proxy).",
            [(f"sum(strait_controller_discovery_streams{{{inst}}})", "")], "none", w=6, h=4)
    b.panel("stat", "Subscriptions", "Authorities subscribed to, over all streams.",
            [(f"sum(strait_controller_subscriptions{{{inst}}})", "")], "none", w=6, h=4)
    b.panel("stat", "Issuer expires in", "Time left on the certificate that signs proxies' certificates.",
            [(f"min(strait_controller_issuer_expiry_timestamp_seconds{{{inst}}} > 0) - time()", "")], "s", w=6, h=4)
    b.row("Discovery")
    b.panel("timeseries", "Push latency", "",
            [(f"histogram_quantile({q}, sum by (instance, le) (rate({push}_bucket{{{inst}}}[{RI}])))",
              f"{{{{instance}}}} p{p}") for q, p in (("0.5", 50), ("0.95", 95), ("0.99", 99))], "s")
    b.panel("timeseries", "Pushes", "Updates written to streams per second.",
            [(rate(f"{push}_count", inst, "instance"), "{{instance}}")], "ops")
    b.panel("timeseries", "Streams and subscriptions", "",
            [(f"sum by (instance) (strait_controller_discovery_streams{{{inst}}})", "{{instance}} streams"),
             (f"sum by (instance) (strait_controller_subscriptions{{{inst}}})", "{{instance}} subscriptions")], "none")
    b.panel("timeseries", "Updates sent by kind", "Discovery messages sent to proxies (total so far).",
            [(f'sum by (instance, kind) (strait_discovery_updates_total{{{inst}, kind!=""}})', "{{instance}} {{kind}}")],
            "none")
    b.panel("timeseries", "Acknowledged and rejected versions", "ACKs and NACKs from proxies (total so far).",
            [(f"sum by (instance) (strait_discovery_acks_total{{{inst}}})", "{{instance}} ack"),
             (f"sum by (instance) (strait_discovery_nacks_total{{{inst}}})", "{{instance}} nack")], "none")
    b.panel("timeseries", "Watched objects", "Objects in the served mesh (and the Kubernetes stores), by kind.",
            [(f"sum by (kind) (strait_controller_watched_objects{{{inst}}})", "{{kind}}")], "none")
    b.row("Errors")
    b.panel("timeseries", "Errors", "Per second: discovery streams ended with an error, NACKed versions, "
            "refused certificate requests, failed mesh-file and issuer reloads.",
            [(rate("strait_discovery_stream_errors_total", inst, "reason"), "stream {{reason}}"),
             (rate("strait_discovery_nacks_total", inst), "nack"),
             (rate("strait_controller_certificates_issued_total", f'{inst}, result!="ok"', "result"),
              "certificate {{result}}"),
             (rate("strait_controller_config_reloads_total", f'{inst}, result="error"'), "mesh file reload"),
             (rate("strait_controller_issuer_reloads_total", f'{inst}, result="error"'), "issuer reload")],
            "ops", w=12)
    b.panel("timeseries", "Certificates issued", "Identity.Certify answers per second, by result.",
            [(rate("strait_controller_certificates_issued_total", inst, "result"), "{{result}}")], "ops", w=12)
    b.row("Resources")
    b.panel("timeseries", "CPU", "CPU seconds per second (the process collector counts whole seconds).",
            [(f"rate(process_cpu_seconds_total{{{inst}}}[{RI}])", "{{instance}}")], "percentunit", w=12)
    b.panel("timeseries", "Resident memory", "",
            [(f"process_resident_memory_bytes{{{inst}}}", "{{instance}}")], "bytes", w=12)
    return b


BOARDS = {"mesh.json": mesh, "service.json": service, "proxy.json": proxy, "control-plane.json": controller}


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    OUT.mkdir(parents=True, exist_ok=True)
    for name, build in BOARDS.items():
        text = json.dumps(build().json(), indent=2) + "\n"
        path = OUT / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        sys.exit(f"dashboards out of date ({', '.join(stale)}): run python3 scripts/dashboards.py")


if __name__ == "__main__":
    main()
