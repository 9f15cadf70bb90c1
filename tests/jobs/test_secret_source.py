"""Credentials from AWS Secrets Manager (moto's standalone server over HTTP) when configured,
from the environment otherwise; errors name the setting and the variable, never a value."""

import json
import re

import boto3
import pytest
from click.testing import CliRunner

from jobs.destinations import destination
from jobs.runtime.errors import ConfigError
from jobs.runtime.secrets import SecretSource
from jobs.runtime.settings import DestinationsSettings, SecretsSettings
from tests.conftest import REPO
from tests.fakes.klaviyo import FakeKlaviyo
from tests.jobs.conftest import KLAVIYO_LIST as LIST
from tests.jobs.conftest import KLAVIYO_SEGMENT as SEGMENT

KEY = "pk_from_secrets_manager_5e4d3c2b1a"
SECRET_ID = "email-lakehouse/test"


@pytest.fixture
def stored(moto_endpoint):
    """Secrets Manager holding one JSON secret; returns the settings that point at it."""
    client = boto3.client("secretsmanager", endpoint_url=moto_endpoint, region_name="us-east-1")
    client.create_secret(Name=SECRET_ID, SecretString=json.dumps({"TEST_KLAVIYO_KEY": KEY}))
    client.create_secret(Name="not-json", SecretString="just a string")
    return SecretsSettings(aws_secret_id=SECRET_ID, region="us-east-1", endpoint_url=moto_endpoint)


def test_a_destination_takes_its_key_from_the_configured_secret(settings, stored, monkeypatch, change_rows,
                                                                  klaviyo_settings):
    monkeypatch.delenv("TEST_KLAVIYO_KEY", raising=False)
    server = FakeKlaviyo(KEY)
    url = server.start()
    try:
        configured = settings.model_copy(update={
            "secrets": stored,
            "destinations": DestinationsSettings(file=settings.destinations.file, klaviyo=klaviyo_settings(url))})
        result = destination(configured, "klaviyo").send("r", SEGMENT, 1, "k", change_rows(["C1", "C2"]))
    finally:
        server.stop()
    assert result.failed == [] and server.violations == []
    assert server.lists[LIST] and all(c.headers["authorization"] == f"Klaviyo-API-Key {KEY}" for c in server.calls)


def test_names_the_secret_lacks_come_from_the_environment_and_missing_ones_are_named(stored, monkeypatch):
    monkeypatch.setenv("TEST_FROM_ENV", "env-value-1")
    monkeypatch.setenv("TEST_KLAVIYO_KEY", "shadowed")
    source = SecretSource(stored)
    assert source.get("destinations.klaviyo.api_key_env", "TEST_KLAVIYO_KEY") == KEY  # the manager first
    assert source.get("privacy.salt_env", "TEST_FROM_ENV") == "env-value-1"
    with pytest.raises(ConfigError) as missing:
        source.get("privacy.salt_env", "TEST_NOWHERE")
    assert str(missing.value) == ("privacy.salt_env: TEST_NOWHERE is neither a key of secret "
                                  "'email-lakehouse/test' nor set in the environment")

    for secret_id, reason in (("absent", "cannot read secret 'absent' (ResourceNotFoundException)"),
                              ("not-json", "secret 'not-json' must be a JSON object of variable names")):
        with pytest.raises(ConfigError, match="^" + re.escape(f"secrets.aws_secret_id: {reason}")) as refused:
            SecretSource(stored.model_copy(update={"aws_secret_id": secret_id})).get("x", "TEST_FROM_ENV")
        assert "just a string" not in str(refused.value)


def test_an_unreadable_secret_is_a_config_error_exit_2_without_a_traceback(tmp_path, moto_endpoint):
    from jobs.cli import cli

    (tmp_path / "sources").symlink_to(REPO / "conf" / "sources")
    conf = tmp_path / "conf.yaml"
    conf.write_text(f"lakehouse: {{root: {tmp_path / 'lake'}}}\nlanding: {{root: {tmp_path / 'landing'}}}\n"
                    f"secrets: {{aws_secret_id: gone, region: us-east-1, endpoint_url: '{moto_endpoint}'}}\n"
                    "destinations: {klaviyo: {api_key_env: TEST_KLAVIYO_KEY, lists: {at_risk: L1}}}\n")
    result = CliRunner().invoke(cli, ["--conf", str(conf), "sync", "klaviyo", "--segment", "at_risk"])
    assert result.exit_code == 2
    assert "secrets.aws_secret_id: cannot read secret 'gone' (ResourceNotFoundException)" in result.output
    assert "Traceback" not in result.output


def test_a_key_pasted_with_its_line_break_works_and_a_control_character_inside_is_named_not_shown(monkeypatch):
    from jobs.runtime.errors import ConfigError
    from jobs.runtime.pii import mask
    from jobs.runtime.secrets import SecretSource

    monkeypatch.setenv("TEST_PASTED_KEY", "pk_live_pasted_0a1b2c\n")
    assert SecretSource().get("destinations.klaviyo.api_key_env", "TEST_PASTED_KEY") == "pk_live_pasted_0a1b2c"
    # from now on no error text carries it, however it got there (a vendor echo, a library's message)
    assert mask("ValueError: Invalid header value b'Klaviyo-API-Key pk_live_pasted_0a1b2c\\n'") == (
        "ValueError: Invalid header value b'Klaviyo-API-Key ***\\n'")

    monkeypatch.setenv("TEST_BROKEN_KEY", "pk_live\rbroken_9z8y")
    with pytest.raises(ConfigError) as raised:
        SecretSource().get("destinations.klaviyo.api_key_env", "TEST_BROKEN_KEY")
    assert str(raised.value).startswith("destinations.klaviyo.api_key_env: TEST_BROKEN_KEY holds a control character")
    assert "broken_9z8y" not in str(raised.value)
