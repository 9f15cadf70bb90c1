"""``lakehouse stream``: the pipeline kept running, one tick every trigger interval.

Each tick is a ``lakehouse run`` as of its own start time — the same stages, through the same
code: the landing and bronze streams take what arrived since the last tick (their checkpoints
make a restart continue where it stopped), features and segments are recomputed as of now, so
time-dependent segments move even when no event came (a cart becomes abandoned once the window
has passed; a 24-hour segment lets its members go), and the syncs send what changed. A tick
starts every ``trigger`` seconds (Spark's processing-time trigger, applied to the whole chain
so that each stage sees the previous one's complete output); one that takes longer is followed
at once by the next. A tick that commits nothing records nothing in ``ops.job_runs``.

SIGINT (Ctrl-C) or SIGTERM stop the loop after the current tick: nothing is left half done (a
second signal stops at once; the streams' checkpoints and the idempotent writes make even that
safe to resume). A failing tick stops the stream with its error, as ``run`` would.

A tick appends a small file to each partition it writes, so a day of ticks would leave thousands in
today's partitions, which every tick reads again. The stream turns on Delta's auto compaction
(unless ``spark.conf`` sets it): after an append leaves enough small files in a partition (50 by
default, ``spark.databricks.delta.autoCompact.minNumFiles``), Delta rewrites them in a commit of
its own that changes no data. The streams, the change feed and the skip checks of the stages
(which read the last commit that is not a compaction) pass over it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType

from pyspark.sql import SparkSession

from jobs.runtime.runlog import StageResult
from jobs.runtime.settings import Settings
from jobs.runtime.tables import temporary_confs
from jobs.stages.pipeline import run_pipeline


@dataclass
class Tick:
    number: int
    as_of: datetime
    seconds: float
    stages: list[StageResult] = field(default_factory=list)

    @property
    def commits(self) -> int:
        return sum(sum(stage.commits.values()) for stage in self.stages)

    def counts(self) -> str:
        """``N landed, M cleansed``."""
        by_stage = {stage.stage: stage for stage in self.stages}
        return f"{by_stage['ingest'].rows_out} landed, {by_stage['cleanse'].rows_out} cleansed"

    def moves(self) -> list[str]:
        """``segment +entered -exited`` of every segment someone entered or left."""
        return [f"{sid} +{entered} -{exited}" for stage in self.stages if stage.stage == "segment"
                for sid, _, entered, exited in stage.segments if entered or exited]

    def synced(self) -> list[str]:
        """``sync:DEST N changes`` per destination."""
        return [f"{stage.stage} {sum(adds + removes + updates for _, adds, removes, updates, *_ in stage.sync)} changes"
                for stage in self.stages if stage.stage.startswith("sync:")]


def stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGINT and SIGTERM set ``stop``; a second one interrupts at once. Returns the undo."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    for sig in previous:
        signal.signal(sig, handle)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


# A stream's own defaults (the config's spark.conf wins): see the module's doc.
STREAM_CONFS = {"spark.databricks.delta.autoCompact.enabled": "true"}


def stream(spark: SparkSession, settings: Settings, trigger_seconds: float, sync_to: tuple[str, ...] = (),
           allow_large_change: bool = False, stop: threading.Event | None = None, max_ticks: int | None = None,
           on_tick: Callable[[Tick], None] | None = None) -> int:
    """Run ticks until ``stop`` is set (or ``max_ticks`` ran); returns the number of ticks."""
    stop = stop or threading.Event()
    ticks = 0
    with temporary_confs(spark, {k: v for k, v in STREAM_CONFS.items() if k not in settings.spark.conf}):
        while not stop.is_set() and (max_ticks is None or ticks < max_ticks):
            started = time.monotonic()
            as_of = datetime.now(UTC)
            stages = run_pipeline(spark, settings, as_of, sync_to, allow_large_change, job="stream")
            ticks += 1
            if on_tick is not None:
                on_tick(Tick(ticks, as_of, time.monotonic() - started, stages))
            if max_ticks is not None and ticks >= max_ticks:
                break
            stop.wait(max(0.0, trigger_seconds - (time.monotonic() - started)))
    return ticks
