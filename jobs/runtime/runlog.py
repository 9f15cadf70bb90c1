"""``ops.job_runs``: one row per job run, written when it starts and completed when it ends."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pyspark.sql import SparkSession

from jobs.runtime.pii import mask
from jobs.runtime.tables import append_rows

JOB_RUNS = "ops.job_runs"


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_run_id(now: datetime | None = None) -> str:
    """Sortable and unique: ``20261129T193012Z-3f9a1c``."""
    now = now or utc_now()
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@dataclass
class JobRun:
    run_id: str
    job: str
    env: str
    started_at: datetime
    ended_at: datetime | None = None
    status: str = "running"  # until recorded: succeeded | failed
    rows_in: int = 0
    rows_out: int = 0
    rows_rejected: int = 0
    delta_versions: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def as_row(self) -> tuple:
        return (
            self.run_id, self.job, self.env, self.started_at, self.ended_at, self.status,
            self.rows_in, self.rows_out, self.rows_rejected, dict(self.delta_versions),
            dict(self.metrics), self.error,
        )


def one_line(exc: BaseException, limit: int = 2000) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _record(spark: SparkSession, root: str, run: JobRun) -> None:
    append_rows(spark, root, JOB_RUNS, [run.as_row()])


@contextmanager
def job_run(
    spark: SparkSession, root: str, job: str, env: str, run_id: str | None = None
) -> Iterator[JobRun]:
    """Record a run in ``ops.job_runs`` when it ends, ``succeeded`` or ``failed``.

    The body fills in rows and versions on the yielded :class:`JobRun`; an exception marks the
    run failed with its one-line message and propagates. The table is append-only (a row is
    one cheap commit); a driver killed outright records nothing here, but every Delta commit
    the run made carries its run id in the commit's ``userMetadata``.
    """
    run = JobRun(run_id=run_id or new_run_id(), job=job, env=env, started_at=utc_now())
    try:
        yield run
    except BaseException as exc:
        run.status, run.error, run.ended_at = "failed", mask(one_line(exc)), utc_now()
        _record(spark, root, run)
        raise
    run.status, run.ended_at = "succeeded", utc_now()
    _record(spark, root, run)
