"""One writer at a time: the lakehouse's writer lease refuses a second writer with a line naming
the holder, lets it wait with --wait, and is taken over from a dead or expired holder."""

import json
import os
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from jobs.cli import cli
from jobs.runtime.lease import LeaseSettings, WriterBusy, current_holder, lease_path, writer_lease

NOW_ONLY = LeaseSettings(wait_seconds=0, ttl_seconds=60)


def test_a_second_writer_is_refused_naming_the_holder_or_waits_for_it(tmp_path):
    root = str(tmp_path / "lakehouse")
    with writer_lease(None, root, "run-a", "cleanse", NOW_ONLY):
        assert current_holder(None, root).run_id == "run-a"
        refused = rf"^the lakehouse at {root} is being written by run run-a \(cleanse\) on {socket.gethostname()}, "
        with pytest.raises(WriterBusy, match=refused + rf"process {os.getpid()}, since "), \
                writer_lease(None, root, "run-b", "segment", NOW_ONLY):
            pass
    assert current_holder(None, root) is None and not os.path.exists(lease_path(root))

    first = writer_lease(None, root, "run-a", "cleanse", NOW_ONLY)
    first.__enter__()
    threading.Timer(0.7, first.__exit__, (None, None, None)).start()
    started = time.monotonic()
    with writer_lease(None, root, "run-b", "segment", LeaseSettings(wait_seconds=10, ttl_seconds=60)) as held:
        assert held.run_id == "run-b" and 0.5 < time.monotonic() - started < 5


def test_the_lease_of_a_dead_process_or_an_expired_one_is_taken_over(tmp_path):
    root = str(tmp_path / "lakehouse")
    dead = subprocess.Popen(["true"])
    dead.wait()
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    for holder in ({"host": socket.gethostname(), "pid": dead.pid, "expires_at": later},  # crashed here
                   {"host": "elsewhere", "pid": 1, "expires_at": datetime.now(UTC).isoformat()}):  # expired there
        os.makedirs(os.path.dirname(lease_path(root)), exist_ok=True)
        with open(lease_path(root), "w") as handle:
            json.dump({"run_id": "gone", "command": "run", "since": later, **holder}, handle)
        with writer_lease(None, root, "run-new", "run", NOW_ONLY) as held:
            assert held.run_id == "run-new"


def test_a_writing_command_fails_at_once_or_waits_with_wait(spark, settings):
    root = settings.lakehouse.root
    base = ["--set", f"lakehouse.root={root}", "--set", f"landing.root={settings.landing.root}"]
    with writer_lease(spark, root, "run-held", "privacy_erase", NOW_ONLY):
        busy = CliRunner().invoke(cli, [*base, "segment"])
    assert busy.exit_code == 1
    assert busy.output.startswith("error: the lakehouse at ") and "run run-held (privacy_erase)" in busy.output
    assert "\n" not in busy.output.strip()

    held = writer_lease(spark, root, "run-held", "privacy_erase", NOW_ONLY)
    held.__enter__()
    threading.Timer(1.0, held.__exit__, (None, None, None)).start()
    waited = CliRunner().invoke(cli, [*base, "--wait", "20", "segment"])
    assert "no customer features yet" in waited.output  # it got the lease, then found nothing to judge


def test_on_s3_the_lease_is_a_conditional_put(moto_endpoint, monkeypatch):
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)  # boto3 reads it; Spark's s3a endpoint otherwise
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket="lake")
    root = "s3a://lake/lakehouse"
    with writer_lease(None, root, "run-a", "run", NOW_ONLY):
        assert current_holder(None, root).run_id == "run-a"
        with pytest.raises(WriterBusy, match="is being written by run run-a"), \
                writer_lease(None, root, "run-b", "sync:file", NOW_ONLY):
            pass
    assert current_holder(None, root) is None
