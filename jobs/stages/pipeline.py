"""``lakehouse run``: every stage in order in one Spark application, stopping at the first failure."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from pyspark.sql import SparkSession

from jobs.runtime.errors import LakehouseError
from jobs.runtime.runlog import job_run
from jobs.runtime.settings import Settings


@dataclass
class StageResult:
    stage: str
    rows_in: int = 0
    rows_out: int = 0
    rejected: int = 0
    seconds: float = 0.0
    versions: dict[str, int] = field(default_factory=dict)
    segments: list[tuple[str, int, int, int]] = field(default_factory=list)  # id, size, entered, exited


class StageFailed(LakehouseError):
    """A stage failed; the message names it. Exit code 1: the input may be fine, the run is not."""

    exit_code = 1


def _ingest(spark: SparkSession, settings: Settings, as_of: datetime, stage: StageResult) -> None:
    from jobs.stages.ingest import ingest

    for kind in ("events", "crm"):
        for result in ingest(spark, settings, kind):
            stage.rows_in += result.rows
            stage.rows_out += result.rows
            if result.table_version is not None:
                stage.versions[result.table] = result.table_version


def _cleanse(spark: SparkSession, settings: Settings, as_of: datetime, stage: StageResult) -> None:
    from jobs.stages.cleanse import cleanse

    for result in cleanse(spark, settings):
        stage.rows_in += result.bronze_rows
        stage.rows_out += result.silver_rows
        stage.rejected += result.rejected_rows


def _features(spark: SparkSession, settings: Settings, as_of: datetime, stage: StageResult) -> None:
    from jobs.stages.gold import build_features

    result = build_features(spark, settings, as_of)
    stage.rows_out = result.customers
    stage.versions["gold.customer_features"] = result.version


def _segment(spark: SparkSession, settings: Settings, as_of: datetime, stage: StageResult) -> None:
    from jobs.stages.gold import run_segments

    result = run_segments(spark, settings, as_of)
    stage.rows_in = len(result.changes)
    stage.rows_out = sum(size for _, size, _, _ in result.changes)
    stage.versions["gold.segment_membership"] = result.version
    stage.segments = result.changes


STAGES: tuple[tuple[str, Callable[[SparkSession, Settings, datetime, StageResult], None]], ...] = (
    ("ingest", _ingest),
    ("cleanse", _cleanse),
    ("features", _features),
    ("segment", _segment),
)


def _sync_stage(name: str) -> Callable[[SparkSession, Settings, datetime, StageResult], None]:
    def stage_fn(spark: SparkSession, settings: Settings, as_of: datetime, stage: StageResult) -> None:
        from jobs.stages.sync import sync

        result = sync(spark, settings, name)
        stage.rows_in = sum(s.adds + s.removes + s.updates for s in result.segments)
        stage.rows_out = stage.rows_in - sum(s.failed for s in result.segments)
        stage.rejected = sum(s.failed for s in result.segments)

    return stage_fn


def run_pipeline(
    spark: SparkSession, settings: Settings, as_of: datetime, sync_to: tuple[str, ...] = ()
) -> list[StageResult]:
    """ingest -> cleanse -> features -> segment (-> sync to each destination); a failure stops
    the run and names its stage.

    The run is one row (job ``run``) in ``ops.job_runs``; each stage also records its own.
    """
    results: list[StageResult] = []
    with job_run(spark, settings.lakehouse.root, "run", settings.env) as run:
        from jobs.destinations import destination

        for name in sync_to:
            destination(settings, name)  # an unknown destination fails before any stage runs
        stages = [*STAGES, *[(f"sync:{name}", _sync_stage(name)) for name in sync_to]]
        for name, stage_fn in stages:
            stage = StageResult(name)
            started = time.perf_counter()
            try:
                stage_fn(spark, settings, as_of, stage)
            except LakehouseError as exc:
                raise type(exc)(f"stage {name} failed: {exc}") from None
            except Exception as exc:
                raise StageFailed(f"stage {name} failed: {type(exc).__name__}: {exc}") from exc
            stage.seconds = time.perf_counter() - started
            results.append(stage)
        first = results[0]
        run.rows_in = first.rows_in
        run.rows_out = next(s.rows_out for s in results if s.stage == "segment")
        run.rows_rejected = sum(s.rejected for s in results)
        run.delta_versions = {k: v for s in results for k, v in s.versions.items()}
        run.metrics = {f"ms.{s.stage}": int(s.seconds * 1000) for s in results}
    return results
