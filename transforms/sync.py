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
from pyspark.sql import types as T

from transforms.schema import LONG, STR, TS, fields

Transform = Callable[[DataFrame], DataFrame]
SYNC_LEDGER_SCHEMA = T.StructType(fields(
    ("destination", STR), ("segment_id", STR), ("customer_id", STR), ("action", STR), ("attr_hash", STR),
    ("status", STR), ("error", STR), ("batch_key", STR), ("batch_no", LONG), ("batch_seq", LONG), ("seq", LONG),
    ("attempts", LONG), ("http_status", LONG), ("seconds", T.DoubleType()), ("membership_version", LONG),
    ("run_id", STR), ("delivered_at", TS),
))
SYNC_STATE_SCHEMA = T.StructType(fields(
    ("destination", STR), ("segment_id", STR), ("customer_id", STR), ("attr_hash", STR), ("delivered_at", TS),
    ("through_batch_seq", LONG),
))
ACKNOWLEDGED, REFUSED = "acknowledged", "refused"
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


def delivered_members(state: DataFrame, ledger_tail: DataFrame) -> DataFrame:
    """What a destination holds: its compact state (``ops.sync_state``) with the changes it
    acknowledged since (the ledger's batches after ``through_batch_seq``) applied in order; a
    customer whose latest change is a remove is not there."""
    keys = ["segment_id", "customer_id"]
    held = state.where(F.col("customer_id").isNotNull()).select(
        *keys, F.lit("add").alias("action"), "attr_hash", F.lit(-1).cast("long").alias("batch_seq"),
        F.lit(-1).cast("long").alias("seq"))
    since = ledger_tail.where(F.col("status") == ACKNOWLEDGED).select(*keys, "action", "attr_hash", "batch_seq", "seq")
    latest = Window.partitionBy(*keys).orderBy(F.desc("batch_seq"), F.desc("seq"))
    return (
        held.unionByName(since)
        .withColumn("_rank", F.row_number().over(latest))
        .where((F.col("_rank") == 1) & (F.col("action") != "remove"))
        .select(*keys, "attr_hash")
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
