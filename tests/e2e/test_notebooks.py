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


def test_every_notebook_runs_top_to_bottom_in_one_kernel(demo_lakehouse, monkeypatch):
    monkeypatch.setenv("LAKEHOUSE_CONF", str(demo_lakehouse.conf))
    kernel = AsyncKernelManager(kernel_name="python3")
    shown: dict[str, str] = {}
    try:
        for path in NOTEBOOKS:
            book = nbformat.read(path, as_version=4)
            NotebookClient(book, km=kernel, timeout=600,
                           resources={"metadata": {"path": str(path.parent)}}).execute()
            code = [cell for cell in book.cells if cell.cell_type == "code"]
            outputs = [o for cell in code for o in cell.outputs]
            assert not [o for o in outputs if o.output_type == "error"], path.name
            assert all(cell.execution_count for cell in code), path.name  # every cell ran
            shown[path.stem] = "".join(str(o.get("data", {}).get("text/plain", "")) + o.get("text", "")
                                       for o in outputs)
            assert f"lakehouse: {demo_lakehouse.root}" in shown[path.stem]
            if path.stem == "segment_explorer":
                assert any("image/png" in o.get("data", {}) for o in outputs)
    finally:
        if kernel.has_kernel:
            run_sync(kernel.shutdown_kernel)(now=True)
    assert "entered" in shown["segment_explorer"] and "exited" in shown["segment_explorer"]
    assert "customer: C" in shown["customer_360"]
    assert "spark_jobs" in shown["data_quality"]
