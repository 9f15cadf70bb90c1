"""The package as a cluster or a scheduler installs it: a wheel in a fresh virtual environment,
used from a folder that is not the checkout, so ``conf/``, ``rules/`` and ``templates/`` can only
come from the wheel's package data; its run reports lineage through the OpenLineage listener
configured as the README documents (one run serves both: each costs a JVM and a pipeline)."""

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO

OPENLINEAGE = "io.openlineage:openlineage-spark_2.13:1.53.0"  # the README's block
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
def test_the_wheel_in_a_fresh_environment_validates_its_rules_and_runs_the_demo_elsewhere_with_lineage(tmp_path):
    wheel = _build_wheel(tmp_path)
    venv = _fresh_environment(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def lakehouse(*args: str) -> subprocess.CompletedProcess:
        env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(Path.home())}  # no LAKEHOUSE_* variable
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
    # Registered before any table exists: the run creates them, and registers each when it ends in
    # the lakehouse's own Hive metastore, which the run itself never opens (a second process does).
    catalog = elsewhere / "lakehouse" / "_catalog"
    registered = lakehouse("--set", f"lakehouse.root={elsewhere / 'lakehouse'}", "catalog", "register")
    assert registered.returncode == 0, registered.stderr
    assert (catalog / "metastore_db").is_dir() and (catalog / "registered.json").is_file()

    lineage = {"spark.jars.packages": OPENLINEAGE,
               "spark.extraListeners": "io.openlineage.spark.agent.OpenLineageSparkListener",
               "spark.openlineage.namespace": "email-lakehouse", "spark.openlineage.transport.type": "file",
               "spark.openlineage.transport.location": str(tmp_path / "lineage.jsonl")}
    ran = lakehouse("--set", f"lakehouse.root={elsewhere / 'lakehouse'}", "--set", f"landing.root={elsewhere / 'landing'}",
                    "--set", f"destinations.file.path={elsewhere / 'exports'}",
                    *[a for key, value in lineage.items() for a in ("--set", f"spark.conf.{key}={value}")],
                    "run", "--sync", "file", "-o", "json")
    assert ran.returncode == 0, ran.stderr
    assert '"status": "succeeded"' in ran.stdout and '"status": "failed"' not in ran.stdout
    assert list((elsewhere / "exports").glob("*/manifest.json"))  # the sync wrote its export
    assert not (elsewhere / "conf").exists() and not (elsewhere / "rules").exists()

    # Lineage: every table a stage writes, with what it was computed from.
    flows: dict[str, set[str]] = {}
    for line in (tmp_path / "lineage.jsonl").read_text().splitlines():
        event = json.loads(line)
        for output in event.get("outputs", []):
            table = output["name"].split(f"{elsewhere}/")[-1]
            flows.setdefault(table, set()).update(i["name"].split(f"{elsewhere}/")[-1] for i in event["inputs"])
    assert flows["lakehouse/bronze/crm"] == {"landing/crm"}
    assert flows["lakehouse/bronze/catalog"] == {"landing/catalog"}
    assert flows["lakehouse/silver/products"] >= {"lakehouse/bronze/catalog"}
    assert flows["lakehouse/silver/customers"] >= {"lakehouse/bronze/crm"}
    assert flows["lakehouse/gold/customer_features"] >= {
        "lakehouse/gold/customer_daily", "lakehouse/silver/customers", "lakehouse/silver/events"}
    assert flows["lakehouse/gold/segment_membership"] >= {"lakehouse/gold/customer_features"}
    assert flows["lakehouse/gold/product_recommendations"] >= {"lakehouse/silver/events", "lakehouse/silver/products"}
    assert {"lakehouse/bronze/events", "lakehouse/silver/events", "lakehouse/ops/job_runs"} <= set(flows)

    # Names that outlive the command, in another process: the tables the run created.
    assert "could not register" not in ran.stderr
    assert not any((elsewhere / name).exists() for name in ("metastore_db", "derby.log", "spark-warehouse"))
    query = ("from jobs.tools.notebook import open_lakehouse; lh = open_lakehouse(%r); "
             "print(lh.spark.sql('SELECT count(*) FROM silver.events').first()[0], lh.table('silver.events').count(), "
             "lh.spark.sql('SELECT count(*) FROM ops.sync_ledger').first()[0])")
    by_name = subprocess.run([str(venv / "bin" / "python"), "-c", query % str(elsewhere / "lakehouse")], cwd=tmp_path,
                             env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(Path.home())},
                             capture_output=True, text=True, timeout=300, check=False)
    assert by_name.returncode == 0, by_name.stderr
    named, by_path, ledger = by_name.stdout.split()
    assert named == by_path and int(named) > 0 and int(ledger) > 0  # another process, the same names
