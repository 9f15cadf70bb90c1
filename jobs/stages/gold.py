"""Gold: customer features as of a time, and segment membership versioned by Delta commits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from jobs.rules.segments import FEATURE_TYPES, Segment, check_sql, load_segments, rules_hash
from jobs.runtime.errors import InputError
from jobs.runtime.runlog import job_run, utc_now
from jobs.runtime.settings import Settings, rules_dir
from jobs.runtime.tables import (
    append_rows,
    commit_marker,
    ensure_table,
    is_delta_table,
    latest_version,
    read_or_empty,
    spec,
    table_path,
)
from transforms.bronze import conform_to
from transforms.gold_features import LARGEST_WINDOW_DAYS, customer_features
from transforms.segments import compile_condition, members, membership_changes, with_entered_at

FEATURES = "gold.customer_features"
MEMBERSHIP = "gold.segment_membership"
SEGMENT_RUNS = "ops.segment_runs"
EVENT_COLUMNS = (
    "event_id", "customer_id", "session_id", "event_type", "event_ts", "event_date", "product_id",
    "category", "top_category", "price", "quantity", "order_id",
)


def as_utc(value: datetime) -> datetime:
    """Aware UTC; a naive datetime (as Spark returns timestamps) is taken as local time."""
    return value.astimezone(UTC)


@dataclass(frozen=True)
class FeaturesResult:
    run_id: str
    as_of: datetime
    customers: int
    version: int


def build_features(spark: SparkSession, settings: Settings, as_of: datetime) -> FeaturesResult:
    """Recompute gold.customer_features as of ``as_of`` (one overwrite commit)."""
    root = settings.lakehouse.root
    with job_run(spark, root, "features", settings.env) as run:
        events = read_or_empty(spark, root, "silver.events").select(*EVENT_COLUMNS)
        first_day = (as_of - timedelta(days=LARGEST_WINDOW_DAYS)).date()
        recent = events.where((F.col("event_date") >= F.lit(first_day)) & (F.col("event_date") <= F.lit(as_of.date())))
        customers = read_or_empty(spark, root, "silver.customers")
        window = timedelta(minutes=settings.gold.abandonment_window_minutes)
        features = events.transform(customer_features(as_of, window, recent, customers)).transform(
            conform_to(spec(FEATURES).schema))
        ensure_table(spark, root, FEATURES)
        path = table_path(root, FEATURES)
        (
            features.write.format("delta").mode("overwrite")
            .option("userMetadata", commit_marker(run_id=run.run_id, as_of=as_of.isoformat()))
            .save(path)
        )
        version = latest_version(spark, path)
        metrics = spark.sql(f"DESCRIBE HISTORY delta.`{path}` LIMIT 1").first()["operationMetrics"]
        count = int(metrics.get("numOutputRows", 0))
        run.rows_out = count
        run.delta_versions = {FEATURES: version}
        run.metrics = {"customers": count}
        return FeaturesResult(run.run_id, as_of, count, version)


def features_as_of(spark: SparkSession, root: str) -> datetime | None:
    path = table_path(root, FEATURES)
    if not is_delta_table(spark, path):
        return None
    row = spark.read.format("delta").load(path).select("as_of").first()
    return None if row is None else as_utc(row["as_of"])


@dataclass(frozen=True)
class SegmentRunResult:
    run_id: str
    as_of: datetime
    version: int
    rules_hash: str
    changes: list[tuple[str, int, int, int]]  # segment_id, size, entered, exited


def _conditions(segments: list[Segment], as_of: datetime) -> list[tuple[str, object]]:
    return [
        (s.id, compile_condition(s.where, FEATURE_TYPES, as_of) if s.where is not None
         else F.coalesce(F.expr(s.sql), F.lit(False)))
        for s in segments
    ]


def validated_segments(spark: SparkSession, settings: Settings) -> list[Segment]:
    segments = load_segments(rules_dir(settings))
    check_sql(spark, segments)
    return segments


def run_segments(spark: SparkSession, settings: Settings, as_of: datetime | None = None) -> SegmentRunResult:
    """Evaluate every segment on the features as of ``as_of`` and write membership in one commit.

    Without ``as_of`` the features' own as_of is used; with one that differs from theirs, the
    features are recomputed first, so membership is always judged as of a single time.
    """
    root = settings.lakehouse.root
    segments = validated_segments(spark, settings)
    current_as_of = features_as_of(spark, root)
    if as_of is None:
        if current_as_of is None:
            raise InputError("no customer features yet: run `lakehouse features` or give --as-of")
        as_of = current_as_of
    elif current_as_of is None or as_utc(current_as_of) != as_utc(as_of):
        build_features(spark, settings, as_of)
    as_of = as_utc(as_of)
    features = spark.read.format("delta").load(table_path(root, FEATURES))
    digest = rules_hash(segments)
    with job_run(spark, root, "segment", settings.env) as run:
        ensure_table(spark, root, MEMBERSHIP)
        path = table_path(root, MEMBERSHIP)
        previous_version = latest_version(spark, path)
        previous = spark.read.format("delta").option("versionAsOf", previous_version).load(path)
        current = (
            features.transform(members(_conditions(segments, as_of)))
            .transform(with_entered_at(previous, as_of))
            .withColumn("as_of", F.lit(as_of).cast("timestamp"))
            .withColumn("run_id", F.lit(run.run_id))
            .transform(conform_to(spec(MEMBERSHIP).schema))
        )
        (
            current.write.format("delta").mode("overwrite")
            .option("userMetadata", commit_marker(run_id=run.run_id, as_of=str(as_of), rules_hash=digest))
            .save(path)
        )
        version = latest_version(spark, path)
        written = spark.read.format("delta").option("versionAsOf", version).load(path)
        counted = {r["segment_id"]: (r["size"], r["entered"], r["exited"])
                   for r in membership_changes(previous, written).collect()}  # one row per segment
        changes = [(s.id, *counted.get(s.id, (0, 0, 0))) for s in segments]
        changes += [(k, *v) for k, v in sorted(counted.items()) if k not in {s.id for s in segments}]
        now = utc_now()
        append_rows(spark, root, SEGMENT_RUNS, [(run.run_id, as_of, version, digest, sid, size, entered, exited, now)
                                                for sid, size, entered, exited in changes])
        run.rows_out = sum(size for _, size, _, _ in changes)
        run.delta_versions = {MEMBERSHIP: version}
        run.metrics = {f"size.{sid}": size for sid, size, _, _ in changes}
        return SegmentRunResult(run.run_id, as_of, version, digest, changes)


# -- reading membership ---------------------------------------------------------------------------
def membership_at(spark: SparkSession, root: str, segment_id: str, version: int | None = None,
                  timestamp: datetime | None = None) -> DataFrame:
    """A segment's members as of a Delta version or a timestamp (time travel); latest otherwise."""
    path = table_path(root, MEMBERSHIP)
    if not is_delta_table(spark, path):
        raise InputError("no segment membership yet: run `lakehouse segment`")
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    elif timestamp is not None:
        last_commit = as_utc(DeltaTable.forPath(spark, path).history(1).first()["timestamp"])
        if as_utc(timestamp) < last_commit:  # later than the last commit: that commit is the answer
            reader = reader.option("timestampAsOf", as_utc(timestamp).strftime("%Y-%m-%d %H:%M:%S.%f"))
    try:
        table = reader.load(path)
        table.schema  # noqa: B018 - resolves the version now, for a clear error
    except Exception as exc:
        raise InputError(f"cannot read {MEMBERSHIP} at that version or time: {str(exc).splitlines()[0]}") from None
    return table.where(F.col("segment_id") == segment_id)


def diff(spark: SparkSession, root: str, segment_id: str, from_version: int, to_version: int
         ) -> tuple[list[str], list[str]]:
    """Customers who entered and who exited ``segment_id`` between two membership versions."""
    before = membership_at(spark, root, segment_id, version=from_version).select("customer_id")
    after = membership_at(spark, root, segment_id, version=to_version).select("customer_id")
    entered = [r[0] for r in after.subtract(before).orderBy("customer_id").collect()]
    exited = [r[0] for r in before.subtract(after).orderBy("customer_id").collect()]
    return entered, exited


def history(spark: SparkSession, root: str, segment_id: str) -> list[Row]:
    """Size, entered and exited of a segment over every segment run (one row per run)."""
    runs = read_or_empty(spark, root, SEGMENT_RUNS)
    return (
        runs.where(F.col("segment_id") == segment_id)
        .select("delta_version", "as_of", "size", "entered", "exited", "run_id", "rules_hash")
        .orderBy("delta_version")
        .collect()
    )


def latest_sizes(spark: SparkSession, root: str) -> dict[str, tuple[int, int]]:
    """segment_id -> (size, version) of the latest segment run."""
    runs = read_or_empty(spark, root, SEGMENT_RUNS)
    latest = runs.groupBy("segment_id").agg(F.max_by(F.struct("size", "delta_version"), "delta_version").alias("s"))
    return {r["segment_id"]: (r["s"]["size"], r["s"]["delta_version"]) for r in latest.collect()}
