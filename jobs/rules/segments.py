"""Segment definitions (``rules/segments/*.yaml``), validated before any data is touched.

A file holds one segment::

    id: abandoned_cart_24h            # letters, digits, _
    name: Abandoned a cart in the last 24 hours
    description: ...
    where: {field: cart_abandoned_at, within: 24h}    # or
    sql: "cart_abandoned_at >= as_of - INTERVAL 24 HOURS"
    sync: {max_remove_share: 1.0}     # optional: the share of synced members one sync may remove
                                      # (default sync.max_remove_share); 1.0 for a segment that
                                      # turns over by design, like a 24-hour window

Every problem is a ConfigError naming the file, the segment and the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs.rules.sql import sql_problem
from jobs.runtime.errors import ConfigError
from jobs.runtime.settings import read_yaml
from jobs.runtime.spark import analysis_message
from jobs.runtime.tables import CUSTOMER_FEATURES_SCHEMA
from transforms.segments import check_condition

SEGMENT_ID = re.compile(r"^[a-z][a-z0-9_]*$")
FEATURE_TYPES = {f.name: f.dataType for f in CUSTOMER_FEATURES_SCHEMA.fields}
KEYS = {"id", "name", "description", "where", "sql", "sync"}


@dataclass(frozen=True)
class Segment:
    id: str
    name: str
    description: str
    where: dict[str, Any] | None
    sql: str | None
    file: str
    max_remove_share: float | None = None  # how much of it one sync may remove; None: the config's

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "description": self.description,
                "where": self.where, "sql": self.sql}


def _segment(path: Path) -> Segment:
    data = read_yaml(path)
    segment_id = data.get("id")
    label = f"{path}: segment {segment_id!r}" if segment_id else str(path)
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise ConfigError(f"{label}: {unknown[0]}: unknown key (expected {', '.join(sorted(KEYS))})")
    if not isinstance(segment_id, str) or not SEGMENT_ID.match(segment_id):
        raise ConfigError(f"{label}: id: expected lower-case letters, digits and _, got {segment_id!r}")
    if not isinstance(data.get("name"), str) or not data["name"].strip():
        raise ConfigError(f"{label}: name: required")
    if ("where" in data) == ("sql" in data):
        raise ConfigError(f"{label}: give exactly one of where (a condition) or sql (an expression)")
    if "sql" in data and (not isinstance(data["sql"], str) or not data["sql"].strip()):
        raise ConfigError(f"{label}: sql: expected a SQL boolean expression")
    if "where" in data:
        problem = next(check_condition(data["where"], FEATURE_TYPES), None)
        if problem:
            raise ConfigError(f"{label}: {problem}")
    return Segment(segment_id, data["name"], str(data.get("description") or ""), data.get("where"),
                   data.get("sql"), str(path), _max_remove_share(label, data.get("sync")))


def _max_remove_share(label: str, sync: Any) -> float | None:
    if sync is None:
        return None
    if not isinstance(sync, dict) or set(sync) != {"max_remove_share"}:
        raise ConfigError(f"{label}: sync: expected {{max_remove_share: <a share from 0 to 1>}}")
    share = sync["max_remove_share"]
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
        raise ConfigError(f"{label}: sync: max_remove_share: expected a number from 0 to 1, got {share!r}")
    return float(share)


def load_segments(directory: Path) -> list[Segment]:
    """Every segment of ``directory/segments``, sorted by id; ids must be unique."""
    folder = directory / "segments"
    if not folder.is_dir():
        raise ConfigError(f"segment folder not found: {folder}")
    segments: dict[str, Segment] = {}
    for path in sorted(folder.glob("*.yaml")):
        segment = _segment(path)
        if segment.id in segments:
            raise ConfigError(f"{path}: segment {segment.id!r}: id already used in {segments[segment.id].file}")
        segments[segment.id] = segment
    return [segments[k] for k in sorted(segments)]


def check_sql(spark: SparkSession, segments: list[Segment]) -> None:
    """Analyze every ``sql`` segment against the feature columns (no data is read)."""
    empty = spark.createDataFrame([], CUSTOMER_FEATURES_SCHEMA)
    for segment in segments:
        if segment.sql is None:
            continue
        problem = sql_problem(spark, segment.sql)
        if problem:
            raise ConfigError(f"{segment.file}: segment {segment.id!r}: sql: {problem}")
        try:
            data_type = empty.select(F.expr(segment.sql).alias("x")).schema["x"].dataType
        except Exception as exc:  # ParseException, AnalysisException
            message = analysis_message(exc)
            raise ConfigError(f"{segment.file}: segment {segment.id!r}: sql: {message}") from None
        if data_type.simpleString() != "boolean":
            raise ConfigError(
                f"{segment.file}: segment {segment.id!r}: sql: expected a boolean, got {data_type.simpleString()}"
            )


def rules_hash(segments: list[Segment]) -> str:
    canonical = json.dumps([s.as_json() for s in segments], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
