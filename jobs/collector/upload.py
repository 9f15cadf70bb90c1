"""Rolled landing files up to object storage (``landing.root`` on ``s3a://`` or ``s3://``).

The collector writes and fsyncs to its local spool first (that is what its 2xx promises), then
puts each rolled file under the same relative name below the landing folder. S3 makes an object
visible whole or not at all, so ``ingest`` never lists half a file. Credentials and endpoint come
from boto3's usual chain (``AWS_*`` variables, profile, role; ``AWS_ENDPOINT_URL_S3``).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from jobs.collector.sink import Publish


def uploader(target: str, spool: Path) -> Publish:
    import boto3

    parsed = urlparse(target)
    if parsed.scheme not in ("s3", "s3a", "s3n"):
        raise ValueError(f"the collector uploads to s3:// or s3a:// landing roots, not {parsed.scheme}://")
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    client = boto3.client("s3")

    def publish(path: Path) -> None:
        key = f"{prefix}/{path.relative_to(spool).as_posix()}".lstrip("/")
        client.upload_file(str(path), bucket, key)

    return publish
