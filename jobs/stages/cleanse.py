"""Silver: new bronze commits -> cleansed events and customers, every rejected row kept.

Each pipeline (``silver.events``, ``silver.customers``) reads only the bronze commits it has not
processed, through Change Data Feed by version, in *batches* logged in ``ops.cleanse_batches``:

1. plan: the bronze version range, the silver version it is judged against and the processing
   time are logged (``planned``);
2. write: each target is written once per batch -- a commit carries the pipeline and batch id
   in its ``userMetadata`` (MERGE) or Delta's ``txnAppId``/``txnVersion`` (appends), so a retry
   skips what already happened;
3. commit: the batch is logged ``committed``.

A run that dies anywhere leaves a planned batch that the next run redoes from the same inputs,
so the result is the same rows as one clean run. The run log records the balance
``bronze rows = silver rows written + rejected + exact duplicates`` and the run fails if it
does not hold.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from functools import reduce
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.rules import (
    Expectation,
    QualityRules,
    load_bot_rules,
    load_event_types,
    load_locations,
    load_quality_rules,
)
from jobs.runtime.errors import ConfigError, LakehouseError
from jobs.runtime.runlog import JobRun, job_run, utc_now
from jobs.runtime.settings import Settings, rules_dir
from jobs.runtime.spark import analysis_message
from jobs.runtime.tables import (
    REGISTRY,
    append_rows,
    commit_marker,
    commit_metadata,
    ensure_table,
    is_delta_table,
    latest_version,
    spec,
    table_path,
    version_with_marker,
)
from transforms.silver_customers import (
    PROFILE_COLUMNS,
    latest_per_customer,
    parse_customers,
    rebuild_history,
)
from transforms.silver_customers import (
    REASON_CODES as CUSTOMER_REASON_CODES,
)
from transforms.silver_events import (
    RAW_EVENT_FIELDS,
    REASON_CODES,
    SILVER_EVENT_COLUMNS,
    apply_expectations,
    classify_events,
    identity_pairs,
    judged_events,
    stitch_identities,
)

BATCHES = "ops.cleanse_batches"
DQ_RESULTS = "ops.dq_results"


class DataQualityFailure(LakehouseError):
    """An expectation with action ``fail`` did not hold: nothing was committed."""

    exit_code = 1


class BalanceError(RuntimeError):
    """Rows went missing between bronze and silver: a bug, never an input problem."""


@dataclass(frozen=True)
class Batch:
    pipeline: str
    batch_id: int
    start_version: int
    end_version: int
    target_version: int | None
    processed_at: datetime
    resumed: bool


@dataclass
class CleanseResult:
    pipeline: str
    run_id: str
    batch_id: int | None = None
    bronze_rows: int = 0
    silver_rows: int = 0
    rejected_rows: int = 0
    duplicates: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    resumed: bool = False


# -- batches ----------------------------------------------------------------------------------
def _log_batch(spark: SparkSession, root: str, batch: Batch, status: str, run_id: str) -> None:
    row = (batch.pipeline, batch.batch_id, _source_table(batch.pipeline), batch.start_version,
           batch.end_version, batch.target_version, batch.processed_at, status, run_id, utc_now())
    append_rows(spark, root, BATCHES, [row])


def _source_table(pipeline: str) -> str:
    return {"silver.events": "bronze.events", "silver.customers": "bronze.crm"}[pipeline]


def _plan(spark: SparkSession, root: str, pipeline: str, run_id: str) -> Batch | None:
    """The pipeline's unfinished batch, else the bronze versions it has not processed yet."""
    ensure_table(spark, root, BATCHES)
    log = (
        spark.read.format("delta").load(table_path(root, BATCHES))
        .where(F.col("pipeline") == pipeline)
        .collect()  # one row per batch and status
    )
    committed = {r["batch_id"] for r in log if r["status"] == "committed"}
    pending = [r for r in log if r["status"] == "planned" and r["batch_id"] not in committed]
    if pending:
        r = min(pending, key=lambda r: r["batch_id"])
        return Batch(pipeline, r["batch_id"], r["start_version"], r["end_version"],
                     r["target_version"], r["processed_at"], resumed=True)
    source = table_path(root, _source_table(pipeline))
    if not is_delta_table(spark, source):
        return None
    start = max((r["end_version"] for r in log if r["status"] == "committed"), default=-1) + 1
    end = latest_version(spark, source)
    if start > end:
        return None
    target = table_path(root, pipeline)
    target_version = latest_version(spark, target) if is_delta_table(spark, target) else None
    batch = Batch(pipeline, max((r["batch_id"] for r in log), default=0) + 1, start, end,
                  target_version, utc_now(), resumed=False)
    _log_batch(spark, root, batch, "planned", run_id)
    return batch


def _appended_ranges(spark: SparkSession, path: str, start: int, end: int) -> list[tuple[int, int]]:
    """Contiguous version ranges within ``[start, end]`` of commits that appended data.

    Bronze only grows by appends; other commits (an erasure's DELETE, its purge, compaction)
    rewrite rows already cleansed, and their change files may be vacuumed away, so they are
    skipped like a stream's ``skipChangeCommits``.
    """
    history = (DeltaTable.forPath(spark, path).history()
               .where((F.col("version") >= start) & (F.col("version") <= end))
               .select("version", "operation").collect())  # one row per commit of the batch
    appends = sorted(r["version"] for r in history if r["operation"] in ("WRITE", "STREAMING UPDATE"))
    ranges: list[tuple[int, int]] = []
    for version in appends:
        if ranges and ranges[-1][1] == version - 1:
            ranges[-1] = (ranges[-1][0], version)
        else:
            ranges.append((version, version))
    return ranges


def _bronze_changes(spark: SparkSession, root: str, batch: Batch) -> DataFrame:
    """Rows the batch's bronze commits inserted (later rewrites, e.g. erasure, are skipped)."""
    path = table_path(root, _source_table(batch.pipeline))
    frames = [
        spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingVersion", first)
        .option("endingVersion", last)
        .load(path)
        .where(F.col("_change_type") == "insert")
        .withColumn("_bronze_version", F.col("_commit_version"))
        .drop("_change_type", "_commit_version", "_commit_timestamp")
        for first, last in _appended_ranges(spark, path, batch.start_version, batch.end_version)
    ]
    if not frames:
        return spark.createDataFrame([], spark.read.format("delta").load(path).schema.add("_bronze_version", "long"))
    return reduce(DataFrame.unionByName, frames)


def _as_of(spark: SparkSession, root: str, key: str, version: int | None) -> DataFrame | None:
    if version is None:
        return None
    return spark.read.format("delta").option("versionAsOf", version).load(table_path(root, key))


def _known_events(spark: SparkSession, root: str, batch: Batch) -> DataFrame | None:
    """Events earlier batches judged: silver as of before this batch, rejected rows of other batches."""
    rejected = None
    if is_delta_table(spark, table_path(root, "silver.rejected_events")):
        rejected = ensure_table(spark, root, "silver.rejected_events").toDF().where(
            F.col("_batch_id") != batch.batch_id)
    return judged_events(_as_of(spark, root, "silver.events", batch.target_version), rejected)


# -- writes, each once per batch ----------------------------------------------------------------
def _marker(batch: Batch, run_id: str) -> dict[str, object]:
    return {"pipeline": batch.pipeline, "batch_id": batch.batch_id, "run_id": run_id}


def _merge_once(spark: SparkSession, root: str, key: str, batch: Batch, run_id: str, merge) -> int:
    """Run ``merge(DeltaTable)`` unless a commit of this batch is already there; rows inserted."""
    path = table_path(root, key)
    table = ensure_table(spark, root, key)
    done = version_with_marker(spark, path, pipeline=batch.pipeline, batch_id=batch.batch_id)
    if done is None:
        before = latest_version(spark, path)
        with commit_metadata(spark, commit_marker(**_marker(batch, run_id))):
            merge(table)
        done = latest_version(spark, path)
        if done == before:  # a MERGE that changes nothing makes no commit
            return 0
    metrics = table.history().where(F.col("version") == done).select("operationMetrics").first()[0]
    return int(metrics.get("numTargetRowsInserted", 0))


def _append_once(
    spark: SparkSession, root: str, key: str, batch: Batch, run_id: str, rows: DataFrame
) -> None:
    ensure_table(spark, root, key)
    (
        rows.write.format("delta").mode("append")
        .option("txnAppId", f"cleanse:{batch.pipeline}:{key}")
        .option("txnVersion", batch.batch_id)
        .option("userMetadata", commit_marker(**_marker(batch, run_id)))
        .save(table_path(root, key))
    )


# -- accounting -----------------------------------------------------------------------------------
@dataclass
class Tally:
    total: int = 0
    outcomes: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    checked: int = 0


def _tally(classified: DataFrame) -> Tally:
    """One pass: counts per (outcome, reasons, expectations checked/failed) combination."""
    combos = classified.groupBy("_outcome", "_reasons", "_dq_checked", "_dq_failed").count().collect()
    tally = Tally()
    for row in combos:
        tally.total += row["count"]
        tally.outcomes[row["_outcome"]] += row["count"]
        tally.checked += row["count"] if row["_dq_checked"] else 0
        for reason in row["_reasons"]:
            tally.reasons[reason] += row["count"]
        for name in row["_dq_failed"]:
            tally.failed[name] += row["count"]
    return tally


def _check_expectations(table: str, expectations: tuple[Expectation, ...], tally: Tally) -> None:
    broken = [f"{e.name} ({tally.failed[e.name]} rows)" for e in expectations
              if e.action == "fail" and tally.failed[e.name]]
    if broken:
        raise DataQualityFailure(
            f"{table}: expectation(s) with action fail did not hold: {', '.join(broken)}; "
            "nothing was committed"
        )


def _dq_rows(spark: SparkSession, run_id: str, batch: Batch, table: str,
             expectations: tuple[Expectation, ...], tally: Tally) -> DataFrame:
    now = utc_now()
    rows = [(run_id, batch.batch_id, table, e.name, e.action, e.expect, tally.failed[e.name],
             tally.checked, now) for e in expectations]
    return spark.createDataFrame(rows, spec(DQ_RESULTS).schema)


def _validate_expectations(df: DataFrame, table: str, expectations: tuple[Expectation, ...], path) -> None:
    """Analyze every expectation against the table's columns before touching data."""
    for expectation in expectations:
        try:
            df.select(F.expr(expectation.expect)).schema  # noqa: B018 - analysis only
        except Exception as exc:  # AnalysisException or ParseException
            message = analysis_message(exc)
            raise ConfigError(f"{path}: {table}: {expectation.name}: {message}") from None


def _expectations_for(spark: SparkSession, rules: Path, table: str) -> tuple[Expectation, ...]:
    """The table's expectations, each analyzed against its columns before any data is read."""
    expectations = load_quality_rules(rules).for_table(table)
    _validate_expectations(
        spark.createDataFrame([], spec(table).schema), table, expectations, rules / "quality.yaml"
    )
    return expectations


def check_expectations(spark: SparkSession, folder: Path, quality: QualityRules) -> None:
    """Every expectation of rules/quality.yaml analyzed against its table's columns."""
    path = folder / "quality.yaml"
    for table, expectations in quality.tables.items():
        if table not in REGISTRY:
            raise ConfigError(f"{path}: {table}: unknown table (known: {', '.join(sorted(REGISTRY))})")
        _validate_expectations(spark.createDataFrame([], spec(table).schema), table, expectations, path)


def _record(
    run: JobRun, result: CleanseResult, tally: Tally, key: str, version: int | None,
    reason_codes: tuple[str, ...], expectations: tuple[Expectation, ...],
) -> None:
    run.rows_in = result.bronze_rows
    run.rows_out = result.silver_rows
    run.rows_rejected = result.rejected_rows
    run.metrics = {
        "batch_id": result.batch_id or 0,
        "bronze_rows": result.bronze_rows,
        "silver_rows": result.silver_rows,
        "rejected_rows": result.rejected_rows,
        "exact_duplicates": result.duplicates,
        **{f"reason.{k}": tally.reasons[k] for k in sorted({*reason_codes, *tally.reasons})},
        **{f"dq_failed.{e.name}": tally.failed[e.name] for e in expectations},
    }
    if version is not None:
        run.delta_versions[key] = version


def _balance(result: CleanseResult, expected_silver: int) -> None:
    if result.silver_rows != expected_silver or (
        result.bronze_rows != result.silver_rows + result.rejected_rows + result.duplicates
    ):
        raise BalanceError(
            f"{result.pipeline} batch {result.batch_id} does not balance: bronze {result.bronze_rows} "
            f"!= silver {result.silver_rows} (expected {expected_silver}) + rejected "
            f"{result.rejected_rows} + duplicates {result.duplicates}"
        )


# -- events ---------------------------------------------------------------------------------------
def cleanse_events(spark: SparkSession, settings: Settings) -> CleanseResult:
    root, pipeline = settings.lakehouse.root, "silver.events"
    rules = rules_dir(settings)
    event_types = load_event_types(rules)
    bots = load_bot_rules(rules)
    expectations = _expectations_for(spark, rules, pipeline)
    with job_run(spark, root, "cleanse_events", settings.env) as run:
        result = CleanseResult(pipeline, run.run_id)
        batch = _plan(spark, root, pipeline, run.run_id)
        if batch is None:
            return result
        result.batch_id, result.resumed = batch.batch_id, batch.resumed
        existing = _known_events(spark, root, batch)
        classified = _bronze_changes(spark, root, batch).transform(classify_events(
            event_types.synonyms, batch.processed_at, settings.cleanse.max_clock_skew_minutes,
            bots.user_agent_regex, settings.cleanse.bot_max_events_per_minute,
            settings.cleanse.double_load_window_seconds,
            [(e.name, e.expect, e.action) for e in expectations],
            existing,
        )).withColumn("_batch_id", F.lit(batch.batch_id).cast("long")).persist()
        try:
            tally = _tally(classified)
            _check_expectations(pipeline, expectations, tally)
            result.bronze_rows = tally.total
            result.rejected_rows = tally.outcomes["rejected"]
            result.duplicates = tally.outcomes["duplicate"]
            result.reasons = dict(tally.reasons)

            clean = classified.where(F.col("_outcome") == "silver")
            _merge_identity_map(spark, root, batch, run.run_id, clean)
            identity_map = spark.read.format("delta").load(table_path(root, "silver.identity_map"))
            silver_rows = clean.transform(stitch_identities(identity_map)).select(
                *SILVER_EVENT_COLUMNS, "_source_file", "_ingested_at", "_bronze_version",
                "_content_hash", "_batch_id",
            )
            result.silver_rows = _merge_once(
                spark, root, pipeline, batch, run.run_id,
                lambda table: table.alias("t").merge(silver_rows.alias("s"), "t.event_id = s.event_id")
                .whenNotMatchedInsertAll().execute(),
            )
            rejected = classified.where(F.col("_outcome") == "rejected").select(
                "event_id", F.col("_reasons").alias("reasons"),
                *[F.col(f"_raw.{f}").alias(f) for f in RAW_EVENT_FIELDS if f != "event_id"],
                "_bronze_version", "_batch_id", "_content_hash",
            )
            _append_once(spark, root, "silver.rejected_events", batch, run.run_id, rejected)
            _append_once(spark, root, DQ_RESULTS, batch, run.run_id,
                         _dq_rows(spark, run.run_id, batch, pipeline, expectations, tally))
            _balance(result, tally.outcomes["silver"])
        finally:
            classified.unpersist()
        _log_batch(spark, root, batch, "committed", run.run_id)
        _record(run, result, tally, pipeline, latest_version(spark, table_path(root, pipeline)),
                REASON_CODES, expectations)
        run.delta_versions["silver.rejected_events"] = latest_version(
            spark, table_path(root, "silver.rejected_events"))
        return result


def _merge_identity_map(spark: SparkSession, root: str, batch: Batch, run_id: str, clean: DataFrame) -> None:
    pairs = identity_pairs(clean)
    _merge_once(
        spark, root, "silver.identity_map", batch, run_id,
        lambda table: table.alias("t").merge(pairs.alias("s"), "t.anonymous_id = s.anonymous_id")
        .whenMatchedUpdate(
            condition="s.last_seen_at >= t.last_seen_at",
            set={"customer_id": "s.customer_id", "last_seen_at": "s.last_seen_at",
                 "first_seen_at": "least(t.first_seen_at, s.first_seen_at)"},
        )
        .whenMatchedUpdate(set={"first_seen_at": "least(t.first_seen_at, s.first_seen_at)"})
        .whenNotMatchedInsertAll()
        .execute(),
    )


# -- customers ------------------------------------------------------------------------------------
def cleanse_customers(spark: SparkSession, settings: Settings) -> CleanseResult:
    root, pipeline = settings.lakehouse.root, "silver.customers"
    rules = rules_dir(settings)
    locations = load_locations(rules)
    expectations = _expectations_for(spark, rules, pipeline)
    with job_run(spark, root, "cleanse_customers", settings.env) as run:
        result = CleanseResult(pipeline, run.run_id)
        batch = _plan(spark, root, pipeline, run.run_id)
        if batch is None:
            return result
        result.batch_id, result.resumed = batch.batch_id, batch.resumed
        parsed = (
            _bronze_changes(spark, root, batch)
            .transform(parse_customers(locations.cities, locations.countries, batch.processed_at.date()))
            .withColumn("_duplicate", F.lit(False))  # a CRM record is a version, never a duplicate
            .transform(apply_expectations([(e.name, e.expect, e.action) for e in expectations]))
            .withColumn("_outcome", F.when(F.size("_reasons") > 0, "rejected").otherwise("silver"))
            .withColumn("_batch_id", F.lit(batch.batch_id).cast("long"))
            .persist()
        )
        try:
            tally = _tally(parsed)
            _check_expectations(pipeline, expectations, tally)
            result.bronze_rows = tally.total
            result.rejected_rows = tally.outcomes["rejected"]
            result.reasons = dict(tally.reasons)
            usable = parsed.where(F.col("_outcome") == "silver")
            newest = latest_per_customer(usable).select(
                *PROFILE_COLUMNS, "_source_file", "_ingested_at", "_bronze_version", "_content_hash",
                "_batch_id",
            )
            _merge_once(
                spark, root, pipeline, batch, run.run_id,
                lambda table: table.alias("t").merge(newest.alias("s"), "t.customer_id = s.customer_id")
                .whenMatchedUpdateAll(condition="s.updated_at > t.updated_at")
                .whenNotMatchedInsertAll()
                .execute(),
            )
            history_before = _as_of(
                spark, root, "silver.customers_history", _history_version(spark, root, batch)
            )
            if history_before is None:
                history_before = spark.createDataFrame([], spec("silver.customers_history").schema)
            history = rebuild_history(history_before, usable)
            _merge_once(
                spark, root, "silver.customers_history", batch, run.run_id,
                lambda table: table.alias("t").merge(
                    history.alias("s"), "t.customer_id = s.customer_id AND t.valid_from = s.valid_from")
                .whenMatchedUpdateAll()
                .whenNotMatchedInsertAll()
                .execute(),
            )
            rejected = parsed.where(F.col("_outcome") == "rejected").select(
                F.col("_reasons").alias("reasons"), "_raw.*", "_bronze_version", "_batch_id",
            )
            _append_once(spark, root, "silver.rejected_customers", batch, run.run_id, rejected)
            _append_once(spark, root, DQ_RESULTS, batch, run.run_id,
                         _dq_rows(spark, run.run_id, batch, pipeline, expectations, tally))
            # Every usable record is either the customer's current row or a history version.
            result.silver_rows = tally.outcomes["silver"]
            _balance(result, tally.outcomes["silver"])
        finally:
            parsed.unpersist()
        _log_batch(spark, root, batch, "committed", run.run_id)
        _record(run, result, tally, pipeline, latest_version(spark, table_path(root, pipeline)),
                CUSTOMER_REASON_CODES, expectations)
        run.delta_versions["silver.customers_history"] = latest_version(
            spark, table_path(root, "silver.customers_history"))
        return result


def _history_version(spark: SparkSession, root: str, batch: Batch) -> int | None:
    """The history as it was before this batch touched it (a retry must not see its own rows)."""
    path = table_path(root, "silver.customers_history")
    if not is_delta_table(spark, path):
        return None
    own = version_with_marker(spark, path, pipeline=batch.pipeline, batch_id=batch.batch_id)
    return latest_version(spark, path) if own is None else (own - 1 if own > 0 else None)


def cleanse(spark: SparkSession, settings: Settings, events: bool = True, customers: bool = True
            ) -> list[CleanseResult]:
    results = []
    if events:
        results.append(cleanse_events(spark, settings))
    if customers:
        results.append(cleanse_customers(spark, settings))
    return results

