"""File-system look-ups through Hadoop's FileSystem API, so local paths, ``s3a://`` and any
other Hadoop path behave the same. Only metadata and single header lines reach the driver."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from py4j.protocol import Py4JJavaError
from pyspark.sql import SparkSession

from jobs.runtime.errors import InputError
from jobs.runtime.spark import java_class


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    modified_at: datetime


def _hadoop_path(spark: SparkSession, path: str):
    hadoop_path = java_class(spark, "org.apache.hadoop.fs.Path")(path)
    try:
        fs = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    except Py4JJavaError as exc:
        raise InputError(f"cannot access {path}: {_java_message(exc)}") from None
    return fs, hadoop_path


def _java_message(exc: Py4JJavaError) -> str:
    java = exc.java_exception
    return f"{java.getClass().getSimpleName()}: {java.getMessage()}".splitlines()[0]


def exists(spark: SparkSession, path: str) -> bool:
    fs, hadoop_path = _hadoop_path(spark, path)
    return bool(fs.exists(hadoop_path))


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def list_files(spark: SparkSession, root: str, suffixes: tuple[str, ...]) -> list[FileInfo]:
    """Every file below ``root`` whose name ends with one of ``suffixes``, sorted by path.

    Hidden and bookkeeping files (``.…``, ``_…`` such as ``_SUCCESS``) are skipped, and so is
    anything inside a hidden folder.
    """
    fs, hadoop_path = _hadoop_path(spark, root)
    root_uri = fs.makeQualified(hadoop_path).toString().rstrip("/")
    found = []
    files = fs.listFiles(hadoop_path, True)
    while files.hasNext():
        status = files.next()
        path = status.getPath().toString()
        relative = path[len(root_uri):].lstrip("/") if path.startswith(root_uri) else path
        if any(_hidden(part) for part in relative.split("/")):
            continue
        if not path.lower().endswith(suffixes):
            continue
        modified = datetime.fromtimestamp(status.getModificationTime() / 1000, tz=UTC)
        found.append(FileInfo(path=path, size=int(status.getLen()), modified_at=modified))
    return sorted(found, key=lambda f: f.path)


def read_first_line(spark: SparkSession, path: str, encoding: str = "UTF-8") -> str:
    """The first line of a (possibly compressed) text file in ``encoding``, without a byte-order mark."""
    fs, hadoop_path = _hadoop_path(spark, path)
    stream = fs.open(hadoop_path)
    try:
        codec = java_class(spark, "org.apache.hadoop.io.compress.CompressionCodecFactory")(
            spark.sparkContext._jsc.hadoopConfiguration()
        ).getCodec(hadoop_path)
        if codec is not None:
            stream = codec.createInputStream(stream)
        decoded = java_class(spark, "java.io.InputStreamReader")(stream, encoding)
        reader = java_class(spark, "java.io.BufferedReader")(decoded)
        line = reader.readLine()
    finally:
        stream.close()
    return (line or "").lstrip("\ufeff")


def read_text(spark: SparkSession, path: str) -> str:
    """A small text file (a Delta commit, a checkpoint entry), whole."""
    fs, hadoop_path = _hadoop_path(spark, path)
    stream = fs.open(hadoop_path)
    try:
        data = java_class(spark, "org.apache.commons.io.IOUtils").toByteArray(stream)
    finally:
        stream.close()
    return bytes(data).decode("utf-8")


def write_text(spark: SparkSession, path: str, text: str) -> None:
    """A small text file, replaced whole."""
    fs, hadoop_path = _hadoop_path(spark, path)
    stream = fs.create(hadoop_path, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()


def list_names(spark: SparkSession, folder: str) -> list[str]:
    """Names of the entries directly in ``folder`` (none when it does not exist)."""
    fs, hadoop_path = _hadoop_path(spark, folder)
    if not fs.exists(hadoop_path):
        return []
    return sorted(status.getPath().getName() for status in fs.listStatus(hadoop_path))
