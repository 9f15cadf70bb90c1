"""The ``webhook`` destination: each batch POSTed as JSON, signed and idempotent.

Headers: ``Idempotency-Key`` (the batch's content hash: a receiver that saw it already must not
apply it again) and ``X-Signature-SHA256`` (hex HMAC-SHA256 of the exact body with the shared
secret, read from the environment variable ``destinations.webhook.secret_env``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from jobs.destinations import BatchResult
from jobs.destinations.http import DeliveryFailed, check_credentials, post
from jobs.runtime.secrets import ENVIRONMENT, SecretSource
from jobs.runtime.settings import WebhookDestination as WebhookSettings

SIGNATURE_HEADER = "X-Signature-SHA256"


def sign(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookDestination:
    name = "webhook"

    def __init__(self, settings: WebhookSettings, secrets: SecretSource = ENVIRONMENT):
        self.settings = settings
        self._secret = secrets.get("destinations.webhook.secret_env", settings.secret_env).encode()

    def _post(self, key: str, payload: dict[str, Any]) -> Any:
        body = json.dumps(payload, sort_keys=True, default=str).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": key,
                   SIGNATURE_HEADER: sign(self._secret, body)}
        return check_credentials(self.name, post(self.settings.url, body, headers, self.settings.retry))

    def send(self, run_id: str, segment_id: str, batch_no: int, key: str, rows: list[dict[str, Any]]) -> BatchResult:
        answer = self._post(key, {"type": "changes", "segment_id": segment_id, "batch_key": key, "changes": rows})
        if not answer.ok:
            error = f"HTTP {answer.status}: {answer.body[:200].decode(errors='replace')}"
            return BatchResult(failed=[(row["customer_id"], error) for row in rows], attempts=answer.attempts,
                               http_status=answer.status)
        return BatchResult(attempts=answer.attempts, http_status=answer.status)

    def erase(self, customer_ids: list[str]) -> str:
        """Tell the receiver to forget these customers: ``{"type": "erase", "customer_ids": [...]}``,
        signed, with an idempotency key of its own."""
        ids = sorted(customer_ids)
        key = hashlib.sha256(json.dumps(["erase", ids]).encode()).hexdigest()
        answer = self._post(key, {"type": "erase", "customer_ids": ids})
        if not answer.ok:
            raise DeliveryFailed(f"webhook erase message refused with HTTP {answer.status}")
        return f"erase message for {len(ids)} customers acknowledged (HTTP {answer.status})"

    def prepare(self, segment_ids: list[str]) -> None:
        """Any segment goes: the payload names it."""

    def target(self, segment_id: str) -> str | None:
        return self.settings.url

    def finish(self, run_id: str, summary: dict[str, Any]) -> None:
        """Nothing to finish: every batch stands on its own."""
