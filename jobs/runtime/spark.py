"""The one place a SparkSession is built.

Static confs (extensions, catalog, jars, master) only take effect on the builder, so they are
all set here, before the session exists; an active session (a notebook's, spark-submit's, the
test suite's) is reused as it is.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyspark
from pyspark.sql import SparkSession

from jobs.runtime.jars import spark_jars
from jobs.runtime.settings import SparkConfValue, SparkSettings, conf_dir, local_path

DELTA_CONFS: dict[str, str] = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}

BASE_CONFS: dict[str, str] = {
    # Every timestamp the suite stores or prints is UTC, whatever the machine's zone.
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.adaptive.coalescePartitions.enabled": "true",
    # Small Delta logs: reconstructing a snapshot over Spark's default 50 partitions costs seconds.
    "spark.databricks.delta.snapshotPartitions": "4",
    "spark.sql.streaming.ui.enabled": "false",
    "spark.sql.debug.maxToStringFields": "200",
    # A JSON object with a repeated key keeps the last value instead of failing the batch.
    "spark.sql.mapKeyDedupPolicy": "LAST_WIN",
    # Schema changes of the tables are explicit in the table registry, never merged silently.
    "spark.databricks.delta.schema.autoMerge.enabled": "false",
}

TEST_PROFILE_CONFS: dict[str, str] = {
    "spark.sql.shuffle.partitions": "1",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.coalescePartitions.initialPartitionNum": "1",
    "spark.rdd.compress": "false",
    "spark.shuffle.compress": "false",
    "spark.databricks.delta.stalenessLimit": "0",
    # Test tables hold tens of rows, so compiling Java for each new plan costs more than it saves:
    # the JVM spent ~60 % of its CPU in the JIT, most of it on Spark's generated classes.
    # Interpreted expressions ran the gold job tests in 123 s against 156-161 s.
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    # Per-file column statistics (a JSON aggregation in every write) only serve data skipping,
    # which tables this small never need: 111 s against 123 s.
    "spark.databricks.delta.stats.collect": "false",
    # The status store keeps each finished query's plan as text for a UI this profile turns off:
    # the largest share of what outlived its test in a heap sample of the cleanse tests.
    "spark.sql.ui.retainedExecutions": "100",
}


# PySpark logs every analysis error it raises, with its query context, as a JSON line on stderr;
# the CLI reports the errors it expects itself, on one line.
logging.getLogger("SQLQueryContextLogger").setLevel(logging.CRITICAL)


def analysis_message(exc: BaseException) -> str:
    """The readable head of a Spark parse or analysis error, on one line."""
    text = " ".join(str(exc).split())
    return re.split(r" SQLSTATE: | ==", text, maxsplit=1)[0][:400]


def error_chain(exc: BaseException) -> str:
    """An error's text and, for one raised in the JVM, each of its causes' (``Caused by``: Spark's
    own message often says only which file failed, the cause what was wrong with it)."""
    texts = [str(exc)]
    java = getattr(exc, "java_exception", None)
    cause = java.getCause() if java is not None else None
    while cause is not None and len(texts) < 10:
        texts.append(str(cause.toString()))
        cause = cause.getCause()
    return "\n".join(texts)


def java_class(spark: SparkSession, name: str) -> Any:
    """The JVM class ``name`` (fully qualified), found in one Py4J call: walking
    ``spark._jvm.org.apache…`` asks the JVM for a class at every dot, and each miss searches every
    jar on the classpath (about 5 ms a walk, measured; the Delta and file-system helpers make
    hundreds of them in a run)."""
    return getattr(spark.sparkContext._jvm, name)


def launched_by_spark_submit() -> bool:
    """True inside a driver that spark-submit (or pyspark) started with its own JVM and confs."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _text(value: SparkConfValue) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


# On one machine: Spark's parallel file listing (VACUUM's, among others) defaults to 10,000 tasks,
# which costs half a minute even for a table of ten files.
# And a Delta log on one machine is small: rebuilding a snapshot's state (every idempotent write
# and every read of a new version does) in one partition saves a quarter of its cost.
# And the driver's result channels (collect, toLocalIterator, accumulators) use a Unix socket, not a
# loopback TCP port that closes after its first connection, whoever makes it: twice in CI a collect
# found its port refused or its handshake garbled.
LOCAL_CONFS: dict[str, str] = {
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "8",
    "spark.databricks.delta.snapshotPartitions": "1",
    "spark.python.unix.domain.socket.enabled": "true",
}


def metastore_dir(root: str) -> Path | None:
    """Where a lakehouse on the local file system keeps its own embedded Hive metastore (Derby):
    ``{root}/_catalog/metastore_db``; None for a root on object storage, whose cluster configures
    its catalog."""
    local = local_path(root)
    return Path(local) / "_catalog" if local is not None else None


def _hive_available() -> bool:
    """Whether this Spark has Hive support (the pip package does; a custom build may not)."""
    homes = [Path(os.environ["SPARK_HOME"])] if os.environ.get("SPARK_HOME") else []
    homes.append(Path(pyspark.__file__).parent)
    return any(next((home / "jars").glob("spark-hive_*.jar"), None) for home in homes)


def _hive_site() -> Path | None:
    """A ``hive-site.xml`` where Spark looks for one: the metastore it configures is the user's."""
    folders = [os.environ.get(v) for v in ("SPARK_CONF_DIR", "HIVE_CONF_DIR", "HADOOP_CONF_DIR")]
    if os.environ.get("SPARK_HOME"):
        folders.append(f"{os.environ['SPARK_HOME']}/conf")
    return next((site for f in folders if f and (site := Path(f) / "hive-site.xml").is_file()), None)


def metastore_confs(root: str, hive: bool) -> dict[str, str]:
    """Where a session's Hive metastore lives when it has one: an embedded Derby database with the
    lakehouse, so every process that opens the same root (CLI, notebook, ``spark-sql``) sees the
    same names; ``hive``: back the session catalog with it. Derby admits one process at a time, so
    only the sessions that look names up ask for it (``lakehouse catalog register``, notebooks):
    jobs read, write and create tables by path, and a name lookup or path DDL in a Hive session
    would open it. A lock held by another process fails at once, without retries (waiting cannot
    free it). A ``hive-site.xml`` of the user's keeps its own metastore."""
    folder = metastore_dir(root)
    if folder is None or not _hive_available():
        return {}
    enabled = {"spark.sql.catalogImplementation": "hive"} if hive else {}
    if _hive_site() is not None:
        return enabled
    return {
        **enabled,
        "spark.hadoop.javax.jdo.option.ConnectionURL":
            f"jdbc:derby:;databaseName={folder / 'metastore_db'};create=true",
        "spark.sql.warehouse.dir": str(folder / "warehouse"),
        "spark.hadoop.hive.hmshandler.retry.attempts": "1",
        "spark.hadoop.hive.metastore.connect.retries": "1",
    }


def session_confs(settings: SparkSettings, s3a: bool = False, root: str | None = None, hive: bool = False
                  ) -> dict[str, str]:
    """Every conf the builder gets: Delta, base, local mode's, the profile's, then the user's (which
    win); ``s3a``: a root is on ``s3a://``, so the S3A connector's jars join Delta's; ``root``, ``hive``:
    see :func:`metastore_confs` (not under spark-submit, where the cluster's catalog rules, nor in
    the test profile)."""
    confs = {**DELTA_CONFS, **BASE_CONFS, "spark.ui.enabled": _text(settings.ui)}
    if root and settings.profile != "test" and not launched_by_spark_submit():
        confs.update(metastore_confs(root, hive))
    if (settings.master or "").startswith("local"):
        confs.update(LOCAL_CONFS)
        if not os.environ.get("PYSPARK_PYTHON"):  # Python workers run this interpreter, not PATH's python3
            confs["spark.pyspark.python"] = sys.executable
    if settings.profile == "test":
        confs.update(TEST_PROFILE_CONFS)
    elif sys.stderr.isatty():  # a person at a terminal sees Spark's progress bar
        confs["spark.ui.showConsoleProgress"] = "true"
    confs.update({key: _text(value) for key, value in settings.conf.items()})
    if (
        "spark.jars" not in confs
        and "io.delta:" not in confs.get("spark.jars.packages", "")  # other packages (OpenLineage) add to Delta
        and not launched_by_spark_submit()
    ):
        confs["spark.jars"] = ",".join(str(p) for p in spark_jars(s3a))
    return confs


# The JVM a local run starts is driver and executor at once. G1's concurrent cycles, started by the
# large buffers Delta and broadcasts allocate, compete for two cores; the parallel collector
# measured ~6 % faster on the job tests (283 s against 300 s).
LOCAL_JAVA_OPTIONS = "-XX:+UseParallelGC"


def _local_java_options(confs: dict[str, str]) -> None:
    """Quiet driver logs and the parallel collector for local runs; spark-submit keeps the
    cluster's configuration, and a user's own driver options win."""
    log_conf = conf_dir() / "log4j2.properties"
    if "spark.driver.extraJavaOptions" not in confs and log_conf.is_file():
        confs["spark.driver.extraJavaOptions"] = (
            f"{LOCAL_JAVA_OPTIONS} -Dlog4j.configurationFile={log_conf.resolve().as_uri()}")


def get_spark(settings: SparkSettings, extra_confs: Mapping[str, str] | None = None, s3a: bool = False,
              root: str | None = None, hive: bool = False) -> SparkSession:
    """The active session if there is one, else a new one built from the settings (``s3a``,
    ``root``, ``hive``: see :func:`session_confs`)."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(settings.app_name)
    if settings.master and not launched_by_spark_submit():
        builder = builder.master(settings.master)
    confs = {**session_confs(settings, s3a, root, hive), **(extra_confs or {})}
    if not launched_by_spark_submit():
        _local_java_options(confs)
    for key, value in confs.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.log_level)
    if confs.get("spark.sql.catalogImplementation") == "hive" and root and (folder := metastore_dir(root)):
        # Derby's own log beside its database, not derby.log in whatever folder the command ran from.
        system = java_class(spark, "java.lang.System")
        if system.getProperty("derby.stream.error.file") is None:
            folder.mkdir(parents=True, exist_ok=True)
            system.setProperty("derby.stream.error.file", str(folder / "derby.log"))
    return spark
