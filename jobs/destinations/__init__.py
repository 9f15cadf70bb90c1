"""Destinations a sync sends changes to. Each takes batches and says which rows it accepted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from jobs.errors import ConfigError
from jobs.settings import Settings


@dataclass
class BatchResult:
    """What the destination acknowledged: failed rows are (customer_id, error); the rest landed."""

    failed: list[tuple[str, str]] = field(default_factory=list)
    attempts: int = 1
    http_status: int | None = None


class Destination(Protocol):
    name: str

    def send(self, run_id: str, segment_id: str, batch_no: int, key: str, rows: list[dict[str, Any]]) -> BatchResult:
        """Deliver one batch; sending the same key again must not apply it twice."""

    def finish(self, run_id: str, summary: dict[str, Any]) -> None:
        """Called once after every batch of a run was sent."""


def destination(settings: Settings, name: str) -> Destination:
    if name == "file":
        from jobs.destinations.file import FileDestination

        return FileDestination(settings.destinations.file.path)
    if name == "webhook":
        if settings.destinations.webhook is None:
            raise ConfigError("destination 'webhook' is not configured (destinations.webhook: {url, secret_env})")
        from jobs.destinations.webhook import WebhookDestination

        return WebhookDestination(settings.destinations.webhook)
    if name == "s3":
        if settings.destinations.s3 is None:
            raise ConfigError("destination 's3' is not configured (destinations.s3: {bucket, prefix, endpoint_url})")
        from jobs.destinations.s3 import S3Destination

        return S3Destination(settings.destinations.s3)
    configured = [n for n in type(settings.destinations).model_fields]
    raise ConfigError(f"unknown destination {name!r} (configured: {', '.join(configured)})")
