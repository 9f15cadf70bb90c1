"""A stand-in for Salesforce Marketing Cloud: the v2 token endpoint and the async data extension API.

Tokens come from ``POST /v2/token`` (client-credentials grant, checked against the configured
client id and secret) and expire; REST calls with a missing, expired or revoked token get 401.
``PUT /data/v1/async/dataextensions/key:{key}/rows`` checks the body (``{"items": [...]}``, each
row keyed by ``customer_id`` and using only the data extension's columns), applies the upsert and
answers a request id whose status is ``Pending`` for the first poll, then ``Complete``; rows of
customers in ``reject`` fail, and the request's results say so.
"""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

from tests.fakes.faulty import Answer, Call, FaultyServer

COLUMNS = {"customer_id", "in_segment", "email", "first_name", "last_viewed_product", "last_viewed_category",
           "abandoned_products", "rfm_segment"}


class FakeSfmc(FaultyServer):
    def __init__(self, client_id: str, client_secret: str, data_extensions: set[str], expires_in: int = 1080,
                 reject: set[str] | None = None, **faults: Any):
        super().__init__(**faults)
        self.client_id, self.client_secret, self.expires_in = client_id, client_secret, expires_in
        self.rows: dict[str, dict[str, dict[str, Any]]] = {key: {} for key in data_extensions}
        self.reject = reject or set()
        self.tokens: dict[str, float] = {}  # token -> expiry (monotonic)
        self.requests: dict[str, dict[str, Any]] = {}
        self.token_calls = 0
        self._ids = itertools.count(1)

    def members(self, key: str) -> set[str]:
        return {cid for cid, row in self.rows[key].items() if row["in_segment"]}

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def admit(self, call: Call) -> Answer | None:
        if call.path == "/v2/token":
            return None
        token = call.headers.get("authorization", "").removeprefix("Bearer ")
        with self.lock:
            if self.tokens.get(token, 0) < time.monotonic():
                return Answer(401, {"message": "Not Authorized", "errorcode": 0, "documentation": ""})
        return None

    def dispatch(self, call: Call) -> Answer:
        if call.method == "POST" and call.path == "/v2/token":
            return self._token(call)
        match = re.fullmatch(r"/data/v1/async/dataextensions/key:([^/]+)/rows", call.path)
        if call.method == "PUT" and match:
            return self._upsert(call, match.group(1))
        match = re.fullmatch(r"/data/v1/async/([^/]+)/(status|results)", call.path)
        if call.method == "GET" and match and match.group(1) in self.requests:
            return getattr(self, "_" + match.group(2))(match.group(1))
        self.violation(f"{call.method} {call.path}: not an endpoint")
        return Answer(404, {"message": "Not Found"})

    def _token(self, call: Call) -> Answer:
        self.token_calls += 1
        grant = call.json()
        if grant.get("grant_type") != "client_credentials" or call.headers.get("content-type") != "application/json":
            self.violation(f"token request: {sorted(grant)} / {call.headers.get('content-type')}")
            return Answer(400, {"error": "unsupported_grant_type"})
        if (grant.get("client_id"), grant.get("client_secret")) != (self.client_id, self.client_secret):
            return Answer(401, {"error": "invalid_client"})
        token = f"tok-{next(self._ids)}"
        self.tokens[token] = time.monotonic() + self.expires_in
        return Answer(200, {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in,
                            "scope": "data_extensions_write", "rest_instance_url": "https://example.invalid/"})

    def _upsert(self, call: Call, key: str) -> Answer:
        if key not in self.rows:
            return Answer(404, {"message": f"data extension {key} not found", "errorcode": 10000})
        body = call.json()
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items or set(body) != {"items"}:
            self.violation(f"upsert {key}: body is not {{'items': [...]}}")
            return Answer(400, {"message": "items required"})
        for item in items:
            if "customer_id" not in item or not set(item) <= COLUMNS:
                self.violation(f"upsert {key}: row with columns {sorted(item)}")
                return Answer(400, {"message": "unknown column"})
        request_id = f"req-{next(self._ids)}"
        failed = [item["customer_id"] for item in items if item["customer_id"] in self.reject]
        for item in items:
            if item["customer_id"] not in self.reject:
                self.rows[key][item["customer_id"]] = {**self.rows[key].get(item["customer_id"], {}), **item}
        self.requests[request_id] = {"polls": 0, "failed": failed}
        return Answer(202, {"requestId": request_id, "resultMessages": []})

    def _status(self, request_id: str) -> Answer:
        request = self.requests[request_id]
        request["polls"] += 1
        state = "Pending" if request["polls"] < 2 else "Complete"
        return Answer(200, {"requestId": request_id, "status": {
            "requestStatus": state, "hasErrors": bool(request["failed"]) and state == "Complete",
            "resultStatus": "OK", "requestId": request_id, "callDateTime": "2026-11-29T00:00:00"}})

    def _results(self, request_id: str) -> Answer:
        failed = self.requests[request_id]["failed"]
        return Answer(200, {"page": 1, "pageSize": 50, "count": len(failed), "items": [
            {"errorCode": "InvalidValue", "message": "Email address is not valid.", "status": "Error"}
            for _ in failed]})
