"""The type checker and the linter, as CI runs them: mypy --strict over the
package (uemu/ and arch/, installed as uemu.arch), ruff over uemu/, arch/ and
tests/.  Their settings are in pyproject.toml; a failure lists every finding.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"


def _needs(module: str) -> pytest.MarkDecorator:
    missing = importlib.util.find_spec(module) is None
    return pytest.mark.skipif(missing, reason=f"{module} is not installed (it is in the test extra: "
                                              f"pip install -e '.[test]')")


def _package_tree(into: Path) -> Path:
    """The package as it is installed, built from symlinks: uemu/'s files, and
    arch/ as uemu/arch (pyproject's package-dir).  mypy finds modules by their
    place in a tree, so it cannot see arch/ as uemu.arch in the checkout."""
    package = into / "uemu"
    package.mkdir(parents=True)
    for entry in (ROOT / "uemu").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "arch").symlink_to(ROOT / "arch", target_is_directory=True)
    return into


def _sources() -> list[Path]:
    return [path for top in ("uemu", "arch") for path in (ROOT / top).rglob("*.py")
            if "__pycache__" not in path.parts]


@_needs("mypy")
def test_mypy_strict_finds_nothing(tmp_path: Path) -> None:
    tree = _package_tree(tmp_path / "tree")
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(PYPROJECT),
                             "--cache-dir", str(tmp_path / "cache"), "-p", "uemu"],
                            cwd=tree, capture_output=True, text=True)
    # paths as in the checkout: uemu/arch/x86.py is arch/x86.py
    report = re.sub(r"^uemu/arch/", "arch/", result.stdout + result.stderr, flags=re.MULTILINE)
    assert result.returncode == 0, f"mypy --strict:\n{report}"
    checked = re.search(r"no issues found in (\d+) source files", report)
    assert checked is not None, report
    # more than the .py files: mypy counts uemu/runtime's data folders as namespace packages
    assert int(checked[1]) >= len(_sources()), f"mypy did not check every module of uemu/ and arch/: {report}"


@_needs("ruff")
def test_ruff_finds_nothing() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(PYPROJECT),
                             "--output-format", "concise", "uemu", "arch", "tests"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"ruff check:\n{result.stdout}{result.stderr}"
