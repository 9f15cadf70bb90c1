"""Audits of the event streams: is each source still sending, and in its usual volume?

Configured per source under ``sources:`` in ``rules/quality.yaml`` and judged at the run's time
``T`` from ``silver.events`` (reading only the days involved):

- **freshness** (``freshness_hours: N``): the source's newest event at or before ``T`` is at
  most N hours old;
- **volume** (``volume_band: b``, ``weeks: w``): the events of the last full hour before ``T``
  are within ``mean × (1 ± b)``, the mean being that of the same hour of the ``w`` weeks before
  (a week without events counts 0; no events in any of them: nothing to compare, not judged).

Each result is a row of the stage's data-quality results (``ops.dq_results``, table
``source:<name>``, its figures in ``expression``) and metrics; an audit with action ``fail``
that does not hold fails the stage (exit 1) after every audit is recorded. As a stage of
``lakehouse run`` and ``stream`` (after cleanse) the audits are judged at most every 15 minutes;
``lakehouse quality audit`` judges them whenever it is run.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs.rules import SourceAudit, load_quality_rules
from jobs.runtime.errors import ConfigError
from jobs.runtime.runlog import StageResult, ran_lately, run_stage
from jobs.runtime.settings import Settings, rules_dir
from jobs.runtime.tables import read_or_empty
from jobs.stages.cleanse import DataQualityFailure
from jobs.stages.features import as_utc

HOUR = timedelta(hours=1)
SCHEDULED_EVERY = timedelta(minutes=15)


def _days(start: datetime, end: datetime) -> list:
    days, day = [], start.date()
    while day <= end.date():
        days.append(day)
        day += timedelta(days=1)
    return days


def _freshness(spark: SparkSession, settings: Settings, source: str, audit: SourceAudit, at: datetime
               ) -> tuple[bool, str, int]:
    assert audit.freshness_hours is not None
    since = at - timedelta(hours=audit.freshness_hours)
    events = read_or_empty(spark, settings.lakehouse.root, "silver.events")
    row = (events.where(F.col("event_date").isin(_days(since, at)) & (F.col("source") == source)
                        & (F.col("event_ts") <= F.lit(at.replace(tzinfo=None))))
           .agg(F.max("event_ts").alias("newest"), F.count(F.lit(1)).alias("n")).first())
    newest = row["newest"]
    if newest is None or as_utc(newest) < since:
        return False, f"no event in the {audit.freshness_hours:g} h before {at.isoformat()}", 0
    age = (at - as_utc(newest)).total_seconds() / 3600
    return True, f"newest event {age:.1f} h before {at.isoformat()} (limit {audit.freshness_hours:g} h)", row["n"]


def _volume(spark: SparkSession, settings: Settings, source: str, audit: SourceAudit, at: datetime
            ) -> tuple[bool | None, str, int]:
    assert audit.volume_band is not None
    end = at.replace(minute=0, second=0, microsecond=0)
    windows = [(end - HOUR - timedelta(weeks=k), end - timedelta(weeks=k)) for k in range(audit.weeks + 1)]
    events = read_or_empty(spark, settings.lakehouse.root, "silver.events")
    days = sorted({d for start, stop in windows for d in _days(start, stop - timedelta(microseconds=1))})
    week = F.lit(None)
    for k, (start, stop) in enumerate(windows):
        inside = (F.col("event_ts") >= F.lit(start.replace(tzinfo=None))) & (
            F.col("event_ts") < F.lit(stop.replace(tzinfo=None)))
        week = F.when(inside, F.lit(k)).otherwise(week)
    counts = {r["week"]: r["count"] for r in events.where(
        F.col("event_date").isin(days) & (F.col("source") == source)).select(week.alias("week"))
        .where(F.col("week").isNotNull()).groupBy("week").count().collect()}  # at most weeks + 1 rows
    current = counts.get(0, 0)
    mean = sum(counts.get(k, 0) for k in range(1, audit.weeks + 1)) / audit.weeks
    hour = f"{windows[0][0]:%Y-%m-%d %H:00}-{windows[0][1]:%H:00} UTC"
    if mean == 0:
        return None, f"{current} events in {hour}; none in that hour of the {audit.weeks} weeks before", current
    low, high = mean * (1 - audit.volume_band), mean * (1 + audit.volume_band)
    held = low <= current <= high
    return held, (f"{current} events in {hour}, expected {low:.0f}-{high:.0f} (mean {mean:.1f} of the same hour "
                  f"in {audit.weeks} weeks, ±{audit.volume_band:.0%})"), current


def audit_stage(spark: SparkSession, settings: Settings, at: datetime, stage: StageResult,
                scheduled: bool = False) -> None:
    """Judge every configured audit as of ``at``; record each; fail after them if a ``fail`` one
    did not hold. ``scheduled`` (run, stream): not again within :data:`SCHEDULED_EVERY` of the
    last judgement (a five-second tick need not pay for it)."""
    rules = rules_dir(settings)
    audits = load_quality_rules(rules).sources
    at = as_utc(at)
    if not audits or (scheduled and ran_lately(spark, settings.lakehouse.root, "audit", at, SCHEDULED_EVERY)):
        return
    failed_hard = []
    for source, checks in sorted(audits.items()):
        if source not in settings.sources or settings.sources[source].kind != "events":
            known = ", ".join(sorted(n for n, s in settings.sources.items() if s.kind == "events"))
            raise ConfigError(f"{rules / 'quality.yaml'}: sources: {source!r} is not an event source (known: {known})")
        for audit in checks:
            judge = _freshness if audit.freshness_hours is not None else _volume
            held, figures, observed = judge(spark, settings, source, audit, at)
            stage.dq.append((f"source:{source}", audit.name, audit.action, figures, int(held is False),
                             int(held is not None)))
            stage.metrics[f"audit.{audit.name}.observed"] = observed
            stage.metrics[f"audit.{audit.name}.held"] = -1 if held is None else int(held)
            if held is False:
                stage.details.setdefault("warnings", []).append(f"audit {audit.name} ({source}): {figures}")
                if audit.action == "fail":
                    failed_hard.append(f"{audit.name} ({source}): {figures}")
    stage.as_of = at
    stage.outcomes["audit"] = {"as_of": at.isoformat()}
    if failed_hard:
        raise DataQualityFailure(f"source audit(s) with action fail did not hold: {'; '.join(failed_hard)}")


def run_audits(spark: SparkSession, settings: Settings, at: datetime) -> StageResult:
    """``lakehouse quality audit``: one stage, recorded."""
    return run_stage(spark, settings.lakehouse.root, settings.env, "audit",
                     lambda stage: audit_stage(spark, settings, at, stage))
