"""README's layout section says what is true (shared/DESIGN.md §2 defers to it): it
names every module of uemu/, and no module that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout_modules() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Layout\n"):]
    block = section.split("```")[1]
    package = block[block.index("\nuemu/\n"):block.index("\narch/")]
    return set(re.findall(r"\b(\w+)\.py\b", package))


def test_the_layout_names_every_module_and_only_those() -> None:
    modules = {path.stem for path in (ROOT / "uemu").glob("*.py")} - {"__init__", "__main__"}
    named = _layout_modules()
    assert sorted(modules - named) == [], "modules the README's layout does not name"
    assert sorted(named - modules) == [], "the README's layout names modules that are gone"
