"""Where credentials come from: environment variables, or an AWS Secrets Manager secret.

Settings never hold a credential, only the *name* of one (``api_key_env: KLAVIYO_API_KEY``).
By default the name is an environment variable. With ``secrets.aws_secret_id`` configured, the
name is first looked up as a key of that secret — whose value must be a JSON object of names to
values, read once per process with boto3 (AWS credentials come from boto3's usual chain: role,
profile or ``AWS_*`` variables) — and the environment is the fallback for names the secret does
not hold. No value is ever logged, printed, stored or put in an error message.
"""

from __future__ import annotations

import functools
import json
import os
import unicodedata

from jobs.runtime.errors import ConfigError
from jobs.runtime.pii import register_secret
from jobs.runtime.settings import SecretsSettings


class SecretSource:
    def __init__(self, settings: SecretsSettings | None = None):
        self.settings = settings or SecretsSettings()

    def get(self, setting: str, name: str) -> str:
        """The value of credential ``name``, without surrounding whitespace (a key pasted with its
        line break); the error names the setting and the variable, never a value. Every value read
        is scrubbed from error text from then on (:func:`jobs.runtime.pii.mask`)."""
        secret_id = self.settings.aws_secret_id
        if secret_id:
            value = _aws_secret(secret_id, self.settings.region, self.settings.endpoint_url).get(name)
            if value and value.strip():
                return _checked(setting, name, value)
        value = os.environ.get(name)
        if value and value.strip():
            return _checked(setting, name, value)
        if secret_id:
            raise ConfigError(f"{setting}: {name} is neither a key of secret {secret_id!r} nor set in the environment")
        raise ConfigError(f"{setting}: environment variable {name} is not set")


def _checked(setting: str, name: str, value: str) -> str:
    value = value.strip()
    register_secret(value)
    if any(unicodedata.category(c)[0] == "C" for c in value):
        raise ConfigError(f"{setting}: {name} holds a control character (a line break or tab inside the value?); "
                          "set it to the bare credential")
    return value


ENVIRONMENT = SecretSource()


@functools.lru_cache(maxsize=8)
def _aws_secret(secret_id: str, region: str | None, endpoint_url: str | None) -> dict[str, str]:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client = boto3.client("secretsmanager", region_name=region, endpoint_url=endpoint_url)
        answer = client.get_secret_value(SecretId=secret_id)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "error")
        raise ConfigError(f"secrets.aws_secret_id: cannot read secret {secret_id!r} ({code})") from None
    except BotoCoreError as error:
        raise ConfigError(f"secrets.aws_secret_id: cannot read secret {secret_id!r} "
                          f"({type(error).__name__})") from None
    try:
        values = json.loads(answer.get("SecretString") or "")
    except ValueError:
        values = None
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise ConfigError(f"secrets.aws_secret_id: secret {secret_id!r} must be a JSON object of "
                          "variable names to string values")
    return values
