"""Reading what a sample says about itself (samples/README.md: "What a sample prints"),
and running samples under uemu with that output captured."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from uemu.events import Event
from uemu.session import Session


@dataclass(frozen=True)
class Line:
    kind: str
    pid: int
    tid: int
    word: str
    values: tuple[str, ...]


def parse(text: str) -> list[Line]:
    """The complete lines of ``text``.  A line read while the sample writes it may be
    cut short: one write(2) is atomic for other writers, not for a reader of the
    file, which can see it up to a page boundary.  A line counts once its newline
    is there."""
    lines = []
    for raw in text.split("\n")[:-1]:
        fields = raw.split(" ")
        if len(fields) >= 3 and fields[1].isdigit():
            lines.append(Line(fields[0], int(fields[1]), int(fields[2]), fields[3] if len(fields) > 3 else "",
                              tuple(fields[4:])))
    return lines


def expected_hits(lines: Sequence[Line]) -> list[tuple[str, tuple, int]]:
    """(probe, argument values, thread) per ``hit`` line, in order."""
    return [(line.word, tuple(_value(v) for v in line.values), line.tid) for line in lines if line.kind == "hit"]


def reported_hits(events: Sequence[Event]) -> list[tuple[str, tuple, int]]:
    return [(f"{e.provider}:{e.name}", tuple(e.args or ()), e.tid) for e in events]


def json_hits(path: Path) -> list[tuple[str, tuple, int]]:
    """(probe, argument values, thread) per event of a ``--json`` output file."""
    hits = []
    for line in path.read_text().splitlines():
        event = json.loads(line)
        hits.append((f"{event['provider']}:{event['name']}", tuple(event["args"]), event["tid"]))
    return hits


def per_probe(hits: Sequence[tuple]) -> dict[tuple[str, int], list[tuple]]:
    """Hits grouped by probe and thread, in order: each thread passes its probes in
    a fixed order, threads interleave freely.  Hits without a thread (an oracle's)
    share thread 0."""
    grouped: dict[tuple[str, int], list[tuple]] = {}
    for name, values, *tid in hits:
        grouped.setdefault((name, tid[0] if tid else 0), []).append(values)
    return grouped


def counts(hits: Sequence[tuple]) -> Counter[str]:
    return Counter(hit[0] for hit in hits)


def _value(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


@dataclass
class Run:
    events: list[Event]
    lines: list[Line]
    exit_status: int | None
    session: Session


def run_traced(argv: Sequence[str | Path], probes: Sequence[str] = (), **session_options) -> Run:
    """Run a sample under ``Session.spawn`` and collect its events and its own lines."""
    with tempfile.NamedTemporaryFile("r", prefix="sample-") as out:
        env = dict(os.environ, SAMPLE_OUT=out.name)
        session = Session(probes, **session_options)
        events: list[Event] = []
        session.spawn([str(a) for a in argv], env=env)
        session.run(events.append)
        return Run(events, parse(out.read()), session.exit_status, session)


def run_untraced(argv: Sequence[str | Path]) -> tuple[list[Line], int]:
    with tempfile.NamedTemporaryFile("r", prefix="sample-") as out:
        env = dict(os.environ, SAMPLE_OUT=out.name)
        result = subprocess.run([str(a) for a in argv], env=env, stdout=subprocess.DEVNULL)
        return parse(out.read()), result.returncode
