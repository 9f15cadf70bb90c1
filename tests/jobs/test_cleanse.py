import json
import os
import shutil
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pyspark.sql import functions as F

from jobs.runtime.tables import read_table, text_in
from jobs.stages.cleanse import DataQualityFailure, cleanse
from jobs.stages.ingest import ingest
from tests.conftest import REPO, TEST_DATA

END = datetime(2026, 11, 20, tzinfo=UTC)


def _land(settings, folder, name, lines):
    path = os.path.join(settings.landing.root, folder)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, name), "w") as handle:
        handle.write("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")


def _table(spark, settings, key):
    return read_table(spark, settings.lakehouse.root, key)


def _rows(spark, settings, key, order):
    return [tuple(r) for r in _table(spark, settings, key).orderBy(*order).collect()]


def _last_run(spark, settings, job="cleanse"):
    return _table(spark, settings, "ops.job_runs").where(F.col("job") == job).orderBy(F.desc("ended_at")).first()


def _tally(result, table="silver.events"):
    return dict(result.details["pipelines"])[table]


@pytest.mark.slow  # the session's demo lakehouse
def test_every_injected_kind_of_dirt_ends_where_the_manifest_says(spark, demo_lakehouse, tmp_path):
    events = demo_lakehouse.manifest["events"]
    kinds = ("exact_duplicates", "double_loads", "bot_user_agent_events", "bot_rate_events", "malformed_lines",
             "unknown_types", "future_events", "invalid_timestamps", "missing_identity", "negative_prices")
    assert all(events[kind] > 0 for kind in kinds), events
    settings = demo_lakehouse.settings()

    run = _last_run(spark, settings)
    metrics = {k.removeprefix("events."): v for k, v in run["metrics"].items() if k.startswith("events.")}
    assert run["status"] == "succeeded"
    assert metrics["bronze_rows"] == events["lines"]
    assert metrics["silver_rows"] == events["valid"]
    assert metrics["exact_duplicates"] == events["exact_duplicates"]
    assert metrics["reason.double_load"] == events["double_loads"]
    assert metrics["reason.bot_user_agent"] == events["bot_user_agent_events"]
    assert metrics["reason.bot_rate"] == events["bot_rate_events"]
    assert metrics["reason.corrupt_record"] == events["malformed_lines"]
    assert metrics["reason.unknown_event_type"] == events["unknown_types"]
    assert metrics["reason.future_timestamp"] == events["future_events"]
    assert metrics["reason.invalid_timestamp"] == events["invalid_timestamps"]
    assert metrics["reason.missing_identity"] == events["missing_identity"]
    assert metrics["reason.negative_price"] == events["negative_prices"]
    rejected = events["lines"] - events["valid"] - events["exact_duplicates"]
    assert metrics["rejected_rows"] == rejected
    crm = demo_lakehouse.manifest["crm"]
    catalog = demo_lakehouse.manifest["catalog"]
    assert run["rows_in"] == events["lines"] + crm["rows"] + catalog["rows"]
    assert run["rows_rejected"] == rejected + catalog["rejected"]
    assert (run["metrics"]["products.bronze_rows"], run["metrics"]["products.rejected_rows"]) == (
        catalog["rows"], catalog["rejected"])
    assert [run["metrics"][f"products.reason.{r}"] for r in ("missing_product_id", "invalid_price",
                                                             "invalid_in_stock")] == [1, 1, 1]
    products = _table(spark, settings, "silver.products")
    assert products.count() == catalog["products"]  # every product events mention is in the feed
    assert products.where(F.col("source") != "catalog").count() == 0
    assert products.where(~F.col("in_stock")).count() == catalog["out_of_stock"]
    assert products.where(F.col("price") == 1).count() == 0  # the stale update did not win
    assert _table(spark, settings, "silver.rejected_products").count() == catalog["rejected"]
    assert run["metrics"]["customers.bronze_rows"] == crm["rows"] == run["metrics"]["customers.silver_rows"]
    assert _table(spark, settings, "silver.events").count() == events["valid"]
    assert _table(spark, settings, "silver.rejected_events").count() == rejected
    assert _table(spark, settings, "silver.customers").count() == crm["customers"]

    silver = _table(spark, settings, "silver.events")
    assert silver.where(~F.col("event_type").isin(
        "page_view", "product_view", "product_click", "add_to_cart", "remove_from_cart",
        "cart_abandonment", "checkout_started", "purchase")).count() == 0
    assert silver.where(F.col("product_id") != F.upper(F.trim("product_id"))).count() == 0
    # Pre-login events were stitched to the customer who later logged in on the same device.
    assert silver.where(F.col("customer_id").isNull() & F.col("anonymous_id").isin(
        [r["anonymous_id"] for r in _table(spark, settings, "silver.identity_map").collect()])).count() == 0

    copy = demo_lakehouse.copy(tmp_path).settings()
    again = cleanse(spark, copy)
    assert (_tally(again).batches, _tally(again, "silver.customers").batches) == (0, 0)
    assert sum(again.commits.values()) == 0 and again.spark_jobs == 0  # nothing new: no job, no commit


def test_dedup_holds_across_batches(spark, settings):
    first = {"event_id": "e1", "customer_id": "C1", "event_type": "page_view",
             "timestamp": "2026-11-19T10:00:00Z", "url": "/", "user_agent": "Mozilla/5.0"}
    no_id = {"customer_id": "C1", "event_type": "product_view", "timestamp": "2026-11-19T10:05:00Z",
             "product_id": "P1", "url": "/p/P1", "user_agent": "Mozilla/5.0"}
    _land(settings, "events", "a.json", [first, no_id])
    ingest(spark, settings, "events")
    cleanse(spark, settings, customers=False)

    _land(settings, "events", "b.json", [first, no_id, first | {"url": "/changed"}])
    ingest(spark, settings, "events")
    result = _tally(cleanse(spark, settings, customers=False))

    assert (result.bronze_rows, result.silver_rows, result.duplicates, result.reasons) == (
        3, 0, 2, {"duplicate_conflict": 1})
    assert _table(spark, settings, "silver.events").count() == 2


def _turned_away_once():
    """A pixel double-load pair and a crawler's page view: the second view and the crawler are rejected."""
    view = {"event_id": "v1", "customer_id": "C1", "event_type": "product_view", "timestamp": "2026-11-19T10:00:00Z",
            "product_id": "P1", "url": "/p/P1", "user_agent": "Mozilla/5.0"}
    return [view, view | {"event_id": "v2", "timestamp": "2026-11-19T10:00:01Z"},
            view | {"event_id": "v3", "user_agent": "Googlebot/2.1", "url": "/"}]


def test_a_batch_s_listed_keys_match_ids_with_quotes_backslashes_and_placeholders_exactly(spark):
    # A small batch's ids filter the earlier rows as SQL text: what a device sends must match itself only.
    listed = ["it's", "back\\slash", "${spark.app.name}", "\\u0041", "line\nbreak", "ünï"]
    others = ["its", "back\\\\slash", "A", "u0041", "test", "line break"]
    frame = spark.createDataFrame([(v,) for v in listed + others], "id string")
    found = sorted(r["id"] for r in frame.where(F.expr(text_in("id", listed))).collect())
    assert found == sorted(listed)
    assert frame.where(F.expr(text_in("id", []))).isEmpty()


def test_a_redelivered_file_cannot_let_through_what_was_turned_away(spark, settings):
    _land(settings, "events", "a.json", _turned_away_once())
    ingest(spark, settings, "events")
    first = _tally(cleanse(spark, settings, customers=False))
    assert first.reasons == {"double_load": 1, "bot_user_agent": 1}

    _land(settings, "events", "a-again.json", _turned_away_once())  # the same events, a new file name
    ingest(spark, settings, "events")
    again = _tally(cleanse(spark, settings, customers=False))

    assert (again.bronze_rows, again.silver_rows, again.duplicates, again.reasons) == (3, 0, 3, {})
    assert [r[0] for r in _rows(spark, settings, "silver.events", ["event_id"])] == ["v1"]
    assert _table(spark, settings, "silver.rejected_events").count() == 2


def test_a_rejected_table_from_an_earlier_release_is_upgraded_and_still_dedups(spark, settings):
    from jobs.runtime import tables

    _land(settings, "events", "a.json", _turned_away_once())
    ingest(spark, settings, "events")
    cleanse(spark, settings, customers=False)
    path = tables.table_path(settings.lakehouse.root, "silver.rejected_events")
    spark.sql(f"ALTER TABLE delta.`{path}` UNSET TBLPROPERTIES ('delta.dataSkippingStatsColumns', "
              "'lakehouse.schemaVersion')")
    old = _table(spark, settings, "silver.rejected_events").drop("_content_hash").localCheckpoint()
    old.write.format("delta").mode("overwrite").option("overwriteSchema", "true").partitionBy("event_date").save(path)
    tables.forget_ensured(path)  # as in a new process of the new release

    _land(settings, "events", "a-again.json", _turned_away_once())
    ingest(spark, settings, "events")
    again = _tally(cleanse(spark, settings, customers=False))

    assert (again.silver_rows, again.duplicates, again.reasons) == (0, 3, {})
    rejected = _table(spark, settings, "silver.rejected_events")
    assert "_content_hash" in rejected.columns and rejected.where(F.col("_content_hash").isNull()).count() == 2
    properties = spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first()["properties"]
    assert "url" not in properties["delta.dataSkippingStatsColumns"].split(",")  # and its statistics policy


def test_an_older_crm_record_landing_later_does_not_overwrite_a_newer_one(spark, settings):
    header = "customer_id,email,first_name,last_name,birth_date,city,country,email_consent,updated_at"
    _land(settings, "crm", "a.csv", [header, "C1,Ann@X.com,Ann,Lee,1990-01-02,NYC,US,yes,2026-11-10T00:00:00Z"])
    ingest(spark, settings, "crm")
    cleanse(spark, settings, events=False)
    _land(settings, "crm", "b.csv", [header, "C1,old@x.com,Ann,Lee,1990-01-02,Boston,US,no,2026-11-01 00:00:00"])
    ingest(spark, settings, "crm")
    cleanse(spark, settings, events=False)

    current = _table(spark, settings, "silver.customers").collect()
    assert [(r["email"], r["city"], r["email_consent"]) for r in current] == [("ann@x.com", "New York", True)]
    history = _table(spark, settings, "silver.customers_history").orderBy("valid_from").collect()
    assert [(r["city"], r["is_current"]) for r in history] == [("Boston", False), ("New York", True)]
    assert history[0]["valid_to"] == history[1]["valid_from"] == datetime(2026, 11, 10)


@pytest.mark.slow
def test_a_product_known_from_events_takes_the_feed_s_record_and_keeps_it(spark, settings):
    view = {"customer_id": "C1", "event_type": "product_view", "timestamp": "2026-11-19T10:00:00Z",
            "product_id": "p1", "url": "/p/P1", "properties": {"price": 5, "name": "Kite"}}
    _land(settings, "events", "a.json", [view | {"event_id": "e1"},
                                         view | {"event_id": "e2", "product_id": "P2", "url": "/p/P2"}])
    ingest(spark, settings, "events")
    cleanse(spark, settings)
    header = "product_id,name,url,image_url,price,currency,category,brand,in_stock,updated_at"
    _land(settings, "catalog", "feed.csv", [header, "P1,Kite Pro,/p/P1,/i/P1.jpg,7.00,USD,kids.toys,Acme,no,"
                                                    "2026-11-01T00:00:00Z"])
    ingest(spark, settings, "catalog")
    cleanse(spark, settings)
    _land(settings, "events", "b.json", [view | {"event_id": "e3", "timestamp": "2026-11-19T11:00:00Z",
                                                 "properties": {"price": 3}}])
    ingest(spark, settings, "events")
    cleanse(spark, settings)

    rows = _rows(spark, settings, "silver.products", ["product_id"])
    assert [r[:11] for r in rows] == [
        ("P1", "Kite Pro", "/p/P1", "/i/P1.jpg", Decimal("7.00"), "USD", "kids.toys", "Acme", False,
         datetime(2026, 11, 1), "catalog"),
        ("P2", "Kite", "/p/P2", None, Decimal("5.00"), None, None, None, None, datetime(2026, 11, 19, 10), "events"),
    ]


def test_rees46_goes_through_to_silver(spark, settings):
    os.makedirs(os.path.join(settings.landing.root, "rees46"))
    shutil.copy(TEST_DATA / "rees46" / "2019-Oct-sample.csv", os.path.join(settings.landing.root, "rees46"))
    ingest(spark, settings, "events", "rees46")

    result = _tally(cleanse(spark, settings, customers=False))

    assert result.bronze_rows == 1000
    assert result.bronze_rows == result.silver_rows + result.rejected_rows + result.duplicates
    silver = _table(spark, settings, "silver.events")
    row = silver.where(F.col("session_id") == "9333dfbd-b87a-4708-9857-6336556b0fcc").first()
    assert (row["event_type"], row["event_ts"], row["category"], row["top_category"], row["customer_id"]) == (
        "product_view", datetime(2019, 10, 1), "appliances.environment.water_heater", "appliances", "554748717")
    assert {r["event_type"] for r in silver.select("event_type").distinct().collect()} <= {
        "product_view", "add_to_cart", "remove_from_cart", "purchase"}
    assert silver.where(F.col("event_type") == "add_to_cart").count() > 0
    # No feed: the products come from the events, with the category and brand REES46 carries.
    product = _table(spark, settings, "silver.products").where(F.col("product_id") == "3900821").first()
    assert (product["category"], product["brand"], product["source"]) == (
        "appliances.environment.water_heater", "aqua", "events")


def test_a_new_source_field_lands_in_silver_properties(spark, settings):
    _land(settings, "events", "a.json", [{
        "event_id": "e1", "customer_id": "C1", "event_type": "page_view", "timestamp": "2026-11-19T10:00:00Z",
        "url": "/", "experiment": {"arm": "b"}, "properties": {"ref": "mail"}}])
    ingest(spark, settings, "events")
    cleanse(spark, settings, customers=False)
    row = _table(spark, settings, "silver.events").first()
    assert row["properties"] == {"ref": "mail", "experiment": '{"arm":"b"}'}


def _with_expectation(make_settings, tmp_path, name, expect, action):
    """Settings whose rules are the shipped ones with a single silver.events expectation."""
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    (rules / "quality.yaml").write_text(
        f"silver.events:\n  - name: {name}\n    expect: \"{expect}\"\n    action: {action}\n")
    return make_settings(f"rules_dir={rules}")


def test_a_failing_expectation_aborts_before_anything_is_committed(spark, make_settings, tmp_path):
    settings = _with_expectation(make_settings, tmp_path, "no_purchases", "event_type <> 'purchase'", "fail")
    _land(settings, "events", "a.json", [{
        "event_id": "e1", "customer_id": "C1", "event_type": "purchase", "timestamp": "2026-11-19T10:00:00Z",
        "product_id": "P1", "properties": {"price": 5, "order_id": "O1"}}])
    ingest(spark, settings, "events")

    with pytest.raises(DataQualityFailure, match=r"silver.events: .*no_purchases \(1 rows\); nothing was committed"):
        cleanse(spark, settings, customers=False)

    for key in ("silver.events", "silver.rejected_events", "ops.dq_results"):
        path = os.path.join(settings.lakehouse.root, *key.split("."))
        assert not os.path.exists(path) or _table(spark, settings, key).count() == 0
    assert _last_run(spark, settings)["status"] == "failed"


def test_a_bad_expectation_is_refused_before_any_data_is_read(spark, make_settings, tmp_path):
    settings = _with_expectation(make_settings, tmp_path, "typo", "pricee > 0", "warn")
    with pytest.raises(Exception, match=r"quality\.yaml: silver\.events: typo: .*pricee"):
        cleanse(spark, settings, customers=False)
