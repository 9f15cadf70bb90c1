"""Silver: new bronze rows -> cleansed events and customers, every rejected row kept.

Each pipeline reads the rows bronze's new commits appended through a Delta streaming source
(``_checkpoints/cleanse/events``, ``_checkpoints/cleanse/customers``; ``skipChangeCommits``, so an
erasure's DELETE or a compaction is never read as new rows) and handles them in micro-batches
whose every write carries the batch's Delta transaction id (see :mod:`jobs.runtime.streams`).

Events, per micro-batch, bounded by the batch's event dates:

1. rows are parsed and judged (:func:`transforms.silver_events.classify_events`) against the
   events earlier batches judged on the same dates (``cleanse.duplicate_lookback_days`` either
   side) and, for the bot-rate and double-load windows, their *neighbours*: silver and rejected
   rows of the same days, so the outcome does not depend on how events were split into batches;
2. writes, in an order a replayed batch reproduces exactly (each later step reads only what no
   write of this batch touched): rejected rows (new ones, and silver rows a window now catches,
   with their bronze record) -> identity map -> new silver rows -> silver rows retracted or
   stitched to a customer who has since logged in on their device -> the per-customer daily
   state of ``gold.customer_daily`` for every customer-day touched, recomputed from silver.

The stage checks ``bronze rows = silver rows written + rejected rows written + exact duplicates``
with each term counted by its own write, and fails if it does not hold.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import reduce
from operator import or_
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.rules import (
    Expectation,
    QualityRules,
    load_bot_rules,
    load_event_types,
    load_locations,
    load_quality_rules,
)
from jobs.rules.sql import sql_problem
from jobs.runtime.errors import ConfigError, LakehouseError
from jobs.runtime.runlog import StageResult, ran_lately, run_stage, utc_now
from jobs.runtime.settings import Settings, rules_dir
from jobs.runtime.spark import analysis_message
from jobs.runtime.streams import Batch, caught_up, process_new
from jobs.runtime.tables import (
    REGISTRY,
    append,
    current_version,
    data_version,
    dates_in,
    ensure_table,
    holds_rows,
    merge,
    overwrite,
    read_or_empty,
    spec,
    table_path,
    text_in,
)
from transforms.gold_state import STATE_EVENT_COLUMNS, daily_aggregates
from transforms.silver_customers import (
    PROFILE_COLUMNS,
    fill_partial,
    latest_per_customer,
    parse_customers,
    rebuild_history,
)
from transforms.silver_customers import REASON_CODES as CUSTOMER_REASON_CODES
from transforms.silver_events import (
    RAW_EVENT_FIELDS,
    REASON_CODES,
    SILVER_EVENTS_SCHEMA,
    apply_expectations,
    as_neighbours,
    assign_event_ids,
    content_hash,
    identity_pairs,
    judge_rows,
    judge_windows,
    judged_events,
    parse_events,
    parse_timestamp,
    rejected_as_parsed,
    stitch_identities,
)
from transforms.silver_products import (
    PRODUCTS_SCHEMA,
    latest_per_product,
    parse_catalog,
    products_from_events,
)
from transforms.silver_products import REASON_CODES as PRODUCT_REASON_CODES

EVENTS, REJECTED, IDENTITY = "silver.events", "silver.rejected_events", "silver.identity_map"
CUSTOMERS, HISTORY, REJECTED_CUSTOMERS = "silver.customers", "silver.customers_history", "silver.rejected_customers"
DAILY = "gold.customer_daily"
PRODUCTS, REJECTED_PRODUCTS = "silver.products", "silver.rejected_products"
SILVER_COLUMNS = tuple(SILVER_EVENTS_SCHEMA.fieldNames())
# Up to this many rows, a batch's keys are collected and filter the scans of earlier rows; up to
# the second, they are broadcast to find earlier rows that share them; beyond, joined. (Measured
# on a 1M lakehouse, warm: 2,094 new rows 14.4-15.5 s listed, 16.0-17.4 s joined; 10,064 rows
# 18.1-23.1 s listed, 16.8-19.0 s joined: planning every scan with thousands of literals costs
# more than the join's extra jobs.)
LISTED_BATCH_ROWS = 5_000
BROADCAST_BATCH_ROWS = 250_000
# Beyond this many rows, bot signatures are matched once per distinct user agent, not per row.
PER_AGENT_BATCH_ROWS = 20_000


class DataQualityFailure(LakehouseError):
    """An expectation with action ``fail`` did not hold: nothing was committed."""

    exit_code = 1


class BalanceError(RuntimeError):
    """Rows went missing between bronze and silver: a bug, never an input problem."""


@dataclass
class Tally:
    """What one pipeline's batches did, each count from its own source."""

    bronze_rows: int = 0
    silver_rows: int = 0
    rejected_rows: int = 0
    duplicates: int = 0
    retracted: int = 0
    stitched: int = 0
    batches: int = 0
    reasons: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    checked: int = 0


def _judgements(classified: DataFrame, judged: Column | None = None, flags: dict[str, Column] | None = None
                ) -> tuple[Counter, Counter, Counter, int, Counter]:
    """One pass: over the rows ``judged`` holds for (default: all), outcomes, reasons, expectation
    failures and rows checked; over all rows, how many each of ``flags`` holds for."""
    judged = F.lit(True) if judged is None else F.coalesce(judged, F.lit(False))
    flags = flags or {}
    combos = classified.groupBy(
        judged.alias("_judged"), "_outcome", "_reasons", "_dq_checked", "_dq_failed",
        *[F.coalesce(flag, F.lit(False)).alias(f"_flag_{name}") for name, flag in flags.items()],
    ).count().collect()
    outcomes, reasons, failed, checked, flagged = Counter(), Counter(), Counter(), 0, Counter()
    for row in combos:  # one row per combination of outcome, reasons, failures and flags: a handful
        flagged.update({name: row["count"] for name in flags if row[f"_flag_{name}"]})
        if not row["_judged"]:
            continue
        outcomes[row["_outcome"]] += row["count"]
        checked += row["count"] if row["_dq_checked"] else 0
        for reason in row["_reasons"]:
            reasons[reason] += row["count"]
        for name in row["_dq_failed"]:
            failed[name] += row["count"]
    return outcomes, reasons, failed, checked, flagged


def _check_expectations(table: str, expectations: tuple[Expectation, ...], failed: Counter) -> None:
    broken = [f"{e.name} ({failed[e.name]} rows)" for e in expectations if e.action == "fail" and failed[e.name]]
    if broken:
        raise DataQualityFailure(
            f"{table}: expectation(s) with action fail did not hold: {', '.join(broken)}; "
            "nothing was committed"
        )


def _validate_expectations(df: DataFrame, table: str, expectations: tuple[Expectation, ...], path: Path) -> None:
    """Check every expectation's SQL (allowed functions, no subquery) and analyze it against the
    table's columns before touching data."""
    for expectation in expectations:
        problem = sql_problem(df.sparkSession, expectation.expect)
        if problem:
            raise ConfigError(f"{path}: {table}: {expectation.name}: {problem}")
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


def _record(stage: StageResult, prefix: str, table: str, tally: Tally, reason_codes: tuple[str, ...],
            expectations: tuple[Expectation, ...]) -> None:
    stage.rows_in += tally.bronze_rows
    stage.rows_out += tally.silver_rows
    stage.rejected += tally.rejected_rows
    stage.metrics.update({
        f"{prefix}.batches": tally.batches,
        f"{prefix}.bronze_rows": tally.bronze_rows,
        f"{prefix}.silver_rows": tally.silver_rows,
        f"{prefix}.rejected_rows": tally.rejected_rows,
        f"{prefix}.exact_duplicates": tally.duplicates,
        **({f"{prefix}.retracted": tally.retracted, f"{prefix}.stitched": tally.stitched} if prefix == "events"
           else {}),
        **{f"{prefix}.reason.{k}": tally.reasons[k] for k in sorted({*reason_codes, *tally.reasons})},
        **{f"{prefix}.dq_failed.{e.name}": tally.failed[e.name] for e in expectations},
    })
    if tally.batches:
        stage.dq += [(table, e.name, e.action, e.expect, tally.failed[e.name], tally.checked) for e in expectations]
    stage.details.setdefault("pipelines", []).append((table, tally))


def _balance(table: str, bronze: int, silver: int, rejected: int, duplicates: int) -> None:
    if bronze != silver + rejected + duplicates:
        raise BalanceError(
            f"{table} does not balance: bronze {bronze} != silver {silver} + rejected {rejected} "
            f"+ duplicates {duplicates}"
        )


def _bronze_stream(spark: SparkSession, root: str, key: str) -> DataFrame:
    return spark.readStream.format("delta").option("skipChangeCommits", "true").load(table_path(root, key))


# -- events ---------------------------------------------------------------------------------------
def _around(dates: list[date], days: int) -> list[date]:
    return sorted({d + timedelta(days=k) for d in dates for k in range(-days, days + 1)})


def _with_dates(frame: DataFrame, dates: list[date], with_null: bool = False) -> DataFrame:
    condition = F.col("event_date").isin(dates) if dates else F.lit(False)
    if with_null:
        condition = condition | F.col("event_date").isNull()
    return frame.where(condition)


def _small(frame: DataFrame, broadcast: bool) -> DataFrame:
    return F.broadcast(frame) if broadcast else frame


# The keys an earlier row can share with a batch's row for a window rule to pair them (SQL): its
# session or device (bot rate), its identity (double-loads).
NEAR_KEYS = {"session_id": "session_id", "anonymous_id": "anonymous_id",
             "_identity": "coalesce(customer_id, anonymous_id)"}


Lookups = tuple[Callable[[DataFrame], DataFrame], Callable[[DataFrame], DataFrame], Callable[[DataFrame], DataFrame]]


def _listed_lookups(parsed: DataFrame) -> Lookups:
    """For a small batch: its ids and keys, collected once, become plain filters of the scans of
    earlier rows. (Rows sharing an id, rows near by a key, how to hand the judged ids on.)"""
    keys = {"event_id": "event_id", **NEAR_KEYS}
    listed = parsed.agg(*[F.collect_set(F.expr(key)).alias(name) for name, key in keys.items()]).first()
    # as SQL text (see text_in): Column.isin would make a Py4J call per value
    same = F.expr(text_in("event_id", listed["event_id"]))
    near = F.expr(" OR ".join(text_in(key, listed[name]) for name, key in NEAR_KEYS.items()))
    return lambda frame: frame.where(same), lambda frame: frame.where(near), F.broadcast


def _joined_lookups(parsed: DataFrame, broadcast: bool) -> Lookups:
    """For a larger batch: its ids and keys are joined (broadcast while small) to the scans."""
    ids = _small(parsed.select("event_id").distinct(), broadcast)
    return (lambda frame: frame.join(ids, "event_id", "left_semi"),
            lambda frame: _near_keys(frame, parsed, broadcast),
            lambda frame: _small(frame, broadcast))


def _near_keys(earlier: DataFrame, batch: DataFrame, broadcast: bool) -> DataFrame:
    """Rows of earlier batches a window rule can pair with this batch's rows (:data:`NEAR_KEYS`).
    One pass: the batch's keys are small, so each is a lookup join."""
    flags = []
    for key, column in NEAR_KEYS.items():
        values = batch.select(F.expr(column).alias(key)).where(F.col(key).isNotNull()).distinct()
        flag = f"_near_{key}"
        earlier = earlier.withColumn(key, F.expr(column)) if key == "_identity" else earlier
        earlier = earlier.join(_small(values.withColumn(flag, F.lit(True)), broadcast), key, "left")
        flags.append(flag)
    near = earlier.where(reduce(or_, [F.col(flag).isNotNull() for flag in flags]))
    return near.drop("_identity", *flags)


def _bronze_records(spark: SparkSession, root: str, retracted: DataFrame) -> DataFrame:
    """The bronze records of silver rows being retracted: found by the landing batch they came in
    (bronze files hold one ``_ingested_at`` each, so the scan skips the others) and their hash."""
    landed = sorted({r[0] for r in retracted.select("_ingested_at").distinct().collect()})  # a few batches
    bronze = spark.read.format("delta").load(table_path(root, "bronze.events")).where(
        F.col("_ingested_at").isin(landed))
    records = bronze.select(F.struct(*bronze.columns).alias("_raw")).withColumn(
        "_content_hash", content_hash(F.col("_raw"))).select("_raw", "_content_hash", "_raw._ingested_at",
                                                             "_raw._source_file")
    return records.dropDuplicates(["_content_hash", "_ingested_at", "_source_file"])


def _rejected_output(rows: DataFrame, batch_id: int) -> DataFrame:
    """Rejected rows as stored: the bronze record, reasons, and the date they are filed under —
    their event date, or none (one partition) for a time in the future: a device clock years ahead
    would otherwise scatter them over a partition per day."""
    raw_fields = [f.name for f in spec(REJECTED).schema.fields
                  if f.name not in ("event_id", "reasons", "event_date", "_batch_id", "_content_hash")]
    filed = F.when(~F.array_contains("_reasons", "future_timestamp"), F.col("event_date"))
    return rows.select(
        "event_id", F.col("_reasons").alias("reasons"), *[F.col(f"_raw.{f}").alias(f) for f in raw_fields],
        filed.alias("event_date"), F.lit(batch_id).cast("long").alias("_batch_id"), "_content_hash",
    )


def cleanse_events(spark: SparkSession, settings: Settings, stage: StageResult) -> Tally:
    root = settings.lakehouse.root
    rules = rules_dir(settings)
    event_types = load_event_types(rules).synonyms
    bots = load_bot_rules(rules)
    expectations = _expectations_for(spark, rules, EVENTS)
    tally = Tally()
    bronze = data_version(spark, table_path(root, "bronze.events"))  # a compaction is no new input
    if bronze >= 0 and not caught_up(spark, root, "cleanse/events", bronze):
        for key in (EVENTS, REJECTED, IDENTITY, DAILY):  # an earlier release's, upgraded before they are read
            ensure_table(spark, root, key, create=False)  # absent: its first write creates it

        def handle(batch: Batch) -> None:
            # One narrow pass for the batch's days (and its rows, counted); the judging then reads
            # only the batch's days of the earlier tables.
            day = F.to_date(parse_timestamp(F.col("timestamp"))).alias("event_date")
            per_day = batch.df.groupBy(day).count().collect()  # one row per day
            # _row: a stable id (the batch's partitions are read the same way every time) to find
            # a row's bronze record again without carrying it through the judging
            parsed = batch.df.transform(parse_events(event_types, keep_raw=False)).transform(
                assign_event_ids).withColumn("_row", F.monotonically_increasing_id())  # a row-wise projection: same ids
            _cleanse_batch(spark, settings, batch, parsed, per_day, tally, event_types, bots.user_agent_regex,
                           expectations)

        process_new(root, "cleanse/events", _bronze_stream(spark, root, "bronze.events"), handle)
        for key in (EVENTS, REJECTED, IDENTITY, DAILY):
            stage.versions[key] = current_version(spark, table_path(root, key))
    _record(stage, "events", EVENTS, tally, REASON_CODES, expectations)
    return tally


def _cleanse_batch(spark: SparkSession, settings: Settings, batch: Batch, parsed: DataFrame, per_day: list,
                   tally: Tally, event_types: dict[str, str], bot_regex: str,
                   expectations: tuple[Expectation, ...]) -> None:
    root, cleanse = settings.lakehouse.root, settings.cleanse
    bronze_rows = sum(r["count"] for r in per_day)
    dates = sorted(r["event_date"] for r in per_day if r["event_date"] is not None)
    # What earlier batches judged on these days; rows of this batch (a replay) never count.
    known = neighbours = None
    if holds_rows(spark, root, EVENTS) or holds_rows(spark, root, REJECTED):
        parsed = parsed.persist()  # read again for its ids and keys
        earlier = F.col("_batch_id") != batch.batch_id
        silver = read_or_empty(spark, root, EVENTS).where(earlier)  # one of the two may not exist yet
        rejected = read_or_empty(spark, root, REJECTED).where(earlier)
        lookback = _around(dates, cleanse.duplicate_lookback_days)
        near = _around(dates, 1)
        silver_near = _with_dates(silver, near)
        rejected_near = _with_dates(rejected, near).transform(rejected_as_parsed(event_types))
        drop_names = [e.name for e in expectations if e.action == "drop"]
        same_ids, near_rows, hand_on = (
            _listed_lookups(parsed) if bronze_rows <= LISTED_BATCH_ROWS
            else _joined_lookups(parsed, bronze_rows <= BROADCAST_BATCH_ROWS))
        judged_before = judged_events(same_ids(_with_dates(silver, lookback)),
                                      same_ids(_with_dates(rejected, lookback, with_null=True)))
        known = hand_on(judged_before) if judged_before is not None else None
        neighbours = as_neighbours(near_rows(silver_near), near_rows(rejected_near), drop_names)
    # Repeats are few within a batch, and among earlier events only a small batch can have many.
    few_repeats = known is None or bronze_rows <= BROADCAST_BATCH_ROWS
    rows = parsed.transform(judge_rows(utc_now(), cleanse.max_clock_skew_minutes, bot_regex, known, few_repeats,
                                       per_agent=bronze_rows > PER_AGENT_BATCH_ROWS))
    if neighbours is not None:
        rows = rows.unionByName(neighbours, allowMissingColumns=True)
    # Cut here: the window rules read the rows several times, and without this checkpoint each
    # read replans and reruns the lookups of earlier rows (measured 2026-12-02: the cleanse and
    # split-independence tests took 517 s without it, 251 s with it).
    rows = rows.localCheckpoint()
    classified = rows.transform(judge_windows(
        cleanse.bot_max_events_per_minute, cleanse.double_load_window_seconds,
        [(e.name, e.expect, e.action) for e in expectations])).localCheckpoint()
    parsed.unpersist()
    try:
        is_new = ~F.col("_neighbour")
        new = classified.where(is_new)
        retracting = F.col("_neighbour") & F.col("_in_silver") & (F.col("_outcome") == "rejected")
        # logins: clean rows with both ids, a device seen logged in (none: no identity write, nothing
        # to stitch); retract: silver rows of earlier batches a window now catches.
        outcomes, reasons, failed, checked, flagged = _judgements(classified, is_new, {
            "logins": is_new & (F.col("_outcome") == "silver") & F.col("anonymous_id").isNotNull()
            & F.col("customer_id").isNotNull(),
            "retract": retracting})
        logins = flagged["logins"]
        _check_expectations(EVENTS, expectations, failed)
        retract = classified.where(retracting)

        # 1. rejected rows: this batch's, then silver rows a window now catches (with their bronze record)
        written_rejected = 0
        if outcomes["rejected"]:
            turned_away = new.where(F.col("_outcome") == "rejected").select(
                "_row", "_reasons", "event_id", "event_date", "_content_hash")
            landed = batch.df.withColumn("_row", F.monotonically_increasing_id())  # the same ids as parsed's
            records = landed.select("_row", F.struct(*RAW_EVENT_FIELDS).alias("_raw")).join(
                _small(turned_away, outcomes["rejected"] <= BROADCAST_BATCH_ROWS), "_row")
            rows = _rejected_output(records, batch.batch_id)
            written_rejected = append(rows, root, REJECTED, txn=batch.txn(REJECTED))["rows"]
        retracted = 0
        if flagged["retract"]:
            records = _bronze_records(spark, root, retract)
            caught = retract.select("event_id", "_reasons", "event_date", "_ingested_at", "_source_file",
                                    "_content_hash").join(records, ["_content_hash", "_ingested_at", "_source_file"])
            retracted = append(_rejected_output(caught, batch.batch_id), root, REJECTED,
                               txn=batch.txn(f"{REJECTED}:retracted"))["rows"]

        # 2. identity map, 3. this batch's clean rows, stitched through it
        clean = new.where(F.col("_outcome") == "silver")
        pairs = identity_pairs(clean)
        # only a batch with a login changes the map
        if logins and holds_rows(spark, root, IDENTITY):
            merge(spark, root, IDENTITY, lambda t: t.alias("t").merge(
                pairs.alias("s"), "t.anonymous_id = s.anonymous_id")
                  .whenMatchedUpdate(
                      condition="s.last_seen_at >= t.last_seen_at",
                      set={"customer_id": "s.customer_id", "last_seen_at": "s.last_seen_at",
                           "first_seen_at": "least(t.first_seen_at, s.first_seen_at)"})
                  .whenMatchedUpdate(set={"first_seen_at": "least(t.first_seen_at, s.first_seen_at)"})
                  .whenNotMatchedInsertAll(), txn=batch.txn(IDENTITY))
        elif logins:  # nothing to match: one append of one row per device
            append(pairs, root, IDENTITY, txn=batch.txn(IDENTITY))
        identity_map = read_or_empty(spark, root, IDENTITY)
        silver_rows = clean.transform(stitch_identities(identity_map)).withColumn(
            "_batch_id", F.lit(batch.batch_id).cast("long")).select(*SILVER_COLUMNS)
        written_silver = 0
        if outcomes["silver"]:
            written_silver = append(silver_rows, root, EVENTS, txn=batch.txn(EVENTS))["rows"]

        # 4. earlier silver rows: retracted, or stitched to the customer their device now maps to
        since = min(dates) - timedelta(days=cleanse.stitch_lookback_days) if dates else None
        changes = retract.select("event_id", "event_date", "customer_id", F.lit("retract").alias("_op"))
        stitched = _stitchable(spark, root, batch, pairs, since, identity_map) if logins else None
        if stitched is not None:
            changes = changes.unionByName(stitched.withColumn("_op", F.lit("stitch")))
        changes = changes.persist()
        try:
            changed_days = []  # nothing retracted, no login: no earlier row changes, and no job to tell
            if flagged["retract"] or stitched is not None:
                changed_days = sorted(r[0] for r in changes.select("event_date").distinct().collect())  # a few days
            if changed_days:
                done = merge(spark, root, EVENTS, lambda t: t.alias("t").merge(
                    changes.alias("s"), "t.event_id = s.event_id AND t.event_date = s.event_date AND "
                    + dates_in("t.event_date", changed_days))
                    .whenMatchedDelete(condition="s._op = 'retract'")
                    .whenMatchedUpdate(condition="s._op = 'stitch'", set={"customer_id": "s.customer_id"}),
                    txn=batch.txn(f"{EVENTS}:changes"))
                tally.stitched += done["num_updated_rows"]
            # 5. the daily state of every customer-day touched, from silver as it now is
            if not holds_rows(spark, root, DAILY) and not changed_days:  # the first days: from the rows written
                append(silver_rows.select(*STATE_EVENT_COLUMNS).transform(daily_aggregates()), root, DAILY,
                       txn=batch.txn(DAILY))
            else:
                _refresh_daily_state(spark, root, batch, sorted({*dates, *changed_days}))
        finally:
            changes.unpersist()

        replayed = (outcomes["silver"] and not written_silver) or (outcomes["rejected"] and not written_rejected)
        if not replayed:  # a replayed batch's writes were skipped: nothing to count them by
            _balance(EVENTS, bronze_rows, written_silver, written_rejected, outcomes["duplicate"])
        tally.batches += 1
        tally.bronze_rows += bronze_rows
        tally.silver_rows += outcomes["silver"] - retracted
        tally.rejected_rows += outcomes["rejected"] + retracted
        tally.duplicates += outcomes["duplicate"]
        tally.retracted += retracted
        tally.reasons.update(reasons)
        tally.failed.update(failed)
        tally.checked += checked
    finally:
        classified.unpersist()


def _stitchable(spark: SparkSession, root: str, batch: Batch, pairs: DataFrame, since: date | None,
                identity_map: DataFrame) -> DataFrame | None:
    """Silver rows of earlier batches with only an anonymous id that this batch's logins map."""
    if since is None:
        return None
    devices = pairs.select("anonymous_id")
    mapped = identity_map.join(devices, "anonymous_id", "left_semi").select(
        "anonymous_id", F.col("customer_id").alias("_mapped"))
    silver = spark.read.format("delta").load(table_path(root, EVENTS))
    return (
        silver.where((F.col("event_date") >= F.lit(since)) & F.col("customer_id").isNull()
                     & F.col("anonymous_id").isNotNull() & (F.col("_batch_id") != batch.batch_id))
        .select("event_id", "event_date", "anonymous_id")
        .join(mapped, "anonymous_id")
        .select("event_id", "event_date", F.col("_mapped").alias("customer_id"))
    )


def _refresh_daily_state(spark: SparkSession, root: str, batch: Batch, dates: list[date]) -> None:
    """Recompute ``gold.customer_daily`` for the days the batch touched from silver as it now is,
    replacing those days' partitions in one commit (a day left without a customer's events loses
    their row)."""
    if not dates:
        return
    silver = spark.read.format("delta").load(table_path(root, EVENTS)).where(F.col("event_date").isin(dates))
    fresh = silver.select(*STATE_EVENT_COLUMNS).transform(daily_aggregates())
    overwrite(fresh, root, DAILY, replace_where=dates_in("event_date", dates), txn=batch.txn(DAILY))


# -- customers ------------------------------------------------------------------------------------
def cleanse_customers(spark: SparkSession, settings: Settings, stage: StageResult) -> Tally:
    root = settings.lakehouse.root
    rules = rules_dir(settings)
    locations = load_locations(rules)
    expectations = _expectations_for(spark, rules, CUSTOMERS)
    tally = Tally()
    bronze = data_version(spark, table_path(root, "bronze.crm"))
    if bronze < 0 or caught_up(spark, root, "cleanse/customers", bronze):
        _record(stage, "customers", CUSTOMERS, tally, CUSTOMER_REASON_CODES, expectations)
        return tally
    for key in (CUSTOMERS, HISTORY, REJECTED_CUSTOMERS):
        ensure_table(spark, root, key, create=False)
    # Sources whose records carry only the fields they change (Segment identify traits).
    partial = sorted(name for name, source in settings.sources.items() if source.kind == "crm" and source.partial)

    def handle(batch: Batch) -> None:
        bronze_rows = batch.df.count()
        parsed = (
            batch.df.transform(parse_customers(
                locations.cities, locations.countries, utc_now().date(),
                latest=utc_now() + timedelta(minutes=settings.cleanse.max_clock_skew_minutes)))
            .withColumn("_partial", F.col("source").isin(*partial) if partial else F.lit(False))
            .withColumn("_duplicate", F.lit(False))  # a CRM record is a version, never a duplicate
            .withColumn("_judged_at", F.when(F.size("_reasons") > 0, 0).otherwise(99))
            .withColumn("_neighbour", F.lit(False))
            .transform(apply_expectations([(e.name, e.expect, e.action) for e in expectations]))
            .withColumn("_outcome", F.when(F.size("_reasons") > 0, "rejected").otherwise("silver"))
            .withColumn("_batch_id", F.lit(batch.batch_id).cast("long"))
            .persist()
        )
        try:
            outcomes, reasons, failed, checked, _ = _judgements(parsed)
            _check_expectations(CUSTOMERS, expectations, failed)
            rejected = parsed.where(F.col("_outcome") == "rejected").select(
                F.col("_reasons").alias("reasons"), "_raw.*", "_batch_id")
            written_rejected = 0
            if outcomes["rejected"]:
                written_rejected = append(rejected, root, REJECTED_CUSTOMERS, txn=batch.txn(REJECTED_CUSTOMERS))["rows"]
            usable = parsed.where(F.col("_outcome") == "silver")
            if outcomes["silver"] and partial:
                usable = usable.transform(fill_partial(read_or_empty(spark, root, HISTORY)))
            if outcomes["silver"]:
                newest = latest_per_customer(usable).select(*PROFILE_COLUMNS, "_source_file", "_ingested_at",
                                                            "_content_hash", "_batch_id")
                if holds_rows(spark, root, CUSTOMERS):
                    merge(spark, root, CUSTOMERS, lambda t: t.alias("t").merge(
                        newest.alias("s"), "t.customer_id = s.customer_id")
                        .whenMatchedUpdateAll(condition="s.updated_at > t.updated_at")
                        .whenNotMatchedInsertAll(), txn=batch.txn(CUSTOMERS))
                else:
                    append(newest, root, CUSTOMERS, txn=batch.txn(CUSTOMERS))
                if holds_rows(spark, root, HISTORY):
                    history = rebuild_history(spark.read.format("delta").load(table_path(root, HISTORY)), usable)
                    merge(spark, root, HISTORY, lambda t: t.alias("t").merge(
                        history.alias("s"), "t.customer_id = s.customer_id AND t.valid_from = s.valid_from")
                        .whenMatchedUpdateAll()
                        .whenNotMatchedInsertAll(), txn=batch.txn(HISTORY))
                else:
                    empty = spark.createDataFrame([], spec(HISTORY).schema)
                    append(rebuild_history(empty, usable), root, HISTORY, txn=batch.txn(HISTORY))
            # Every usable record is either the customer's current row or a history version.
            if not (outcomes["rejected"] and not written_rejected):
                _balance(CUSTOMERS, bronze_rows, outcomes["silver"], written_rejected, 0)
            tally.batches += 1
            tally.bronze_rows += sum(outcomes.values())
            tally.silver_rows += outcomes["silver"]
            tally.rejected_rows += outcomes["rejected"]
            tally.reasons.update(reasons)
            tally.failed.update(failed)
            tally.checked += checked
        finally:
            parsed.unpersist()

    process_new(root, "cleanse/customers", _bronze_stream(spark, root, "bronze.crm"), handle)
    _record(stage, "customers", CUSTOMERS, tally, CUSTOMER_REASON_CODES, expectations)
    for key in (CUSTOMERS, HISTORY, REJECTED_CUSTOMERS):
        stage.versions[key] = current_version(spark, table_path(root, key))
    return tally


# -- products -------------------------------------------------------------------------------------
def _upsert_products(spark: SparkSession, root: str, batch: Batch, rows: DataFrame, replaces: str) -> int:
    """Products in ``rows`` (one per id) into silver.products: new ones inserted, existing ones
    replaced where ``replaces`` holds. Returns the rows written."""
    rows = rows.withColumn("_batch_id", F.lit(batch.batch_id).cast("long")).select(*PRODUCTS_SCHEMA.fieldNames())
    if not holds_rows(spark, root, PRODUCTS):
        return append(rows, root, PRODUCTS, txn=batch.txn(PRODUCTS))["rows"]
    done = merge(spark, root, PRODUCTS, lambda t: t.alias("t").merge(rows.alias("s"), "t.product_id = s.product_id")
                 .whenMatchedUpdateAll(condition=replaces).whenNotMatchedInsertAll(), txn=batch.txn(PRODUCTS))
    return done["num_inserted_rows"] + done["num_updated_rows"]


def cleanse_products(spark: SparkSession, settings: Settings, stage: StageResult, at: datetime | None = None
                     ) -> Tally:
    """Catalog records -> silver.products (newest ``updated_at`` wins; a feed's record replaces
    one made from events), then products the new silver events mention and no feed lists — with
    ``at`` (a stream's tick), not again within ``cleanse.complete_products_minutes`` of the last
    time: a product seen only in events waits a few minutes for its card, the tick does not."""
    root = settings.lakehouse.root
    tally = Tally()
    catalog = data_version(spark, table_path(root, "bronze.catalog"))
    if catalog >= 0 and not caught_up(spark, root, "cleanse/products", catalog):
        for key in (PRODUCTS, REJECTED_PRODUCTS):
            ensure_table(spark, root, key, create=False)
        latest = utc_now() + timedelta(minutes=settings.cleanse.max_clock_skew_minutes)

        def handle(batch: Batch) -> None:
            parsed = batch.df.transform(parse_catalog(latest)).withColumn(
                "_batch_id", F.lit(batch.batch_id).cast("long")).persist()
            try:
                reasons = Counter({tuple(r["_reasons"]): r["count"]
                                   for r in parsed.groupBy("_reasons").count().collect()})  # a handful
                usable = reasons.pop((), 0)
                turned_away = sum(reasons.values())
                written = 0
                if turned_away:
                    written = append(parsed.where(F.size("_reasons") > 0).select(
                        F.col("_reasons").alias("reasons"), "_raw.*", "_batch_id"), root, REJECTED_PRODUCTS,
                        txn=batch.txn(REJECTED_PRODUCTS))["rows"]
                    if written:  # zero: a replay, whose write Delta skipped
                        _balance(PRODUCTS, usable + turned_away, usable, written, 0)
                if usable:
                    newest = latest_per_product(parsed.where(F.size("_reasons") == 0))
                    _upsert_products(spark, root, batch, newest, "t.source = 'events' OR s.updated_at > t.updated_at")
                tally.batches += 1
                tally.bronze_rows += usable + turned_away
                tally.silver_rows += usable
                tally.rejected_rows += turned_away
                for combination, count in reasons.items():
                    tally.reasons.update({reason: count for reason in combination})
            finally:
                parsed.unpersist()

        process_new(root, "cleanse/products", _bronze_stream(spark, root, "bronze.catalog"), handle)
    _record(stage, "products", PRODUCTS, tally, PRODUCT_REASON_CODES, ())
    events = data_version(spark, table_path(root, EVENTS))
    every = timedelta(minutes=settings.cleanse.complete_products_minutes)
    if at is not None and events >= 0 and ran_lately(spark, root, "products_from_events", at, every):
        stage.details["products_from_events"] = "kept (cleanse.complete_products_minutes)"
    elif events >= 0 and not caught_up(spark, root, "cleanse/products_from_events", events):
        completed = Counter()

        def complete(batch: Batch) -> None:
            completed["rows"] += _upsert_products(spark, root, batch, products_from_events(batch.df),
                                                  "t.source = 'events' AND s.updated_at > t.updated_at")

        process_new(root, "cleanse/products_from_events", _bronze_stream(spark, root, EVENTS), complete)
        stage.metrics["products.from_events"] = completed["rows"]
        stage.outcomes["products_from_events"] = {"as_of": (at or utc_now()).isoformat()}
    if catalog >= 0 or events >= 0:
        stage.versions[PRODUCTS] = current_version(spark, table_path(root, PRODUCTS))
    return tally


def cleanse_stage(spark: SparkSession, settings: Settings, stage: StageResult, events: bool = True,
                  customers: bool = True, tick: datetime | None = None) -> None:
    """Events, customers, then products; ``tick``: a stream's tick at that time (see
    :func:`cleanse_products`)."""
    if events:
        cleanse_events(spark, settings, stage)
    if customers:
        cleanse_customers(spark, settings, stage)
    if events:
        cleanse_products(spark, settings, stage, tick)


def cleanse(spark: SparkSession, settings: Settings, events: bool = True, customers: bool = True) -> StageResult:
    """``lakehouse cleanse``: one stage, recorded."""
    return run_stage(spark, settings.lakehouse.root, settings.env, "cleanse",
                     lambda stage: cleanse_stage(spark, settings, stage, events, customers))

