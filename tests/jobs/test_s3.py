"""The s3 destination against moto's standalone server over HTTP on loopback."""

import json

import boto3

from jobs.runtime.settings import DestinationsSettings, S3Destination
from jobs.stages.sync import sync


def test_s3_gets_the_same_objects_as_the_file_destination_manifest_included(spark, lakehouse, moto_endpoint, tmp_path):
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="exports")
    s3 = S3Destination(bucket="exports", prefix="email/segments", endpoint_url=moto_endpoint, region="us-east-1")
    settings = lakehouse.model_copy(update={"destinations": DestinationsSettings(
        file=lakehouse.destinations.file, s3=s3)})

    result = sync(spark, settings, "s3", ("abandoned_cart_24h",))

    listed = client.list_objects_v2(Bucket="exports", Prefix="email/segments/")["Contents"]
    keys = sorted(o["Key"] for o in listed)
    assert keys[-1] == f"email/segments/{result.run_id}/manifest.json"
    [batch_key] = [k for k in keys if k.endswith(".jsonl")]
    assert batch_key.startswith(f"email/segments/{result.run_id}/abandoned_cart_24h/batch-00001-")
    lines = client.get_object(Bucket="exports", Key=batch_key)["Body"].read().decode().splitlines()
    assert [(json.loads(line)["action"], json.loads(line)["customer_id"]) for line in lines] == [
        ("add", f"C{i}") for i in range(1, 6)]
    manifest = json.loads(client.get_object(Bucket="exports", Key=keys[-1])["Body"].read())
    assert manifest["segments"]["abandoned_cart_24h"] == {"adds": 5, "removes": 0, "updates": 0, "failed": 0,
                                                          "batches": 1}
    again = sync(spark, settings, "s3", ("abandoned_cart_24h",))
    assert again.details["plan"][0].batches == 0
