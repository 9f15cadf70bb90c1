"""What the analyst notebooks share: settings, a session and a few tidy reads.

``open_lakehouse()`` loads the settings the way the CLI does — ``$LAKEHOUSE_CONF`` (a settings
file) or ``$LAKEHOUSE_ENV`` (default ``local``) — resolving relative paths from the project root
even when the kernel runs in ``notebooks/``, and returns them with a Spark session. The other
helpers turn the ops tables into small pandas frames: they aggregate in Spark first, so what
reaches the driver is one row per run, reason or version, never the data.
"""

from __future__ import annotations

import os
from contextlib import chdir
from dataclasses import dataclass

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.runtime.jars import needs_s3a
from jobs.runtime.settings import PROJECT_ROOT, Settings, load_settings
from jobs.runtime.spark import get_spark
from jobs.runtime.tables import read_or_empty, table_path


@dataclass(frozen=True)
class Lakehouse:
    settings: Settings
    spark: SparkSession

    @property
    def root(self) -> str:
        return self.settings.lakehouse.root

    def table(self, key: str) -> DataFrame:
        """A registered table (``layer.name``), or an empty frame of its schema if not written yet."""
        return read_or_empty(self.spark, self.root, key)


def open_lakehouse(root: str | None = None) -> Lakehouse:
    """The lakehouse of the CLI's settings, or — given ``root`` — the one at that path (or URI),
    to read: no landing zone or sources needed, every other setting the environment's."""
    overrides = [f"lakehouse.root={root}", f"landing.root={root}"] if root else []
    with chdir(PROJECT_ROOT):
        settings = load_settings(os.environ.get("LAKEHOUSE_ENV"), os.environ.get("LAKEHOUSE_CONF") or None,
                                 overrides)
    root = settings.lakehouse.root
    return Lakehouse(settings, get_spark(settings.spark, s3a=needs_s3a(root), root=root, hive=True))


def rejections_by_reason(lakehouse: Lakehouse) -> pd.DataFrame:
    """Rejected events per cleanse batch and reason (a row may carry several reasons)."""
    rejected = lakehouse.table("silver.rejected_events").select("_batch_id", F.explode("reasons").alias("reason"))
    counts = rejected.groupBy("_batch_id", "reason").count().orderBy("_batch_id", "reason").toPandas()
    return counts.pivot_table(index="_batch_id", columns="reason", values="count", fill_value=0)


def sizes_over_time(lakehouse: Lakehouse) -> pd.DataFrame:
    """Segment sizes per segment run's ``as_of`` time (rows) and segment (columns), from ``ops.segment_runs``."""
    runs = lakehouse.table("ops.segment_runs").select("as_of", "segment_id", "size").toPandas()
    return runs.pivot_table(index="as_of", columns="segment_id", values="size", fill_value=0)


def daily_activity(lakehouse: Lakehouse, customer_id: str) -> pd.DataFrame:
    """One customer's events per day (rows) and event type (columns)."""
    events = lakehouse.table("silver.events").where(F.col("customer_id") == customer_id)
    counts = events.groupBy("event_date", "event_type").count().toPandas()  # days x types of one customer
    if counts.empty:
        return pd.DataFrame()
    return counts.pivot_table(index="event_date", columns="event_type", values="count", fill_value=0)


def segments_over_time(lakehouse: Lakehouse, customer_id: str) -> pd.DataFrame:
    """For every segment run: its membership version, as-of time, and the customer's segments then."""
    runs = (lakehouse.table("ops.segment_runs").groupBy("delta_version").agg(F.max("as_of").alias("as_of"))
            .orderBy("delta_version").collect())  # one row per segment run
    path = table_path(lakehouse.root, "gold.segment_membership")
    rows = []
    for run in runs:
        version = lakehouse.spark.read.format("delta").option("versionAsOf", run["delta_version"]).load(path)
        segments = sorted(r[0] for r in version.where(F.col("customer_id") == customer_id)
                          .select("segment_id").collect())  # a customer's handful of segments
        rows.append({"version": run["delta_version"], "as_of": run["as_of"], "segments": ", ".join(segments)})
    return pd.DataFrame(rows, columns=["version", "as_of", "segments"])
