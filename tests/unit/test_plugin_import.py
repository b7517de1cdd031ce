"""The pytest plugin costs nothing where the fixture is not used: pytest
imports it in every project of an environment where uemu is installed."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

pytest_plugins = ["pytester"]


def test_the_entry_point_names_the_plugin():
    found = [ep.value for ep in entry_points(group="pytest11", name="uemu")]
    assert found == ["uemu.pytest_plugin"], "pyproject.toml's entry point is not installed: pip install -e . again"


def test_importing_the_plugin_imports_nothing_else():
    """pytest imports the plugin in every project of the environment: beside
    pytest itself it may load only the package and the plugin module."""
    code = ("import sys, pytest; before = set(sys.modules); import uemu.pytest_plugin; "
            "print(*sorted(set(sys.modules) - before))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == ["uemu", "uemu.pytest_plugin"]


def test_a_project_without_the_fixture_loads_nothing_of_uemu(pytester):
    """A whole pytest run, its failed comparisons explained by pytest as usual."""
    pytester.makepyfile("""
        import sys

        def test_nothing_of_uemu_is_loaded():
            assert sorted(m for m in sys.modules if m.startswith("uemu")) == ["uemu", "uemu.pytest_plugin"]

        def test_plain_comparison():
            assert [1, 2] == [1, 3]
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["E * At index 1 diff: 2 != 3"])
