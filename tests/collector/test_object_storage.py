"""Landing on object storage: files are fsync'd in the spool, then go up whole with boto3."""

from __future__ import annotations

import json

import boto3
import httpx

from tests.collector.support import API_KEY, EVENT, bearer


def _objects(bucket: str) -> dict[str, bytes]:
    s3 = boto3.client("s3")
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def test_rolled_files_go_up_and_one_that_could_not_is_retried(start_collector, moto_endpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    spool = tmp_path / "spool"
    overrides = ("landing.root=s3a://landing-bucket/zone", f"collector.spool_dir={spool}")

    collector = start_collector(*overrides)  # the bucket does not exist yet: the upload fails
    with httpx.Client(base_url=collector.url) as client:
        assert client.post("/api/events", headers=bearer(API_KEY), json={**EVENT, "event_id": "first"}).status_code == 200
    collector.stop()
    kept = list(spool.rglob("*.ndjson"))
    assert len(kept) == 1  # on disk, waiting for its upload

    boto3.client("s3").create_bucket(Bucket="landing-bucket")
    collector = start_collector(*overrides)  # uploads what waits, then what it writes
    with httpx.Client(base_url=collector.url) as client:
        assert client.post("/api/events", headers=bearer(API_KEY), json={**EVENT, "event_id": "second"}).status_code == 200
    collector.stop()

    objects = _objects("landing-bucket")
    assert all(key.startswith("zone/events/collector/") and key.endswith(".ndjson") for key in objects)
    ids = sorted(json.loads(line)["event_id"] for body in objects.values() for line in body.splitlines())
    assert ids == ["first", "second"]
    assert not list(spool.rglob("*.ndjson"))
