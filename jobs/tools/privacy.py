"""``lakehouse privacy erase``: forget customers in every table, every version, and downstream.

1. Linked identifiers are gathered: the anonymous ids stitched to each customer
   (``silver.identity_map``) and their emails (bronze and silver CRM tables).
2. ``ops.erasure_log`` gets a ``requested`` row per customer — a salted SHA-256 of the id and of
   each linked identifier, never the values — so ingest drops their records from then on, even
   if the erasure is interrupted.
3. Every table holding them loses their rows (events by customer id, anonymous id, or the raw
   text of a corrupt record; CRM rows by id or email; gold, ops sync tables by id), with MERGE …
   WHEN MATCHED THEN DELETE against the values, so no identifier lands in a commit's logged
   predicate the way a ``DELETE … WHERE id IN (…)`` would put it there.
4. Deletion-vector rows are purged (``REORG TABLE … APPLY (PURGE)``) and each touched table is
   VACUUMed with ``privacy.erase_vacuum_retention_hours`` (default 0), so no earlier version —
   nor its change-data files — can be read back by time travel.
5. Each configured platform is told: Klaviyo's data-privacy deletion job, SFMC rows deleted with
   the SOAP API, a signed erase message to the webhook, an erasure manifest in file/s3 exports.
6. A ``completed`` row records which tables lost how many rows and what each platform answered.

Rows landed in bronze but not cleansed yet are cleansed first (inside the erasure, under its
writer lease), so no pending stage needs a file the VACUUM removes.

An erasure interrupted after its MERGEs (a crash, a failed purge) left ``requested`` rows with no
``completed`` one, and maybe old versions still readable. The next erasure — of anyone, the same
customers included, whose rows are then already gone from the current versions — finds it, purges
and VACUUMs every table, and writes its ``completed`` rows too.

The erasure's MERGE commits only carry ``delete`` change rows and the purge rewrites are not data
changes; the cleanse job reads only appending bronze commits, so nothing comes back.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.runtime.errors import InputError
from jobs.runtime.runlog import StageResult, job_run, utc_now
from jobs.runtime.secrets import SecretSource
from jobs.runtime.settings import Settings
from jobs.runtime.tables import append_rows, holds_rows, is_delta_table, merge, read_or_empty, table_path
from transforms.schema import normalized_id, normalized_id_text

ERASURE_LOG = "ops.erasure_log"
EVENT_TABLES = ("bronze.events", "silver.events", "silver.rejected_events")
CRM_TABLES = ("bronze.crm", "silver.customers", "silver.customers_history", "silver.rejected_customers")
BY_CUSTOMER = ("silver.identity_map", "gold.customer_daily", "gold.customer_features", "gold.segment_membership",
               "gold.product_recommendations", "ops.sync_ledger", "ops.sync_state")


@dataclass
class ErasureResult:
    erasure_id: str
    customers: int
    tables: dict[str, int] = field(default_factory=dict)
    platforms: dict[str, str] = field(default_factory=dict)
    found: list[str] = field(default_factory=list)  # the requested ids some table held
    requested: list[str] = field(default_factory=list)


def salted(salt: str, value: str) -> str:
    return hashlib.sha256(f"{salt}:{value}".encode()).hexdigest()


def _salt_frame(spark: SparkSession, salt: str) -> DataFrame:
    """The salt as a one-row frame: joined in as data, never a literal of a plan, so it does not
    reach ``EXPLAIN``, the SQL tab of the UI or an event log."""
    return spark.createDataFrame([(f"{salt}:",)], "_salt string")


def _salt(settings: Settings) -> str:
    return SecretSource(settings.secrets).get("privacy.salt_env", settings.privacy.salt_env)


def erased_filter(spark: SparkSession, settings: Settings) -> tuple[DataFrame, DataFrame] | None:
    """(the salt as a one-row frame, one column ``hash`` of every erased identifier), or None when
    nobody was erased."""
    if not holds_rows(spark, settings.lakehouse.root, ERASURE_LOG):
        return None
    log = read_or_empty(spark, settings.lakehouse.root, ERASURE_LOG)
    hashes = log.select(F.explode(F.array_union(F.array("id_hash"), F.coalesce(
        "linked_hashes", F.array().cast("array<string>")))).alias("hash")).distinct()
    return _salt_frame(spark, _salt(settings)), hashes


def without_erased(erased: tuple[DataFrame, DataFrame] | None, kind: str) -> Callable[[DataFrame], DataFrame]:
    """A transform dropping landed rows (``kind`` events or crm; catalog rows pass) of erased identifiers: each id is
    normalized, salted with the salt frame's value and compared with the erased hashes."""
    columns = {"events": [normalized_id(F.col("customer_id")), normalized_id(F.col("anonymous_id"))],
               "crm": [normalized_id(F.col("customer_id")), F.lower(F.trim(F.col("email")))]}.get(kind, [])

    def transform(frame: DataFrame) -> DataFrame:
        if erased is None or not columns:  # a catalog holds no one's data
            return frame
        salt, hashes = erased
        frame = frame.crossJoin(F.broadcast(salt))
        for column in columns:
            frame = frame.join(F.broadcast(hashes.withColumnRenamed("hash", "_erased_hash")),
                               F.sha2(F.concat(F.col("_salt"), column), 256) == F.col("_erased_hash"), "left_anti")
        return frame.drop("_salt")

    return transform


def _linked(spark: SparkSession, root: str, ids: list[str]) -> tuple[list[str], list[str]]:
    """Anonymous ids and emails of the customers: a handful of values per customer."""
    anonymous = [r[0] for r in read_or_empty(spark, root, "silver.identity_map")
                 .where(F.col("customer_id").isin(ids)).select("anonymous_id").distinct().collect()]
    emails: set[str] = set()
    for key in ("bronze.crm", "silver.customers"):
        emails |= {r[0] for r in read_or_empty(spark, root, key).where(F.col("customer_id").isin(ids))
                   .where(F.col("email").isNotNull()).select(F.lower(F.trim("email"))).distinct().collect()}
    return sorted(a for a in anonymous if a), sorted(emails)


def _matches(key: str, ids: list[str], anonymous: list[str],
             emails: list[str]) -> list[tuple[Callable[[Column], Column], list[str]]]:
    """(condition on target ``t`` and source value, values) pairs: a row matching any is theirs."""
    def equal(column: str) -> Callable[[Column], Column]:
        return lambda value: normalized_id(F.col(f"t.{column}")) == value

    def in_raw_text(value: Column) -> Column:  # a whole token: erasing C1 leaves C10's records alone
        pattern = F.concat(F.lit(r"(?<![\w.@+-])\Q"), value, F.lit(r"\E(?![\w.@-])"))
        return F.col("t._corrupt_record").isNotNull() & F.regexp_like(F.col("t._corrupt_record"), pattern)

    by_id = [(equal("customer_id"), ids)]
    if key in EVENT_TABLES:
        matches = [*by_id, (equal("anonymous_id"), anonymous)]
        if key != "silver.events":  # raw text of records that could not be parsed: any identifier
            matches.append((in_raw_text, [*ids, *anonymous, *emails]))
        return matches
    if key in CRM_TABLES:
        return [*by_id, (lambda value: F.lower(F.trim(F.col("t.email"))) == value, emails)]
    return by_id


def _delete(spark: SparkSession, root: str, key: str, matches: list[tuple[Callable[[Column], Column], list[str]]],
            marker: dict[str, str]) -> int:
    """Delete the matching rows in one MERGE against a small DataFrame of (kind, value) pairs —
    after a semi-join shows there are any (most tables of most erasures hold nothing).

    Not ``DELETE … WHERE customer_id IN (…)``: Delta keeps a DELETE's predicate, literals and all,
    in the commit's ``operationParameters``, which would write the erased ids into the table log.
    A MERGE's logged condition names only columns (``t.customer_id = s.value``)."""
    pairs = [(str(kind), value) for kind, (_, values) in enumerate(matches) for value in values]
    if not pairs:
        return 0
    source = F.broadcast(spark.createDataFrame(pairs, "kind string, value string"))
    condition = None
    for kind, (match, _) in enumerate(matches):
        part = (F.col("s.kind") == str(kind)) & match(F.col("s.value"))
        condition = part if condition is None else condition | part
    target = spark.read.format("delta").load(table_path(root, key)).alias("t")
    if target.join(source.alias("s"), condition, "left_semi").limit(1).count() == 0:
        return 0
    done = merge(spark, root, key, lambda table: table.alias("t").merge(source.alias("s"), condition)
                 .whenMatchedDelete(), metadata=marker)
    return done["num_deleted_rows"]


def _unfinished(spark: SparkSession, root: str, erasure_id: str) -> list[Any]:
    """``requested`` rows of earlier erasures that never wrote ``completed`` (a handful)."""
    log = read_or_empty(spark, root, ERASURE_LOG)
    done = log.where(F.col("status") == "completed").select("erasure_id")
    return (log.where((F.col("status") == "requested") & (F.col("erasure_id") != erasure_id))
            .join(done, "erasure_id", "left_anti").select("erasure_id", "id_hash", "linked_hashes").collect())


def _purge(spark: SparkSession, path: str, retention_hours: float, always: bool = False) -> None:
    """Rewrite the files the MERGE only marked with deletion vectors (if it did: its own metrics
    say; ``always`` when an earlier erasure's MERGE may have), then VACUUM every file no longer in
    the table — a full listing, not the log's LITE view, so a file an aborted write left behind
    goes too."""
    [last] = DeltaTable.forPath(spark, path).history(1).select("operationMetrics").collect()
    if always or int((last["operationMetrics"] or {}).get("numTargetDeletionVectorsAdded", "0") or 0):
        spark.sql(f"REORG TABLE delta.`{path}` APPLY (PURGE)")
    key = "spark.databricks.delta.retentionDurationCheck.enabled"
    previous = spark.conf.get(key, "true")
    spark.conf.set(key, "false")
    try:
        DeltaTable.forPath(spark, path).vacuum(retention_hours)
    finally:
        spark.conf.set(key, previous)


def erase(spark: SparkSession, settings: Settings, customer_ids: Iterable[str],
          platforms: tuple[str, ...] = ()) -> ErasureResult:
    ids = sorted({i for i in (normalized_id_text(c) for c in customer_ids) if i})
    if not ids:
        raise InputError("no customer ids to erase")
    root = settings.lakehouse.root
    salt = _salt(settings)
    result = ErasureResult(uuid.uuid4().hex, len(ids), requested=ids)
    with job_run(spark, root, "privacy_erase", settings.env) as run:
        # Bronze rows not cleansed yet would be read from files the VACUUM below removes (and
        # would bring the customer back into silver): bring silver up to date first.
        from jobs.stages.cleanse import cleanse_stage

        cleanse_stage(spark, settings, StageResult("cleanse", run.run_id))
        anonymous, emails = _linked(spark, root, ids)
        result.found = _found(spark, root, ids)
        linked = [salted(salt, v) for v in (*anonymous, *emails)]
        hashed = [(salted(salt, c), linked) for c in ids]
        append_rows(spark, root, ERASURE_LOG, [
            (result.erasure_id, h, links, "requested", None, None, utc_now()) for h, links in hashed])
        marker = {"run_id": run.run_id, "erasure_id": result.erasure_id}
        unfinished = _unfinished(spark, root, result.erasure_id)
        for key in (*EVENT_TABLES, *CRM_TABLES, *BY_CUSTOMER):
            path = table_path(root, key)
            if not is_delta_table(spark, path):
                continue
            deleted = _delete(spark, root, key, _matches(key, ids, anonymous, emails), marker)
            if deleted:
                result.tables[key] = deleted
            if deleted or unfinished:
                _purge(spark, path, settings.privacy.erase_vacuum_retention_hours, always=bool(unfinished))
        for name in platforms:
            result.platforms[name] = _erase_at(settings, name, ids)
        append_rows(spark, root, ERASURE_LOG, [
            *[(result.erasure_id, h, links, "completed", result.tables, result.platforms, utc_now())
              for h, links in hashed],
            *[(r["erasure_id"], r["id_hash"], r["linked_hashes"], "completed", {}, {"finished_by": result.erasure_id},
               utc_now()) for r in unfinished]])
        run.rows_in = len(ids)
        run.rows_out = sum(result.tables.values())
        run.metrics = {**{f"rows.{k}": v for k, v in result.tables.items()}, "customers_found": len(result.found)}
    return result


def _found(spark: SparkSession, root: str, ids: list[str]) -> list[str]:
    """Which of ``ids`` any table holding customers knows (one pass, at most ``len(ids)`` rows)."""
    frames = [spark.read.format("delta").load(table_path(root, key)).select(
        normalized_id(F.col("customer_id")).alias("customer_id"))
        for key in (*EVENT_TABLES, *CRM_TABLES, "silver.identity_map")
        if is_delta_table(spark, table_path(root, key))]
    if not frames:
        return []
    union = frames[0]
    for frame in frames[1:]:
        union = union.unionByName(frame)
    return sorted(r[0] for r in union.where(F.col("customer_id").isin(ids)).distinct().collect())


def read_id_file(path: Path) -> list[str]:
    """Customer ids, one per line, as a spreadsheet or an editor saves them: UTF-8 with or without
    a byte-order mark, any line ending, blank lines and surrounding spaces ignored."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"--from-file: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"--from-file: {path} is not UTF-8 text (byte {exc.start})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _erase_at(settings: Settings, name: str, ids: list[str]) -> str:
    from jobs.destinations import destination

    target: Any = destination(settings, name)
    if not hasattr(target, "erase"):
        return "not supported"
    return str(target.erase(ids))
