"""``lakehouse bench``: how fast the pipeline is against the floor, on the same generated data.

In one run, on one Spark application and a fresh lakehouse under ``--workdir``:

1. generate about N event lines with the demo generator (fixed seed) plus its CRM files;
2. the floor: a bare ``spark.read.json`` of the landing files and one Delta append;
3. the full pipeline (ingest -> cleanse -> features -> segment), each stage's time, rows/s,
   Spark jobs and Delta commits, and its ratio to the floor;
4. a rerun with no new data at the same ``as_of`` (pure fixed cost: it should run no data job
   and make no data commit);
5. an incremental run after 1 % new events (the next day) land on top, and its ratio to the
   full run;
6. peak driver memory: the JVM heap's used bytes sampled four times a second, and the Python
   process's peak RSS.

Results go to ``{out}/bench-{N}.json`` and ``{out}/bench-{N}.md``; the Markdown is printed.
"""

from __future__ import annotations

import json
import platform
import resource
import shutil
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from jobs.runtime.settings import Settings
from jobs.runtime.spark import java_class
from jobs.stages.pipeline import StageResult, run_pipeline
from jobs.tools import MARK, owned_folder
from jobs.tools.demo import generate

DAYS = 7
SEED = 1234
END = datetime.fromisoformat("2026-11-01T00:00:00+00:00")
LINES_PER_CLEAN_EVENT = 1.09  # the generator's dirt and bot traffic, measured at 1M lines


class HeapSampler:
    """The driver JVM's used heap, sampled every ``interval`` seconds on a thread; ``peak`` in bytes."""

    def __init__(self, spark: SparkSession, interval: float = 0.25):
        self._memory = java_class(spark, "java.lang.management.ManagementFactory").getMemoryMXBean()
        self.max = int(self._memory.getHeapMemoryUsage().getMax())
        self.peak = 0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, int(self._memory.getHeapMemoryUsage().getUsed()))
            self._stop.wait(self._interval)

    def __enter__(self) -> HeapSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _python_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _stages(results: list[StageResult]) -> list[dict[str, Any]]:
    return [{"stage": s.stage, "rows_in": s.rows_in, "rows_out": s.rows_out, "rejected": s.rejected,
             "seconds": round(s.seconds, 2), "rows_per_second": round(max(s.rows_in, s.rows_out) / s.seconds)
             if s.seconds else None, "spark_jobs": s.spark_jobs, "commits": dict(s.commits),
             "data_commits": s.data_commits} for s in results]


def run_bench(spark: SparkSession, settings: Settings, events: int, workdir: Path) -> dict[str, Any]:
    for part in owned_folder(workdir, "bench").iterdir():
        if part.name != MARK:
            shutil.rmtree(part) if part.is_dir() else part.unlink()
    landing, lakehouse = workdir / "landing", workdir / "lakehouse"
    settings = settings.model_copy(update={
        "lakehouse": settings.lakehouse.model_copy(update={"root": str(lakehouse)}),
        "landing": settings.landing.model_copy(update={"root": str(landing)}),
    })
    per_day = max(10, round(events / DAYS / LINES_PER_CLEAN_EVENT))
    customers = max(50, events // 100)

    started = time.perf_counter()
    manifest = generate(landing, customers=customers, days=DAYS, events_per_day=per_day, seed=SEED, end=END)
    generate_seconds = time.perf_counter() - started
    lines = manifest["events"]["lines"]

    with HeapSampler(spark) as sampler:
        started = time.perf_counter()
        raw = spark.read.json(str(landing / "events"))
        raw.write.format("delta").mode("append").save(str(workdir / "floor"))
        floor_seconds = time.perf_counter() - started

        started = time.perf_counter()
        full = run_pipeline(spark, settings, END)
        full_seconds = time.perf_counter() - started

        started = time.perf_counter()
        rerun = run_pipeline(spark, settings, END)
        rerun_seconds = time.perf_counter() - started

        increment = workdir / "increment"
        next_day = END + timedelta(days=1)
        extra = generate(increment, customers=customers, days=1, events_per_day=max(1, round(per_day * DAYS / 100)),
                         seed=SEED + 1, end=next_day)
        for name in extra["files"]["events"]:
            shutil.copy(increment / name, landing / name)
        started = time.perf_counter()
        incremental = run_pipeline(spark, settings, next_day)
        incremental_seconds = time.perf_counter() - started

    conf = spark.sparkContext.getConf()
    return {
        "events_requested": events,
        "event_lines": lines,
        "incremental_event_lines": extra["events"]["lines"],
        "customers": customers,
        "seed": SEED,
        "generate_seconds": round(generate_seconds, 1),
        "floor_seconds": round(floor_seconds, 2),
        "full_seconds": round(full_seconds, 2),
        "full_to_floor": round(full_seconds / floor_seconds, 2),
        "incremental_seconds": round(incremental_seconds, 2),
        "incremental_to_full": round(incremental_seconds / full_seconds, 3),
        "rerun_seconds": round(rerun_seconds, 2),
        "rerun_stage_seconds": round(sum(s.seconds for s in rerun), 2),
        "rerun_data_commits": sum(s.data_commits for s in rerun),
        "stages": _stages(full),
        "rerun_stages": _stages(rerun),
        "incremental_stages": _stages(incremental),
        "peak_driver_heap_bytes": sampler.peak,
        "driver_heap_max_bytes": sampler.max,
        "peak_python_rss_bytes": _python_peak_rss(),
        "machine": {"cpus": spark.sparkContext.defaultParallelism, "master": spark.sparkContext.master,
                    "driver_memory": conf.get("spark.driver.memory", "1g"), "python": platform.python_version(),
                    "spark": spark.version},
        "measured_at": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def markdown(result: dict[str, Any]) -> str:
    mib = 1024 * 1024
    m = result["machine"]
    lines = [
        f"### Benchmark: {result['event_lines']:,} event lines ({result['customers']:,} customers, seed "
        f"{result['seed']})",
        "",
        f"Spark {m['spark']}, master `{m['master']}` ({m['cpus']} cores), driver memory {m['driver_memory']}, "
        f"measured {result['measured_at']}.",
        "",
        "| run | stage | rows in | rows out | rejected | seconds | rows/s | Spark jobs | Delta commits |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| floor | read.json + Delta append | {result['event_lines']:,} | {result['event_lines']:,} | | "
        f"{result['floor_seconds']:.1f} | {result['event_lines'] / result['floor_seconds']:,.0f} | | 1 |",
    ]
    runs = (("full", result["stages"]), ("rerun, no new data", result["rerun_stages"]),
            ("incremental (+1 %)", result["incremental_stages"]))
    for run, stages in runs:
        for s in stages:
            rate = f"{s['rows_per_second']:,}" if s["rows_per_second"] is not None else ""
            commits = ", ".join(f"{k} {n}" for k, n in sorted(s["commits"].items())) or "0"
            lines.append(f"| {run} | {s['stage']} | {s['rows_in']:,} | {s['rows_out']:,} | {s['rejected']:,} | "
                         f"{s['seconds']:.1f} | {rate} | {s['spark_jobs']} | {commits} |")
    lines += [
        "",
        "| measure | value | target |",
        "| --- | ---: | --- |",
        f"| full pipeline | {result['full_seconds']:.1f} s | |",
        f"| full pipeline / floor | {result['full_to_floor']:.2f}x | within 3x |",
        f"| rerun with no new data, summed over the stages | {result['rerun_stage_seconds']:.1f} s | within 5 s |",
        f"| data commits of that rerun | {result['rerun_data_commits']} | 0 |",
        f"| incremental run (+{result['incremental_event_lines']:,} lines) | {result['incremental_seconds']:.1f} s | |",
        f"| incremental / full | {result['incremental_to_full']:.0%} | within 10 % |",
        f"| peak driver JVM heap used (sampled) | {result['peak_driver_heap_bytes'] / mib:,.0f} MiB of "
        f"{result['driver_heap_max_bytes'] / mib:,.0f} MiB | no OOM |",
        f"| peak driver Python RSS | {result['peak_python_rss_bytes'] / mib:,.0f} MiB | |",
    ]
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out: Path, name: str | None = None,
          render: Callable[[dict[str, Any]], str] | None = None) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench-{name or result['events_requested']}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text((render or markdown)(result))
    return json_path, md_path
