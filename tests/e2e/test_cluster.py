"""The packaged job on a real Spark standalone cluster: a master and a two-core worker started from the
installed pyspark, the whole pipeline submitted with spark-submit, the tables checked, and the
cluster stopped whatever happens."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pyspark
import pytest
from pyspark.sql import functions as F

from jobs.cli import cli
from jobs.runtime.tables import read_table

SPARK_HOME = Path(pyspark.__file__).resolve().parent
pytestmark = pytest.mark.cluster
AS_OF = "2026-11-20T00:00:00Z"


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
def cluster(tmp_path):
    """``spark://127.0.0.1:PORT`` of a master with one two-core worker (a second worker JVM would only
    compete for this machine's two cores); stopped on the way out."""
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


def test_the_packaged_pipeline_runs_on_a_standalone_cluster(spark, cluster, tmp_path):
    from click.testing import CliRunner

    url, master_log = cluster
    runner = CliRunner()
    landing, bundle = tmp_path / "landing", tmp_path / "bundle"
    assert runner.invoke(cli, ["demo", "generate", "--out", str(landing), "--customers", "20", "--days", "1",
                               "--events-per-day", "120", "--seed", "9", "--end", AS_OF]).exit_code == 0
    packaged = runner.invoke(cli, ["package", "--out", str(bundle)])
    assert packaged.exit_code == 0, packaged.output
    with zipfile.ZipFile(bundle / "lakehouse-conf.zip") as archive:  # the preview's templates travel too
        assert {"conf/local.yaml", "rules/quality.yaml", "templates/viewed_offer.liquid"} <= set(archive.namelist())
    conf = tmp_path / "cluster" / "cluster.yaml"
    conf.parent.mkdir()
    (conf.parent / "sources").symlink_to(bundle / "conf" / "sources")
    root = tmp_path / "lakehouse"
    conf.write_text(f"lakehouse: {{root: {root}}}\nlanding: {{root: {landing}}}\n"
                    f"spark: {{master: null, profile: test}}\ndestinations: {{file: {{path: {tmp_path / 'exports'}}}}}\n")

    submit = subprocess.run(
        [str(SPARK_HOME / "bin" / "spark-submit"), "--master", url,
         "--jars", ",".join(str(j) for j in sorted((bundle / "jars").glob("*.jar"))),
         "--py-files", str(bundle / "lakehouse.zip"),
         "--conf", "spark.executor.memory=512m", "--conf", "spark.driver.memory=1g",
         "--conf", f"spark.pyspark.python={sys.executable}",
         str(bundle / "lakehouse_main.py"), "--conf", str(conf), "run", "--as-of", AS_OF, "--sync", "file"],
        env={**os.environ, "SPARK_HOME": str(SPARK_HOME), "PYSPARK_PYTHON": sys.executable},
        cwd=tmp_path, capture_output=True, text=True, timeout=900)

    assert submit.returncode == 0, submit.stdout + submit.stderr[-4000:]
    assert "Launching executor" in master_log.read_text()  # the work ran on the workers
    manifest = json.loads((landing / "manifest.json").read_text())
    lakehouse = str(root)
    assert read_table(spark, lakehouse, "bronze.events").count() == manifest["events"]["lines"]
    events = manifest["events"]
    assert read_table(spark, lakehouse, "silver.events").count() == events["valid"]
    assert read_table(spark, lakehouse, "silver.rejected_events").count() == (
        events["lines"] - events["valid"] - events["exact_duplicates"])
    sizes = {r["segment_id"]: r["count"] for r in
             read_table(spark, lakehouse, "gold.segment_membership").groupBy("segment_id").count().collect()}
    printed = dict(line.split()[:2] for line in submit.stdout.splitlines()
                   if line.split() and line.split()[0] in sizes)
    assert sizes and {k: int(v) for k, v in printed.items()} == sizes
    runs = read_table(spark, lakehouse, "ops.job_runs").where(F.col("job") == "run").collect()
    assert [r["status"] for r in runs] == ["succeeded"]
    assert len(list((tmp_path / "exports").glob("*/manifest.json"))) == 1
