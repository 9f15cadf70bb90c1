"""``lakehouse sync``: send each segment's membership and attribute changes to a destination.

What the destination holds is kept as a ledger of acknowledged changes (``ops.sync_ledger``).
Each run compares the desired state (current members who consent, with their template
attributes) with the ledger, so changes are netted, a customer without consent is never added
or updated and is removed if they were there, and rows a destination refused or never
acknowledged are simply still different next time. Batches are appended to the ledger as they
are acknowledged, so a run killed anywhere resumes without sending an acknowledged change
again; a batch sent but not yet acknowledged is sent again with the same idempotency key (a
hash of its content). ``ops.sync_state`` advances once every batch of the run is acknowledged
or its refused rows are recorded in ``ops.sync_failures``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from jobs.destinations import Destination, destination
from jobs.runtime.errors import InputError, LakehouseError
from jobs.runtime.runlog import job_run, utc_now
from jobs.runtime.settings import Settings
from jobs.runtime.tables import append_rows, is_delta_table, latest_version, read_or_empty, table_path
from transforms.sync import ACTION_ORDER, TEMPLATE_FIELDS, delivered_members, desired_members, plan_changes

MEMBERSHIP, FEATURES = "gold.segment_membership", "gold.customer_features"
LEDGER, STATE, LOG, FAILURES = "ops.sync_ledger", "ops.sync_state", "ops.sync_log", "ops.sync_failures"


class LargeChange(LakehouseError):
    """A run would remove more of a segment than the guard allows."""


@dataclass
class SegmentSync:
    segment_id: str
    synced_version: int | None = None
    adds: int = 0
    removes: int = 0
    updates: int = 0
    failed: int = 0
    batches: int = 0
    delivered_before: int = 0
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class SyncResult:
    destination: str
    run_id: str
    version: int
    dry_run: bool
    segments: list[SegmentSync]


def batch_key(destination_name: str, segment_id: str, rows: list[dict[str, Any]]) -> str:
    """Idempotency key: the same changes to the same place always get the same key."""
    content = json.dumps([destination_name, segment_id, rows], sort_keys=True, default=str)
    return hashlib.sha256(content.encode()).hexdigest()


def _batches(changes: DataFrame, size: int) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(segment_id, rows) of at most ``size`` changes, streamed partition by partition."""
    order = F.create_map(*[F.lit(x) for kv in ACTION_ORDER.items() for x in kv])[F.col("action")]
    ordered = changes.orderBy("segment_id", order, "customer_id")
    current: str | None = None
    rows: list[dict[str, Any]] = []
    for row in ordered.toLocalIterator():
        if rows and (row["segment_id"] != current or len(rows) >= size):
            yield current, rows  # type: ignore[misc]
            rows = []
        current = row["segment_id"]
        rows.append(_payload(row))
    if rows:
        yield current, rows  # type: ignore[misc]


def _payload(row: Row) -> dict[str, Any]:
    payload = {"action": row["action"], "customer_id": row["customer_id"], "attr_hash": row["attr_hash"]}
    if row["action"] != "remove":
        payload.update({name: row[name] for name in TEMPLATE_FIELDS})
    return payload


def sync(
    spark: SparkSession, settings: Settings, destination_name: str, segment_ids: tuple[str, ...] = (),
    dry_run: bool = False, full_refresh: bool = False, allow_large_change: bool = False,
    progress: Callable[[int, int], Any] | None = None,
) -> SyncResult:
    root = settings.lakehouse.root
    target: Destination = destination(settings, destination_name)
    if not is_delta_table(spark, table_path(root, MEMBERSHIP)):
        raise InputError("no segment membership yet: run `lakehouse segment` first")
    version = latest_version(spark, table_path(root, MEMBERSHIP))
    membership = spark.read.format("delta").option("versionAsOf", version).load(table_path(root, MEMBERSHIP))
    known = {r[0] for r in membership.select("segment_id").distinct().collect()}  # one row per segment
    ledger = read_or_empty(spark, root, LEDGER).where(F.col("destination") == destination_name)
    known |= {r[0] for r in ledger.select("segment_id").distinct().collect()}
    unknown = sorted(set(segment_ids) - known)
    if unknown:
        raise InputError(f"unknown segment {unknown[0]!r} (known: {', '.join(sorted(known)) or 'none'})")
    chosen = sorted(segment_ids or known)

    desired = membership.where(F.col("segment_id").isin(chosen)).transform(
        desired_members(read_or_empty(spark, root, FEATURES)))
    delivered = delivered_members(ledger.where(F.col("segment_id").isin(chosen)))
    changes = desired.transform(plan_changes(delivered, full_refresh)).persist()
    try:
        counts = Counter({(r["segment_id"], r["action"]): r["count"]
                          for r in changes.groupBy("segment_id", "action").count().collect()})
        sizes = {r["segment_id"]: r["count"] for r in delivered.groupBy("segment_id").count().collect()}
        synced = {r["segment_id"]: r["v"] for r in read_or_empty(spark, root, STATE)
                  .where(F.col("destination") == destination_name)
                  .groupBy("segment_id").agg(F.max("synced_version").alias("v")).collect()}
        plan = [SegmentSync(s, synced.get(s), counts[(s, "add")], counts[(s, "remove")], counts[(s, "update")],
                            delivered_before=sizes.get(s, 0)) for s in chosen]
        _guard(plan, settings.sync.max_remove_share, allow_large_change)
        target.prepare(chosen)
        if dry_run:
            for segment in plan:
                for action in ("add", "remove", "update"):
                    sample = (changes.where((F.col("segment_id") == segment.segment_id) & (F.col("action") == action))
                              .orderBy("customer_id").limit(settings.sync.sample_rows).collect())
                    segment.samples[action] = [_payload(r) for r in sample]
            return SyncResult(destination_name, "dry-run", version, True, plan)
        with job_run(spark, root, f"sync:{destination_name}", settings.env) as run:
            by_segment = {s.segment_id: s for s in plan}
            batch_numbers: dict[str, int] = defaultdict(int)
            size = settings.sync.batch_size
            total = sum(-(-(s.adds + s.removes + s.updates) // size) for s in plan)
            for done, (segment_id, rows) in enumerate(_batches(changes, size), start=1):
                batch_numbers[segment_id] += 1
                _send(spark, settings, target, run.run_id, version, by_segment[segment_id],
                      batch_numbers[segment_id], rows)
                if progress:
                    progress(done, total)
            now = utc_now()
            append_rows(spark, root, STATE, [
                (destination_name, s.segment_id, version, run.run_id, s.adds, s.removes, s.updates, s.failed, now)
                for s in plan])
            target.finish(run.run_id, {
                "run_id": run.run_id, "destination": destination_name, "membership_version": version,
                "segments": {s.segment_id: {"adds": s.adds, "removes": s.removes, "updates": s.updates,
                                            "failed": s.failed, "batches": s.batches} for s in plan},
            })
            run.rows_in = sum(s.adds + s.removes + s.updates for s in plan)
            run.rows_out = run.rows_in - sum(s.failed for s in plan)
            run.rows_rejected = sum(s.failed for s in plan)
            run.delta_versions = {MEMBERSHIP: version}
            return SyncResult(destination_name, run.run_id, version, False, plan)
    finally:
        changes.unpersist()


def _guard(plan: list[SegmentSync], max_share: float, allowed: bool) -> None:
    for segment in plan:
        if allowed or segment.delivered_before == 0:
            continue
        share = segment.removes / segment.delivered_before
        if share > max_share:
            raise LargeChange(
                f"sync would remove {segment.removes} of {segment.delivered_before} synced members of "
                f"{segment.segment_id} ({share:.0%} > {max_share:.0%}); nothing was sent. "
                "Check the segment, then rerun with --allow-large-change"
            )


def _send(spark: SparkSession, settings: Settings, target: Destination, run_id: str, version: int,
          segment: SegmentSync, batch_no: int, rows: list[dict[str, Any]]) -> None:
    key = batch_key(target.name, segment.segment_id, rows)
    started = time.perf_counter()
    result = target.send(run_id, segment.segment_id, batch_no, key, rows)
    seconds = time.perf_counter() - started
    failed = dict(result.failed)
    now = utc_now()
    root = settings.lakehouse.root
    append_rows(spark, root, LEDGER, [
        (target.name, segment.segment_id, row["customer_id"], row["action"], row["attr_hash"], key, run_id, now,
         seq) for seq, row in enumerate(rows) if row["customer_id"] not in failed])
    append_rows(spark, root, FAILURES, [
        (target.name, segment.segment_id, row["customer_id"], row["action"], failed[row["customer_id"]],
         key, run_id, now) for row in rows if row["customer_id"] in failed])
    append_rows(spark, root, LOG, [(
        target.name, segment.segment_id, run_id, segment.synced_version, version, batch_no, key, len(rows),
        result.attempts, result.http_status, "partial" if failed else "acknowledged", seconds, now)])
    segment.failed += len(failed)
    segment.batches += 1
