"""The ``sfmc`` destination: Salesforce Marketing Cloud data extensions, one per segment.

Each segment's data extension (``destinations.sfmc.data_extensions``: segment -> external key)
is keyed by ``customer_id`` and holds one row per customer ever synced, with the template fields
and ``in_segment``: adds and updates upsert ``in_segment = true``, removes upsert
``in_segment = false`` (sendable audiences filter on it, and the row keeps its history).

- Token: ``POST {auth_url}/v2/token`` with the client-credentials grant; cached until a minute
  before it expires, fetched again on a 401.
- Upsert: ``PUT {rest_url}/data/v1/async/dataextensions/key:{key}/rows`` with ``{"items": […]}``,
  then ``GET /data/v1/async/{requestId}/status`` until it is no longer pending, and
  ``…/results`` when it has errors. Row results do not say which row failed, so a request with
  errors records all its rows as failed; they are retried next run (upserts are idempotent).

Client id and secret come from the environment variables ``client_id_env`` and
``client_secret_env``; neither, nor the token, is ever logged or stored.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from jobs.destinations import BatchResult, secret, segment_target
from jobs.destinations.http import DeliveryFailed, Response, request
from jobs.settings import SfmcDestination as SfmcSettings
from transforms.sync import TEMPLATE_FIELDS

TOKEN_MARGIN_SECONDS = 60


def row_item(row: dict[str, Any]) -> dict[str, Any]:
    """A change row -> a data extension row (names as the data extension's columns)."""
    item: dict[str, Any] = {"customer_id": row["customer_id"], "in_segment": row["action"] != "remove"}
    if row["action"] != "remove":
        item.update({name: row.get(name) for name in TEMPLATE_FIELDS})
    return item


class SfmcDestination:
    name = "sfmc"

    def __init__(self, settings: SfmcSettings, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self._client_id = secret("destinations.sfmc.client_id_env", settings.client_id_env)
        self._client_secret = secret("destinations.sfmc.client_secret_env", settings.client_secret_env)
        self.sleep, self.clock = sleep, clock
        self._token: str | None = None
        self._token_until = 0.0
        self.tokens_fetched = 0

    def prepare(self, segment_ids: list[str]) -> None:
        segment_target("destinations.sfmc.data_extensions", self.settings.data_extensions, segment_ids)

    def _fetch_token(self) -> str:
        grant = {"grant_type": "client_credentials", "client_id": self._client_id,
                 "client_secret": self._client_secret}
        if self.settings.account_id:
            grant["account_id"] = self.settings.account_id
        answer = request("POST", self.settings.auth_url.rstrip("/") + "/v2/token", json.dumps(grant).encode(),
                         {"Content-Type": "application/json"}, self.settings.retry, sleep=self.sleep)
        if answer.status >= 400:
            # The answer may echo the request; say only the status.
            raise DeliveryFailed(f"SFMC token request refused with HTTP {answer.status} "
                                 "(check the client id and secret variables and the package's permissions)")
        token = json.loads(answer.body)
        self._token = token["access_token"]
        self._token_until = self.clock() + float(token.get("expires_in", 0)) - TOKEN_MARGIN_SECONDS
        self.tokens_fetched += 1
        return self._token

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Response:
        body = json.dumps(payload, default=str).encode() if payload is not None else None
        for fresh in (False, True):
            token = self._token if (self._token and self.clock() < self._token_until and not fresh) else None
            token = token or self._fetch_token()
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            answer = request(method, self.settings.rest_url.rstrip("/") + path, body, headers, self.settings.retry,
                             sleep=self.sleep)
            if answer.status != 401:
                return answer
            self._token = None
        return answer

    def _upsert(self, key: str, items: list[dict[str, Any]]) -> tuple[Response, str | None, dict[str, Any] | None]:
        """PUT rows into a data extension and poll the request to its end: (answer, request id, status);
        no id and status when the PUT itself was refused."""
        answer = self._call("PUT", f"/data/v1/async/dataextensions/key:{urllib.parse.quote(key, safe='')}/rows",
                            {"items": items})
        if answer.status >= 400:
            return answer, None, None
        request_id = json.loads(answer.body)["requestId"]
        return answer, request_id, self._wait_for(request_id)

    def send(self, run_id: str, segment_id: str, batch_no: int, key: str, rows: list[dict[str, Any]]) -> BatchResult:
        answer, request_id, status = self._upsert(self.settings.data_extensions[segment_id],
                                                  [row_item(row) for row in rows])
        ids = [row["customer_id"] for row in rows]
        if status is None:
            error = f"HTTP {answer.status}: {answer.body[:200].decode(errors='replace')}"
            return BatchResult(failed=[(cid, error) for cid in ids], attempts=answer.attempts,
                               http_status=answer.status)
        result = BatchResult(attempts=answer.attempts, http_status=answer.status)
        if _has_errors(status):
            errors = self._call("GET", f"/data/v1/async/{request_id}/results")
            items = json.loads(errors.body).get("items", []) if errors.status < 400 else []
            first = next((i for i in items if i.get("status") == "Error"), None)
            message = (f"{first.get('errorCode')}: {first.get('message')}"[:300] if first
                       else f"request {request_id} ended with status {status['requestStatus']}")
            result.failed = [(cid, message) for cid in ids]
        return result

    def _wait_for(self, request_id: str) -> dict[str, Any]:
        deadline = self.clock() + self.settings.poll_timeout_seconds
        while True:
            answer = self._call("GET", f"/data/v1/async/{request_id}/status")
            if answer.status >= 400:
                raise DeliveryFailed(f"SFMC request {request_id} status: HTTP {answer.status}")
            status = json.loads(answer.body)["status"]
            if status["requestStatus"] != "Pending":
                return status
            if self.clock() > deadline:
                raise DeliveryFailed(f"SFMC request {request_id} still pending after "
                                     f"{self.settings.poll_timeout_seconds:g} s")
            self.sleep(self.settings.poll_seconds)

    def erase(self, customer_ids: list[str]) -> str:
        """Scrub the customers' rows in every configured data extension: out of the segment and every
        personal field emptied (the async API upserts; it has no row delete)."""
        items = [{"customer_id": c, "in_segment": False, **dict.fromkeys(TEMPLATE_FIELDS)} for c in customer_ids]
        for segment_id, key in sorted(self.settings.data_extensions.items()):
            answer, _, status = self._upsert(key, items)
            if status is None:
                raise DeliveryFailed(f"SFMC scrub of {segment_id}: HTTP {answer.status}")
            if _has_errors(status):
                raise DeliveryFailed(f"SFMC scrub of {segment_id} ended with errors")
        return f"rows scrubbed in {len(self.settings.data_extensions)} data extensions"

    def finish(self, run_id: str, summary: dict[str, Any]) -> None:
        """Nothing to finish: every request was polled to its end."""


def _has_errors(status: dict[str, Any]) -> bool:
    return status["requestStatus"] == "Error" or bool(status.get("hasErrors"))
