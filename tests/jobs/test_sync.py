import json
import shutil
from datetime import timedelta

import pytest
from click.testing import CliRunner
from pyspark.sql import functions as F

import jobs.stages.sync as sync_module
from jobs.cli import cli
from jobs.destinations import BatchResult
from jobs.destinations.file import FileDestination
from jobs.runtime.settings import SyncSettings
from jobs.runtime.tables import CUSTOMERS_SCHEMA, current_version, read_table, table_path
from jobs.stages.features import build_features
from jobs.stages.segment import run_segments
from jobs.stages.sync import LargeChange, sync
from tests.conftest import REPO
from tests.jobs.conftest import T0


def _ledger_state(spark, settings, segment="abandoned_cart_24h"):
    ledger = read_table(spark, settings.lakehouse.root, "ops.sync_ledger").where(F.col("segment_id") == segment)
    return ledger.where(F.col("status") == "acknowledged")


def _delivered(spark, settings, segment="abandoned_cart_24h", destination="file"):
    root = settings.lakehouse.root
    members = sync_module._delivered(spark, root, destination).members(spark, root, destination)
    return sorted(r["customer_id"] for r in members.where(F.col("segment_id") == segment).collect())


def _plan(result):
    return result.details["plan"]


def test_first_sync_sends_consenting_members_and_a_second_sends_nothing(spark, lakehouse, tmp_path):
    result = sync(spark, lakehouse, "file", ("abandoned_cart_24h",))

    [segment] = _plan(result)
    assert (segment.adds, segment.removes, segment.updates, segment.batches) == (5, 0, 0, 1)  # C6: no consent
    assert _delivered(spark, lakehouse) == ["C1", "C2", "C3", "C4", "C5"]
    files = sorted((tmp_path / "exports" / result.run_id / "abandoned_cart_24h").glob("*.jsonl"))
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert [(r["action"], r["customer_id"], r["email"]) for r in lines] == [
        ("add", f"C{i}", f"c{i}@example.com") for i in range(1, 6)]
    manifest = json.loads((tmp_path / "exports" / result.run_id / "manifest.json").read_text())
    assert manifest["segments"]["abandoned_cart_24h"]["adds"] == 5

    again = sync(spark, lakehouse, "file", ("abandoned_cart_24h",))
    assert [(s.adds, s.removes, s.updates, s.batches) for s in _plan(again)] == [(0, 0, 0, 0)]
    assert sum(again.commits.values()) == 0  # nothing to send: no request, no commit
    runs = read_table(spark, lakehouse.lakehouse.root, "ops.job_runs").where(F.col("job") == "sync:file")
    membership = current_version(spark, table_path(lakehouse.lakehouse.root, "gold.segment_membership"))
    assert [r["sync"][0]["synced_version"] for r in runs.orderBy("started_at").collect()] == [membership] * 2


def test_a_features_change_in_columns_no_destination_reads_runs_no_sync_job(spark, lakehouse, write_rows,
                                                                           customer_row):
    sync(spark, lakehouse, "file", ("abandoned_cart_24h",))
    customers = [customer_row(f"C{i}", consent=i != 6) for i in range(1, 7)]

    def features_with(**changes):
        customers[1].update(changes)  # C2's profile
        write_rows(lakehouse, "silver.customers", customers, CUSTOMERS_SCHEMA, mode="overwrite")
        return build_features(spark, lakehouse, T0)

    assert features_with(city="Denver").data_commits == 1  # the features did change: not in a synced column
    untouched = sync(spark, lakehouse, "file", ("abandoned_cart_24h",))
    assert (untouched.spark_jobs, sum(untouched.commits.values()), untouched.details["unchanged"]) == (0, 0, True)

    assert features_with(first_name="Bea").data_commits == 1  # a field the templates show
    changed = sync(spark, lakehouse, "file", ("abandoned_cart_24h",))
    assert [(s.adds, s.removes, s.updates) for s in _plan(changed)] == [(0, 0, 1)]


def test_leaving_the_segment_or_withdrawing_consent_removes_and_changes_are_netted(spark, lakehouse, write_rows, customer_row):
    sync(spark, lakehouse, "file", ("abandoned_cart_24h",))
    customers = [customer_row(f"C{i}", consent=i not in (1, 6)) for i in range(1, 7)]  # C1 withdraws consent
    customers[1]["first_name"] = "Bea"  # C2's template attributes change
    write_rows(lakehouse, "silver.customers", customers, CUSTOMERS_SCHEMA, mode="overwrite")
    run_segments(spark, lakehouse, T0 + timedelta(hours=1))
    run_segments(spark, lakehouse, T0 + timedelta(hours=20, minutes=30))  # carts of C4-C6 now older than 24 h

    result = sync(spark, lakehouse, "file", ("abandoned_cart_24h",), allow_large_change=True)

    [segment] = _plan(result)
    assert (segment.adds, segment.removes, segment.updates) == (0, 3, 1)
    assert _delivered(spark, lakehouse) == ["C2", "C3"]
    removed = _ledger_state(spark, lakehouse).where(F.col("action") == "remove").select("customer_id").collect()
    assert sorted(r[0] for r in removed) == ["C1", "C4", "C5"]


def test_a_sync_killed_after_a_batch_finishes_on_rerun_without_resending(spark, lakehouse, monkeypatch, tmp_path):
    sent = []

    class Flaky(FileDestination):
        def send(self, run_id, segment_id, batch_no, key, rows):
            if len(sent) == 1:
                raise RuntimeError("killed after batch 1")
            sent.append([r["customer_id"] for r in rows])
            return super().send(run_id, segment_id, batch_no, key, rows)

    monkeypatch.setattr(sync_module, "destination", lambda settings, name: Flaky(str(tmp_path / "exports")))
    lakehouse = lakehouse.model_copy(update={"sync": SyncSettings(batch_size=2)})
    with pytest.raises(RuntimeError, match="killed"):
        sync(spark, lakehouse, "file", ("abandoned_cart_24h",))
    assert _delivered(spark, lakehouse) == ["C1", "C2"]
    [killed] = (tmp_path / "exports").glob("*/manifest.json")  # the acknowledged batch is reachable
    listed = json.loads(killed.read_text())
    assert listed["status"] == "incomplete" and [b["rows"] for b in listed["batches"]] == [2]
    assert (killed.parent / listed["batches"][0]["file"]).is_file()
    state = tmp_path / "lakehouse" / "ops" / "sync_state"
    assert not state.exists() or read_table(spark, lakehouse.lakehouse.root, "ops.sync_state").count() == 0

    sent.append(None)  # let every later batch through
    result = sync(spark, lakehouse, "file", ("abandoned_cart_24h",))
    assert (_plan(result)[0].adds, _plan(result)[0].batches) == (3, 2)
    assert result.commits["ops.sync_ledger"] == 1  # the batches of a sync are recorded together
    adds = _ledger_state(spark, lakehouse).where(F.col("action") == "add").groupBy("customer_id").count()
    assert {r["customer_id"]: r["count"] for r in adds.collect()} == {f"C{i}": 1 for i in range(1, 6)}


def test_refused_rows_are_recorded_and_sent_again_next_time(spark, lakehouse, monkeypatch, tmp_path):
    refuse = {"C2"}

    class Picky(FileDestination):
        def send(self, run_id, segment_id, batch_no, key, rows):
            super().send(run_id, segment_id, batch_no, key, rows)
            return BatchResult(failed=[(r["customer_id"], "400 invalid email") for r in rows
                                       if r["customer_id"] in refuse], http_status=400)

    monkeypatch.setattr(sync_module, "destination", lambda settings, name: Picky(str(tmp_path / "exports")))
    first = sync(spark, lakehouse, "file", ("abandoned_cart_24h",))
    assert _plan(first)[0].failed == 1
    failures = read_table(spark, lakehouse.lakehouse.root, "ops.sync_failures").collect()
    assert [(r["customer_id"], r["error"]) for r in failures] == [("C2", "400 invalid email")]
    refuse.clear()
    second = sync(spark, lakehouse, "file", ("abandoned_cart_24h",))
    assert (_plan(second)[0].adds, _plan(second)[0].failed) == (1, 0)
    assert _delivered(spark, lakehouse) == ["C1", "C2", "C3", "C4", "C5"]


def test_a_large_removal_stops_before_sending_unless_allowed_or_the_segment_turns_over_by_design(
        spark, lakehouse, tmp_path):
    shipped = REPO / "rules" / "segments" / "abandoned_cart_24h.yaml"
    assert "max_remove_share: 1.0" in shipped.read_text()  # a 24-hour window: the shipped rule allows it
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    (rules / "segments" / "abandoned_cart_24h.yaml").write_text(shipped.read_text().split("\n# A 24-hour")[0])
    guarded = lakehouse.model_copy(update={"rules_dir": str(rules)})  # no limit of its own: the config's 50 %

    sync(spark, guarded, "file", ("abandoned_cart_24h",))
    run_segments(spark, guarded, T0 + timedelta(days=3))  # every cart is now too old
    with pytest.raises(LargeChange, match=r"remove 5 of 5 synced members of abandoned_cart_24h \(100% > 50%\)"):
        sync(spark, guarded, "file", ("abandoned_cart_24h",))
    assert _delivered(spark, guarded) == ["C1", "C2", "C3", "C4", "C5"]
    sync(spark, lakehouse, "file", ("abandoned_cart_24h",))  # the shipped rule's own limit: 100 %
    assert _delivered(spark, lakehouse) == []


def test_dry_run_sends_nothing_and_full_refresh_resends_everything(spark, lakehouse, tmp_path):
    dry = CliRunner().invoke(cli, ["--set", f"lakehouse.root={lakehouse.lakehouse.root}", "--set",
                                   f"destinations.file.path={tmp_path / 'exports'}", "sync", "file",
                                   "--segment", "abandoned_cart_24h", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would send (dry run)" in dry.output and "abandoned_cart_24h add: " in dry.output
    assert "@example.com" in dry.output and "c1@example.com" not in dry.output  # emails masked
    assert '"customer_id": "id:' in dry.output and '"C1"' not in dry.output  # ids hashed
    assert not (tmp_path / "exports").exists()
    assert not (tmp_path / "lakehouse" / "ops" / "sync_ledger").exists()

    sync(spark, lakehouse, "file", ("abandoned_cart_24h",))
    refreshed = sync(spark, lakehouse, "file", ("abandoned_cart_24h",), full_refresh=True)
    assert _plan(refreshed)[0].adds == 5


def test_unknown_segment_and_destination_are_one_line_errors(spark, lakehouse):
    base = ["--set", f"lakehouse.root={lakehouse.lakehouse.root}", "sync"]
    unknown = CliRunner().invoke(cli, [*base, "file", "--segment", "nope"])
    assert unknown.exit_code == 2 and unknown.output.startswith("error: unknown segment 'nope'")
    nowhere = CliRunner().invoke(cli, [*base, "mailchimp"])
    assert nowhere.exit_code == 2 and "unknown destination 'mailchimp'" in nowhere.output
