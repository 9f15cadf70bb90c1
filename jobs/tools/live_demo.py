"""``lakehouse demo live``: the collector and the stream together, on the demo lakehouse, so a
newcomer sees a segment change live.

In one process: the collector (uvicorn on ``collector.port``, on a thread, with a key made up
for this run and known only to it) and ``lakehouse stream --sync file`` (the main thread). Once
the stream has caught up, a sender posts to the collector over HTTP, like a shop's backend would:
a ``purchase`` by a customer who is in ``abandoned_cart_24h`` (they leave it) and a
``cart_abandonment`` by one who is not (they enter it). Each tick that changes something prints
its line; the demo stops once both changes were synced (or after ``max_ticks``).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs.runtime.errors import InputError
from jobs.runtime.settings import CollectorKey, Settings
from jobs.runtime.tables import read_or_empty
from jobs.stages.stream import Tick, stream

SEGMENT = "abandoned_cart_24h"
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"


def _members(spark: SparkSession, settings: Settings) -> set[str]:
    membership = read_or_empty(spark, settings.lakehouse.root, "gold.segment_membership")
    return {r["customer_id"] for r in membership.where(F.col("segment_id") == SEGMENT).select("customer_id").collect()}


def _customers(spark: SparkSession, settings: Settings) -> list[str]:
    customers = read_or_empty(spark, settings.lakehouse.root, "silver.customers")
    return sorted(r["customer_id"] for r in customers.where(F.col("email_consent")).select("customer_id").collect())


def _serve(settings: Settings) -> Callable[[], None]:
    import uvicorn

    from jobs.collector.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.collector.port,
                                           log_level="warning", access_log=False))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign] # the stream owns Ctrl-C
    thread = threading.Thread(target=server.run, name="collector", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise InputError(f"the collector could not start on 127.0.0.1:{settings.collector.port} "
                             "(port taken? --set collector.port=...)")
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(20)

    return stop


def live_demo(spark: SparkSession, settings: Settings, trigger_seconds: float, echo: Callable[[str], None],
              stop: threading.Event, max_ticks: int = 40) -> dict[str, str]:
    key = secrets.token_urlsafe(24)
    demo_key = CollectorKey(sha256=hashlib.sha256(key.encode()).hexdigest())
    collector = settings.collector.model_copy(update={
        "api_keys": {**settings.collector.api_keys, "demo": demo_key}, "roll_seconds": 1.0})
    settings = settings.model_copy(update={"collector": collector})
    stop_collector = _serve(settings)
    url = f"http://127.0.0.1:{settings.collector.port}"
    echo(f"collector listening on {url} (POST /api/events, /p.gif, /collector.js)")
    plan: dict[str, str] = {}

    def send(customer: str, event_type: str) -> None:
        event = {"customer_id": customer, "event_type": event_type, "user_agent": BROWSER, "product_id": "P01001",
                 "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                 "properties": {"price": 42.0, "currency": "USD", "quantity": 1, "order_id": f"live-{customer}"}}
        answer = httpx.post(f"{url}/api/events", json=event, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        answer.raise_for_status()
        echo(f"sent {event_type} by {customer}: HTTP {answer.status_code}, "
             f"event {answer.json()['events'][0]['event_id']}")

    def on_tick(tick: Tick) -> None:
        by_stage = {s.stage: s for s in tick.stages}
        moves = [f"{sid} +{entered} -{exited}" for sid, _, entered, exited in by_stage["segment"].segments
                 if entered or exited]
        echo(f"tick {tick.number} ({tick.seconds:.1f} s): {by_stage['ingest'].rows_out} landed, "
             f"{by_stage['cleanse'].rows_out} cleansed" + (f"; {', '.join(moves)}" if moves else ""))
        members = _members(spark, settings)
        if not plan:
            inside = sorted(members)
            outside = [c for c in _customers(spark, settings) if c not in members]
            if not inside or not outside:
                raise InputError(f"the demo lakehouse has no customer {'in' if not inside else 'outside'} "
                                 f"{SEGMENT}; run `make demo` first")
            plan.update(leaves=inside[0], enters=outside[0])
            send(plan["leaves"], "purchase")
            send(plan["enters"], "cart_abandonment")
        elif plan["leaves"] not in members and plan["enters"] in members:
            echo(f"{plan['leaves']} left {SEGMENT} and {plan['enters']} entered it; "
                 f"the file destination wrote the changes under {settings.destinations.file.path}")
            stop.set()

    try:
        stream(spark, settings, trigger_seconds, ("file",), False, stop, max_ticks, on_tick)
    finally:
        stop_collector()
    return plan
