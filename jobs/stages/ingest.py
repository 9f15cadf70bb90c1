"""Bronze landing: new files of a source -> ``bronze.events``, ``bronze.crm``, ``bronze.catalog``; once.

Each source is a Structured Streaming file source over its landing folder (see
:mod:`jobs.runtime.streams`): the checkpoint ``_checkpoints/ingest/{source}`` records which files
each micro-batch took, so a file is landed once, whatever happens, and a file re-copied under the
same name adds nothing. A micro-batch reads its files with the source's mapping (JSON lines, or
CSV grouped by header) and appends them to bronze in one commit carrying the batch's transaction
id. Which file landed in which bronze version stays answerable: :func:`landed_files` reads the
checkpoint's record of files per batch and the bronze commits of each batch.

A file that cannot be read (it vanished after listing, a truncated ``.gz``, bytes that do not
decode) would fail its micro-batch on every retry and wedge the source. When a batch's read
fails, each of its files is tried alone; the unreadable ones go to ``ops.quarantined_files`` with
the reason, the rest land, and the stage reports a warning (exit 0).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.runtime import fs
from jobs.runtime.errors import InputError
from jobs.runtime.runlog import StageResult, run_stage, utc_now
from jobs.runtime.settings import Settings, SourceSettings
from jobs.runtime.spark import error_chain
from jobs.runtime.streams import Batch, checkpoint_path, process_new
from jobs.runtime.tables import append, current_version, ensure_table, read_or_empty, spec, table_path
from transforms.bronze import conform_to, map_csv_records, parse_json_records, with_landing_metadata

BRONZE_TABLES = {"events": "bronze.events", "crm": "bronze.crm", "catalog": "bronze.catalog"}
KINDS = tuple(BRONZE_TABLES)
QUARANTINE = "ops.quarantined_files"
SUFFIXES = {
    "json": (".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz", ".ndjson.gz"),
    "csv": (".csv", ".csv.gz", ".tsv", ".txt"),
}
FILE_LISTING = "path string, modificationTime timestamp, length long, content binary"


def stream_name(source: SourceSettings) -> str:
    return f"ingest/{source.name}"


def _new_files(spark: SparkSession, settings: Settings, source: SourceSettings) -> DataFrame:
    """A stream of the landing folder's new files: their paths only (contents are not read)."""
    return (
        spark.readStream.format("binaryFile").schema(FILE_LISTING)
        .option("recursiveFileLookup", "true")
        .option("maxFilesPerTrigger", settings.ingest.max_files_per_batch)
        .option("maxFileAge", settings.ingest.max_file_age)
        .load(settings.source_path(source))
        .select("path")
    )


_GLOB_CHARACTERS = re.compile(r"([\\\[\]{}*?])")


def literal_path(path: str) -> str:
    """``path`` as Spark's readers take it literally: a file named ``x[1].json`` or ``all*.csv``
    is not a glob pattern."""
    return _GLOB_CHARACTERS.sub(r"\\\1", path)


def _read_json(spark: SparkSession, source: SourceSettings, files: list[str]) -> DataFrame:
    lines = (
        spark.read.text([literal_path(p) for p in files])
        .select(F.regexp_replace("value", "^\ufeff", "").alias("value"),  # a byte-order mark on line one
                F.col("_metadata.file_path").alias("_source_file"))
        .where(F.trim("value") != "")
    )
    return lines.transform(parse_json_records(source.mapping()))


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = defaultdict(int)
    out = []
    for position, name in enumerate(names):
        name = name.strip() or f"_c{position}"
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def _csv_header(line: str, delimiter: str) -> list[str]:
    import csv

    return next(iter(csv.reader([line], delimiter=delimiter)), [])


def _read_csv(spark: SparkSession, source: SourceSettings, files: list[str]) -> DataFrame:
    """CSV files grouped by header line, so exports whose columns differ or move still map. RFC 4180
    by default (quoted fields may hold line breaks, ``""`` is a quote) in the source's ``encoding``,
    the header included; the source's ``options`` override any reader option."""
    delimiter = source.options.get("delimiter", source.options.get("sep", ","))
    options = {"escape": '"', "multiLine": "true", "encoding": source.encoding, **source.options}
    by_header: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for path in files:
        header = _csv_header(fs.read_first_line(spark, path, options["encoding"]), delimiter)
        by_header[tuple(_unique(header))].append(path)
    frames = []
    for header, paths in by_header.items():
        schema = T.StructType(
            [T.StructField(name, T.StringType()) for name in header]
            + [T.StructField("_corrupt_record", T.StringType())]
        )
        raw = (
            spark.read.options(**options)
            .option("header", "true")
            .option("enforceSchema", "true")
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", "_corrupt_record")
            .schema(schema)
            .csv([literal_path(p) for p in paths])
            .withColumn("_source_file", F.col("_metadata.file_path"))
        )
        frames.append(raw.transform(map_csv_records(source.mapping(), list(header))))
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame)
    return result


def ingest_source(spark: SparkSession, settings: Settings, source: SourceSettings, stage: StageResult) -> None:
    """Land every not-yet-landed file of one source (see the module docstring)."""
    from jobs.tools.privacy import erased_filter, without_erased

    landing_path = settings.source_path(source)
    if not fs.exists(spark, landing_path):
        if source.optional:
            stage.details.setdefault("sources", []).append(
                {"source": source.name, "table": BRONZE_TABLES[source.kind], "files": 0, "rows": 0, "corrupt": 0,
                 "batches": 0, "version": "-", "note": f"no folder {landing_path} yet"})
            return
        raise _missing(settings, source)
    others = nested_sources(settings, source)
    root = settings.lakehouse.root
    key = BRONZE_TABLES[source.kind]
    ensure_table(spark, root, key)
    erased = erased_filter(spark, settings)  # right to be forgotten: read once per stage
    read = _read_json if source.format == "json" else _read_csv
    totals = {"files": 0, "rows": 0, "corrupt": 0, "batches": 0}

    def write(batch: Batch, files: list[str]) -> dict[str, int]:
        rows = (
            read(spark, source, files)
            .transform(without_erased(erased, source.kind))
            .transform(with_landing_metadata(source.name, stage.run_id, utc_now()))
            .transform(conform_to(spec(key).schema))
        )
        return append(rows, root, key, txn=batch.txn(key),
                      metadata={"run_id": stage.run_id, "source": source.name, "batch_id": batch.batch_id,
                                "files": len(files)},
                      metrics={"corrupt": F.count("_corrupt_record")})

    def land(batch: Batch) -> None:
        paths = [r["path"] for r in batch.df.collect()]  # one row per file: metadata, never data
        files = [p for p in paths if p.lower().endswith(SUFFIXES[source.format])
                 and not any(_under(p, folder) for folder in others)]
        if not files:
            return
        try:
            written = write(batch, files)
        except Exception:
            unreadable = _unreadable(spark, source, files)
            if not unreadable:
                raise  # not a file's fault
            _quarantine(spark, root, source, batch, stage, unreadable)
            files = [p for p in files if p not in unreadable]
            written = write(batch, files) if files else {"rows": 0, "corrupt": 0}
        totals["files"] += len(files)
        totals["rows"] += written["rows"]
        totals["corrupt"] += written["corrupt"]
        totals["batches"] += 1

    process_new(root, stream_name(source), _new_files(spark, settings, source), land)
    stage.rows_in += totals["rows"]
    stage.rows_out += totals["rows"]
    stage.versions[key] = current_version(spark, table_path(root, key))
    for name, value in totals.items():
        stage.metrics[f"{source.name}.{name}"] = value
    stage.details.setdefault("sources", []).append(
        {"source": source.name, "table": key, **totals, "version": stage.versions[key]})


def nested_sources(settings: Settings, source: SourceSettings) -> list[str]:
    """Folders of the other configured sources inside this source's folder (``events/collector``
    inside ``events``): their files are theirs, not this source's too."""
    own = settings.source_path(source).rstrip("/") + "/"
    return [path for other in settings.sources.values() if other.name != source.name
            and (path := settings.source_path(other).rstrip("/") + "/").startswith(own)]


def _under(file_uri: str, folder: str) -> bool:
    """Is the file Spark listed (``file:/a/b%20c/x.json``, ``s3a://b/k``) inside ``folder``?"""
    from urllib.parse import unquote

    path = unquote(file_uri)
    if path.startswith("file:") and not folder.startswith("file:"):
        path = "/" + path.removeprefix("file:").lstrip("/")
    return path.startswith(folder)


def _unreadable(spark: SparkSession, source: SourceSettings, files: list[str]) -> dict[str, str]:
    """Of a batch whose read failed: each file that cannot be read alone, with the reason."""
    found = {}
    for path in files:
        try:
            if source.format == "csv":
                fs.read_first_line(spark, path, source.encoding)
            spark.read.text(literal_path(path)).count()
        except Exception as exc:  # noqa: BLE001 - Py4JJavaError or a Spark error: the reason is in its text
            found[path] = _reason(error_chain(exc))
    return found


def _reason(text: str) -> str:
    if "FileNotFound" in text or "does not exist" in text:
        return "vanished: the file was listed but is gone"
    if any(word in text for word in ("EOFException", "end of input stream", "ZipException", "Not in GZIP format",
                                     "not a gzip file", "CRC", "incorrect header check")):
        return "truncated or corrupt compressed file"
    if any(word in text for word in ("MalformedInput", "CharacterCoding", "Unmappable")):
        return "bytes that do not decode in the source's encoding"
    # the deepest cause's line (stack frames aside): what was wrong, not which call failed
    last = next((line.strip() for line in reversed(text.splitlines())
                 if line.strip() and not line.lstrip().startswith("at ")), "unreadable")
    return f"unreadable: {last[:200]}"


def _quarantine(spark: SparkSession, root: str, source: SourceSettings, batch: Batch, stage: StageResult,
                unreadable: dict[str, str]) -> None:
    now = utc_now()
    append(spark.createDataFrame(
        [(source.name, path, reason, batch.batch_id, stage.run_id, now) for path, reason in sorted(unreadable.items())],
        spec(QUARANTINE).schema), root, QUARANTINE, txn=batch.txn(QUARANTINE))
    stage.details.setdefault("warnings", []).extend(
        f"quarantined {path} of source {source.name} ({reason}); the rest of its batch landed"
        for path, reason in sorted(unreadable.items()))
    stage.metrics[f"{source.name}.quarantined"] = stage.metrics.get(f"{source.name}.quarantined", 0) + len(unreadable)


def _missing(settings: Settings, source: SourceSettings) -> InputError:
    return InputError(f"landing path not found: {settings.source_path(source)} (source {source.name!r}, "
                      f"landing.root={settings.landing.root})")


def configured_sources(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Per kind, the sources ``ingest.*_sources`` names."""
    ingest = settings.ingest
    return {"events": ingest.event_sources, "crm": ingest.crm_sources, "catalog": ingest.catalog_sources}


def sources_to_land(settings: Settings, kind: str, source_name: str | None = None) -> list[SourceSettings]:
    """The named source, or every source configured under ``ingest.<kind>_sources``."""
    configured = configured_sources(settings)[kind]
    return [settings.source(name, kind) for name in ([source_name] if source_name else configured)]


def check_local_landing(settings: Settings, kind: str, source_name: str | None = None) -> None:
    """Fail on a missing local landing folder before a Spark session is paid for (remote paths
    are checked through Hadoop once Spark is up)."""
    for source in sources_to_land(settings, kind, source_name):
        scheme, _, rest = settings.source_path(source).rpartition(":")
        if scheme in ("", "file") and not Path(rest).exists() and not source.optional:
            raise _missing(settings, source)


def ingest_stage(spark: SparkSession, settings: Settings, stage: StageResult,
                 kinds: tuple[str, ...] = KINDS, source_name: str | None = None) -> None:
    """Land the named source, or every source configured under ``ingest.<kind>_sources``."""
    for kind in kinds:
        for source in sources_to_land(settings, kind, source_name):
            ingest_source(spark, settings, source, stage)


def ingest(spark: SparkSession, settings: Settings, kind: str, source_name: str | None = None) -> StageResult:
    """``lakehouse ingest events|crm|catalog``: one stage, recorded."""
    return run_stage(spark, settings.lakehouse.root, settings.env, "ingest",
                     lambda stage: ingest_stage(spark, settings, stage, (kind,), source_name))


def landed_files(spark: SparkSession, settings: Settings, source: SourceSettings) -> list[dict[str, object]]:
    """Every file the source landed: its micro-batch and the bronze version holding its rows,
    from the stream's checkpoint (files per batch) and bronze's commits (batch -> version)."""
    folder = f"{checkpoint_path(settings.lakehouse.root, stream_name(source))}/sources/0"
    batch_of: dict[str, int] = {}
    others = nested_sources(settings, source)
    for name in fs.list_names(spark, folder):
        if name.startswith(".") or not name.split(".")[0].isdigit():
            continue
        for line in fs.read_text(spark, f"{folder}/{name}").splitlines()[1:]:
            entry = json.loads(line)
            path = entry["path"]
            if path.lower().endswith(SUFFIXES[source.format]) and not any(_under(path, f) for f in others):
                batch_of[path.replace("file:///", "file:/", 1)] = int(entry["batchId"])
    quarantined = {r["path"].replace("file:///", "file:/", 1) for r in read_or_empty(
        spark, settings.lakehouse.root, QUARANTINE).where(F.col("source") == source.name).select("path").collect()}
    for path in quarantined:  # not landed: see ops.quarantined_files
        batch_of.pop(path, None)
    key = BRONZE_TABLES[source.kind]
    version_of: dict[int, int] = {}
    path = table_path(settings.lakehouse.root, key)
    if current_version(spark, path) >= 0:
        history = DeltaTable.forPath(spark, path).history().where(F.col("userMetadata").isNotNull())
        for row in history.select("version", "userMetadata").collect():  # one row per commit
            meta = json.loads(row["userMetadata"])
            if meta.get("source") == source.name and "batch_id" in meta:
                version_of.setdefault(int(meta["batch_id"]), int(row["version"]))
    return [{"source": source.name, "path": p, "batch_id": b, "table": key, "version": version_of.get(b)}
            for p, b in sorted(batch_of.items())]
