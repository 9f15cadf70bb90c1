"""The table registry: every table's logical name, path, schema, partitioning and properties.

A table ``layer.name`` lives at ``{lakehouse.root}/{layer}/{name}`` as a path-based Delta table,
so any Delta reader (a notebook, another engine) finds it without a metastore.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.runtime.errors import ConfigError
from jobs.runtime.settings import CRM_COLUMNS, EVENT_COLUMNS


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


def _fields(*specs: tuple[str, T.DataType]) -> list[T.StructField]:
    return [T.StructField(name, data_type) for name, data_type in specs]


STRING_MAP = T.MapType(T.StringType(), T.StringType())
REASONS = T.ArrayType(T.StringType())
PRICE = T.DecimalType(18, 2)

SILVER_EVENTS_SCHEMA = T.StructType(_fields(
    ("event_id", T.StringType()), ("customer_id", T.StringType()), ("anonymous_id", T.StringType()),
    ("session_id", T.StringType()), ("event_type", T.StringType()), ("event_ts", T.TimestampType()),
    ("event_date", T.DateType()), ("product_id", T.StringType()), ("category", T.StringType()),
    ("top_category", T.StringType()), ("price", PRICE), ("quantity", T.IntegerType()),
    ("currency", T.StringType()), ("order_id", T.StringType()), ("url", T.StringType()),
    ("user_agent", T.StringType()), ("source", T.StringType()), ("properties", STRING_MAP),
    ("_source_file", T.StringType()), ("_ingested_at", T.TimestampType()),
    ("_bronze_version", T.LongType()), ("_content_hash", T.StringType()), ("_batch_id", T.LongType()),
))

_RAW_EVENT = [f for f in BRONZE_EVENTS_SCHEMA.fields if f.name not in ("event_id", "_run_id")]
REJECTED_EVENTS_SCHEMA = T.StructType(
    _fields(("event_id", T.StringType()), ("reasons", REASONS))
    + [T.StructField(f.name, f.dataType) for f in _RAW_EVENT]
    + _fields(("_bronze_version", T.LongType()), ("_batch_id", T.LongType()), ("_content_hash", T.StringType()))
)

IDENTITY_MAP_SCHEMA = T.StructType(_fields(
    ("anonymous_id", T.StringType()), ("customer_id", T.StringType()),
    ("first_seen_at", T.TimestampType()), ("last_seen_at", T.TimestampType()),
))

PROFILE_FIELDS = _fields(
    ("customer_id", T.StringType()), ("email", T.StringType()), ("first_name", T.StringType()),
    ("last_name", T.StringType()), ("birth_date", T.DateType()), ("age", T.IntegerType()),
    ("city", T.StringType()), ("country", T.StringType()), ("email_consent", T.BooleanType()),
    ("updated_at", T.TimestampType()), ("source", T.StringType()),
)
CUSTOMERS_SCHEMA = T.StructType(PROFILE_FIELDS + _fields(
    ("_source_file", T.StringType()), ("_ingested_at", T.TimestampType()),
    ("_bronze_version", T.LongType()), ("_content_hash", T.StringType()), ("_batch_id", T.LongType()),
))
CUSTOMERS_HISTORY_SCHEMA = T.StructType(PROFILE_FIELDS + _fields(
    ("valid_from", T.TimestampType()), ("valid_to", T.TimestampType()), ("is_current", T.BooleanType()),
))
_RAW_CRM = [f for f in BRONZE_CRM_SCHEMA.fields if f.name not in ("_run_id",)]
REJECTED_CUSTOMERS_SCHEMA = T.StructType(
    _fields(("reasons", REASONS))
    + [T.StructField(f.name, f.dataType) for f in _RAW_CRM]
    + _fields(("_bronze_version", T.LongType()), ("_batch_id", T.LongType()))
)

DQ_RESULTS_SCHEMA = T.StructType(_fields(
    ("run_id", T.StringType()), ("batch_id", T.LongType()), ("table", T.StringType()),
    ("expectation", T.StringType()), ("action", T.StringType()), ("expression", T.StringType()),
    ("failed_rows", T.LongType()), ("checked_rows", T.LongType()), ("evaluated_at", T.TimestampType()),
))

CLEANSE_BATCHES_SCHEMA = T.StructType(_fields(
    ("pipeline", T.StringType()), ("batch_id", T.LongType()), ("source_table", T.StringType()),
    ("start_version", T.LongType()), ("end_version", T.LongType()),
    ("target_version", T.LongType()), ("processed_at", T.TimestampType()),
    ("status", T.StringType()), ("run_id", T.StringType()), ("recorded_at", T.TimestampType()),
))

TS, LONG, INT, STR = T.TimestampType(), T.LongType(), T.IntegerType(), T.StringType()
MONEY = T.DecimalType(18, 2)
CUSTOMER_FEATURES_SCHEMA = T.StructType(_fields(
    ("customer_id", STR), ("as_of", TS), ("email", STR), ("first_name", STR), ("age", INT),
    ("city", STR), ("country", STR), ("email_consent", T.BooleanType()), ("first_seen_at", TS),
    ("last_event_at", TS), ("days_since_last_event", INT), ("last_purchase_at", TS),
    ("days_since_last_purchase", INT), ("events_7d", LONG), ("sessions_30d", LONG),
    ("purchases_30d", LONG), ("purchases_90d", LONG), ("purchases_lifetime", LONG),
    ("revenue_90d", MONEY), ("revenue_lifetime", MONEY), ("avg_order_value", MONEY),
    ("last_viewed_product", STR), ("last_viewed_product_at", TS), ("last_viewed_category", STR),
    ("recent_view_category", STR), ("viewed_categories_7d", T.ArrayType(STR)),
    ("cart_abandoned_at", TS), ("abandoned_products", T.ArrayType(STR)), ("r_score", INT),
    ("f_score", INT), ("m_score", INT), ("rfm_segment", STR),
))
SEGMENT_MEMBERSHIP_SCHEMA = T.StructType(_fields(
    ("segment_id", STR), ("customer_id", STR), ("entered_at", TS), ("as_of", TS), ("run_id", STR),
))
SEGMENT_RUNS_SCHEMA = T.StructType(_fields(
    ("run_id", STR), ("as_of", TS), ("delta_version", LONG), ("rules_hash", STR),
    ("segment_id", STR), ("size", LONG), ("entered", LONG), ("exited", LONG), ("recorded_at", TS),
))
SYNC_LEDGER_SCHEMA = T.StructType(_fields(
    ("destination", STR), ("segment_id", STR), ("customer_id", STR), ("action", STR),
    ("attr_hash", STR), ("batch_key", STR), ("run_id", STR), ("delivered_at", TS), ("seq", LONG),
))
SYNC_STATE_SCHEMA = T.StructType(_fields(
    ("destination", STR), ("segment_id", STR), ("synced_version", LONG), ("run_id", STR),
    ("adds", LONG), ("removes", LONG), ("updates", LONG), ("failed", LONG), ("updated_at", TS),
))
SYNC_LOG_SCHEMA = T.StructType(_fields(
    ("destination", STR), ("segment_id", STR), ("run_id", STR), ("from_version", LONG),
    ("to_version", LONG), ("batch_no", LONG), ("idempotency_key", STR), ("rows", LONG),
    ("attempts", LONG), ("http_status", LONG), ("status", STR), ("seconds", T.DoubleType()),
    ("sent_at", TS),
))
SYNC_FAILURES_SCHEMA = T.StructType(_fields(
    ("destination", STR), ("segment_id", STR), ("customer_id", STR), ("action", STR),
    ("error", STR), ("batch_key", STR), ("run_id", STR), ("failed_at", TS),
))
ERASURE_LOG_SCHEMA = T.StructType(_fields(
    ("erasure_id", STR), ("id_hash", STR), ("linked_hashes", T.ArrayType(STR)), ("status", STR),
    ("tables", T.MapType(STR, LONG)), ("platforms", T.MapType(STR, STR)), ("recorded_at", TS),
))


# Columns whose values are personal, or may carry personal data (a URL's query string, a raw
# record). Delta writes each file's min and max of a column into the commit log, which outlives
# an erasure until ``delta.logRetentionDuration``: tables holding any of these collect statistics
# only on their other columns (``delta.dataSkippingStatsColumns``).
PERSONAL_COLUMNS = frozenset({"email", "first_name", "last_name", "phone", "birth_date", "url", "user_agent",
                              "_corrupt_record", "_rescued_data"})
_STATS_TYPES = (T.StringType, T.NumericType, T.DateType, T.TimestampType)


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

    @property
    def table_properties(self) -> dict[str, str]:
        """``properties`` plus the statistics policy for tables holding personal columns."""
        found = dict(self.properties)
        if PERSONAL_COLUMNS & set(self.schema.fieldNames()):
            found["delta.dataSkippingStatsColumns"] = ",".join(
                f.name for f in self.schema.fields
                if f.name not in PERSONAL_COLUMNS and f.name not in self.partition_by
                and isinstance(f.dataType, _STATS_TYPES))
        return found


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
            "silver", "events", SILVER_EVENTS_SCHEMA,
            "Cleansed, deduplicated, bot-filtered events in the canonical schema, UTC times.",
            partition_by=("event_date",), properties=CHANGE_FEED,
        ),
        TableSpec(
            "silver", "rejected_events", REJECTED_EVENTS_SCHEMA,
            "Every bronze event that did not reach silver, as it landed, with its reason codes.",
        ),
        TableSpec(
            "silver", "identity_map", IDENTITY_MAP_SCHEMA,
            "Anonymous ids seen together with a customer id, mapped to that customer.",
        ),
        TableSpec(
            "silver", "customers", CUSTOMERS_SCHEMA,
            "One current row per customer (SCD1): the newest updated_at wins, whatever the order.",
            properties=CHANGE_FEED,
        ),
        TableSpec(
            "silver", "customers_history", CUSTOMERS_HISTORY_SCHEMA,
            "Every version of every customer profile (SCD2: valid_from, valid_to, is_current).",
        ),
        TableSpec(
            "silver", "rejected_customers", REJECTED_CUSTOMERS_SCHEMA,
            "Every bronze CRM record that could not be used, as it landed, with its reason codes.",
        ),
        TableSpec(
            "gold", "customer_features", CUSTOMER_FEATURES_SCHEMA,
            "One row per customer: recency, frequency, money, browsing, carts, RFM, profile, as_of.",
        ),
        TableSpec(
            "gold", "segment_membership", SEGMENT_MEMBERSHIP_SCHEMA,
            "Who is in which segment; one Delta commit per segment run, read any past run by time travel.",
            properties=CHANGE_FEED,
        ),
        TableSpec(
            "ops", "segment_runs", SEGMENT_RUNS_SCHEMA,
            "Per segment run and segment: the membership version, as_of, rules hash, size, entered, exited.",
        ),
        TableSpec(
            "ops", "sync_ledger", SYNC_LEDGER_SCHEMA,
            "Every change a destination acknowledged: what it holds is the latest action per customer.",
        ),
        TableSpec(
            "ops", "sync_state", SYNC_STATE_SCHEMA,
            "Per destination and segment, the membership version the last complete sync brought it to.",
        ),
        TableSpec(
            "ops", "sync_log", SYNC_LOG_SCHEMA,
            "One row per batch sent: destination, segment, versions, idempotency key, rows, result.",
        ),
        TableSpec(
            "ops", "sync_failures", SYNC_FAILURES_SCHEMA,
            "Rows a destination refused; they are not in the ledger, so the next sync sends them again.",
        ),
        TableSpec(
            "ops", "dq_results", DQ_RESULTS_SCHEMA,
            "Per run, table and expectation: rows checked and failed, and the action taken.",
        ),
        TableSpec(
            "ops", "cleanse_batches", CLEANSE_BATCHES_SCHEMA,
            "Append-only log of the bronze version ranges each silver pipeline planned and committed.",
        ),
        TableSpec(
            "ops", "job_runs", JOB_RUNS_SCHEMA,
            "One row per job run: status, rows in/out/rejected, Delta versions written, error.",
        ),
        TableSpec(
            "ops", "erasure_log", ERASURE_LOG_SCHEMA,
            "Right-to-be-forgotten requests: salted hashes of the erased ids (never the ids), tables and "
            "rows deleted, platform answers; also the filter that keeps erased ids out at ingest.",
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


_CREATED: set[str] = set()


def ensure_table(spark: SparkSession, root: str, key: str) -> DeltaTable:
    """The Delta table for ``key``, created empty with its schema and properties if absent.

    Paths this process created or found are remembered, so later calls cost one lookup.
    """
    table = spec(key)
    path = table_path(root, key)
    if path in _CREATED:
        return DeltaTable.forPath(spark, path)
    builder = (
        DeltaTable.createIfNotExists(spark)
        .location(path)
        .addColumns(table.schema)
        .comment(table.description)
    )
    if table.partition_by:
        builder = builder.partitionedBy(*table.partition_by)
    properties = table.table_properties
    for name, value in properties.items():
        builder = builder.property(name, value)
    created = builder.execute()
    _CREATED.add(path)
    if _upgrade(spark, path, created, table.schema, properties):
        return DeltaTable.forPath(spark, path)
    return created


def _upgrade(spark: SparkSession, path: str, table: DeltaTable, schema: T.StructType,
             properties: Mapping[str, str]) -> bool:
    """Bring a table made by an earlier release up to this one: columns added since are appended
    (null in old rows) and properties set as the registry says; nothing is dropped or retyped.
    Whether anything changed."""
    present = set(table.toDF().columns)
    missing = [f for f in schema.fields if f.name not in present]
    if missing:
        columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in missing)
        spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({columns})")
    current = table.detail().first()["properties"] or {}
    changed = {k: v for k, v in properties.items() if current.get(k) != v}
    if changed:
        pairs = ", ".join(f"'{k}' = '{v}'" for k, v in sorted(changed.items()))
        spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ({pairs})")
    return bool(missing or changed)


def append_rows(spark: SparkSession, root: str, key: str, rows: list[tuple]) -> str:
    """Append rows (tuples in the table's column order) to ``key``, creating it first; the path.

    No rows, no write (and no table created)."""
    path = table_path(root, key)
    if rows:
        ensure_table(spark, root, key)
        spark.createDataFrame(rows, spec(key).schema).write.format("delta").mode("append").save(path)
    return path


def read_or_empty(spark: SparkSession, root: str, key: str) -> DataFrame:
    """The table, or an empty frame with its schema when it was never written."""
    path = table_path(root, key)
    if is_delta_table(spark, path):
        return spark.read.format("delta").load(path)
    return spark.createDataFrame([], spec(key).schema)


def read_table(spark: SparkSession, root: str, key: str, version: int | None = None) -> DataFrame:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(table_path(root, key))


def commit_marker(**fields: object) -> str:
    """``userMetadata`` for a commit that a retry must be able to recognise."""
    return json.dumps(fields, sort_keys=True)


def version_with_marker(spark: SparkSession, path: str, **fields: object) -> int | None:
    """The version whose commit carries all of ``fields`` in its userMetadata, if any."""
    history = DeltaTable.forPath(spark, path).history().where(F.col("userMetadata").isNotNull())
    for name, value in fields.items():
        history = history.where(F.get_json_object("userMetadata", f"$.{name}") == str(value))
    hit = history.select("version").first()
    return None if hit is None else int(hit["version"])


def latest_version(spark: SparkSession, path: str) -> int:
    return int(DeltaTable.forPath(spark, path).history(1).first()["version"])


@contextmanager
def commit_metadata(spark: SparkSession, marker: str) -> Iterator[None]:
    """Tag the commits of DML (MERGE, UPDATE) made inside with ``marker`` as userMetadata."""
    key = "spark.databricks.delta.commitInfo.userMetadata"
    spark.conf.set(key, marker)
    try:
        yield
    finally:
        spark.conf.unset(key)
