"""Every analyst notebook runs top to bottom (nbclient, a real kernel) against a small generated
lakehouse with two segment runs, and is committed without outputs."""

from __future__ import annotations

import nbformat
import pytest
from click.testing import CliRunner
from nbclient import NotebookClient

from jobs.cli import cli
from tests.conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def conf(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("notebooks")
    (base / "sources").symlink_to(REPO / "conf" / "sources")
    path = base / "notebooks.yaml"
    path.write_text(f"lakehouse: {{root: {base / 'lakehouse'}}}\nlanding: {{root: {base / 'landing'}}}\n"
                    "spark: {master: 'local[1]', profile: test}\n")
    runner = CliRunner()
    for args in (["demo", "generate", "--out", str(base / "landing"), "--customers", "30", "--days", "2",
                  "--events-per-day", "150", "--seed", "5", "--end", "2026-11-20T00:00:00Z"],
                 ["--conf", str(path), "run", "--as-of", "2026-11-19T12:00:00Z"],
                 ["--conf", str(path), "segment", "--as-of", "2026-11-20T00:00:00Z"]):
        result = runner.invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return path


def test_there_are_the_three_notebooks():
    assert [p.stem for p in NOTEBOOKS] == ["customer_360", "data_quality", "segment_explorer"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_notebook_is_committed_without_outputs_and_runs_top_to_bottom(path, conf, monkeypatch):
    book = nbformat.read(path, as_version=4)
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code), "clear the outputs"
    assert not [c for c in code if "lakehouse/" in c.source or "data/" in c.source], "no copied paths"

    monkeypatch.setenv("LAKEHOUSE_CONF", str(conf))
    NotebookClient(book, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()

    outputs = [o for cell in code for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert all(cell.execution_count for cell in code)  # every cell ran
    shown = "".join(str(o.get("data", {}).get("text/plain", "")) + o.get("text", "") for o in outputs)
    assert f"lakehouse: {conf.parent / 'lakehouse'}" in shown
    if path.stem == "segment_explorer":
        assert any("image/png" in o.get("data", {}) for o in outputs)
        assert "entered" in shown and "exited" in shown
    if path.stem == "customer_360":
        assert "customer: C" in shown
