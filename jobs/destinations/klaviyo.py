"""The ``klaviyo`` destination: Klaviyo's revisioned REST API.

Per batch of changes for one segment (and its list, ``destinations.klaviyo.lists``):

- adds and updates are upserted with ``POST /api/profile-bulk-import-jobs`` (at most 10,000
  profiles and 5 MB per job; ``external_id`` = customer id, template fields as properties; the
  job's ``lists`` relationship puts them on the segment's list). The job is polled until it is
  complete; its import errors become failed rows (``ops.sync_failures``), retried next run;
- removes resolve customer ids to Klaviyo profile ids (``GET /api/profiles`` filtered by
  ``any(external_id, […])``, kept in a map for the run) and leave the list through
  ``DELETE /api/lists/{id}/relationships/profiles``, at most 1,000 profiles per call. A customer
  Klaviyo does not know is not on the list: nothing to remove.

Upserts and list changes are idempotent at Klaviyo, so a batch re-sent after a crash or a lost
answer changes nothing twice. Every call passes a client-side limiter holding each endpoint to
its documented burst and steady rates, then the shared retry rules (:mod:`jobs.destinations.http`).
The API key is read from the environment variable ``api_key_env`` and goes only into the
``Authorization`` header.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from jobs.destinations import BatchResult, segment_target
from jobs.destinations.http import DeliveryFailed, Response, check_credentials, request
from jobs.destinations.limits import Limit, RateLimiter
from jobs.runtime.secrets import ENVIRONMENT, SecretSource
from jobs.runtime.settings import KlaviyoDestination as KlaviyoSettings

MAX_IMPORT_PROFILES = 10_000
MAX_IMPORT_BYTES = 5 * 1024 * 1024
MAX_LIST_REMOVE = 1_000
MAX_FILTER_IDS = 100  # page[size] is at most 100, so one page answers one lookup
PROPERTY_FIELDS = ("last_viewed_product", "last_viewed_category", "abandoned_products", "rfm_segment",
                   "recommended_products", "cart_items")

# Each endpoint's documented limits (x-klaviyo-ratelimit in Klaviyo's OpenAPI files).
RATE_LIMITS: dict[str, tuple[str, str]] = {
    "bulk_import_profiles": ("10/s", "150/m"),
    "get_bulk_import_profiles_job": ("10/s", "150/m"),
    "get_errors_for_bulk_import_profiles_job": ("10/s", "150/m"),
    "get_profiles": ("75/s", "750/m"),
    "remove_profiles_from_list": ("10/s", "150/m"),
    "request_profile_deletion": ("3/s", "60/m"),
}


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def profile(row: dict[str, Any]) -> dict[str, Any]:
    """A change row -> a ``ProfileUpsertQueryResourceObject``."""
    attributes: dict[str, Any] = {"external_id": row["customer_id"], "email": row["email"],
                                  "properties": {name: row.get(name) for name in PROPERTY_FIELDS}}
    if row.get("first_name") is not None:
        attributes["first_name"] = row["first_name"]
    return {"type": "profile", "attributes": attributes}


def import_jobs(profiles: list[dict[str, Any]], list_id: str) -> Iterator[tuple[list[dict[str, Any]], bytes]]:
    """Job bodies of at most 10,000 profiles and 5 MB each."""

    def body(part: list[dict[str, Any]]) -> bytes:
        return json.dumps({"data": {
            "type": "profile-bulk-import-job",
            "attributes": {"profiles": {"data": part}},
            "relationships": {"lists": {"data": [{"type": "list", "id": list_id}]}},
        }}, separators=(",", ":"), default=str).encode()

    part: list[dict[str, Any]] = []
    size = len(body([]))
    for item in profiles:
        item_size = len(json.dumps(item, separators=(",", ":"), default=str).encode()) + 1
        if part and (len(part) >= MAX_IMPORT_PROFILES or size + item_size > MAX_IMPORT_BYTES):
            yield part, body(part)
            part, size = [], len(body([]))
        part.append(item)
        size += item_size
    if part:
        yield part, body(part)


class KlaviyoDestination:
    name = "klaviyo"

    def __init__(self, settings: KlaviyoSettings, sleep: Callable[[float], None] = time.sleep,
                 secrets: SecretSource = ENVIRONMENT):
        self.settings = settings
        self._key = secrets.get("destinations.klaviyo.api_key_env", settings.api_key_env)
        self.base = settings.base_url.rstrip("/")
        self.sleep = sleep
        self.limiter = RateLimiter({op: tuple(Limit.parse(x) for x in limits) for op, limits in RATE_LIMITS.items()})
        self.profile_ids: dict[str, str] = {}  # customer id -> Klaviyo profile id

    def _call(self, operation: str, method: str, path: str, payload: bytes | None = None) -> Response:
        headers = {"Authorization": f"Klaviyo-API-Key {self._key}", "revision": self.settings.revision,
                   "Accept": "application/vnd.api+json"}
        if payload is not None:
            headers["Content-Type"] = "application/vnd.api+json"
        return check_credentials(self.name, request(method, self.base + path, payload, headers, self.settings.retry,
                                                    sleep=self.sleep, throttle=lambda: self.limiter.slot(operation)))

    def prepare(self, segment_ids: list[str]) -> None:
        segment_target("destinations.klaviyo.lists", self.settings.lists, segment_ids)

    def target(self, segment_id: str) -> str | None:
        list_id = self.settings.lists.get(segment_id)
        return f"{self.base} list {list_id}" if list_id else None

    def send(self, run_id: str, segment_id: str, batch_no: int, key: str, rows: list[dict[str, Any]]) -> BatchResult:
        list_id = self.settings.lists[segment_id]
        result = BatchResult(attempts=0)
        upserts = [row for row in rows if row["action"] != "remove"]
        removes = [row["customer_id"] for row in rows if row["action"] == "remove"]
        for part, body in import_jobs([profile(row) for row in upserts], list_id):
            self._import(part, body, result)
        if removes:
            self._remove(list_id, removes, result)
        return result

    @staticmethod
    def _record(result: BatchResult, answer: Response) -> None:
        result.attempts = max(result.attempts, answer.attempts)
        result.http_status = answer.status if not answer.ok else (result.http_status or answer.status)

    @staticmethod
    def _refused(answer: Response) -> str:
        try:
            first = json.loads(answer.body)["errors"][0]
            return f"HTTP {answer.status}: {first['code']}: {first['detail']}"[:300]
        except (ValueError, KeyError, IndexError, TypeError):
            return f"HTTP {answer.status}: {answer.body[:200].decode(errors='replace')}"

    def _import(self, part: list[dict[str, Any]], body: bytes, result: BatchResult) -> None:
        ids = [item["attributes"]["external_id"] for item in part]
        answer = self._call("bulk_import_profiles", "POST", "/api/profile-bulk-import-jobs", body)
        self._record(result, answer)
        if not answer.ok:
            result.failed.extend((cid, self._refused(answer)) for cid in ids)
            return
        job_id = json.loads(answer.body)["data"]["id"]
        job = self._wait_for(job_id)
        if job["status"] == "cancelled":
            raise DeliveryFailed(f"Klaviyo import job {job_id} was cancelled")
        if job.get("failed_count"):
            result.failed.extend(self._import_errors(job_id, set(ids)))

    def _wait_for(self, job_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.settings.poll_timeout_seconds
        while True:
            answer = self._call("get_bulk_import_profiles_job", "GET", f"/api/profile-bulk-import-jobs/{job_id}")
            if not answer.ok:
                raise DeliveryFailed(f"Klaviyo import job {job_id}: {self._refused(answer)}")
            attributes = json.loads(answer.body)["data"]["attributes"]
            if attributes["status"] in ("complete", "cancelled"):
                return attributes
            if time.monotonic() > deadline:
                raise DeliveryFailed(f"Klaviyo import job {job_id} still {attributes['status']} after "
                                     f"{self.settings.poll_timeout_seconds:g} s")
            self.sleep(self.settings.poll_seconds)

    def _import_errors(self, job_id: str, ids: set[str]) -> list[tuple[str, str]]:
        """Failed rows of a job: each error's original payload names its customer; an error that
        names nobody fails every row of the job (they are retried next run; upserts are idempotent)."""
        failed: dict[str, str] = {}
        unnamed: str | None = None
        path = f"/api/profile-bulk-import-jobs/{job_id}/import-errors?page%5Bsize%5D=100"
        for error in self._pages("get_errors_for_bulk_import_profiles_job", path, f"import errors of job {job_id}"):
            attributes = error["attributes"]
            message = f"{attributes['code']}: {attributes['detail']}"[:300]
            payload = attributes.get("original_payload") or {}
            customer = (payload.get("attributes") or payload).get("external_id")
            if customer in ids:
                failed[customer] = message
            else:
                unnamed = message
        if unnamed is not None:
            failed.update({cid: unnamed for cid in ids if cid not in failed})
        return sorted(failed.items())

    def _remove(self, list_id: str, customers: list[str], result: BatchResult) -> None:
        self._look_up([c for c in customers if c not in self.profile_ids])
        known = [c for c in customers if c in self.profile_ids]
        for part in chunks(known, MAX_LIST_REMOVE):
            body = json.dumps({"data": [{"type": "profile", "id": self.profile_ids[c]} for c in part]}).encode()
            answer = self._call("remove_profiles_from_list", "DELETE",
                                f"/api/lists/{urllib.parse.quote(list_id)}/relationships/profiles", body)
            self._record(result, answer)
            if not answer.ok:
                result.failed.extend((cid, self._refused(answer)) for cid in part)

    def _look_up(self, customers: list[str]) -> None:
        """Fill the customer-id -> profile-id map from ``GET /api/profiles``."""
        for part in chunks(customers, MAX_FILTER_IDS):
            query = urllib.parse.urlencode({
                "filter": f"any(external_id,{json.dumps(part, separators=(',', ':'))})",
                "fields[profile]": "external_id", "page[size]": str(MAX_FILTER_IDS)})
            for item in self._pages("get_profiles", f"/api/profiles?{query}", "profile lookup"):
                external = item["attributes"].get("external_id")
                if external:
                    self.profile_ids[external] = item["id"]

    def _pages(self, operation: str, path: str | None, what: str) -> Iterator[dict[str, Any]]:
        """The ``data`` items of every page, following ``links.next``."""
        while path:
            answer = self._call(operation, "GET", path)
            if not answer.ok:
                raise DeliveryFailed(f"Klaviyo {what}: {self._refused(answer)}")
            page = json.loads(answer.body)
            yield from page["data"]
            path = _relative((page.get("links") or {}).get("next"))

    def erase(self, customer_ids: list[str]) -> str:
        """Ask Klaviyo to delete each customer's profile (``POST /api/data-privacy-deletion-jobs``)."""
        self._look_up([c for c in customer_ids if c not in self.profile_ids])
        known = [c for c in customer_ids if c in self.profile_ids]
        for customer in known:
            body = json.dumps({"data": {"type": "data-privacy-deletion-job", "attributes": {"profile": {
                "data": {"type": "profile", "id": self.profile_ids[customer], "attributes": {}}}}}}).encode()
            answer = self._call("request_profile_deletion", "POST", "/api/data-privacy-deletion-jobs", body)
            if not answer.ok:
                raise DeliveryFailed(f"Klaviyo deletion request: {self._refused(answer)}")
            del self.profile_ids[customer]
        return f"{len(known)} deletion jobs requested, {len(customer_ids) - len(known)} not known to Klaviyo"

    def finish(self, run_id: str, summary: dict[str, Any]) -> None:
        """Nothing to finish: every job was polled to its end."""


def _relative(link: str | None) -> str | None:
    """A pagination link -> path and query on the configured host (which may be a proxy)."""
    if not link:
        return None
    parts = urllib.parse.urlsplit(link)
    return parts.path + (f"?{parts.query}" if parts.query else "")
