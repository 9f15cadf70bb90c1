"""One Spark session for the whole run, with the fast test profile; every Delta test gets its
own lakehouse and landing zone under ``tmp_path``."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from jobs.runtime.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
TEST_DATA = REPO / "tests" / "data"

os.environ.setdefault("SPARK_TESTING", "1")


def _settings(tmp_path: Path, *overrides: str) -> Settings:
    return load_settings(
        "local",
        overrides=[
            f"lakehouse.root={tmp_path / 'lakehouse'}",
            f"landing.root={tmp_path / 'landing'}",
            "spark.profile=test",
            "spark.master=local[2]",
            *overrides,
        ],
    )


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory):
    from jobs.runtime.spark import get_spark

    base = tmp_path_factory.mktemp("spark")
    settings = _settings(base)
    session = get_spark(
        settings.spark,
        extra_confs={
            "spark.sql.warehouse.dir": str(base / "warehouse"),
            "spark.driver.extraJavaOptions": (
                f"-Dderby.system.home={base} "
                f"-Dlog4j.configurationFile={(REPO / 'conf' / 'log4j2.properties').as_uri()}"
            ),
        },
    )
    yield session
    session.stop()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings of the local env pointed at this test's own lakehouse and landing zone."""

    def make(*overrides: str) -> Settings:
        return _settings(tmp_path, *overrides)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def moto_endpoint(monkeypatch: pytest.MonkeyPatch):
    """moto's standalone server (S3, Secrets Manager, …) over HTTP on loopback, with test credentials."""
    from moto.server import ThreadedMotoServer

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"
    # moto keeps its state per process, not per server: start every test from nothing
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).close()
    try:
        yield endpoint
    finally:
        server.stop()
