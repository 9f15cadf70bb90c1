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
- Erasure: the SOAP API's ``Delete`` of ``DataExtensionObject`` rows by their ``customer_id`` key,
  ``POST {soap_url}/Service.asmx`` with the token in a ``fueloauth`` header (the REST async API
  has no row delete), at most ``DELETE_BATCH`` rows a request. A row that is not there counts as
  deleted (the customer was never synced, or an earlier erasure got it).

Client id and secret come from the environment variables ``client_id_env`` and
``client_secret_env``; neither, nor the token, is ever logged or stored.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from jobs.destinations import BatchResult, segment_target
from jobs.destinations.http import (
    CREDENTIALS_REFUSED,
    CredentialsRefused,
    DeliveryFailed,
    Response,
    check_credentials,
    request,
)
from jobs.runtime.secrets import ENVIRONMENT, SecretSource
from jobs.runtime.settings import SfmcDestination as SfmcSettings
from transforms.sync import FEATURE_FIELDS, PRODUCT_LISTS

TOKEN_MARGIN_SECONDS = 60
DELETE_BATCH = 200
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
PARTNER = "http://exacttarget.com/wsdl/partnerAPI"
# Faults that mean the token is no good: fetch a new one and try once more.
TOKEN_FAULTS = ("token expired", "login failed")
# Row results that mean there was nothing to delete.
ROW_MISSING = ("not found", "does not exist", "no rows")


def row_item(row: dict[str, Any]) -> dict[str, Any]:
    """A change row -> a data extension row (names as the data extension's columns)."""
    item: dict[str, Any] = {"customer_id": row["customer_id"], "in_segment": row["action"] != "remove"}
    if row["action"] != "remove":
        item.update({name: row.get(name) for name in FEATURE_FIELDS})
        # A data extension column holds text: the product lists go as JSON (AMPscript parses it).
        item.update({name: json.dumps(row.get(name) or [], separators=(",", ":")) for name in PRODUCT_LISTS})
    return item


class SfmcDestination:
    name = "sfmc"

    def __init__(self, settings: SfmcSettings, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, secrets: SecretSource = ENVIRONMENT):
        self.settings = settings
        self._client_id = secrets.get("destinations.sfmc.client_id_env", settings.client_id_env)
        self._client_secret = secrets.get("destinations.sfmc.client_secret_env", settings.client_secret_env)
        self.sleep, self.clock = sleep, clock
        self._token: str | None = None
        self._token_until = 0.0
        self._soap_url = settings.soap_url
        self.tokens_fetched = 0

    def prepare(self, segment_ids: list[str]) -> None:
        segment_target("destinations.sfmc.data_extensions", self.settings.data_extensions, segment_ids)

    def target(self, segment_id: str) -> str | None:
        key = self.settings.data_extensions.get(segment_id)
        return f"{self.settings.rest_url.rstrip('/')} data extension {key}" if key else None

    def _fetch_token(self) -> str:
        grant = {"grant_type": "client_credentials", "client_id": self._client_id,
                 "client_secret": self._client_secret}
        if self.settings.account_id:
            grant["account_id"] = self.settings.account_id
        answer = request("POST", self.settings.auth_url.rstrip("/") + "/v2/token", json.dumps(grant).encode(),
                         {"Content-Type": "application/json"}, self.settings.retry, sleep=self.sleep)
        if not answer.ok:
            # The answer may echo the request; say only the status.
            raise CredentialsRefused(f"destination {self.name}: token request refused with HTTP {answer.status} "
                                     "(check the client id and secret variables and the package's permissions)")
        token = json.loads(answer.body)
        self._token = token["access_token"]
        self._soap_url = self.settings.soap_url or token.get("soap_instance_url")
        self._token_until = self.clock() + float(token.get("expires_in", 0)) - TOKEN_MARGIN_SECONDS
        self.tokens_fetched += 1
        return self._token

    def _authorized(self, send: Callable[[str], tuple[Response, bool]]) -> Response:
        """``send(token)`` -> (answer, refused for the token); a refused token is fetched anew once."""
        for fresh in (False, True):
            token = self._token if (self._token and self.clock() < self._token_until and not fresh) else None
            answer, refused = send(token or self._fetch_token())
            if not refused:
                return answer
            self._token = None
        return answer

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Response:
        body = json.dumps(payload, default=str).encode() if payload is not None else None

        def send(token: str) -> tuple[Response, bool]:
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            answer = request(method, self.settings.rest_url.rstrip("/") + path, body, headers, self.settings.retry,
                             sleep=self.sleep)
            return answer, answer.status in CREDENTIALS_REFUSED

        return check_credentials(self.name, self._authorized(send))

    def _upsert(self, key: str, items: list[dict[str, Any]]) -> tuple[Response, str | None, dict[str, Any] | None]:
        """PUT rows into a data extension and poll the request to its end: (answer, request id, status);
        no id and status when the PUT itself was refused."""
        answer = self._call("PUT", f"/data/v1/async/dataextensions/key:{urllib.parse.quote(key, safe='')}/rows",
                            {"items": items})
        if not answer.ok:
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
            items = json.loads(errors.body).get("items", []) if errors.ok else []
            first = next((i for i in items if i.get("status") == "Error"), None)
            message = (f"{first.get('errorCode')}: {first.get('message')}"[:300] if first
                       else f"request {request_id} ended with status {status['requestStatus']}")
            result.failed = [(cid, message) for cid in ids]
        return result

    def _wait_for(self, request_id: str) -> dict[str, Any]:
        deadline = self.clock() + self.settings.poll_timeout_seconds
        while True:
            answer = self._call("GET", f"/data/v1/async/{request_id}/status")
            if not answer.ok:
                raise DeliveryFailed(f"SFMC request {request_id} status: HTTP {answer.status}")
            status = json.loads(answer.body)["status"]
            if status["requestStatus"] != "Pending":
                return status
            if self.clock() > deadline:
                raise DeliveryFailed(f"SFMC request {request_id} still pending after "
                                     f"{self.settings.poll_timeout_seconds:g} s")
            self.sleep(self.settings.poll_seconds)

    def erase(self, customer_ids: list[str]) -> str:
        """Delete the customers' rows from every configured data extension (SOAP ``Delete``)."""
        deleted = missing = 0
        keys = sorted(set(self.settings.data_extensions.values()))
        for key in keys:
            for start in range(0, len(customer_ids), DELETE_BATCH):
                gone, absent = self._delete_rows(key, customer_ids[start:start + DELETE_BATCH])
                deleted, missing = deleted + gone, missing + absent
        return f"{deleted} rows deleted from {len(keys)} data extensions, {missing} not there"

    def _delete_rows(self, key: str, customer_ids: list[str]) -> tuple[int, int]:
        """(rows deleted, rows not there); any other row error stops the erasure, naming no customer."""

        def send(token: str) -> tuple[Response, bool]:
            if not self._soap_url:
                raise DeliveryFailed("destinations.sfmc.soap_url is not set and the token answer has no "
                                     "soap_instance_url: nowhere to delete rows")
            answer = request("POST", self._soap_url.rstrip("/") + "/Service.asmx",
                             delete_envelope(token, key, customer_ids),
                             {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": "Delete"},
                             self.settings.retry, sleep=self.sleep, final=_client_fault)
            fault = soap_fault(answer.body) if not answer.ok else None
            return answer, bool(fault) and any(word in fault[1].lower() for word in TOKEN_FAULTS)

        answer = self._authorized(send)
        fault = soap_fault(answer.body) if not answer.ok else None
        if not answer.ok:
            reason = f"{fault[0]}: {fault[1]}" if fault else f"HTTP {answer.status}"
            raise DeliveryFailed(f"SFMC row delete in data extension {key}: {_scrub(reason, customer_ids)}")
        results = delete_results(answer.body)
        failed = [r for r in results if r.status != "OK" and not r.missing]
        if failed or len(results) != len(customer_ids):
            first = failed[0] if failed else None
            reason = (f"{len(failed)} of {len(customer_ids)} rows failed, first: {first.error_code}: "
                      f"{_scrub(first.message, customer_ids)}" if first
                      else f"{len(results)} results for {len(customer_ids)} rows")
            raise DeliveryFailed(f"SFMC row delete in data extension {key}: {reason}")
        missing = sum(r.missing for r in results)
        return len(results) - missing, missing

    def finish(self, run_id: str, summary: dict[str, Any]) -> None:
        """Nothing to finish: every request was polled to its end."""


@dataclass(frozen=True)
class RowResult:
    status: str
    message: str
    error_code: str

    @property
    def missing(self) -> bool:
        return self.status != "OK" and any(word in self.message.lower() for word in ROW_MISSING)


def delete_envelope(token: str, key: str, customer_ids: list[str]) -> bytes:
    """A SOAP 1.1 ``DeleteRequest`` for the rows of data extension ``key`` with these ``customer_id`` keys."""
    objects = "".join(
        f'<Objects xsi:type="DataExtensionObject"><CustomerKey>{escape(key)}</CustomerKey>'
        f"<Keys><Key><Name>customer_id</Name><Value>{escape(cid)}</Value></Key></Keys></Objects>"
        for cid in customer_ids)
    return (f'<?xml version="1.0" encoding="UTF-8"?>'
            f'<s:Envelope xmlns:s="{SOAP}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            f'<s:Header><fueloauth xmlns="http://exacttarget.com">{escape(token)}</fueloauth></s:Header>'
            f'<s:Body><DeleteRequest xmlns="{PARTNER}"><Options/>{objects}</DeleteRequest></s:Body>'
            f"</s:Envelope>").encode()


def delete_results(body: bytes) -> list[RowResult]:
    """The ``Results`` of a ``DeleteResponse``, in request order (by ``OrdinalID``)."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as error:
        raise DeliveryFailed(f"SFMC answered a delete with something that is not XML ({error})") from None
    response = root.find(f"{{{SOAP}}}Body/{{{PARTNER}}}DeleteResponse")
    if response is None:
        raise DeliveryFailed("SFMC answered a delete without a DeleteResponse")

    def text(result: ET.Element, name: str) -> str:
        return (result.findtext(f"{{{PARTNER}}}{name}") or "").strip()

    results = sorted(response.findall(f"{{{PARTNER}}}Results"), key=lambda r: int(text(r, "OrdinalID") or 0))
    return [RowResult(text(r, "StatusCode"), text(r, "StatusMessage") or text(r, "ErrorMessage"),
                      text(r, "ErrorCode")) for r in results]


def soap_fault(body: bytes) -> tuple[str, str] | None:
    """(faultcode, faultstring) of a SOAP fault answer, or None."""
    try:
        fault = ET.fromstring(body).find(f"{{{SOAP}}}Body/{{{SOAP}}}Fault")
    except ET.ParseError:
        return None
    if fault is None:
        return None
    return (fault.findtext("faultcode") or "").strip(), (fault.findtext("faultstring") or "").strip()


def _client_fault(status: int, body: bytes) -> bool:
    """A fault blaming the request (bad token, bad envelope) is final; server faults are retried."""
    fault = soap_fault(body)
    return fault is not None and fault[0].split(":")[-1] == "Client"


def _scrub(text: str, customer_ids: list[str]) -> str:
    """A vendor message without the customer ids it may echo."""
    for cid in customer_ids:
        text = text.replace(cid, "<customer_id>")
    return text[:300]


def _has_errors(status: dict[str, Any]) -> bool:
    return status["requestStatus"] == "Error" or bool(status.get("hasErrors"))
