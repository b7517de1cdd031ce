"""Install wheels into a guest's root file system, as pip inside the guest would.

    install-wheels.py ROOT PYTHON_VERSION WHEEL...

The host's pip cannot do it: it writes the host's interpreter into console
scripts and uses the host's install scheme (site-packages, not Debian's
dist-packages).  A wheel is a zip laid out for the package directory, so
unzipping it there installs it; the dist-info stays, so entry points (pytest
plugins) are found.  Nothing is byte-compiled here: only the guest's Python
version may do that.
"""

from __future__ import annotations

import configparser
import sys
import zipfile
from pathlib import Path


def install(wheel: Path, site: Path, bindir: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        # NAME.data/ holds files for other places (the tools' own scripts, such
        # as pyelftools' readelf.py); the tests need none of them.
        members = [name for name in archive.namelist() if not name.split("/", 1)[0].endswith(".data")]
        archive.extractall(site, members)
        entry_files = [name for name in members if name.endswith(".dist-info/entry_points.txt")]
    for name in entry_files:
        entries = configparser.ConfigParser(delimiters=("=",), interpolation=None)
        entries.optionxform = str  # script names are case-sensitive
        entries.read(site / name)
        if entries.has_section("console_scripts"):
            for script, target in entries.items("console_scripts"):
                write_script(bindir / script, target.strip())


def write_script(path: Path, target: str) -> None:
    """A console script as pip writes it, for the guest's /usr/bin/python3."""
    module, _, function = target.partition(":")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "#!/usr/bin/python3\n"
        "import sys\n"
        f"from {module} import {function.split('.')[0]}\n"
        f"sys.exit({function}())\n"
    )
    path.chmod(0o755)


def main(root: str, version: str, *wheels: str) -> None:
    site = Path(root, f"usr/local/lib/python{version}/dist-packages")
    site.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        install(Path(wheel), site, Path(root, "usr/local/bin"))


if __name__ == "__main__":
    main(*sys.argv[1:])
