#!/usr/bin/env python3
"""One request to each of N services through a proxy's outbound listener, for bench/policy.sh.

    fanout.py --proxy 127.0.0.1:PORT --services N --pid PROXY_PID

Sends `GET http://svcI.bench:8080/bytes/1024` (absolute form: the listener is used as an HTTP proxy)
for I = 0..N-1, one after the other on one keep-alive connection. Reads the proxy's VmRSS after the
first service and after all of them. Prints JSON.
"""

import argparse
import http.client
import json
import time


def rss_kb(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--proxy", required=True)
    p.add_argument("--services", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    args = p.parse_args()
    host, port = args.proxy.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    ok = errors = 0
    first_error = ""
    rss_first = None
    start = time.monotonic()
    for i in range(args.services):
        authority = f"svc{i}.bench:8080"
        try:
            conn.request("GET", f"http://{authority}/bytes/1024", headers={"Host": authority})
            resp = conn.getresponse()
            resp.read()
            if 200 <= resp.status < 300:
                ok += 1
            else:
                errors += 1
                first_error = first_error or f"svc{i}: HTTP {resp.status} {resp.getheader('strait-error', '')}"
        except (OSError, http.client.HTTPException) as e:
            errors += 1
            first_error = first_error or f"svc{i}: {type(e).__name__}: {e}"
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
        if i == 0:
            time.sleep(0.5)
            rss_first = rss_kb(args.pid)
    seconds = time.monotonic() - start
    time.sleep(1)
    print(
        json.dumps(
            {
                "services": args.services,
                "ok": ok,
                "errors": errors,
                "first_error": first_error,
                "seconds": seconds,
                "rss_first_kb": rss_first,
                "rss_after_kb": rss_kb(args.pid),
                "hwm_after_kb": rss_kb(args.pid, "VmHWM"),
            }
        )
    )


if __name__ == "__main__":
    main()
