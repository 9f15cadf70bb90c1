"""Airflow DAG: the lakehouse every hour, one spark-submit per stage, then the syncs.

Needs the `apache-airflow-providers-apache-spark` provider and a `spark_default` connection to
the cluster; the bundle is what `lakehouse package --out /opt/email-lakehouse/spark` builds on
the deploy host. Each task is one CLI command of the entry script (the same arguments as the
`lakehouse` command); they share the writer lease, so a task retried while another still runs
waits up to --wait seconds instead of failing. `lakehouse run --sync klaviyo` in one task does
the same in one application (see `one_application` below) — fewer JVM starts, coarser retries.

Every command exits 0 on success, 2 on bad configuration or input (no retry helps: fix and
clear the task), 1 when a run failed although its input may be fine (retry).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow import DAG
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

BUNDLE = "/opt/email-lakehouse/spark"
JARS = f"{BUNDLE}/jars/delta-spark_4.2_2.13-4.4.0.jar,{BUNDLE}/jars/delta-storage-4.4.0.jar"
COMMON = ["--env", "prod", "--wait", "600"]


def lakehouse(task_id: str, *command: str) -> SparkSubmitOperator:
    """One CLI command of the bundle's entry script as a spark-submit task."""
    return SparkSubmitOperator(
        task_id=task_id,
        application=f"{BUNDLE}/lakehouse_main.py",
        application_args=[*COMMON, *command],
        py_files=f"{BUNDLE}/lakehouse.zip",
        jars=JARS,
        archives=f"{BUNDLE}/lakehouse-conf.zip#lakehouse-conf",
        deploy_mode="cluster",
        conn_id="spark_default",
        retries=2,
        retry_delay=timedelta(minutes=5),
    )


# Hourly, one run at a time (the writer lease would make a second one wait anyway).
HOURLY = {"schedule": "@hourly", "start_date": datetime(2026, 12, 1), "catchup": False, "max_active_runs": 1,
          "tags": ["email", "lakehouse"]}

with DAG(dag_id="email_lakehouse", **HOURLY) as dag:
    ingest = lakehouse("ingest_events", "ingest", "events")
    ingest_crm = lakehouse("ingest_crm", "ingest", "crm")
    ingest_catalog = lakehouse("ingest_catalog", "ingest", "catalog")
    cleanse = lakehouse("cleanse", "cleanse")
    features = lakehouse("features", "features")
    segment = lakehouse("segment", "segment")
    recommend = lakehouse("recommend", "recs", "build")
    klaviyo = lakehouse("sync_klaviyo", "sync", "klaviyo")
    sfmc = lakehouse("sync_sfmc", "sync", "sfmc")

    [ingest, ingest_crm, ingest_catalog] >> cleanse >> features >> segment >> recommend >> [klaviyo, sfmc]

with DAG(dag_id="email_lakehouse_one_application", **HOURLY) as one_application:
    lakehouse("run", "run", "--sync", "klaviyo", "--sync", "sfmc")
