"""The collector tests' keys, an event and its auth header, and a handle on a running collector (the
fixture is in tests/conftest.py)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from jobs.collector.serve import Running
from jobs.runtime.settings import Settings

API_KEY = "test-web-key-0123456789"
ENV_KEY = "test-app-key-abcdefghij"
CLIENT_SECRET = "client-secret-0123456789"
TOKEN_KEY = "token-signing-key-0123456789abcdef0123"
SITE_KEY = "site-public-key-1"
EVENT = {"event_type": "add_to_cart", "timestamp": "2026-11-30T10:00:00Z", "customer_id": "c1",
         "session_id": "s1", "product_id": "p1", "properties": {"price": 19.5, "currency": "EUR"}}


def bearer(key: str = API_KEY) -> dict[str, str]:
    """The header that sends ``key`` as a bearer token."""
    return {"Authorization": f"Bearer {key}"}


def collector_overrides(tmp_path: Path, *extra: str) -> list[str]:
    web = hashlib.sha256(API_KEY.encode()).hexdigest()
    client = hashlib.sha256(CLIENT_SECRET.encode()).hexdigest()
    return [
        f"collector.api_keys={json.dumps({'web': {'sha256': web}, 'app': {'env': 'TEST_COLLECTOR_APP_KEY'}, 'reader': {'sha256': hashlib.sha256(b'reader-key-0123').hexdigest(), 'scopes': ['events:read']}})}",
        f"collector.oauth_clients={json.dumps({'shop-backend': {'sha256': client}, 'dashboard': {'sha256': client, 'scopes': ['events:read']}})}",
        f"collector.sites={json.dumps({'shop': {'write_key': SITE_KEY, 'origins': ['http://127.0.0.1:1']}})}",
        "collector.roll_seconds=0.5",
        "collector.instance=test",
        *extra,
    ]


@dataclass
class Collector:
    url: str
    settings: Settings
    running: Running

    @property
    def folder(self) -> Path:
        return Path(self.settings.landing.root) / self.settings.collector.events_path

    def lines(self, kind: str = "events") -> list[dict]:
        """Every line of the rolled files of events (or profiles)."""
        folder = self.folder if kind == "events" else Path(self.settings.landing.root) / self.settings.collector.profiles_path
        return [json.loads(line) for path in sorted(folder.glob("*/*.ndjson"))
                for line in path.read_text().splitlines()]

    def written(self) -> bytes:
        """Every byte on disk, rolled or still open, events and profiles."""
        return b"".join(p.read_bytes() for p in sorted(Path(self.settings.landing.root).rglob("*")) if p.is_file())

    def stop(self) -> None:
        """Graceful shutdown: what is open is flushed and rolled."""
        self.running.stop()
