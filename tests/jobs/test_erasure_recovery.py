"""An erasure interrupted after its deletes is finished by the next one: no version that time
travel can read holds the customer, and the log shows the first erasure completed."""

import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F

import jobs.tools.privacy as privacy
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


def test_an_erasure_whose_purge_failed_is_finished_by_erasing_again(spark, lakehouse, monkeypatch):
    monkeypatch.setenv("LAKEHOUSE_ERASURE_SALT", "salt-for-the-recovery-test")
    root = lakehouse.lakehouse.root
    path = table_path(root, "silver.events")
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
