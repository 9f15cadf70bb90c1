"""Building blocks of table schemas. Each table's schema is declared once, in the transforms
module that fills it, and every column list is derived from it."""

from __future__ import annotations

from collections.abc import Iterable

from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T

STRING_MAP = T.MapType(T.StringType(), T.StringType())
STRINGS = T.ArrayType(T.StringType())
TS, LONG, INT, STR, BOOL, DATE = (T.TimestampType(), T.LongType(), T.IntegerType(), T.StringType(),
                                  T.BooleanType(), T.DateType())
MONEY = T.DecimalType(18, 2)


def described(name: str, data_type: T.DataType, comment: str, nullable: bool = True) -> T.StructField:
    return T.StructField(name, data_type, nullable, metadata={"comment": comment})


def fields(*specs: tuple[str, T.DataType]) -> list[T.StructField]:
    return [T.StructField(name, data_type) for name, data_type in specs]


def strings(names: Iterable[str]) -> list[T.StructField]:
    return [T.StructField(name, T.StringType()) for name in names]


def names(schema: T.StructType) -> tuple[str, ...]:
    return tuple(schema.fieldNames())


# -- identifiers ------------------------------------------------------------------------------
_EDGE_SPACE = r"(?U)^\s+|\s+$"


def normalized_id(column: Column) -> Column:
    """A customer or anonymous id as every stage compares it: without surrounding whitespace
    (Unicode's, as Python's ``str.strip``), blank as null. Cleanse, the erased-id filter at
    ingest and erasure all use this one function."""
    stripped = F.regexp_replace(column, _EDGE_SPACE, "")
    return F.when(stripped != "", stripped)


def normalized_id_text(value: str | None) -> str | None:
    """:func:`normalized_id` for a value in Python."""
    stripped = (value or "").strip()
    return stripped or None
