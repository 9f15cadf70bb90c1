"""Source audits: a gap in a source's events and a spike in its hourly volume are caught, with
their figures, as warn or fail expectations."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobs.runtime.runlog import run_stage
from jobs.runtime.tables import SILVER_EVENTS_SCHEMA, read_table
from jobs.stages.audit import audit_stage
from jobs.stages.cleanse import DataQualityFailure
from tests.jobs.conftest import T0

AUDITS = """sources:
  web:
    - name: web_fresh
      freshness_hours: {hours}
      action: {action}
    - name: web_volume
      volume_band: 0.5
      weeks: 3
      action: warn
"""


def _events(start, count, source="web", spacing=timedelta(minutes=2), prefix="e"):
    naive = start.replace(tzinfo=None)
    return [{"event_id": f"{prefix}{naive:%m%d%H}-{i}", "event_ts": naive + i * spacing,
             "event_date": (naive + i * spacing).date(), "source": source, "event_type": "page_view"}
            for i in range(count)]


@pytest.fixture
def audited(spark, make_settings, tmp_path, write_rows):
    def make(hours=24, action="warn", now_count=10):
        rules = tmp_path / "rules"
        rules.mkdir(exist_ok=True)
        (rules / "quality.yaml").write_text(AUDITS.format(hours=hours, action=action))
        settings = make_settings(f"rules_dir={rules}")
        hour = T0 - timedelta(hours=1)  # 11:00-12:00, the last full hour before T0
        rows = [e for k in (1, 2, 3) for e in _events(hour - timedelta(weeks=k), 10 + k - 2, prefix=f"w{k}-")]
        rows += _events(hour, now_count, spacing=timedelta(seconds=90), prefix="now-")
        rows += _events(hour, 50, source="rees46", prefix="other-")  # another source: not counted
        write_rows(settings, "silver.events", rows, SILVER_EVENTS_SCHEMA)
        return settings

    return make


def _judge(spark, settings, at=T0):
    return run_stage(spark, settings.lakehouse.root, settings.env, "audit",
                     lambda stage: audit_stage(spark, settings, at, stage))


def test_a_steady_source_passes_with_its_figures_and_a_run_soon_after_skips_the_audits(spark, audited):
    settings = audited()
    steady = _judge(spark, settings)
    assert [(d[1], d[4], d[5]) for d in steady.dq] == [("web_fresh", 0, 1), ("web_volume", 0, 1)]
    assert steady.dq[0][3] == "newest event 0.8 h before 2026-11-20T12:00:00+00:00 (limit 24 h)"
    assert steady.dq[1][3] == ("10 events in 2026-11-20 11:00-12:00 UTC, expected 5-15 (mean 10.0 of the same hour "
                               "in 3 weeks, ±50%)")
    soon = run_stage(spark, settings.lakehouse.root, settings.env, "audit", lambda stage: audit_stage(
        spark, settings, T0 + timedelta(minutes=10), stage, scheduled=True))  # as lakehouse run and stream do
    assert (soon.dq, soon.spark_jobs) == ([], 0)


def test_a_spike_and_a_gap_are_caught(spark, audited, make_settings):
    settings = audited(now_count=40)
    spiked = _judge(spark, settings)
    assert [(d[1], d[4]) for d in spiked.dq] == [("web_fresh", 0), ("web_volume", 1)]
    assert spiked.details["warnings"] == [
        "audit web_volume (web): 40 events in 2026-11-20 11:00-12:00 UTC, expected 5-15 (mean 10.0 of the same hour "
        "in 3 weeks, ±50%)"]
    later = _judge(spark, settings, T0 + timedelta(hours=30))  # a day and more without an event
    assert [(d[1], d[3], d[4]) for d in later.dq] == [
        ("web_fresh", "no event in the 24 h before 2026-11-21T18:00:00+00:00", 1),
        ("web_volume", "0 events in 2026-11-21 17:00-18:00 UTC; none in that hour of the 3 weeks before", 0)]
    results = read_table(spark, settings.lakehouse.root, "ops.dq_results")
    assert results.where("table = 'source:web' AND expectation = 'web_fresh' AND failed_rows = 1").count() == 1


def test_a_gap_in_a_fail_audit_fails_the_stage_after_recording_it(spark, audited):
    settings = audited(hours=0.1, action="fail")  # the newest event is 0.8 h old
    with pytest.raises(DataQualityFailure, match=r"web_fresh \(web\): no event in the 0.1 h before"):
        _judge(spark, settings)
    failed = read_table(spark, settings.lakehouse.root, "ops.job_runs").first()
    assert failed["status"] == "failed" and [d["expectation"] for d in failed["dq"]] == ["web_fresh", "web_volume"]
