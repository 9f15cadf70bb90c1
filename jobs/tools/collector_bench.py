"""``lakehouse bench --collector``: the collector's throughput and latency on this machine.

A real collector (``lakehouse serve``'s app under uvicorn, in its own process) on a loopback
port, with a throw-away landing folder; the load comes from another process of keep-alive HTTP/1.1
connections (asyncio, pre-built requests), so client and server share the machine as a site's
servers and a collector would not, but neither shares a Python interpreter with the other. Three
measurements, each a bounded loop that stops by itself:

1. batches of 100 events, as fast as they are answered: events/s;
2. single-event POSTs, as fast as they are answered: requests/s;
3. single-event POSTs paced at half of (2): latency p50/p95/p99.

Every 2xx counted is an event fsync'd to a landing file; the result lists the bytes written too.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from jobs.collector.serve import free_port, serve

LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)
EVENT = {"event_type": "add_to_cart", "timestamp": "2026-11-30T10:00:00Z", "customer_id": "c1",
         "session_id": "s1", "product_id": "p1", "url": "https://shop.example/p/1",
         "properties": {"price": 19.5, "currency": "EUR", "quantity": 1}}
KEY = "bench-key-0123456789abcdef"


def _request(port: int, payload: Any) -> bytes:
    body = json.dumps(payload).encode()
    return (f"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nUser-Agent: bench/1\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


async def _connection(port: int, request: bytes, deadline: float, pace: float | None, start: float,
                      latencies: list[float], statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    next_send = start
    try:
        while time.perf_counter() < deadline:
            if pace is not None:
                next_send += pace
                delay = next_send - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            sent = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            found = LENGTH.search(head)
            await reader.readexactly(int(found.group(1)) if found else 0)
            latencies.append(time.perf_counter() - sent)
            status = int(head[9:12])
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


def _load(port: int, batch: int, connections: int, seconds: float, rate: float | None,
          out: multiprocessing.Queue) -> None:
    payload = {"events": [EVENT] * batch} if batch > 1 else EVENT
    request = _request(port, payload)
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def main() -> None:
        start = time.perf_counter()
        pace = connections / rate if rate else None
        await asyncio.gather(*[_connection(port, request, start + seconds, pace, start + i * (pace or 0) / connections,
                                           latencies, statuses) for i in range(connections)])

    began = time.perf_counter()
    asyncio.run(main())
    out.put({"seconds": time.perf_counter() - began, "latencies": latencies, "statuses": statuses})


def _measure(port: int, batch: int, connections: int, seconds: float, rate: float | None = None) -> dict[str, Any]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    process = multiprocessing.get_context("fork").Process(
        target=_load, args=(port, batch, connections, seconds, rate, queue))
    process.start()
    raw = queue.get(timeout=seconds + 60)
    process.join(30)
    latencies = sorted(raw["latencies"])
    ok = sum(n for status, n in raw["statuses"].items() if 200 <= status < 300)

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2) if latencies else 0.0

    return {"batch": batch, "connections": connections, "seconds": round(raw["seconds"], 2),
            "requests_ok": ok, "statuses": raw["statuses"], "requests_per_s": round(ok / raw["seconds"]),
            "events_per_s": round(ok * batch / raw["seconds"]), "p50_ms": pct(0.50), "p95_ms": pct(0.95),
            "p99_ms": pct(0.99), "target_rate": rate}


def run_collector_bench(settings: Any, workdir: Path, seconds: float = 10.0) -> dict[str, Any]:
    import hashlib

    from jobs.runtime.settings import CollectorKey

    collector = settings.collector.model_copy(update={
        "api_keys": {"bench": CollectorKey(sha256=hashlib.sha256(KEY.encode()).hexdigest())},
        "oauth_clients": {}, "rate_per_second": 1e9, "rate_burst": 10**9, "instance": "bench"})
    landing = workdir / "collector-landing"
    shutil.rmtree(landing, ignore_errors=True)
    settings = settings.model_copy(update={"collector": collector, "landing": settings.landing.model_copy(
        update={"root": str(landing)})})
    port = free_port()
    server = multiprocessing.get_context("fork").Process(target=serve, args=(settings, "127.0.0.1", port),
                                                         daemon=True)
    server.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or not server.is_alive():
                raise RuntimeError("the collector did not start") from None
            time.sleep(0.05)
    try:
        _measure(port, 1, 4, 1.0)  # warm-up
        batches = _measure(port, 100, 8, seconds)
        singles = _measure(port, 1, 16, seconds)
        paced = _measure(port, 1, 16, seconds, rate=singles["requests_per_s"] / 2)
    finally:
        server.terminate()
        server.join(30)
    written = sum(p.stat().st_size for p in landing.rglob("*") if p.is_file())
    return {"cpus": os.cpu_count(), "batches_of_100": batches, "single_events": singles,
            "half_rate_latency": paced, "bytes_written": written}


def markdown(result: dict[str, Any]) -> str:
    rows = [("batches of 100, flat out", result["batches_of_100"]),
            ("single events, flat out", result["single_events"]),
            ("single events at half that rate", result["half_rate_latency"])]
    lines = ["| load | events/s | requests/s | p50 ms | p95 ms | p99 ms | non-2xx |", "|---|---|---|---|---|---|---|"]
    for name, r in rows:
        bad = sum(n for status, n in r["statuses"].items() if not 200 <= int(status) < 300)
        lines.append(f"| {name} | {r['events_per_s']:,} | {r['requests_per_s']:,} | {r['p50_ms']} | {r['p95_ms']} | "
                     f"{r['p99_ms']} | {bad} |")
    lines.append(f"\n{result['cpus']} CPUs; {result['bytes_written']:,} bytes fsync'd to landing files.")
    return "\n".join(lines)
