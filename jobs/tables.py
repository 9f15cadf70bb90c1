"""The table registry: every table's logical name, path, schema, partitioning and properties.

A table ``layer.name`` lives at ``{lakehouse.root}/{layer}/{name}`` as a path-based Delta table,
so any Delta reader (a notebook, another engine) finds it without a metastore.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from jobs.errors import ConfigError
from jobs.settings import CRM_COLUMNS, EVENT_COLUMNS


def _described(name: str, data_type: T.DataType, comment: str, nullable: bool = True) -> T.StructField:
    return T.StructField(name, data_type, nullable, metadata={"comment": comment})


LANDING_METADATA = [
    _described("_rescued_data", T.StringType(), "Source fields the mapping does not name, as JSON."),
    _described("_corrupt_record", T.StringType(), "Raw text of a record that could not be parsed."),
    _described("_source", T.StringType(), "Source name, e.g. web, rees46.", nullable=False),
    _described("_source_file", T.StringType(), "The landed file.", nullable=False),
    T.StructField("_ingested_at", T.TimestampType(), nullable=False),
    T.StructField("_run_id", T.StringType(), nullable=False),
]


def _strings(names: tuple[str, ...]) -> list[T.StructField]:
    return [T.StructField(name, T.StringType()) for name in names]


BRONZE_EVENTS_SCHEMA = T.StructType(
    _strings(EVENT_COLUMNS)
    + [T.StructField("properties", T.MapType(T.StringType(), T.StringType()))]
    + LANDING_METADATA
)

BRONZE_CRM_SCHEMA = T.StructType(_strings(CRM_COLUMNS) + LANDING_METADATA)

JOB_RUNS_SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType(), nullable=False),
    T.StructField("job", T.StringType(), nullable=False),
    T.StructField("env", T.StringType()),
    T.StructField("started_at", T.TimestampType(), nullable=False),
    T.StructField("ended_at", T.TimestampType()),
    T.StructField("status", T.StringType(), nullable=False),
    T.StructField("rows_in", T.LongType()),
    T.StructField("rows_out", T.LongType()),
    T.StructField("rows_rejected", T.LongType()),
    T.StructField("delta_versions", T.MapType(T.StringType(), T.LongType())),
    T.StructField("metrics", T.MapType(T.StringType(), T.LongType())),
    T.StructField("error", T.StringType()),
])

LANDED_FILES_SCHEMA = T.StructType([
    T.StructField("source", T.StringType(), nullable=False),
    T.StructField("batch_id", T.LongType(), nullable=False),
    T.StructField("path", T.StringType(), nullable=False),
    T.StructField("size", T.LongType()),
    T.StructField("modified_at", T.TimestampType()),
    _described("status", T.StringType(), "planned, then committed once bronze holds the batch.",
               nullable=False),
    T.StructField("table", T.StringType(), nullable=False),
    _described("table_version", T.LongType(), "The bronze version that holds the file's rows."),
    T.StructField("run_id", T.StringType(), nullable=False),
    T.StructField("recorded_at", T.TimestampType(), nullable=False),
])


@dataclass(frozen=True)
class TableSpec:
    layer: str
    name: str
    schema: T.StructType
    description: str
    partition_by: tuple[str, ...] = ()
    properties: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.layer}.{self.name}"


CHANGE_FEED = {"delta.enableChangeDataFeed": "true"}

REGISTRY: dict[str, TableSpec] = {
    spec.key: spec
    for spec in (
        TableSpec(
            "bronze", "events", BRONZE_EVENTS_SCHEMA,
            "Every landed event record as it came, with provenance; unparseable ones flagged.",
            properties=CHANGE_FEED,
        ),
        TableSpec(
            "bronze", "crm", BRONZE_CRM_SCHEMA,
            "Every landed CRM profile record as exported, with provenance.",
            properties=CHANGE_FEED,
        ),
        TableSpec(
            "ops", "job_runs", JOB_RUNS_SCHEMA,
            "One row per job run: status, rows in/out/rejected, Delta versions written, error.",
        ),
        TableSpec(
            "ops", "landed_files", LANDED_FILES_SCHEMA,
            "Append-only log of each file a source planned and committed: exactly-once landing.",
        ),
    )
}


def spec(key: str) -> TableSpec:
    try:
        return REGISTRY[key]
    except KeyError:
        raise ConfigError(f"unknown table {key!r} (known: {', '.join(sorted(REGISTRY))})") from None


def table_path(root: str, key: str) -> str:
    table = spec(key)
    return f"{root.rstrip('/')}/{table.layer}/{table.name}"


def is_delta_table(spark: SparkSession, path: str) -> bool:
    return DeltaTable.isDeltaTable(spark, path)


def ensure_table(spark: SparkSession, root: str, key: str) -> DeltaTable:
    """The Delta table for ``key``, created empty with its schema and properties if absent."""
    table = spec(key)
    path = table_path(root, key)
    builder = (
        DeltaTable.createIfNotExists(spark)
        .location(path)
        .addColumns(table.schema)
        .comment(table.description)
    )
    if table.partition_by:
        builder = builder.partitionedBy(*table.partition_by)
    for name, value in table.properties.items():
        builder = builder.property(name, value)
    return builder.execute()


def read_table(spark: SparkSession, root: str, key: str, version: int | None = None) -> DataFrame:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(table_path(root, key))
