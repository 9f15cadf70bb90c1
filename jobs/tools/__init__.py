"""Operator commands beside the pipeline: tables, quality, privacy, maintenance, packaging, bench, demo data."""

from pathlib import Path

from jobs.runtime.errors import InputError

MARK = ".made-by-lakehouse"


def owned_folder(folder: Path, command: str) -> Path:
    """``folder``, ready for ``command`` to empty and fill: created (and marked as made by it) if
    absent or empty; refused if it holds anything and the command did not make it — so a mistyped
    ``--out .`` never deletes a project's files."""
    mark = folder / MARK
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file, not a folder; {command} needs a folder of its own")
    if folder.is_dir() and any(folder.iterdir()) and not mark.is_file():
        raise InputError(f"{folder} is not empty and was not made by `lakehouse {command}`; "
                         "give a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    mark.write_text(f"made by `lakehouse {command}`: it may empty this folder\n")
    return folder
