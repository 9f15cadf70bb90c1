"""The collector over real HTTP: what it writes, when it answers, and what it refuses."""

from __future__ import annotations

import base64
import gzip
import json
import time

import httpx
import pytest

from jobs.collector.auth import Authenticator
from jobs.runtime.secrets import SecretSource
from tests.collector.support import API_KEY, CLIENT_SECRET, ENV_KEY, EVENT, SITE_KEY, TOKEN_KEY, bearer


def token(client, client_id: str = "shop-backend", secret: str = CLIENT_SECRET, **form: str) -> httpx.Response:
    return client.post("/oauth/token", auth=(client_id, secret), data={"grant_type": "client_credentials", **form})


def test_a_batch_is_on_disk_before_the_answer_and_lands_as_whole_lines(start_collector):
    collector = start_collector()
    with httpx.Client(base_url=collector.url) as client:
        answer = client.post("/api/events", headers={**bearer(), "User-Agent": "python-requests/2.32"},
                             json={"events": [EVENT, {**EVENT, "event_id": "mine-1", "user_agent": "Mozilla/5.0 (X11)"},
                                              {**EVENT, "product_id": "p2"}]})
        on_disk = collector.written()  # read right after the 2xx, before any roll

    assert answer.status_code == 200
    body = answer.json()
    assert (body["accepted"], body["refused"]) == (3, 0)
    ids = [e["event_id"] for e in body["events"]]
    assert ids[1] == "mine-1" and all(ids)
    assert all(i.encode() in on_disk for i in ids)
    assert on_disk.endswith(b"\n")
    collector.stop()
    lines = collector.lines()
    assert [line["event_id"] for line in lines] == ids
    assert "user_agent" not in lines[0]  # a backend's own agent says nothing about the shopper (nor is a bot)
    assert lines[1]["user_agent"] == "Mozilla/5.0 (X11)"
    assert lines[0]["_client_ip"] == "127.0.0.0"  # truncated to the /24
    assert lines[0]["_key"] == "web"
    assert lines[0]["properties"] == {"price": 19.5, "currency": "EUR"}
    assert lines[0]["_received_at"].endswith("Z")
    assert ids[0][14] == "7"  # a generated id is a UUIDv7
    assert not list(collector.folder.rglob(".*.open"))


def test_every_way_in_is_accepted(start_collector):
    collector = start_collector()
    with httpx.Client(base_url=collector.url) as client:
        access = token(client).json()
        answers = [
            client.post("/api/events", headers=bearer(), json=EVENT),
            client.post("/api/events", headers={"X-API-Key": ENV_KEY}, json=EVENT),  # a key named by variable
            client.post("/api/events", headers=bearer(access["access_token"]), json=EVENT),
            client.post("/api/events", headers={**bearer(), "Content-Encoding": "gzip",
                                                "Content-Type": "application/json"},
                        content=gzip.compress(json.dumps({"events": [EVENT]}).encode())),
        ]
    assert [a.status_code for a in answers] == [200] * 4
    assert access["token_type"] == "Bearer" and access["scope"] == "events:write" and access["expires_in"] == 900
    collector.stop()
    assert [line["_key"] for line in collector.lines()] == ["web", "app", "shop-backend", "web"]


def _forged() -> str:
    head, body, _ = _token_signed_with("a-different-key-0123456789abcdef0123").split(".")
    return f"{head}.{body}.{base64.urlsafe_b64encode(b'x' * 32).rstrip(b'=').decode()}"


def _token_signed_with(key: str, ttl_ago: float = 0, client: str = "shop-backend") -> str:
    from jobs.runtime.settings import CollectorKey, CollectorSettings

    settings = CollectorSettings(oauth_clients={client: CollectorKey(env="TEST_CLIENT_SECRET")},
                                 token_key_env="TEST_TOKEN_KEY")
    source = SecretSource()
    source.get = lambda setting, name: {"TEST_CLIENT_SECRET": CLIENT_SECRET, "TEST_TOKEN_KEY": key}[name]
    return Authenticator(settings, source).issue_token(client, CLIENT_SECRET, None,
                                                       now=time.time() - ttl_ago)["access_token"]


REFUSALS = {
    "no credentials": (401, "missing_credentials", {}, EVENT),
    "a wrong key": (401, "invalid_key", bearer("not-a-key"), EVENT),
    "a wrong X-API-Key": (401, "invalid_key", {"X-API-Key": API_KEY + "x"}, EVENT),
    "a key without the write scope": (403, "insufficient_scope", bearer("reader-key-0123"), EVENT),
    "an expired token": (401, "expired_token", None, EVENT),
    "a forged token": (401, "invalid_token", None, EVENT),
    "a token signed by another key": (401, "invalid_token", None, EVENT),
    "a token without the write scope": (403, "insufficient_scope", None, EVENT),
    "a wrong content type": (415, "unsupported_media_type", bearer(), None),
    "a body over max_body_bytes": (413, "too_large", bearer(), {"events": [EVENT] * 40}),
    "more events than max_batch_events": (413, "too_many_events", bearer(), {"events": [EVENT] * 6}),
    "a body that is not JSON": (400, "invalid_json", bearer(), b"{not json"),
    "only invalid events": (400, None, bearer(), {"events": [{"event_type": "x"}]}),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_request_writes_nothing(start_collector, case):
    collector = start_collector("collector.max_body_bytes=4000", "collector.max_batch_events=5")
    status, reason, headers, payload = REFUSALS[case]
    with httpx.Client(base_url=collector.url) as client:
        if headers is None:
            headers = bearer({
                "an expired token": lambda: _token_signed_with(TOKEN_KEY, ttl_ago=901),
                "a forged token": _forged,
                "a token signed by another key": lambda: _token_signed_with("another-key-0123456789abcdef01234"),
                "a token without the write scope": lambda: token(client, "dashboard").json()["access_token"],
            }[case]())
        if isinstance(payload, bytes):
            answer = client.post("/api/events", headers={**headers, "Content-Type": "application/json"},
                                 content=payload)
        elif payload is None:
            answer = client.post("/api/events", headers={**headers, "Content-Type": "text/csv"}, content=b"a,b")
        else:
            answer = client.post("/api/events", headers=headers, json=payload)
        metrics = client.get("/metrics").text
    assert answer.status_code == status, answer.text
    if reason:
        assert answer.json()["error"] == reason
        assert f'collector_events_refused_total{{reason="{reason}"}} 1' in metrics
    if status == 401:
        assert "WWW-Authenticate" in answer.headers
    collector.stop()
    assert collector.written() == b""


def test_each_refused_event_is_named_by_its_field_path_and_the_rest_are_written(start_collector):
    collector = start_collector()
    batch = {"events": [EVENT, {**EVENT, "timestamp": "yesterday"}, {"event_type": "view", "timestamp": 1764496800000}]}
    with httpx.Client(base_url=collector.url) as client:
        answer = client.post("/api/events", headers=bearer(), json=batch)
    assert answer.status_code == 207
    events = answer.json()["events"]
    assert [e["status"] for e in events] == ["accepted", "refused", "refused"]
    assert events[1]["errors"] == [{"loc": "events[1].timestamp", "msg": "expected an ISO 8601 timestamp "
                                    "(2026-11-30T12:00:00Z) or epoch milliseconds"}]
    assert events[2]["errors"] == [{"loc": "events[2]", "msg": "needs customer_id or anonymous_id"}]
    collector.stop()
    assert [line["event_id"] for line in collector.lines()] == [events[0]["event_id"]]


def test_a_retried_batch_is_written_once(start_collector):
    collector = start_collector()
    batch = {"events": [{**EVENT, "event_id": f"e{i}"} for i in range(3)]}
    with httpx.Client(base_url=collector.url) as client:
        first = client.post("/api/events", headers=bearer(), json=batch)
        again = client.post("/api/events", headers=bearer(), json=batch)
    assert first.status_code == again.status_code == 200
    assert [e["status"] for e in again.json()["events"]] == ["duplicate"] * 3
    collector.stop()
    assert [line["event_id"] for line in collector.lines()] == ["e0", "e1", "e2"]


def test_a_key_over_its_rate_gets_429_with_retry_after(start_collector):
    collector = start_collector("collector.rate_per_second=1", "collector.rate_burst=4")
    with httpx.Client(base_url=collector.url) as client:
        ok = client.post("/api/events", headers=bearer(), json={"events": [EVENT] * 4})
        limited = client.post("/api/events", headers=bearer(), json=EVENT)
        other_key = client.post("/api/events", headers={"X-API-Key": ENV_KEY}, json=EVENT)
    assert (ok.status_code, limited.status_code, other_key.status_code) == (200, 429, 200)
    assert int(limited.headers["Retry-After"]) >= 1
    collector.stop()
    assert len(collector.lines()) == 5


def test_oauth_refuses_wrong_clients_grants_and_scopes(start_collector):
    collector = start_collector()
    with httpx.Client(base_url=collector.url) as client:
        wrong_secret = token(client, secret="nope")
        unknown = token(client, "who")
        grant = client.post("/oauth/token", auth=("shop-backend", CLIENT_SECRET), data={"grant_type": "password"})
        scope = token(client, scope="events:write admin")
        in_body = client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "shop-backend",
                                                    "client_secret": CLIENT_SECRET})
    assert (wrong_secret.status_code, wrong_secret.json()["error"]) == (401, "invalid_client")
    assert unknown.status_code == 401
    assert (grant.status_code, grant.json()["error"]) == (400, "unsupported_grant_type")
    assert (scope.status_code, scope.json()["error"]) == (400, "invalid_scope")
    assert in_body.status_code == 200 and in_body.headers["Cache-Control"] == "no-store"


def test_tokens_of_the_previous_key_verify_during_a_rotation(start_collector, monkeypatch):
    old = _token_signed_with("old-signing-key-0123456789abcdef0123")
    monkeypatch.setenv("OLD_TOKEN_KEY", "old-signing-key-0123456789abcdef0123")
    collector = start_collector("collector.previous_token_key_env=OLD_TOKEN_KEY")
    with httpx.Client(base_url=collector.url) as client:
        assert client.post("/api/events", headers=bearer(old), json=EVENT).status_code == 200


def test_the_pixel_the_snippet_and_cors(start_collector):
    collector = start_collector()
    allowed, other = {"Origin": "http://127.0.0.1:1"}, {"Origin": "https://evil.example"}
    with httpx.Client(base_url=collector.url) as client:
        gif = client.get("/p.gif", params={"k": SITE_KEY, "u": "https://shop.example/a", "s": "s9"})
        client.get("/p.gif", params={"k": SITE_KEY, "e": "product_view", "p": "p7", "pr.category": "shoes"})
        unknown = client.get("/p.gif", params={"k": "nope"})
        preflight = client.options("/api/collect", params={"k": SITE_KEY},
                                   headers={**allowed, "Access-Control-Request-Method": "POST"})
        posted = client.post("/api/collect", params={"k": SITE_KEY}, headers={**allowed, "Content-Type": "text/plain"},
                             content=json.dumps({"events": [{**EVENT, "customer_id": None, "anonymous_id": "a1"}]}))
        foreign = client.post("/api/collect", params={"k": SITE_KEY}, headers={**other, "Content-Type": "text/plain"},
                              content=json.dumps({"events": [{**EVENT}]}))
        script = client.get("/collector.js")
    assert gif.status_code == 200 and gif.headers["content-type"] == "image/gif" and len(gif.content) == 43
    assert gif.content.startswith(b"GIF89a")
    assert "lh_aid=" in gif.headers["set-cookie"]
    assert unknown.status_code == 401
    assert preflight.status_code == 204 and preflight.headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:1"
    assert posted.status_code == 200 and posted.headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:1"
    assert foreign.status_code == 403 and "Access-Control-Allow-Origin" not in foreign.headers
    assert script.headers["content-type"].startswith("application/javascript") and b"sendBeacon" in script.content
    collector.stop()
    view, product, browser = collector.lines()
    assert (view["event_type"], view["url"], view["session_id"], view["_key"]) == (
        "page_view", "https://shop.example/a", "s9", "shop")
    assert view["user_agent"].startswith("python-httpx/")  # from a browser path, the request's agent
    assert product["anonymous_id"] == view["anonymous_id"]  # the cookie set by the first answer
    assert (product["product_id"], product["properties"]) == ("p7", {"category": "shoes"})
    assert browser["anonymous_id"] == "a1"


def test_health_metrics_and_openapi(start_collector):
    collector = start_collector()
    with httpx.Client(base_url=collector.url) as client:
        client.post("/api/events", headers=bearer(), json={"events": [EVENT] * 2})
        client.post("/api/events", json=EVENT)
        health = client.get("/healthz")
        metrics = client.get("/metrics").text
        spec = client.get("/openapi.json").json()
    assert health.json() == {"status": "ok"}
    assert 'collector_events_accepted_total{key="web"} 2' in metrics
    assert 'collector_events_refused_total{reason="missing_credentials"} 1' in metrics
    assert 'collector_requests_total{route="/api/events",status="200"} 1' in metrics
    assert 'collector_requests_total{route="/api/events",status="401"} 1' in metrics
    assert 'collector_request_seconds_bucket{le="+Inf"}' in metrics
    assert {"/api/events", "/oauth/token", "/p.gif", "/v1/track", "/v1/batch"} <= set(spec["paths"])
    assert set(spec["components"]["securitySchemes"]) == {"apiKey", "bearer", "oauth"}
    body = spec["paths"]["/api/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "event_type" in body["oneOf"][0]["properties"]


def test_a_crash_leaves_no_partial_line_and_recovery_rolls_the_file(tmp_path):
    from jobs.collector.sink import Sink

    day = tmp_path / "2026-11-30"
    day.mkdir()
    (day / ".node-1-a.open").write_bytes(b'{"event_id":"1"}\n{"event_id":"2"}\n{"event_id":"3","event_ty')
    (day / ".node-1-b.open").write_bytes(b"")
    (day / ".node-2-c.open").write_bytes(b'{"event_id":"9"}\n')  # another instance's: not ours to touch
    recovered = Sink(tmp_path, "node-1", 1000, 60).recover()
    assert [p.name for p in recovered] == ["node-1-a.ndjson"]
    assert recovered[0].read_bytes() == b'{"event_id":"1"}\n{"event_id":"2"}\n'
    assert sorted(p.name for p in day.iterdir()) == [".node-2-c.open", "node-1-a.ndjson"]
