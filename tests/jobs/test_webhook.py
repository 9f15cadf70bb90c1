"""The webhook destination against a real HTTP receiver on loopback that checks signatures,
honours idempotency keys, keeps membership as state and fails on purpose."""

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from pyspark.sql import functions as F

from jobs.cli import cli
from jobs.destinations.http import DeliveryFailed, post
from jobs.runtime.settings import DestinationsSettings, RetrySettings, WebhookDestination
from jobs.runtime.tables import overwrite, read_or_empty, read_table, table_path
from jobs.stages.sync import sync
from tests.conftest import REPO

SECRET = "s3cr3t-test-webhook-value"


class Receiver:
    """Holds what a webhook consumer would: members per segment, and the keys it applied."""

    def __init__(self, fail_every: int = 0, refuse: set[str] | None = None):
        self.members: dict[str, set[str]] = {}
        self.erased: list[str] = []
        self.applied: set[str] = set()
        self.requests = self.replays = self.bad_signatures = 0
        self.fail_every, self.refuse = fail_every, refuse or set()
        self.lock = threading.Lock()

    def handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.requests += 1
                    n = receiver.requests
                expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                if not hmac.compare_digest(self.headers.get("X-Signature-SHA256", ""), expected):
                    receiver.bad_signatures += 1
                    return self._answer(401, b"bad signature")
                if receiver.fail_every and n % receiver.fail_every == 0:
                    kind = (n // receiver.fail_every) % 3
                    if kind == 0:
                        return self._answer(500, b"oops")
                    if kind == 1:
                        return self._answer(429, b"slow down", {"Retry-After": "0"})
                    self.close_connection = True  # drop the connection without an answer
                    self.connection.shutdown(2)
                    return None
                payload = json.loads(body)
                if payload["type"] == "erase":
                    for members in receiver.members.values():
                        members.difference_update(payload["customer_ids"])
                    receiver.erased.extend(payload["customer_ids"])
                    return self._answer(200, b"{}")
                if any(c["customer_id"] in receiver.refuse for c in payload["changes"]):
                    return self._answer(422, b"invalid profile")
                key = self.headers["Idempotency-Key"]
                with receiver.lock:
                    if key in receiver.applied:
                        receiver.replays += 1
                    else:
                        receiver.applied.add(key)
                        members = receiver.members.setdefault(payload["segment_id"], set())
                        for change in payload["changes"]:
                            (members.discard if change["action"] == "remove" else members.add)(change["customer_id"])
                return self._answer(202, b"{}")

            def _answer(self, status, body, headers=None):
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


@pytest.fixture
def receiver():
    made = []

    def start(**kwargs):
        state = Receiver(**kwargs)
        server = ThreadingHTTPServer(("127.0.0.1", 0), state.handler())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        made.append(server)
        return state, f"http://127.0.0.1:{server.server_port}/hooks/lakehouse"

    yield start
    for server in made:
        server.shutdown()
        server.server_close()


def _with_webhook(settings, url, batch_size=1):
    webhook = WebhookDestination(url=url, secret_env="TEST_WEBHOOK_SECRET",
                                 retry=RetrySettings(timeout_seconds=5, max_attempts=6, backoff_seconds=0.01))
    return settings.model_copy(update={
        "destinations": DestinationsSettings(file=settings.destinations.file, webhook=webhook),
        "sync": settings.sync.model_copy(update={"batch_size": batch_size}),
    })


def test_with_a_fifth_of_calls_failing_the_receiver_ends_with_the_exact_membership(spark, lakehouse, receiver,
                                                                                    monkeypatch):
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    state, url = receiver(fail_every=5)
    settings = _with_webhook(lakehouse, url)

    result = sync(spark, settings, "webhook", ("abandoned_cart_24h",))

    assert state.members == {"abandoned_cart_24h": {"C1", "C2", "C3", "C4", "C5"}}
    assert state.bad_signatures == 0 and state.requests > len(state.applied)  # some calls were retried
    log = read_table(spark, settings.lakehouse.root, "ops.sync_log").where(F.col("destination") == "webhook")
    assert log.count() == result.details["plan"][0].batches == 5
    assert log.agg(F.max("attempts")).first()[0] > 1
    assert {r["idempotency_key"] for r in log.collect()} == state.applied


def test_refused_rows_are_recorded_and_the_secret_appears_nowhere(spark, lakehouse, receiver, monkeypatch):
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    state, url = receiver(refuse={"C3"})
    settings = _with_webhook(lakehouse, url)
    result = sync(spark, settings, "webhook", ("abandoned_cart_24h",))
    assert result.details["plan"][0].failed == 1
    assert state.members["abandoned_cart_24h"] == {"C1", "C2", "C4", "C5"}
    failures = read_table(spark, settings.lakehouse.root, "ops.sync_failures").collect()
    assert [(r["customer_id"], r["error"][:8]) for r in failures] == [("C3", "HTTP 422")]
    for key in ("ops.sync_log", "ops.sync_failures", "ops.sync_ledger", "ops.sync_state", "ops.job_runs"):
        dump = "\n".join(json.dumps(r.asDict(), default=str) for r in read_or_empty(spark, settings.lakehouse.root, key).collect())
        assert SECRET not in dump, key


def test_a_missing_secret_is_a_one_line_error_naming_the_variable(spark, lakehouse, monkeypatch, tmp_path):
    monkeypatch.delenv("TEST_WEBHOOK_SECRET", raising=False)
    conf = tmp_path / "conf.yaml"
    conf.write_text(
        f"lakehouse: {{root: {lakehouse.lakehouse.root}}}\nlanding: {{root: {tmp_path}}}\n"
        "destinations:\n  webhook: {url: 'http://127.0.0.1:9/x', secret_env: TEST_WEBHOOK_SECRET}\n")
    (tmp_path / "sources").mkdir()
    (tmp_path / "sources" / "web.yaml").write_text("kind: events\nformat: json\n")
    (tmp_path / "sources" / "crm.yaml").write_text("kind: crm\nformat: csv\n")
    result = CliRunner().invoke(cli, ["--conf", str(conf), "sync", "webhook"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: destinations.webhook.secret_env: environment variable TEST_WEBHOOK_SECRET is not set")


def test_an_endpoint_that_keeps_failing_stops_the_sync_with_one_line_and_exit_1(spark, lakehouse, monkeypatch,
                                                                               tmp_path):
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    conf = tmp_path / "conf.yaml"
    conf.write_text(
        f"lakehouse: {{root: {lakehouse.lakehouse.root}}}\nlanding: {{root: {tmp_path}}}\n"
        "destinations:\n  webhook: {url: 'http://127.0.0.1:9/x', secret_env: TEST_WEBHOOK_SECRET,\n"
        "             retry: {max_attempts: 2, backoff_seconds: 0.01, timeout_seconds: 1}}\n")
    (tmp_path / "sources").symlink_to(REPO / "conf" / "sources")
    result = CliRunner().invoke(cli, ["--conf", str(conf), "sync", "webhook", "--segment", "abandoned_cart_24h"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        "error: POST http://127.0.0.1:9/x failed 2 times (last: URLError)")
    assert "Traceback" not in result.output and SECRET not in result.output

    hidden = tmp_path / "jane.doe@example.com"
    missing = CliRunner().invoke(cli, ["--conf", str(hidden / "conf.yaml"), "sync", "webhook"])
    assert missing.exit_code == 2 and "j***@example.com" in missing.output and "jane.doe" not in missing.output


def test_the_http_client_retries_transient_failures_but_not_other_4xx(receiver):
    retry = RetrySettings(timeout_seconds=5, max_attempts=3, backoff_seconds=0.01)
    waits = []
    state, url = receiver(fail_every=1)  # every signed call: 500, 429 (Retry-After 0) or a dropped connection
    signed = {"X-Signature-SHA256": hmac.new(SECRET.encode(), b"{}", hashlib.sha256).hexdigest()}
    with pytest.raises(DeliveryFailed, match=r"failed 3 times \(last: "):
        post(url, b"{}", signed, retry, sleep=waits.append)
    assert state.requests == 3 and len(waits) == 2 and waits[0] == 0.0  # the 429 said Retry-After: 0
    answer = post(url, b"{}", {"X-Signature-SHA256": "forged"}, retry, sleep=waits.append)
    assert (answer.status, answer.attempts, state.requests, state.bad_signatures) == (401, 1, 4, 1)


def test_the_same_change_made_again_later_gets_a_new_key(spark, lakehouse, receiver, monkeypatch):
    """add -> remove -> add -> remove, one-row batches, to a receiver that ignores repeated keys."""
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    state, url = receiver()
    settings = _with_webhook(lakehouse, url)
    root = settings.lakehouse.root
    members = spark.read.format("delta").load(table_path(root, "gold.segment_membership")).localCheckpoint()
    without_c1 = members.where(~((F.col("segment_id") == "abandoned_cart_24h") & (F.col("customer_id") == "C1")))
    seen = []
    for membership in (members, without_c1, members, without_c1):
        overwrite(membership, root, "gold.segment_membership")
        sync(spark, settings, "webhook", ("abandoned_cart_24h",))
        seen.append("C1" in state.members["abandoned_cart_24h"])
    assert seen == [True, False, True, False]
    assert state.replays == 0


def test_refused_credentials_stop_the_sync_with_one_line_and_exit_1(spark, lakehouse, receiver, monkeypatch,
                                                                   tmp_path):
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", "not-the-receiver-s-secret")  # every signature fails: 401
    state, url = receiver()
    conf = tmp_path / "conf.yaml"
    conf.write_text(
        f"lakehouse: {{root: {lakehouse.lakehouse.root}}}\nlanding: {{root: {tmp_path}}}\n"
        f"destinations:\n  webhook: {{url: '{url}', secret_env: TEST_WEBHOOK_SECRET}}\n")
    (tmp_path / "sources").symlink_to(REPO / "conf" / "sources")
    result = CliRunner().invoke(cli, ["--conf", str(conf), "sync", "webhook", "--segment", "abandoned_cart_24h"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].startswith(
        "error: destination webhook: credentials refused (HTTP 401)")
    assert state.requests == 1  # the first refusal stops it
    ledger = read_or_empty(spark, lakehouse.lakehouse.root, "ops.sync_ledger").where(F.col("destination") == "webhook")
    assert ledger.count() == 0  # nothing recorded: the next run sends everything


def test_a_new_target_is_refused_until_a_full_refresh_fills_it(spark, lakehouse, receiver, monkeypatch):
    from jobs.stages.sync import TargetChanged

    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    (old, old_url), (new, new_url) = receiver(), receiver()
    sync(spark, _with_webhook(lakehouse, old_url, batch_size=50), "webhook", ("abandoned_cart_24h",))
    moved = _with_webhook(lakehouse, new_url, batch_size=50)
    with pytest.raises(TargetChanged, match=r"sends abandoned_cart_24h somewhere else than its 5 synced members went"
                                            r".*lakehouse sync webhook --full-refresh"):
        sync(spark, moved, "webhook", ("abandoned_cart_24h",))
    assert new.requests == 0
    sync(spark, moved, "webhook", ("abandoned_cart_24h",), full_refresh=True)
    assert new.members == old.members == {"abandoned_cart_24h": {"C1", "C2", "C3", "C4", "C5"}}
    sync(spark, moved, "webhook", ("abandoned_cart_24h",))  # the new target is now the recorded one


def test_an_erasure_tells_the_receiver_in_a_signed_message(receiver, monkeypatch):
    from jobs.destinations.webhook import WebhookDestination as Webhook

    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    state, url = receiver()
    state.members = {"abandoned_cart_24h": {"C1", "C2"}}
    answer = Webhook(WebhookDestination(url=url, secret_env="TEST_WEBHOOK_SECRET")).erase(["C1"])
    assert answer.startswith("erase message for 1 customers acknowledged")
    assert state.erased == ["C1"] and state.members == {"abandoned_cart_24h": {"C2"}} and state.bad_signatures == 0
