"""Shared fixtures: the sample programs of samples/, built once per test session.

- ``samples``: the default build (x86_64, -O2, PIE), a directory.
- ``sample_build``: every configuration of ``make -C samples matrix``; a test
  taking it runs once per configuration (its id is the configuration's name).
- ``runnable_build``: the configurations this machine can run (x86_64, i386).
- ``jump_build``: those, plus the builds made only so that their SDT sites can
  take the jump path (riscv64 without the C extension: ``riscv64-O2-rv64g``).
- ``uemu``: runs the command line in a fresh interpreter, as users do.
- ``journal_dir``: where uemu keeps its journals during the run (set for every test).

A build skips the test with the reason when make, the configuration's compiler
or its C library is missing, and fails it when the samples then fail to build
(a broken sample is a defect).
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis's limit on the time one example may take (200 ms) is a timed
# assertion: on a loaded machine, or in the emulated test guests (tests/vm), it
# fails examples that are right.  Speed is the benchmarks' business.
settings.register_profile("uemu", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("uemu")

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"

# The compiler each TARGET of samples/Makefile runs (its CC_TARGET).
COMPILERS = {
    "x86_64": "gcc",
    "i386": "gcc",
    "aarch64": "aarch64-linux-gnu-gcc",
    "armhf": "arm-linux-gnueabihf-gcc",
    "ppc64le": "powerpc64le-linux-gnu-gcc",
    "s390x": "s390x-linux-gnu-gcc",
    "riscv64": "riscv64-linux-gnu-gcc",
    "mips64el": "mips64el-linux-gnuabi64-gcc",
}


@dataclass(frozen=True)
class Build:
    """One configuration of samples/Makefile (TARGET, OPT, PIE, MARCH: empty for the compiler's default)."""

    target: str = "x86_64"
    opt: int = 2
    pie: bool = True
    march: str = ""

    @property
    def name(self) -> str:
        return f"{self.target}-O{self.opt}" + ("" if self.pie else "-nopie") + (f"-{self.march}" if self.march else "")

    @property
    def directory(self) -> Path:
        """Where the Makefile puts it: the default build directly in build/."""
        build = SAMPLES_DIR / "build"
        return build if self.name == "x86_64-O2" else build / self.name

    @classmethod
    def parse(cls, name: str) -> Build:
        """The inverse of ``name``: ``riscv64-O2``, ``x86_64-O2-nopie``, ``riscv64-O2-rv64g``."""
        target, opt, *rest = name.split("-")
        pie = "nopie" not in rest
        march = "".join(part for part in rest if part != "nopie")
        return cls(target, int(opt.removeprefix("O")), pie=pie, march=march)

    def elf_files(self) -> list[Path]:
        """Every ELF file of the build (programs, libsdtlib.so, objects), by name."""
        return sorted(p for p in self.directory.iterdir() if p.is_file() and _is_elf(p))


# A machine without compilers (the arm64 and riscv64 test guests) gets its
# builds made elsewhere and names them, first the default, in UEMU_SAMPLE_BUILDS.
# Builds with a MARCH are there for the jump path alone: only its tests run them.
PREBUILT = tuple(Build.parse(name) for name in os.environ.get("UEMU_SAMPLE_BUILDS", "").split())
MATRIX = PREBUILT or (
    *(Build(target, opt) for target in COMPILERS for opt in (0, 2)),
    Build("x86_64", pie=False),
    Build("i386", pie=False),
    Build("riscv64", march="rv64g"),
)
JUMPABLE = PREBUILT or (Build(), Build(opt=0), Build(pie=False), Build("i386"))
RUNNABLE = tuple(build for build in JUMPABLE if not build.march)


def _is_elf(path: Path) -> bool:
    with path.open("rb") as stream:
        return stream.read(4) == b"\x7fELF"


@functools.cache
def _make(build: Build, goal: str) -> subprocess.CompletedProcess[str]:
    """Run make for one configuration; a lock keeps parallel test sessions apart."""
    (SAMPLES_DIR / "build").mkdir(exist_ok=True)
    with open(SAMPLES_DIR / "build" / ".make.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return subprocess.run(
            ["make", "-s", "-j2", "-C", str(SAMPLES_DIR), goal,
             f"TARGET={build.target}", f"OPT={build.opt}", f"PIE={'yes' if build.pie else 'no'}",
             f"MARCH={build.march}"],
            capture_output=True,
            text=True,
            check=False,
        )


def _why(stderr: str) -> str:
    """The lines of a failed build that say what is missing, without make's, directories or positions."""
    said = [re.sub(r"^(\S*/|<stdin>:[\d:]+ )", "", line) for line in stderr.splitlines()
            if re.search(r"error|cannot|not found", line) and not line.startswith(("make", "collect2"))]
    return "; ".join(dict.fromkeys(said)) or stderr.strip()


def _built(build: Build) -> Build:
    if build in PREBUILT:
        return build
    for tool in ("make", COMPILERS[build.target], "dtrace"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: cannot build the {build.name} samples")
    # samples/Makefile's toolchain goal first builds a small program with the
    # configuration's compiler, C library and flags: where that fails this
    # machine lacks a piece (a cross gcc's C library is only recommended), and
    # where the samples fail after it, a sample is broken.
    toolchain = _make(build, "toolchain")
    if toolchain.returncode != 0:
        pytest.skip(f"cannot build the {build.name} samples: {_why(toolchain.stderr)}")
    result = _make(build, "all")
    assert result.returncode == 0, f"make {build.name} failed:\n{result.stdout}{result.stderr}"
    return build


@pytest.fixture(scope="session", autouse=True)
def journal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """uemu's journals (uemu/journal.py) of this test run, in a directory of their own:
    tests kill uemu, and their journals must not mix with those of real uemu runs in
    /run/uemu or of another test run."""
    path = tmp_path_factory.mktemp("journals") / "uemu"
    os.environ["UEMU_JOURNAL_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def samples() -> Path:
    return _built(RUNNABLE[0]).directory


@pytest.fixture(scope="session")
def sample_build(request: pytest.FixtureRequest) -> Build:
    return _built(request.param)


@pytest.fixture(scope="session")
def runnable_build(request: pytest.FixtureRequest) -> Build:
    return _built(request.param)


@pytest.fixture(scope="session")
def jump_build(request: pytest.FixtureRequest) -> Build:
    return _built(request.param)


@pytest.fixture(scope="session")
def uemu() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``uemu("list", path, "--json")``: exit status, stdout and stderr of the CLI.

    ``prefix`` runs it under another command (``setpriv ...``, ``unshare ...``).
    """

    def run(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, sys.executable, "-m", "uemu", *args], capture_output=True, text=True,
                              timeout=60, check=False)

    return run


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for fixture, builds in (("sample_build", MATRIX), ("runnable_build", RUNNABLE), ("jump_build", JUMPABLE)):
        if fixture in metafunc.fixturenames:
            metafunc.parametrize(fixture, builds, ids=lambda b: b.name, indirect=True, scope="session")
