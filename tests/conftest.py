"""One Spark session for the whole run, with the fast test profile; every Delta test gets its
own lakehouse and landing zone under ``tmp_path``."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobs.runtime.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
TEST_DATA = REPO / "tests" / "data"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/e2e is an end-to-end test (make test-fast leaves them out)."""
    for item in items:
        if "e2e" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.e2e)


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
    from jobs.runtime.spark import LOCAL_JAVA_OPTIONS, get_spark

    base = tmp_path_factory.mktemp("spark")
    settings = _settings(base)
    session = get_spark(
        settings.spark,
        extra_confs={
            "spark.sql.warehouse.dir": str(base / "warehouse"),
            # One JVM serves the whole run, and what each module leaves behind (broadcast join
            # relations, plans, classes) grows: with 2 GB its old generation was full in the last
            # minutes of `make test` and the JVM spent 77 s in full collections (jstat, 2026-12-07).
            "spark.driver.memory": "3g",
            "spark.driver.extraJavaOptions": (
                f"{LOCAL_JAVA_OPTIONS} -Dderby.system.home={base} "
                f"-Dlog4j.configurationFile={(REPO / 'conf' / 'log4j2.properties').as_uri()}"
            ),
        },
    )
    yield session
    session.stop()


@pytest.fixture(scope="module", autouse=True)
def _release_delta_snapshots():
    """After each test module, drop Delta's cache of table snapshots (and Spark's cached data):
    every module's lakehouses are its own, and hundreds of cached snapshots of tables no later
    test reads would otherwise fill the shared driver's heap until it collects garbage more than
    it computes (the suite's last modules ran ten times slower)."""
    yield
    from pyspark.sql import SparkSession

    from jobs.runtime.spark import java_class

    session = SparkSession.getActiveSession()
    if session is not None:
        session.catalog.clearCache()
        java_class(session, "org.apache.spark.sql.delta.DeltaLog").clearCache()


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


# -- one small demo lakehouse per test session ------------------------------------------------
DEMO_AS_OF = "2026-11-19T12:00:00Z"
DEMO_LATER = "2026-11-20T00:00:00Z"


def demo_conf(base: Path, top: str = "", destinations: str = "") -> Path:
    """A settings file for a lakehouse under ``base`` (the project's source mappings beside it):
    ``top`` adds top-level settings, ``destinations`` entries under ``destinations``."""
    if not (base / "sources").exists():
        (base / "sources").symlink_to(REPO / "conf" / "sources")
    path = base / "demo.yaml"
    path.write_text(f"lakehouse: {{root: {base / 'lakehouse'}}}\nlanding: {{root: {base / 'landing'}}}\n"
                    f"spark: {{master: 'local[2]', profile: test}}\n{top}"
                    f"destinations:\n  file: {{path: {base / 'exports'}}}\n{destinations}")
    return path


@dataclass(frozen=True)
class DemoLakehouse:
    """A demo landing zone taken through ``lakehouse run --sync file`` (as of DEMO_AS_OF), then a
    second segment run (DEMO_LATER) and a second sync (half a day on, the 24-hour carts have left:
    ``--allow-large-change``): what the CLI printed is in ``outputs``."""

    base: Path
    conf: Path
    manifest: dict
    outputs: dict[str, str]

    @property
    def root(self) -> str:
        return str(self.base / "lakehouse")

    def settings(self, *overrides: str) -> Settings:
        return load_settings(conf_path=self.conf, overrides=list(overrides))

    def copy(self, dest: Path, top: str = "", destinations: str = "") -> DemoLakehouse:
        """The same lakehouse, landing zone and exports under ``dest``, for a test that changes them."""
        for part in ("landing", "lakehouse", "exports"):
            shutil.copytree(self.base / part, dest / part, symlinks=True)
        return DemoLakehouse(dest, demo_conf(dest, top, destinations), self.manifest, self.outputs)


@pytest.fixture(scope="session")
def demo_lakehouse(spark, tmp_path_factory: pytest.TempPathFactory) -> DemoLakehouse:
    from click.testing import CliRunner

    from jobs.cli import cli

    base = tmp_path_factory.mktemp("demo-lakehouse")
    conf = demo_conf(base)
    runner = CliRunner()
    outputs = {}
    for name, args in (
        ("generate", ["demo", "generate", "--out", str(base / "landing"), "--customers", "40", "--days", "2",
                      "--events-per-day", "250", "--seed", "5", "--end", DEMO_LATER]),  # every kind of dirt
        ("run", ["--conf", str(conf), "run", "--as-of", DEMO_AS_OF, "--sync", "file", "--verbose"]),
        ("segment", ["--conf", str(conf), "segment", "--as-of", DEMO_LATER]),
        ("sync", ["--conf", str(conf), "sync", "file", "--allow-large-change"]),
    ):
        result = runner.invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        outputs[name] = result.output
    manifest = json.loads((base / "landing" / "manifest.json").read_text())
    return DemoLakehouse(base, conf, manifest, outputs)


@pytest.fixture
def start_collector(make_settings: Callable[..., Settings], tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., object]]:
    """Starts a collector with the test keys (``*extra`` are more ``--set`` overrides)."""
    from jobs.collector.serve import free_port, serve_in_thread
    from tests.collector.support import ENV_KEY, TOKEN_KEY, Collector, collector_overrides

    monkeypatch.setenv("TEST_COLLECTOR_APP_KEY", ENV_KEY)
    monkeypatch.setenv("LAKEHOUSE_COLLECTOR_TOKEN_KEY", TOKEN_KEY)
    started: list[Collector] = []

    def start(*extra: str) -> Collector:  # a tests.collector.support.Collector
        settings = make_settings(*collector_overrides(tmp_path, *extra))
        running = serve_in_thread(settings, free_port())
        collector = Collector(running.url, settings, running)
        started.append(collector)
        return collector

    yield start
    for collector in started:
        collector.stop()
