"""The wheel carries the project's default folders — ``conf/``, ``rules/`` and ``templates/`` — as
package data under ``jobs/project/``, so an installed package works outside the checkout
(:func:`jobs.runtime.settings._project_folder` finds them there). Everything else is in setup.cfg."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROJECT_FOLDERS = ("conf", "rules", "templates")


class BuildWithProjectFolders(build_py):
    def run(self) -> None:
        super().run()
        here = Path(__file__).parent
        for name in PROJECT_FOLDERS:
            shutil.copytree(here / name, Path(self.build_lib) / "jobs" / "project" / name, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithProjectFolders})
