"""lakehouse maintain: many small commits become few files, queries answer the same, and a retention
shorter than the promised time-travel window is refused."""

from datetime import timedelta

from click.testing import CliRunner

from jobs.cli import cli
from jobs.runtime.tables import SILVER_EVENTS_SCHEMA, read_table
from jobs.tools.maintain import maintain
from tests.jobs.conftest import T0


def test_many_small_runs_compact_to_few_files_with_the_same_answers(spark, make_settings, write_rows, cart_event):
    settings = make_settings()
    naive = T0.replace(tzinfo=None)
    for run in range(12):  # twelve small incremental runs, two events each, on one day
        write_rows(settings, "silver.events",
                   [cart_event(run * 2 + i, f"C{run % 5}", naive - timedelta(minutes=run * 2 + i)) for i in range(2)],
                   SILVER_EVENTS_SCHEMA)
    query = lambda: sorted(tuple(r) for r in read_table(spark, settings.lakehouse.root, "silver.events")  # noqa: E731
                           .groupBy("customer_id").count().collect())
    before = query()

    [care] = maintain(spark, settings, "silver.events")

    assert care.files_before >= 12 and care.files_after == 1
    assert care.zorder == ("customer_id",) and care.retention_hours == 720
    assert query() == before


def test_a_retention_shorter_than_the_time_travel_window_is_refused(tmp_path):
    result = CliRunner().invoke(cli, ["--set", "maintenance.retention_hours={gold.segment_membership: 48}",
                                      "maintain"])  # the window is 30 days by default
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: --set maintenance.retention_hours: retention_hours.gold.segment_membership 48 is shorter than "
        "the time-travel window (30 days = 720 h, time_travel_days)")
