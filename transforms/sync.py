"""What a destination should hold versus what it was sent -> the changes to send.

``desired``: the current members of each segment who consent to email, with the template
attributes and their hash. ``delivered``: what the sync ledger says the destination holds
(the latest acknowledged action per segment and customer). The difference, netted by
construction, is the change set: ``add`` (desired, not delivered), ``remove`` (delivered, not
desired: left the segment or withdrew consent), ``update`` (both, attributes changed).
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

Transform = Callable[[DataFrame], DataFrame]
TEMPLATE_FIELDS = (
    "email", "first_name", "last_viewed_product", "last_viewed_category", "abandoned_products", "rfm_segment",
)
ACTION_ORDER = {"remove": 0, "add": 1, "update": 2}


def desired_members(features: DataFrame) -> Transform:
    """Membership ``(segment_id, customer_id, ...)`` -> consenting members with attributes."""

    def transform(membership: DataFrame) -> DataFrame:
        profile = features.where(F.col("email_consent") & F.col("email").isNotNull()).select(
            "customer_id", *TEMPLATE_FIELDS)
        return (
            membership.select("segment_id", "customer_id")
            .join(profile, "customer_id")
            .withColumn("attr_hash", F.sha2(F.to_json(F.struct(*TEMPLATE_FIELDS)), 256))
        )

    return transform


def delivered_members(ledger: DataFrame) -> DataFrame:
    """The ledger's latest acknowledged action per segment and customer, unless a remove."""
    latest = Window.partitionBy("segment_id", "customer_id").orderBy(F.desc("delivered_at"), F.desc("seq"))
    return (
        ledger.withColumn("_rank", F.row_number().over(latest))
        .where((F.col("_rank") == 1) & (F.col("action") != "remove"))
        .select("segment_id", "customer_id", "attr_hash")
    )


def plan_changes(delivered: DataFrame, full_refresh: bool = False) -> Transform:
    """Desired members -> ``(segment_id, customer_id, action, template fields, attr_hash)``."""

    def transform(desired: DataFrame) -> DataFrame:
        keys = ["segment_id", "customer_id"]
        known = delivered.select(*keys, F.col("attr_hash").alias("_sent_hash"))
        both = desired.join(known, keys, "full_outer")
        action = (
            F.when(F.col("attr_hash").isNull(), F.lit("remove"))
            .when(F.col("_sent_hash").isNull() | F.lit(full_refresh), F.lit("add"))
            .when(F.col("attr_hash") != F.col("_sent_hash"), F.lit("update"))
        )
        return (
            both.withColumn("action", action)
            .where(F.col("action").isNotNull())
            .select(*keys, "action", *TEMPLATE_FIELDS, "attr_hash")
        )

    return transform
