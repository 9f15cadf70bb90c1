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
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.collector.serve import serve_in_thread
from jobs.runtime.errors import InputError
from jobs.runtime.settings import CollectorKey, Settings
from jobs.runtime.tables import read_or_empty
from jobs.stages.stream import Tick, stream

SEGMENT = "abandoned_cart_24h"
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"


def _members(spark: SparkSession, settings: Settings) -> DataFrame:
    membership = read_or_empty(spark, settings.lakehouse.root, "gold.segment_membership")
    return membership.where(F.col("segment_id") == SEGMENT).select("customer_id")


def _pick(spark: SparkSession, settings: Settings) -> tuple[str | None, str | None]:
    """The first member of the segment, and the first consented customer outside it (one row each)."""
    members = _members(spark, settings)
    customers = read_or_empty(spark, settings.lakehouse.root, "silver.customers")
    outside = customers.where(F.col("email_consent")).select("customer_id").join(members, "customer_id", "left_anti")
    return members.agg(F.min("customer_id")).first()[0], outside.agg(F.min("customer_id")).first()[0]


def _in_segment(spark: SparkSession, settings: Settings, *customer_ids: str) -> set[str]:
    found = _members(spark, settings).where(F.col("customer_id").isin(*customer_ids)).collect()  # two ids at most
    return {r["customer_id"] for r in found}


def live_demo(spark: SparkSession, settings: Settings, trigger_seconds: float, echo: Callable[[str], None],
              stop: threading.Event, max_ticks: int = 40) -> dict[str, str]:
    key = secrets.token_urlsafe(24)
    demo_key = CollectorKey(sha256=hashlib.sha256(key.encode()).hexdigest())
    collector = settings.collector.model_copy(update={
        "api_keys": {**settings.collector.api_keys, "demo": demo_key}, "roll_seconds": 1.0})
    settings = settings.model_copy(update={"collector": collector})
    collector_thread = serve_in_thread(settings, settings.collector.port)
    url = collector_thread.url
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
        moves = tick.moves()
        echo(f"tick {tick.number} ({tick.seconds:.1f} s): {tick.counts()}" + (f"; {', '.join(moves)}" if moves else ""))
        if not plan:
            inside, outside = _pick(spark, settings)
            if inside is None or outside is None:
                raise InputError(f"the demo lakehouse has no customer {'in' if inside is None else 'outside'} "
                                 f"{SEGMENT}; run `make demo` first")
            plan.update(leaves=inside, enters=outside)
            send(plan["leaves"], "purchase")
            send(plan["enters"], "cart_abandonment")
        elif _in_segment(spark, settings, plan["leaves"], plan["enters"]) == {plan["enters"]}:
            echo(f"{plan['leaves']} left {SEGMENT} and {plan['enters']} entered it; "
                 f"the file destination wrote the changes under {settings.destinations.file.path}")
            stop.set()

    try:
        stream(spark, settings, trigger_seconds, ("file",), False, stop, max_ticks, on_tick)
    finally:
        collector_thread.stop()
    return plan
