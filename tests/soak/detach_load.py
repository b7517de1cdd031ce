#!/usr/bin/env python3
"""Detach under load (issue 9 §2): test_detach_while_threads_run_through_slots
run again and again with two busy loops beside it, as a loaded 2-CPU machine.

    python3 tests/soak/detach_load.py            # 200 runs of every build's tests
    python3 tests/soak/detach_load.py --runs 5 --builds x86_64-O2,i386-O2

Prints pass and fail counts per test and every distinct failure message with
how often it came.  Also a scenario of soak.py (``detach-load/...``).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from tally import Outcome
from target import ROOT, Build

TEST = "tests/integration/test_xol.py::test_detach_while_threads_run_through_slots"
ENDS = ("jump", "step")
PYTEST_TIMEOUT = 900


@contextmanager
def busy_loops(count: int = 2) -> Iterator[None]:
    """``count`` shell loops spinning beside the tests, ended by their own ids."""
    loops = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(count)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def run_tests(builds: Sequence[str] | None, ends: Sequence[str] = ENDS) -> dict[str, str | None]:
    """One pytest run: test id -> None when it passed, else its failure's first line.
    ``builds`` None: every runnable build and both slot ends (as ``-k`` selects them)."""
    selection = ([f"{TEST}[{build}-{end}]" for build in builds for end in ends] if builds is not None
                 else ["tests/integration/test_xol.py", "-k", "test_detach_while_threads_run_through_slots"])
    with tempfile.NamedTemporaryFile(suffix=".xml") as report:
        try:
            subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "--junitxml", report.name, *selection], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=PYTEST_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            return {"(the pytest run)": f"timed out waiting for pytest ({PYTEST_TIMEOUT} s)"}
        results: dict[str, str | None] = {}
        for case in ElementTree.parse(report.name).iter("testcase"):
            problem = case.find("failure")
            if problem is None:
                problem = case.find("error")
            results[case.get("name", "?")] = None if problem is None else _first_line(problem)
        return results


def _first_line(problem: ElementTree.Element) -> str:
    message = problem.get("message") or (problem.text or "").strip()
    return message.splitlines()[0] if message else "(no message)"


def classify(message: str, outcome: Outcome) -> None:
    """Put one failure in the soak's columns."""
    if "ended with signal" in message:
        outcome.died.append(message)
    elif "ended with status" in message:  # it ran past a sync it waits at: a blocking read returned
        outcome.harmed.append(message)
    elif "internal error" in message or "Traceback" in message:
        outcome.internal.append(message)
    elif "timed out" in message:
        outcome.hangs.append(message)
    elif "assert [" in message or "executable_maps" in message or "differences" in message:
        outcome.harmed.append(message)
    else:
        outcome.notes[f"other failure: {message}"] += 1


@dataclass(frozen=True)
class DetachLoad:
    """Each try: one pytest run of the detach tests, two busy loops beside it."""

    builds: tuple[str, ...] | None
    full: int
    short: int
    ends: tuple[str, ...] = ENDS
    available = None

    @property
    def name(self) -> str:
        if self.builds is None:
            return "detach-load/all-builds"
        return f"detach-load/{','.join(self.builds)}/{','.join(self.ends)}"

    def __call__(self, rng: random.Random) -> Outcome:
        outcome = Outcome()
        with busy_loops():
            results = run_tests(self.builds, self.ends)
        for test, message in results.items():
            outcome.notes[f"{'passed' if message is None else 'failed'} {test}"] += 1
            if message is not None:
                classify(f"{test}: {message}", outcome)
        return outcome


def scenarios(builds: Sequence[Build]) -> list[DetachLoad]:
    """Nightly every build's tests; short, the first build's jump slots (x86_64-O2 by default)."""
    return [DetachLoad(None, full=200, short=0), DetachLoad((builds[0].name,), full=0, short=1, ends=("jump",))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--builds", help="comma-separated sample builds (default: every runnable one)")
    args = parser.parse_args(argv)
    builds = tuple(args.builds.split(",")) if args.builds else None
    passed: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    for run in range(1, args.runs + 1):
        with busy_loops():
            results = run_tests(builds)
        for test, message in results.items():
            (passed if message is None else failed)[test] += 1
            if message is not None:
                messages[f"{test}: {message}"] += 1
        print(f"run {run}: {sum(m is None for m in results.values())} passed, "
              f"{sum(m is not None for m in results.values())} failed", flush=True)
    print(f"\n{'test':<60} {'passed':>7} {'failed':>7}")
    for test in sorted(set(passed) | set(failed)):
        print(f"{test:<60} {passed[test]:>7} {failed[test]:>7}")
    print("\nfailures:" if messages else "\nno failures")
    for message, times in messages.most_common():
        print(f"  {times:>4} x {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
