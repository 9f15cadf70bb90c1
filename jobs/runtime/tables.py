"""The table registry: every table's logical name, path, schema, partitioning and properties,
and the only functions that write them.

A table ``layer.name`` lives at ``{lakehouse.root}/{layer}/{name}`` as a path-based Delta table,
so any Delta reader (a notebook, another engine) finds it without a metastore. Schemas are
declared once, in the transforms module that fills the table, and imported here. A few ``ops``
names are *views*: read-only frames computed from the tables that hold their rows.

Every write goes through :func:`append`, :func:`overwrite` or :func:`merge`, which count the
commits they make for the stage being recorded (see :mod:`jobs.runtime.runlog`) and return the
rows written as the write itself reports them (an ``Observation`` or the MERGE's own metrics).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.runtime import runlog
from jobs.runtime.errors import ConfigError
from jobs.runtime.spark import java_class
from transforms.bronze import BRONZE_CATALOG_SCHEMA, BRONZE_CRM_SCHEMA, BRONZE_EVENTS_SCHEMA
from transforms.gold_features import CUSTOMER_FEATURES_SCHEMA
from transforms.gold_state import CUSTOMER_DAILY_SCHEMA
from transforms.recommendations import RECOMMENDATIONS_SCHEMA
from transforms.schema import LONG, STR, STRINGS, TS, fields
from transforms.segments import SEGMENT_MEMBERSHIP_SCHEMA
from transforms.silver_customers import CUSTOMERS_HISTORY_SCHEMA, CUSTOMERS_SCHEMA, REJECTED_CUSTOMERS_SCHEMA
from transforms.silver_events import IDENTITY_MAP_SCHEMA, REJECTED_EVENTS_SCHEMA, SILVER_EVENTS_SCHEMA
from transforms.silver_products import PRODUCTS_SCHEMA, REJECTED_PRODUCTS_SCHEMA
from transforms.sync import SYNC_LEDGER_SCHEMA, SYNC_STATE_SCHEMA

DQ_RESULT = T.StructType(fields(
    ("table", STR), ("expectation", STR), ("action", STR), ("expression", STR), ("failed_rows", LONG),
    ("checked_rows", LONG),
))
SEGMENT_CHANGE = T.StructType(fields(("segment_id", STR), ("size", LONG), ("entered", LONG), ("exited", LONG)))
SEGMENT_SYNC = T.StructType(fields(
    ("segment_id", STR), ("adds", LONG), ("removes", LONG), ("updates", LONG), ("failed", LONG), ("batches", LONG),
    ("synced_version", LONG),
))
JOB_RUNS_SCHEMA = T.StructType([
    T.StructField("run_id", STR, nullable=False),
    T.StructField("job", STR, nullable=False),
    *fields(("env", STR)),
    T.StructField("started_at", TS, nullable=False),
    *fields(("ended_at", TS)),
    T.StructField("status", STR, nullable=False),
    *fields(
        ("rows_in", LONG), ("rows_out", LONG), ("rows_rejected", LONG),
        ("delta_versions", T.MapType(STR, LONG)), ("metrics", T.MapType(STR, LONG)), ("error", STR),
        ("seconds", T.DoubleType()), ("spark_jobs", LONG), ("commits", T.MapType(STR, LONG)), ("as_of", TS),
        ("rules_hash", STR), ("dq", T.ArrayType(DQ_RESULT)), ("segments", T.ArrayType(SEGMENT_CHANGE)),
        ("sync", T.ArrayType(SEGMENT_SYNC)),
    ),
])
QUARANTINED_FILES_SCHEMA = T.StructType(fields(
    ("source", STR), ("path", STR), ("reason", STR), ("batch_id", LONG), ("run_id", STR), ("quarantined_at", TS),
))
ERASURE_LOG_SCHEMA = T.StructType(fields(
    ("erasure_id", STR), ("id_hash", STR), ("linked_hashes", STRINGS), ("status", STR),
    ("tables", T.MapType(STR, LONG)), ("platforms", T.MapType(STR, STR)), ("recorded_at", TS),
))

# Columns whose values are personal, or may carry personal data (a URL's query string, a raw
# record). Delta writes each file's min and max of a column into the commit log, which outlives
# an erasure until ``delta.logRetentionDuration``: tables holding any of these collect statistics
# only on their other columns (``delta.dataSkippingStatsColumns``).
PERSONAL_COLUMNS = frozenset({"email", "first_name", "last_name", "phone", "birth_date", "url", "user_agent",
                              "_corrupt_record", "_rescued_data"})
_STATS_TYPES = (T.StringType, T.NumericType, T.DateType, T.TimestampType)
SCHEMA_VERSION = "lakehouse.schemaVersion"


@dataclass(frozen=True)
class TableSpec:
    layer: str
    name: str
    schema: T.StructType
    description: str
    partition_by: tuple[str, ...] = ()
    properties: Mapping[str, str] = field(default_factory=dict)
    version: int = 1  # raise it with every schema or property change: tables below it are upgraded

    @property
    def key(self) -> str:
        return f"{self.layer}.{self.name}"

    @property
    def table_properties(self) -> dict[str, str]:
        """``properties``, the statistics policy for tables holding personal columns, the version."""
        found = {**self.properties, SCHEMA_VERSION: str(self.version)}
        if PERSONAL_COLUMNS & set(self.schema.fieldNames()):
            found["delta.dataSkippingStatsColumns"] = ",".join(
                f.name for f in self.schema.fields
                if f.name not in PERSONAL_COLUMNS and f.name not in self.partition_by
                and isinstance(f.dataType, _STATS_TYPES))
        return found


@dataclass(frozen=True)
class ViewSpec:
    """A read-only ``ops`` frame computed from a table (it has no files of its own)."""

    layer: str
    name: str
    description: str
    source: str
    build: Callable[[DataFrame], DataFrame]

    @property
    def key(self) -> str:
        return f"{self.layer}.{self.name}"


CHANGE_FEED = {"delta.enableChangeDataFeed": "true"}

REGISTRY: dict[str, TableSpec] = {
    spec.key: spec
    for spec in (
        TableSpec("bronze", "events", BRONZE_EVENTS_SCHEMA,
                  "Every landed event record as it came, with provenance; unparseable ones flagged.",
                  properties=CHANGE_FEED),
        TableSpec("bronze", "crm", BRONZE_CRM_SCHEMA,
                  "Every landed CRM profile record as exported, with provenance.", properties=CHANGE_FEED),
        TableSpec("bronze", "catalog", BRONZE_CATALOG_SCHEMA,
                  "Every landed product catalog record as the feed sent it, with provenance."),
        TableSpec("silver", "events", SILVER_EVENTS_SCHEMA,
                  "Cleansed, deduplicated, bot-filtered events in the canonical schema, UTC times.",
                  partition_by=("event_date",), properties=CHANGE_FEED),
        TableSpec("silver", "rejected_events", REJECTED_EVENTS_SCHEMA,
                  "Every bronze event that did not reach silver, as it landed, with its reason codes.",
                  partition_by=("event_date",)),
        TableSpec("silver", "identity_map", IDENTITY_MAP_SCHEMA,
                  "Anonymous ids seen together with a customer id, mapped to that customer."),
        TableSpec("silver", "customers", CUSTOMERS_SCHEMA,
                  "One current row per customer (SCD1): the newest updated_at wins, whatever the order.",
                  properties=CHANGE_FEED),
        TableSpec("silver", "customers_history", CUSTOMERS_HISTORY_SCHEMA,
                  "Every version of every customer profile (SCD2: valid_from, valid_to, is_current)."),
        TableSpec("silver", "rejected_customers", REJECTED_CUSTOMERS_SCHEMA,
                  "Every bronze CRM record that could not be used, as it landed, with its reason codes."),
        TableSpec("silver", "products", PRODUCTS_SCHEMA,
                  "One row per product: the catalog feed's newest record, or what events tell of a product "
                  "no feed lists (source = events)."),
        TableSpec("silver", "rejected_products", REJECTED_PRODUCTS_SCHEMA,
                  "Every catalog record that could not be used, as it landed, with its reason codes."),
        TableSpec("gold", "customer_daily", CUSTOMER_DAILY_SCHEMA,
                  "Per customer and day: what the features need from that day's events (incremental state).",
                  partition_by=("event_date",)),
        TableSpec("gold", "customer_features", CUSTOMER_FEATURES_SCHEMA,
                  "One row per customer: recency, frequency, money, browsing, carts, RFM, profile, as_of."),
        TableSpec("gold", "product_recommendations", RECOMMENDATIONS_SCHEMA,
                  "Per customer, the top products to show (rank, score, reason), as of the time in as_of."),
        TableSpec("gold", "segment_membership", SEGMENT_MEMBERSHIP_SCHEMA,
                  "Who is in which segment; one Delta commit per segment run that changed it.",
                  properties=CHANGE_FEED),
        TableSpec("ops", "sync_ledger", SYNC_LEDGER_SCHEMA,
                  "Every batch sent to a destination (a sync's batches recorded together): per change, "
                  "acknowledged or refused."),
        TableSpec("ops", "sync_state", SYNC_STATE_SCHEMA,
                  "Per destination, what it holds, folded from the ledger up to through_batch_seq."),
        TableSpec("ops", "job_runs", JOB_RUNS_SCHEMA,
                  "One row per stage run and one per command: rows, seconds, Spark jobs, commits, "
                  "data-quality results, segment and sync summaries. One commit per command."),
        TableSpec("ops", "quarantined_files", QUARANTINED_FILES_SCHEMA,
                  "Landing files that could not be read (vanished, truncated, undecodable), with the reason; "
                  "the rest of their micro-batch landed. Copy a repaired file under a new name to land it."),
        TableSpec("ops", "erasure_log", ERASURE_LOG_SCHEMA,
                  "Right-to-be-forgotten requests: salted hashes of the erased ids (never the ids), tables and "
                  "rows deleted, platform answers; also the filter that keeps erased ids out at ingest."),
    )
}


def _dq_results(runs: DataFrame) -> DataFrame:
    return runs.select("run_id", "job", F.col("ended_at").alias("evaluated_at"), F.explode("dq").alias("r")).select(
        "run_id", "r.table", "r.expectation", "r.action", "r.expression", "r.failed_rows", "r.checked_rows",
        "evaluated_at")


def _segment_runs(runs: DataFrame) -> DataFrame:
    segment_runs = runs.where(F.col("job") == "segment")
    return segment_runs.select(
        "run_id", "as_of", F.col("delta_versions")["gold.segment_membership"].alias("delta_version"), "rules_hash",
        F.explode("segments").alias("s"), F.col("ended_at").alias("recorded_at"),
    ).select("run_id", "as_of", "delta_version", "rules_hash", "s.segment_id", "s.size", "s.entered", "s.exited",
             "recorded_at")


def _sync_log(ledger: DataFrame) -> DataFrame:
    return ledger.groupBy("destination", "segment_id", "run_id", "batch_seq", "batch_no",
                          F.col("batch_key").alias("idempotency_key")).agg(
        F.count(F.lit(1)).alias("rows"), F.count(F.when(F.col("status") == "refused", 1)).alias("refused"),
        F.max("attempts").alias("attempts"), F.max("http_status").alias("http_status"),
        F.max("seconds").alias("seconds"), F.max("membership_version").alias("membership_version"),
        F.max("delivered_at").alias("sent_at"),
    )


def _sync_failures(ledger: DataFrame) -> DataFrame:
    return ledger.where(F.col("status") == "refused").select(
        "destination", "segment_id", "customer_id", "action", "error", "batch_key", "run_id",
        F.col("delivered_at").alias("failed_at"))


VIEWS: dict[str, ViewSpec] = {
    view.key: view
    for view in (
        ViewSpec("ops", "dq_results", "Per run, table and expectation: rows checked and failed, the action taken.",
                 "ops.job_runs", _dq_results),
        ViewSpec("ops", "segment_runs", "Per segment run and segment: membership version, as_of, rules hash, "
                 "size, entered, exited.", "ops.job_runs", _segment_runs),
        ViewSpec("ops", "sync_log", "One row per batch sent: destination, segment, rows, refused, result.",
                 "ops.sync_ledger", _sync_log),
        ViewSpec("ops", "sync_failures", "Rows a destination refused; the next sync sends them again.",
                 "ops.sync_ledger", _sync_failures),
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


def _delta_log(spark: SparkSession, path: str) -> Any:
    return java_class(spark, "org.apache.spark.sql.delta.DeltaLog").forTable(spark._jsparkSession, path)


def _snapshot(spark: SparkSession, path: str) -> Any:
    none = java_class(spark, "scala.Option").empty()
    return _delta_log(spark, path).update(False, none, none)


def current_version(spark: SparkSession, path: str) -> int:
    """The table's latest version, from its log (no Spark job); -1 when there is no table."""
    return int(_snapshot(spark, path).version())


def holds_rows(spark: SparkSession, root: str, key: str) -> bool:
    """Whether ``key`` may hold rows: it exists and its latest version has data files (from the
    version's checksum when there is one; no Spark job either way)."""
    snapshot = _snapshot(spark, table_path(root, key))
    if snapshot.version() < 0:
        return False
    checksum = snapshot.checksumOpt()
    if checksum.isDefined():
        return int(checksum.get().numFiles()) > 0
    return snapshot.version() > 0


def _property(snapshot: Any, name: str) -> str | None:
    configuration = snapshot.metadata().configuration()
    return str(configuration.apply(name)) if configuration.contains(name) else None


_ENSURED: set[str] = set()


CREATED: set[str] = set()  # tables this process created, until a command's end registers them


def ensure_table(spark: SparkSession, root: str, key: str, create: bool = True) -> str:
    """The path of ``key``'s Delta table, created empty with its schema and properties if absent
    (unless not ``create``: then its first write creates it) and upgraded if an earlier release
    made it (its ``lakehouse.schemaVersion`` is lower).

    Checked once per process and path, from the table's log alone."""
    table = spec(key)
    path = table_path(root, key)
    if path in _ENSURED:
        return path
    snapshot = _snapshot(spark, path)
    if snapshot.version() < 0:
        if not create:
            return path
        _create(spark, path, table)
    elif int(_property(snapshot, SCHEMA_VERSION) or 0) < table.version:
        _upgrade(spark, path, table, snapshot)
    _ENSURED.add(path)
    return path


def _create(spark: SparkSession, path: str, table: TableSpec) -> None:
    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(table.schema).comment(table.description)
    if table.partition_by:
        builder = builder.partitionedBy(*table.partition_by)
    for name, value in table.table_properties.items():
        builder = builder.property(name, value)
    builder.execute()
    _created(table)


def _created(table: TableSpec) -> None:
    runlog.note_commit(table.key)
    CREATED.add(table.key)


def _absent(spark: SparkSession, root: str, key: str) -> bool:
    """Whether ``key`` has no table yet and its first write may create it, in that write's one
    commit (:func:`_create_with`). A table with a NOT NULL column is created on its own first:
    a table created from a query makes every column nullable."""
    table = spec(key)
    path = table_path(root, key)
    if path in _ENSURED or not all(f.nullable for f in table.schema.fields):
        return False
    return current_version(spark, path) < 0


def _create_with(df: DataFrame, root: str, key: str, txn: tuple[str, int] | None,
                 metadata: Mapping[str, object] | None) -> int:
    """Create ``key``'s table from ``df`` in one commit, with the schema, partitioning, properties
    and description :func:`ensure_table` gives it (an empty table and then a write would be two
    commits and, with a transaction id, a rebuild of the new table's state); the rows written, from
    the commit's ``operationMetrics`` (an ``Observation`` sees nothing of a CREATE TABLE AS SELECT).
    ``metadata`` goes in as the session conf: this path ignores the ``userMetadata`` writer option."""
    table = spec(key)
    path = table_path(root, key)
    present = set(df.columns)  # as in an append, a column the rows lack is null
    columns = [(F.col(f.name) if f.name in present else F.lit(None)).cast(f.dataType).alias(f.name)
               for f in table.schema.fields]
    out = df.select(*columns).writeTo(f"delta.`{path}`").using("delta").tableProperty("comment", table.description)
    for name, value in table.table_properties.items():
        out = out.tableProperty(name, value)
    if table.partition_by:
        out = out.partitionedBy(*[F.col(c) for c in table.partition_by])
    confs = {} if metadata is None else {USER_METADATA: _metadata(metadata)}
    with temporary_confs(df.sparkSession, confs):
        out.options(**_write_options(txn, None)).create()
    _ENSURED.add(path)
    _created(table)
    return int(_commit_info(df.sparkSession, path, 0).get("operationMetrics", {}).get("numOutputRows", 0))


def _upgrade(spark: SparkSession, path: str, table: TableSpec, snapshot: Any) -> None:
    """Bring a table made by an earlier release up to this one: columns added since are appended
    (null in old rows) and properties set as the registry says; nothing is dropped or retyped."""
    present = {f.name() for f in snapshot.schema().fields()}
    missing = [f for f in table.schema.fields if f.name not in present]
    if missing:
        columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in missing)
        spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({columns})")
        runlog.note_commit(table.key)
    changed = {k: v for k, v in table.table_properties.items() if _property(snapshot, k) != v}
    if changed:
        pairs = ", ".join(f"'{k}' = '{v}'" for k, v in sorted(changed.items()))
        spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ({pairs})")
        runlog.note_commit(table.key)


def forget_ensured(path: str) -> None:
    """As if in a new process: the next :func:`ensure_table` looks at the table's log again."""
    _ENSURED.discard(path)


# -- writes -----------------------------------------------------------------------------------
def _observed(df: DataFrame, metrics: Mapping[str, Column] | None) -> tuple[DataFrame, Observation]:
    observation = Observation()
    columns = [F.count(F.lit(1)).alias("rows"), *[c.alias(n) for n, c in (metrics or {}).items()]]
    return df.observe(observation, *columns), observation


USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"  # the commit's metadata, for a MERGE or a CTAS


def _metadata(metadata: Mapping[str, object]) -> str:
    return json.dumps(dict(metadata), sort_keys=True, default=str)


def append(df: DataFrame, root: str, key: str, *, txn: tuple[str, int] | None = None,
           metadata: Mapping[str, object] | None = None,
           metrics: Mapping[str, Column] | None = None) -> dict[str, int]:
    """Append ``df`` to ``key`` (created with these rows if absent) in one commit; ``rows`` written and any
    other ``metrics`` (aggregate columns), counted by the write itself.

    ``txn`` (app id, version) makes the write idempotent: Delta skips it when that app id already
    committed that version (a retried batch); then every count is 0."""
    if not metrics and _absent(df.sparkSession, root, key):
        return {"rows": _create_with(df, root, key, txn, metadata)}
    observed, observation = _observed(df, metrics)
    names = ["rows", *(metrics or {})]
    if not _write(observed, root, key, "append", _write_options(txn, metadata)):
        return dict.fromkeys(names, 0)  # skipped: the same txn committed before
    got = observation.get
    return {name: int(got.get(name) or 0) for name in names}


def append_rows(spark: SparkSession, root: str, key: str, rows: list[tuple]) -> int:
    """Append rows (tuples in the table's column order) in one commit; no rows, no write."""
    if not rows:
        return 0
    return append(spark.createDataFrame(rows, spec(key).schema), root, key)["rows"]


def overwrite(df: DataFrame, root: str, key: str, *, metadata: Mapping[str, object] | None = None,
              replace_where: str | None = None, txn: tuple[str, int] | None = None) -> int:
    """Replace ``key``'s rows (those matching ``replace_where``, or all) in one commit; rows written.
    ``txn`` as for :func:`append`."""
    if _absent(df.sparkSession, root, key):  # nothing to replace: the rows are the table
        return _create_with(df, root, key, txn, metadata)
    options = _write_options(txn, metadata)
    if replace_where is not None:
        options["replaceWhere"] = replace_where
    observed, observation = _observed(df, None)
    if not _write(observed, root, key, "overwrite", options):
        return 0  # skipped, or nothing to remove or add: no commit
    return int(observation.get.get("rows") or 0)


def _write_options(txn: tuple[str, int] | None, metadata: Mapping[str, object] | None) -> dict[str, str]:
    options = {}
    if txn is not None:
        options.update(txnAppId=txn[0], txnVersion=str(txn[1]))
    if metadata is not None:
        options["userMetadata"] = _metadata(metadata)
    return options


def _write(df: DataFrame, root: str, key: str, mode: str, options: dict[str, str]) -> bool:
    """Write ``df`` to ``key`` in one commit; whether a commit was made (none: a replayed ``txn``,
    or an overwrite that changed nothing)."""
    spark = df.sparkSession
    path = ensure_table(spark, root, key)
    before = current_version(spark, path)
    df.write.format("delta").mode(mode).options(**options).save(path)
    if current_version(spark, path) == before:
        return False
    runlog.note_commit(key)
    return True


@contextmanager
def temporary_confs(spark: SparkSession, confs: Mapping[str, str]) -> Iterator[None]:
    previous = {k: spark.conf.get(k, None) for k in confs}
    for name, value in confs.items():
        spark.conf.set(name, value)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                spark.conf.unset(name)
            else:
                spark.conf.set(name, value)


def merge(spark: SparkSession, root: str, key: str, build: Callable[[DeltaTable], Any], *,
          txn: tuple[str, int] | None = None, metadata: Mapping[str, object] | None = None) -> dict[str, int]:
    """Run the MERGE ``build(table)`` returns the builder of, in one commit; its metrics
    (``num_inserted_rows``, ``num_updated_rows``, ``num_deleted_rows``), all 0 when it was
    skipped (``txn`` already committed) or changed nothing."""
    path = ensure_table(spark, root, key)
    confs: dict[str, str] = {}
    if txn is not None:
        confs.update({"spark.databricks.delta.write.txnAppId": txn[0],
                      "spark.databricks.delta.write.txnVersion": str(txn[1])})
    if metadata is not None:
        confs[USER_METADATA] = _metadata(metadata)
    before = current_version(spark, path)
    with temporary_confs(spark, confs):
        result = build(DeltaTable.forPath(spark, path)).execute().collect()  # one row of metrics
    if current_version(spark, path) == before or not result:
        return {"num_inserted_rows": 0, "num_updated_rows": 0, "num_deleted_rows": 0}
    runlog.note_commit(key)
    return {k: int(v or 0) for k, v in result[0].asDict().items()}


# -- reads ------------------------------------------------------------------------------------
def read_table(spark: SparkSession, root: str, key: str, version: int | None = None) -> DataFrame:
    if key in VIEWS:
        view = VIEWS[key]
        return view.build(read_or_empty(spark, root, view.source))
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(table_path(root, key))


def read_or_empty(spark: SparkSession, root: str, key: str) -> DataFrame:
    """The table (or view), or an empty frame with its schema when it was never written."""
    if key in VIEWS:
        return read_table(spark, root, key)
    path = table_path(root, key)
    if is_delta_table(spark, path):
        return spark.read.format("delta").load(path)
    return spark.createDataFrame([], spec(key).schema)


def _commit_info(spark: SparkSession, path: str, version: int) -> dict[str, Any]:
    from jobs.runtime import fs

    for line in fs.read_text(spark, f"{path.rstrip('/')}/_delta_log/{version:020d}.json").splitlines():
        action = json.loads(line)
        if "commitInfo" in action:
            return dict(action["commitInfo"])
    return {}


def last_data_commit(spark: SparkSession, path: str) -> tuple[int, dict[str, Any]]:
    """The table's latest version that is not a compaction (OPTIMIZE, which changes no data: a
    stream's auto compaction or ``lakehouse maintain``) and its ``userMetadata`` (as JSON), read
    from the log files; ``(-1, {})`` when there is no table."""
    version = current_version(spark, path)
    while version >= 0:
        info = _commit_info(spark, path, version)
        if info.get("operation") != "OPTIMIZE":
            text = info.get("userMetadata")
            try:
                return version, (json.loads(text) if text else {})
            except ValueError:
                return version, {}
        version -= 1
    return -1, {}


def data_version(spark: SparkSession, path: str) -> int:
    """The version of the table's last data change (:func:`last_data_commit`); -1 when there is no table."""
    return last_data_commit(spark, path)[0]


def last_commit_metadata(spark: SparkSession, path: str) -> dict[str, Any]:
    """The ``userMetadata`` (as JSON) of the table's latest commit that is not a compaction."""
    return last_data_commit(spark, path)[1]


def latest_version(spark: SparkSession, path: str) -> int:
    return current_version(spark, path)


def dates_in(column: str, dates: Iterable[date]) -> str:
    """A SQL condition on a date partition column, so a MERGE prunes to those partitions."""
    listed = sorted(set(dates))
    if not listed:
        return "FALSE"
    literals = ", ".join("DATE'" + d.isoformat() + "'" for d in listed)
    return f"{column} IN ({literals})"


def text_in(column: str, values: Iterable[str]) -> str:
    """``column IN (values)`` as SQL text, for ``F.expr``: parsed in one call, where ``Column.isin``
    makes a Py4J call per value (measured: 10,000 ids 8.5 s, the text 0.03 s). Each value is a
    literal of itself: quotes and backslashes escaped, and ``$`` written ``\\u0024``, so the parser's
    ``${name}`` substitution cannot touch it."""
    listed = sorted(set(values))
    if not listed:
        return "FALSE"
    literals = ", ".join("'" + v.replace("\\", "\\\\").replace("'", "\\'").replace("$", "\\u0024") + "'"
                         for v in listed)
    return f"{column} IN ({literals})"
