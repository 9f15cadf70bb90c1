"""Gold recommendations: ``gold.product_recommendations`` as of a time (see
:mod:`transforms.recommendations`), for every customer of ``gold.customer_features``.

Like the features, the result replaces the table in one commit unless it equals what the table
holds (a digest of every value but ``as_of`` in the commit's metadata), and a rerun whose inputs
did not change (silver events, the customers, the catalog, the time, the settings) skips the
computation. Products the catalog marks out of stock are left out.
Past recommendations stay readable by Delta version; ``lakehouse recs show --as-of`` recomputes
them as of any time from the events before it. As a stage of ``lakehouse run`` and ``stream``
(after segment), a build less than ``recommendations.refresh_minutes`` older than the run's time
is kept without a Spark job: recommendations move with days of behaviour, not with every tick.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.runtime.runlog import StageResult, previous_outcome, recorded_outcomes, run_stage, still_describes
from jobs.runtime.settings import Settings
from jobs.runtime.tables import (
    current_version,
    data_version,
    last_commit_metadata,
    last_data_commit,
    overwrite,
    read_or_empty,
    table_path,
)
from jobs.stages.features import FEATURES, as_utc, digest
from transforms.recommendations import RecsConfig, hit_rate_and_mrr, next_products, recommend

RECOMMENDATIONS = "gold.product_recommendations"
PRODUCTS = "silver.products"
CONTENT = ("customer_id", "rank", "product_id", "score", "reason")  # every column but as_of


def config(settings: Settings) -> RecsConfig:
    return RecsConfig(**_config(settings))


def compute_recommendations(spark: SparkSession, settings: Settings, as_of: datetime,
                            customers: DataFrame | None = None, popularity_only: bool = False) -> DataFrame:
    root = settings.lakehouse.root
    if customers is None:
        customers = read_or_empty(spark, root, FEATURES).select("customer_id")
    out_of_stock = read_or_empty(spark, root, PRODUCTS).where(~F.col("in_stock"))
    return read_or_empty(spark, root, "silver.events").transform(
        recommend(customers, as_of, config(settings), out_of_stock, popularity_only=popularity_only))


def _config(settings: Settings) -> dict[str, object]:
    """The settings the recommendations are a function of (not how often a run refreshes them)."""
    return settings.recommendations.model_dump(exclude={"refresh_minutes"})


def _builds(spark: SparkSession, settings: Settings) -> list[tuple[datetime, dict[str, object]]]:
    """What the table holds, by the outcomes that describe it: its last commit's, and the run
    log's when no data reached the table since the version that run left (a build that wrote nothing).
    Only builds with today's settings; read from commit metadata, no Spark job."""
    root = settings.lakehouse.root
    path = table_path(root, RECOMMENDATIONS)
    recorded = recorded_outcomes(spark, root).get("recommend") or {}
    version, own = last_data_commit(spark, path)
    found = []
    for built in (own, recorded if still_describes(recorded, version) else {}):
        inputs = built.get("inputs")
        if built.get("as_of") and isinstance(inputs, dict) and inputs.get("config") == _config(settings):
            found.append((as_utc(datetime.fromisoformat(str(built["as_of"]))), built))
    return found


def recent_build(spark: SparkSession, settings: Settings, as_of: datetime) -> dict[str, object] | None:
    """The last build's outcome when it is as of at most ``recommendations.refresh_minutes``
    before ``as_of`` (see :func:`_builds`)."""
    refresh = timedelta(minutes=settings.recommendations.refresh_minutes)
    return next((built for built_as_of, built in _builds(spark, settings)
                 if built_as_of <= as_of < built_as_of + refresh), None)


def recommendations_at(spark: SparkSession, settings: Settings, as_of: datetime, customers: DataFrame
                       ) -> DataFrame:
    """The recommendations of ``customers`` as of ``as_of``: read from the table when it holds a
    build as of exactly that time, else computed from the events before it."""
    as_of = as_utc(as_of)
    if any(built_as_of == as_of for built_as_of, _ in _builds(spark, settings)):
        table = read_or_empty(spark, settings.lakehouse.root, RECOMMENDATIONS)
        return table.join(customers.select("customer_id"), "customer_id", "left_semi")
    return compute_recommendations(spark, settings, as_of, customers)


def recommend_stage(spark: SparkSession, settings: Settings, as_of: datetime, stage: StageResult,
                    keep_recent: bool = False) -> None:
    """``gold.product_recommendations`` as of ``as_of``. ``keep_recent`` (run, stream): a build
    less than ``recommendations.refresh_minutes`` old is kept as it is."""
    root = settings.lakehouse.root
    as_of = as_utc(as_of)
    path = table_path(root, RECOMMENDATIONS)
    if keep_recent:
        recent = recent_build(spark, settings, as_of)
        if recent is not None:
            stage.rows_out = int(str(recent["content"]).split(":")[0])
            stage.versions[RECOMMENDATIONS] = current_version(spark, path)
            stage.as_of = as_utc(datetime.fromisoformat(str(recent["as_of"])))
            stage.details["kept"] = f"recommendations as of {recent['as_of']} kept (recommendations.refresh_minutes)"
            return
    inputs = {**{key: data_version(spark, table_path(root, key)) for key in ("silver.events", FEATURES, PRODUCTS)},
              "as_of": as_of.isoformat(), "config": _config(settings)}
    previous = previous_outcome(spark, root, "recommend", path, inputs)
    if previous is not None:
        content = str(previous["content"])
    else:
        recs = compute_recommendations(spark, settings, as_of).persist()
        try:
            content = digest(recs, CONTENT)
            if last_commit_metadata(spark, path).get("content") != content:
                overwrite(recs, root, RECOMMENDATIONS, metadata={
                    "run_id": stage.run_id, "as_of": as_of.isoformat(), "content": content, "inputs": inputs})
        finally:
            recs.unpersist()
    stage.rows_out = int(content.split(":")[0])
    stage.as_of = as_of
    stage.versions[RECOMMENDATIONS] = current_version(spark, path)
    stage.outcomes["recommend"] = {"inputs": inputs, "version": stage.versions[RECOMMENDATIONS], "content": content,
                                   "as_of": as_of.isoformat()}


def build_recommendations(spark: SparkSession, settings: Settings, as_of: datetime) -> StageResult:
    """``lakehouse recs build``: one stage, recorded."""
    return run_stage(spark, settings.lakehouse.root, settings.env, "recommend",
                     lambda stage: recommend_stage(spark, settings, as_of, stage))


def evaluate(spark: SparkSession, settings: Settings, as_of: datetime, k: int, horizon_days: int = 7
             ) -> dict[str, object]:
    """Hit rate@k and MRR of the recommendations as of ``as_of`` against each customer's next
    product viewed, carted or bought, next to the popularity baseline's."""
    as_of = as_utc(as_of)
    events = read_or_empty(spark, settings.lakehouse.root, "silver.events")
    truth = events.transform(next_products(as_of, horizon_days)).persist()
    try:
        people = truth.select("customer_id")
        wide = replace(config(settings), top_n=max(k, settings.recommendations.top_n))
        result: dict[str, object] = {"as_of": as_of.isoformat(), "k": k, "horizon_days": horizon_days}
        for name, baseline in (("recommendations", False), ("popularity_baseline", True)):
            recs = events.transform(recommend(people, as_of, wide, popularity_only=baseline))
            row = recs.transform(hit_rate_and_mrr(truth, k)).first()
            result[name] = {"customers": row["customers"], "hits": row["hits"],
                            "hit_rate": round(float(row["hit_rate"] or 0), 4), "mrr": round(float(row["mrr"] or 0), 4)}
    finally:
        truth.unpersist()
    return result
