"""The package as a cluster or a scheduler installs it: a wheel in a fresh virtual environment,
used from a folder that is not the checkout, so ``conf/``, ``rules/`` and ``templates/`` can only
come from the wheel's package data; the tables its stage creates join the lakehouse's catalog
and another process reads them by name. (The whole pipeline, with lineage, runs from the cluster
bundle in ``test_cluster.py``: each run costs a cold JVM.)"""

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "jobs", "transforms", "conf", "rules", "templates")


def _build_wheel(work: Path) -> Path:
    """The wheel, built from a copy of the sources (an in-tree build would leave build/ behind)."""
    source = work / "source"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(work / "wheels"), str(source)], check=True, capture_output=True, timeout=300)
    [wheel] = (work / "wheels").glob("email_lakehouse-*.whl")
    return wheel


def _fresh_environment(work: Path, wheel: Path) -> Path:
    """A new virtual environment with the wheel installed. Its dependencies (pyspark, delta-spark,
    click…) are reached through a path entry to this environment's site-packages, which installing
    from PyPI again would take minutes for; the checkout's editable install is not on that path
    (a path entry's own .pth files are not read), so ``jobs`` is the wheel's copy only."""
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return venv


@pytest.mark.slow
def test_the_wheel_in_a_fresh_environment_holds_every_module_and_lands_elsewhere_into_named_tables(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:  # every module of the sources, so every stage imports
        modules = {name for name in archive.namelist() if name.endswith(".py")}
    assert modules >= {p.relative_to(REPO).as_posix() for package in ("jobs", "transforms")
                       for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts}
    venv = _fresh_environment(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(Path.home())}  # no LAKEHOUSE_* variable

    def lakehouse(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "lakehouse"), *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=600, check=False)

    packaged = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import jobs; print(jobs.__file__)"],
                                   cwd=elsewhere, check=True, capture_output=True, text=True).stdout).parent
    assert packaged.is_relative_to(venv) and (packaged / "project" / "conf" / "local.yaml").is_file()

    validated = lakehouse("rules", "validate")
    assert validated.returncode == 0, validated.stderr
    assert f"rules in {packaged / 'project' / 'rules'} are valid: 5 segments" in validated.stdout
    assert f"3 templates in {packaged / 'project' / 'templates'}" in validated.stdout

    generated = lakehouse("demo", "generate", "--out", str(elsewhere / "landing"), "--customers", "20",
                          "--days", "1", "--events-per-day", "50")
    assert generated.returncode == 0, generated.stderr
    # Registered before any table exists: the stage creates them, and registers each when it ends in
    # the lakehouse's own Hive metastore, which the stage itself never opens (a second process does).
    catalog = elsewhere / "lakehouse" / "_catalog"
    registered = lakehouse("--set", f"lakehouse.root={elsewhere / 'lakehouse'}", "catalog", "register")
    assert registered.returncode == 0, registered.stderr
    assert (catalog / "metastore_db").is_dir() and (catalog / "registered.json").is_file()

    # A stage from the wheel alone: its conf/ and sources from the package data.
    ran = lakehouse("--set", f"lakehouse.root={elsewhere / 'lakehouse'}", "--set", f"landing.root={elsewhere / 'landing'}",
                    "ingest", "events")
    assert ran.returncode == 0, ran.stderr
    assert not (elsewhere / "conf").exists() and not (elsewhere / "rules").exists()

    # Names that outlive the command, in another process: the tables the stage created.
    assert "could not register" not in ran.stderr
    assert not any((elsewhere / name).exists() for name in ("metastore_db", "derby.log", "spark-warehouse"))
    query = ("from jobs.tools.notebook import open_lakehouse; lh = open_lakehouse(%r); "
             "print(lh.spark.sql('SELECT count(*) FROM bronze.events').first()[0], lh.table('bronze.events').count(), "
             "lh.spark.sql('SELECT count(*) FROM ops.job_runs').first()[0])")
    by_name = subprocess.run([str(venv / "bin" / "python"), "-c", query % str(elsewhere / "lakehouse")], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=300, check=False)
    assert by_name.returncode == 0, by_name.stderr
    named, by_path, runs = by_name.stdout.split()
    lines = json.loads((elsewhere / "landing" / "manifest.json").read_text())["events"]["lines"]
    assert int(named) == int(by_path) == lines and int(runs) == 1  # another process, the same names
