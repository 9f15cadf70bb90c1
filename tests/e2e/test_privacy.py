"""Right to be forgotten on a demo lakehouse: after `lakehouse privacy erase`, no version of any
table that time travel can read holds the customer, no commit's logged predicate names them, the
erasure log holds only salted hashes, Klaviyo is asked to delete the profile, and the next run does
not bring them back from the landing zone. The same commands, with real secrets in play (the Klaviyo
key, the erasure salt), leave those secrets in no output, log, table, Delta log or export file: one
test, because each pays a copy of the lakehouse, an erasure and a run."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from delta.tables import DeltaTable
from pyspark.sql import functions as F

from jobs.cli import cli
from jobs.runtime.tables import REGISTRY, is_delta_table, read_table, table_path
from jobs.tools.privacy import salted
from tests.conftest import DEMO_AS_OF, DEMO_LATER
from tests.fakes.klaviyo import FakeKlaviyo

SALT = "pepper-for-tests-7f3a"
KEY = "pk_live_1d9e8c7b6a5f4e3d2c1b"
AS_OF = DEMO_AS_OF
SEGMENTS = ("abandoned_cart_24h", "at_risk", "high_value", "nyc_electronics_25_35", "window_shoppers")


def _invoke(*args):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def klaviyo():
    """A Klaviyo that checks every request against its contract and fails a tenth of them."""
    server = FakeKlaviyo(KEY, fault_rate=0.1)
    url = server.start()
    try:
        yield server, url
    finally:
        server.stop()


@pytest.fixture
def demo(demo_lakehouse, klaviyo, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_ERASURE_SALT", SALT)
    monkeypatch.setenv("TEST_KLAVIYO_KEY", KEY)
    lists = ", ".join(f"{s}: L{i}" for i, s in enumerate(SEGMENTS))
    copy = demo_lakehouse.copy(tmp_path, top="privacy: {salt_env: TEST_ERASURE_SALT}\n", destinations=(
        f"  klaviyo: {{base_url: '{klaviyo[1]}', api_key_env: TEST_KLAVIYO_KEY, lists: {{{lists}}}, poll_seconds: 0.01,\n"
        "            retry: {timeout_seconds: 1, max_attempts: 8, backoff_seconds: 0.01}}\n"))
    return copy.conf, copy.root


def _holds(frame, customer, anonymous, email):
    columns = set(frame.columns)
    condition = F.lit(False)
    if "customer_id" in columns:
        condition = condition | (F.col("customer_id") == customer)
    if "anonymous_id" in columns and anonymous:
        condition = condition | F.col("anonymous_id").isin(anonymous)
    if "email" in columns:
        condition = condition | (F.lower(F.col("email")) == email)
    return frame.where(condition).count()


def test_an_erased_customer_is_in_no_readable_version_and_does_not_come_back_and_no_secret_leaks(
        spark, demo, klaviyo, tmp_path, capfd):
    conf, root = demo
    server = klaviyo[0]
    outputs = [_invoke("--conf", str(conf), "run", "--as-of", DEMO_LATER, "--sync", "klaviyo", "--sync", "file").output,
               _invoke("--conf", str(conf), "sync", "klaviyo", "--dry-run", "--full-refresh").output]
    assert any(c.headers.get("authorization", "").endswith(KEY) for c in server.calls)  # the key was used
    assert server.violations == [] and server.lists  # and Klaviyo got the segments' lists
    stitched = read_table(spark, root, "silver.identity_map").groupBy("customer_id").agg(
        F.collect_set("anonymous_id").alias("anonymous"))
    synced = read_table(spark, root, "ops.sync_ledger").select("customer_id").distinct()
    target = stitched.join(synced, "customer_id").orderBy("customer_id").first()
    customer, anonymous = target["customer_id"], list(target["anonymous"])
    email = read_table(spark, root, "silver.customers").where(F.col("customer_id") == customer).first()["email"].lower()
    assert _holds(read_table(spark, root, "bronze.events"), customer, anonymous, email) > 0
    emails = {r[0].lower() for r in read_table(spark, root, "bronze.crm").select("email").collect() if r[0]}
    silver_before = {r[0] for r in read_table(spark, root, "silver.events").where(
        (F.col("customer_id") != customer) | F.col("customer_id").isNull()).where(
        ~F.coalesce(F.col("anonymous_id").isin(anonymous), F.lit(False))).select("event_id").collect()}

    erased = _invoke("--conf", str(conf), "privacy", "erase", "--customer-id", customer)
    outputs.append(erased.output)

    assert "bronze.events" in erased.output and "silver.customers" in erased.output
    assert server.deletions and server.violations == []  # the platform was told too
    assert customer not in erased.output and email not in erased.output
    for key in REGISTRY:
        # every data and change-data file left on disk, whatever version it belongs to: a version
        # time travel can read is made of these files, so none of them may hold the customer
        files = [str(p) for p in (tmp_path / "lakehouse" / key.replace(".", "/")).rglob("*.parquet")
                 if "_delta_log" not in p.parts]
        if files:
            on_disk = spark.read.option("mergeSchema", "true").parquet(*files)
            assert _holds(on_disk, customer, anonymous, email) == 0, f"{key}: a file on disk still holds them"
    versions = DeltaTable.forPath(spark, table_path(root, "bronze.events")).history().select("version")
    for version in [r[0] for r in versions.collect()]:  # and time travel says the same, file or no file
        try:
            frame = spark.read.format("delta").option("versionAsOf", version).load(table_path(root, "bronze.events"))
            assert _holds(frame, customer, anonymous, email) == 0, f"bronze.events@{version} still holds them"
        except Exception as exc:  # its files are gone: time travel cannot read it
            if isinstance(exc, AssertionError):
                raise
            assert "FileNotFound" in str(exc) or "DELTA_FILE_NOT_FOUND" in str(exc) or "does not exist" in str(
                exc), str(exc)[:500]

    for commit in (tmp_path / "lakehouse").rglob("_delta_log/*.json"):
        # what each commit says it did names nobody erased ...
        infos = [json.dumps(a["commitInfo"]) for a in map(json.loads, commit.read_text().splitlines())
                 if "commitInfo" in a]
        assert not [i for i in infos if customer in i or email in i or any(a in i for a in anonymous)], commit
        # ... and no file statistics, old or new, hold anybody's email: personal columns get none
        assert not [e for e in emails if e in commit.read_text().lower()], commit

    log = read_table(spark, root, "ops.erasure_log").orderBy("recorded_at").collect()
    assert [r["status"] for r in log] == ["requested", "completed"]
    assert {r["id_hash"] for r in log} == {salted(SALT, customer)}
    dump = json.dumps([r.asDict() for r in log], default=str)
    assert customer not in dump and email not in dump and SALT not in dump
    assert log[1]["tables"]["bronze.events"] > 0

    landing = tmp_path / "landing"
    for folder, suffix in (("events", ".json"), ("crm", ".csv")):  # the same files land again under new names
        for path in sorted((landing / folder).glob(f"*{suffix}")):
            shutil.copy(path, path.with_name(f"again-{path.name}"))
    outputs.append(_invoke("--conf", str(conf), "run", "--as-of", AS_OF).output)
    for key in ("bronze.events", "bronze.crm", "silver.events", "silver.customers", "gold.customer_features"):
        assert _holds(read_table(spark, root, key), customer, anonymous, email) == 0, key
    silver_after = [r[0] for r in read_table(spark, root, "silver.events").select("event_id").collect()]
    assert len(silver_after) == len(set(silver_after))  # rows the erasure rewrote were not cleansed again
    assert set(silver_after) == silver_before  # everyone else's events, and nothing turned away before

    # No secret anywhere: what the commands printed, the JVM's log lines (straight to file
    # descriptors 1 and 2), every table's rows, every Delta log, export and manifest.
    captured = capfd.readouterr()
    texts = {"cli output": "\n".join(outputs), "stdout": captured.out, "stderr": captured.err}
    for key in REGISTRY:
        if is_delta_table(spark, table_path(root, key)):
            texts[key] = "\n".join(json.dumps(r.asDict(), default=str) for r in read_table(spark, root, key).collect())
    for path in tmp_path.rglob("*"):
        readable = path.suffix in (".json", ".jsonl", ".crc", ".log") or "_delta_log" in path.parts
        if path.is_file() and readable:
            texts[str(path.relative_to(tmp_path))] = path.read_bytes().decode(errors="replace")
    assert len(texts) > 20
    assert [name for name, text in texts.items() if KEY in text or SALT in text] == []
