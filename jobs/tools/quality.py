"""Reading ``ops.dq_results``: the latest result of each expectation."""

from __future__ import annotations

from pyspark.sql import Row, SparkSession, Window
from pyspark.sql import functions as F

from jobs.runtime.tables import read_or_empty

DQ_RESULTS = "ops.dq_results"


def latest_results(spark: SparkSession, root: str, table: str | None = None) -> list[Row]:
    """One row per (table, expectation): the most recent evaluation, ordered by table and name."""
    results = read_or_empty(spark, root, DQ_RESULTS)
    if table:
        results = results.where(F.col("table") == table)
    newest = Window.partitionBy("table", "expectation").orderBy(F.desc("evaluated_at"), F.desc("run_id"))
    return (
        results.withColumn("_rank", F.row_number().over(newest))
        .where("_rank = 1")
        .orderBy("table", "expectation")
        .collect()  # one row per expectation
    )
