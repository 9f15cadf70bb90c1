"""Rule SQL is data, not code: the SQL a segment (``sql:``) or an expectation (``expect:``) may
hold is an expression over the columns of the table it applies to, built from the functions
listed here. No subquery (so no other table and no file), no function outside the list (so no
``reflect``, ``java_method`` or anything that reads the environment or the file system).

The expression is parsed with Spark's own parser and its tree is walked before anything runs;
the analysis against the table's columns then catches unknown columns and wrong types."""

from __future__ import annotations

from typing import Any

from pyspark.sql import SparkSession

ALLOWED_FUNCTIONS = frozenset({
    # logic and nulls
    "between", "coalesce", "if", "iff", "ifnull", "isnan", "isnotnull", "isnull", "nanvl", "nullif", "nvl", "nvl2",
    "greatest", "least", "in",
    # text
    "char_length", "character_length", "concat", "concat_ws", "contains", "endswith", "ilike", "initcap", "instr",
    "lcase", "left", "length", "like", "locate", "lower", "lpad", "ltrim", "regexp", "regexp_extract",
    "regexp_like", "replace", "right", "rlike", "rpad", "rtrim", "split", "split_part", "startswith", "substr",
    "substring", "trim", "ucase", "upper",
    # numbers
    "abs", "bround", "ceil", "ceiling", "exp", "floor", "ln", "log", "log10", "mod", "negative", "pmod",
    "positive", "pow", "power", "round", "sign", "signum", "sqrt", "try_add", "try_divide", "try_multiply",
    "try_subtract",
    # time
    "add_months", "current_date", "current_timestamp", "date_add", "date_diff", "date_format", "date_sub",
    "date_trunc", "dateadd", "datediff", "day", "dayofmonth", "dayofweek", "dayofyear", "hour", "last_day",
    "make_date", "minute", "month", "months_between", "now", "quarter", "second", "timestamp_seconds",
    "to_date", "to_timestamp", "trunc", "weekofyear", "year",
    # arrays and maps
    "array", "array_contains", "array_distinct", "array_intersect", "array_join", "array_max", "array_min",
    "array_position", "array_size", "arrays_overlap", "cardinality", "element_at", "exists", "filter", "forall",
    "map_contains_key", "map_keys", "map_values", "size", "slice", "sort_array", "transform",
    # types
    "cast", "try_cast", "typeof",
})
_FORBIDDEN_NODES = ("Subquery", "Exists", "ListQuery", "Star", "Regex")


def _children(node: Any) -> list[Any]:
    iterator = node.children().iterator()
    found = []
    while iterator.hasNext():
        found.append(iterator.next())
    return found


def sql_problem(spark: SparkSession, text: str) -> str | None:
    """Why ``text`` is not an allowed rule expression, or None. (A text that does not parse is
    left to the analysis, which names the parse error.)"""
    parser = spark._jsparkSession.sessionState().sqlParser()  # type: ignore[union-attr]
    try:
        root = parser.parseExpression(text)
    except Exception:  # noqa: BLE001 - a ParseException: the analysis reports it
        return None
    pending = [root]
    while pending:
        node = pending.pop()
        kind = str(node.getClass().getSimpleName())
        if any(word in kind for word in _FORBIDDEN_NODES):
            what = "a subquery" if "Star" not in kind and "Regex" not in kind else "a * or regex column list"
            return f"{what} is not allowed: a rule reads only the columns of its own table"
        if kind == "UnresolvedFunction":
            name = str(node.nameParts().mkString(".")).lower()
            if name not in ALLOWED_FUNCTIONS:
                return (f"function {name} is not allowed in rules (allowed: the text, number, time, array "
                        "and null functions listed in jobs/rules/sql.py)")
        pending.extend(_children(node))
    return None
