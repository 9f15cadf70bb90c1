"""gold.product_recommendations as of a time: later events do not move it, time travel returns it."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobs.runtime.runlog import run_stage
from jobs.runtime.tables import PRODUCTS_SCHEMA, SILVER_EVENTS_SCHEMA, read_table
from jobs.stages.recommend import RECOMMENDATIONS, build_recommendations, recommend_stage
from tests.jobs.conftest import T0


def _view(i, customer, product, ts, kind="product_view", session=None):
    naive = ts.replace(tzinfo=None)
    return {"event_id": f"v{i}", "customer_id": customer, "event_type": kind, "event_ts": naive,
            "event_date": naive.date(), "session_id": session or f"s-{customer}", "product_id": product,
            "category": "shoes"}


def _rows(spark, settings, version=None):
    table = read_table(spark, settings.lakehouse.root, RECOMMENDATIONS, version)
    return sorted((r["customer_id"], r["rank"], r["product_id"], r["reason"]) for r in table.collect())


@pytest.mark.slow
def test_recommendations_as_of_a_time_stay_put_when_later_events_land(spark, lakehouse, write_rows):
    settings = lakehouse
    write_rows(settings, "silver.events", [
        _view(1, "C1", "P1", T0 - timedelta(hours=2)), _view(2, "C1", "P2", T0 - timedelta(hours=2)),
        _view(3, "C2", "P2", T0 - timedelta(hours=3)), _view(4, "C2", "P3", T0 - timedelta(hours=3)),
    ], SILVER_EVENTS_SCHEMA)
    first = build_recommendations(spark, settings, T0)
    before = _rows(spark, settings)
    assert ("C1", 1, "P1", "co_occurrence") in before and ("C1", 3, "P3", "co_occurrence") in before
    assert {r[0] for r in before} == {f"C{i}" for i in range(1, 7)}  # every customer with features

    write_rows(settings, "silver.events", [_view(5, "C1", "P3", T0 + timedelta(hours=1), kind="purchase")],
               SILVER_EVENTS_SCHEMA)
    again = build_recommendations(spark, settings, T0)
    assert _rows(spark, settings) == before
    assert again.versions[RECOMMENDATIONS] == first.versions[RECOMMENDATIONS]  # the same rows: no commit

    later = build_recommendations(spark, settings, T0 + timedelta(hours=2))
    assert later.versions[RECOMMENDATIONS] == first.versions[RECOMMENDATIONS] + 1
    assert not any(r[0] == "C1" and r[2] == "P3" for r in _rows(spark, settings))  # bought: not shown
    assert _rows(spark, settings, first.versions[RECOMMENDATIONS]) == before  # time travel

    def scheduled(as_of):  # the stage as lakehouse run and stream run it
        return run_stage(spark, settings.lakehouse.root, settings.env, "recommend",
                         lambda stage: recommend_stage(spark, settings, as_of, stage, keep_recent=True))

    write_rows(settings, "silver.products", [{"product_id": "P2", "in_stock": False, "source": "catalog"}],
               PRODUCTS_SCHEMA)
    kept = scheduled(T0 + timedelta(hours=2, minutes=59))  # within recommendations.refresh_minutes (60)
    assert (kept.spark_jobs, sum(kept.commits.values()), kept.rows_out) == (0, 0, len(_rows(spark, settings)))
    assert "kept" in kept.details
    refreshed = scheduled(T0 + timedelta(hours=3))
    assert "kept" not in refreshed.details
    assert refreshed.versions[RECOMMENDATIONS] == later.versions[RECOMMENDATIONS] + 1
    assert not any(r[2] == "P2" for r in _rows(spark, settings))  # out of stock: never recommended
