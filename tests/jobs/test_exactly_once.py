"""A run killed right after any stage's data commit — before its checkpoint and its run log —
and then run again, leaves the tables of one clean run: every replayed write is skipped by its
Delta transaction id, every recomputed one finds nothing changed."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from jobs.runtime.tables import read_or_empty
from jobs.stages import cleanse, features, ingest, pipeline, recommend, segment, sync
from jobs.stages.pipeline import run_pipeline

AS_OF = datetime(2026, 11, 19, 12, 0, tzinfo=UTC)  # C1 and C3 left carts an hour and more before
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/130.0 Safari/537.36"
HEADER = "customer_id,email,first_name,last_name,birth_date,city,country,email_consent,updated_at"
# Landing metadata and run ids differ between runs by design; the data must not.
PROVENANCE = {"_source_file", "_ingested_at", "_run_id", "_batch_id", "run_id", "delivered_at", "seconds",
              "batch_key", "batch_no", "batch_seq", "seq"}


def _land(base: Path) -> None:
    events, crm = base / "landing" / "events", base / "landing" / "crm"
    events.mkdir(parents=True)
    crm.mkdir(parents=True)
    rows = []
    for i, (customer, kind, minute) in enumerate([
        ("C1", "product_view", 10), ("C1", "add_to_cart", 11), ("C2", "product_view", 12), ("C2", "purchase", 13),
        ("C3", "page_view", 14), ("C3", "add_to_cart", 15), (None, "product_view", 16), ("C1", "teleport", 17),
    ]):
        rows.append({"event_id": f"e{i}", "customer_id": customer, "anonymous_id": f"a-{customer or 'x'}",
                     "event_type": kind, "timestamp": f"2026-11-19T10:{minute:02d}:00Z", "product_id": "P1",
                     "url": "/p/P1", "user_agent": BROWSER, "properties": {"price": 25, "order_id": "O1"}})
    (events / "day.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    (crm / "export.csv").write_text(HEADER + "\n" + "\n".join(
        f"C{i},c{i}@example.com,Name{i},Last,1990-01-0{i},NYC,US,yes,2026-11-01T00:00:00Z" for i in (1, 2, 3)) + "\n")


def _snapshot(spark, root):
    keys = ("bronze.events", "bronze.crm", "silver.events", "silver.rejected_events", "silver.identity_map",
            "silver.customers", "silver.customers_history", "gold.customer_daily", "gold.customer_features",
            "gold.segment_membership", "ops.sync_state", "silver.products", "gold.product_recommendations")
    tables = {}
    for key in keys:
        frame = read_or_empty(spark, root, key)
        columns = [c for c in frame.columns if c not in PROVENANCE]
        tables[key] = sorted(map(tuple, frame.select(*columns).collect()), key=repr)
    ledger = read_or_empty(spark, root, "ops.sync_ledger").groupBy("segment_id", "customer_id", "action", "status")
    tables["ops.sync_ledger"] = sorted(tuple(r) for r in ledger.count().collect())
    return tables


KILLS = [  # (module, write function, the table whose commit is the last of its stage)
    (ingest, "append", "bronze.events"),
    (ingest, "append", "bronze.crm"),
    (cleanse, "append", "gold.customer_daily"),
    (cleanse, "append", "silver.customers_history"),
    (cleanse, "append", "silver.products"),
    (features, "overwrite", "gold.customer_features"),
    (segment, "overwrite", "gold.segment_membership"),
    (recommend, "overwrite", "gold.product_recommendations"),
    (sync, "append_rows", "ops.sync_ledger"),
]


@pytest.mark.slow
def test_a_kill_after_any_stage_s_data_commit_and_a_rerun_give_the_tables_of_one_clean_run(
        spark, make_settings, tmp_path, monkeypatch):
    for name in ("clean", "crashed"):
        _land(tmp_path / name)
    clean = make_settings(f"lakehouse.root={tmp_path / 'clean' / 'lakehouse'}",
                          f"landing.root={tmp_path / 'clean' / 'landing'}",
                          f"destinations.file.path={tmp_path / 'clean' / 'exports'}")
    crashed = make_settings(f"lakehouse.root={tmp_path / 'crashed' / 'lakehouse'}",
                            f"landing.root={tmp_path / 'crashed' / 'landing'}",
                            f"destinations.file.path={tmp_path / 'crashed' / 'exports'}")
    run_pipeline(spark, clean, AS_OF, ("file",))

    for module, function, table in KILLS:
        real = getattr(module, function)

        def commit_then_die(*args, real=real, table=table, **kwargs):
            written = real(*args, **kwargs)
            if table in args:
                raise KeyboardInterrupt(f"killed after the commit to {table}")
            return written

        monkeypatch.setattr(module, function, commit_then_die)
        with pytest.raises(KeyboardInterrupt, match=table):
            run_pipeline(spark, crashed, AS_OF, ("file",))
        monkeypatch.undo()
    finished = run_pipeline(spark, crashed, AS_OF, ("file",))

    assert [s.status for s in finished] == ["succeeded"] * 7
    assert _snapshot(spark, crashed.lakehouse.root) == _snapshot(spark, clean.lakehouse.root)
    runs = read_or_empty(spark, crashed.lakehouse.root, "ops.job_runs").where(F.col("job") == "run")
    assert sorted(r["status"] for r in runs.collect()) == ["failed"] * len(KILLS) + ["succeeded"]


def test_the_pipeline_module_names_every_stage():
    assert [name for name, _ in pipeline.STAGES] == [
        "ingest", "cleanse", "audit", "features", "segment", "recommend"]
