"""The ``file`` destination: JSON Lines per run and segment, plus a manifest per run.

Layout under the configured folder::

    {run_id}/{segment_id}/batch-00001-{key12}.jsonl   one change per line
    {run_id}/manifest.json                             the run's batches so far ("status":
                                                       "incomplete"), rewritten after each batch;
                                                       last, "complete" with the counts

so a run killed mid-way leaves every batch it wrote listed in its folder's manifest. A batch
written but not yet acknowledged is sent again by the next run, with the same idempotency key
(``batch_key`` in the manifest): a reader applies a key once.

A batch file is written whole (to a temporary name, then renamed), and its content is a
function of its rows, so writing the same batch again yields the same file. The ``s3``
destination writes the same objects under a bucket and prefix.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
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

    def __init__(self) -> None:
        self._batches: dict[str, list[dict[str, Any]]] = {}  # run id -> batches written, in order

    def _write(self, relative: str, text: str) -> None:
        raise NotImplementedError

    def send(self, run_id: str, segment_id: str, batch_no: int, key: str, rows: list[dict[str, Any]]) -> BatchResult:
        name = batch_name(run_id, segment_id, batch_no, key)
        self._write(name, batch_lines(rows))
        written = self._batches.setdefault(run_id, [])
        written.append({"file": name.split("/", 1)[1], "segment_id": segment_id, "batch_key": key, "rows": len(rows)})
        self._write(f"{run_id}/manifest.json", manifest_text({"run_id": run_id, "status": "incomplete",
                                                              "batches": written}))
        return BatchResult()

    def prepare(self, segment_ids: list[str]) -> None:
        """Any segment goes: each gets its own folder."""

    def target(self, segment_id: str) -> str | None:
        """None: an export is a feed of change batches, read in order through the manifests, not
        a copy of the state; pointing it elsewhere only moves where later batches go."""
        return None

    def erase(self, customer_ids: list[str]) -> str:
        """An erasure manifest beside the runs, ``erasures/{at}-{hash}.json``: the customers every
        reader of these exports must forget (their earlier batches hold their rows)."""
        ids = sorted(customer_ids)
        at = datetime.now(UTC)
        name = f"erasures/{at:%Y%m%dT%H%M%SZ}-{hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:12]}.json"
        self._write(name, manifest_text({"type": "erase", "customer_ids": ids, "requested_at": at.isoformat()}))
        return f"erasure manifest {name} written"

    def finish(self, run_id: str, summary: dict[str, Any]) -> None:
        batches = self._batches.get(run_id, [])
        self._write(f"{run_id}/manifest.json", manifest_text({**summary, "status": "complete", "batches": batches}))


class FileDestination(ExportDestination):
    name = "file"

    def __init__(self, folder: str):
        if "://" in folder:
            raise ConfigError(f"destinations.file.path must be a local folder, got {folder} (use the s3 destination)")
        super().__init__()
        self.folder = Path(folder)

    def _write(self, relative: str, text: str) -> None:
        path = self.folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.part")
        partial.write_text(text)
        os.replace(partial, path)
