"""Recommendations on a small inline dataset whose scores are worked out by hand.

Sessions in the day before AS_OF (weights: view 1, cart 3, purchase 5):
S1 (C1): P1, P2 viewed      S2 (C2): P1, P3 viewed     S3 (C2): P2, P3 viewed
S4 (anonymous): P1, P2      S5 (C4): P4 carted         S6 (C2): P3 bought
Norms: P1 √3, P2 √3, P3 √27, P4 3. Similarities: P1~P2 2/3, P1~P3 = P2~P3 = 1/9.
Popularity: P3 7, P1 3, P2 3, P4 3. Categories: P1, P2, P4 shoes; P3 bags.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from chispa import assert_approx_df_equality

from jobs.runtime.tables import SILVER_EVENTS_SCHEMA
from transforms.recommendations import (
    RECOMMENDATIONS_SCHEMA,
    RecsConfig,
    hit_rate_and_mrr,
    next_products,
    recommend,
)

AS_OF = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
DAY_BEFORE = AS_OF - timedelta(hours=20)
CATEGORY = {"P1": "shoes", "P2": "shoes", "P3": "bags", "P4": "shoes"}
SESSIONS = [  # (session, customer, anonymous, [(type, product)])
    ("S1", "C1", None, [("product_view", "P1"), ("product_view", "P2")]),
    ("S2", "C2", None, [("product_view", "P1"), ("product_view", "P3")]),
    ("S3", "C2", None, [("product_view", "P2"), ("product_view", "P3")]),
    ("S4", None, "A9", [("product_view", "P1"), ("product_view", "P2")]),
    ("S5", "C4", None, [("add_to_cart", "P4")]),
    ("S6", "C2", None, [("purchase", "P3")]),
]


def _events(spark, extra=()):
    names = SILVER_EVENTS_SCHEMA.fieldNames()
    rows = []
    for session, customer, anonymous, items in SESSIONS:
        for kind, product in items:
            rows.append((session, customer, anonymous, kind, product, DAY_BEFORE + timedelta(minutes=len(rows))))
    rows += list(extra)
    out = []
    for i, (session, customer, anonymous, kind, product, ts) in enumerate(rows):
        row = dict.fromkeys(names)
        row.update(event_id=f"e{i}", session_id=session, customer_id=customer, anonymous_id=anonymous,
                   event_type=kind, product_id=product, category=CATEGORY[product], event_ts=ts.replace(tzinfo=None),
                   event_date=ts.date())
        out.append(row)
    return spark.createDataFrame(out, SILVER_EVENTS_SCHEMA)


def _customers(spark, *ids):
    return spark.createDataFrame([(c,) for c in ids], "customer_id string")


def _expected(spark, rows):
    naive = AS_OF.replace(tzinfo=None)
    return spark.createDataFrame([(*row, naive) for row in rows], RECOMMENDATIONS_SCHEMA)


def _ordered(df):
    return df.orderBy("customer_id", "rank")


TWO_THIRDS, NINTH = 2 / 3, 1 / 9
EXPECTED = [
    # C1 viewed P1, P2: each the other's neighbour (a tie, broken by id); P3 via both; P4 as shoes.
    ("C1", 1, "P1", TWO_THIRDS, "co_occurrence"), ("C1", 2, "P2", TWO_THIRDS, "co_occurrence"),
    ("C1", 3, "P3", 2 * NINTH, "co_occurrence"), ("C1", 4, "P4", 2 * 3.0, "popular_in_category"),
    # C2 bought P3 (weight 5 as a seed, excluded as a product): P1 = P2 = 2/3 + 5/9.
    ("C2", 1, "P1", TWO_THIRDS + 5 * NINTH, "co_occurrence"), ("C2", 2, "P2", TWO_THIRDS + 5 * NINTH, "co_occurrence"),
    ("C2", 3, "P4", 2 * 3.0, "popular_in_category"),
    # C3 has no events: overall popularity.
    ("C3", 1, "P3", 7.0, "popular"), ("C3", 2, "P1", 3.0, "popular"), ("C3", 3, "P2", 3.0, "popular"),
    ("C3", 4, "P4", 3.0, "popular"),
    # C4 carted P4, which shares no session: shoes by popularity x affinity 3, then P3.
    ("C4", 1, "P1", 9.0, "popular_in_category"), ("C4", 2, "P2", 9.0, "popular_in_category"),
    ("C4", 3, "P4", 9.0, "popular_in_category"), ("C4", 4, "P3", 7.0, "popular"),
]


def test_ranks_scores_reasons_exclusions_and_ties(spark):
    recs = _events(spark).transform(recommend(_customers(spark, "C1", "C2", "C3", "C4"), AS_OF, RecsConfig(top_n=4)))
    assert_approx_df_equality(_ordered(recs), _expected(spark, EXPECTED), 1e-9, ignore_nullable=True)


def test_a_seed_recommends_only_its_nearest_neighbours(spark):
    # One neighbour each: P1 -> P2 and P2 -> P1 (2/3), P3 -> P1 (1/9, tied with P2: by id), P4 none.
    # C1 no longer reaches P3 through P1 and P2; C2 reaches P2 only through P1, not through P3.
    recs = _events(spark).transform(recommend(_customers(spark, "C1", "C2"), AS_OF,
                                              RecsConfig(top_n=4, max_similar_products=1)))
    assert_approx_df_equality(_ordered(recs), _expected(spark, [
        ("C1", 1, "P1", TWO_THIRDS, "co_occurrence"), ("C1", 2, "P2", TWO_THIRDS, "co_occurrence"),
        ("C1", 3, "P4", 2 * 3.0, "popular_in_category"), ("C1", 4, "P3", 7.0, "popular"),
        ("C2", 1, "P1", TWO_THIRDS + 5 * NINTH, "co_occurrence"), ("C2", 2, "P2", TWO_THIRDS, "co_occurrence"),
        ("C2", 3, "P4", 2 * 3.0, "popular_in_category"),
    ]), 1e-9, ignore_nullable=True)


def test_later_and_older_events_do_not_count_and_top_n_cuts(spark):
    extra = [("S7", "C3", None, "purchase", "P4", AS_OF + timedelta(minutes=1)),  # after as_of
             ("S8", "C3", None, "purchase", "P1", AS_OF - timedelta(days=31))]  # before the look-back
    recs = _events(spark, extra).transform(recommend(_customers(spark, "C3"), AS_OF, RecsConfig(top_n=2)))
    assert_approx_df_equality(_ordered(recs), _expected(spark, [r for r in EXPECTED if r[0] == "C3" and r[1] <= 2]),
                              1e-9, ignore_nullable=True)


def test_out_of_stock_products_are_never_recommended(spark):
    out_of_stock = spark.createDataFrame([("P1",)], "product_id string")
    recs = _events(spark).transform(recommend(_customers(spark, "C4"), AS_OF, RecsConfig(top_n=4), out_of_stock))
    assert [(r["rank"], r["product_id"], r["reason"]) for r in _ordered(recs).collect()] == [
        (1, "P2", "popular_in_category"), (2, "P4", "popular_in_category"), (3, "P3", "popular")]


def test_the_baseline_is_overall_popularity_with_the_same_exclusions(spark):
    recs = _events(spark).transform(recommend(_customers(spark, "C2"), AS_OF, RecsConfig(top_n=4),
                                              popularity_only=True))
    assert [(r["rank"], r["product_id"], r["reason"]) for r in _ordered(recs).collect()] == [
        (1, "P1", "popular"), (2, "P2", "popular"), (3, "P4", "popular")]  # P3 was bought


@pytest.mark.parametrize(("k", "hits", "mrr"), [(1, 1, 0.5), (4, 2, (1 + 1 / 3) / 2)])
def test_hit_rate_and_mrr_against_the_next_product(spark, k, hits, mrr):
    later = [("S9", "C1", None, "product_view", "P1", AS_OF + timedelta(hours=1)),  # C1's rank 1
             ("S9", "C1", None, "product_view", "P4", AS_OF + timedelta(hours=2)),  # not the first
             ("S10", "C3", None, "add_to_cart", "P2", AS_OF + timedelta(hours=1))]  # C3's rank 3
    events = _events(spark, later)
    truth = events.transform(next_products(AS_OF))
    recs = events.transform(recommend(_customers(spark, "C1", "C3"), AS_OF, RecsConfig(top_n=4)))
    [row] = recs.transform(hit_rate_and_mrr(truth, k)).collect()
    assert (row["customers"], row["hits"]) == (2, hits)
    assert row["hit_rate"] == pytest.approx(hits / 2) and row["mrr"] == pytest.approx(mrr)


def test_a_tier_is_cut_to_top_n_after_the_exclusions(spark):
    # C2's shoes and bags: P3 (7 x 7) leads popular_in_category but was bought; cut before the
    # exclusion, P4 (6) would fall out of the tier and come back as merely popular (3).
    recs = _events(spark).transform(recommend(_customers(spark, "C2"), AS_OF, RecsConfig(top_n=3)))
    assert_approx_df_equality(_ordered(recs), _expected(spark, [r for r in EXPECTED if r[0] == "C2"]), 1e-9,
                              ignore_nullable=True)
