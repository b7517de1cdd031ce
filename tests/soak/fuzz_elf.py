"""Fuzzing uemu with mutated ELF files and special files: counts, not verdicts.

    python3 tests/soak/fuzz_elf.py                      # 20,000 list inputs, 500 run inputs
    python3 tests/soak/fuzz_elf.py --list 100000 --run 2000 --start 1000000
    python3 tests/soak/fuzz_elf.py --seed 231 --only run  # repeat one input (seeds are printed)

The mutator and the judge are integration/elffuzz.py's, shared with CI's
short mode (integration/test_hostile_fuzz.py).  Inputs go through ``uemu list``
and ``uemu list --json`` and ``ldso.startup_objects`` in this process
(``uemu.cli.main``, an alarm against hangs), every ``--every``-th one also as a real process, and through
``uemu run [PROBE] -- FILE`` (always a process, beside the file run alone).
Printed per command: inputs, the exit-code histogram, tracebacks, hangs,
internal errors, exit statuses the README does not document, known failures;
then up to ten examples with their seeds.  The exit status is 0 whatever the
figures say; ``--strict`` makes it 1 when a count but inputs and codes is not 0.
Run from a checkout whose samples build (``make -C samples``, and for i386
``make -C samples TARGET=i386``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import elffuzz  # noqa: E402  (found through the path above)


def _build(target: str) -> Path:
    directory = ROOT / "samples" / "build" / ("" if target == "x86_64" else f"{target}-O2")
    subprocess.run(["make", "-s", "-j2", "-C", str(ROOT / "samples"), f"TARGET={target}"], check=True)
    return directory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", type=int, default=20_000, help="list inputs (each as list and list --json)")
    parser.add_argument("--run", type=int, default=500, help="run inputs")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--seed", type=int, help="one input only, this seed")
    parser.add_argument("--only", choices=("list", "run"), help="one command only")
    parser.add_argument("--every", type=int, default=50, help="run every N-th list input as a process too")
    parser.add_argument("--targets", default="x86_64,i386", help="sample builds to mutate")
    parser.add_argument("--strict", action="store_true", help="exit 1 when anything but inputs is counted")
    args = parser.parse_args()
    os.environ.pop("UEMU_DEBUG", None)

    builds = [_build(target) for target in args.targets.split(",")]
    corpus = elffuzz.corpus(builds)
    seeds = [args.seed] if args.seed is not None else None
    work = Path(tempfile.mkdtemp(prefix="uemu-fuzz-"))
    shutil.copy(builds[0] / "libsdtlib.so", work)
    print(f"corpus: {len(corpus)} files from {', '.join(map(str, builds))}; work in {work}", flush=True)
    reports = []
    try:
        if args.only in (None, "list"):
            reports.append(_list(corpus, seeds or range(args.start, args.start + args.list), args.every, work))
            reports.append(_special(work))
        if args.only in (None, "run"):
            reports.append(_run(builds[0], seeds or range(args.start, args.start + args.run), work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(report for report, _ in reports))
    return 1 if args.strict and any(failed for _, failed in reports) else 0


def _list(corpus: list[elffuzz.Layout], seeds: range | list[int], every: int, work: Path) -> tuple[str, bool]:
    in_process, as_process, ldso = elffuzz.Counts(), elffuzz.Counts(), elffuzz.Counts()
    started = time.monotonic()
    for n, seed in enumerate(seeds):
        item = elffuzz.mutate(corpus[seed % len(corpus)], seed, work)
        what = f"seed {seed}: {item.what}"
        for json in (False, True):
            in_process.add(elffuzz.list_in_process(item.path, what, json))
        ldso.add(elffuzz.ldso_in_process(item.path, what))
        if n % every == 0:
            as_process.add(elffuzz.list_subprocess(item.path, what, seed % 2 == 0, work))
        item.path.unlink()
        if n and n % 2000 == 0:
            print(f"  list: {n} inputs, {time.monotonic() - started:.0f} s", flush=True)
    report = "\n".join((in_process.report("list in-process"), as_process.report("list as processes"),
                        ldso.report("ldso.startup_objects")))
    print(report, flush=True)
    return report, bool(in_process.problems or as_process.problems or ldso.problems)


def _special(work: Path) -> tuple[str, bool]:
    counts = elffuzz.Counts()
    for verdict in elffuzz.special_file_verdicts(work):
        counts.add(verdict)
    report = counts.report("special files (list, list --json, run)")
    print(report, flush=True)
    return report, bool(counts.problems)


def _run(build: Path, seeds: range | list[int], work: Path) -> tuple[str, bool]:
    counts = elffuzz.Counts()
    started = time.monotonic()
    for n, seed in enumerate(seeds):
        counts.add(elffuzz.run_seed(build, seed, work))
        if n and n % 100 == 0:
            print(f"  run: {n} inputs, {time.monotonic() - started:.0f} s", flush=True)
    report = counts.report("run")
    print(report, flush=True)
    return report, bool(counts.problems)


if __name__ == "__main__":
    sys.exit(main())
