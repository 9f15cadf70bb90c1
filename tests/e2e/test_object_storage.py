"""The whole pipeline with ``lakehouse.root`` and ``landing.root`` on ``s3a://``: Hadoop's S3A
connector (resolved once and cached beside the Delta jars) against moto's standalone S3 server
on loopback, in its own JVM as a scheduler would start it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from tests.conftest import REPO

BUCKET = "email-lakehouse-test"


def _upload(client, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")


@pytest.mark.slow
def test_the_whole_pipeline_runs_on_s3a_and_delta_rs_reads_what_it_wrote(moto_endpoint, tmp_path):
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    local = tmp_path / "landing"
    generated = subprocess.run([sys.executable, "-m", "jobs.cli", "demo", "generate", "--out", str(local),
                                "--customers", "20", "--days", "1", "--events-per-day", "50"],
                               cwd=REPO, capture_output=True, text=True, check=False)
    assert generated.returncode == 0, generated.stderr
    _upload(client, local, "landing")
    s3a = {  # the moto endpoint; credentials from the AWS_* variables, through the SDK v2 provider
        "fs.s3a.endpoint": moto_endpoint, "fs.s3a.endpoint.region": "us-east-1", "fs.s3a.path.style.access": "true",
        "fs.s3a.connection.ssl.enabled": "false",
        "fs.s3a.aws.credentials.provider": "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider",
    }
    sets = {"lakehouse.root": f"s3a://{BUCKET}/lakehouse", "landing.root": f"s3a://{BUCKET}/landing",
            "destinations.file.path": str(tmp_path / "exports"),
            **{f"spark.conf.spark.hadoop.{key}": value for key, value in s3a.items()}}
    env = {key: value for key, value in os.environ.items() if not key.startswith("LAKEHOUSE_")}
    ran = subprocess.run([sys.executable, "-m", "jobs.cli", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
                          "run", "--sync", "file", "-o", "json"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert ran.returncode == 0, ran.stderr[-3000:]
    document = json.loads(ran.stdout)
    assert {s["stage"]: s["status"] for s in document["stages"]} == dict.fromkeys(
        ("ingest", "cleanse", "audit", "features", "segment", "recommend", "sync:file"), "succeeded")
    manifest = json.loads((local / "manifest.json").read_text())

    keys = {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])}
    assert "lakehouse/silver/events/_delta_log/00000000000000000000.json" in keys
    assert any(k.startswith("lakehouse/_checkpoints/ingest/") for k in keys)  # the streams' checkpoints too
    assert "lakehouse/_lease/writer.json" not in keys  # the run let its lease go

    from deltalake import DeltaTable  # an independent reader of what S3A and Delta wrote

    storage = {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    silver = DeltaTable(f"s3://{BUCKET}/lakehouse/silver/events", storage_options=storage).to_pyarrow_table()
    customers = DeltaTable(f"s3://{BUCKET}/lakehouse/silver/customers", storage_options=storage).to_pyarrow_table()
    assert silver.num_rows == manifest["events"]["valid"]
    assert customers.num_rows == manifest["crm"]["customers"]

    # The jars a cluster needs for these roots: Delta's and the connector's (resolved above, cached).
    listed = CliRunner().invoke(cli, ["--env", "dev", "jars", "--sep", " "])  # conf/dev.yaml: s3a:// roots
    assert listed.exit_code == 0, listed.output
    names = {Path(p).name for p in listed.output.split()}
    assert {"delta-storage-4.4.0.jar", "org.apache.hadoop_hadoop-aws-3.5.0.jar",
            "software.amazon.awssdk_s3-2.35.4.jar"} <= names
    assert not any("bundle" in name for name in names)  # the SDK's 686 MB bundle is not needed
