"""What one try of a scenario found, and the counts per scenario that the soak
prints: runs, targets that died, targets left harmed (bytes or counters that
differ from the file, a wrong result, a system call that returned early or with
a kernel-internal errno), uemu's tracebacks and internal errors, and hangs."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

EXAMPLES = 3
"""Messages kept per column and scenario: enough to start a diagnosis."""


@dataclass
class Outcome:
    """One try.  Each list holds what was seen, one line each; empty is good."""

    died: list[str] = field(default_factory=list)
    """How the target, or a child of it, ended when it should have lived."""
    harmed: list[str] = field(default_factory=list)
    internal: list[str] = field(default_factory=list)
    """uemu's own failures: a traceback, "internal error", an abort of tracing."""
    hangs: list[str] = field(default_factory=list)
    """uemu not leaving when told, or a target that stopped making progress."""
    notes: Counter[str] = field(default_factory=Counter)
    """Facts worth counting that are not harm (exit codes, when the kill landed)."""


COLUMNS = ("died", "harmed", "internal", "hangs")


@dataclass
class Tally:
    scenario: str
    runs: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    """Per column: the tries that saw it."""
    notes: Counter[str] = field(default_factory=Counter)
    examples: dict[str, Counter[str]] = field(default_factory=lambda: {column: Counter() for column in COLUMNS})

    def add(self, outcome: Outcome) -> None:
        self.runs += 1
        for column in COLUMNS:
            seen = getattr(outcome, column)
            if seen:
                self.counts[column] += 1
                self.examples[column].update(_general(message) for message in seen)
        for note, times in outcome.notes.items():
            self.notes[_general(note)] += times

    @property
    def clean(self) -> bool:
        return not +self.counts

    def row(self, width: int) -> str:
        figures = " ".join(f"{self.counts[column]:>8}" for column in COLUMNS)
        return f"{self.scenario:<{width}} {self.runs:>5} {figures}"

    def details(self) -> list[str]:
        """The most frequent messages of each column, then the notes."""
        lines = []
        for column in COLUMNS:
            for message, times in self.examples[column].most_common(EXAMPLES):
                lines.append(f"    {column}: {message}" + (f"  (x{times})" if times > 1 else ""))
            more = len(self.examples[column]) - EXAMPLES
            if more > 0:
                lines.append(f"    {column}: ... and {more} other messages")
        if self.notes:
            lines.append("    notes: " + ", ".join(f"{note} x{n}" for note, n in sorted(self.notes.items())))
        return lines


def _general(message: str) -> str:
    """The same message from another try reads the same: no process ids."""
    return re.sub(r"\bprocess \d+", "process N", message)


def header(width: int) -> str:
    return f"{'scenario':<{width}} {'runs':>5} " + " ".join(f"{column:>8}" for column in COLUMNS)
