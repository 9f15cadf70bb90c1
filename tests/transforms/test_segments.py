from datetime import UTC, datetime

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from transforms.segments import check_condition, compile_condition, members, membership_changes, with_entered_at

SCHEMA = {
    "age": T.IntegerType(), "city": T.StringType(), "email_consent": T.BooleanType(),
    "cart_abandoned_at": T.TimestampType(), "viewed_categories_7d": T.ArrayType(T.StringType()),
    "revenue_90d": T.DecimalType(18, 2),
}
AS_OF = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("condition", "problem"),
    [
        ({"field": "agee", "gte": 3}, "where: field 'agee': unknown field"),
        ({"field": "age", "over": 3}, "where: field 'age': unknown operator 'over'"),
        ({"field": "age", "gte": "thirty"}, "where: field 'age' (number): gte needs a number or time field"),
        ({"field": "city", "between": ["a", "b"]}, "where: field 'city' (string): between needs [low, high]"),
        ({"field": "cart_abandoned_at", "within": "1 week"}, "bad duration '1 week'"),
        ({"field": "age", "within": "24h"}, "within needs a time field"),
        ({"field": "age", "contains": "x"}, "contains needs an array or string field"),
        ({"field": "email_consent", "eq": "yes"}, "eq needs a value of the field's type"),
        ({"field": "age", "gte": 3, "lte": 9}, "expected exactly one operator, got 2"),
        ({"all": []}, "where.all: expected a non-empty list"),
        ({"all": [{"field": "age", "gte": 1}, {"any": [{"field": "nope", "eq": 1}]}]},
         "where.all[1].any[0]: field 'nope': unknown field"),
    ],
)
def test_a_bad_condition_names_the_place_and_the_field(condition, problem):
    problems = list(check_condition(condition, SCHEMA))
    assert problems and problem in problems[0]


@pytest.mark.parametrize(
    ("condition", "members_"),
    [
        ({"field": "cart_abandoned_at", "within": "24h"}, {"edge", "recent"}),
        ({"field": "age", "between": [25, 35]}, {"edge", "recent"}),
        ({"field": "city", "in": ["New York", "Boston"]}, {"edge", "old"}),
        ({"field": "viewed_categories_7d", "contains": "electronics"}, {"recent"}),
        ({"not": {"field": "email_consent", "eq": True}}, {"old"}),
        ({"any": [{"field": "revenue_90d", "gte": 100}, {"field": "age", "lte": 20}]}, {"old", "edge"}),
        ({"field": "cart_abandoned_at", "is_null": True}, set()),
        ({"all": [{"field": "city", "ne": "Boston"}, {"field": "age", "gte": 30}]}, {"edge"}),
    ],
)
def test_conditions_compile_to_the_members_they_describe(spark, condition, members_):
    features = spark.createDataFrame(
        [("edge", 35, "New York", True, datetime(2026, 11, 19, 12, 0), [], 100.0),
         ("recent", 25, "Austin", True, datetime(2026, 11, 20, 11, 0), ["electronics"], 5.0),
         ("old", 19, "Boston", False, datetime(2026, 11, 19, 11, 59, 59), ["kids"], None)],
        "customer_id string, age int, city string, email_consent boolean, cart_abandoned_at timestamp, "
        "viewed_categories_7d array<string>, revenue_90d double",
    )
    assert not list(check_condition(condition, SCHEMA))
    chosen = features.where(compile_condition(condition, SCHEMA, AS_OF)).select("customer_id").collect()
    assert {r[0] for r in chosen} == members_


def test_membership_keeps_entered_at_and_counts_changes(spark):
    features = spark.createDataFrame([("C1", 30), ("C2", 40), ("C3", 50)], "customer_id string, age int")
    previous = spark.createDataFrame(
        [("old", "C1", datetime(2026, 1, 1)), ("old", "C9", datetime(2026, 1, 2))],
        "segment_id string, customer_id string, entered_at timestamp",
    )
    now = datetime(2026, 11, 20, 12, 0)
    current = features.transform(members([("old", F.col("age") < 45), ("new", F.col("age") > 45)])).transform(
        with_entered_at(previous, now))
    got = sorted((r["segment_id"], r["customer_id"], r["entered_at"]) for r in current.collect())
    assert got == [("new", "C3", now), ("old", "C1", datetime(2026, 1, 1)), ("old", "C2", now)]
    changes = {r["segment_id"]: (r["size"], r["entered"], r["exited"])
               for r in membership_changes(previous, current).collect()}
    assert changes == {"old": (2, 1, 1), "new": (1, 1, 0)}
