"""An independent Delta implementation (delta-rs, the `deltalake` package) reads what Spark wrote:
every table as it is now, a past version, and the change feed where it is on."""

from __future__ import annotations

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from jobs.runtime.tables import REGISTRY, current_version, table_path


def _batches(reader) -> int:
    return sum(batch.num_rows for batch in reader)


def test_delta_rs_reads_every_table_a_past_version_and_the_change_feed(demo_lakehouse, spark):
    root = demo_lakehouse.root
    read = 0
    for key, spec in REGISTRY.items():
        path = table_path(root, key)
        if current_version(spark, path) < 0:
            continue
        table = DeltaTable(path)
        assert table.version() == current_version(spark, path), key
        ours = spark.read.format("delta").load(path)
        theirs = table.to_pyarrow_table()
        assert theirs.num_rows == ours.count(), key
        assert set(theirs.column_names) == set(spec.schema.fieldNames()), key
        read += 1
        if spec.properties.get("delta.enableChangeDataFeed") == "true":
            feed = spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", 0).load(path)
            assert _batches(table.load_cdf(starting_version=0)) == feed.count(), key
    assert read >= 15

    # A past version: the membership of the first segment run (the fixture ran two).
    path = table_path(root, "gold.segment_membership")
    first = next(v for v in range(current_version(spark, path) + 1)
                 if spark.read.format("delta").option("versionAsOf", v).load(path).count())
    past = spark.read.format("delta").option("versionAsOf", first).load(path)
    theirs = DeltaTable(path, version=first).to_pyarrow_table()
    assert sorted(zip(theirs["segment_id"].to_pylist(), theirs["customer_id"].to_pylist(), strict=True)) == sorted(
        (r["segment_id"], r["customer_id"]) for r in past.select("segment_id", "customer_id").collect())
    events = DeltaTable(table_path(root, "silver.events")).to_pyarrow_table(columns=["event_ts", "price"])
    assert pa.types.is_timestamp(events.schema.field("event_ts").type)
    assert pa.types.is_decimal(events.schema.field("price").type)


def test_catalog_register_makes_every_table_queryable_by_name_and_is_idempotent(demo_lakehouse, spark, tmp_path):
    from jobs.runtime.errors import InputError
    from jobs.tools.catalog import register

    root = str(demo_lakehouse.copy(tmp_path / "copy").base / "lakehouse")  # it remembers its catalog
    first = register(spark, root)
    assert register(spark, root) == first  # idempotent
    assert {key for key, _ in first} >= {"bronze.events", "silver.events", "silver.products", "gold.customer_features",
                                         "gold.segment_membership", "ops.job_runs"}
    assert spark.sql("SELECT count(*) AS n FROM silver.events").first()["n"] == (
        spark.read.format("delta").load(table_path(root, "silver.events")).count())
    assert spark.table("gold.segment_membership").count() == (
        spark.read.format("delta").load(table_path(root, "gold.segment_membership")).count())
    elsewhere = tmp_path / "other"
    spark.range(1).write.format("delta").save(str(elsewhere / "silver" / "events"))
    with pytest.raises(InputError, match=r"silver.events is registered at .*, not .*other/silver/events"):
        register(spark, str(elsewhere))


def test_a_command_that_creates_a_table_registers_it_where_the_lakehouse_is_registered(spark, make_settings, tmp_path):
    from jobs.stages.ingest import ingest
    from jobs.tools.catalog import register

    settings = make_settings(f"lakehouse.root={tmp_path / 'lakehouse'}", f"landing.root={tmp_path / 'landing'}")
    crm = tmp_path / "landing" / "crm"
    crm.mkdir(parents=True)
    (crm / "crm.csv").write_text("customer_id,email,email_consent,updated_at\nC1,c1@example.com,yes,2026-01-01\n")
    created = ("bronze.crm", "ops.job_runs")
    for name in created:  # the session's catalog may hold another test's
        spark.sql(f"DROP TABLE IF EXISTS {name}")
    try:
        assert register(spark, settings.lakehouse.root) == []  # no table yet: the schemas, and a remembered catalog
        ingest(spark, settings, "crm")
        assert spark.table("bronze.crm").count() == 1  # registered by the ingest that created it
        assert spark.table("ops.job_runs").where("job = 'ingest'").count() == 1  # created by it too
    finally:
        for name in created:  # external tables: dropping the name leaves the data
            spark.sql(f"DROP TABLE IF EXISTS {name}")
