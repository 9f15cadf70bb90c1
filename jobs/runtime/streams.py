"""The one exactly-once mechanism of every layer: Spark's own.

A stage reads what is new in its source through a Structured Streaming query — the file source
over a landing folder, the Delta source over a bronze table — run with an ``availableNow``
trigger and a checkpoint under ``{lakehouse.root}/_checkpoints/{name}``. The checkpoint records
which files or table versions each micro-batch covered; a batch that fails is replayed with
exactly the same input. Each micro-batch goes to a handler that writes idempotently: every
write carries a Delta transaction id (``txnAppId`` = stream, query id and write name;
``txnVersion`` = the batch id), so a write a replayed batch already made is skipped by Delta.
No new input: no micro-batch, no Spark job, no commit.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pyspark.errors import StreamingQueryException
from pyspark.sql import DataFrame, SparkSession


@dataclass(frozen=True)
class Batch:
    """One micro-batch: its rows, id, and the transaction ids its writes must carry."""

    batch_id: int
    app_id: str
    df: DataFrame

    @property
    def spark(self) -> SparkSession:
        return self.df.sparkSession

    def txn(self, write: str) -> tuple[str, int]:
        """(txnAppId, txnVersion) of this batch's write named ``write`` (one per write it makes)."""
        return f"{self.app_id}:{write}", self.batch_id


@dataclass
class StreamOutcome:
    name: str
    batches: list[int] = field(default_factory=list)


def checkpoint_path(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/_checkpoints/{name}"


def process_new(root: str, name: str, source: DataFrame, handle: Callable[[Batch], None]) -> StreamOutcome:
    """Run ``handle`` on every micro-batch of what ``source`` (a streaming DataFrame) holds that
    the stream ``name`` has not processed yet, then stop. An exception in ``handle`` stops the
    stream before its checkpoint records the batch, and is raised here as it was."""
    outcome = StreamOutcome(name)
    ready = threading.Event()
    state: dict[str, object] = {}

    def each(df: DataFrame, batch_id: int) -> None:
        ready.wait()
        try:
            handle(Batch(int(batch_id), str(state["app_id"]), df))
        except BaseException as exc:  # kept whole for the caller; the stream only needs to stop
            state["error"] = exc
            raise RuntimeError(f"micro-batch {batch_id} of {name} failed") from None
        outcome.batches.append(int(batch_id))

    query = (
        source.writeStream.foreachBatch(each)
        .option("checkpointLocation", checkpoint_path(root, name))
        .trigger(availableNow=True)
        .start()
    )
    state["app_id"] = f"{name}:{query.id}"
    ready.set()
    try:
        query.awaitTermination()
    except StreamingQueryException:
        error = state.get("error")
        if isinstance(error, BaseException):
            raise error from None
        raise
    return outcome


def caught_up(spark: SparkSession, root: str, name: str, source_version: int) -> bool:
    """Whether the Delta-sourced stream ``name`` has processed every version up to
    ``source_version`` (the table's latest): read from its checkpoint's last committed offset, so
    a stage with nothing new starts no query at all. Unsure (no checkpoint, an offset not yet
    committed, an initial snapshot): False, and the query decides."""
    from jobs.runtime import fs

    folder = checkpoint_path(root, name)
    batches = [int(n) for n in fs.list_names(spark, f"{folder}/offsets") if n.isdigit()]
    if not batches:
        return False
    last = max(batches)
    if str(last) not in fs.list_names(spark, f"{folder}/commits"):
        return False
    offset = json.loads(fs.read_text(spark, f"{folder}/offsets/{last}").strip().splitlines()[-1])
    if offset.get("isStartingVersion"):
        return False
    version, index = int(offset["reservoirVersion"]), int(offset["index"])
    processed = version - 1 if index == -1 else version  # index -1: nothing of that version yet
    return source_version <= processed
