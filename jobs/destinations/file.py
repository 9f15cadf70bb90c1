"""The ``file`` destination: JSON Lines per run and segment, plus a manifest per run.

Layout under the configured folder::

    {run_id}/{segment_id}/batch-00001-{key12}.jsonl   one change per line
    {run_id}/manifest.json                             written last: batches and counts

A batch file is written to a temporary name and renamed, and its content is a function of its
rows, so writing the same batch again yields the same file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jobs.destinations import BatchResult
from jobs.errors import ConfigError


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    partial.write_text(text)
    os.replace(partial, path)


class FileDestination:
    name = "file"

    def __init__(self, folder: str):
        if "://" in folder:
            raise ConfigError(f"destinations.file.path must be a local folder, got {folder} (use the s3 destination)")
        self.folder = Path(folder)

    def send(self, run_id: str, segment_id: str, batch_no: int, key: str, rows: list[dict[str, Any]]) -> BatchResult:
        lines = "".join(json.dumps(row, sort_keys=True, default=str) + "\n" for row in rows)
        _write_atomically(self.folder / run_id / segment_id / f"batch-{batch_no:05d}-{key[:12]}.jsonl", lines)
        return BatchResult()

    def finish(self, run_id: str, summary: dict[str, Any]) -> None:
        _write_atomically(self.folder / run_id / "manifest.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
