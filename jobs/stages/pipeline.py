"""``lakehouse run``: every stage in order in one Spark application, stopping at the first failure."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from pyspark.sql import SparkSession

from jobs.runtime.errors import LakehouseError
from jobs.runtime.runlog import Run, StageResult, recorded
from jobs.runtime.settings import Settings

StageFn = Callable[[SparkSession, Settings, datetime, StageResult], None]


class StageFailed(LakehouseError):
    """A stage failed; the message names it. Exit code 1: the input may be fine, the run is not."""

    exit_code = 1


def _ingest(spark: SparkSession, settings: Settings, as_of: datetime, stage: StageResult) -> None:
    from jobs.stages.ingest import ingest_stage

    ingest_stage(spark, settings, stage)


def _cleanse(spark: SparkSession, settings: Settings, as_of: datetime, stage: StageResult) -> None:
    from jobs.stages.cleanse import cleanse_stage

    cleanse_stage(spark, settings, stage)


def _cleanse_tick(spark: SparkSession, settings: Settings, as_of: datetime, stage: StageResult) -> None:
    from jobs.stages.cleanse import cleanse_stage

    cleanse_stage(spark, settings, stage, tick=as_of)


def _audit(spark: SparkSession, settings: Settings, as_of: datetime, stage: StageResult) -> None:
    from jobs.stages.audit import audit_stage

    audit_stage(spark, settings, as_of, stage, scheduled=True)


def _features(spark: SparkSession, settings: Settings, as_of: datetime, stage: StageResult) -> None:
    from jobs.stages.features import features_stage

    features_stage(spark, settings, as_of, stage)


def _segment(spark: SparkSession, settings: Settings, as_of: datetime, stage: StageResult) -> None:
    from jobs.stages.segment import segment_stage

    segment_stage(spark, settings, as_of, stage, features_ready=True)


def _recommend(spark: SparkSession, settings: Settings, as_of: datetime, stage: StageResult) -> None:
    from jobs.stages.recommend import recommend_stage

    recommend_stage(spark, settings, as_of, stage, keep_recent=True)


STAGES: tuple[tuple[str, StageFn], ...] = (
    ("ingest", _ingest),
    ("cleanse", _cleanse),
    ("audit", _audit),
    ("features", _features),
    ("segment", _segment),
    ("recommend", _recommend),
)


def _sync_stage(name: str, allow_large_change: bool) -> StageFn:
    def stage_fn(spark: SparkSession, settings: Settings, as_of: datetime, stage: StageResult) -> None:
        from jobs.stages.sync import sync_stage

        sync_stage(spark, settings, name, stage, allow_large_change=allow_large_change)

    return stage_fn


def run_stages(run: Run, settings: Settings, as_of: datetime, sync_to: tuple[str, ...] = (),
               allow_large_change: bool = False, tick: bool = False) -> list[StageResult]:
    """ingest -> cleanse -> audit -> features -> segment -> recommend (-> sync to each destination)
    as stages of ``run``; a failure stops the run and names its stage. ``tick``: a stream's tick
    (products seen only in events are completed on their own cadence)."""
    from jobs.destinations import destination

    for name in sync_to:
        destination(settings, name)  # an unknown destination fails before any stage runs
    chosen = [(name, _cleanse_tick if tick and name == "cleanse" else fn) for name, fn in STAGES]
    stages = [*chosen, *[(f"sync:{name}", _sync_stage(name, allow_large_change)) for name in sync_to]]
    for name, stage_fn in stages:
        try:
            with run.stage(name) as stage:
                stage_fn(run.spark, settings, as_of, stage)
        except LakehouseError as exc:
            raise type(exc)(f"stage {name} failed: {exc}") from None
        except Exception as exc:
            raise StageFailed(f"stage {name} failed: {type(exc).__name__}: {exc}") from exc
    return run.stages


def run_pipeline(spark: SparkSession, settings: Settings, as_of: datetime,
                 sync_to: tuple[str, ...] = (), allow_large_change: bool = False, job: str = "run"
                 ) -> list[StageResult]:
    """The whole pipeline as one command (``job`` ``run``): one ``ops.job_runs`` commit at the end
    (for a ``stream`` tick, only when it committed something or failed)."""
    with recorded(spark, settings.lakehouse.root, job, settings.env, quiet_when_idle=job == "stream") as run:
        return run_stages(run, settings, as_of, sync_to, allow_large_change, tick=job == "stream")
