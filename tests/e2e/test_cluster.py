"""The packaged job as production runs it: on a real Spark standalone cluster (a master and a two-core
worker started from the installed pyspark, stopped whatever happens), submitted with spark-submit,
with ``lakehouse.root`` and ``landing.root`` on ``s3a://`` — Hadoop's S3A connector, resolved once
and shipped in the bundle, against moto's standalone S3 server on loopback — and what it wrote read
back by delta-rs, an independent Delta implementation; the run reports lineage through the
OpenLineage listener passed to spark-submit as the README documents. One test, because each part
costs a JVM and a whole pipeline."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import boto3
import pyspark
import pytest

from jobs.cli import cli

SPARK_HOME = Path(pyspark.__file__).resolve().parent
pytestmark = pytest.mark.cluster
AS_OF = "2026-11-20T00:00:00Z"
BUCKET = "email-lakehouse-test"
OPENLINEAGE = "io.openlineage:openlineage-spark_2.13:1.53.0"  # the README's lineage block


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(log: Path, text: str, count: int = 1, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and log.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise AssertionError(f"{log.name}: no {text!r} after {timeout:g} s\n{tail}")


@pytest.fixture
def cluster(moto_endpoint, tmp_path):
    """``spark://127.0.0.1:PORT`` of a master with one two-core worker (a second worker JVM would only
    compete for this machine's two cores); stopped on the way out. Its executors inherit the
    worker's environment, so they find moto's test credentials in the ``AWS_*`` variables."""
    env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_DAEMON_MEMORY": "256m",
           "SPARK_LOG_DIR": str(tmp_path / "logs"), "PYSPARK_PYTHON": sys.executable}
    port = _free_port()
    url = f"spark://127.0.0.1:{port}"
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    daemons: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> Path:
        log = tmp_path / f"{name}.log"
        with log.open("w") as out:
            daemons.append(subprocess.Popen([spark_class, *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                            cwd=tmp_path, start_new_session=True))
        return log

    try:
        master = start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                       "--port", str(port), "--webui-port", str(_free_port()))
        _wait_for(master, "I have been elected leader")
        worker = start("worker", "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
                       "--cores", "2", "--memory", "1g", "--webui-port", str(_free_port()),
                       "--work-dir", str(tmp_path / "work"))
        _wait_for(worker, "Successfully registered with master")
        yield url, master
    finally:
        for daemon in daemons:
            try:
                os.killpg(daemon.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for daemon in daemons:
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)


def _upload(client, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")


def test_the_packaged_pipeline_runs_on_a_standalone_cluster_over_s3a(moto_endpoint, cluster, tmp_path):
    from click.testing import CliRunner
    from deltalake import DeltaTable

    url, master_log = cluster
    runner = CliRunner()
    landing, bundle = tmp_path / "landing", tmp_path / "bundle"
    assert runner.invoke(cli, ["demo", "generate", "--out", str(landing), "--customers", "20", "--days", "1",
                               "--events-per-day", "120", "--seed", "9", "--end", AS_OF]).exit_code == 0
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    _upload(client, landing, "landing")

    # conf/dev.yaml's roots are on s3a://, so the bundle carries the connector with Delta's jars.
    packaged = runner.invoke(cli, ["--env", "dev", "package", "--out", str(bundle)])
    assert packaged.exit_code == 0, packaged.output
    jars = sorted((bundle / "jars").glob("*.jar"))
    assert {"delta-storage-4.4.0.jar", "org.apache.hadoop_hadoop-aws-3.5.0.jar",
            "software.amazon.awssdk_s3-2.35.4.jar"} <= {j.name for j in jars}
    assert not any("bundle" in j.name for j in jars)  # the SDK's 686 MB bundle is not needed
    with zipfile.ZipFile(bundle / "lakehouse-conf.zip") as archive:  # the preview's templates travel too
        assert {"conf/local.yaml", "rules/quality.yaml", "templates/viewed_offer.liquid"} <= set(archive.namelist())

    s3a = {  # the moto endpoint; credentials from the AWS_* variables, through the SDK v2 provider
        "fs.s3a.endpoint": moto_endpoint, "fs.s3a.endpoint.region": "us-east-1", "fs.s3a.path.style.access": "true",
        "fs.s3a.connection.ssl.enabled": "false",
        "fs.s3a.aws.credentials.provider":
            "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider",
    }
    conf = tmp_path / "cluster" / "cluster.yaml"
    conf.parent.mkdir()
    (conf.parent / "sources").symlink_to(bundle / "conf" / "sources")
    spark_conf = "".join(f"    spark.hadoop.{key}: '{value}'\n" for key, value in s3a.items())
    conf.write_text(f"lakehouse: {{root: 's3a://{BUCKET}/lakehouse'}}\nlanding: {{root: 's3a://{BUCKET}/landing'}}\n"
                    f"spark:\n  master: null\n  profile: test\n  conf:\n{spark_conf}"
                    f"destinations: {{file: {{path: {tmp_path / 'exports'}}}}}\n")

    lineage = {"spark.extraListeners": "io.openlineage.spark.agent.OpenLineageSparkListener",
               "spark.openlineage.namespace": "email-lakehouse", "spark.openlineage.transport.type": "file",
               "spark.openlineage.transport.location": str(tmp_path / "lineage.jsonl")}
    submit = subprocess.run(
        [str(SPARK_HOME / "bin" / "spark-submit"), "--master", url, "--jars", ",".join(str(j) for j in jars),
         "--py-files", str(bundle / "lakehouse.zip"), "--packages", OPENLINEAGE,
         *[a for key, value in lineage.items() for a in ("--conf", f"{key}={value}")],
         "--conf", "spark.executor.memory=512m", "--conf", "spark.driver.memory=1g",
         "--conf", f"spark.pyspark.python={sys.executable}",
         str(bundle / "lakehouse_main.py"), "--conf", str(conf), "run", "--as-of", AS_OF, "--sync", "file"],
        env={**os.environ, "SPARK_HOME": str(SPARK_HOME), "PYSPARK_PYTHON": sys.executable},
        cwd=tmp_path, capture_output=True, text=True, timeout=900)

    assert submit.returncode == 0, submit.stdout + submit.stderr[-4000:]
    assert "Launching executor" in master_log.read_text()  # the work ran on the workers
    keys = {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])}
    assert "lakehouse/silver/events/_delta_log/00000000000000000000.json" in keys
    assert any(k.startswith("lakehouse/_checkpoints/ingest/") for k in keys)  # the streams' checkpoints too
    assert "lakehouse/_lease/writer.json" not in keys  # the run let its lease go

    storage = {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}

    def table(key: str):
        layer, name = key.split(".")
        return DeltaTable(f"s3://{BUCKET}/lakehouse/{layer}/{name}", storage_options=storage).to_pyarrow_table()

    manifest = json.loads((landing / "manifest.json").read_text())
    events = manifest["events"]
    assert table("bronze.events").num_rows == events["lines"]
    assert table("silver.events").num_rows == events["valid"]
    assert table("silver.rejected_events").num_rows == events["lines"] - events["valid"] - events["exact_duplicates"]
    assert table("silver.customers").num_rows == manifest["crm"]["customers"]
    sizes = dict(Counter(table("gold.segment_membership").column("segment_id").to_pylist()))
    printed = dict(line.split()[:2] for line in submit.stdout.splitlines()
                   if line.split() and line.split()[0] in sizes)
    assert sizes and {k: int(v) for k, v in printed.items()} == sizes
    runs = [r for r in table("ops.job_runs").to_pylist() if r["job"] == "run"]
    assert [r["status"] for r in runs] == ["succeeded"]
    assert len(list((tmp_path / "exports").glob("*/manifest.json"))) == 1

    # Lineage: every table a stage writes, with what it was computed from.
    flows: dict[str, set[str]] = {}

    def dataset(name: str) -> str:  # s3://bucket/lakehouse/bronze/crm or a local path -> lakehouse/bronze/crm
        return re.search(r"(lakehouse|landing)/.*$", name).group(0)

    for line in (tmp_path / "lineage.jsonl").read_text().splitlines():
        event = json.loads(line)
        for output in event.get("outputs", []):
            flows.setdefault(dataset(output["name"]), set()).update(dataset(i["name"]) for i in event["inputs"])
    assert flows["lakehouse/bronze/crm"] == {"landing/crm"}
    assert flows["lakehouse/bronze/catalog"] == {"landing/catalog"}
    assert flows["lakehouse/silver/products"] >= {"lakehouse/bronze/catalog"}
    assert flows["lakehouse/silver/customers"] >= {"lakehouse/bronze/crm"}
    assert flows["lakehouse/gold/customer_features"] >= {
        "lakehouse/gold/customer_daily", "lakehouse/silver/customers", "lakehouse/silver/events"}
    assert flows["lakehouse/gold/segment_membership"] >= {"lakehouse/gold/customer_features"}
    assert flows["lakehouse/gold/product_recommendations"] >= {"lakehouse/silver/events", "lakehouse/silver/products"}
    assert {"lakehouse/bronze/events", "lakehouse/silver/events", "lakehouse/ops/job_runs"} <= set(flows)
