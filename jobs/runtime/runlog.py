"""What every command records about itself, in one commit: ``ops.job_runs``.

A command is a :class:`Run` made of stages (``ingest``, ``cleanse``, ``features``, ``segment``,
``sync:<destination>``, ...). Each stage is a :class:`StageResult`: rows in and out, seconds, the
Spark jobs it ran (counted by a job tag, which the jobs of its streaming queries inherit), the
Delta commits it made per table (counted by the write functions of :mod:`jobs.runtime.tables`),
data-quality results, segment and sync summaries. When the command ends — succeeded or failed
— all its rows are appended to ``ops.job_runs`` in a single commit; ``ops.dq_results`` and
``ops.segment_runs`` are views of them.

That commit's metadata also carries, per step, the *outcome* of the last successful run of
each stage that declared one (what it was computed from and the version of the table it left), so
a stage whose inputs have not changed since — even one that wrote nothing — can skip its work
(:func:`previous_outcome`).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pyspark.sql import SparkSession

from jobs.runtime.pii import mask

LOG = logging.getLogger("jobs.run")

JOB_RUNS = "ops.job_runs"


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_run_id(now: datetime | None = None) -> str:
    """Sortable and unique: ``20261129T193012Z-3f9a1c``."""
    now = now or utc_now()
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def one_line(exc: BaseException, limit: int = 2000) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class StageResult:
    """One stage of a command: what went in and out, what it cost, what it decided."""

    stage: str
    run_id: str
    started_at: datetime = field(default_factory=utc_now)
    ended_at: datetime | None = None
    status: str = "running"  # until the stage ends: succeeded | failed
    rows_in: int = 0
    rows_out: int = 0
    rejected: int = 0
    seconds: float = 0.0
    spark_jobs: int = 0
    commits: Counter = field(default_factory=Counter)  # table -> Delta commits made
    versions: dict[str, int] = field(default_factory=dict)  # table -> version after the stage
    metrics: dict[str, int] = field(default_factory=dict)
    dq: list[tuple[str, str, str, str, int, int]] = field(default_factory=list)
    segments: list[tuple[str, int, int, int]] = field(default_factory=list)  # id, size, entered, exited
    sync: list[tuple[str, int, int, int, int, int, int | None]] = field(default_factory=list)
    as_of: datetime | None = None
    rules_hash: str | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # for the terminal, not stored
    # Per step (a stage's own name, or a step it ran for itself): what it computed from, the version
    # of its output table it left, what a skipped rerun reports (JSON). Kept in ops.job_runs' commit.
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def data_commits(self) -> int:
        return sum(n for table, n in self.commits.items() if not table.startswith("ops."))

    def as_row(self, job: str | None, env: str) -> tuple:
        return (
            self.run_id, job or self.stage, env, self.started_at, self.ended_at, self.status, self.rows_in,
            self.rows_out, self.rejected, dict(self.versions), dict(self.metrics), self.error,
            round(self.seconds, 3), self.spark_jobs, dict(self.commits), self.as_of, self.rules_hash,
            [tuple(d) for d in self.dq], [tuple(s) for s in self.segments], [tuple(s) for s in self.sync],
        )


_ACTIVE: list[StageResult] = []


def note_commit(table: str, count: int = 1) -> None:
    """A write made ``count`` commits to ``table``: charged to the stage running now, if any.
    (Stream micro-batches run on another thread; a process runs one stage at a time.)"""
    if _ACTIVE:
        _ACTIVE[-1].commits[table] += count


def _jobs_tagged(spark: SparkSession, tag: str) -> int:
    tracker = spark.sparkContext._jsc.sc().statusTracker()  # type: ignore[union-attr]
    return len(tracker.getJobIdsForTag(tag))


@dataclass
class Run:
    """A command: its stages, recorded together when it ends."""

    spark: SparkSession
    root: str
    job: str
    env: str
    run_id: str = field(default_factory=new_run_id)
    stages: list[StageResult] = field(default_factory=list)
    started_at: datetime = field(default_factory=utc_now)

    @contextmanager
    def stage(self, name: str) -> Iterator[StageResult]:
        """Time a stage, count its Spark jobs and commits; a failure marks it failed and propagates."""
        result = StageResult(name, self.run_id)
        self.stages.append(result)
        sc = self.spark.sparkContext
        tag = f"lakehouse-{self.run_id}-{len(self.stages)}"
        sc.addJobTag(tag)
        _ACTIVE.append(result)
        started = time.perf_counter()
        LOG.info("stage %s started", name, extra={"run_id": self.run_id, "job": self.job, "stage": name})
        try:
            yield result
            result.status = "succeeded"
        except BaseException as exc:
            result.status, result.error = "failed", mask(one_line(exc))
            raise
        finally:
            _ACTIVE.pop()
            sc.removeJobTag(tag)
            result.seconds = time.perf_counter() - started
            result.ended_at = utc_now()
            result.spark_jobs = _jobs_tagged(self.spark, tag)
            # INFO either way: a failure reaches the operator as the command's one error line.
            LOG.info("stage %s %s: %s rows in, %s out, %s rejected, %.1f s", name, result.status, result.rows_in,
                    result.rows_out, result.rejected, result.seconds,
                    extra={"run_id": self.run_id, "job": self.job, "stage": name, "status": result.status,
                           "rows_in": result.rows_in, "rows_out": result.rows_out, "rejected": result.rejected,
                           "seconds": round(result.seconds, 3), "spark_jobs": result.spark_jobs,
                           "commits": dict(result.commits), "error": result.error})

    def rows(self, failure: BaseException | None) -> list[tuple]:
        rows = [s.as_row(None, self.env) for s in self.stages]
        if len(self.stages) == 1 and self.stages[0].stage == self.job:
            return rows
        total = StageResult(self.job, self.run_id, started_at=self.started_at, ended_at=utc_now(),
                            status="failed" if failure else "succeeded")
        total.error = mask(one_line(failure)) if failure else None
        total.seconds = sum(s.seconds for s in self.stages)
        total.spark_jobs = sum(s.spark_jobs for s in self.stages)
        for s in self.stages:
            total.commits.update(s.commits)
            total.versions.update(s.versions)
            total.rejected += s.rejected
        if self.stages:
            total.rows_in = self.stages[0].rows_in
            total.rows_out = self.stages[-1].rows_out
        total.metrics = {f"ms.{s.stage}": int(s.seconds * 1000) for s in self.stages}
        return [*rows, total.as_row(self.job, self.env)]


@contextmanager
def recorded(spark: SparkSession, root: str, job: str, env: str, run_id: str | None = None,
             quiet_when_idle: bool = False) -> Iterator[Run]:
    """A command's :class:`Run`, holding the lakehouse's writer lease (:mod:`jobs.runtime.lease`)
    throughout; its rows are appended to ``ops.job_runs`` in one commit when it ends, whether it
    succeeded or failed (a driver killed outright records nothing here, but every data commit it
    made carries its run id). A command refused the lease records nothing; with
    ``quiet_when_idle`` (a streaming tick), neither does one that succeeded without a commit."""
    from jobs.runtime.lease import writer_lease

    run = Run(spark, root, job, env, **({"run_id": run_id} if run_id else {}))
    with writer_lease(spark, root, run.run_id, job):
        failure: BaseException | None = None
        try:
            yield run
        except BaseException as exc:
            failure = exc
            raise
        finally:
            idle = failure is None and not any(stage.commits for stage in run.stages)
            if not (quiet_when_idle and idle):
                _record(spark, root, run, failure)
            from jobs.tools.catalog import keep_registered

            keep_registered(spark, root)


def recorded_outcomes(spark: SparkSession, root: str) -> dict[str, dict[str, Any]]:
    """Per step, the outcome of its last successful run, from the last ``ops.job_runs`` commit."""
    from jobs.runtime.tables import last_commit_metadata, table_path

    return dict(last_commit_metadata(spark, table_path(root, JOB_RUNS)).get("outcomes", {}))


def ran_lately(spark: SparkSession, root: str, step: str, at: datetime, within: timedelta) -> bool:
    """Whether ``step`` last succeeded (its recorded outcome's ``as_of``) less than ``within`` before ``at``."""
    last = (recorded_outcomes(spark, root).get(step) or {}).get("as_of")
    return bool(last) and timedelta(0) <= at - datetime.fromisoformat(str(last)).astimezone(UTC) < within


def _record(spark: SparkSession, root: str, run: Run, failure: BaseException | None) -> None:
    from jobs.runtime.tables import append, spec

    outcomes = recorded_outcomes(spark, root)
    for stage in run.stages:
        outcomes.update(stage.outcomes if stage.status == "succeeded" else {})
    append(spark.createDataFrame(run.rows(failure), spec(JOB_RUNS).schema), root, JOB_RUNS,
           metadata={"run_id": run.run_id, "outcomes": outcomes})


def previous_outcome(spark: SparkSession, root: str, step: str, path: str, inputs: dict[str, Any]
                     ) -> dict[str, Any] | None:
    """The outcome the last run of ``step`` recorded if it was computed from exactly ``inputs``
    and no data reached its output table (at ``path``) since the version that run left; else None.

    Read from the output table's latest commit (the run wrote it) or, when that run wrote nothing
    (its result equalled what the table held), from the last ``ops.job_runs`` commit: two log
    files, no Spark job."""
    from jobs.runtime.tables import last_data_commit

    version, own = last_data_commit(spark, path)
    if own.get("inputs") == inputs:
        return own
    recorded = recorded_outcomes(spark, root).get(step)
    if recorded and recorded.get("inputs") == inputs and still_describes(recorded, version):
        return recorded
    return None


def still_describes(outcome: dict[str, Any] | None, data_version: int) -> bool:
    """Whether ``outcome`` (with the output table's ``version`` it left) still describes a table
    whose last data change is ``data_version`` (a compaction since changes no data)."""
    return bool(outcome) and outcome.get("version") is not None and data_version <= int(outcome["version"])


@contextmanager
def job_run(spark: SparkSession, root: str, job: str, env: str) -> Iterator[StageResult]:
    """A command of one stage named ``job``: :func:`recorded` and :meth:`Run.stage` in one."""
    with recorded(spark, root, job, env) as run, run.stage(job) as stage:
        yield stage


def run_stage(spark: SparkSession, root: str, env: str, name: str,
              body: Callable[[StageResult], object]) -> StageResult:
    """A command of one stage: ``body(stage)`` recorded as one ``ops.job_runs`` row."""
    with recorded(spark, root, name, env) as run, run.stage(name) as stage:
        body(stage)
    return stage
