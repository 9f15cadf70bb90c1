"""``lakehouse package``: everything a cluster needs to run the suite with ``spark-submit``.

Layout of the output folder (default ``dist/spark``)::

    lakehouse.zip          the ``jobs`` and ``transforms`` packages, for --py-files
    lakehouse_main.py      the entry script: spark-submit ... lakehouse_main.py [OPTIONS] COMMAND
    jars/*.jar             the Delta jars matching the installed pyspark, for --jars
    lakehouse-conf.zip     conf/, rules/ and templates/, for --archives lakehouse-conf.zip#lakehouse-conf
    conf/, rules/, templates/  the same, unpacked, for client-mode drivers
    requirements.txt       the Python packages the driver's image needs besides pyspark

The entry script points ``LAKEHOUSE_CONF_DIR``, ``LAKEHOUSE_RULES_DIR`` and ``LAKEHOUSE_TEMPLATES_DIR`` at the unpacked
``lakehouse-conf`` archive in the working directory (YARN and Kubernetes unpack ``--archives``
there) or, failing that, at the folder beside itself.
"""

from __future__ import annotations

import shutil
import zipfile
from importlib import metadata
from pathlib import Path

from jobs.runtime.jars import spark_jars
from jobs.runtime.settings import PROJECT_ROOT, conf_dir, templates_dir
from jobs.tools import owned_folder

PACKAGES = ("jobs", "transforms")
ENTRY_SCRIPT = '''"""spark-submit entry point of the email lakehouse (written by `lakehouse package`).

    spark-submit --py-files lakehouse.zip --jars <delta jars> lakehouse_main.py --env prod run
"""

import os
import sys
from pathlib import Path

for base in (Path.cwd() / "lakehouse-conf", Path(__file__).resolve().parent):
    if (base / "conf").is_dir():
        os.environ.setdefault("LAKEHOUSE_CONF_DIR", str(base / "conf"))
        os.environ.setdefault("LAKEHOUSE_RULES_DIR", str(base / "rules"))
        os.environ.setdefault("LAKEHOUSE_TEMPLATES_DIR", str(base / "templates"))
        break

from jobs.cli import main  # noqa: E402  (after the folders are known)

sys.exit(main())
'''


def _zip_tree(archive: zipfile.ZipFile, folder: Path, under: str, suffixes: tuple[str, ...] | None) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and (suffixes is None or path.suffix in suffixes):
            archive.write(path, f"{under}/{path.relative_to(folder).as_posix()}")


def runtime_requirements() -> list[str]:
    """The installed distribution's requirements, without pyspark/delta (the cluster's own) and extras."""
    wanted = []
    for requirement in metadata.requires("email-lakehouse") or []:
        if "extra ==" in requirement:
            continue
        name = requirement.split(";")[0].strip()
        if not name.lower().startswith(("pyspark", "delta-spark")):
            wanted.append(name)
    return wanted


FOLDERS = ("conf", "rules", "templates")


def build(out: Path, rules: Path | None = None, s3a: bool = False) -> dict[str, object]:
    owned_folder(out, "package")
    with zipfile.ZipFile(out / "lakehouse.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for package in PACKAGES:
            _zip_tree(archive, PROJECT_ROOT / package, package, (".py",))
    (out / "lakehouse_main.py").write_text(ENTRY_SCRIPT)
    jars = out / "jars"
    shutil.rmtree(jars, ignore_errors=True)
    jars.mkdir()
    for jar in spark_jars(s3a):
        shutil.copy2(jar, jars / jar.name)
    rules = rules or PROJECT_ROOT / "rules"
    for name, source in zip(FOLDERS, (conf_dir(), rules, templates_dir(None)), strict=True):
        shutil.rmtree(out / name, ignore_errors=True)
        shutil.copytree(source, out / name, ignore=shutil.ignore_patterns("__pycache__"))
    with zipfile.ZipFile(out / "lakehouse-conf.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for name in FOLDERS:
            _zip_tree(archive, out / name, name, None)
    (out / "requirements.txt").write_text("".join(f"{r}\n" for r in runtime_requirements()))
    return {
        "py_files": str(out / "lakehouse.zip"),
        "entry": str(out / "lakehouse_main.py"),
        "jars": ",".join(str(j) for j in sorted(jars.glob("*.jar"))),
        "archives": f"{out / 'lakehouse-conf.zip'}#lakehouse-conf",
    }
