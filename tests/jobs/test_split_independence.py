"""The same events give the same silver, rejected, identity and gold state tables whether they
land as one file in one run or as five files in five runs — with a bot burst, a pixel
double-load, repeated events and a login split across the files, so the later runs must revise
what earlier ones decided or judge against it."""

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import jobs.stages.cleanse as cleanse_stage
from jobs.runtime.tables import read_table
from jobs.stages.cleanse import cleanse
from jobs.stages.features import rebuild_daily_state
from jobs.stages.ingest import ingest
from jobs.tools.demo import generate

END = datetime(2026, 11, 20, tzinfo=UTC)
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:131.0) Gecko/20100101 Firefox/131.0"
PROVENANCE = {"_source_file", "_ingested_at", "_batch_id"}


def _line(event_id, ts, **fields):
    body = {"event_id": event_id, "event_type": "product_view", "timestamp": ts.isoformat().replace("+00:00", "Z"),
            "user_agent": BROWSER, "properties": {"price": 10}, **fields}
    return json.dumps(body)


def _chunks(tmp_path):
    generate(tmp_path / "demo", customers=20, days=2, events_per_day=150, seed=21, end=END)
    demo = [line for path in sorted((tmp_path / "demo" / "events").glob("*.json"))
            for line in path.read_text().splitlines()]
    noon = END - timedelta(hours=12)
    burst = [_line(f"b{i}", noon + timedelta(milliseconds=500 * i), anonymous_id="a-burst", session_id="s-burst",
                   product_id=f"P{i}", url=f"/p/{i}") for i in range(70)]  # 70 events in 35 s: a bot
    original = _line("d1", noon, customer_id="C000001", product_id="P7", url="/p/P7", session_id="s-d")
    copy = _line("d2", noon + timedelta(milliseconds=600), customer_id="C000001", product_id="P7", url="/p/P7",
                 session_id="s-d")
    before_login = _line("l1", noon - timedelta(hours=3), anonymous_id="a-login", session_id="s-l", product_id="P8")
    login = _line("l2", noon - timedelta(hours=2), anonymous_id="a-login", customer_id="C000002", session_id="s-l",
                  product_id="P9")
    # events landed again in a later file: duplicates of what an earlier run judged
    repeated = [_line(f"r{i}", noon - timedelta(hours=5, minutes=i), anonymous_id="a-r", session_id="s-r",
                      product_id=f"P{i}") for i in (1, 2)]
    part = len(demo) // 5
    d = [demo[i * part:(i + 1) * part] for i in range(4)] + [demo[4 * part:]]
    return [d[0] + burst[:35] + repeated, burst[35:] + d[1] + [original, repeated[0]],
            [copy] + d[2] + [before_login, repeated[1]], d[3], d[4] + [login]]


def _land(settings, name, lines):
    folder = Path(settings.landing.root) / "events"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join(lines) + "\n")


def _rows(spark, settings, key):
    frame = read_table(spark, settings.lakehouse.root, key)
    columns = [c for c in frame.columns if c not in PROVENANCE]
    return sorted(map(tuple, frame.select(*columns).collect()), key=repr)


def _in_five_runs(spark, settings, chunks, monkeypatch):
    """Each chunk landed and cleansed in its own run; how many earlier rows later runs revised.

    Batches this small list their keys as filters of the scans of earlier rows; larger ones join
    them. The even runs take the joined lookups, so each way judges a batch against earlier rows:
    the bot burst and a repeated event (run 2: joined), the double-load and another repeated
    event (run 3: listed) are caught only through them."""
    revised = {"retracted": 0, "stitched": 0}
    listed = cleanse_stage.LISTED_BATCH_ROWS
    for n, chunk in enumerate(chunks, start=1):
        _land(settings, f"part-{n}.json", chunk)
        ingest(spark, settings, "events")
        monkeypatch.setattr(cleanse_stage, "LISTED_BATCH_ROWS", 0 if n % 2 == 0 else listed)
        result = cleanse(spark, settings, customers=False)
        for name in revised:
            revised[name] += result.metrics[f"events.{name}"]
    return revised


@pytest.mark.slow
def test_one_file_or_five_runs_give_the_same_tables(spark, make_settings, tmp_path, monkeypatch):
    chunks = _chunks(tmp_path)
    whole = make_settings(f"lakehouse.root={tmp_path / 'whole'}", f"landing.root={tmp_path / 'land-whole'}")
    split = make_settings(f"lakehouse.root={tmp_path / 'split'}", f"landing.root={tmp_path / 'land-split'}")

    _land(whole, "all.json", [line for chunk in chunks for line in chunk])
    ingest(spark, whole, "events")
    cleanse(spark, whole, customers=False)
    revised = _in_five_runs(spark, split, chunks, monkeypatch)

    assert revised["retracted"] > 0 and revised["stitched"] > 0  # later runs did revise earlier ones
    for key in ("silver.events", "silver.rejected_events", "silver.identity_map", "gold.customer_daily"):
        expected = _rows(spark, whole, key)
        assert _rows(spark, split, key) == expected, key
    rejected = {r["event_id"]: r["reasons"] for r in read_table(spark, split.lakehouse.root,
                                                                "silver.rejected_events").collect()}
    assert {rejected[f"b{i}"][0] for i in range(70)} == {"bot_rate"} and rejected["d2"] == ["double_load"]
    assert "r1" not in rejected and "r2" not in rejected  # exact duplicates: collapsed into the first

    rebuilt = make_settings(f"lakehouse.root={tmp_path / 'rebuilt'}")
    shutil.copytree(split.lakehouse.root, rebuilt.lakehouse.root)
    rebuild_daily_state(spark, rebuilt)  # the state kept batch by batch is the state of silver as it is
    assert _rows(spark, rebuilt, "gold.customer_daily") == _rows(spark, split, "gold.customer_daily")
