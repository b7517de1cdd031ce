"""The sample programs themselves: they build, run, and say true things.

These tests check the corpus uemu is tested against, not uemu: each sample's
own lines (samples/README.md) must agree with its notes as ``readelf`` shows
them, and, where kernel uprobes are at hand, with what the kernel sees when
every site of the sample is probed.  A sample whose expectations are wrong
would make every uemu test built on it wrong.  Builds come from the conftest
fixtures (``runnable_build``, ``sample_build``).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Self

import pytest
from oracle import TRACEFS, _append, tracefs_reason
from samplelog import Line, parse
from test_readelf_oracle import Note, Readelf, readelf

from uemu import argspec, sdt

if TYPE_CHECKING:
    from conftest import Build

INTERFERENCE = "another tracefs user deleted our uprobe events (O_TRUNC on uprobe_events) during the test"


@dataclass(frozen=True)
class Sample:
    """How to run one sample, and what kernel uprobes are known to do with it."""

    name: str
    args: tuple[str, ...] = ()
    libraries: tuple[str, ...] = ()
    """Other objects in the build directory whose probes the sample passes."""
    x86_64_only: bool = False
    x86_probes: frozenset[str] = frozenset()
    """Probes of x86 builds (x86_64 and i386) alone: hand-written x86 after them."""
    refused: frozenset[str] = frozenset()
    """Probes the kernel refuses to arm: no hit lines, no kernel hits."""
    kernel_differs: frozenset[str] = frozenset()
    """Probes whose ``result`` lines kernel uprobes get wrong (README, known quirks)."""
    kernel_oracle: bool = True
    """False where probing every site would burden everyone sharing tracefs."""

    @property
    def id(self) -> str:
        return "-".join((self.name, *self.args))

    def runs_on(self, build: Build) -> bool:
        return build.target == "x86_64" or not self.x86_64_only


SAMPLES = (
    Sample("basic"),
    Sample("multisite"),
    Sample("argforms"),
    Sample("sema"),
    Sample("linked", libraries=("libsdtlib.so",)),
    Sample("dlopen", libraries=("libsdtlib.so",)),
    Sample("fork"),
    Sample("exec"),
    Sample("exec", ("2", "thread")),
    Sample("threads"),
    Sample("signals"),
    Sample("bench", ("1000",), x86_probes=frozenset({"bench:evict"})),
    Sample("longrun", ("2", "5", "100")),
    Sample("manysites", kernel_oracle=False),
    Sample("asmprobes", x86_64_only=True),
    Sample(
        "insns",
        x86_64_only=True,
        refused=frozenset({"insns:refused_lock"}),
        kernel_differs=frozenset({"insns:riprel_vex"}),
    ),
    Sample("evict", x86_64_only=True),
)


# ---------------------------------------------------------------- notes


def probe_of(note: Note) -> str:
    return f"{note.provider}:{note.name}"


def notes_by_probe(paths: list[Path]) -> dict[str, list[Note]]:
    notes: dict[str, list[Note]] = {}
    for path in paths:
        for note in readelf(path).notes:
            notes.setdefault(probe_of(note), []).append(note)
    return notes


def file_offset(view: Readelf, vaddr: int) -> int:
    offsets = [segment.file_offset(vaddr) for segment in view.segments]
    [offset] = [offset for offset in offsets if offset is not None]
    return offset


_SIZED = re.compile(r"(-?)(\d+)(f?)@")


def fits(value: str, spec: str) -> bool:
    """Whether a printed value is one the spec's ``[-]N[f]@`` prefix allows."""
    sized = _SIZED.match(spec)
    if sized is None:
        return re.fullmatch(r"\d+", value) is not None  # no size: an unsigned word
    signed, size, real = sized.group(1) == "-", int(sized.group(2)), sized.group(3) == "f"
    if real:
        return re.fullmatch(r"-?\d+(\.\d+)?", value) is not None
    number, bits = int(value), 8 * size
    if signed:
        return -(1 << (bits - 1)) <= number < 1 << (bits - 1)
    return 0 <= number < 1 << bits


# ---------------------------------------------------------------- output

KINDS = {"hit", "hits", "sema", "text", "sync", "child", "signal", "result", "time", "block"}


def run(directory: Path, sample: Sample) -> list[Line]:
    """Runs the sample untraced; every line of its output must be one of KINDS."""
    env = {k: v for k, v in os.environ.items() if k not in ("SAMPLE_OUT", "SAMPLE_SYNC")}
    result = subprocess.run(
        [str(directory / sample.name), *sample.args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = parse(result.stdout)
    assert len(lines) == len(result.stdout.splitlines()), result.stdout
    assert {line.kind for line in lines} <= KINDS
    return lines


def hit_counts(lines: list[Line]) -> Counter[str]:
    """Hits per probe the sample says a tracer must see."""
    counts: Counter[str] = Counter()
    for line in lines:
        if line.kind == "hit":
            counts[line.word] += 1
        elif line.kind == "hits" and line.word != "none":
            counts[line.word] += int(line.values[0])
    return counts


def results(lines: list[Line], skip: frozenset[str]) -> list[tuple[str, tuple[str, ...]]]:
    return [(line.word, line.values) for line in lines if line.kind == "result" and line.word not in skip]


def for_build(build: Build, sample: Sample) -> Path:
    """The build's directory, or a skip where the sample is not built for its target."""
    if not sample.runs_on(build):
        pytest.skip(f"{sample.name} is built for x86_64 only")
    return build.directory


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda sample: sample.id)
def test_untraced_output_agrees_with_notes(runnable_build: Build, sample: Sample) -> None:
    """Each hit line fits some site of its probe (argument count, size, sign);
    semaphores exist and read 0 untraced; counted probes exist."""
    directory = for_build(runnable_build, sample)
    notes = notes_by_probe([directory / obj for obj in (sample.name, *sample.libraries)])
    arch = sdt.open_elf(str(directory / sample.name)).arch_name
    lines = run(directory, sample)

    for line in lines:
        if line.kind == "hit":
            specs = [[spec.raw for spec in argspec.parse_all(note.args, arch)] for note in notes[line.word]]
            assert any(
                len(spec) == len(line.values) and all(map(fits, line.values, spec)) for spec in specs
            ), f"{line} matches no note of {line.word}: {specs}"
        elif line.kind == "sema":
            assert any(note.semaphore for note in notes[line.word]), f"{line.word} has no semaphore"
            assert line.values[1] == "0", f"{line}: raised although nothing traces the sample"
        elif line.kind == "hits" and line.word != "none":
            assert line.word in notes


def test_manysites_passes_each_of_its_sites(runnable_build: Build) -> None:
    """Stands in for the kernel oracle, which manysites skips: one note per
    index, and the program passes as many sites as there are notes."""
    directory = runnable_build.directory
    notes = readelf(directory / "manysites").notes
    [hits] = [line for line in run(directory, Sample("manysites")) if line.kind == "hits"]

    arch = sdt.open_elf(str(directory / "manysites")).arch_name
    constants = sorted(argspec.parse(note.args, arch).value for note in notes)
    assert constants == list(range(len(notes)))  # -4@$N on x86, -4@N elsewhere
    assert (hits.word, hits.values) == ("many:site", (str(len(notes)),))
    assert len(notes) == 10000


def test_every_build_has_the_same_probes(samples: Path, sample_build: Build) -> None:
    """Every target and optimisation level keeps every probe name (sites may
    differ: inlining and unrolling depend on the compiler)."""
    objects = {sample.name for sample in SAMPLES if sample.runs_on(sample_build)} | {"libsdtlib.so"}
    x86 = sample_build.target in ("x86_64", "i386")
    for obj in sorted(objects):
        native = set(notes_by_probe([samples / obj]))
        native -= set() if x86 else {p for s in SAMPLES if s.name == obj for p in s.x86_probes}
        assert set(notes_by_probe([sample_build.directory / obj])) == native, obj


# ------------------------------------------------------- kernel oracle


@dataclass
class KernelProbes:
    """Kernel uprobes (with their reference counters) on every site of some
    objects, recorded in a trace instance of our own so that nothing else
    using tracefs is disturbed."""

    objects: list[Path]
    group: str = field(default_factory=lambda: f"uemu_samples_{os.getpid()}")
    events: dict[str, str] = field(default_factory=dict)
    """Event name -> probe."""

    @property
    def instance(self) -> Path:
        return TRACEFS / "instances" / self.group

    def intact(self) -> bool:
        """Whether all our events still exist: anyone writing uprobe_events
        with O_TRUNC (a shell's ">") deletes every group, ours included."""
        defined = (TRACEFS / "uprobe_events").read_text()
        return len(re.findall(rf"^p:{self.group}/", defined, re.MULTILINE)) == len(self.events)

    def __enter__(self) -> Self:
        try:
            for path in self.objects:
                view = readelf(path)
                for note in view.notes:
                    counter = f"(0x{file_offset(view, note.semaphore):x})" if note.semaphore else ""
                    event = f"e{len(self.events)}"
                    _append("uprobe_events", f"p:{self.group}/{event} {path}:0x{file_offset(view, note.pc):x}{counter}")
                    self.events[event] = probe_of(note)
            self.instance.mkdir()
            (self.instance / "buffer_size_kb").write_text("8192")
            (self.instance / "events" / self.group / "enable").write_text("1")
        except OSError:
            interfered = not self.intact()
            self.__exit__()
            if interfered:
                pytest.skip(INTERFERENCE)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Each step may find our events already deleted (see intact).
        with contextlib.suppress(OSError):
            (self.instance / "events" / self.group / "enable").write_text("0")
        with contextlib.suppress(FileNotFoundError):
            self.instance.rmdir()
        for event in self.events:
            with contextlib.suppress(FileNotFoundError):
                _append("uprobe_events", f"-:{self.group}/{event}")

    def hits(self, tids: set[int]) -> Counter[str]:
        """Hits per probe made by the given threads; every probe is a key."""
        counts = Counter({probe: 0 for probe in self.events.values()})
        for match in re.finditer(r"-(\d+)\s+\[\d+\][^\n]*? (e\d+): \(", (self.instance / "trace").read_text()):
            if int(match.group(1)) in tids:
                counts[self.events[match.group(2)]] += 1
        return counts


@pytest.mark.oracle
@pytest.mark.skipif(tracefs_reason() is not None, reason=str(tracefs_reason()))
@pytest.mark.parametrize("sample", [s for s in SAMPLES if s.kernel_oracle], ids=lambda sample: sample.id)
def test_kernel_uprobes_see_what_the_sample_says(runnable_build: Build, sample: Sample) -> None:
    """With every site probed (semaphores raised by the kernel): hits per probe
    equal the sample's lines, every probe is reached but the refused ones,
    every semaphore reads non-zero, and results are as untraced."""
    directory = for_build(runnable_build, sample)
    untraced = run(directory, sample)
    with KernelProbes([directory / obj for obj in (sample.name, *sample.libraries)]) as kernel:
        traced = run(directory, sample)
        seen = kernel.hits({line.tid for line in traced})
        if not kernel.intact():
            pytest.skip(INTERFERENCE)

    expected = hit_counts(traced)
    probes = seen.keys() | expected.keys()
    assert {probe: seen[probe] for probe in probes} == {probe: expected[probe] for probe in probes}
    assert sorted(probe for probe in seen if seen[probe] == 0) == sorted(sample.refused)
    assert [line for line in traced if line.kind == "sema" and line.values[1] == "0"] == []
    assert results(traced, sample.kernel_differs) == results(untraced, sample.kernel_differs)
