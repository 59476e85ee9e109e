#!/usr/bin/env python3
"""Many short TCP connections through an HTTP proxy's CONNECT, for bench/tls.sh.

    connchurn.py --proxy 127.0.0.1:PORT --target tcp.bench:9000 [--concurrency 16] [--duration 10]

Each of CONCURRENCY workers loops for DURATION seconds: connect to the proxy, send
`CONNECT TARGET HTTP/1.1`, read the 200, send 32 bytes, read the 32 echoed bytes, close. Behind an
opaque-port service every such connection is a new connection between the two proxies (with identity:
a new mTLS handshake). Prints JSON: ok, errors, error_kinds, seconds, connection latency percentiles.
No rate limit: it measures what the proxies sustain (open throttle), one asyncio thread.
"""

import argparse
import asyncio
import json
import time

PAYLOAD = b"strait-bench-connchurn-payload!\n"  # 32 bytes


async def one(host, port, request):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
            raise ValueError("CONNECT answered " + head.split(b"\r\n", 1)[0].decode(errors="replace"))
        writer.write(PAYLOAD)
        echoed = await reader.readexactly(len(PAYLOAD))
        if echoed != PAYLOAD:
            raise ValueError("wrong echo")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def worker(args, host, port, request, deadline, latencies, errors):
    while time.monotonic() < deadline:
        start = time.monotonic()
        try:
            await asyncio.wait_for(one(host, port, request), timeout=5)
            latencies.append(time.monotonic() - start)
        except Exception as e:  # noqa: BLE001 - every failure is counted by kind
            kind = type(e).__name__
            if isinstance(e, ValueError):
                kind = str(e)[:80]
            errors[kind] = errors.get(kind, 0) + 1
            await asyncio.sleep(0.01)


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    rank = max(1, int(-(-q * len(sorted_values) // 100)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--proxy", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=10)
    args = p.parse_args()
    host, port = args.proxy.rsplit(":", 1)
    request = f"CONNECT {args.target} HTTP/1.1\r\nHost: {args.target}\r\n\r\n".encode()
    latencies, errors = [], {}
    start = time.monotonic()
    deadline = start + args.duration
    await asyncio.gather(
        *(worker(args, host, int(port), request, deadline, latencies, errors) for _ in range(args.concurrency))
    )
    seconds = time.monotonic() - start
    latencies.sort()
    print(
        json.dumps(
            {
                "ok": len(latencies),
                "errors": sum(errors.values()),
                "error_kinds": errors,
                "seconds": seconds,
                "concurrency": args.concurrency,
                "p50_ms": (percentile(latencies, 50) or 0) * 1000 if latencies else None,
                "p90_ms": (percentile(latencies, 90) or 0) * 1000 if latencies else None,
                "p99_ms": (percentile(latencies, 99) or 0) * 1000 if latencies else None,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
