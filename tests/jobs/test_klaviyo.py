"""The Klaviyo destination against a fake Klaviyo that checks every request against Klaviyo's own
OpenAPI contracts, measures the call rates and fails on purpose."""

import json
import logging
from datetime import timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner
from pyspark.sql import functions as F

import jobs.destinations.klaviyo as klaviyo
from jobs.cli import cli
from jobs.destinations.klaviyo import RATE_LIMITS, KlaviyoDestination, import_jobs, profile
from jobs.destinations.limits import Limit, RateLimiter
from jobs.runtime.errors import ConfigError
from jobs.runtime.tables import PRODUCTS_SCHEMA, RECOMMENDATIONS_SCHEMA, read_or_empty, read_table
from jobs.stages.segment import run_segments
from jobs.stages.sync import sync
from tests.fakes.klaviyo import CONTRACTS, FakeKlaviyo
from tests.jobs.conftest import KLAVIYO_LIST, KLAVIYO_SEGMENT, T0

KEY = "pk_test_5f2c0a9e77b14d3c8e1f"
LIST, SEGMENT = KLAVIYO_LIST, KLAVIYO_SEGMENT


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("TEST_KLAVIYO_KEY", KEY)
    made = []

    def start(**kwargs):
        server = FakeKlaviyo(KEY, **kwargs)
        made.append(server)
        return server, server.start()

    yield start
    for server in made:
        server.stop()




def test_the_limiter_table_is_the_documented_limits_of_each_endpoint():
    documented = {}
    for path in CONTRACTS.glob("*.json"):
        for methods in json.loads(path.read_text())["paths"].values():
            for op in methods.values():
                documented[op["operationId"]] = (op["x-klaviyo-ratelimit"]["burst"], op["x-klaviyo-ratelimit"]["steady"])
    assert documented == RATE_LIMITS


def test_the_limiter_never_exceeds_burst_or_steady_on_a_virtual_clock():
    now = [0.0]
    limiter = RateLimiter({"op": (Limit.parse("10/s"), Limit.parse("150/m"))},
                          clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    stamps = []
    for _ in range(400):
        with limiter.slot("op"):
            stamps.append(now[0])
            now[0] += 0.001  # the call itself
    per_second = max(sum(1 for u in stamps[i:] if u < t + 1) for i, t in enumerate(stamps))
    per_minute = max(sum(1 for u in stamps[i:] if u < t + 60) for i, t in enumerate(stamps))
    assert (per_second, per_minute) == (10, 150)
    assert 120 < stamps[-1] < 180  # 400 calls at 150/min: two full minutes of waiting, not more


def test_the_fake_measures_the_client_within_the_burst_limit_and_catches_a_client_without_one(fake, change_rows, klaviyo_settings):
    server, url = fake()
    destination = KlaviyoDestination(klaviyo_settings(url))
    ids = [f"C{i}" for i in range(25)]
    destination.send("r", SEGMENT, 1, "k", change_rows(ids))
    for cid in ids:  # 25 list removals, one profile each: a 10/s endpoint
        destination.send("r", SEGMENT, 2, "k", change_rows([cid], "remove"))
    assert server.members(LIST) == set()
    assert server.violations == []
    assert server.max_in_window("remove_profiles_from_list", 1.0) == 10

    unlimited = KlaviyoDestination(klaviyo_settings(url))
    unlimited.limiter = RateLimiter({op: (Limit(10_000, 1),) for op in RATE_LIMITS})
    unlimited.send("r", SEGMENT, 1, "k", change_rows(ids))
    for cid in ids:
        unlimited.send("r", SEGMENT, 2, "k", change_rows([cid], "remove"))
    assert any("remove_profiles_from_list" in v and "limit 10" in v for v in server.violations)


def test_large_batches_are_split_by_the_documented_job_and_removal_limits(fake, monkeypatch, change_rows, klaviyo_settings):
    server, url = fake()
    # a 10,000-profile job can take the fake over a second on a busy machine: no timeout retries here
    destination = KlaviyoDestination(klaviyo_settings(url, timeout_seconds=30))
    ids = [f"C{i:05d}" for i in range(10_050)]
    result = destination.send("r", SEGMENT, 1, "k", change_rows(ids))
    jobs = [c for c in server.calls if getattr(c, "operation", "") == "bulk_import_profiles"]
    assert [len(c.json()["data"]["attributes"]["profiles"]["data"]) for c in jobs] == [10_000, 50]
    assert result.failed == [] and len(server.members(LIST)) == 10_050

    destination.profile_ids.clear()  # the map is refilled from GET /api/profiles
    destination.send("r", SEGMENT, 2, "k", change_rows(ids[:2_500], "remove"))
    removals = [c for c in server.calls if getattr(c, "operation", "") == "remove_profiles_from_list"]
    assert [len(c.json()["data"]) for c in removals] == [1_000, 1_000, 500]
    assert len(server.members(LIST)) == 7_550 and server.violations == []

    monkeypatch.setattr(klaviyo, "MAX_IMPORT_BYTES", 4_000)  # big profiles: split by size instead
    parts = list(import_jobs([profile(r) for r in change_rows(ids[:40])], LIST))
    assert len(parts) > 1 and all(len(body) <= 4_000 for _, body in parts)
    assert sum(len(part) for part, _ in parts) == 40


def test_a_segment_without_a_list_is_refused_before_anything_is_sent(fake, klaviyo_settings):
    _, url = fake()
    with pytest.raises(ConfigError, match=r"^destinations.klaviyo.lists has no entry for segment 'high_value'"):
        KlaviyoDestination(klaviyo_settings(url)).prepare([SEGMENT, "high_value"])


def _conf(tmp_path, settings, url):
    conf = tmp_path / "klaviyo.yaml"
    conf.write_text(
        f"lakehouse: {{root: {settings.lakehouse.root}}}\nlanding: {{root: {tmp_path / 'landing'}}}\n"
        f"spark: {{profile: test}}\nsync: {{batch_size: 2}}\n"
        f"destinations:\n  klaviyo:\n    base_url: {url}\n    api_key_env: TEST_KLAVIYO_KEY\n"
        f"    lists: {{{SEGMENT}: {LIST}}}\n    poll_seconds: 0.01\n"
        "    retry: {timeout_seconds: 1, max_attempts: 8, backoff_seconds: 0.01}\n")
    (tmp_path / "sources").mkdir(exist_ok=True)
    (tmp_path / "sources" / "web.yaml").write_text("kind: events\nformat: json\n")
    (tmp_path / "sources" / "crm.yaml").write_text("kind: crm\nformat: csv\n")
    return conf


def test_with_a_fifth_of_calls_failing_klaviyo_ends_with_the_exact_membership(spark, lakehouse, fake, tmp_path,
                                                                              caplog, write_rows):
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="jobs")
    server, url = fake(fault_rate=0.2, reject_external_ids={"C3"})
    conf = _conf(tmp_path, lakehouse, url)
    runner = CliRunner()
    root = lakehouse.lakehouse.root
    write_rows(lakehouse, "silver.products", [{"product_id": "P7", "name": "Kite", "url": "https://shop.example/p/P7",
                                               "price": Decimal("19.90"), "source": "catalog"}], PRODUCTS_SCHEMA)
    write_rows(lakehouse, "gold.product_recommendations", [
        {"customer_id": "C1", "rank": rank, "product_id": product, "score": 1.0, "reason": "popular", "as_of": T0}
        for rank, product in ((2, "P8"), (1, "P7"))], RECOMMENDATIONS_SCHEMA)

    first = runner.invoke(cli, ["--conf", str(conf), "sync", "klaviyo", "--segment", SEGMENT, "--fail-on-refused",
                                "--output", "json"])
    assert first.exit_code == 1, first.output  # refused rows, and the scheduler asked to hear of them
    assert first.stderr.strip() == ("error: klaviyo: 1 row(s) refused (see ops.sync_failures); they go again "
                                    "next sync")
    assert json.loads(first.stdout)["refused"] == 1
    assert server.members(LIST) == {"C1", "C2", "C4", "C5"}  # C3's email is refused by Klaviyo
    properties = {p["external_id"]: p["properties"] for p in server.profiles.values()}
    assert properties["C1"]["recommended_products"] == [  # in rank order, each as the catalog knows it
        {"id": "P7", "name": "Kite", "url": "https://shop.example/p/P7", "image_url": None, "price": 19.9},
        {"id": "P8", "name": "P8", "url": None, "image_url": None, "price": None}]
    assert (properties["C2"]["recommended_products"], properties["C2"]["cart_items"]) == ([], [])
    failures = read_table(spark, root, "ops.sync_failures").collect()
    assert [(r["customer_id"], r["error"]) for r in failures] == [("C3", "invalid: Invalid email address.")]

    run_segments(spark, lakehouse, T0 + timedelta(hours=20, minutes=30))  # C4 and C5 leave the segment
    second = runner.invoke(cli, ["--conf", str(conf), "sync", "klaviyo", "--segment", SEGMENT])
    assert second.exit_code == 0, second.output
    assert server.members(LIST) == {"C1", "C2"}

    server.reject.clear()  # C3's profile is fixed: the retried row goes through
    third = runner.invoke(cli, ["--conf", str(conf), "sync", "klaviyo", "--segment", SEGMENT])
    assert third.exit_code == 0, third.output
    assert server.members(LIST) == {"C1", "C2", "C3"}

    assert server.violations == []
    assert len(server.injected) >= 5 and len(set(server.injected)) >= 4  # several kinds of failure happened
    log = read_table(spark, root, "ops.sync_log").where(F.col("destination") == "klaviyo")
    assert log.agg(F.max("attempts")).first()[0] > 1
    everything = [first.output, second.output, third.output, caplog.text]
    for key in ("ops.sync_log", "ops.sync_failures", "ops.sync_ledger", "ops.sync_state", "ops.job_runs"):
        everything += [json.dumps(r.asDict(), default=str) for r in read_or_empty(spark, root, key).collect()]
    assert not [text for text in everything if KEY in text]


class Killed(BaseException):
    """The process dies: nothing in the sync catches it."""


def test_a_sync_killed_mid_batch_completes_exactly_on_rerun(spark, lakehouse, fake, monkeypatch, deliveries_per_customer, klaviyo_settings):
    server, url = fake(fault_rate=0.2)
    settings = lakehouse.model_copy(update={
        "destinations": lakehouse.destinations.model_copy(update={"klaviyo": klaviyo_settings(url)}),
        "sync": lakehouse.sync.model_copy(update={"batch_size": 2})})
    imports = []
    real_import = KlaviyoDestination._import

    def dies_after_second_job(self, part, body, result):
        real_import(self, part, body, result)
        imports.append(len(part))
        if len(imports) == 2:
            raise Killed  # the job landed at Klaviyo; the sync never heard back

    monkeypatch.setattr(KlaviyoDestination, "_import", dies_after_second_job)
    with pytest.raises(Killed):
        sync(spark, settings, "klaviyo", (SEGMENT,))
    assert server.members(LIST) == {"C1", "C2", "C3", "C4"}

    result = sync(spark, settings, "klaviyo", (SEGMENT,))
    assert result.details["plan"][0].adds == 3  # C3 and C4 again (never acknowledged), C5 for the first time
    assert server.members(LIST) == {"C1", "C2", "C3", "C4", "C5"} and server.violations == []
    assert deliveries_per_customer(settings) == {f"C{i}": 1 for i in range(1, 6)}


def test_erasure_asks_klaviyo_to_delete_known_profiles(fake, change_rows, klaviyo_settings):
    server, url = fake()
    destination = KlaviyoDestination(klaviyo_settings(url))
    destination.send("r", SEGMENT, 1, "k", change_rows(["C1", "C2"]))
    destination.profile_ids.clear()  # a later process: the map is filled again from GET /api/profiles

    assert destination.erase(["C1", "C9"]) == "1 deletion jobs requested, 1 not known to Klaviyo"
    assert [d["id"] for d in server.deletions] == [server.by_external["C1"]]
    assert server.violations == []  # the deletion body matched Klaviyo's request_profile_deletion schema
