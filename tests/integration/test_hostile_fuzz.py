"""Fuzzing, CI's short mode (issue 9 §3): mutated sample ELF files and special
files through ``uemu list``, ``uemu list --json`` and ``uemu run``.

Most inputs run in this process through ``uemu.cli.main`` (an alarm stands
guard against hangs); some as real processes, as users run uemu; ``run``
always as a process, each command also run alone for its own status.  The
goal: 0 tracebacks, 0 hangs, 0 internal errors, every exit status as the
README documents.  soak/fuzz_elf.py runs many more seeds and prints counts;
a failure here names its seed (``--seed`` there repeats it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import elffuzz
import pytest

LIST_SEEDS = range(1200)
LIST_PROCESS_SEEDS = range(100_000, 100_030)
RUN_SEEDS = range(200_000, 200_020)


def builds(samples: Path) -> list[Path]:
    """The default build, and the i386 one when another test has built it."""
    return [samples, *[d for d in (samples / "i386-O2", samples / "i386-O0") if d.is_dir()][:1]]


def check(counts: elffuzz.Counts, title: str) -> None:
    print(counts.report(title))
    assert not counts.problems, counts.report(title)


@pytest.fixture
def no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UEMU_DEBUG", raising=False)  # it turns internal errors into tracebacks


@pytest.mark.usefixtures("no_debug")
def test_list_in_process(samples: Path, tmp_path: Path) -> None:
    """Every input through list and list --json; every tenth through ldso too."""
    corpus = elffuzz.corpus(builds(samples), max_notes=64)
    counts, ldso = elffuzz.Counts(), elffuzz.Counts()
    for seed in LIST_SEEDS:
        item = elffuzz.mutate(corpus[seed % len(corpus)], seed, tmp_path)
        for json in (False, True):
            counts.add(elffuzz.list_in_process(item.path, f"seed {seed}: {item.what}", json))
        if seed % 10 == 0:
            ldso.add(elffuzz.ldso_in_process(item.path, f"seed {seed}: {item.what}"))
        item.path.unlink()
    check(counts, "list in-process")
    check(ldso, "ldso.startup_objects")
    assert counts.inputs == 2 * len(LIST_SEEDS) and counts.codes["5"] > 0 and counts.codes["0"] > 0


@pytest.mark.usefixtures("no_debug")
def test_special_files(tmp_path: Path) -> None:
    counts = elffuzz.Counts()
    for verdict in elffuzz.special_file_verdicts(tmp_path):
        counts.add(verdict)
    check(counts, "special files")


def test_list_as_processes(samples: Path, tmp_path: Path) -> None:
    corpus = elffuzz.corpus(builds(samples), max_notes=64)
    counts = elffuzz.Counts()
    for seed in LIST_PROCESS_SEEDS:
        item = elffuzz.mutate(corpus[seed % len(corpus)], seed, tmp_path)
        counts.add(elffuzz.list_subprocess(item.path, f"seed {seed}: {item.what}", seed % 2 == 0, tmp_path))
    check(counts, "list as processes")


def test_run(samples: Path, tmp_path: Path) -> None:
    """The mutated program as the command: uemu exits with its own status or says why."""
    shutil.copy(samples / "libsdtlib.so", tmp_path)
    counts = elffuzz.Counts()
    for seed in RUN_SEEDS:
        counts.add(elffuzz.run_seed(samples, seed, tmp_path))
    check(counts, "run")


def test_the_judge_sees_failures(tmp_path: Path) -> None:
    """A judge that passes everything would make the tests above assert nothing."""
    hang = elffuzz.Verdict("list", "x", None, hangs=["no end"])
    wrong = elffuzz._judge(elffuzz.Verdict("list", "x", 9), "uemu: internal error: X\nTraceback ...\nX: y",
                           elffuzz.LIST_CODES.__contains__)
    counts = elffuzz.Counts()
    counts.add(hang)
    counts.add(wrong)
    assert counts.problems == {"hangs": 1, "internal": 1, "tracebacks": 1, "undocumented": 1}
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\nexit 3\n")
    script.chmod(0o755)
    verdict = elffuzz.run_subprocess(None, elffuzz.Input(-1, script, script, "script"), [], tmp_path)
    assert verdict.code == 3 and not verdict.failed
