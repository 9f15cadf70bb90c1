"""Landing files the collector writes: NDJSON, group-committed, fsync'd, rolled atomically.

Requests hand their lines to :meth:`Sink.append` and wait; one writer task takes everything
waiting, writes it with one ``write`` and one ``fsync`` (group commit: the more requests arrive
while a disk flush runs, the more the next one carries) and only then lets the requests answer.
A 2xx therefore means the lines are on disk.

A file is written as ``.{name}.open`` — a hidden name, which Spark's file listing skips — and
renamed to ``{name}.ndjson`` in the same folder when it reaches ``roll_bytes`` or is
``roll_seconds`` old, so ``ingest`` only ever sees whole files. A write that fails is cut back to
the last whole line before the error reaches the requests (503). After a crash, :meth:`Sink.open`
cuts this instance's leftover ``.open`` files back to their last newline (a line without one was
never answered) and rolls them. With ``publish`` (object storage), each rolled file is uploaded
and removed by a task beside the writer (a slow store delays files, never answers); one that fails
to go up stays in the spool and is retried after the next roll and at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

Publish = Callable[[Path], None]


class Sink:
    def __init__(self, directory: Path, instance: str, roll_bytes: int, roll_seconds: float,
                 publish: Publish | None = None):
        self.directory, self.instance = directory, instance
        self.roll_bytes, self.roll_seconds, self.publish = roll_bytes, roll_seconds, publish
        self._fd: int | None = None
        self._open_path: Path | None = None
        self._final_path: Path | None = None
        self._size = 0
        self._opened = 0.0
        self._seq = 0
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._publishing: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.recover)
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"sink {self.directory}")
        self._publish_later()

    async def close(self) -> None:
        """Write what is waiting, roll the open file (graceful shutdown)."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task
        if self._publishing is not None:
            await self._publishing
        if self.publish is not None:
            await asyncio.to_thread(self._publish_all)  # a last try; what fails stays in the spool

    async def append(self, data: bytes) -> None:
        """Returns once ``data`` (whole lines) is fsync'd; raises OSError if it could not be."""
        if self._closing or self._wake is None:
            raise OSError("the collector is shutting down")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((data, future))
        self._wake.set()
        await future

    # -- the writer task ---------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=min(1.0, self.roll_seconds))
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                try:
                    await asyncio.to_thread(self._write, b"".join(data for data, _ in batch))
                except OSError as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
            if self._closing and not self._pending:
                await asyncio.to_thread(self._roll)
                return
            if self._fd is not None and (self._size >= self.roll_bytes
                                         or time.monotonic() - self._opened >= self.roll_seconds):
                await asyncio.to_thread(self._roll)
                self._publish_later()

    def _publish_later(self) -> None:
        """Uploads run beside the writer, never in its way: a slow or failing store delays files,
        not answers."""
        if self.publish is not None and (self._publishing is None or self._publishing.done()):
            self._publishing = asyncio.create_task(asyncio.to_thread(self._publish_all))

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            self._start_file()
        assert self._fd is not None
        start = self._size
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)  # no partial line stays behind a failed write
            raise
        self._size = start + len(data)

    def _start_file(self) -> None:
        now = datetime.now(UTC)
        self._seq += 1
        name = f"{self.instance}-{now:%Y%m%dT%H%M%S%f}-{os.getpid()}-{self._seq:06d}"
        folder = self.directory / f"{now:%Y-%m-%d}"
        folder.mkdir(parents=True, exist_ok=True)
        self._open_path = folder / f".{name}.open"
        self._final_path = folder / f"{name}.ndjson"
        self._fd = os.open(self._open_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._size = 0
        self._opened = time.monotonic()

    def _roll(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        assert self._open_path is not None and self._final_path is not None
        self._finish(self._open_path, self._final_path)

    def _finish(self, open_path: Path, final_path: Path) -> bool:
        if open_path.stat().st_size == 0:
            open_path.unlink()
            return False
        os.replace(open_path, final_path)
        _fsync_dir(final_path.parent)
        return True

    def _publish_all(self) -> None:
        if self.publish is None:
            return
        for path in sorted(self.directory.glob("*/*.ndjson")):
            try:
                self.publish(path)
            except Exception:  # noqa: BLE001 - stays in the spool, retried at the next roll
                return
            path.unlink()

    def recover(self) -> list[Path]:
        """Roll this instance's files left open by a crash, cut back to their last whole line."""
        recovered = []
        for open_path in sorted(self.directory.glob(f"*/.{self.instance}-*.open")):
            with open(open_path, "rb+") as handle:
                data = handle.read()
                whole = data.rfind(b"\n") + 1
                if whole < len(data):
                    handle.truncate(whole)
                    handle.flush()
                    os.fsync(handle.fileno())
            final = open_path.with_name(open_path.name[1:].removesuffix(".open") + ".ndjson")
            if self._finish(open_path, final):
                recovered.append(final)
        return recovered


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
