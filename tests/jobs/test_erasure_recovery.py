"""Erasure edge cases: one interrupted after its deletes is finished by the next one; ids are
compared as every stage normalizes them; raw text is matched by whole tokens."""

import json
from contextlib import contextmanager
from datetime import datetime

import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F

import jobs.tools.privacy as privacy
from jobs.runtime.spark import java_class
from jobs.runtime.tables import read_table, table_path


def _readable_versions_holding(spark, path, customer):
    """Versions of the table whose rows time travel can still read and that hold ``customer``."""
    holding = []
    for row in DeltaTable.forPath(spark, path).history().select("version").collect():
        try:
            frame = spark.read.format("delta").option("versionAsOf", row["version"]).load(path)
            if frame.where(F.col("customer_id") == customer).count():
                holding.append(row["version"])
        except Exception:  # noqa: BLE001 - its files are gone: nothing readable there
            pass
    return holding


def test_an_erasure_whose_purge_failed_is_finished_by_erasing_again(spark, settings, monkeypatch):
    from jobs.runtime.tables import SILVER_EVENTS_SCHEMA, append

    monkeypatch.setenv("LAKEHOUSE_ERASURE_SALT", "salt-for-the-recovery-test")
    lakehouse, root = settings, settings.lakehouse.root
    path = table_path(root, "silver.events")
    names = SILVER_EVENTS_SCHEMA.fieldNames()
    for version, customer in enumerate(["C1", "C2", "C1"]):  # the customer in several versions
        row = {**dict.fromkeys(names), "event_id": f"e{version}", "customer_id": customer, "event_type": "page_view",
               "event_ts": datetime(2026, 11, 20, 10, version), "event_date": datetime(2026, 11, 20).date()}
        append(spark.createDataFrame([row], SILVER_EVENTS_SCHEMA), root, "silver.events")
    assert _readable_versions_holding(spark, path, "C1")

    real_purge = privacy._purge
    def failing_purge(*args, **kwargs):
        raise OSError("disk went away mid-purge")
    monkeypatch.setattr(privacy, "_purge", failing_purge)
    with pytest.raises(OSError, match="mid-purge"):
        privacy.erase(spark, lakehouse, ["C1"])
    assert read_table(spark, root, "silver.events").where(F.col("customer_id") == "C1").count() == 0
    assert _readable_versions_holding(spark, path, "C1")  # the old versions are still there

    monkeypatch.setattr(privacy, "_purge", real_purge)
    again = privacy.erase(spark, lakehouse, ["C1"])
    assert "silver.events" not in again.tables  # nothing left to delete in its current version
    assert _readable_versions_holding(spark, path, "C1") == []
    log = read_table(spark, root, "ops.erasure_log")
    assert {r["status"] for r in log.collect()} == {"requested", "completed"}
    assert log.where(F.col("status") == "requested").select("erasure_id").subtract(
        log.where(F.col("status") == "completed").select("erasure_id")).count() == 0


def test_an_id_file_saved_with_a_byte_order_mark_and_crlf_reads_the_bare_ids(tmp_path):
    from jobs.tools.privacy import read_id_file

    path = tmp_path / "ids.txt"
    path.write_bytes("\ufeffC000001\r\n C000002 \r\n\r\n".encode())
    assert read_id_file(path) == ["C000001", "C000002"]


@contextmanager
def event_log(spark, folder):
    """Spark's own event-log writer attached to the running session for the body (the suite's
    shared session cannot switch ``spark.eventLog.enabled`` on); yields the log's text after."""
    context = spark.sparkContext._jsc.sc()
    conf = context.conf().clone().set("spark.eventLog.compress", "false")
    writer = java_class(spark, "org.apache.spark.scheduler.EventLoggingListener")(
        "erasure-test", java_class(spark, "scala.Option").empty(), java_class(spark, "java.net.URI")(folder.as_uri()), conf,
        context.hadoopConfiguration())
    writer.start()
    context.addSparkListener(writer)
    text = []
    try:
        yield text
    finally:
        context.listenerBus().waitUntilEmpty()
        context.removeSparkListener(writer)
        writer.stop()
        text.extend(p.read_text(errors="replace") for p in folder.rglob("events_*"))


def test_ids_are_erased_as_normalized_raw_text_by_whole_tokens_and_pending_rows_cleansed_first(
        spark, make_settings, tmp_path, monkeypatch):
    from jobs.runtime.tables import BRONZE_EVENTS_SCHEMA, append
    from jobs.stages.cleanse import cleanse

    monkeypatch.setenv("LAKEHOUSE_ERASURE_SALT", "salt-for-the-token-test")
    settings = make_settings(f"destinations.file.path={tmp_path / 'exports'}")
    root = settings.lakehouse.root
    names = BRONZE_EVENTS_SCHEMA.fieldNames()
    provenance = {"_source": "web", "_source_file": "file:/landing/a.json",
                  "_ingested_at": datetime(2026, 11, 20), "_run_id": "r1"}
    rows = [{**dict.fromkeys(names), **provenance, **row} for row in (
        {"customer_id": " C1 ", "event_type": "page_view"},  # padded: cleanse makes it C1
        {"customer_id": "C10", "event_type": "page_view"},
        {"_corrupt_record": '{"customer_id": "C1", "event_type": "pag'},
        {"_corrupt_record": '{"customer_id": "C10", "event_type": "pag'},  # C1 is only a prefix here
    )]
    append(spark.createDataFrame(rows, BRONZE_EVENTS_SCHEMA), root, "bronze.events")
    logs = tmp_path / "eventlog"
    logs.mkdir()
    with event_log(spark, logs) as logged:
        result = privacy.erase(spark, settings, ["C1 ", "C9"], platforms=("file",))
        filtered = landed_again(spark).transform(privacy.without_erased(privacy.erased_filter(spark, settings),
                                                                        "events"))
        kept = [r["customer_id"] for r in filtered.collect()]
    assert kept == ["C10"]  # a padded redelivery of the erased id is dropped at ingest too
    assert logged and "SparkListenerSQLExecutionStart" in logged[0]
    assert "salt-for-the-token-test" not in "".join(logged)  # the salt is in no plan Spark logged
    assert result.found == ["C1"]  # C9 is reported as not found, not as erased
    [manifest] = (tmp_path / "exports" / "erasures").glob("*.json")  # export readers are told
    assert json.loads(manifest.read_text())["customer_ids"] == ["C1", "C9"]
    # bronze rows not cleansed yet are cleansed first (rejected here: they carry no time), so no
    # later cleanse reads a file the erasure's VACUUM removed
    assert result.tables == {"bronze.events": 2, "silver.rejected_events": 2}
    left = read_table(spark, root, "bronze.events").collect()
    assert sorted((r["customer_id"] or r["_corrupt_record"]) for r in left) == [
        "C10", '{"customer_id": "C10", "event_type": "pag']
    for _ in range(2):
        assert cleanse(spark, settings).rows_in == 0
    rejected = read_table(spark, root, "silver.rejected_events").collect()
    assert sorted((r["customer_id"] or r["_corrupt_record"]) for r in rejected) == [
        "C10", '{"customer_id": "C10", "event_type": "pag']


def landed_again(spark):
    return spark.createDataFrame([(" C1",), ("C10",)], "customer_id string").withColumn(
        "anonymous_id", F.lit(None).cast("string"))
