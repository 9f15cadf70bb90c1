"""``lakehouse maintain``: compact small files and VACUUM what no promised version needs.

Per table: OPTIMIZE (Z-order by the configured columns — customer id on the event tables, where
lookups of one customer pay — or plain bin-packing compaction), then VACUUM with the table's
retention (``maintenance.retention_hours`` / ``default_retention_hours``, never shorter than
``maintenance.time_travel_days``: the settings refuse a shorter one). Files of the current
version are counted before and after. OPTIMIZE commits change no data (``dataChange=false``), so
change-feed readers see nothing new.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import SparkSession

from jobs.runtime.errors import ConfigError
from jobs.runtime.runlog import job_run
from jobs.runtime.settings import Settings
from jobs.runtime.tables import REGISTRY, is_delta_table, spec, table_path


@dataclass
class TableCare:
    table: str
    files_before: int
    files_after: int
    zorder: tuple[str, ...]
    retention_hours: float
    seconds: float


def _files(spark: SparkSession, path: str) -> int:
    return int(DeltaTable.forPath(spark, path).detail().first()["numFiles"])


def maintain(spark: SparkSession, settings: Settings, table: str | None = None) -> list[TableCare]:
    care = settings.maintenance
    for key in (*care.retention_hours, *care.zorder):
        if key not in REGISTRY:
            raise ConfigError(f"maintenance: unknown table {key!r} (known: {', '.join(sorted(REGISTRY))})")
    keys = [spec(table).key] if table else sorted(REGISTRY)
    root = settings.lakehouse.root
    results: list[TableCare] = []
    with job_run(spark, root, "maintain", settings.env) as run:
        for key in keys:
            path = table_path(root, key)
            if not is_delta_table(spark, path):
                continue
            started = time.perf_counter()
            before = _files(spark, path)
            zorder = tuple(care.zorder.get(key, ()))
            optimizer = DeltaTable.forPath(spark, path).optimize()
            optimizer.executeZOrderBy(*zorder) if zorder else optimizer.executeCompaction()
            retention = care.retention_for(key)
            DeltaTable.forPath(spark, path).vacuum(retention)
            results.append(TableCare(key, before, _files(spark, path), zorder, retention,
                                     time.perf_counter() - started))
        run.rows_in = sum(r.files_before for r in results)
        run.rows_out = sum(r.files_after for r in results)
        run.metrics = {f"files.{r.table}": r.files_after for r in results}
    return results
