"""Segment rules -> Spark column expressions over the feature columns, and membership.

A condition is a tree: ``{all: [...]}``, ``{any: [...]}``, ``{not: {...}}``, or a leaf
``{field: NAME, <operator>: VALUE}`` with one operator of ``eq``, ``ne``, ``in``, ``between``,
``gte``, ``lte``, ``contains``, ``is_null``, ``within`` (``30m``, ``24h``, ``7d``: the field is
a time in ``[as_of - duration, as_of]``). :func:`check_condition` says what is wrong with a
condition for a schema; :func:`compile_condition` turns a checked one into a Column.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from transforms.schema import STR, TS, fields

Transform = Callable[[DataFrame], DataFrame]
SEGMENT_MEMBERSHIP_SCHEMA = T.StructType(fields(
    ("segment_id", STR), ("customer_id", STR), ("entered_at", TS), ("as_of", TS), ("run_id", STR),
))
OPERATORS = ("eq", "ne", "in", "between", "gte", "lte", "contains", "is_null", "within")
DURATION = re.compile(r"^(\d+)\s*(m|h|d)$")
UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: Any) -> timedelta | None:
    match = DURATION.match(str(text).strip()) if isinstance(text, str | int) else None
    if not match:
        return None
    return timedelta(**{UNITS[match.group(2)]: int(match.group(1))})


def _kind(data_type: T.DataType) -> str:
    if isinstance(data_type, T.BooleanType):
        return "boolean"
    if isinstance(data_type, T.NumericType):
        return "number"
    if isinstance(data_type, T.TimestampType | T.DateType):
        return "time"
    if isinstance(data_type, T.ArrayType):
        return "array"
    return "string"


def _value_fits(kind: str, value: Any) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "time":
        if isinstance(value, datetime):
            return True
        try:
            datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return False
        return True
    return isinstance(value, str)


def check_condition(condition: Any, schema: Mapping[str, T.DataType], path: str = "where") -> Iterator[str]:
    """Every problem of ``condition`` for the columns in ``schema``, as ``path: message``."""
    if not isinstance(condition, dict) or len(condition) == 0:
        yield f"{path}: expected a mapping (all, any, not, or field + operator)"
        return
    if "all" in condition or "any" in condition:
        key = "all" if "all" in condition else "any"
        children = condition[key]
        if set(condition) != {key} or not isinstance(children, list) or not children:
            yield f"{path}.{key}: expected a non-empty list of conditions and nothing beside it"
            return
        for index, child in enumerate(children):
            yield from check_condition(child, schema, f"{path}.{key}[{index}]")
        return
    if "not" in condition:
        if set(condition) != {"not"}:
            yield f"{path}.not: expected a single condition and nothing beside it"
            return
        yield from check_condition(condition["not"], schema, f"{path}.not")
        return
    field = condition.get("field")
    if not isinstance(field, str):
        yield f"{path}: a leaf needs 'field' (or use all / any / not)"
        return
    if field not in schema:
        yield f"{path}: field {field!r}: unknown field (known: {', '.join(sorted(schema))})"
        return
    operators = [k for k in condition if k != "field"]
    unknown = [k for k in operators if k not in OPERATORS]
    if unknown:
        yield f"{path}: field {field!r}: unknown operator {unknown[0]!r} (expected one of {', '.join(OPERATORS)})"
        return
    if len(operators) != 1:
        yield f"{path}: field {field!r}: expected exactly one operator, got {len(operators)}"
        return
    operator, value = operators[0], condition[operators[0]]
    kind = _kind(schema[field])
    where = f"{path}: field {field!r} ({kind})"
    if operator == "is_null":
        if not isinstance(value, bool):
            yield f"{where}: is_null takes true or false"
    elif operator == "within":
        if kind != "time":
            yield f"{where}: within needs a time field"
        elif parse_duration(value) is None:
            yield f"{where}: bad duration {value!r} (e.g. 30m, 24h, 7d)"
    elif operator == "contains":
        if kind not in ("array", "string") or not isinstance(value, str):
            yield f"{where}: contains needs an array or string field and a string value"
    elif operator in ("gte", "lte"):
        if kind not in ("number", "time") or not _value_fits(kind, value):
            yield f"{where}: {operator} needs a number or time field and a value of its type, got {value!r}"
    elif operator == "between":
        if kind not in ("number", "time") or not (
            isinstance(value, list) and len(value) == 2 and all(_value_fits(kind, v) for v in value)
        ):
            yield f"{where}: between needs [low, high] of the field's type, got {value!r}"
    elif operator == "in":
        if kind == "array" or not isinstance(value, list) or not value or not all(_value_fits(kind, v) for v in value):
            yield f"{where}: in needs a non-empty list of values of the field's type, got {value!r}"
    elif kind == "array" or not _value_fits(kind, value):  # eq, ne
        yield f"{where}: {operator} needs a value of the field's type, got {value!r}"


def _literal(kind: str, value: Any) -> Column:
    if kind == "time" and not isinstance(value, datetime):
        return F.lit(str(value).replace("Z", "+00:00")).cast(T.TimestampType())
    return F.lit(value)


def compile_condition(condition: dict[str, Any], schema: Mapping[str, T.DataType], as_of: datetime) -> Column:
    """A checked condition -> a boolean Column; null comparisons count as false."""
    if "all" in condition or "any" in condition:
        parts = [compile_condition(c, schema, as_of) for c in condition.get("all") or condition["any"]]
        combined = parts[0]
        for part in parts[1:]:
            combined = (combined & part) if "all" in condition else (combined | part)
        return combined
    if "not" in condition:
        return ~compile_condition(condition["not"], schema, as_of)
    field = condition["field"]
    column, kind = F.col(field), _kind(schema[field])
    operator = next(k for k in condition if k != "field")
    value = condition[operator]
    if operator == "is_null":
        result = column.isNull() if value else column.isNotNull()
    elif operator == "within":
        since = as_of - parse_duration(value)
        result = (column >= F.lit(since).cast(T.TimestampType())) & (column <= F.lit(as_of).cast(T.TimestampType()))
    elif operator == "contains":
        result = F.array_contains(column, value) if kind == "array" else column.contains(value)
    elif operator == "gte":
        result = column >= _literal(kind, value)
    elif operator == "lte":
        result = column <= _literal(kind, value)
    elif operator == "between":
        result = column.between(_literal(kind, value[0]), _literal(kind, value[1]))
    elif operator == "in":
        result = column.isin(*[_literal(kind, v) for v in value])
    elif operator == "ne":
        result = column != _literal(kind, value)
    else:
        result = column == _literal(kind, value)
    return F.coalesce(result, F.lit(False))


def members(segments: Sequence[tuple[str, Column]]) -> Transform:
    """Features -> ``(segment_id, customer_id)`` for every customer each condition holds for,
    every segment judged in one pass over the features."""

    def transform(features: DataFrame) -> DataFrame:
        held = [F.when(condition, F.lit(segment_id)) for segment_id, condition in segments]
        ids = F.array_compact(F.array(*held)) if held else F.array().cast(T.ArrayType(T.StringType()))
        return features.select(F.explode(ids).alias("segment_id"), "customer_id")

    return transform


def compare_membership(previous: DataFrame, as_of: datetime) -> Transform:
    """Current ``(segment_id, customer_id)`` -> every pair of now or before, with ``_is`` (a member
    now), ``_was`` (a member before) and ``entered_at``: kept by those who stay, ``as_of`` for
    newcomers. One join gives both the new membership and its changes."""

    def transform(current: DataFrame) -> DataFrame:
        keys = ["segment_id", "customer_id"]
        before = previous.select(*keys, F.col("entered_at").alias("_before"), F.lit(True).alias("_was"))
        now = current.select(*keys, F.lit(True).alias("_is"))
        return (
            now.join(before, keys, "full_outer")
            .withColumn("_is", F.coalesce("_is", F.lit(False)))
            .withColumn("_was", F.coalesce("_was", F.lit(False)))
            .withColumn("entered_at", F.coalesce("_before", F.lit(as_of).cast(T.TimestampType())))
            .drop("_before")
        )

    return transform


def change_counts(compared: DataFrame) -> DataFrame:
    """Per segment of :func:`compare_membership`'s output: size now, entered, exited."""
    return compared.groupBy("segment_id").agg(
        F.count(F.when(F.col("_is"), 1)).alias("size"),
        F.count(F.when(F.col("_is") & ~F.col("_was"), 1)).alias("entered"),
        F.count(F.when(F.col("_was") & ~F.col("_is"), 1)).alias("exited"),
    )


def with_entered_at(previous: DataFrame, as_of: datetime) -> Transform:
    """Members who were already members keep their ``entered_at``; new ones enter at ``as_of``."""

    def transform(current: DataFrame) -> DataFrame:
        compared = current.transform(compare_membership(previous, as_of))
        return compared.where("_is").select(*current.columns, "entered_at")

    return transform


def membership_changes(previous: DataFrame, current: DataFrame) -> DataFrame:
    """Per segment: size now, customers who entered and who exited since ``previous``."""
    compared = current.select("segment_id", "customer_id").transform(
        compare_membership(previous.select("segment_id", "customer_id", F.lit(None).cast("timestamp")
                                           .alias("entered_at")), datetime(1970, 1, 1)))
    return change_counts(compared)
