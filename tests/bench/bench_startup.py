"""What noticing new mappings costs a whole command, start-up included.

    python3 tests/bench/bench_startup.py [--repeat N] [--java JAVA]

Each command runs untraced, under `uemu run --count --mappings=rendezvous`
and under `uemu run --count` (the default mode, seccomp), interleaved; the
table gives the medians of --repeat rounds (after one warm-up round) of the
wall time and of the CPU time of the command and uemu together, and the
ratios.  The commands:

  java -version          the JVM's start-up: 445 mapping syscalls, most of
                         them on anonymous memory (skipped without a JDK)
  samples/dlopen         a library with probes loaded, split by mprotect,
                         unloaded and loaded again
  samples/syscalls 2e5   200 anonymous mmap/munmap pairs among 400 000 syscalls

Issue 11's goal: `java -version` in the default mode within 1.3x of the same
under rendezvous.  uemu runs as `python -m uemu` with this interpreter; to
measure another checkout, run its interpreter from outside any checkout
(`-m` puts the working directory first on the path):
`cd / && /other/.venv/bin/python /this/tests/bench/bench_startup.py`.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_hits import interleaved  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "build"
MODES = {
    "untraced": [],
    "rendezvous": [sys.executable, "-m", "uemu", "run", "--count", "-o", os.devnull, "--mappings=rendezvous", "--"],
    "seccomp": [sys.executable, "-m", "uemu", "run", "--count", "-o", os.devnull, "--"],
}


class Command:
    """One command's runs: wall time returned, CPU time kept beside it."""

    def __init__(self, argv: list[str]):
        self.argv = argv
        self.cpu: dict[str, list[float]] = {mode: [] for mode in MODES}

    def run(self, mode: str) -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([*MODES[mode], *self.argv], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu[mode].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        return wall

    def cpu_median(self, mode: str) -> float:
        return statistics.median(self.cpu[mode][1:])  # the first is the warm-up round's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--java", default=shutil.which("java"), help="the java launcher (default: java on PATH)")
    args = parser.parse_args()
    if not (SAMPLES / "dlopen").exists():
        sys.exit(f"build the samples first: make -C {ROOT / 'samples'}")
    commands = {
        "samples/dlopen": Command([str(SAMPLES / "dlopen")]),
        "samples/syscalls 200000": Command([str(SAMPLES / "syscalls"), "200000"]),
    }
    if args.java:
        commands = {"java -version": Command([args.java, "-version"]), **commands}
    else:
        print("java -version: skipped, no java on PATH (--java JAVA)")
    print(f"medians of {args.repeat} interleaved rounds; CPU: the command and uemu together")
    for name, command in commands.items():
        walls = interleaved({mode: functools.partial(command.run, mode) for mode in MODES}, args.repeat)
        base_wall, base_cpu = walls["untraced"], command.cpu_median("untraced")
        assert base_wall is not None
        print(name)
        for mode in MODES:
            wall, cpu = walls[mode], command.cpu_median(mode)
            assert wall is not None
            print(f"  {mode:11} {wall:7.3f} s wall {_ratio(wall, base_wall)}   {cpu:7.3f} s CPU {_ratio(cpu, base_cpu)}")
        seccomp, rendezvous = walls["seccomp"], walls["rendezvous"]
        assert seccomp is not None and rendezvous is not None
        print(f"  seccomp / rendezvous: {_ratio(seccomp, rendezvous)} wall, "
              f"{_ratio(command.cpu_median('seccomp'), command.cpu_median('rendezvous'))} CPU")


def _ratio(value: float, base: float) -> str:
    return f"{value / base:6.2f}x" if base > 0 else "     -"


if __name__ == "__main__":
    main()
