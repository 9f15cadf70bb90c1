"""Every analyst notebook runs top to bottom (nbclient, a real kernel) against the session's demo
lakehouse — two segment runs — and is committed without outputs. The three share one kernel, so
one Spark session, as an analyst opening them one after another would."""

from __future__ import annotations

import nbformat
import pytest
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.utils import run_sync
from nbclient import NotebookClient

from tests.conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
pytestmark = pytest.mark.notebook


def test_there_are_the_three_notebooks_committed_without_outputs():
    assert [p.stem for p in NOTEBOOKS] == ["customer_360", "data_quality", "segment_explorer"]
    for path in NOTEBOOKS:
        code = [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]
        assert all(cell.outputs == [] and cell.execution_count is None for cell in code), f"clear {path.name}"
        assert not [c for c in code if "lakehouse/" in c.source or "data/" in c.source], "no copied paths"


def _run(kernel, path, root=None):
    """Execute a notebook in ``kernel`` (its parameters cell set to open ``root``): what it showed."""
    book = nbformat.read(path, as_version=4)
    parameters = [cell for cell in book.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1, f"{path.name} has one parameters cell"
    if root is not None:
        parameters[0].source += f"\nLAKEHOUSE_ROOT = {str(root)!r}\n"
    NotebookClient(book, km=kernel, timeout=600, resources={"metadata": {"path": str(path.parent)}}).execute()
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    outputs = [o for cell in code for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"], path.name
    assert all(cell.execution_count for cell in code), path.name  # every cell ran
    text = "".join(str(o.get("data", {}).get("text/plain", "")) + o.get("text", "") for o in outputs)
    return text, sum("image/png" in o.get("data", {}) for o in outputs)


def test_every_notebook_runs_top_to_bottom_in_one_kernel_on_the_demo_and_on_an_empty_lakehouse(
        demo_lakehouse, monkeypatch, tmp_path):
    monkeypatch.setenv("LAKEHOUSE_CONF", str(demo_lakehouse.conf))
    kernel = AsyncKernelManager(kernel_name="python3")
    shown: dict[str, tuple[str, int]] = {}
    try:
        for path in NOTEBOOKS:
            shown[path.stem] = _run(kernel, path)
            assert f"lakehouse: {demo_lakehouse.root}" in shown[path.stem][0]
        for path in NOTEBOOKS:  # read-only on a lakehouse nothing has written yet
            text, _ = _run(kernel, path, tmp_path / "empty")
            assert f"lakehouse: {tmp_path / 'empty'}" in text
    finally:
        if kernel.has_kernel:
            run_sync(kernel.shutdown_kernel)(now=True)
    explorer, plots = shown["segment_explorer"]
    assert "entered" in explorer and "exited" in explorer and "as_of" in explorer and plots == 1
    customer, plots = shown["customer_360"]
    assert "customer: C" in customer and plots == 1  # the activity per day
    assert "spark_jobs" in shown["data_quality"][0]
    assert not (tmp_path / "empty").exists()  # opened to read: nothing written
