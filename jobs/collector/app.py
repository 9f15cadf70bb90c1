"""The collector's HTTP API (FastAPI, served by uvicorn): see the README's Collector section.

Every write path does the same things in the same order — authenticate, check the content type
and size, parse, validate each event, rate-limit by key, drop ids it wrote recently (a client's
retry), write and fsync, answer — so a refused request writes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import ipaddress
import json
import socket
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from jobs.collector import segment
from jobs.collector.auth import Authenticator, Principal, Refused, require
from jobs.collector.meter import Metrics, RateLimiter
from jobs.collector.models import Event, validate_events
from jobs.collector.sink import Sink
from jobs.runtime.secrets import SecretSource
from jobs.runtime.settings import CollectorSettings, Settings, is_uri

PIXEL = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
         b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
ANONYMOUS_COOKIE = "lh_aid"
EVENT_SCHEMA = Event.model_json_schema()


class Problem(Exception):
    """An answer other than success: status, a reason for the metrics, a JSON body."""

    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.reason, self.headers = status, reason, headers or {}
        self.body = {"error": reason, "message": message, **extra}


def truncate_ip(address: str | None) -> str | None:
    """The client's network, not the client: IPv4 to /24, IPv6 to /48."""
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return None
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


class RecentIds:
    """Event ids written lately, so a retried request does not write them again."""

    def __init__(self, size: int):
        self.size = size
        self.ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, event_id: object) -> bool:
        return event_id in self.ids

    def add(self, ids: Iterable[str]) -> None:
        if not self.size:
            return
        for event_id in ids:
            self.ids[event_id] = None
        while len(self.ids) > self.size:
            self.ids.popitem(last=False)


def landing_sink(settings: Settings, folder: str) -> Sink:
    """Writes straight into a local landing folder; on object storage into the spool, then up."""
    collector, root = settings.collector, settings.landing.root.rstrip("/")
    instance = collector.instance or f"{_hostname()}-{collector.port}"
    if not is_uri(root):
        return Sink(Path(root) / folder, instance, collector.roll_bytes, collector.roll_seconds)
    from jobs.collector.upload import uploader

    spool = Path(collector.spool_dir).expanduser().resolve() / folder
    return Sink(spool, instance, collector.roll_bytes, collector.roll_seconds, uploader(f"{root}/{folder}", spool))


def _hostname() -> str:
    return socket.gethostname().split(".")[0] or "collector"


def create_app(settings: Settings, secrets: SecretSource | None = None) -> FastAPI:
    config = settings.collector
    auth = Authenticator(config, secrets or SecretSource(settings.secrets))
    sinks = {"events": landing_sink(settings, config.events_path),
             "profiles": landing_sink(settings, config.profiles_path)}
    metrics, recent = Metrics(), RecentIds(config.dedup_ids)
    limiter = RateLimiter(config.rate_per_second, config.rate_burst)
    sites = {site.write_key: (name, site) for name, site in config.sites.items()}
    script = resources.files("jobs.collector").joinpath("static/collector.js").read_bytes()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for sink in sinks.values():
            await sink.open()
        try:
            yield
        finally:
            for sink in sinks.values():
                await sink.close()

    app = FastAPI(title="email-lakehouse collector", version="1", lifespan=lifespan,
                  description="Behavioral events in; NDJSON landing files out. A 2xx means fsync'd to disk.")

    @app.middleware("http")
    async def measured(request: Request, call_next: Callable[[Request], Any]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.observe(getattr(route, "path", "other"), response.status_code, time.perf_counter() - started)
        return response

    @app.exception_handler(Problem)
    async def problem_answer(request: Request, problem: Problem) -> Response:
        metrics.refused[problem.reason] += 1
        headers = {**problem.headers, **_cors(request, sites)}
        return JSONResponse(problem.body, problem.status, headers=headers)

    @app.exception_handler(Refused)
    async def refused_answer(request: Request, refusal: Refused) -> Response:
        return await problem_answer(request, _problem(refusal))

    async def land(request: Request, principal: Principal, items: list[Any], prefix: str,
                   to_event: Callable[[Any], Any] = lambda item: item) -> tuple[int, dict[str, Any]]:
        """Validate, limit, dedup, write, answer. Only a browser's own requests say who the shopper's
        user agent is; a backend's (curl, an SDK) would make every event look like a bot."""
        if len(items) > config.max_batch_events:
            raise Problem(413, "too_many_events", f"{len(items)} events in one request; at most "
                          f"{config.max_batch_events} (collector.max_batch_events)")
        valid, refused = validate_events([to_event(item) for item in items], prefix)
        for _ in refused:
            metrics.refused["invalid_event"] += 1
        wait = limiter.take(principal.name, len(valid)) if valid else 0
        if wait:
            raise Problem(429, "rate_limited", f"more than {config.rate_per_second:g} events/s for "
                          f"{principal.name!r}; retry after {wait:g} s", headers={"Retry-After": str(int(wait))})
        received = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        agent = request.headers.get("user-agent") if principal.kind == "site" else None
        client = _client_ip(request, config)
        results: list[dict[str, Any]] = list(refused)
        lines: dict[str, list[str]] = {}
        fresh, seen_here = [], set()
        for index, event in valid:
            record = event.line(received, agent, client, principal.name)
            event_id = record["event_id"]
            if event_id in recent or event_id in seen_here:
                results.append({"index": index, "status": "duplicate", "event_id": event_id})
                continue
            seen_here.add(event_id)
            lines.setdefault(event.sink, []).append(json.dumps(record, separators=(",", ":"), ensure_ascii=False))
            fresh.append(event_id)
            results.append({"index": index, "status": "accepted", "event_id": event_id})
        if lines:
            try:
                await asyncio.gather(*[sinks[name].append(("\n".join(batch) + "\n").encode())
                                       for name, batch in lines.items()])
            except OSError as exc:
                raise Problem(503, "not_written", f"events not written ({exc.strerror or exc}); send them again",
                              headers={"Retry-After": "1"}) from None
            recent.add(fresh)
            metrics.accepted[principal.name] += len(fresh)
        results.sort(key=lambda r: r["index"])
        accepted = sum(r["status"] != "refused" for r in results)
        status = 200 if not refused else 400 if not accepted else 207
        return status, {"accepted": accepted, "refused": len(refused), "events": results}

    # -- POST /api/events ---------------------------------------------------------------------
    @app.post("/api/events", summary="Record one event or a batch ({\"events\": [...]})", openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
            EVENT_SCHEMA, {"type": "object", "properties": {"events": {"type": "array", "items": EVENT_SCHEMA}},
                           "required": ["events"]}]}}}},
        "security": [{"apiKey": []}, {"bearer": []}]})
    async def post_events(request: Request) -> Response:
        principal = require(_principal(request, auth))
        payload = await _json_body(request, config, ("application/json",))
        if isinstance(payload, dict) and isinstance(payload.get("events"), list):
            status, body = await land(request, principal, payload["events"], "events")
        elif isinstance(payload, dict):
            status, body = await land(request, principal, [payload], "")
        else:
            raise Problem(400, "invalid_body", "expected one event (a JSON object) or {\"events\": [...]}")
        return JSONResponse(body, status)

    # -- POST /oauth/token ----------------------------------------------------------------------
    @app.post("/oauth/token", summary="OAuth 2.0 client credentials: an access token with events:write")
    async def token(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await _body(request, config)).decode("utf-8", "replace")).items()}
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        basic = _basic(request)
        if basic:
            client_id, secret = basic
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        try:
            answer = auth.issue_token(client_id, secret, form.get("scope"))
        except Refused as refusal:
            metrics.refused[refusal.reason] += 1
            return JSONResponse({"error": refusal.reason, "error_description": str(refusal)}, refusal.status,
                                headers={"WWW-Authenticate": "Basic"} if refusal.status == 401 else None)
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})

    # -- the browser: POST /api/collect, GET /p.gif, GET /collector.js ----------------------------
    def site_of(request: Request) -> Principal:
        found = sites.get(request.query_params.get("k", ""))
        if found is None:
            raise Problem(401, "invalid_write_key", "unknown site write key (query parameter k)")
        name, site = found
        origin = request.headers.get("origin")
        if origin is not None and origin not in site.origins:
            raise Problem(403, "origin_not_allowed", f"origin {origin} is not allowed for site {name!r}")
        return Principal(name, ("events:write",), "site")

    @app.options("/api/collect", include_in_schema=False)
    async def preflight(request: Request) -> Response:
        site_of(request)
        return Response(status_code=204, headers={**_cors(request, sites), "Access-Control-Allow-Methods": "POST",
                                                  "Access-Control-Allow-Headers": "Content-Type",
                                                  "Access-Control-Max-Age": "600"})

    @app.post("/api/collect", summary="Events from collector.js (site write key in ?k=)")
    async def collect(request: Request) -> Response:
        principal = site_of(request)
        payload = await _json_body(request, config, ("application/json", "text/plain"))
        items = payload.get("events") if isinstance(payload, dict) else None
        if not isinstance(items, list):
            raise Problem(400, "invalid_body", "expected {\"events\": [...]}")
        status, body = await land(request, principal, items, "events")
        return JSONResponse(body, status, headers=_cors(request, sites))

    @app.get("/p.gif", summary="Tracking pixel: records a page view (or ?e=TYPE), answers a 1x1 GIF")
    async def pixel(request: Request) -> Response:
        principal = site_of(request)
        query = request.query_params
        anonymous = query.get("a") or request.cookies.get(ANONYMOUS_COOKIE) or str(uuid.uuid4())
        event = {"event_id": query.get("i"), "event_type": query.get("e") or "page_view",
                 "timestamp": query.get("t") or int(time.time() * 1000), "customer_id": query.get("c"),
                 "anonymous_id": anonymous, "session_id": query.get("s"), "product_id": query.get("p"),
                 "url": query.get("u") or request.headers.get("referer"),
                 "properties": {k[3:]: v for k, v in query.items() if k.startswith("pr.")}}
        status, body = await land(request, principal, [{k: v for k, v in event.items() if v is not None}], "")
        if status != 200:
            raise Problem(400, "invalid_event", "pixel event refused", events=body["events"])
        response = Response(PIXEL, media_type="image/gif", headers={"Cache-Control": "no-store, max-age=0"})
        response.set_cookie(ANONYMOUS_COOKIE, anonymous, max_age=365 * 86400, samesite="lax")
        return response

    @app.get("/collector.js", summary="The browser snippet")
    async def collector_js() -> Response:
        return Response(script, media_type="application/javascript", headers={"Cache-Control": "public, max-age=300"})

    # -- Segment's HTTP tracking API ------------------------------------------------------------
    async def segment_calls(request: Request, kind: str | None) -> Response:
        basic = _basic(request)
        if basic is None:
            raise Problem(401, "missing_credentials", "Segment calls carry the write key as Basic-auth user name",
                          headers={"WWW-Authenticate": "Basic"})
        principal = require(_refusing(lambda: auth.api_key(basic[0])))
        payload = await _json_body(request, config, ("application/json", "text/plain"))
        if not isinstance(payload, dict):
            raise Problem(400, "invalid_body", "expected a JSON object")
        calls = payload.get("batch") if kind is None else [{**payload, "type": kind}]
        if not isinstance(calls, list):
            raise Problem(400, "invalid_body", "expected {\"batch\": [...]}")
        status, body = await land(request, principal, calls, "batch" if kind is None else "", segment.to_event)
        return JSONResponse({"success": status == 200, **body}, status)

    for kind in ("track", "page", "screen", "identify"):
        app.add_api_route(f"/v1/{kind}", _bound(segment_calls, kind), methods=["POST"],
                          summary=f"Segment tracking API: {kind}")
    app.add_api_route("/v1/batch", _bound(segment_calls, None), methods=["POST"], summary="Segment tracking API: batch")

    # -- operations ---------------------------------------------------------------------------
    @app.get("/healthz", summary="200 while the collector can write")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", summary="Prometheus text format", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    _add_security(app)
    return app


def _bound(handler: Callable[[Request, str | None], Any], kind: str | None) -> Callable[[Request], Any]:
    async def route(request: Request) -> Response:
        return await handler(request, kind)

    route.__name__ = f"segment_{kind or 'batch'}"
    return route


def _add_security(app: FastAPI) -> None:
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            schema.setdefault("components", {})["securitySchemes"] = {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key or an access token"},
                "oauth": {"type": "oauth2", "flows": {"clientCredentials": {
                    "tokenUrl": "/oauth/token", "scopes": {"events:write": "record events"}}}},
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _problem(refusal: Refused) -> Problem:
    challenge = {"WWW-Authenticate": f'Bearer realm="collector", error="{refusal.reason}"'}
    return Problem(refusal.status, refusal.reason, str(refusal), headers=challenge if refusal.status == 401 else None)


def _refusing(check: Callable[[], Principal]) -> Principal:
    try:
        return check()
    except Refused as refusal:
        raise _problem(refusal) from None


def _principal(request: Request, auth: Authenticator) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        return _refusing(lambda: auth.bearer(credential.strip()))
    key = request.headers.get("x-api-key")
    if key:
        return _refusing(lambda: auth.api_key(key.strip()))
    raise Problem(401, "missing_credentials", "send an API key (Authorization: Bearer or X-API-Key) or an "
                  "access token from /oauth/token", headers={"WWW-Authenticate": 'Bearer realm="collector"'})


def _basic(request: Request) -> tuple[str, str] | None:
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(credential.strip()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, password


async def _body(request: Request, config: CollectorSettings) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > config.max_body_bytes:
        raise Problem(413, "too_large", f"body of {int(declared):,} bytes; at most {config.max_body_bytes:,} "
                      "(collector.max_body_bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > config.max_body_bytes:
            raise Problem(413, "too_large", f"body over {config.max_body_bytes:,} bytes (collector.max_body_bytes)")
        chunks.append(chunk)
    body = b"".join(chunks)
    if request.headers.get("content-encoding", "").lower() == "gzip":
        try:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            body = inflater.decompress(body, config.max_body_bytes + 1)
        except (zlib.error, gzip.BadGzipFile):
            raise Problem(400, "invalid_body", "Content-Encoding gzip, but the body is not gzip") from None
        if len(body) > config.max_body_bytes or inflater.unconsumed_tail:
            raise Problem(413, "too_large", f"body over {config.max_body_bytes:,} bytes once inflated")
    return body


async def _json_body(request: Request, config: CollectorSettings, types: tuple[str, ...]) -> Any:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in types:
        raise Problem(415, "unsupported_media_type", f"Content-Type {content_type or '(none)'}; send "
                      f"{' or '.join(types)}")
    body = await _body(request, config)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise Problem(400, "invalid_json", f"the body is not JSON{where}") from None


def _client_ip(request: Request, config: CollectorSettings) -> str | None:
    if config.trust_forwarded_for:
        forwarded = request.headers.get("x-forwarded-for", "")
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return truncate_ip(hops[-1])
    return truncate_ip(request.client.host if request.client else None)


def _cors(request: Request, sites: dict[str, tuple[str, Any]]) -> dict[str, str]:
    origin = request.headers.get("origin")
    found = sites.get(request.query_params.get("k", ""))
    if origin and found and origin in found[1].origins:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {}

