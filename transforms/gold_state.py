"""Incremental gold: per-customer daily state, and features as of any time from it.

``gold.customer_daily`` holds one row per customer and day with everything the features need
from that day: counts, first and last times, the sets of sessions and orders, revenue, the
last product view, the categories viewed and the carts left after the day's last purchase.
Days are recomputed from silver when silver changes, so the state is exact whatever order the
events came in.

Features as of ``as_of`` (see :mod:`transforms.gold_features` for their meaning) come from the
state for every whole day inside a window and from the raw events of the *boundary days* — the
day of ``as_of`` and the first day of each window — so every window edge stays exact to the
second: the result equals :func:`transforms.gold_features.customer_features` over all events.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from transforms.gold_features import WINDOW_DAYS, assemble_features
from transforms.schema import DATE, LONG, STR, STRINGS, TS, fields

Transform = Callable[[DataFrame], DataFrame]
REVENUE = T.DecimalType(38, 2)
VIEW = T.StructType(fields(("event_ts", TS), ("event_id", STR), ("product_id", STR), ("category", STR),
                           ("top_category", STR)))
CART = T.StructType(fields(("event_ts", TS), ("event_id", STR), ("product_id", STR), ("event_type", STR)))
CUSTOMER_DAILY_SCHEMA = T.StructType(fields(
    ("customer_id", STR), ("event_date", DATE), ("events", LONG), ("first_event_at", TS), ("last_event_at", TS),
    ("sessions", STRINGS), ("orders", STRINGS), ("revenue", REVENUE), ("last_purchase_at", TS),
    ("last_view", VIEW), ("view_categories", STRINGS), ("carts", T.ArrayType(CART)),
))
DAILY_VALUES = tuple(f for f in CUSTOMER_DAILY_SCHEMA.fieldNames() if f not in ("customer_id", "event_date"))
STATE_EVENT_COLUMNS = ("event_id", "customer_id", "session_id", "event_type", "event_ts", "event_date",
                       "product_id", "category", "top_category", "price", "quantity", "order_id")


def _when(condition: Column, value: Column | str) -> Column:
    return F.when(condition, value if isinstance(value, Column) else F.col(value))


def daily_aggregates(*extra_keys: str) -> Transform:
    """Identified silver events -> one state row per (customer, day[, extra keys])."""

    def transform(events: DataFrame) -> DataFrame:
        purchase = F.col("event_type") == "purchase"
        view = F.col("event_type") == "product_view"
        cart = F.col("event_type").isin("add_to_cart", "cart_abandonment")
        revenue = F.col("price") * F.coalesce(F.col("quantity"), F.lit(1))
        grouped = events.where(F.col("customer_id").isNotNull()).groupBy("customer_id", "event_date", *extra_keys)
        return grouped.agg(
            F.count(F.lit(1)).alias("events"),
            F.min("event_ts").alias("first_event_at"),
            F.max("event_ts").alias("last_event_at"),
            F.array_sort(F.collect_set("session_id")).alias("sessions"),
            F.array_sort(F.collect_set(_when(purchase, F.coalesce("order_id", "event_id")))).alias("orders"),
            F.coalesce(F.sum(_when(purchase, revenue)), F.lit(0)).cast(REVENUE).alias("revenue"),
            F.max(_when(purchase, "event_ts")).alias("last_purchase_at"),
            F.max(_when(view, F.struct(*VIEW.fieldNames()))).alias("last_view"),
            F.array_sort(F.collect_set(_when(view, "top_category"))).alias("view_categories"),
            F.array_sort(F.collect_list(_when(cart, F.struct(*CART.fieldNames())))).alias("_carts"),
        ).withColumn(  # a cart before a purchase of the same day can never count as abandoned
            "carts", F.filter("_carts", lambda c: F.col("last_purchase_at").isNull()
                              | (c["event_ts"] > F.col("last_purchase_at")))
        ).drop("_carts")

    return transform


def boundary_dates(as_of: datetime) -> list[date]:
    """The days whose raw events features as of ``as_of`` read: its own and each window's first."""
    return sorted({as_of.date(), *[(as_of - timedelta(days=n)).date() for n in WINDOW_DAYS]})


def _ts(value: datetime) -> Column:
    return F.lit(value).cast(T.TimestampType())


def _flags_for_days(as_of: datetime) -> list[Column]:
    """For state rows (whole days): inside each window when the day is after its first day."""
    return [(F.col("event_date") > F.lit((as_of - timedelta(days=n)).date())).alias(f"_in_{n}d")
            for n in WINDOW_DAYS]


def _flags_for_events(as_of: datetime) -> list[Column]:
    return [(F.col("event_ts") >= _ts(as_of - timedelta(days=n))).alias(f"_in_{n}d") for n in WINDOW_DAYS]


def _union_all(arrays: Column) -> Column:
    return F.array_distinct(F.flatten(arrays))


def activity_from_state(as_of: datetime, abandonment_window: timedelta, state: DataFrame,
                        boundary_events: DataFrame) -> DataFrame:
    """Per customer, the lifetime and window columns of :func:`assemble_features`.

    ``state`` is ``gold.customer_daily``; ``boundary_events`` the silver events of
    :func:`boundary_dates` (partition-pruned by the caller)."""
    edges = boundary_dates(as_of)
    whole_days = state.where((F.col("event_date") < F.lit(as_of.date())) & ~F.col("event_date").isin(edges)).select(
        "customer_id", "event_date", *DAILY_VALUES, *_flags_for_days(as_of))
    flags = [f"_in_{n}d" for n in WINDOW_DAYS]
    partial_days = (
        boundary_events.where(F.col("event_date").isin(edges) & (F.col("event_ts") < _ts(as_of)))
        .select(*STATE_EVENT_COLUMNS, *_flags_for_events(as_of))
        .transform(daily_aggregates(*flags))
    )
    rows = whole_days.unionByName(partial_days)
    in7, in30, in90 = (F.col(f) for f in flags)
    settled = _ts(as_of - abandonment_window)
    activity = rows.groupBy("customer_id").agg(
        F.min("first_event_at").alias("first_seen_at"),
        F.max("last_event_at").alias("last_event_at"),
        F.max("last_purchase_at").alias("last_purchase_at"),
        F.size(_union_all(F.collect_list("orders"))).cast(LONG).alias("purchases_lifetime"),
        F.sum("revenue").alias("revenue_lifetime"),
        F.max("last_view").alias("_last_view"),
        F.sum(_when(in7, "events")).alias("events_7d"),
        F.size(_union_all(F.collect_list(_when(in30, "sessions")))).cast(LONG).alias("sessions_30d"),
        F.size(_union_all(F.collect_list(_when(in30, "orders")))).cast(LONG).alias("purchases_30d"),
        F.size(_union_all(F.collect_list(_when(in90, "orders")))).cast(LONG).alias("purchases_90d"),
        F.sum(_when(in90, "revenue")).alias("revenue_90d"),
        F.max(_when(in7, "last_view")).alias("_last_view_7d"),
        F.array_sort(_union_all(F.collect_list(_when(in7, "view_categories")))).alias("viewed_categories_7d"),
        F.max(_when(in90, "last_purchase_at")).alias("_last_purchase_90d"),
        F.flatten(F.collect_list(_when(in90, "carts"))).alias("_carts_90d"),
    )
    abandoned = F.filter("_carts_90d", lambda c: (
        (F.col("_last_purchase_90d").isNull() | (c["event_ts"] > F.col("_last_purchase_90d")))
        & ((c["event_type"] == "cart_abandonment") | (c["event_ts"] <= settled))))
    products = F.filter(F.transform(abandoned, lambda c: F.when(c["event_type"] == "add_to_cart", c["product_id"])),
                        lambda p: p.isNotNull())
    return activity.select(
        "customer_id", "first_seen_at", "last_event_at", "last_purchase_at", "purchases_lifetime",
        "revenue_lifetime",
        F.col("_last_view.product_id").alias("last_viewed_product"),
        F.col("_last_view.event_ts").alias("last_viewed_product_at"),
        F.col("_last_view.category").alias("last_viewed_category"),
        "events_7d", "sessions_30d", "purchases_30d", "purchases_90d", "revenue_90d",
        F.col("_last_view_7d.top_category").alias("recent_view_category"),
        "viewed_categories_7d",
        F.array_max(F.transform(abandoned, lambda c: c["event_ts"])).alias("cart_abandoned_at"),
        F.array_sort(F.array_distinct(products)).alias("abandoned_products"),
    )


def features_from_state(as_of: datetime, abandonment_window: timedelta, state: DataFrame,
                        boundary_events: DataFrame, customers: DataFrame) -> DataFrame:
    """``gold.customer_features`` rows as of ``as_of`` from the daily state (see the module doc)."""
    activity = activity_from_state(as_of, abandonment_window, state, boundary_events)
    return assemble_features(as_of, activity, customers)
