"""Wall time of ``uemu list FILE`` beside ``readelf -n FILE``, and where it goes.

    python3 tests/bench/bench_list.py [FILE] [--runs N] [--profile]

FILE defaults to OpenJDK 17's libjvm.so (24 MB, 531 SDT sites); the target is
at most 0.1 s wall for the command.  Printed, each the median of --runs:

- ``uemu list`` as a command (the installed console script, run by its own
  interpreter, so no pyenv shim is counted) and as ``python -m uemu``;
- ``uemu list`` in-process (``cli.main``, imports already done): the work itself;
- ``readelf -n`` on the same file, and the ratios;
- the parts of the command's time: a bare interpreter start (``-c pass``,
  with site), ``import uemu.cli`` and its heaviest imports (``-X importtime``);
- with --profile, cProfile's top functions of one in-process listing.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

LIBJVM = "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so"
TARGET_SECONDS = 0.1


def median_seconds(run: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def command(argv: list[str]) -> Callable[[], object]:
    return lambda: subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)


def in_process(path: str) -> Callable[[], object]:
    from uemu import cli

    def run() -> None:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            assert cli.main(["list", path]) == 0

    return run


def console_script() -> list[str]:
    """The installed ``uemu`` script under its own interpreter (skipping any shim)."""
    script = Path(sysconfig.get_path("scripts")) / "uemu"
    return [sys.executable, str(script)] if script.exists() else [sys.executable, "-m", "uemu"]


def import_times(top: int) -> list[tuple[float, str]]:
    """(cumulative seconds, module) of the heaviest imports under ``import uemu.cli``."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import uemu.cli"],
                            capture_output=True, text=True, check=True)
    rows = []
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cumulative, name = line.split("|")
            rows.append((int(cumulative) / 1e6, name.rstrip()))
    return sorted(rows, reverse=True)[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", nargs="?", default=LIBJVM)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--profile", action="store_true", help="cProfile one in-process listing")
    args = parser.parse_args()
    if not os.path.exists(args.file):
        parser.error(f"{args.file} does not exist")
    if shutil.which("readelf") is None:
        parser.error("readelf (binutils) is not installed")

    from uemu import sdt

    sites = len(sdt.open_elf(args.file).probes)
    print(f"{args.file}: {os.path.getsize(args.file) / 1e6:.1f} MB, {sites} SDT sites; median of {args.runs} runs")
    script = console_script()
    readelf = median_seconds(command(["readelf", "-n", args.file]), args.runs)
    figures = {
        "uemu list (console script)": median_seconds(command([*script, "list", args.file]), args.runs),
        "uemu list (python -m uemu)": median_seconds(command([sys.executable, "-m", "uemu", "list", args.file]),
                                                     args.runs),
        "uemu list (in-process)": median_seconds(in_process(args.file), args.runs),
    }
    print(f"  {'readelf -n':34} {readelf * 1e3:8.1f} ms")
    for name, seconds in figures.items():
        print(f"  {name:34} {seconds * 1e3:8.1f} ms   {seconds / readelf:6.1f} x readelf")
    wall = figures["uemu list (console script)"]
    verdict = "within" if wall <= TARGET_SECONDS else "OVER"
    print(f"  target: {TARGET_SECONDS * 1e3:.0f} ms wall for the command: {verdict}")

    print("where the command's time goes:")
    bare = median_seconds(command([sys.executable, "-c", "pass"]), args.runs)
    print(f"  {'interpreter start (with site)':34} {bare * 1e3:8.1f} ms")
    print("  heaviest imports of 'import uemu.cli' (cumulative; indented: imported by a module above):")
    for seconds, module in import_times(top=14):
        print(f"  {seconds * 1e3:8.1f} ms  {module}")

    if args.profile:
        profile = cProfile.Profile()
        run = in_process(args.file)
        profile.runcall(run)
        report = io.StringIO()
        pstats.Stats(profile, stream=report).sort_stats("cumulative").print_stats(15)
        print(report.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
