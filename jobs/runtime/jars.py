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
import shutil
import subprocess
import sys
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


# -- the S3A connector --------------------------------------------------------------------------
# hadoop-aws depends on the AWS SDK v2 "bundle" (686 MB for Hadoop 3.5.0); the connector loads
# only the S3, transfer-manager and STS clients from it, so those modules (about 20 MB with their
# dependencies) replace it. The SDK version is the one Hadoop's own build uses (hadoop-project's
# aws-java-sdk-v2.version).
AWS_SDK_FOR_HADOOP = {"3.5.0": "2.35.4", "3.4.2": "2.29.52", "3.4.1": "2.24.6"}
AWS_SDK_MODULES = ("s3", "s3-transfer-manager", "sts")


def hadoop_version() -> str:
    """The Hadoop release pyspark ships (its hadoop-client-api jar)."""
    import pyspark

    names = sorted((Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar"))
    if not names:
        raise InputError("pyspark ships no hadoop-client-api jar: cannot tell which S3A connector fits")
    return names[-1].name.removeprefix("hadoop-client-api-").removesuffix(".jar")


def s3a_packages() -> tuple[str, str]:
    """(``spark.jars.packages``, ``spark.jars.excludes``) of the S3A connector for this Hadoop."""
    hadoop = hadoop_version()
    sdk = AWS_SDK_FOR_HADOOP.get(hadoop)
    if sdk is None:
        raise InputError(f"no known AWS SDK version for Hadoop {hadoop} (known: {', '.join(AWS_SDK_FOR_HADOOP)})")
    modules = ",".join(f"software.amazon.awssdk:{module}:{sdk}" for module in AWS_SDK_MODULES)
    return f"org.apache.hadoop:hadoop-aws:{hadoop},{modules}", "software.amazon.awssdk:bundle"


def needs_s3a(*roots: str) -> bool:
    """Whether any of these roots is on ``s3a://`` (the connector must then be on the classpath)."""
    return any(root.startswith("s3a://") for root in roots)


def _s3a_folder(directory: Path | None) -> Path:
    return (directory or jars_dir()) / f"s3a-hadoop-{hadoop_version()}"


def cached_s3a_jars(directory: Path | None = None) -> list[Path] | None:
    """The cached connector jars (listed in the folder's ``jars.txt`` once complete), or None."""
    folder = _s3a_folder(directory)
    listing = folder / "jars.txt"
    if not listing.is_file():
        return None
    paths = [folder / name for name in listing.read_text().split()]
    return paths if all(p.is_file() for p in paths) else None


def resolve_s3a_jars(directory: Path | None = None) -> list[Path]:
    """Resolve the connector and its dependencies once, through Spark's own Ivy in a short-lived
    JVM (transitive resolution is Ivy's job), and keep the jars beside the Delta ones."""
    folder = _s3a_folder(directory)
    ivy = folder / "ivy"
    packages, excludes = s3a_packages()
    confs = {"spark.jars.packages": packages, "spark.jars.excludes": excludes, "spark.jars.ivy": str(ivy),
             "spark.ui.enabled": "false"}
    if os.environ.get("LAKEHOUSE_MAVEN_REPO"):
        confs["spark.jars.repositories"] = os.environ["LAKEHOUSE_MAVEN_REPO"]
    builder = "".join(f".config({key!r}, {value!r})" for key, value in confs.items())
    script = ("from pyspark.sql import SparkSession; "
              f"SparkSession.builder.master('local[1]'){builder}.getOrCreate().stop()")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1800, check=False)
    resolved = sorted((ivy / "jars").glob("*.jar"))
    if done.returncode != 0 or not resolved:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InputError(f"cannot resolve the S3A connector ({packages}): {last}")
    for jar in resolved:
        shutil.copy2(jar, folder / jar.name)
    (folder / "jars.txt").write_text("".join(f"{jar.name}\n" for jar in resolved))
    return [folder / jar.name for jar in resolved]


def spark_jars(s3a: bool = False) -> list[Path]:
    """Every jar a session needs on top of Spark: Delta's, and the S3A connector's for ``s3a``."""
    jars = cached_delta_jars() or resolve_delta_jars()
    if s3a:
        jars = [*jars, *(cached_s3a_jars() or resolve_s3a_jars())]
    return jars
