"""Destinations a sync sends changes to. Each takes batches and says which rows it accepted."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from jobs.runtime.errors import ConfigError
from jobs.runtime.secrets import SecretSource
from jobs.runtime.settings import Settings


@dataclass
class BatchResult:
    """What the destination acknowledged: failed rows are (customer_id, error); the rest landed."""

    failed: list[tuple[str, str]] = field(default_factory=list)
    attempts: int = 1
    http_status: int | None = None


def segment_target(setting: str, targets: dict[str, str], segment_ids: list[str]) -> None:
    """Refuse, before anything is sent, segments the destination has nowhere to put."""
    missing = [s for s in segment_ids if s not in targets]
    if missing:
        raise ConfigError(f"{setting} has no entry for segment {missing[0]!r} "
                          f"(configured: {', '.join(sorted(targets)) or 'none'}); add it or sync with --segment")


class Destination(Protocol):
    name: str

    def send(self, run_id: str, segment_id: str, batch_no: int, key: str, rows: list[dict[str, Any]]) -> BatchResult:
        """Deliver one batch; sending the same key again must not apply it twice."""

    def prepare(self, segment_ids: list[str]) -> None:
        """Called before anything is sent: refuse segments the destination cannot take."""

    def target(self, segment_id: str) -> str | None:
        """Where this segment's changes land (an endpoint, a list, a folder): what the sync state
        describes. None when the segment has nowhere to go."""

    def finish(self, run_id: str, summary: dict[str, Any]) -> None:
        """Called once after every batch of a run was sent."""


# name -> (module, class, the keys its settings need): imported only when used.
# name -> (module, class, keys named in the "not configured" error, takes credentials)
_CONFIGURED = {
    "klaviyo": ("jobs.destinations.klaviyo", "KlaviyoDestination", "api_key_env, lists", True),
    "sfmc": ("jobs.destinations.sfmc", "SfmcDestination",
             "auth_url, rest_url, client_id_env, client_secret_env, data_extensions", True),
    "webhook": ("jobs.destinations.webhook", "WebhookDestination", "url, secret_env", True),
    "s3": ("jobs.destinations.s3", "S3Destination", "bucket, prefix, endpoint_url", False),
}


def destination(settings: Settings, name: str) -> Destination:
    if name == "file":
        from jobs.destinations.file import FileDestination

        return FileDestination(settings.destinations.file.path)
    if name not in _CONFIGURED:
        known = ", ".join(type(settings.destinations).model_fields)
        raise ConfigError(f"unknown destination {name!r} (configured: {known})")
    module, cls, keys, credentials = _CONFIGURED[name]
    configured = getattr(settings.destinations, name)
    if configured is None:
        raise ConfigError(f"destination {name!r} is not configured (destinations.{name}: {{{keys}}})")
    make = getattr(importlib.import_module(module), cls)
    if credentials:
        return make(configured, secrets=SecretSource(settings.secrets))  # type: ignore[no-any-return]
    return make(configured)  # type: ignore[no-any-return]
