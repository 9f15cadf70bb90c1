"""A stand-in for Salesforce Marketing Cloud: the v2 token endpoint and the async data extension API.

Tokens come from ``POST /v2/token`` (client-credentials grant, checked against the configured
client id and secret) and expire; REST calls with a missing, expired or revoked token get 401.
``PUT /data/v1/async/dataextensions/key:{key}/rows`` checks the body (``{"items": [...]}``, each
row keyed by ``customer_id`` and using only the data extension's columns), applies the upsert and
answers a request id whose status is ``Pending`` for the first poll, then ``Complete``; rows of
customers in ``reject`` fail, and the request's results say so.

``POST /Service.asmx`` is the SOAP API's ``Delete`` for data extension rows: the envelope is
parsed and checked (SOAP 1.1, ``SOAPAction: Delete``, the token in a ``fueloauth`` header, a
``DeleteRequest`` of ``DataExtensionObject`` items naming a data extension and its
``customer_id`` key); a bad token gets the ``Client`` fault Marketing Cloud sends (HTTP 500), and
each row gets a ``Results`` entry: ``OK`` when it was deleted, an error when it was not there.
"""

from __future__ import annotations

import itertools
import re
import time
import xml.etree.ElementTree as ET
from typing import Any
from xml.sax.saxutils import escape

from tests.fakes.faulty import Answer, Call, FaultyServer

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
PARTNER = "http://exacttarget.com/wsdl/partnerAPI"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
COLUMNS = {"customer_id", "in_segment", "email", "first_name", "last_viewed_product", "last_viewed_category",
           "abandoned_products", "rfm_segment", "recommended_products", "cart_items"}


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
        if call.path in ("/v2/token", "/Service.asmx"):
            return None  # SOAP carries its token in the envelope
        token = call.headers.get("authorization", "").removeprefix("Bearer ")
        with self.lock:
            if self.tokens.get(token, 0) < time.monotonic():
                return Answer(401, {"message": "Not Authorized", "errorcode": 0, "documentation": ""})
        return None

    def dispatch(self, call: Call) -> Answer:
        if call.method == "POST" and call.path == "/v2/token":
            return self._token(call)
        if call.method == "POST" and call.path == "/Service.asmx":
            return self._soap(call)
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
                            "scope": "data_extensions_write", "rest_instance_url": "https://example.invalid/",
                            "soap_instance_url": f"http://{call.headers['host']}/"})

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

    # -- SOAP --------------------------------------------------------------------------------
    def _soap(self, call: Call) -> Answer:
        if not call.headers.get("content-type", "").startswith("text/xml") or \
                call.headers.get("soapaction", "").strip('"') != "Delete":
            self.violation(f"SOAP call with {call.headers.get('content-type')} / {call.headers.get('soapaction')}")
            return _fault("Client", "Unsupported request")
        try:
            envelope = ET.fromstring(call.body)
        except ET.ParseError as error:
            self.violation(f"SOAP body is not XML: {error}")
            return _fault("Client", "Bad envelope")
        token = (envelope.findtext(f"{{{SOAP}}}Header/{{http://exacttarget.com}}fueloauth") or "").strip()
        expiry = self.tokens.get(token)
        if expiry is None or expiry < time.monotonic():
            return _fault("Client", "Token Expired" if expiry else "Login Failed")
        delete = envelope.find(f"{{{SOAP}}}Body/{{{PARTNER}}}DeleteRequest")
        objects = delete.findall(f"{{{PARTNER}}}Objects") if delete is not None else []
        if not objects:
            self.violation("SOAP Delete without a DeleteRequest of Objects")
            return _fault("Client", "Bad envelope")
        results = []
        for ordinal, item in enumerate(objects):
            key = item.findtext(f"{{{PARTNER}}}CustomerKey")
            names = item.findall(f"{{{PARTNER}}}Keys/{{{PARTNER}}}Key")
            pairs = {k.findtext(f"{{{PARTNER}}}Name"): k.findtext(f"{{{PARTNER}}}Value") for k in names}
            if item.get(XSI_TYPE, "").split(":")[-1] != "DataExtensionObject" or key not in self.rows or \
                    set(pairs) != {"customer_id"}:
                self.violation(f"SOAP Delete object {item.get(XSI_TYPE)} {key} keys {sorted(pairs, key=str)}")
                results.append((ordinal, "Error", "Invalid object", "10001"))
            elif pairs["customer_id"] in self.reject:
                results.append((ordinal, "Error", f"Row {escape(pairs['customer_id'])} is locked by an import",
                                "310011"))
            elif self.rows[key].pop(pairs["customer_id"], None) is None:
                results.append((ordinal, "Error", "Error: The row was not found", "310007"))
            else:
                results.append((ordinal, "OK", "Deleted DataExtensionObject", ""))
        overall = "OK" if all(r[1] == "OK" for r in results) else "Has Errors"
        rows = "".join(
            f"<Results><StatusCode>{status}</StatusCode><StatusMessage>{escape(message)}</StatusMessage>"
            f"<OrdinalID>{ordinal}</OrdinalID>" + (f"<ErrorCode>{code}</ErrorCode>" if code else "") + "</Results>"
            for ordinal, status, message, code in results)
        return _soap_answer(200, f'<DeleteResponse xmlns="{PARTNER}">{rows}<RequestID>req-{next(self._ids)}'
                                 f"</RequestID><OverallStatus>{overall}</OverallStatus></DeleteResponse>")


def _soap_answer(status: int, body: str) -> Answer:
    envelope = f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP}"><soap:Body>{body}' \
               "</soap:Body></soap:Envelope>"
    return Answer(status, envelope.encode(), {"Content-Type": "text/xml; charset=utf-8"})


def _fault(code: str, message: str) -> Answer:
    return _soap_answer(500, f"<soap:Fault><faultcode>soap:{code}</faultcode><faultstring>{message}</faultstring>"
                             "</soap:Fault>")
