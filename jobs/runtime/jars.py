"""The Delta Lake jars, fetched once from Maven Central into a local cache.

Spark's ``spark.jars.packages`` resolves through Ivy on every start, needs the network each
time and is slow; instead set-up downloads the two jars Delta needs (``delta-spark`` and
``delta-storage``; Spark itself provides the rest) once, checks them against Maven's SHA-1
files, and every later session gets them through ``spark.jars``. ``lakehouse jars`` prints the
same list for ``spark-submit --jars``.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from importlib.metadata import version
from pathlib import Path

from jobs.runtime.errors import InputError

SCALA_BINARY_VERSION = "2.13"
DEFAULT_REPOSITORY = "https://repo1.maven.org/maven2"


def delta_version() -> str:
    """The delta-spark version installed with pip; the jars must be the same release."""
    return version("delta-spark")


def spark_minor_version() -> str:
    import pyspark

    return ".".join(pyspark.__version__.split(".")[:2])


def delta_artifacts() -> list[tuple[str, str, str]]:
    """(group, artifact, version) of every jar Delta needs on top of Spark."""
    delta = delta_version()
    return [
        ("io.delta", f"delta-spark_{spark_minor_version()}_{SCALA_BINARY_VERSION}", delta),
        ("io.delta", "delta-storage", delta),
    ]


def jars_dir() -> Path:
    """Where the jars are cached: ``$LAKEHOUSE_JARS_DIR`` or ``~/.cache/email-lakehouse/jars``."""
    configured = os.environ.get("LAKEHOUSE_JARS_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "email-lakehouse" / "jars"


def _jar_path(directory: Path, artifact: str, ver: str) -> Path:
    return directory / f"{artifact}-{ver}.jar"


def cached_delta_jars(directory: Path | None = None) -> list[Path] | None:
    """The cached jar files, or None when any of them is missing."""
    directory = directory or jars_dir()
    paths = [_jar_path(directory, artifact, ver) for _, artifact, ver in delta_artifacts()]
    return paths if all(p.is_file() for p in paths) else None


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:
        return response.read()


def resolve_delta_jars(directory: Path | None = None, repository: str | None = None) -> list[Path]:
    """Download the Delta jars into the cache (once) and return their paths."""
    directory = directory or jars_dir()
    repository = (repository or os.environ.get("LAKEHOUSE_MAVEN_REPO") or DEFAULT_REPOSITORY)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for group, artifact, ver in delta_artifacts():
        target = _jar_path(directory, artifact, ver)
        paths.append(target)
        if target.is_file():
            continue
        url = f"{repository.rstrip('/')}/{group.replace('.', '/')}/{artifact}/{ver}/{target.name}"
        try:
            content = _download(url)
            expected = _download(url + ".sha1").decode().split()[0].strip()
        except OSError as exc:
            raise InputError(f"cannot download {url}: {exc}") from exc
        actual = hashlib.sha1(content).hexdigest()
        if actual != expected:
            raise InputError(f"checksum mismatch for {url}: expected {expected}, got {actual}")
        partial = target.with_suffix(".part")
        partial.write_bytes(content)
        partial.replace(target)
    return paths
