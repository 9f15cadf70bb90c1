"""The SFMC destination against a fake Marketing Cloud: tokens that expire and get revoked,
async upserts that are pending before they complete, row errors, and injected failures."""

import pytest

from jobs.destinations.http import DeliveryFailed
from jobs.destinations.sfmc import SfmcDestination
from jobs.runtime.settings import RetrySettings
from jobs.runtime.settings import SfmcDestination as SfmcSettings
from jobs.stages.sync import sync
from tests.fakes.sfmc import FakeSfmc

CLIENT_ID, CLIENT_SECRET = "k2x9client0id4test", "Zq8-secret-value-for-tests"
DE = "DE_abandoned_cart"
SEGMENT = "abandoned_cart_24h"


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("TEST_SFMC_ID", CLIENT_ID)
    monkeypatch.setenv("TEST_SFMC_SECRET", CLIENT_SECRET)
    made = []

    def start(**kwargs):
        server = FakeSfmc(CLIENT_ID, CLIENT_SECRET, {DE}, **kwargs)
        made.append(server)
        return server, server.start()

    yield start
    for server in made:
        server.stop()


def _settings(url):
    return SfmcSettings(auth_url=url, rest_url=url + "/", client_id_env="TEST_SFMC_ID",
                        client_secret_env="TEST_SFMC_SECRET", data_extensions={SEGMENT: DE}, poll_seconds=0.01,
                        retry=RetrySettings(timeout_seconds=1, max_attempts=8, backoff_seconds=0.01))




def test_the_token_is_cached_refreshed_on_401_and_fetched_again_when_it_expires(fake, change_rows):
    server, url = fake()
    destination = SfmcDestination(_settings(url))
    for i in range(3):
        assert destination.send("r", SEGMENT, i, "k", change_rows([f"C{i}"])).failed == []
    assert server.token_calls == 1

    server.revoke_tokens()  # e.g. the installed package was rotated
    destination.send("r", SEGMENT, 4, "k", change_rows(["C4"], "remove"))
    assert server.token_calls == 2

    short, short_url = fake(expires_in=60)  # expires within the minute of margin: fetched for every call
    expiring = SfmcDestination(_settings(short_url))
    expiring.send("r", SEGMENT, 1, "k", change_rows(["C1"]))
    expiring.send("r", SEGMENT, 2, "k", change_rows(["C2"]))
    assert short.token_calls >= 2
    assert server.members(DE) == {"C0", "C1", "C2"} and server.violations == [] == short.violations
    assert server.rows[DE]["C4"] == {"customer_id": "C4", "in_segment": False}


def test_row_errors_fail_the_rows_of_their_request_and_bad_credentials_stop_the_sync(fake, monkeypatch, change_rows):
    server, url = fake(reject={"C2"})
    destination = SfmcDestination(_settings(url))
    result = destination.send("r", SEGMENT, 1, "k", change_rows(["C1", "C2"]))
    assert sorted(result.failed) == [("C1", "InvalidValue: Email address is not valid."),
                                     ("C2", "InvalidValue: Email address is not valid.")]

    monkeypatch.setenv("TEST_SFMC_SECRET", "wrong")
    with pytest.raises(DeliveryFailed, match="token request refused with HTTP 401") as refused:
        SfmcDestination(_settings(url)).send("r", SEGMENT, 2, "k", change_rows(["C3"]))
    assert "wrong" not in str(refused.value) and CLIENT_ID not in str(refused.value)


def test_with_failures_and_a_kill_after_batch_two_a_rerun_ends_with_the_exact_rows(spark, lakehouse, fake,
                                                                                   monkeypatch, deliveries_per_customer):
    server, url = fake(fault_rate=0.2, seed=11)
    settings = lakehouse.model_copy(update={
        "destinations": lakehouse.destinations.model_copy(update={"sfmc": _settings(url)}),
        "sync": lakehouse.sync.model_copy(update={"batch_size": 2})})
    sent = []
    real_send = SfmcDestination.send

    def dies_after_second_batch(self, *args):
        if len(sent) == 2:
            raise KeyboardInterrupt  # the operator's Ctrl-C, or a killed container
        sent.append(args[2])
        return real_send(self, *args)

    monkeypatch.setattr(SfmcDestination, "send", dies_after_second_batch)
    with pytest.raises(KeyboardInterrupt):
        sync(spark, settings, "sfmc", (SEGMENT,))
    assert server.members(DE) == {"C1", "C2", "C3", "C4"}

    sent.append("go on")
    result = sync(spark, settings, "sfmc", (SEGMENT,))
    assert result.details["plan"][0].adds == 1
    assert server.members(DE) == {"C1", "C2", "C3", "C4", "C5"}
    assert server.injected and server.violations == []
    assert deliveries_per_customer(settings) == {f"C{i}": 1 for i in range(1, 6)}


def test_erasure_deletes_the_rows_through_the_soap_api_with_a_fresh_token_when_needed(fake, change_rows):
    server, url = fake(fault_rate=0.2, faults=("500", "drop", "429"), seed=3)
    destination = SfmcDestination(_settings(url))
    destination.send("r", SEGMENT, 1, "k", change_rows(["C1", "C2", "C3"]))
    server.revoke_tokens()  # the next SOAP call gets the "Login Failed" fault, fetches a token, goes again
    tokens = server.token_calls

    assert destination.erase(["C1", "C3", "C9"]) == "2 rows deleted from 1 data extensions, 1 not there"
    assert set(server.rows[DE]) == {"C2"} and server.token_calls == tokens + 1
    assert destination.erase(["C1"]) == "0 rows deleted from 1 data extensions, 1 not there"  # a rerun is safe
    soap = [c for c in server.calls if c.path == "/Service.asmx"]
    assert soap and server.injected and server.violations == []


def test_a_row_that_cannot_be_deleted_stops_the_erasure_without_naming_the_customer(fake):
    server, url = fake(reject={"C7"})
    destination = SfmcDestination(_settings(url))
    with pytest.raises(DeliveryFailed, match="1 of 2 rows failed, first: 310011") as failed:
        destination.erase(["C7", "C8"])
    assert "C7" not in str(failed.value) and "<customer_id>" in str(failed.value)

    no_soap = SfmcDestination(_settings(url).model_copy(update={"soap_url": url + "/missing"}))
    with pytest.raises(DeliveryFailed, match="SFMC row delete in data extension DE_abandoned_cart: HTTP 401"):
        no_soap.erase(["C8"])
