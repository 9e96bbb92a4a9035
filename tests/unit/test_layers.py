"""The import-linter contracts in pyproject.toml hold, and they do catch an import that runs the wrong way."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy_project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(REPO_ROOT / "worker", root / "worker", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_package_keeps_its_contracts(tmp_path: Path) -> None:
    result = _lint(_copy_project(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_a_room_importing_from_a_higher_room_fails_naming_the_import(tmp_path: Path) -> None:
    root = _copy_project(tmp_path)
    with open(root / "worker" / "rides" / "meter.py", "a") as module:
        module.write("\nfrom worker.store.schema import metadata  # noqa: E402,F401\n")
    result = _lint(root)
    assert result.returncode != 0
    assert "worker.rides is not allowed to import worker.store" in result.stdout
    assert "worker.rides.meter -> worker.store.schema" in result.stdout


def test_an_import_circle_in_the_cli_fails_naming_the_edge(tmp_path: Path) -> None:
    root = _copy_project(tmp_path)
    with open(root / "worker" / "cli" / "errors.py", "a") as module:
        module.write("\nfrom worker.cli.commands import main  # noqa: E402,F401\n")
    result = _lint(root)
    assert result.returncode != 0
    assert "No cycles are allowed in worker.cli" in result.stdout
    assert ".errors -> .commands" in result.stdout
