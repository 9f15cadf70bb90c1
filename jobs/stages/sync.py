"""``lakehouse sync``: send each segment's membership and attribute changes to a destination.

What a destination holds is a compact state (``ops.sync_state``: per destination, segment and
customer, the attribute hash it was sent) plus the batches acknowledged since the state was last
folded (``ops.sync_ledger`` rows after the state's ``through_batch_seq``; the ledger's statistics
let that read skip every older file). Each run compares the desired state (current members who
consent, with their template attributes) with it, so changes are netted, a customer without
consent is never added or updated and is removed if they were there, and rows a destination
refused or never acknowledged are simply still different next time.

Every batch's changes, each ``acknowledged`` or ``refused`` with the error, go into the ledger
as it is acknowledged: the batches of a sync share one commit at the end, plus one whenever
``sync.ledger_commit_seconds`` have passed since the last (and one when a batch fails, for those
before it), so a run killed anywhere resumes without sending again what the ledger holds; a batch
sent but not yet recorded is sent again with the same idempotency key.
Once more than ``sync.fold_after_batches`` batches follow the state, the run folds them into it in
one more commit, so what a sync reads stays bounded; a destination with no changes costs no
commit and no request. A sync whose inputs are those of the last one (the membership version,
the digest of the feature columns it reads, the recommendations and catalog versions, the
segments and the destination's settings), which refused nothing, runs no Spark job at all.
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
from jobs.rules.segments import load_segments
from jobs.runtime.errors import InputError, LakehouseError
from jobs.runtime.pii import mask
from jobs.runtime.runlog import StageResult, previous_outcome, recorded_outcomes, run_stage, utc_now
from jobs.runtime.settings import Settings, rules_dir
from jobs.runtime.tables import (
    append_rows,
    current_version,
    last_data_commit,
    overwrite,
    read_or_empty,
    table_path,
)
from transforms.sync import (
    ACKNOWLEDGED,
    ACTION_ORDER,
    REFUSED,
    TEMPLATE_FIELDS,
    delivered_members,
    desired_members,
    plan_changes,
)

MEMBERSHIP, FEATURES = "gold.segment_membership", "gold.customer_features"
RECOMMENDATIONS, PRODUCTS = "gold.product_recommendations", "silver.products"
LEDGER, STATE = "ops.sync_ledger", "ops.sync_state"


class LargeChange(LakehouseError):
    """A run would remove more of a segment than the guard allows."""


class TargetChanged(LakehouseError):
    """The destination's settings now point a synced segment somewhere else."""


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


def batch_key(destination_name: str, segment_id: str, batch_seq: int, rows: list[dict[str, Any]]) -> str:
    """Idempotency key of one logical change set: its place in the destination's ledger and its
    content. A batch resent after a crash (not yet in the ledger) gets its first key again; the
    same rows sent later — a customer removed, added back, removed again — get a new one."""
    content = json.dumps([destination_name, segment_id, batch_seq, rows], sort_keys=True, default=str)
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
        values = row.asDict(recursive=True)  # product lists: plain dicts
        payload.update({name: values[name] for name in TEMPLATE_FIELDS})
    return payload


@dataclass(frozen=True)
class Delivered:
    """A destination's compact state and the ledger batches after it."""

    state: DataFrame
    through: int  # the last batch the state folds in (-1: none)
    next_seq: int

    def tail(self, spark: SparkSession, root: str, name: str, until: int | None = None) -> DataFrame:
        later = (F.col("destination") == name) & (F.col("batch_seq") > self.through)
        if until is not None:
            later = later & (F.col("batch_seq") <= until)
        return read_or_empty(spark, root, LEDGER).where(later)

    def members(self, spark: SparkSession, root: str, name: str, until: int | None = None) -> DataFrame:
        return delivered_members(self.state, self.tail(spark, root, name, until))


def _delivered(spark: SparkSession, root: str, name: str) -> Delivered:
    state = read_or_empty(spark, root, STATE).where(F.col("destination") == name)
    through = state.agg(F.max("through_batch_seq")).first()[0]
    through = -1 if through is None else int(through)
    partial = Delivered(state, through, through + 1)
    last = partial.tail(spark, root, name).agg(F.max("batch_seq")).first()[0]
    return Delivered(state, through, max(through, -1 if last is None else int(last)) + 1)


def sync(
    spark: SparkSession, settings: Settings, destination_name: str, segment_ids: tuple[str, ...] = (),
    dry_run: bool = False, full_refresh: bool = False, allow_large_change: bool = False,
    progress: Callable[[int, int], Any] | None = None,
) -> StageResult:
    """``lakehouse sync DESTINATION``: one stage, recorded (a dry run records nothing)."""

    def body(stage: StageResult) -> None:
        sync_stage(spark, settings, destination_name, stage, segment_ids, dry_run, full_refresh,
                   allow_large_change, progress)

    if dry_run:
        stage = StageResult(f"sync:{destination_name}", "dry-run")
        body(stage)
        return stage
    return run_stage(spark, settings.lakehouse.root, settings.env, f"sync:{destination_name}", body)


def sync_stage(
    spark: SparkSession, settings: Settings, destination_name: str, stage: StageResult,
    segment_ids: tuple[str, ...] = (), dry_run: bool = False, full_refresh: bool = False,
    allow_large_change: bool = False, progress: Callable[[int, int], Any] | None = None,
) -> None:
    root = settings.lakehouse.root
    target: Destination = destination(settings, destination_name)
    version = current_version(spark, table_path(root, MEMBERSHIP))
    if version < 0:
        raise InputError("no segment membership yet: run `lakehouse segment` first")
    inputs = _inputs(spark, settings, destination_name, version, segment_ids)
    if not (dry_run or full_refresh) and _unchanged(spark, root, stage, version, inputs):
        return
    membership = spark.read.format("delta").option("versionAsOf", version).load(table_path(root, MEMBERSHIP))
    held = _delivered(spark, root, destination_name)
    delivered = held.members(spark, root, destination_name).persist()
    try:
        sizes = {r["segment_id"]: r["count"] for r in delivered.groupBy("segment_id").count().collect()}
        known = {r[0] for r in membership.select("segment_id").distinct().collect()} | set(sizes)  # one per segment
        unknown = sorted(set(segment_ids) - known)
        if unknown:
            raise InputError(f"unknown segment {unknown[0]!r} (known: {', '.join(sorted(known)) or 'none'})")
        chosen = sorted(segment_ids or known)
        targets = {s: _digest(target.target(s)) for s in chosen}
        if not (dry_run or full_refresh):
            _check_targets(spark, root, stage.stage, targets, sizes)
        desired = membership.where(F.col("segment_id").isin(chosen)).transform(desired_members(
            read_or_empty(spark, root, FEATURES), read_or_empty(spark, root, RECOMMENDATIONS),
            read_or_empty(spark, root, PRODUCTS)))
        changes = desired.transform(plan_changes(delivered.where(F.col("segment_id").isin(chosen)),
                                                 full_refresh)).persist()
        try:
            _send_changes(spark, settings, target, stage, version, chosen, changes, sizes, held,
                          dry_run, allow_large_change, progress)
        finally:
            changes.unpersist()
    finally:
        delivered.unpersist()
    stage.outcomes[stage.stage] = {"inputs": inputs, "version": current_version(spark, table_path(root, LEDGER)),
                                   "segments": chosen, "refused": stage.rejected,
                                   "targets": {**_recorded_targets(spark, root, stage.stage), **targets}}


def _digest(text: str | None) -> str | None:
    return hashlib.sha256(text.encode()).hexdigest()[:16] if text else None


def _recorded_targets(spark: SparkSession, root: str, step: str) -> dict[str, str | None]:
    """Per segment, where the last successful sync to this destination sent it (a digest)."""
    recorded = recorded_outcomes(spark, root).get(step) or {}
    return dict(recorded.get("targets") or {})


def _check_targets(spark: SparkSession, root: str, step: str, targets: dict[str, str | None],
                   sizes: dict[str, int]) -> None:
    """Refuse to send only the changes to a target that holds none of the earlier ones: the sync
    state describes where this destination used to point."""
    recorded = _recorded_targets(spark, root, step)
    moved = [s for s in sorted(targets) if sizes.get(s) and recorded.get(s) and targets[s]
             and recorded[s] != targets[s]]
    if moved:
        name = step.split(":", 1)[1]
        raise TargetChanged(
            f"destination {name} now sends {moved[0]} somewhere else than its {sizes[moved[0]]} synced members went "
            f"(its settings changed since the last sync); nothing was sent. To fill the new target run "
            f"`lakehouse sync {name} --full-refresh`, or restore the settings")


def _inputs(spark: SparkSession, settings: Settings, name: str, version: int, segment_ids: tuple[str, ...]
            ) -> dict[str, Any]:
    """What a sync's changes are a function of besides the ledger: the membership version, the
    features it reads, the recommendations and catalog versions, the segments asked for and the
    destination's settings (a new target is new work)."""
    configured = settings.destinations.file if name == "file" else getattr(settings.destinations, name, None)
    target = json.dumps(configured.model_dump(mode="json") if configured is not None else None, sort_keys=True)
    root = settings.lakehouse.root
    return {"membership": version, "features": _features_read(spark, root),
            "recommendations": current_version(spark, table_path(root, RECOMMENDATIONS)),
            "products": current_version(spark, table_path(root, PRODUCTS)),
            "segments": sorted(segment_ids), "target": hashlib.sha256(target.encode()).hexdigest()[:16]}


def _features_read(spark: SparkSession, root: str) -> str | int:
    """The features as a sync reads them: the features stage's digest of the synced columns, kept
    in its commit (a change elsewhere — days since an event, an age, a city — sends nothing), or
    the table's version when its last data commit has none (an erasure, an earlier release)."""
    version, metadata = last_data_commit(spark, table_path(root, FEATURES))
    return metadata.get("synced") or version


def _unchanged(spark: SparkSession, root: str, stage: StageResult, version: int, inputs: dict[str, Any]) -> bool:
    """Whether the last sync to this destination ran on these very inputs, refused nothing, and the
    ledger has not moved since: then everything it planned is delivered and nothing differs."""
    previous = previous_outcome(spark, root, stage.stage, table_path(root, LEDGER), inputs)
    if previous is None or previous["refused"]:
        return False
    plan = [SegmentSync(segment_id, version) for segment_id in previous["segments"]]
    stage.details.update({"destination": stage.stage.split(":", 1)[1], "version": version, "dry_run": False,
                          "plan": plan, "unchanged": True})
    stage.versions[MEMBERSHIP] = version
    stage.sync = [(s.segment_id, 0, 0, 0, 0, 0, version) for s in plan]
    stage.outcomes[stage.stage] = previous
    return True


def _send_changes(spark: SparkSession, settings: Settings, target: Destination, stage: StageResult, version: int,
                  chosen: list[str], changes: DataFrame, sizes: dict[str, int], held: Delivered,
                  dry_run: bool, allow_large_change: bool, progress: Callable[[int, int], Any] | None) -> None:
    root = settings.lakehouse.root
    counts = Counter({(r["segment_id"], r["action"]): r["count"]
                      for r in changes.groupBy("segment_id", "action").count().collect()})
    plan = [SegmentSync(s, version, counts[(s, "add")], counts[(s, "remove")], counts[(s, "update")],
                        delivered_before=sizes.get(s, 0)) for s in chosen]
    limits = {s.id: s.max_remove_share for s in load_segments(rules_dir(settings)) if s.max_remove_share is not None}
    _guard(plan, settings.sync.max_remove_share, limits, allow_large_change)
    stage.details.update({"destination": target.name, "version": version, "dry_run": dry_run, "plan": plan})
    if dry_run:
        target.prepare(chosen)
        for segment in plan:
            for action in ("add", "remove", "update"):
                sample = (changes.where((F.col("segment_id") == segment.segment_id) & (F.col("action") == action))
                          .orderBy("customer_id").limit(settings.sync.sample_rows).collect())
                segment.samples[action] = [_payload(r) for r in sample]
        return
    total_changes = sum(s.adds + s.removes + s.updates for s in plan)
    if total_changes:
        target.prepare(chosen)
        by_segment = {s.segment_id: s for s in plan}
        batch_numbers: dict[str, int] = defaultdict(int)
        size = settings.sync.batch_size
        total = sum(-(-(s.adds + s.removes + s.updates) // size) for s in plan)
        next_seq = held.next_seq
        acknowledged: list[tuple] = []  # ledger rows of the batches sent since the last ledger commit
        committed = time.monotonic()
        try:
            for done, (segment_id, rows) in enumerate(_batches(changes, size), start=1):
                batch_numbers[segment_id] += 1
                acknowledged += _send(target, stage.run_id, version, by_segment[segment_id],
                                      batch_numbers[segment_id], next_seq, rows)
                next_seq += 1
                if time.monotonic() - committed >= settings.sync.ledger_commit_seconds:
                    append_rows(spark, root, LEDGER, acknowledged)
                    acknowledged, committed = [], time.monotonic()
                if progress:
                    progress(done, total)
        finally:  # what was acknowledged is recorded, even when a later batch failed
            append_rows(spark, root, LEDGER, acknowledged)
        if next_seq - 1 - held.through >= settings.sync.fold_after_batches:
            _fold_state(spark, root, target.name, held, next_seq - 1)
        target.finish(stage.run_id, {
            "run_id": stage.run_id, "destination": target.name, "membership_version": version,
            "segments": {s.segment_id: {"adds": s.adds, "removes": s.removes, "updates": s.updates,
                                        "failed": s.failed, "batches": s.batches} for s in plan},
        })
    stage.rows_in = total_changes
    stage.rejected = sum(s.failed for s in plan)
    stage.rows_out = total_changes - stage.rejected
    stage.versions[MEMBERSHIP] = version
    stage.sync = [(s.segment_id, s.adds, s.removes, s.updates, s.failed, s.batches, version) for s in plan]


def _fold_state(spark: SparkSession, root: str, name: str, held: Delivered, through: int) -> None:
    """What the destination now holds, as its new compact state, in one commit."""
    folded = held.members(spark, root, name, until=through)
    now = utc_now()
    rows = folded.select(F.lit(name).alias("destination"), "segment_id", "customer_id", "attr_hash",
                         F.lit(now).cast("timestamp").alias("delivered_at"),
                         F.lit(through).cast("long").alias("through_batch_seq"))
    watermark = spark.createDataFrame([(name, None, None, None, now, through)], rows.schema)
    overwrite(rows.unionByName(watermark), root, STATE, replace_where=f"destination = '{name}'")


def _guard(plan: list[SegmentSync], default_share: float, limits: dict[str, float], allowed: bool) -> None:
    """Stop before sending if a segment would lose more of its synced members than its rule file
    (``sync.max_remove_share``) or, by default, the config allows."""
    for segment in plan:
        if allowed or segment.delivered_before == 0:
            continue
        share = segment.removes / segment.delivered_before
        max_share = limits.get(segment.segment_id, default_share)
        if share > max_share:
            raise LargeChange(
                f"sync would remove {segment.removes} of {segment.delivered_before} synced members of "
                f"{segment.segment_id} ({share:.0%} > {max_share:.0%}); nothing was sent. "
                "Check the segment, then rerun with --allow-large-change"
            )


def _send(target: Destination, run_id: str, version: int, segment: SegmentSync, batch_no: int, batch_seq: int,
          rows: list[dict[str, Any]]) -> list[tuple]:
    """Send one batch; its ledger rows (each change acknowledged or refused)."""
    key = batch_key(target.name, segment.segment_id, batch_seq, rows)
    started = time.perf_counter()
    result = target.send(run_id, segment.segment_id, batch_no, key, rows)
    seconds = time.perf_counter() - started
    failed = {customer_id: mask(error) for customer_id, error in result.failed}  # vendor text: no secret, no email
    now = utc_now()
    segment.failed += len(failed)
    segment.batches += 1
    return [(target.name, segment.segment_id, row["customer_id"], row["action"], row["attr_hash"],
             REFUSED if row["customer_id"] in failed else ACKNOWLEDGED, failed.get(row["customer_id"]), key, batch_no,
             batch_seq, seq, result.attempts, result.http_status, seconds, version, run_id, now)
            for seq, row in enumerate(rows)]
