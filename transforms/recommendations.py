"""Product recommendations as of a time: item-to-item co-occurrence within sessions, seeded by
each customer's recent interactions, with popularity fallbacks — and their offline evaluation.

Only events before ``as_of`` count (windows are half-open ``[as_of - N days, as_of)``), so
recommendations as of a past time do not move when later events land.

1. **Interactions** in the look-back window: product views and clicks weigh 1, add-to-cart 3,
   purchases 5; per session (``session_id``, else the identity and day) a product counts with its
   strongest interaction, and a session keeps at most ``max_products_per_session`` products.
2. **Similarity** of two products: the cosine of their session vectors,
   ``Σ w_a·w_b / (‖a‖·‖b‖)`` over the sessions holding both; each product keeps its
   ``max_similar_products`` most similar (ties by ``product_id``), its neighbourhood.
3. **Candidates** for a customer: ``Σ seed weight × similarity`` over the products the customer
   interacted with in the last ``seed_days`` (reason ``co_occurrence``); then the most popular
   products (by summed weight) of the categories the customer interacted with, weighted by how
   much (``popular_in_category``); then the most popular products overall (``popular``).
4. **Exclusions**: what the customer bought in the last ``exclude_bought_days``, and products the
   ``out_of_stock`` frame holds when one is given (the catalog's stock now: a backfill as of a
   past time still leaves out what cannot be bought today).
5. The best tier of each product wins; the top ``top_n`` by tier, score, then ``product_id``
   (deterministic ties) get ranks 1..N.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from transforms.schema import INT, STR, TS, fields

Transform = Callable[[DataFrame], DataFrame]

WEIGHTS = {"product_view": 1.0, "product_click": 1.0, "add_to_cart": 3.0, "purchase": 5.0}
DOUBLE = T.DoubleType()
RECOMMENDATIONS_SCHEMA = T.StructType(fields(
    ("customer_id", STR), ("rank", INT), ("product_id", STR), ("score", DOUBLE), ("reason", STR), ("as_of", TS),
))
REASONS = ("co_occurrence", "popular_in_category", "popular")


@dataclass(frozen=True)
class RecsConfig:
    lookback_days: int = 30
    seed_days: int = 7
    exclude_bought_days: int = 30
    top_n: int = 8
    max_products_per_session: int = 50
    max_similar_products: int = 20


def _weight() -> Column:
    weight = F.lit(None).cast(DOUBLE)
    for event_type, value in WEIGHTS.items():
        weight = F.when(F.col("event_type") == event_type, F.lit(value)).otherwise(weight)
    return weight


def _days(start: datetime, end: datetime) -> Column:
    """The ``event_date`` partitions (UTC days) that ``[start, end)`` touches: a scan reads only those."""
    return F.col("event_date").between(F.lit(start.astimezone(UTC).date()), F.lit(end.astimezone(UTC).date()))


def interactions(as_of: datetime, config: RecsConfig) -> Transform:
    """Silver events -> ``customer_id, session, product_id, category, event_type, event_ts, weight``
    of the look-back window."""

    def transform(events: DataFrame) -> DataFrame:
        start = as_of - timedelta(days=config.lookback_days)
        return (
            events.where(_days(start, as_of) & F.col("product_id").isNotNull() & F.col("event_type").isin(*WEIGHTS)
                         & (F.col("event_ts") >= F.lit(start)) & (F.col("event_ts") < F.lit(as_of)))
            .select("customer_id", "product_id", "category", "event_type", "event_ts",
                    F.coalesce("session_id", F.concat_ws("|", F.coalesce("customer_id", "anonymous_id"),
                                                         F.to_date("event_ts").cast(STR))).alias("session"),
                    _weight().alias("weight"))
        )

    return transform


def item_similarity(config: RecsConfig) -> Transform:
    """Interactions -> ``seed, product_id, similarity`` (cosine over sessions, both directions; the
    ``max_similar_products`` most similar of each seed)."""

    def transform(window: DataFrame) -> DataFrame:
        per_session = window.groupBy("session", "product_id").agg(F.max("weight").alias("w"))
        strongest = Window.partitionBy("session").orderBy(F.desc("w"), "product_id")
        capped = (per_session.withColumn("_n", F.row_number().over(strongest))
                  .where(F.col("_n") <= config.max_products_per_session).drop("_n"))
        norms = capped.groupBy("product_id").agg(F.sqrt(F.sum(F.col("w") * F.col("w"))).alias("norm"))
        a, b = capped.alias("a"), capped.alias("b")
        pairs = (a.join(b, "session").where(F.col("a.product_id") != F.col("b.product_id"))
                 .groupBy(F.col("a.product_id").alias("seed"), F.col("b.product_id").alias("product_id"))
                 .agg(F.sum(F.col("a.w") * F.col("b.w")).alias("dot")))
        seed_norms = norms.select(F.col("product_id").alias("seed"), F.col("norm").alias("seed_norm"))
        cosine = F.col("dot") / (F.col("seed_norm") * F.col("norm"))
        nearest = Window.partitionBy("seed").orderBy(F.desc("similarity"), "product_id")
        return (pairs.join(seed_norms, "seed").join(norms, "product_id")
                .select("seed", "product_id", cosine.alias("similarity"))
                .withColumn("_n", F.row_number().over(nearest))
                .where(F.col("_n") <= config.max_similar_products).drop("_n"))

    return transform


def recommend(customers: DataFrame, as_of: datetime, config: RecsConfig, out_of_stock: DataFrame | None = None,
              popularity_only: bool = False) -> Transform:
    """Silver events -> ``gold.product_recommendations`` rows for every customer in ``customers``
    (a frame with ``customer_id``). ``popularity_only``: the baseline (overall popularity, the
    same exclusions)."""

    def transform(events: DataFrame) -> DataFrame:
        window = events.transform(interactions(as_of, config))
        people = customers.select("customer_id").distinct()
        deep = config.top_n * 3  # fallback lists long enough to survive the exclusions
        popularity = window.groupBy("product_id").agg(
            F.sum("weight").alias("popularity"),
            F.max_by("category", "event_ts").alias("category"))
        ranked_overall = popularity.orderBy(F.desc("popularity"), "product_id").limit(deep)  # top-N, no window
        candidates = people.crossJoin(F.broadcast(ranked_overall.select(
            "product_id", F.col("popularity").alias("score")))).withColumn("tier", F.lit(2))
        if not popularity_only:
            known = window.where(F.col("customer_id").isNotNull())
            seeds = (known.where(F.col("event_ts") >= F.lit(as_of - timedelta(days=config.seed_days)))
                     .groupBy("customer_id", F.col("product_id").alias("seed"))
                     .agg(F.max("weight").alias("seed_weight")))
            similar = (seeds.join(window.transform(item_similarity(config)), "seed")
                       .groupBy("customer_id", "product_id")
                       .agg(F.sum(F.col("seed_weight") * F.col("similarity")).alias("score"))
                       .withColumn("tier", F.lit(0)))
            affinity = (known.where(F.col("category").isNotNull())
                        .groupBy("customer_id", "category").agg(F.sum("weight").alias("affinity")))
            by_category = popularity.where(F.col("category").isNotNull()).withColumn("_n", F.row_number().over(
                Window.partitionBy("category").orderBy(F.desc("popularity"), "product_id"))).where(F.col("_n") <= deep)
            weighted = (F.col("affinity") * F.col("popularity")).alias("score")
            in_category = (affinity.join(by_category, "category").select("customer_id", "product_id", weighted)
                           .withColumn("tier", F.lit(1)))
            candidates = similar.unionByName(in_category).unionByName(candidates)
        bought = (window.where((F.col("event_type") == "purchase") & F.col("customer_id").isNotNull()
                               & (F.col("event_ts") >= F.lit(as_of - timedelta(days=config.exclude_bought_days))))
                  .select("customer_id", "product_id").distinct())
        candidates = candidates.join(people, "customer_id", "left_semi").join(bought, ["customer_id", "product_id"],
                                                                              "left_anti")
        if out_of_stock is not None:
            candidates = candidates.join(F.broadcast(out_of_stock.select("product_id")), "product_id", "left_anti")
        # Within a tier a product appears once, so the first top_n of each tier (after the
        # exclusions) hold every row the ranking below can reach: a product of a later tier is only
        # needed when the earlier tiers hold fewer than top_n products. All three windows are within
        # a customer: one shuffle, and the last two sort at most 3 x top_n rows per customer.
        candidates = candidates.repartition("customer_id")
        per_tier = Window.partitionBy("customer_id", "tier").orderBy(F.desc("score"), "product_id")
        candidates = candidates.withColumn("_n", F.row_number().over(per_tier)).where(F.col("_n") <= config.top_n)
        best = Window.partitionBy("customer_id", "product_id").orderBy("tier", F.desc("score"))
        order = Window.partitionBy("customer_id").orderBy("tier", F.desc("score"), "product_id")
        reason = F.element_at(F.array(*[F.lit(r) for r in REASONS]), F.col("tier") + 1)
        return (
            candidates.withColumn("_best", F.row_number().over(best)).where(F.col("_best") == 1)
            .withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= config.top_n)
            .select("customer_id", F.col("rank").cast(INT), "product_id", F.col("score").cast(DOUBLE),
                    reason.alias("reason"), F.lit(as_of).cast(TS).alias("as_of"))
        )

    return transform


def next_products(as_of: datetime, horizon_days: int = 7) -> Transform:
    """Silver events -> ``customer_id, product_id``: each customer's first product viewed, carted
    or bought in ``[as_of, as_of + horizon)``, what a recommendation as of ``as_of`` should foresee."""

    def transform(events: DataFrame) -> DataFrame:
        first = Window.partitionBy("customer_id").orderBy("event_ts", "event_id")
        end = as_of + timedelta(days=horizon_days)
        return (events.where(_days(as_of, end) & F.col("customer_id").isNotNull() & F.col("product_id").isNotNull()
                             & F.col("event_type").isin("product_view", "add_to_cart", "purchase")
                             & (F.col("event_ts") >= F.lit(as_of))
                             & (F.col("event_ts") < F.lit(end)))
                .withColumn("_n", F.row_number().over(first)).where(F.col("_n") == 1)
                .select("customer_id", "product_id"))

    return transform


def hit_rate_and_mrr(truth: DataFrame, k: int) -> Transform:
    """Recommendations -> one row: ``customers`` (with a next product), ``hits`` (it was in the top
    ``k``), ``hit_rate``, ``mrr`` (mean of 1/rank of the hit, 0 for a miss)."""

    def transform(recs: DataFrame) -> DataFrame:
        found = truth.join(recs.where(F.col("rank") <= k).select("customer_id", "product_id", "rank"),
                           ["customer_id", "product_id"], "left")
        return found.agg(
            F.count(F.lit(1)).alias("customers"),
            F.count("rank").alias("hits"),
            (F.count("rank") / F.count(F.lit(1))).alias("hit_rate"),
            F.avg(F.coalesce(1 / F.col("rank"), F.lit(0.0))).alias("mrr"),
        )

    return transform
