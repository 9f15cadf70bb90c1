"""The incremental gold path equals the full recompute: daily state built batch by batch (in a
random order, as cleanse runs would touch it) plus the boundary days' events gives exactly the
features that reading every event gives, at times chosen on the window edges."""

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from transforms.gold_features import customer_features, window_start
from transforms.gold_state import (
    CUSTOMER_DAILY_SCHEMA,
    STATE_EVENT_COLUMNS,
    boundary_dates,
    daily_aggregates,
    features_from_state,
)
from transforms.silver_customers import CUSTOMERS_SCHEMA
from transforms.silver_events import SILVER_EVENTS_SCHEMA

AS_OF = datetime(2026, 11, 20, 12, 0, 0)
WINDOW = timedelta(hours=1)
TYPES = ["page_view", "product_view", "product_view", "add_to_cart", "purchase", "cart_abandonment",
         "remove_from_cart"]
CATEGORIES = ["electronics.smartphone", "apparel.shoes", "kids.toys", None]


def _event(i, customer, kind, ts, rng):
    product = rng.choice(["P1", "P2", "P3", None]) if kind != "page_view" else None
    category = rng.choice(CATEGORIES) if product else None
    row = dict.fromkeys(SILVER_EVENTS_SCHEMA.fieldNames())
    row.update(event_id=f"e{i:04d}", customer_id=customer, event_type=kind, event_ts=ts, event_date=ts.date(),
               session_id=rng.choice([f"s{i // 3}", f"s{i // 5}", None]), product_id=product, category=category,
               top_category=category.split(".")[0] if category else None,
               price=Decimal(rng.choice(["9.99", "120.00", "5.50"])) if product else None,
               quantity=rng.choice([None, 1, 2]), order_id=rng.choice([None, f"O{i // 2}", "O-shared"]))
    return row


def _events(seed):
    """Random events over 100 days for five customers, plus some exactly on the window edges."""
    rng = random.Random(seed)
    rows = []
    for i in range(260):
        ts = AS_OF - timedelta(seconds=rng.randint(-3 * 86400, 100 * 86400))
        rows.append(_event(i, rng.choice(["C1", "C2", "C3", "C4", "C5"]), rng.choice(TYPES), ts, rng))
    edges = [AS_OF - timedelta(days=7), AS_OF - timedelta(days=30), AS_OF - timedelta(days=90), AS_OF,
             AS_OF - WINDOW, AS_OF - timedelta(days=7, microseconds=1), AS_OF - timedelta(microseconds=1)]
    for j, ts in enumerate(edges):
        for kind in ("product_view", "add_to_cart", "purchase"):
            rows.append(_event(1000 + 10 * j + len(kind), f"C{1 + j % 5}", kind, ts, rng))
    return rows


def _incremental_state(spark, rows, seed, batches=4):
    """As the cleanse job keeps it: per batch, the days it touched are recomputed from what landed."""
    rng = random.Random(seed)
    order = rows[:]
    rng.shuffle(order)
    state, landed = {}, []
    for k in range(batches):
        batch = order[k::batches]
        landed += batch
        touched = {(r["customer_id"], r["event_date"]) for r in batch}
        so_far = spark.createDataFrame(landed, SILVER_EVENTS_SCHEMA).select(*STATE_EVENT_COLUMNS)
        for row in so_far.transform(daily_aggregates()).collect():
            if (row["customer_id"], row["event_date"]) in touched:
                state[(row["customer_id"], row["event_date"])] = row
    return spark.createDataFrame(list(state.values()), CUSTOMER_DAILY_SCHEMA)


@pytest.fixture(scope="module")
def world(spark):
    rows = _events(seed=7)
    events = spark.createDataFrame(rows, SILVER_EVENTS_SCHEMA).localCheckpoint()
    profile = dict.fromkeys(CUSTOMERS_SCHEMA.fieldNames())
    customers = spark.createDataFrame(
        [profile | {"customer_id": c, "email": f"{c.lower()}@x.com", "birth_date": date(1990, 5, 5), "email_consent": True}
         for c in ("C1", "C2", "C9")], CUSTOMERS_SCHEMA)
    return events, _incremental_state(spark, rows, seed=11).localCheckpoint(), customers


@pytest.mark.parametrize("as_of", [
    AS_OF,  # events exactly at the 7/30/90-day edges and at as_of itself
    AS_OF + WINDOW,  # the cart added exactly one window before settles
    datetime(2026, 10, 1, 0, 0, 0),  # a backfill at midnight: the boundary days are whole days
])
def test_features_from_daily_state_equal_the_full_recompute(spark, world, as_of):
    events, state, customers = world
    aware = as_of.replace(tzinfo=UTC)
    recent = events.where(F.col("event_date") >= window_start(aware).date())
    expected = events.transform(customer_features(aware, WINDOW, recent, customers))
    edges = events.where(F.col("event_date").isin(boundary_dates(aware)))
    actual = features_from_state(aware, WINDOW, state, edges, customers)
    assert expected.count() > 3
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_day_s_carts_before_its_last_purchase_are_not_kept(spark):
    day = datetime(2026, 11, 10)
    rng = random.Random(1)
    rows = [_event(1, "C1", "add_to_cart", day + timedelta(hours=1), rng),
            _event(2, "C1", "purchase", day + timedelta(hours=2), rng),
            _event(3, "C1", "add_to_cart", day + timedelta(hours=3), rng)]
    [state] = spark.createDataFrame(rows, SILVER_EVENTS_SCHEMA).transform(daily_aggregates()).collect()
    assert [c["event_id"] for c in state["carts"]] == ["e0003"]
    assert state["events"] == 3 and state["last_purchase_at"] == day + timedelta(hours=2)
