"""A stand-in for Klaviyo's API that holds the client to Klaviyo's own OpenAPI contracts.

Every request is matched to an operation of the OpenAPI files in ``tests/data/klaviyo`` (copied
from Klaviyo's published specs, MIT licence alongside). The fake checks the ``Authorization``
and ``revision`` headers, validates each request body against the operation's JSON schema,
enforces the documented batch limits and each endpoint's burst and steady rate limits
(``x-klaviyo-ratelimit``; excess calls get 429 and are recorded as violations), validates its
own answers against the response schemas, and keeps profiles, list membership and import jobs
as state. Anything the client gets wrong lands in ``violations``.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema

from jobs.destinations.limits import Limit
from tests.fakes.faulty import Answer, Call, FaultyServer

CONTRACTS = Path(__file__).resolve().parent.parent / "data" / "klaviyo"
JSON_API = "application/vnd.api+json"


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable: true`` -> JSON Schema's ``type: [T, "null"]``."""
    if isinstance(node, dict):
        node = {k: _nullable(v) for k, v in node.items()}
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        return node
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


class Operation:
    def __init__(self, method: str, template: str, spec: dict[str, Any], components: dict[str, Any]):
        self.method, self.template = method.upper(), template
        self.id = spec["operationId"]
        self.pattern = re.compile("^" + re.sub(r"\{[^}]+\}", "([^/]+)", template) + "$")
        self.limits = tuple(Limit.parse(spec["x-klaviyo-ratelimit"][k]) for k in ("burst", "steady"))
        self.parameters = {p["name"]: p for p in spec.get("parameters", [])}
        self.request_schema = self._schema(spec.get("requestBody", {}), components)
        success = next((r for code, r in spec["responses"].items() if code.startswith("2")), {})
        self.response_schema = self._schema(success, components)

    @staticmethod
    def _schema(part: dict[str, Any], components: dict[str, Any]) -> jsonschema.Validator | None:
        schema = part.get("content", {}).get(JSON_API, {}).get("schema")
        if schema is None:
            return None
        return jsonschema.Draft7Validator({**schema, "components": components})


def load_operations() -> list[Operation]:
    operations = []
    for path in sorted(CONTRACTS.glob("*.json")):
        spec = _nullable(json.loads(path.read_text()))
        for template, methods in spec["paths"].items():
            for method, op in methods.items():
                operations.append(Operation(method, template, op, spec.get("components", {})))
    return operations


class FakeKlaviyo(FaultyServer):
    content_type = JSON_API

    def __init__(self, api_key: str, revision: str = "2026-07-15", reject_external_ids: set[str] | None = None,
                 job_polls: int = 2, **faults: Any):
        super().__init__(**faults)
        self.api_key, self.revision = api_key, revision
        self.reject = reject_external_ids or set()
        self.job_polls = job_polls
        self.operations = load_operations()
        self.profiles: dict[str, dict[str, Any]] = {}  # profile id -> attributes
        self.by_external: dict[str, str] = {}
        self.lists: dict[str, set[str]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.deletions: list[dict[str, Any]] = []
        self.arrivals: dict[str, list[float]] = {}
        self._ids = itertools.count(1)

    # -- what the tests look at ---------------------------------------------------------------
    def members(self, list_id: str) -> set[str]:
        return {self.profiles[p]["external_id"] for p in self.lists.get(list_id, set())}

    def max_in_window(self, operation: str, seconds: float) -> int:
        times = sorted(self.arrivals.get(operation, []))
        return max((sum(1 for u in times[i:] if u < t + seconds) for i, t in enumerate(times)), default=0)

    # -- protocol ----------------------------------------------------------------------------
    def _operation(self, call: Call) -> tuple[Operation, list[str]] | None:
        for op in self.operations:
            match = op.pattern.match(call.path)
            if match and op.method == call.method:
                return op, list(match.groups())
        return None

    def admit(self, call: Call) -> Answer | None:
        found = self._operation(call)
        if found is None:
            self.violation(f"{call.method} {call.path}: no such operation in the contracts")
            return _error(404, "not_found", f"{call.method} {call.path}")
        op, _ = found
        call.operation = op.id  # type: ignore[attr-defined]
        with self.lock:
            times = self.arrivals.setdefault(op.id, [])
            times.append(call.arrived)
            for limit in op.limits:
                recent = sum(1 for t in times if t > call.arrived - limit.seconds)
                if recent > limit.count:
                    self.violation(f"{op.id}: {recent} calls within {limit.seconds:g} s (limit {limit.count})")
                    return _error(429, "throttled", "Request was throttled.", {"Retry-After": "1"})
        if call.headers.get("authorization") != f"Klaviyo-API-Key {self.api_key}":
            self.violation(f"{op.id}: wrong or missing Authorization header")
            return _error(401, "not_authenticated", "Missing or invalid private key.")
        if call.headers.get("revision") != self.revision:
            self.violation(f"{op.id}: revision header {call.headers.get('revision')!r}, expected {self.revision}")
            return _error(400, "invalid", "Missing or invalid revision header.")
        for name, value in call.query.items():
            param = op.parameters.get(name)
            if param is None or param["in"] != "query":
                self.violation(f"{op.id}: unknown query parameter {name}")
                return _error(400, "invalid", f"unknown parameter {name}")
            schema = param["schema"]
            if schema.get("type") == "integer" and not schema.get("minimum", 1) <= int(value) <= schema.get(
                    "maximum", 10**9):
                self.violation(f"{op.id}: {name}={value} outside the contract")
                return _error(400, "invalid", f"{name} out of range")
        if op.request_schema is not None:
            if call.headers.get("content-type") != JSON_API:
                self.violation(f"{op.id}: Content-Type {call.headers.get('content-type')!r}")
                return _error(415, "unsupported_media_type", "Content-Type must be application/vnd.api+json")
            try:
                body = call.json()
            except ValueError:
                self.violation(f"{op.id}: body is not JSON")
                return _error(400, "invalid", "body is not JSON")
            errors = sorted(op.request_schema.iter_errors(body), key=lambda e: list(e.path))
            if errors:
                self.violation(f"{op.id}: body breaks the schema at /{'/'.join(map(str, errors[0].path))}: "
                               f"{errors[0].message[:200]}")
                return _error(400, "invalid", errors[0].message[:200])
        return None

    def dispatch(self, call: Call) -> Answer:
        op, args = self._operation(call)  # type: ignore[misc]
        answer = getattr(self, "_" + op.id)(call, *args)
        if answer.status < 300 and op.response_schema is not None:
            errors = list(op.response_schema.iter_errors(answer.payload))
            assert not errors, f"the fake's own {op.id} answer breaks the contract: {errors[0].message}"
        return answer

    def _bulk_import_profiles(self, call: Call) -> Answer:
        data = call.json()["data"]
        profiles = data["attributes"]["profiles"]["data"]
        if len(profiles) > 10_000 or len(call.body) > 5 * 1024 * 1024:
            self.violation(f"bulk_import_profiles: {len(profiles)} profiles, {len(call.body)} bytes")
            return _error(413, "too_large", "At most 10,000 profiles and 5 MB per job.")
        lists = [x["id"] for x in data.get("relationships", {}).get("lists", {}).get("data", [])]
        job_id = f"job{next(self._ids):05d}"
        errors = []
        for item in profiles:
            attributes = item["attributes"]
            external = attributes.get("external_id")
            if external in self.reject:
                errors.append({"type": "import-error", "id": f"err{next(self._ids)}", "attributes": {
                    "code": "invalid", "title": "Invalid input", "detail": "Invalid email address.",
                    "source": {"pointer": "/data/attributes/email"}, "original_payload": attributes}})
                continue
            profile_id = self.by_external.get(external) or f"01P{next(self._ids):08d}"
            self.by_external[external] = profile_id
            self.profiles[profile_id] = {**self.profiles.get(profile_id, {}), **attributes}
            for list_id in lists:
                self.lists.setdefault(list_id, set()).add(profile_id)
        self.jobs[job_id] = {"total": len(profiles), "errors": errors, "polls": 0}
        return Answer(202, {"data": self._job(job_id)})

    def _job(self, job_id: str) -> dict[str, Any]:
        job = self.jobs[job_id]
        done = job["polls"] >= self.job_polls
        status = "complete" if done else ("processing" if job["polls"] else "queued")
        return {"type": "profile-bulk-import-job", "id": job_id, "attributes": {
            "status": status, "created_at": "2026-11-29T00:00:00+00:00", "total_count": job["total"],
            "completed_count": job["total"] - len(job["errors"]) if done else 0,
            "failed_count": len(job["errors"]) if done else 0}, "links": {"self": f"/api/profile-bulk-import-jobs/{job_id}"}}

    def _get_bulk_import_profiles_job(self, call: Call, job_id: str) -> Answer:
        if job_id not in self.jobs:
            return _error(404, "not_found", "no such job")
        self.jobs[job_id]["polls"] += 1
        return Answer(200, {"data": self._job(job_id), "links": {"self": call.path}})

    def _get_errors_for_bulk_import_profiles_job(self, call: Call, job_id: str) -> Answer:
        errors = self.jobs[job_id]["errors"]
        size, start = int(call.query.get("page[size]", 20)), int(call.query.get("page[cursor]", 0))
        links = {"self": call.path}
        if start + size < len(errors):
            links["next"] = f"http://a.klaviyo.invalid{call.path}?page%5Bsize%5D={size}&page%5Bcursor%5D={start + size}"
        return Answer(200, {"data": errors[start:start + size], "links": links})

    def _get_profiles(self, call: Call) -> Answer:
        match = re.fullmatch(r"any\(external_id,(\[.*\])\)", call.query.get("filter", ""))
        if not match:
            self.violation(f"get_profiles: unsupported filter {call.query.get('filter')!r}")
            return _error(400, "invalid", "bad filter")
        wanted = json.loads(match.group(1))
        if len(wanted) > 100:
            self.violation(f"get_profiles: {len(wanted)} ids in one filter")
        size = int(call.query.get("page[size]", 20))
        found = [p for p in (self.by_external.get(x) for x in wanted) if p][:size]
        data = [{"type": "profile", "id": p, "attributes": {"external_id": self.profiles[p]["external_id"]},
                 "links": {"self": f"/api/profiles/{p}"}} for p in found]
        return Answer(200, {"data": data, "links": {"self": call.path}})

    def _remove_profiles_from_list(self, call: Call, list_id: str) -> Answer:
        data = call.json()["data"]
        if len(data) > 1000:
            self.violation(f"remove_profiles_from_list: {len(data)} profiles in one call")
            return _error(400, "invalid", "At most 1000 profiles per call.")
        for item in data:
            self.lists.setdefault(list_id, set()).discard(item["id"])
        return Answer(204)

    def _request_profile_deletion(self, call: Call) -> Answer:
        self.deletions.append(call.json()["data"]["attributes"]["profile"]["data"])
        return Answer(202)


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, {"errors": [{"id": "e", "code": code, "title": code, "detail": detail}]}, headers or {})
