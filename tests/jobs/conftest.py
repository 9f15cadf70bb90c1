"""Shared fixtures of the job tests: a small gold lakehouse with segment membership."""

import shutil
from datetime import UTC, date, datetime, timedelta

import pytest

from jobs.runtime.settings import load_settings
from jobs.runtime.tables import CUSTOMERS_SCHEMA, SILVER_EVENTS_SCHEMA, table_path
from jobs.stages.features import rebuild_daily_state
from jobs.stages.segment import run_segments

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _customer(cid, consent=True):
    return {"customer_id": cid, "email": f"{cid.lower()}@example.com", "first_name": cid, "email_consent": consent,
            "birth_date": date(1990, 1, 1), "city": "Boston", "updated_at": datetime(2026, 1, 1)}


def _cart(i, cid, ts):
    return {"event_id": f"e{i}", "customer_id": cid, "event_type": "cart_abandonment", "event_ts": ts,
            "event_date": ts.date(), "session_id": f"s{i}"}


def _change_rows(ids, action="add"):
    return [{"action": action, "customer_id": c, "attr_hash": "h", "email": f"{c.lower()}@example.com",
             "first_name": c, "last_viewed_product": "p1", "last_viewed_category": "shoes",
             "abandoned_products": ["p1"], "rfm_segment": "champions",
             "recommended_products": [{"id": "P2", "name": "Kite", "url": "https://shop.example/p/P2",
                                       "image_url": None, "price": 19.9}],
             "cart_items": [{"id": "P1", "name": "P1", "url": None, "image_url": None, "price": None}]} for c in ids]


@pytest.fixture
def change_rows():
    """``change_rows(ids, action="add")``: sync change rows as the sync engine hands them to a destination."""
    return _change_rows


@pytest.fixture
def deliveries_per_customer(spark):
    """``deliveries_per_customer(settings)``: customer_id -> acknowledged ledger rows."""
    from pyspark.sql import functions as F

    from jobs.runtime.tables import read_table

    def count(settings):
        ledger = read_table(spark, settings.lakehouse.root, "ops.sync_ledger").where(F.col("status") == "acknowledged")
        return {r["customer_id"]: r["count"] for r in ledger.groupBy("customer_id").count().collect()}

    return count


@pytest.fixture(scope="session")
def write_rows(spark):
    """``write_rows(settings, key, rows, schema, mode="append")``: rows as dicts (missing columns null)."""

    def write(settings, key, rows, schema, mode="append"):
        names = schema.fieldNames()
        spark.createDataFrame([{**dict.fromkeys(names), **r} for r in rows], schema).write.format("delta").mode(
            mode).save(table_path(settings.lakehouse.root, key))

    return write


@pytest.fixture(scope="session")
def template_settings(tmp_path_factory):
    """``template_settings(name)``: settings of a new lakehouse to build once and copy for each test."""

    def make(name):
        base = tmp_path_factory.mktemp(name)
        return load_settings("local", overrides=[f"lakehouse.root={base / 'lakehouse'}", "spark.profile=test"])

    return make


@pytest.fixture
def customer_row():
    """``customer_row(cid, consent=True)``: a silver.customers row of a Boston customer."""
    return _customer


@pytest.fixture
def cart_event():
    """``cart_event(i, cid, ts)``: a silver cart_abandonment event."""
    return _cart


@pytest.fixture(scope="session")
def _carts_lakehouse(spark, template_settings, write_rows):
    """Six customers who abandoned a cart 1-6 hours before T0 (C6 without consent), with gold
    features and segment membership as of T0; built once, copied for each test."""
    settings = template_settings("carts")
    naive = T0.replace(tzinfo=None)
    write_rows(settings, "silver.events",
               [_cart(i, f"C{i}", naive - timedelta(hours=i)) for i in range(1, 7)], SILVER_EVENTS_SCHEMA)
    write_rows(settings, "silver.customers",
               [_customer(f"C{i}", consent=i != 6) for i in range(1, 7)], CUSTOMERS_SCHEMA)
    rebuild_daily_state(spark, settings)
    run_segments(spark, settings, T0)
    return settings.lakehouse.root


@pytest.fixture
def lakehouse(_carts_lakehouse, make_settings, tmp_path):
    settings = make_settings(f"destinations.file.path={tmp_path / 'exports'}")
    shutil.copytree(_carts_lakehouse, settings.lakehouse.root)
    return settings




KLAVIYO_LIST = "Xy12Ab"
KLAVIYO_SEGMENT = "abandoned_cart_24h"


@pytest.fixture
def klaviyo_settings():
    """``klaviyo_settings(url, timeout_seconds=1, **update)``: the klaviyo destination's settings
    for a fake server at ``url``, key in $TEST_KLAVIYO_KEY, the abandoned-cart segment on list KLAVIYO_LIST."""
    from jobs.runtime.settings import KlaviyoDestination, RetrySettings

    def make(url, timeout_seconds=1.0, **update):
        return KlaviyoDestination(base_url=url, api_key_env="TEST_KLAVIYO_KEY", lists={KLAVIYO_SEGMENT: KLAVIYO_LIST},
                                  retry=RetrySettings(timeout_seconds=timeout_seconds, max_attempts=8,
                                                      backoff_seconds=0.01),
                                  poll_seconds=0.01, **update)

    return make
