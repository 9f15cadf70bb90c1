"""The ``file`` destination: JSON Lines per run and segment, plus a manifest per run.

Layout under the configured folder::

    {run_id}/{segment_id}/batch-00001-{key12}.jsonl   one change per line
    {run_id}/manifest.json                             written last: batches and counts

A batch file is written whole (to a temporary name, then renamed), and its content is a
function of its rows, so writing the same batch again yields the same file. The ``s3``
destination writes the same objects under a bucket and prefix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jobs.destinations import BatchResult
from jobs.runtime.errors import ConfigError


def batch_name(run_id: str, segment_id: str, batch_no: int, key: str) -> str:
    return f"{run_id}/{segment_id}/batch-{batch_no:05d}-{key[:12]}.jsonl"


def batch_lines(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, sort_keys=True, default=str) + "\n" for row in rows)


def manifest_text(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, sort_keys=True) + "\n"


class ExportDestination:
    """Writes batches and a manifest as named objects; subclasses say where."""

    name = "export"

    def _write(self, relative: str, text: str) -> None:
        raise NotImplementedError

    def send(self, run_id: str, segment_id: str, batch_no: int, key: str, rows: list[dict[str, Any]]) -> BatchResult:
        self._write(batch_name(run_id, segment_id, batch_no, key), batch_lines(rows))
        return BatchResult()

    def prepare(self, segment_ids: list[str]) -> None:
        """Any segment goes: each gets its own folder."""

    def target(self, segment_id: str) -> str | None:
        """None: an export is a feed of change batches, read in order through the manifests, not
        a copy of the state; pointing it elsewhere only moves where later batches go."""
        return None

    def finish(self, run_id: str, summary: dict[str, Any]) -> None:
        self._write(f"{run_id}/manifest.json", manifest_text(summary))


class FileDestination(ExportDestination):
    name = "file"

    def __init__(self, folder: str):
        if "://" in folder:
            raise ConfigError(f"destinations.file.path must be a local folder, got {folder} (use the s3 destination)")
        self.folder = Path(folder)

    def _write(self, relative: str, text: str) -> None:
        path = self.folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.part")
        partial.write_text(text)
        os.replace(partial, path)
