"""``lakehouse stream``: ticks of the same pipeline; time moves segments without events; a signal
stops it after the tick it interrupts; a restart continues where it stopped."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F

from jobs.runtime.tables import current_version, read_table, table_path, temporary_confs
from jobs.stages.stream import Tick, stop_on_signals, stream

WINDOW_SECONDS = 12


def _land(settings, name: str, events: list[dict]) -> None:
    folder = Path(settings.landing.root) / "events"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(e) + "\n" for e in events))


def _abandoned(spark, settings) -> set[str]:
    members = read_table(spark, settings.lakehouse.root, "gold.segment_membership")
    return {r["customer_id"] for r in members.where(F.col("segment_id") == "abandoned_cart_24h").collect()}


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.slow
def test_a_cart_becomes_abandoned_by_time_alone_and_a_signal_stops_after_its_tick(spark, make_settings):
    settings = make_settings(f"gold.abandonment_window_minutes={WINDOW_SECONDS / 60}")
    crm = Path(settings.landing.root) / "crm"
    crm.mkdir(parents=True)
    (crm / "crm.csv").write_text("customer_id,email,email_consent,updated_at\nC1,c1@example.com,yes,2026-01-01\n")
    added = datetime.now(UTC)
    _land(settings, "cart.json", [{"event_id": "a1", "customer_id": "C1", "event_type": "add_to_cart",
                                   "timestamp": _iso(added), "product_id": "p1", "session_id": "s1",
                                   "properties": {"price": 20}}])
    seen: list[tuple[int, set[str]]] = []

    def on_tick(tick: Tick) -> None:
        seen.append((tick.number, _abandoned(spark, settings)))
        if tick.number == 1:  # no event will come: only time passes
            time.sleep(max(0.0, (added + timedelta(seconds=WINDOW_SECONDS + 1) - datetime.now(UTC)).total_seconds()))
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()  # lands inside tick 2

    stop = threading.Event()
    restore = stop_on_signals(stop)
    try:
        ticks = stream(spark, settings, trigger_seconds=0.1, stop=stop, max_ticks=5, on_tick=on_tick)
    finally:
        restore()

    assert ticks == 2 and stop.is_set()  # the signal ended the stream after tick 2, which completed
    assert seen == [(1, set()), (2, {"C1"})]  # tick 2 had no new event: the window passing moved C1
    runs = read_table(spark, settings.lakehouse.root, "ops.job_runs").where(F.col("job") == "stream")
    assert {r["status"] for r in runs.collect()} == {"succeeded"}

    _land(settings, "purchase.json", [{"event_id": "b1", "customer_id": "C1", "event_type": "purchase",
                                       "timestamp": _iso(datetime.now(UTC)), "product_id": "p1",
                                       "properties": {"price": 20, "order_id": "o1"}}])
    products = current_version(spark, table_path(settings.lakehouse.root, "silver.products"))
    restarted: list[Tick] = []
    with temporary_confs(spark, {"spark.databricks.delta.autoCompact.minNumFiles": "2"}):  # compact at 2 files
        assert stream(spark, settings, trigger_seconds=0.1, max_ticks=2, on_tick=restarted.append) == 2  # continues
    assert _abandoned(spark, settings) == set()
    # Products seen in events were completed in tick 1: the next time is cleanse.complete_products_minutes later.
    [cleansed] = [stage for stage in restarted[0].stages if stage.stage == "cleanse"]
    assert "products_from_events" in cleansed.details
    assert current_version(spark, table_path(settings.lakehouse.root, "silver.products")) == products
    bronze = read_table(spark, settings.lakehouse.root, "bronze.events")
    assert sorted(r["event_id"] for r in bronze.collect()) == ["a1", "b1"]  # each file once, across restarts
    # The stream compacted today's two small silver files (a1's, b1's) in a commit of its own ...
    silver = DeltaTable.forPath(spark, table_path(settings.lakehouse.root, "silver.events"))
    compactions = silver.history().where("operation = 'OPTIMIZE' AND operationParameters.auto = 'true'")
    assert compactions.count() >= 1 and len(silver.toDF().inputFiles()) == 1
    # ... which is no new input: the next tick finds nothing to do
    assert restarted[1].commits == 0, [(s.stage, dict(s.commits)) for s in restarted[1].stages]


def test_the_first_signal_asks_to_stop_and_the_second_interrupts():
    stop = threading.Event()
    before = signal.getsignal(signal.SIGINT)
    restore = stop_on_signals(stop)
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stop.is_set()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)
    finally:
        restore()
    assert signal.getsignal(signal.SIGINT) is before
