"""Benchmark (not a test): how fast ``lakehouse stream --trigger 5s --sync klaviyo`` turns an event
POSTed to the collector into a change on a Klaviyo list.

    .venv/bin/python -m tests.benchmarks.stream_latency [--customers 24] [--out bench/results]

Real processes on this machine: ``lakehouse serve`` (the collector) and ``lakehouse stream``
(its own Spark driver), syncing to the contract-checking Klaviyo fake of ``tests/fakes``. The
lakehouse starts with N customers who abandoned a cart two hours ago (on the
``abandoned_cart_24h`` list after the first tick) and N more who have not. Then:

1. a ``purchase`` for each of the first N, one every 1.25 s: seconds from the collector's 2xx
   until the customer is off the list;
2. an ``add_to_cart`` for each of the other N, with ``gold.abandonment_window_minutes`` = 1:
   seconds from the moment the window has passed until the customer is on the list.

Results: ``{out}/bench-stream.json`` and ``.md``; the Markdown is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from jobs.collector.serve import free_port
from tests.fakes.klaviyo import FakeKlaviyo

KEY = "bench-collector-key-0123456789"
KLAVIYO_KEY = "pk_bench_0123456789abcdef"
LIST = "BenchL1"
# Every segment needs a list (a sync refuses a segment it has nowhere to send).
LISTS = {"abandoned_cart_24h": LIST, "at_risk": "BenchL2", "high_value": "BenchL3",
         "nyc_electronics_25_35": "BenchL4", "window_shoppers": "BenchL5"}
WINDOW_MINUTES = 1.0
LAKEHOUSE = [sys.executable, "-m", "jobs.cli"]


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1)

    return {"n": len(ordered), "p50_s": at(0.5), "p95_s": at(0.95), "max_s": round(ordered[-1], 1)}


def run(customers: int, out: Path, trigger: str = "5s") -> dict:
    with contextlib.ExitStack() as stack:
        return _run(stack, customers, out, trigger)


def _run(stack: contextlib.ExitStack, customers: int, out: Path, trigger: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    klaviyo = FakeKlaviyo(KLAVIYO_KEY, job_polls=1)
    klaviyo_url = klaviyo.start()
    collector_port = free_port()
    sets = {
        "lakehouse.root": str(work / "lakehouse"), "landing.root": str(work / "landing"),
        "gold.abandonment_window_minutes": WINDOW_MINUTES,
        "collector.api_keys": json.dumps({"bench": {"sha256": hashlib.sha256(KEY.encode()).hexdigest()}}),
        "collector.roll_seconds": 1,
        "destinations.klaviyo": json.dumps({"base_url": klaviyo_url, "api_key_env": "BENCH_KLAVIYO_KEY",
                                            "lists": LISTS, "poll_seconds": 0.2}),
    }
    args = [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]
    env = {**os.environ, "BENCH_KLAVIYO_KEY": KLAVIYO_KEY}
    buyers = [f"B{i:03d}" for i in range(customers)]
    browsers = [f"N{i:03d}" for i in range(customers)]
    (work / "landing" / "crm").mkdir(parents=True)
    (work / "landing" / "crm" / "crm.csv").write_text("customer_id,email,email_consent,updated_at\n" + "".join(
        f"{c},{c.lower()}@example.com,yes,2026-01-01\n" for c in buyers + browsers))
    (work / "landing" / "events").mkdir(parents=True)
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    (work / "landing" / "events" / "carts.json").write_text("".join(json.dumps({
        "event_id": f"cart-{c}", "customer_id": c, "event_type": "add_to_cart", "timestamp": _iso(two_hours_ago),
        "product_id": "p1", "session_id": f"s-{c}", "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120",
        "properties": {"price": 20}}) + "\n" for c in buyers))
    logs = {name: stack.enter_context((work / f"{name}.log").open("w")) for name in ("serve", "stream")}
    serve = subprocess.Popen([*LAKEHOUSE, *args, "serve", "--port", str(collector_port)], env=env,
                             stdout=logs["serve"], stderr=subprocess.STDOUT)
    stream = subprocess.Popen([*LAKEHOUSE, *args, "stream", "--trigger", trigger, "--sync", "klaviyo", "-v",
                               "--allow-large-change"],  # 24 identical buyers reshuffle the RFM quantiles
                              env=env, stdout=logs["stream"], stderr=subprocess.STDOUT)
    left: dict[str, float] = {}
    entered: dict[str, float] = {}
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            members, now = klaviyo.members(LIST), time.time()
            for c in buyers:
                if c not in members and c not in left and started_with_all.is_set():
                    left[c] = now
            for c in browsers:
                if c in members and c not in entered:
                    entered[c] = now
            time.sleep(0.05)

    started_with_all = threading.Event()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        deadline = time.time() + 300
        while not set(buyers) <= klaviyo.members(LIST):
            if time.time() > deadline or stream.poll() is not None:
                raise RuntimeError(f"the first sync did not fill the list; see {work / 'stream.log'}")
            time.sleep(0.2)
        started_with_all.set()
        sent: dict[str, float] = {}
        due: dict[str, float] = {}
        with httpx.Client(base_url=f"http://127.0.0.1:{collector_port}",
                          headers={"Authorization": f"Bearer {KEY}"}) as client:
            for buyer, browser in zip(buyers, browsers, strict=True):
                now = datetime.now(UTC)
                answer = client.post("/api/events", json={"events": [
                    {"customer_id": buyer, "event_type": "purchase", "timestamp": _iso(now), "product_id": "p1",
                     "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120",
                     "properties": {"price": 20, "order_id": f"o-{buyer}"}},
                    {"customer_id": browser, "event_type": "add_to_cart", "timestamp": _iso(now),
                     "product_id": "p2", "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120",
                     "properties": {"price": 30}}]})
                answer.raise_for_status()
                sent[buyer] = time.time()
                due[browser] = now.timestamp() + WINDOW_MINUTES * 60
                time.sleep(1.25)
        deadline = time.time() + WINDOW_MINUTES * 60 + 180
        while (len(left) < customers or len(entered) < customers) and time.time() < deadline:
            time.sleep(0.5)
    finally:
        watching.set()
        for process in (stream, serve):
            process.send_signal(signal.SIGTERM)
        for process in (stream, serve):
            process.wait(120)
        klaviyo.stop()
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(), "trigger": trigger,
        "customers": customers, "violations": klaviyo.violations,
        "purchase_to_removed": _percentiles([left[c] - sent[c] for c in buyers if c in left]),
        "window_passed_to_added": _percentiles([entered[c] - due[c] for c in browsers if c in entered]),
        "missing": {"not_removed": sorted(set(buyers) - set(left)), "not_added": sorted(set(browsers) - set(entered))},
        "logs": str(work),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-stream.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "bench-stream.md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    rows = [("`purchase` POSTed -> off `abandoned_cart_24h` in Klaviyo", result["purchase_to_removed"]),
            ("abandonment window passed -> on the list", result["window_passed_to_added"])]
    lines = [f"`lakehouse stream --trigger {result['trigger']} --sync klaviyo`, {result['customers']} customers, "
             f"{result['cpus']} CPUs, {result['date']}", "",
             "| change | n | p50 s | p95 s | max s |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['n']} | {r['p50_s']} | {r['p95_s']} | {r['max_s']} |" for name, r in rows]
    missing = result["missing"]
    if missing["not_removed"] or missing["not_added"] or result["violations"]:
        lines.append(f"\nmissing: {missing}; contract violations: {result['violations']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=24)
    parser.add_argument("--trigger", default="5s")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    options = parser.parse_args()
    print(markdown(run(options.customers, options.out, options.trigger)))


if __name__ == "__main__":
    main()
