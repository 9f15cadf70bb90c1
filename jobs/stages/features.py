"""Gold features: ``gold.customer_features`` as of a time, from the incremental daily state.

The cleanse stage keeps ``gold.customer_daily`` current as silver changes; this stage computes
every customer's features as of ``as_of`` from that state plus the raw silver events of the
boundary days (:func:`transforms.gold_state.boundary_dates`), so its cost follows customers and
active days, not history. The result replaces the table in one commit — unless it is the same
as what the table holds (compared by a digest of every value but ``as_of``, kept in the commit's
metadata), in which case nothing is written and the stage records the run alone. The commit also
keeps a digest of the columns a sync reads (:data:`transforms.sync.SYNCED_FEATURE_COLUMNS`): when
only other features moved (days since an event, an age), a sync has nothing to send and skips.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.runtime.runlog import StageResult, previous_outcome, run_stage
from jobs.runtime.settings import Settings
from jobs.runtime.tables import (
    current_version,
    data_version,
    last_commit_metadata,
    overwrite,
    read_or_empty,
    table_path,
)
from transforms.bronze import conform_to
from transforms.gold_features import CUSTOMER_FEATURES_SCHEMA, FEATURE_COLUMNS
from transforms.gold_state import STATE_EVENT_COLUMNS, boundary_dates, daily_aggregates, features_from_state
from transforms.sync import SYNCED_FEATURE_COLUMNS

FEATURES = "gold.customer_features"


def as_utc(value: datetime) -> datetime:
    """Aware UTC; a naive datetime (as Spark returns timestamps) is taken as local time."""
    return value.astimezone(UTC)


CONTENT = tuple(c for c in FEATURE_COLUMNS if c != "as_of")


def digests(frame: DataFrame, named: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Per name, ``rows:hash``, an order-free digest of those columns, all in one aggregation: what
    a gold table's commit keeps to tell a recomputation that changed nothing (in them)."""
    row = frame.agg(F.count(F.lit(1)).alias("n"), *[
        F.sum(F.xxhash64(*columns).cast("decimal(38,0)")).alias(name) for name, columns in named.items()]).first()
    return {name: f"{row['n']}:{row[name] or 0}" for name in named}


def digest(frame: DataFrame, columns: tuple[str, ...] = CONTENT) -> str:
    """:func:`digests` of one set of columns (default: every feature but ``as_of``)."""
    return digests(frame, {"content": columns})["content"]


def compute_features(spark: SparkSession, settings: Settings, as_of: datetime) -> DataFrame:
    root = settings.lakehouse.root
    state = read_or_empty(spark, root, "gold.customer_daily")
    edges = read_or_empty(spark, root, "silver.events").where(
        F.col("event_date").isin(boundary_dates(as_of))).select(*STATE_EVENT_COLUMNS)
    customers = read_or_empty(spark, root, "silver.customers")
    window = timedelta(minutes=settings.gold.abandonment_window_minutes)
    return features_from_state(as_of, window, state, edges, customers).transform(
        conform_to(CUSTOMER_FEATURES_SCHEMA))


def build_features(spark: SparkSession, settings: Settings, as_of: datetime) -> StageResult:
    """``lakehouse features``: one stage, recorded."""
    return run_stage(spark, settings.lakehouse.root, settings.env, "features",
                     lambda stage: features_stage(spark, settings, as_of, stage))


def _inputs(spark: SparkSession, settings: Settings, as_of: datetime) -> dict[str, object]:
    """What the features as of ``as_of`` are a function of: the versions of the tables they are
    computed from (read from their logs), the time and the abandonment window."""
    root = settings.lakehouse.root
    versions = {key: data_version(spark, table_path(root, key))  # a compaction since changes nothing
                for key in ("gold.customer_daily", "silver.events", "silver.customers")}
    return {**versions, "as_of": as_of.isoformat(), "window": settings.gold.abandonment_window_minutes}


def features_stage(spark: SparkSession, settings: Settings, as_of: datetime, stage: StageResult) -> None:
    """``gold.customer_features`` as of ``as_of``: one overwrite commit, or none if nothing changed
    (computed and compared), or nothing at all if none of its inputs did (a rerun)."""
    root = settings.lakehouse.root
    as_of = as_utc(as_of)
    path = table_path(root, FEATURES)
    inputs = _inputs(spark, settings, as_of)
    previous = previous_outcome(spark, root, "features", path, inputs)
    if previous is not None:  # computed from these very inputs before: the same features
        content = str(previous["content"])
        stage.details["unchanged_since"] = previous.get("as_of")
    else:
        features = compute_features(spark, settings, as_of).persist()
        try:
            found = digests(features, {"content": CONTENT, "synced": SYNCED_FEATURE_COLUMNS})
            content = found["content"]
            last = last_commit_metadata(spark, path)
            if last.get("content") == content:
                stage.details["unchanged_since"] = last.get("as_of")
            else:
                overwrite(features, root, FEATURES, metadata={
                    "run_id": stage.run_id, "as_of": as_of.isoformat(), **found, "inputs": inputs})
        finally:
            features.unpersist()
    customers = int(content.split(":")[0])
    stage.rows_out = customers
    stage.as_of = as_of
    stage.metrics["customers"] = customers
    stage.versions[FEATURES] = current_version(spark, path)
    stage.outcomes["features"] = {"inputs": inputs, "version": stage.versions[FEATURES], "content": content,
                     "as_of": stage.details.get("unchanged_since") or as_of.isoformat()}


def features_as_of(spark: SparkSession, root: str) -> datetime | None:
    """The ``as_of`` the features table was last computed for (its commit says)."""
    path = table_path(root, FEATURES)
    if current_version(spark, path) < 0:
        return None
    text = last_commit_metadata(spark, path).get("as_of")
    if text:
        return as_utc(datetime.fromisoformat(text))
    row = spark.read.format("delta").load(path).select("as_of").first()
    return None if row is None else as_utc(row["as_of"])


def rebuild_daily_state(spark: SparkSession, settings: Settings) -> int:
    """Recompute all of ``gold.customer_daily`` from silver (one overwrite): after silver was
    changed by hand, or for a lakehouse whose state predates it. Rows written."""
    root = settings.lakehouse.root
    events = read_or_empty(spark, root, "silver.events").select(*STATE_EVENT_COLUMNS)
    return overwrite(events.transform(daily_aggregates()), root, "gold.customer_daily")
