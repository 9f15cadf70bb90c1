"""Bronze landing: new files of a source -> ``bronze.events`` / ``bronze.crm``, exactly once.

Each run of a source works in one *batch*, tracked in ``ops.landed_files`` the way a streaming
checkpoint tracks offsets:

1. plan: the files not yet landed are written to ``ops.landed_files`` under the next batch id;
2. write: the batch's rows are appended to bronze in one Delta commit that carries the
   source and batch id (``txnAppId``/``txnVersion`` and the commit's ``userMetadata``);
3. commit: the batch's files are marked committed with the bronze version.

A run that dies after 1 or 2 leaves a planned batch; the next run finishes exactly that batch
(skipping the write if bronze already holds it) before planning a new one, so a file is landed
once whatever happens, and re-running or re-copying a landed file adds nothing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.runtime import fs
from jobs.runtime.errors import InputError
from jobs.runtime.runlog import job_run, utc_now
from jobs.runtime.settings import Settings, SourceSettings
from jobs.runtime.tables import (
    append_rows,
    commit_marker,
    ensure_table,
    latest_version,
    spec,
    table_path,
    version_with_marker,
)
from transforms.bronze import (
    conform_to,
    map_csv_records,
    parse_json_records,
    with_landing_metadata,
)

LANDED_FILES = "ops.landed_files"
BRONZE_TABLES = {"events": "bronze.events", "crm": "bronze.crm"}
SUFFIXES = {
    "json": (".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz", ".ndjson.gz"),
    "csv": (".csv", ".csv.gz", ".tsv", ".txt"),
}


@dataclass(frozen=True)
class IngestResult:
    source: str
    table: str
    run_id: str
    batch_id: int | None
    files: int
    rows: int
    corrupt_rows: int
    table_version: int | None
    resumed: bool = False


@dataclass(frozen=True)
class Batch:
    batch_id: int
    files: list[tuple[str, int, datetime]]  # path, size, modified_at
    resumed: bool

    @property
    def paths(self) -> list[str]:
        return [path for path, _, _ in self.files]


def _landed_log(spark: SparkSession, settings: Settings, source: SourceSettings) -> DataFrame:
    root = settings.lakehouse.root
    ensure_table(spark, root, LANDED_FILES)
    return (
        spark.read.format("delta").load(table_path(root, LANDED_FILES))
        .where(F.col("source") == source.name)
    )


def _log_files(
    spark: SparkSession, settings: Settings, source: SourceSettings, rows: list[tuple]
) -> int:
    """Append rows to ops.landed_files; the new version."""
    return latest_version(spark, append_rows(spark, settings.lakehouse.root, LANDED_FILES, rows))


def _pending_or_new_batch(
    spark: SparkSession, settings: Settings, source: SourceSettings, run_id: str
) -> Batch | None:
    """The source's unfinished batch if a run died mid-way, else a new one of unseen files."""
    log = _landed_log(spark, settings, source)
    # One row per file and status: file metadata, never data, reaches the driver.
    entries = log.select("batch_id", "path", "size", "modified_at", "status").collect()
    committed = {r["batch_id"] for r in entries if r["status"] == "committed"}
    pending = sorted(
        (r for r in entries if r["status"] == "planned" and r["batch_id"] not in committed),
        key=lambda r: (r["batch_id"], r["path"]),
    )
    if pending:
        batch_id = pending[0]["batch_id"]
        files = [(r["path"], r["size"], r["modified_at"]) for r in pending if r["batch_id"] == batch_id]
        return Batch(batch_id, files, resumed=True)

    seen = {r["path"] for r in entries}
    found = fs.list_files(spark, settings.source_path(source), SUFFIXES[source.format])
    new = [(f.path, f.size, f.modified_at) for f in found if f.path not in seen]
    if not new:
        return None
    batch = Batch(max((r["batch_id"] for r in entries), default=0) + 1, new, resumed=False)
    _log_files(spark, settings, source, _log_rows(source, batch, "planned", None, run_id))
    return batch


def _log_rows(
    source: SourceSettings, batch: Batch, status: str, version: int | None, run_id: str
) -> list[tuple]:
    now = utc_now()
    return [
        (source.name, batch.batch_id, path, size, modified_at, status,
         BRONZE_TABLES[source.kind], version, run_id, now)
        for path, size, modified_at in batch.files
    ]


def _read_json(spark: SparkSession, source: SourceSettings, files: list[str]) -> DataFrame:
    lines = (
        spark.read.text(files)
        .select("value", F.col("_metadata.file_path").alias("_source_file"))
        .where(F.trim("value") != "")
    )
    return lines.transform(parse_json_records(source))


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = defaultdict(int)
    out = []
    for position, name in enumerate(names):
        name = name.strip() or f"_c{position}"
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def _read_csv(spark: SparkSession, source: SourceSettings, files: list[str]) -> DataFrame:
    """CSV files grouped by header line, so exports whose columns differ or move still map."""
    delimiter = source.options.get("delimiter", source.options.get("sep", ","))
    by_header: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for path in files:
        header_line = fs.read_first_line(spark, path)
        header = next(iter(_csv_header(header_line, delimiter)), [])
        by_header[tuple(_unique(header))].append(path)
    frames = []
    for header, paths in by_header.items():
        schema = T.StructType(
            [T.StructField(name, T.StringType()) for name in header]
            + [T.StructField("_corrupt_record", T.StringType())]
        )
        raw = (
            spark.read.options(**source.options)
            .option("header", "true")
            .option("enforceSchema", "true")
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", "_corrupt_record")
            .schema(schema)
            .csv(paths)
            .withColumn("_source_file", F.col("_metadata.file_path"))
        )
        frames.append(raw.transform(map_csv_records(source, list(header))))
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame)
    return result


def _csv_header(line: str, delimiter: str) -> list[list[str]]:
    import csv

    return list(csv.reader([line], delimiter=delimiter))


def _land(
    spark: SparkSession, settings: Settings, source: SourceSettings, batch: Batch, run_id: str,
    ingested_at: datetime,
) -> tuple[int, int, int]:
    from jobs.tools.privacy import erased_filter, without_erased

    """Append the batch to bronze in one idempotent commit; (version, rows, corrupt rows)."""
    key = BRONZE_TABLES[source.kind]
    read = _read_json if source.format == "json" else _read_csv
    observation = Observation(f"landing_{run_id}")
    rows = (
        read(spark, source, batch.paths)
        .transform(without_erased(erased_filter(spark, settings), source.kind))  # right to be forgotten
        .transform(with_landing_metadata(source.name, run_id, ingested_at))
        .transform(conform_to(spec(key).schema))
        .observe(
            observation,
            F.count(F.lit(1)).alias("rows"),
            F.count("_corrupt_record").alias("corrupt_rows"),
        )
    )
    (
        rows.write.format("delta")
        .mode("append")
        .option("txnAppId", f"ingest:{source.name}")
        .option("txnVersion", batch.batch_id)
        .option("userMetadata", commit_marker(run_id=run_id, source=source.name, batch_id=batch.batch_id))
        .save(table_path(settings.lakehouse.root, key))
    )
    metrics = observation.get
    version = latest_version(spark, table_path(settings.lakehouse.root, key))
    return version, int(metrics["rows"]), int(metrics["corrupt_rows"])


def _batch_counts(
    spark: SparkSession, settings: Settings, key: str, version: int
) -> tuple[int, int]:
    """Rows and corrupt rows of a batch an earlier, interrupted run already wrote."""
    counts = (
        spark.read.format("delta").option("readChangeFeed", "true")
        .option("startingVersion", version).option("endingVersion", version)
        .load(table_path(settings.lakehouse.root, key))
        .agg(F.count(F.lit(1)).alias("rows"), F.count("_corrupt_record").alias("corrupt"))
        .first()
    )
    return int(counts["rows"]), int(counts["corrupt"])


def ingest_source(spark: SparkSession, settings: Settings, source: SourceSettings) -> IngestResult:
    """Land every not-yet-landed file of one source (see the module docstring)."""
    landing_path = settings.source_path(source)
    if not fs.exists(spark, landing_path):
        raise InputError(
            f"landing path not found: {landing_path} (source {source.name!r}, "
            f"landing.root={settings.landing.root})"
        )
    root = settings.lakehouse.root
    key = BRONZE_TABLES[source.kind]
    with job_run(spark, root, f"ingest_{source.kind}:{source.name}", settings.env) as run:
        ensure_table(spark, root, key)
        batch = _pending_or_new_batch(spark, settings, source, run.run_id)
        if batch is None:
            return IngestResult(source.name, key, run.run_id, None, 0, 0, 0, None)
        version = version_with_marker(
            spark, table_path(root, key), source=source.name, batch_id=batch.batch_id
        )
        if version is None:
            version, rows, corrupt = _land(spark, settings, source, batch, run.run_id, utc_now())
        else:
            rows, corrupt = _batch_counts(spark, settings, key, version)
        landed_version = _log_files(
            spark, settings, source, _log_rows(source, batch, "committed", version, run.run_id)
        )
        run.rows_in = run.rows_out = rows
        run.delta_versions = {key: version, LANDED_FILES: landed_version}
        run.metrics = {"files": len(batch.files), "corrupt_rows": corrupt, "batch_id": batch.batch_id}
        return IngestResult(
            source.name, key, run.run_id, batch.batch_id, len(batch.files), rows, corrupt,
            version, resumed=batch.resumed,
        )


def ingest(
    spark: SparkSession, settings: Settings, kind: str, source_name: str | None = None
) -> list[IngestResult]:
    """Land the named source, or every source configured under ``ingest.<kind>_sources``."""
    configured = settings.ingest.event_sources if kind == "events" else settings.ingest.crm_sources
    names = [source_name] if source_name else list(configured)
    sources = [settings.source(name, kind) for name in names]
    return [ingest_source(spark, settings, source) for source in sources]
