"""The ``s3`` destination: the ``file`` destination's objects in ``s3://bucket/prefix/``.

Credentials come from boto3's usual chain (environment, profile, instance role), never from
settings. ``endpoint_url`` points it at any S3-compatible store or a test server.
"""

from __future__ import annotations

from jobs.destinations.file import ExportDestination
from jobs.runtime.settings import S3Destination as S3Settings


class S3Destination(ExportDestination):
    name = "s3"

    def __init__(self, settings: S3Settings):
        import boto3

        super().__init__()
        self.bucket = settings.bucket
        self.prefix = settings.prefix.strip("/")
        self.client = boto3.client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region)

    def _write(self, relative: str, text: str) -> None:
        key = f"{self.prefix}/{relative}" if self.prefix else relative
        self.client.put_object(Bucket=self.bucket, Key=key, Body=text.encode(),
                               ContentType="application/x-ndjson" if key.endswith(".jsonl") else "application/json")
