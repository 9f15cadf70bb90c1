"""From the collector's files to bronze: whole files only, each once, under their own source."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from pyspark.sql import functions as F

from jobs.collector.serve import free_port
from jobs.runtime.tables import read_table
from jobs.stages.ingest import ingest, landed_files
from tests.collector.support import API_KEY, EVENT, bearer, collector_overrides


def _bronze(spark, settings):
    return read_table(spark, settings.lakehouse.root, "bronze.events")


@pytest.mark.slow
def test_collector_files_land_once_whole_and_as_their_own_source(spark, start_collector):
    collector = start_collector("collector.roll_seconds=3600")
    settings = collector.settings
    web = Path(settings.landing.root) / "events"
    web.mkdir(parents=True, exist_ok=True)
    (web / "feed.json").write_text(json.dumps({**EVENT, "event_id": "from-feed"}) + "\n")
    with httpx.Client(base_url=collector.url) as client:
        sent = client.post("/api/events", headers={**bearer(), "User-Agent": "ua/1"},
                           json={"events": [{**EVENT, "event_id": f"c{i}", "extra": i, "user_agent": "ua/1"} for i in range(3)]})
    assert sent.status_code == 200

    first = ingest(spark, settings, "events")  # the collector's file is still open: hidden
    assert {r["event_id"] for r in _bronze(spark, settings).collect()} == {"from-feed"}

    collector.stop()  # rolls the file
    second = ingest(spark, settings, "events")
    third = ingest(spark, settings, "events")

    bronze = _bronze(spark, settings)
    rows = {r["event_id"]: r for r in bronze.collect()}
    assert sorted(rows) == ["c0", "c1", "c2", "from-feed"]
    assert {rows[i]["_source"] for i in ("c0", "c1", "c2")} == {"collector"} and rows["from-feed"]["_source"] == "web"
    assert rows["c1"]["user_agent"] == "ua/1" and rows["c1"]["properties"] == {"price": "19.5", "currency": "EUR"}
    rescued = json.loads(rows["c1"]["_rescued_data"])
    assert (rescued["extra"], rescued["_key"], rescued["_client_ip"]) == ("1", "web", "127.0.0.0")
    assert [s["files"] for s in first.details["sources"]] == [1, 0]
    assert [s["files"] for s in second.details["sources"]] == [0, 1]
    assert [s["files"] for s in third.details["sources"]] == [0, 0]
    web_files = landed_files(spark, settings, settings.sources["web"])
    assert [Path(str(f["path"])).name for f in web_files] == ["feed.json"]
    assert len(landed_files(spark, settings, settings.sources["collector"])) == 1


def _serve(settings_args: list[str], port: int, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "jobs.cli", *[a for s in settings_args for a in ("--set", s)],
               "serve", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            if process.poll() is not None:
                raise RuntimeError(process.stdout.read().decode()) from None
            time.sleep(0.05)
    raise RuntimeError("the collector did not start")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # rolled between the listing and the look
        return 0


@pytest.mark.slow
def test_a_kill_9_under_load_loses_no_acknowledged_event_and_lands_no_partial_line(spark, make_settings, tmp_path):
    args = [f"lakehouse.root={tmp_path / 'lakehouse'}", f"landing.root={tmp_path / 'landing'}",
            *collector_overrides(tmp_path, "collector.roll_bytes=300000", "collector.roll_seconds=60",
                                 "collector.max_batch_events=200", "collector.rate_per_second=1000000",
                                 "collector.rate_burst=1000000")]
    env = {**os.environ, "TEST_COLLECTOR_APP_KEY": "unused-0123456789", "LAKEHOUSE_COLLECTOR_TOKEN_KEY": "k" * 40}
    port = free_port()
    process = _serve(args, port, env)
    acknowledged: set[str] = set()
    stop = threading.Event()
    padding = "x" * 300

    def load(worker: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=bearer(API_KEY), timeout=5) as client:
            for batch in range(10_000):  # bounded; ends at the kill
                ids = [f"w{worker}-b{batch}-e{i}" for i in range(200)]
                events = [{**EVENT, "event_id": i, "properties": {"pad": padding}} for i in ids]
                try:
                    answer = client.post("/api/events", json={"events": events})
                except httpx.TransportError:
                    return
                if answer.status_code == 200:
                    acknowledged.update(ids)
                if stop.is_set():
                    return

    workers = [threading.Thread(target=load, args=(w,)) for w in range(3)]
    for worker in workers:
        worker.start()
    time.sleep(2.0)
    folder = tmp_path / "landing" / "events" / "collector"
    for _ in range(100):  # freeze the server, and kill it only when it has a file open
        process.send_signal(signal.SIGSTOP)
        if any(_size(p) for p in folder.rglob(".*.open")):
            break
        process.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    stop.set()
    for worker in workers:
        worker.join(10)
    assert list(folder.rglob(".*.open")), "the kill left no file open: nothing was tested"

    restarted = _serve(args, port, env)  # recovers: cuts the open files to whole lines, rolls them
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its graceful stop
    assert not list(folder.rglob(".*.open"))

    ingest(spark, make_settings(*args[2:]), "events")
    bronze = _bronze(spark, make_settings(*args[2:]))
    assert bronze.where(F.col("_corrupt_record").isNotNull()).count() == 0
    counts = {r["event_id"]: r["n"] for r in bronze.groupBy("event_id").agg(F.count("*").alias("n")).collect()}
    assert len(acknowledged) >= 1000
    assert acknowledged <= set(counts)
    assert {counts[i] for i in acknowledged} == {1}


@pytest.mark.slow
def test_identify_traits_reach_silver_customers_field_by_field(spark, start_collector):
    from jobs.stages.cleanse import cleanse

    collector = start_collector()
    settings = collector.settings
    crm = Path(settings.landing.root) / "crm"  # the collector made crm/collector
    (crm / "export.csv").write_text("customer_id,email,first_name,last_name,birth_date,city,country,email_consent,"
                                    "updated_at\nC1,ada@old.example,Ada,Lovelace,1990-05-01,Boston,US,yes,"
                                    "2026-11-01T00:00:00Z\n")

    def identify(day: int, **traits) -> dict:
        return {"type": "identify", "userId": "C1", "traits": traits, "timestamp": f"2026-11-{day:02d}T00:00:00Z"}

    with httpx.Client(base_url=collector.url, auth=(API_KEY, "")) as client:
        answer = client.post("/v1/batch", json={"batch": [
            identify(10, email="Ada@New.Example"), identify(5, firstName="Augusta"),
            identify(12, unsubscribed=True)]})
    assert answer.status_code == 200
    collector.stop()

    ingest(spark, settings, "crm")
    cleanse(spark, settings, events=False)

    [current] = read_table(spark, settings.lakehouse.root, "silver.customers").collect()
    assert (current["email"], current["first_name"], current["last_name"], current["city"], current["country"],
            current["email_consent"], current["source"]) == (
        "ada@new.example", "Augusta", "Lovelace", "Boston", "US", False, "collector_profiles")
    assert current["updated_at"].day == 12
    history = read_table(spark, settings.lakehouse.root, "silver.customers_history").orderBy("valid_from").collect()
    assert [(h["updated_at"].day, h["first_name"], h["email"], h["email_consent"]) for h in history] == [
        (1, "Ada", "ada@old.example", True), (5, "Augusta", "ada@old.example", True),
        (10, "Augusta", "ada@new.example", True), (12, "Augusta", "ada@new.example", False)]
