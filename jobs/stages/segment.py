"""Gold segments: every segment's membership as of a time, versioned by Delta commits.

All segments are judged in one pass over the features; the same join against the previous
membership gives the new membership (``entered_at`` kept by those who stay) and each segment's
size, entered and exited. A run that changes nobody's membership makes no commit; every run is
recorded in ``ops.job_runs`` (``ops.segment_runs`` is a view of it), so any past membership is
readable by version or time, and any two versions can be diffed.
"""

from __future__ import annotations

from datetime import datetime

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from jobs.rules.segments import FEATURE_TYPES, Segment, check_sql, load_segments, rules_hash
from jobs.runtime.errors import InputError
from jobs.runtime.runlog import StageResult, previous_outcome, run_stage
from jobs.runtime.settings import Settings, rules_dir
from jobs.runtime.tables import (
    current_version,
    overwrite,
    read_or_empty,
    spec,
    table_path,
)
from jobs.stages.features import FEATURES, as_utc, features_as_of, features_stage
from transforms.bronze import conform_to
from transforms.segments import change_counts, compare_membership, compile_condition, members

MEMBERSHIP = "gold.segment_membership"
SEGMENT_RUNS = "ops.segment_runs"


def conditions(segments: list[Segment], as_of: datetime) -> list[tuple[str, Column]]:
    return [
        (s.id, compile_condition(s.where, FEATURE_TYPES, as_of) if s.where is not None
         else F.coalesce(F.expr(s.sql), F.lit(False)))
        for s in segments
    ]


def validated_segments(spark: SparkSession, settings: Settings) -> list[Segment]:
    segments = load_segments(rules_dir(settings))
    check_sql(spark, segments)
    return segments


def run_segments(spark: SparkSession, settings: Settings, as_of: datetime | None = None) -> StageResult:
    """``lakehouse segment``: one stage, recorded."""
    return run_stage(spark, settings.lakehouse.root, settings.env, "segment",
                     lambda stage: segment_stage(spark, settings, as_of, stage))


def segment_stage(spark: SparkSession, settings: Settings, as_of: datetime | None, stage: StageResult,
                  features_ready: bool = False) -> None:
    """Evaluate every segment on the features as of ``as_of`` and write membership in one commit.

    Without ``as_of`` the features' own as_of is used; with one that differs from theirs, the
    features are computed for it first (unless ``features_ready``: the run just did)."""
    root = settings.lakehouse.root
    segments = validated_segments(spark, settings)
    current_as_of = features_as_of(spark, root)
    if as_of is None:
        if current_as_of is None:
            raise InputError("no customer features yet: run `lakehouse features` or give --as-of")
        as_of = current_as_of
    elif not features_ready and (current_as_of is None or as_utc(current_as_of) != as_utc(as_of)):
        computed = StageResult("features", stage.run_id)
        features_stage(spark, settings, as_of, computed)
        stage.outcomes.update(computed.outcomes)
    as_of = as_utc(as_of)
    digest = rules_hash(segments)
    path = table_path(root, MEMBERSHIP)  # created by its first write
    inputs = {"features": current_version(spark, table_path(root, FEATURES)), "as_of": str(as_of),
              "rules_hash": digest}
    previous = previous_outcome(spark, root, "segment", path, inputs)
    if previous is not None:  # judged on the same features, time and rules: nobody moves
        counted = {sid: (size, 0, 0) for sid, size in previous["sizes"].items()}
    else:
        counted = _judge(spark, root, segments, as_of, stage, digest, inputs)
    changes = [(s.id, *counted.get(s.id, (0, 0, 0))) for s in segments]
    changes += [(k, *v) for k, v in sorted(counted.items()) if k not in {s.id for s in segments}]
    stage.segments = changes
    stage.as_of, stage.rules_hash = as_of, digest
    stage.rows_in = len(segments)
    stage.rows_out = sum(size for _, size, _, _ in changes)
    stage.versions[MEMBERSHIP] = current_version(spark, path)
    stage.metrics.update({f"size.{sid}": size for sid, size, _, _ in changes})
    stage.outcomes["segment"] = {"inputs": inputs, "version": stage.versions[MEMBERSHIP],
                     "sizes": {sid: size for sid, (size, _, _) in counted.items()}}


def _judge(spark: SparkSession, root: str, segments: list[Segment], as_of: datetime, stage: StageResult,
           digest: str, inputs: dict[str, object]) -> dict[str, tuple[int, int, int]]:
    """Every segment in one pass; the membership is rewritten (one commit) only if someone moved."""
    path = table_path(root, MEMBERSHIP)
    features = spark.read.format("delta").load(table_path(root, FEATURES)).withColumn(
        "as_of", F.lit(as_of).cast("timestamp"))  # unchanged features stand for this as_of too
    previous = read_or_empty(spark, root, MEMBERSHIP)
    compared = features.transform(members(conditions(segments, as_of))).transform(
        compare_membership(previous, as_of)).persist()
    try:
        counted = {r["segment_id"]: (r["size"], r["entered"], r["exited"])
                   for r in change_counts(compared).collect()}  # one row per segment
        changed = any(entered or exited for _, entered, exited in counted.values())
        if changed or current_version(spark, path) < 0:  # the first run writes, even nobody
            current = (compared.where("_is").withColumn("as_of", F.lit(as_of).cast("timestamp"))
                       .withColumn("run_id", F.lit(stage.run_id)).transform(conform_to(spec(MEMBERSHIP).schema)))
            overwrite(current, root, MEMBERSHIP, metadata={
                "run_id": stage.run_id, "as_of": str(as_of), "rules_hash": digest, "inputs": inputs,
                "sizes": {sid: size for sid, (size, _, _) in counted.items()}})
    finally:
        compared.unpersist()
    return counted


# -- reading membership ---------------------------------------------------------------------------
def membership_at(spark: SparkSession, root: str, segment_id: str, version: int | None = None,
                  timestamp: datetime | None = None) -> DataFrame:
    """A segment's members as of a Delta version or a timestamp (time travel); latest otherwise."""
    path = table_path(root, MEMBERSHIP)
    if current_version(spark, path) < 0:
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
        .select("delta_version", "as_of", "size", "entered", "exited", "run_id", "rules_hash", "recorded_at")
        .orderBy("recorded_at", "delta_version")
        .collect()
    )


def latest_sizes(spark: SparkSession, root: str) -> dict[str, tuple[int, int]]:
    """segment_id -> (size, version) of the latest segment run."""
    runs = read_or_empty(spark, root, SEGMENT_RUNS)
    latest = runs.groupBy("segment_id").agg(
        F.max_by(F.struct("size", "delta_version"), F.struct("recorded_at", "delta_version")).alias("s"))
    return {r["segment_id"]: (r["s"]["size"], r["s"]["delta_version"]) for r in latest.collect()}
