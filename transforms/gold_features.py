"""Silver events and customers -> one row of features per customer, as of an explicit time.

Every window is half-open, ``[as_of - N days, as_of)``: an event exactly N days before
``as_of`` counts, one at ``as_of`` does not, so any past day can be recomputed exactly. Nothing
here reads the clock. ``days_since_*`` are whole days, ``floor((as_of - t) / 24 h)``. A
purchase's revenue is ``price * quantity`` (quantity 1 when absent); purchases are counted by
order (``order_id``, else the event).

:func:`customer_features` computes everything from all events; the jobs use the incremental
path of :mod:`transforms.gold_state`, which gives the same rows from daily state. Both end in
:func:`assemble_features`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from transforms.schema import BOOL, INT, LONG, MONEY, STR, STRINGS, TS, fields
from transforms.silver_customers import age_on

Transform = Callable[[DataFrame], DataFrame]
LARGEST_WINDOW_DAYS = 90
WINDOW_DAYS = (7, 30, LARGEST_WINDOW_DAYS)
DAY_US = 86_400_000_000

CUSTOMER_FEATURES_SCHEMA = T.StructType(fields(
    ("customer_id", STR), ("as_of", TS), ("email", STR), ("first_name", STR), ("age", INT),
    ("city", STR), ("country", STR), ("email_consent", BOOL), ("first_seen_at", TS),
    ("last_event_at", TS), ("days_since_last_event", INT), ("last_purchase_at", TS),
    ("days_since_last_purchase", INT), ("events_7d", LONG), ("sessions_30d", LONG),
    ("purchases_30d", LONG), ("purchases_90d", LONG), ("purchases_lifetime", LONG),
    ("revenue_90d", MONEY), ("revenue_lifetime", MONEY), ("avg_order_value", MONEY),
    ("last_viewed_product", STR), ("last_viewed_product_at", TS), ("last_viewed_category", STR),
    ("recent_view_category", STR), ("viewed_categories_7d", STRINGS),
    ("cart_abandoned_at", TS), ("abandoned_products", STRINGS), ("r_score", INT),
    ("f_score", INT), ("m_score", INT), ("rfm_segment", STR),
))
FEATURE_COLUMNS = tuple(CUSTOMER_FEATURES_SCHEMA.fieldNames())


def _ts(value: datetime) -> Column:
    return F.lit(value).cast(T.TimestampType())


def days_between(earlier: Column, as_of: datetime) -> Column:
    """Whole days from ``earlier`` to ``as_of``: floor((as_of - earlier) / 24 h)."""
    return F.floor((F.unix_micros(_ts(as_of)) - F.unix_micros(earlier)) / DAY_US).cast(T.IntegerType())


def window_start(as_of: datetime, days: int = LARGEST_WINDOW_DAYS) -> datetime:
    return as_of - timedelta(days=days)


def _in_window(as_of: datetime, days: int) -> Column:
    return (F.col("event_ts") >= _ts(as_of - timedelta(days=days))) & (F.col("event_ts") < _ts(as_of))


def _when(condition: Column, value: Column | str) -> Column:
    return F.when(condition, value if isinstance(value, Column) else F.col(value))


def _revenue() -> Column:
    return F.col("price") * F.coalesce(F.col("quantity"), F.lit(1))


def _order() -> Column:
    return F.coalesce(F.col("order_id"), F.col("event_id"))


def lifetime_features(as_of: datetime) -> Transform:
    """Per customer over all their events before ``as_of``."""

    def transform(events: DataFrame) -> DataFrame:
        is_purchase = F.col("event_type") == "purchase"
        is_view = F.col("event_type") == "product_view"
        view = F.struct("event_ts", "event_id")
        return events.where(F.col("event_ts") < _ts(as_of)).groupBy("customer_id").agg(
            F.min("event_ts").alias("first_seen_at"),
            F.max("event_ts").alias("last_event_at"),
            F.max(_when(is_purchase, "event_ts")).alias("last_purchase_at"),
            F.count_distinct(_when(is_purchase, _order())).alias("purchases_lifetime"),
            F.coalesce(F.sum(_when(is_purchase, _revenue())), F.lit(0)).alias("revenue_lifetime"),
            F.max_by(_when(is_view, "product_id"), _when(is_view, view)).alias("last_viewed_product"),
            F.max(_when(is_view, "event_ts")).alias("last_viewed_product_at"),
            F.max_by(_when(is_view, "category"), _when(is_view, view)).alias("last_viewed_category"),
        )

    return transform


def window_features(as_of: datetime, abandonment_window: timedelta) -> Transform:
    """Per customer over the events of the last 90 days before ``as_of`` (pass only those)."""

    def transform(events: DataFrame) -> DataFrame:
        recent = events.where(_in_window(as_of, LARGEST_WINDOW_DAYS))
        in_7d, in_30d = _in_window(as_of, 7), _in_window(as_of, 30)
        purchase = F.col("event_type") == "purchase"
        view_7d = in_7d & (F.col("event_type") == "product_view")
        last_purchase = F.max(_when(purchase, "event_ts")).over(Window.partitionBy("customer_id"))
        after_purchase = last_purchase.isNull() | (F.col("event_ts") > last_purchase)
        settled = F.col("event_ts") <= _ts(as_of - abandonment_window)
        added = (F.col("event_type") == "add_to_cart") & settled
        abandoned = (added | (F.col("event_type") == "cart_abandonment")) & after_purchase
        marked = recent.withColumn("_abandoned", abandoned).withColumn(
            "_abandoned_product", _when(added & after_purchase, "product_id"))
        return marked.groupBy("customer_id").agg(
            F.count(_when(in_7d, F.lit(1))).alias("events_7d"),
            F.count_distinct(_when(in_30d, "session_id")).alias("sessions_30d"),
            F.count_distinct(_when(in_30d & purchase, _order())).alias("purchases_30d"),
            F.count_distinct(_when(purchase, _order())).alias("purchases_90d"),
            F.coalesce(F.sum(_when(purchase, _revenue())), F.lit(0)).alias("revenue_90d"),
            F.max_by(_when(view_7d, "top_category"), _when(view_7d, F.struct("event_ts", "event_id")))
            .alias("recent_view_category"),
            F.array_sort(F.collect_set(_when(view_7d, "top_category"))).alias("viewed_categories_7d"),
            F.max(_when(F.col("_abandoned"), "event_ts")).alias("cart_abandoned_at"),
            F.array_sort(F.collect_set("_abandoned_product")).alias("abandoned_products"),
        )

    return transform


RFM_LABELS = (
    # (label, condition on r/f/m scores), first match wins
    ("champions", "r_score >= 4 AND f_score >= 4 AND m_score >= 4"),
    ("loyal", "f_score >= 4"),
    ("big_spenders", "m_score >= 4 AND r_score >= 3"),
    ("new", "r_score >= 4 AND f_score <= 2"),
    ("at_risk", "r_score <= 2 AND (f_score >= 3 OR m_score >= 3)"),
    ("hibernating", "r_score <= 2"),
    ("promising", "TRUE"),
)


def with_rfm(df: DataFrame) -> DataFrame:
    """``r_score``, ``f_score``, ``m_score`` (1-5 quintiles among purchasers: 5 is the most
    recent, frequent, valuable) and ``rfm_segment``; null for customers who never purchased."""
    buyer = F.col("purchases_lifetime") > 0
    scores = {
        "r_score": Window.partitionBy(buyer).orderBy(F.desc("days_since_last_purchase"), "customer_id"),
        "f_score": Window.partitionBy(buyer).orderBy("purchases_lifetime", "customer_id"),
        "m_score": Window.partitionBy(buyer).orderBy("revenue_lifetime", "customer_id"),
    }
    for name, window in scores.items():
        df = df.withColumn(name, F.when(buyer, F.ntile(5).over(window)))
    label = F.lit(None).cast(T.StringType())
    for name, condition in reversed(RFM_LABELS):
        label = F.when(buyer & F.expr(condition), F.lit(name)).otherwise(label)
    return df.withColumn("rfm_segment", label)


def assemble_features(as_of: datetime, activity: DataFrame, customers: DataFrame) -> DataFrame:
    """Per-customer activity (lifetime and window columns, customers with events before
    ``as_of``) + profiles -> one feature row per customer known from events or the CRM."""
    profiles = customers.select(
        "customer_id", "email", "first_name", F.col("birth_date"), "city", "country", "email_consent")
    everyone = profiles.select("customer_id").unionByName(activity.select("customer_id")).distinct()
    zero = ("events_7d", "sessions_30d", "purchases_30d", "purchases_90d", "purchases_lifetime")
    joined = (
        everyone.join(activity, "customer_id", "left")
        .join(profiles, "customer_id", "left")
        .fillna(0, subset=list(zero))
        .withColumns({  # one projection each: a long chain of withColumn re-analyzes the plan every step
            "revenue_90d": F.coalesce("revenue_90d", F.lit(0)).cast(MONEY),
            "revenue_lifetime": F.coalesce("revenue_lifetime", F.lit(0)).cast(MONEY),
            "viewed_categories_7d": F.coalesce("viewed_categories_7d", F.array().cast(STRINGS)),
            "abandoned_products": F.when(F.col("cart_abandoned_at").isNotNull(),
                                         F.col("abandoned_products")).otherwise(F.array().cast(STRINGS)),
            "days_since_last_event": days_between(F.col("last_event_at"), as_of),
            "days_since_last_purchase": days_between(F.col("last_purchase_at"), as_of),
            "age": age_on(F.col("birth_date"), F.to_date(_ts(as_of))),
            "email_consent": F.coalesce("email_consent", F.lit(False)),
            "as_of": _ts(as_of),
        })
        .withColumn("avg_order_value", F.when(  # of the revenue as stored
            F.col("purchases_lifetime") > 0, (F.col("revenue_lifetime") / F.col("purchases_lifetime")).cast(MONEY)))
    )
    return joined.transform(with_rfm).select(*FEATURE_COLUMNS)


def customer_features(
    as_of: datetime, abandonment_window: timedelta, recent_events: DataFrame, customers: DataFrame
) -> Transform:
    """All events (lifetime) -> one feature row per customer known from events or the CRM: the
    reference computation (every event read).

    ``recent_events`` are the events of the largest window (partition-pruned by the caller);
    ``customers`` is silver.customers.
    """

    def transform(events: DataFrame) -> DataFrame:
        identified = events.where(F.col("customer_id").isNotNull())
        lifetime = identified.transform(lifetime_features(as_of))
        windows = recent_events.where(F.col("customer_id").isNotNull()).transform(
            window_features(as_of, abandonment_window))
        return assemble_features(as_of, lifetime.join(windows, "customer_id", "left"), customers)

    return transform
