"""What ``lakehouse tables`` reports: every registered table's path, version, rows and last run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs.runtime import fs, tables
from jobs.runtime.errors import InputError
from jobs.runtime.runlog import JOB_RUNS
from jobs.runtime.tables import REGISTRY, VIEWS, is_delta_table, read_table, table_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableStatus:
    table: str
    path: str
    exists: bool
    version: int | None = None
    rows: int | None = None
    corrupt_rows: int | None = None
    last_commit_at: datetime | None = None
    last_run_id: str | None = None
    last_run_job: str | None = None
    last_run_status: str | None = None
    kind: str = "table"

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.last_commit_at is not None:
            out["last_commit_at"] = self.last_commit_at.isoformat()
        return out


def _last_runs(spark: SparkSession, root: str) -> dict[str, tuple[str, str, str]]:
    """Per table, the latest run that wrote it: (run_id, job, status)."""
    path = table_path(root, JOB_RUNS)
    if not is_delta_table(spark, path):
        return {}
    runs = spark.read.format("delta").load(path)
    latest = (
        runs.select("run_id", "job", "status", "started_at", F.explode("delta_versions"))
        .groupBy("key")
        .agg(F.max_by(F.struct("run_id", "job", "status"), "started_at").alias("run"))
        .collect()  # one row per table
    )
    result = {row["key"]: tuple(row["run"]) for row in latest}
    last = runs.orderBy(F.desc("started_at")).select("run_id", "job", "status").first()
    if last is not None:
        result[JOB_RUNS] = tuple(last)
    return result


def table_statuses(spark: SparkSession, root: str) -> list[TableStatus]:
    runs = _last_runs(spark, root)
    statuses = []
    for key in REGISTRY:
        path = table_path(root, key)
        if not is_delta_table(spark, path):
            statuses.append(TableStatus(key, path, exists=False))
            continue
        df = spark.read.format("delta").load(path)
        counts = [F.count(F.lit(1)).alias("rows")]
        if "_corrupt_record" in df.columns:
            counts.append(F.count("_corrupt_record").alias("corrupt"))
        row = df.agg(*counts).first()
        history = DeltaTable.forPath(spark, path).history(1).first()
        run_id, job, status = runs.get(key, (None, None, None))
        statuses.append(TableStatus(
            key, path, exists=True, version=int(history["version"]), rows=int(row["rows"]),
            corrupt_rows=int(row["corrupt"]) if "corrupt" in row else None,
            last_commit_at=history["timestamp"], last_run_id=run_id, last_run_job=job,
            last_run_status=status,
        ))
    for key, view in VIEWS.items():
        source = table_path(root, view.source)
        if not is_delta_table(spark, source):
            statuses.append(TableStatus(key, f"view of {view.source}", exists=False, kind="view"))
            continue
        rows = read_table(spark, root, key).count()
        statuses.append(TableStatus(key, f"view of {view.source}", exists=True, rows=rows, kind="view"))
    return statuses


def _marker(root: str) -> str:
    return f"{root.rstrip('/')}/_catalog/registered.json"


def register(spark: SparkSession, root: str, catalog: str | None = None, keys: Iterable[str] | None = None
             ) -> list[tuple[str, str]]:
    """Create the schemas ``bronze``, ``silver``, ``gold``, ``ops`` and register every table that
    exists (or those of ``keys``) at its location, in ``catalog`` (default: the session's): then
    ``SELECT … FROM silver.events`` works. Idempotent; a name already registered elsewhere is an
    error, never re-pointed. Delta reads the table's log at query time, so a registration stays
    current as jobs write, and the lakehouse remembers the catalog (``_catalog/registered.json``)
    so that a command creating a table registers it too (:func:`keep_registered`). Returns
    ``(name, path)`` of every table registered or already in place."""
    try:
        return _register(spark, root, catalog, keys)
    except AnalysisException as exc:
        if "Another instance of Derby" not in f"{exc} {getattr(exc, '_stackTrace', '')}":  # the JVM's causes
            raise
        url = spark.conf.get("spark.hadoop.javax.jdo.option.ConnectionURL", "")
        where = url.split("databaseName=")[-1].split(";")[0] or "metastore_db"
        raise InputError(f"the Hive metastore {where} is open in another process (an embedded Derby "
                         "metastore admits one at a time: a notebook or spark-sql that looked a name up); "
                         "close it and run again, or configure a shared metastore or catalog") from None


def _register(spark: SparkSession, root: str, catalog: str | None, keys: Iterable[str] | None
              ) -> list[tuple[str, str]]:
    prefix = f"`{catalog}`." if catalog else ""
    for layer in sorted({spec.layer for spec in REGISTRY.values()}):
        if not spark.catalog.databaseExists(f"{catalog}.{layer}" if catalog else layer):
            spark.sql(f"CREATE SCHEMA IF NOT EXISTS {prefix}`{layer}`")
    done = []
    wanted = set(REGISTRY if keys is None else keys)
    chosen = [k for k in REGISTRY if k in wanted]
    for key in chosen:
        spec = REGISTRY[key]
        path = table_path(root, key)
        if not is_delta_table(spark, path):
            continue
        name = f"{prefix}`{spec.layer}`.`{spec.name}`"
        if spark.catalog.tableExists(f"{catalog + '.' if catalog else ''}{key}"):
            details = {r["col_name"]: r["data_type"] for r in spark.sql(f"DESCRIBE TABLE EXTENDED {name}").collect()}
            location = (details.get("Location") or "").replace("file:", "").rstrip("/")
            if location and location != path.replace("file:", "").rstrip("/"):
                raise InputError(f"{key} is registered at {location}, not {path}: drop it first to re-point it")
        else:
            spark.sql(f"CREATE TABLE {name} USING DELTA LOCATION '{path}'")
        done.append((key, path))
    if keys is None:  # remembered: the catalog, and whether names went into a Hive metastore
        fs.write_text(spark, _marker(root), json.dumps({"catalog": catalog, "hive": _hive_backed(spark)}) + "\n")
    return done


def _hive_backed(spark: SparkSession) -> bool:
    return spark.conf.get("spark.sql.catalogImplementation", "in-memory") == "hive"


def keep_registered(spark: SparkSession, root: str) -> None:
    """At a writing command's end: the tables it created join the catalog the lakehouse was
    registered in, if it was (nothing created: no look-up at all). Registered in a Hive metastore
    this session does not open (the lakehouse's embedded one, which jobs leave alone so that they
    never wait for a notebook holding it): through a short-lived process that opens it, registers
    and ends (:func:`register_in_metastore`). A table the catalog refuses is a warning, never a
    failure: its data is committed and reachable by path."""
    created = sorted(set(tables.CREATED))
    tables.CREATED.clear()
    try:
        if not created or not fs.exists(spark, _marker(root)):
            return
        marker = json.loads(fs.read_text(spark, _marker(root)))
    except Exception as exc:  # the lakehouse root is out of reach: the command itself is done
        log.warning("could not read where the lakehouse is registered: %s", exc)
        return
    catalog = marker.get("catalog")
    if catalog is None and marker.get("hive") and not _hive_backed(spark):
        problem = register_in_metastore(spark, root, created)
        if problem:
            log.warning("could not register %s in the catalog: %s", ", ".join(created), problem)
        return
    for key in created:
        try:
            register(spark, root, catalog, [key])
        except Exception as exc:  # the catalog is out of reach or refuses: the command itself is done
            log.warning("could not register %s in the catalog: %s", key,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


# Confs that belong to one running application, not to the session a second process builds.
_OWN_CONFS = ("spark.app.id", "spark.app.startTime", "spark.app.submitTime", "spark.driver.host",
              "spark.driver.port", "spark.executor.id", "spark.master", "spark.sql.catalogImplementation")


def register_in_metastore(spark: SparkSession, root: str, keys: Iterable[str]) -> str | None:
    """Register ``keys`` in the Hive metastore a ``lakehouse catalog register`` session uses
    (the lakehouse's embedded Derby database, or the user's ``hive-site.xml``), from a second
    local Spark process with this session's confs: it opens the metastore, registers and ends,
    which releases Derby's one-process lock. Returns None, or why it could not (one line)."""
    confs = {k: v for k, v in spark.sparkContext.getConf().getAll() if k not in _OWN_CONFS}
    request = json.dumps({"root": root, "keys": list(keys), "confs": confs})  # on stdin: confs may hold secrets
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY_")}  # its own JVM
    try:
        done = subprocess.run([sys.executable, "-m", "jobs.tools.catalog"], input=request, env=env,
                              capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    return lines[-1].removeprefix("error: ") if lines else f"exit code {done.returncode}"


def _register_from_request() -> int:
    """``python -m jobs.tools.catalog``: the second process of :func:`register_in_metastore`."""
    from jobs.runtime.settings import SparkSettings
    from jobs.runtime.spark import analysis_message, get_spark

    request = json.loads(sys.stdin.read())
    root = request["root"]
    spark = get_spark(SparkSettings(master="local[1]"), extra_confs=request["confs"], root=root, hive=True)
    try:
        register(spark, root, None, request["keys"])
    except Exception as exc:
        print(f"error: {analysis_message(exc) or type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_register_from_request())
