"""One writer at a time: every command that writes takes the lakehouse's lease first.

The lease is one small JSON file, ``{lakehouse.root}/_lease/writer.json``, naming its holder (run
id, command, host, process, since when, until when). It is created only if absent — ``O_EXCL``
on a local disk, ``If-None-Match: *`` on S3, ``create(overwrite=false)`` elsewhere (HDFS) — so of
two writers starting together exactly one gets it. The holder renews it every
``ttl_seconds / 5`` from a daemon thread and deletes it when the command ends; a lease whose
``expires_at`` has passed (its process died without releasing it), or whose process on this
host is gone, is taken over. A second writer fails at once with one line naming the holder, exit
1 — or, with ``--wait SECONDS``, waits that long for the lease to free up.

Because every writer holds the lease, an erasure's VACUUM never runs beside another writer.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from jobs.runtime import fs
from jobs.runtime.errors import LakehouseError
from jobs.runtime.settings import LeaseSettings, local_path

POLL_SECONDS = 0.5


class WriterBusy(LakehouseError):
    """Another command holds the lakehouse's writer lease."""

    exit_code = 1


@dataclass(frozen=True)
class Holder:
    run_id: str
    command: str
    host: str
    pid: int
    since: str
    expires_at: str

    def describe(self) -> str:
        return (f"run {self.run_id} ({self.command}) on {self.host}, process {self.pid}, "
                f"since {self.since[:19].replace('T', ' ')} UTC")


# Set by the CLI from the ``lease.*`` settings and ``--wait``.
CONFIGURED = LeaseSettings()


def lease_path(root: str) -> str:
    return f"{root.rstrip('/')}/_lease/writer.json"


# -- storage: create-if-absent, read, overwrite, delete -----------------------------------------
class _Local:
    def __init__(self, path: str):
        self.path = local_path(path) or path  # _store picks this store for local paths only

    def create(self, text: str) -> bool:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, "w") as out:
            out.write(text)
        return True

    def read(self) -> str | None:
        try:
            with open(self.path) as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def overwrite(self, text: str) -> None:
        partial = f"{self.path}.{os.getpid()}.part"
        with open(partial, "w") as handle:
            handle.write(text)
        os.replace(partial, self.path)

    def delete(self) -> None:
        with suppress(FileNotFoundError):
            os.remove(self.path)


class _S3:
    def __init__(self, path: str, endpoint_url: str | None):
        import boto3

        bucket, _, self.key = path.split("://", 1)[1].partition("/")
        self.bucket = bucket
        self.client = boto3.client("s3", endpoint_url=endpoint_url)

    def create(self, text: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=text.encode(), IfNoneMatch="*")
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412",
                                                               "ConditionalRequestConflict"):
                return False
            raise
        return True

    def read(self) -> str | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key)["Body"].read().decode()
        except ClientError:
            return None

    def overwrite(self, text: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key, Body=text.encode())

    def delete(self) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key)


class _Hadoop:
    def __init__(self, spark: Any, path: str):
        self.spark, self.path = spark, path
        self.fs, self.hadoop_path = fs._hadoop_path(spark, path)

    def _write(self, text: str, overwrite: bool) -> None:
        out = self.fs.create(self.hadoop_path, overwrite)
        try:
            out.write(bytearray(text.encode()))
        finally:
            out.close()

    def create(self, text: str) -> bool:
        try:
            self._write(text, False)
        except Exception as exc:  # noqa: BLE001 - FileAlreadyExistsException through py4j
            if "AlreadyExists" in str(exc):
                return False
            raise
        return True

    def read(self) -> str | None:
        return fs.read_text(self.spark, self.path) if fs.exists(self.spark, self.path) else None

    def overwrite(self, text: str) -> None:
        self._write(text, True)

    def delete(self) -> None:
        self.fs.delete(self.hadoop_path, False)


def _store(spark: Any, root: str) -> Any:
    path = lease_path(root)
    scheme = path.split("://", 1)[0] if "://" in path else "file"
    if scheme == "file":
        return _Local(path)
    if scheme in ("s3", "s3a"):
        endpoint = spark.conf.get("spark.hadoop.fs.s3a.endpoint", None) if spark is not None else None
        return _S3(path, endpoint)
    return _Hadoop(spark, path)


# -- the lease ----------------------------------------------------------------------------------
def _now() -> datetime:
    return datetime.now(UTC)


def _holder(run_id: str, command: str, since: datetime, ttl: float) -> Holder:
    return Holder(run_id, command, socket.gethostname(), os.getpid(), since.isoformat(),
                  (_now() + timedelta(seconds=ttl)).isoformat())


def _parse(text: str | None) -> Holder | None:
    if not text:
        return None
    try:
        return Holder(**json.loads(text))
    except (ValueError, TypeError):
        return None  # a half-written or foreign file: treated as stale


def _alive(holder: Holder) -> bool:
    if datetime.fromisoformat(holder.expires_at) < _now():
        return False
    if holder.host == socket.gethostname():
        try:
            os.kill(holder.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


def current_holder(spark: Any, root: str) -> Holder | None:
    """Who holds the lease now (None: nobody, or only a stale lease)."""
    holder = _parse(_store(spark, root).read())
    return holder if holder is not None and _alive(holder) else None


@contextmanager
def writer_lease(spark: Any, root: str, run_id: str, command: str,
                 settings: LeaseSettings | None = None) -> Iterator[Holder]:
    """Hold the lakehouse's writer lease for the body; see the module docstring."""
    settings = settings or CONFIGURED
    store = _store(spark, root)
    since = _now()
    deadline = time.monotonic() + settings.wait_seconds
    while True:
        mine = _holder(run_id, command, since, settings.ttl_seconds)
        if store.create(json.dumps(asdict(mine))):
            break
        other = _parse(store.read())
        if other is None or not _alive(other):
            store.delete()  # stale: its process is gone or it expired
            continue
        if time.monotonic() >= deadline:
            waited = f" (waited {settings.wait_seconds:g} s)" if settings.wait_seconds else ""
            raise WriterBusy(f"the lakehouse at {root} is being written by {other.describe()}{waited}; "
                             "try again when it ends, or pass --wait SECONDS")
        time.sleep(POLL_SECONDS)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(settings.ttl_seconds / 5):
            store.overwrite(json.dumps(asdict(_holder(run_id, command, since, settings.ttl_seconds))))

    heartbeat = threading.Thread(target=renew, name="lakehouse-lease", daemon=True)
    heartbeat.start()
    try:
        yield mine
    finally:
        stop.set()
        heartbeat.join()
        held = _parse(store.read())
        if held is not None and held.run_id == run_id:
            store.delete()
