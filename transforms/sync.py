"""What a destination should hold versus what it was sent -> the changes to send.

``desired``: the current members of each segment who consent to email, with the template
attributes and their hash. ``delivered``: what the sync ledger says the destination holds
(the latest acknowledged action per segment and customer). The difference, netted by
construction, is the change set: ``add`` (desired, not delivered), ``remove`` (delivered, not
desired: left the segment or withdrew consent), ``update`` (both, attributes changed).
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame, Window
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
FEATURE_FIELDS = (
    "email", "first_name", "last_viewed_product", "last_viewed_category", "abandoned_products", "rfm_segment",
)
# Every feature column a sync reads (who may be sent: consent and an email; what: the fields):
# a features change outside them changes nothing a destination is sent.
SYNCED_FEATURE_COLUMNS = ("customer_id", "email_consent", *FEATURE_FIELDS)
# Lists of {id, name, url, image_url, price}: the customer's recommendations in rank order, and
# the products of their abandoned cart, so a platform's own templates can show them.
PRODUCT_LISTS = ("recommended_products", "cart_items")
TEMPLATE_FIELDS = (*FEATURE_FIELDS, *PRODUCT_LISTS)
ACTION_ORDER = {"remove": 0, "add": 1, "update": 2}


def _card() -> Column:
    """A product as a platform's template shows it (after a join to the catalog)."""
    return F.struct(F.col("product_id").alias("id"), F.coalesce("name", "product_id").alias("name"), "url",
                    "image_url", F.col("price").cast(T.DoubleType()).alias("price"))


def _ordered_cards(frame: DataFrame, order: str, name: str) -> DataFrame:
    """``(customer_id, order, product_id + catalog columns)`` -> ``(customer_id, name)``: cards in order."""
    ranked = F.sort_array(F.collect_list(F.struct(F.col(order).alias("_order"), _card().alias("card"))))
    return frame.groupBy("customer_id").agg(F.transform(ranked, lambda item: item["card"]).alias(name))


def desired_members(features: DataFrame, recommendations: DataFrame, products: DataFrame) -> Transform:
    """Membership ``(segment_id, customer_id, ...)`` -> consenting members with attributes: the
    features' (:data:`FEATURE_FIELDS`), their recommendations and their abandoned cart as product
    lists (:data:`PRODUCT_LISTS`, empty when none), and the hash of them all."""

    def transform(membership: DataFrame) -> DataFrame:
        profile = features.select(*SYNCED_FEATURE_COLUMNS).where(
            F.col("email_consent") & F.col("email").isNotNull()).drop("email_consent")
        members = membership.select("segment_id", "customer_id").join(profile, "customer_id")
        people = members.select("customer_id").distinct()
        catalog = products.select("product_id", "name", "url", "image_url", "price")
        recommended = _ordered_cards(recommendations.join(people, "customer_id", "left_semi")
                                     .join(catalog, "product_id", "left"), "rank", "recommended_products")
        carts = _ordered_cards(profile.join(people, "customer_id", "left_semi")
                               .select("customer_id", F.posexplode("abandoned_products").alias("_pos", "product_id"))
                               .join(catalog, "product_id", "left"), "_pos", "cart_items")
        empty = F.array().cast(T.ArrayType(_card_type()))
        return (
            members.join(recommended, "customer_id", "left").join(carts, "customer_id", "left")
            .withColumns({name: F.coalesce(name, empty) for name in PRODUCT_LISTS})
            .withColumn("attr_hash", F.sha2(F.to_json(F.struct(*TEMPLATE_FIELDS)), 256))
        )

    return transform


def _card_type() -> T.StructType:
    return T.StructType(fields(("id", STR), ("name", STR), ("url", STR), ("image_url", STR),
                               ("price", T.DoubleType())))


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
