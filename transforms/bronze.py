"""Landing transforms: raw records of any configured source -> the bronze table's columns.

Bronze keeps values as the source sent them (as text) and loses nothing: fields the source
mapping does not name go to ``_rescued_data`` (JSON), and a record that cannot be parsed keeps
its raw text in ``_corrupt_record`` with every other column null.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from transforms.schema import STRING_MAP, described, strings

Transform = Callable[[DataFrame], DataFrame]

EVENT_COLUMNS = (
    "event_id", "customer_id", "anonymous_id", "session_id", "event_type", "timestamp",
    "product_id", "url", "user_agent",
)
CRM_COLUMNS = (
    "customer_id", "email", "first_name", "last_name", "birth_date", "city", "country",
    "email_consent", "updated_at",
)
CATALOG_COLUMNS = (
    "product_id", "name", "url", "image_url", "price", "currency", "category", "brand", "in_stock", "updated_at",
)
COLUMNS_BY_KIND: dict[str, tuple[str, ...]] = {"events": EVENT_COLUMNS, "crm": CRM_COLUMNS, "catalog": CATALOG_COLUMNS}
LANDING_METADATA = [
    described("_rescued_data", T.StringType(), "Source fields the mapping does not name, as JSON."),
    described("_corrupt_record", T.StringType(), "Raw text of a record that could not be parsed."),
    described("_source", T.StringType(), "Source name, e.g. web, rees46.", nullable=False),
    described("_source_file", T.StringType(), "The landed file.", nullable=False),
    T.StructField("_ingested_at", T.TimestampType(), nullable=False),
    T.StructField("_run_id", T.StringType(), nullable=False),
]
BRONZE_EVENTS_SCHEMA = T.StructType(
    strings(EVENT_COLUMNS) + [T.StructField("properties", STRING_MAP)] + LANDING_METADATA)
BRONZE_CRM_SCHEMA = T.StructType(strings(CRM_COLUMNS) + LANDING_METADATA)
BRONZE_CATALOG_SCHEMA = T.StructType(strings(CATALOG_COLUMNS) + LANDING_METADATA)


@dataclass(frozen=True)
class FieldMapping:
    """How one source's fields map to a bronze table's columns (see ``conf/sources``)."""

    kind: str  # events | crm | catalog
    columns: Mapping[str, str] = field(default_factory=dict)  # bronze column -> source field
    properties: Mapping[str, str] = field(default_factory=dict)  # properties key -> source field
    properties_field: str | None = "properties"

    def bronze_columns(self) -> tuple[str, ...]:
        return COLUMNS_BY_KIND[self.kind]

    def source_field(self, column: str) -> str:
        return self.columns.get(column, column)


def _named_fields(source: FieldMapping) -> list[str]:
    named = [source.source_field(c) for c in source.bronze_columns()]
    named += list(source.properties.values())
    if source.kind == "events" and source.properties_field:
        named.append(source.properties_field)
    return named


def _not_in(names: Sequence[str]) -> Callable[[Column, Column], Column]:
    return lambda key, _value: ~key.isin(*names) if names else F.lit(True)


def _json_or_null(entries: Column) -> Column:
    return F.when(F.size(entries) > 0, F.to_json(entries))


def _mapped_properties(source: FieldMapping, field: Callable[[str], Column]) -> Column:
    """``properties`` keys named in the mapping, from top-level source fields; nulls dropped."""
    if not source.properties:
        return F.create_map().cast(STRING_MAP)
    pairs = []
    for key, source_field in source.properties.items():
        pairs += [F.lit(key), field(source_field)]
    return F.map_filter(F.create_map(*pairs), lambda _k, v: v.isNotNull())


def parse_json_records(source: FieldMapping) -> Transform:
    """``value`` (one JSON object per line) -> the source's bronze columns.

    ====================================  ==========  =============  ===================  ===============
    value                                 event_type  properties     _rescued_data        _corrupt_record
    ====================================  ==========  =============  ===================  ===============
    {"event_type":"view",                 view        {price -> 5}   null                 null
     "properties":{"price":5}}
    {"event_type":"view","new_field":1}   view        {}             {"new_field":"1"}    null
    {"event_type": "vi                    null        null           null                 (the line)
    ====================================  ==========  =============  ===================  ===============

    Every value is kept as text (numbers and nested objects as their JSON); other input columns
    pass through. ``value`` is dropped.
    """

    def transform(df: DataFrame) -> DataFrame:
        parsed = F.col("_fields")
        corrupt = parsed.isNull()
        columns = [
            F.when(~corrupt, parsed[source.source_field(c)]).alias(c) for c in source.bronze_columns()
        ]
        rescued = F.map_filter(parsed, _not_in(_named_fields(source)))
        if source.kind == "events":
            nested = (
                F.from_json(parsed[source.properties_field], STRING_MAP)
                if source.properties_field
                else F.create_map().cast(STRING_MAP)
            )
            unparsed_nested = (
                parsed[source.properties_field].isNotNull() & nested.isNull()
                if source.properties_field
                else F.lit(False)
            )
            properties = F.map_concat(
                F.coalesce(nested, F.create_map().cast(STRING_MAP)),
                _mapped_properties(source, lambda name: parsed[name]),
            )
            columns.append(F.when(~corrupt, properties).alias("properties"))
            # A properties field that is not an object is kept verbatim rather than lost.
            rescued = F.when(
                unparsed_nested,
                F.map_concat(
                    rescued,
                    F.create_map(F.lit(source.properties_field), parsed[source.properties_field]),
                ),
            ).otherwise(rescued)
        columns += [
            _json_or_null(rescued).alias("_rescued_data"),
            F.when(corrupt, F.col("value")).alias("_corrupt_record"),
        ]
        passthrough = [c for c in df.columns if c not in ("value", "_fields")]
        return (
            df.withColumn("_fields", F.from_json("value", STRING_MAP))
            .select(*columns, *passthrough)
        )

    return transform


def map_csv_records(source: FieldMapping, header: Sequence[str]) -> Transform:
    """Columns named by a CSV file's ``header`` -> the source's bronze columns.

    The reader has already split the line and put an unparseable one in ``_corrupt_record``.
    A bronze column whose source field is not in the header is null; header columns the
    mapping does not name go to ``_rescued_data`` as JSON (nulls omitted).
    """

    def field(name: str) -> Column:
        return F.col(f"`{name}`") if name in header else F.lit(None).cast(T.StringType())

    def transform(df: DataFrame) -> DataFrame:
        columns = [field(source.source_field(c)).alias(c) for c in source.bronze_columns()]
        if source.kind == "events":
            columns.append(_mapped_properties(source, field).alias("properties"))
        named = set(_named_fields(source))
        extra = [name for name in header if name not in named]
        if extra:
            pairs = []
            for name in extra:
                pairs += [F.lit(name), F.col(f"`{name}`")]
            extra_map = F.map_filter(F.create_map(*pairs), lambda _k, v: v.isNotNull())
            columns.append(_json_or_null(extra_map).alias("_rescued_data"))
        else:
            columns.append(F.lit(None).cast(T.StringType()).alias("_rescued_data"))
        passthrough = [c for c in df.columns if c not in header]
        return df.select(*columns, *passthrough)

    return transform


def with_landing_metadata(source_name: str, run_id: str, ingested_at: datetime) -> Transform:
    """Adds ``_source``, ``_ingested_at`` and ``_run_id`` (``_source_file`` comes from the read)."""

    def transform(df: DataFrame) -> DataFrame:
        return df.withColumns({
            "_source": F.lit(source_name),
            "_ingested_at": F.lit(ingested_at).cast(T.TimestampType()),
            "_run_id": F.lit(run_id),
        })

    return transform


def conform_to(schema: T.StructType) -> Transform:
    """Selects exactly the schema's columns, in its order and types."""

    def transform(df: DataFrame) -> DataFrame:
        return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])

    return transform
