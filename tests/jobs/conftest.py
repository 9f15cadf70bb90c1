"""Shared fixtures of the job tests: a small gold lakehouse with segment membership."""

from datetime import UTC, date, datetime, timedelta

import pytest

from jobs.runtime.tables import CUSTOMERS_SCHEMA, SILVER_EVENTS_SCHEMA, table_path
from jobs.stages.features import rebuild_daily_state
from jobs.stages.segment import run_segments

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _append(spark, settings, key, rows, schema, mode="append"):
    names = schema.fieldNames()
    spark.createDataFrame([{**dict.fromkeys(names), **r} for r in rows], schema).write.format("delta").mode(
        mode).save(table_path(settings.lakehouse.root, key))


def _customer(cid, consent=True):
    return {"customer_id": cid, "email": f"{cid.lower()}@example.com", "first_name": cid, "email_consent": consent,
            "birth_date": date(1990, 1, 1), "city": "Boston", "updated_at": datetime(2026, 1, 1)}


def _cart(i, cid, ts):
    return {"event_id": f"e{i}", "customer_id": cid, "event_type": "cart_abandonment", "event_ts": ts,
            "event_date": ts.date(), "session_id": f"s{i}"}


def change_rows(ids, action="add"):
    """Sync change rows as the sync engine hands them to a destination."""
    return [{"action": action, "customer_id": c, "attr_hash": "h", "email": f"{c.lower()}@example.com",
             "first_name": c, "last_viewed_product": "p1", "last_viewed_category": "shoes",
             "abandoned_products": ["p1"], "rfm_segment": "champions"} for c in ids]


def deliveries_per_customer(spark, settings):
    """customer_id -> acknowledged ledger rows."""
    from jobs.runtime.tables import read_table

    ledger = read_table(spark, settings.lakehouse.root, "ops.sync_ledger").groupBy("customer_id").count()
    return {r["customer_id"]: r["count"] for r in ledger.collect()}


@pytest.fixture
def lakehouse(spark, make_settings, tmp_path):
    settings = make_settings(f"destinations.file.path={tmp_path / 'exports'}")
    naive = T0.replace(tzinfo=None)
    _append(spark, settings, "silver.events",
            [_cart(i, f"C{i}", naive - timedelta(hours=i)) for i in range(1, 7)], SILVER_EVENTS_SCHEMA)
    _append(spark, settings, "silver.customers",
            [_customer(f"C{i}", consent=i != 6) for i in range(1, 7)], CUSTOMERS_SCHEMA)
    rebuild_daily_state(spark, settings)
    run_segments(spark, settings, T0)
    return settings


