#!/usr/bin/env python3
"""Survival counts of traced programs under fault injection on uemu (issue 9).

    python3 tests/soak/soak.py                 # every scenario, nightly counts
    python3 tests/soak/soak.py --short         # a few tries each: under 2 minutes
    python3 tests/soak/soak.py 'kill9/attach/*' --runs 20 --seed 7
    python3 tests/soak/soak.py --list

Prints, per scenario: runs, targets that died, targets left harmed, uemu's
tracebacks and internal errors, and hangs (tests/soak/README.md).  Exits 0
whatever it found (figures, not a verdict), unless --strict.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import detach_load
import kills
import leaving
from tally import Outcome, Tally, header
from target import PREBUILT, Build, adopt_orphans, build_samples

DEFAULT_BUILDS = ",".join(build.name for build in PREBUILT) or "x86_64-O2,i386-O2"
"""The builds made elsewhere (UEMU_SAMPLE_BUILDS, as in the test guests), else these."""


class Scenario(Protocol):
    name: str
    available: str | None
    full: int
    short: int

    def __call__(self, rng: random.Random) -> Outcome: ...


def every_scenario(builds: list[Build]) -> list[Scenario]:
    return [*kills.scenarios(builds), *leaving.scenarios(builds), *detach_load.scenarios(builds)]


def selected(scenarios: Sequence[Scenario], patterns: Sequence[str]) -> list[Scenario]:
    """Glob patterns, or name prefixes (``kill9/attach``)."""
    if not patterns:
        return list(scenarios)
    return [s for s in scenarios if any(fnmatch.fnmatchcase(s.name, p) or s.name.startswith(p) for p in patterns)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("patterns", metavar="SCENARIO", nargs="*", help="glob or prefix of scenario names")
    parser.add_argument("--short", action="store_true", help="a few tries of each (CI: under 2 minutes)")
    parser.add_argument("--runs", type=int, help="tries per scenario, instead of the defaults")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="for the random moments")
    parser.add_argument("--builds", default=DEFAULT_BUILDS, help=f"sample builds (default {DEFAULT_BUILDS})")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any target died or was harmed, "
                        "uemu failed or anything hung")
    parser.add_argument("--list", action="store_true", help="list the scenarios and their default tries")
    args = parser.parse_args(argv)
    builds = [Build.parse(name) for name in args.builds.split(",")]
    chosen = selected(every_scenario(builds), args.patterns)
    if args.list:
        for scenario in chosen:
            print(f"{scenario.name}  (nightly {scenario.full}, short {scenario.short})")
        return 0
    for build in builds:
        build_samples(build)
    adopt_orphans()
    print(f"seed {args.seed}", flush=True)
    tallies = run_all(chosen, lambda s: args.runs if args.runs is not None else (s.short if args.short else s.full),
                      random.Random(args.seed))
    width = max((len(t.scenario) for t in tallies), default=10)
    print("\n" + header(width))
    for tally in tallies:
        print(tally.row(width))
    return 1 if args.strict and not all(t.clean for t in tallies) else 0


def run_all(scenarios: Sequence[Scenario], runs: Callable[[Scenario], int], rng: random.Random) -> list[Tally]:
    """Each scenario's tries, its row and details printed as soon as it is done."""
    tallies = []
    width = max((len(s.name) for s in scenarios), default=10)
    unavailable = sorted({s.available for s in scenarios if s.available})
    for reason in unavailable:
        print(reason)
    for scenario in scenarios:
        count = runs(scenario)
        if scenario.available or count == 0:
            continue
        tally = Tally(scenario.name)
        started = time.monotonic()
        for _ in range(count):
            tally.add(scenario(rng))
            reap_orphans()
        print(f"{tally.row(width)}   ({time.monotonic() - started:.0f} s)", flush=True)
        for line in tally.details():
            print(line, flush=True)
        tallies.append(tally)
    return tallies


def reap_orphans() -> None:
    """Zombies of whatever was orphaned under us in a try (every child of the try is waited for)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


if __name__ == "__main__":
    sys.exit(main())
