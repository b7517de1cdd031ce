"""The PROBE words users type: SDT globs and the kernel's uprobe_events form.

- ``[OBJECT:]PROVIDER:NAME`` globs, as bpftrace's ``usdt:`` and ``uemu list``
  (OBJECT matches a path or a basename);
- ``PATH:OFFSET[(REF_CTR_OFFSET)]``, the kernel's ``uprobe_events`` place,
  parsed as ``__trace_uprobe_create()`` does (numbers by ``kstrtoul(s, 0)``);
- ``PATH:SYMBOL[+OFFSET]``.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from . import errors
from .sdt import Probe


class ProbeName(Protocol):
    """What a glob looks at: a probe of a note, or the event of its hit."""

    @property
    def object(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class SdtPattern:
    """A glob over SDT probes."""

    object: str | None
    provider: str
    name: str
    text: str

    def matches(self, probe: ProbeName) -> bool:
        if self.object is not None and not (
            fnmatch.fnmatchcase(probe.object, self.object)
            or fnmatch.fnmatchcase(os.path.basename(probe.object), self.object)
        ):
            return False
        return fnmatch.fnmatchcase(probe.provider, self.provider) and fnmatch.fnmatchcase(probe.name, self.name)


@dataclass(frozen=True)
class RawUprobe:
    """A probe at a file offset, as tracefs takes it: ``PATH:OFFSET(REF_CTR_OFFSET)``."""

    path: str
    offset: int
    ref_ctr_offset: int
    text: str

    @property
    def place(self) -> str:
        """OFFSET(REF) as the word wrote it: what its hits are named."""
        return self.text[len(self.path) + 1 :]


@dataclass(frozen=True)
class SymbolUprobe:
    """A probe at ``SYMBOL+OFFSET`` in an object; resolved to a file offset later."""

    path: str
    symbol: str
    offset: int
    text: str

    @property
    def place(self) -> str:
        """SYMBOL[+OFFSET] as the word wrote it: what its hits are named."""
        return self.text[len(self.path) + 1 :]


ProbeSpec = SdtPattern | RawUprobe | SymbolUprobe


def kstrtoul(text: str) -> int:
    """Parse a number as the kernel's ``kstrtoul(s, 0)``: 0x hex, leading 0 octal."""
    if not text or not text[0].isdigit():
        raise ValueError(text)
    if text[:2].lower() == "0x":
        return int(text[2:], 16)
    if text.startswith("0") and len(text) > 1:
        return int(text[1:], 8)
    return int(text, 10)


_SYMBOL = re.compile(r"^([A-Za-z_.$][\w.$@]*)(?:\+(\w+))?$")


def parse(text: str) -> ProbeSpec:
    """Classify one PROBE word.

    A word whose object part contains ``/`` and whose last field starts with a
    digit is a kernel-style place (tracefs requires ``/`` in PATH and a digit
    first in OFFSET); with a symbol there instead, it is ``PATH:SYMBOL+OFF``.
    Anything else is an SDT glob.
    """
    head, sep, tail = text.rpartition(":")
    if sep and "/" in head and tail:
        if tail[0].isdigit():
            return _parse_raw(text, head, tail)
        match = _SYMBOL.match(tail)
        if match and head.count(":") == 0 and not _looks_like_glob(tail):
            offset = _number(text, match.group(2)) if match.group(2) else 0
            return SymbolUprobe(head, match.group(1), offset, text)
    parts = text.rsplit(":", 2)
    if len(parts) == 3:
        return SdtPattern(parts[0] or None, parts[1] or "*", parts[2] or "*", text)
    if len(parts) == 2:
        return SdtPattern(None, parts[0] or "*", parts[1] or "*", text)
    return SdtPattern(None, "*", parts[0], text)


def _looks_like_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _parse_raw(text: str, path: str, place: str) -> RawUprobe:
    ref_ctr_offset = 0
    if "(" in place:
        # tracefs parses the (REF) group first; it must close and end the word.
        offset_text, _, ref_text = place.partition("(")
        if not ref_text.endswith(")"):
            if ")" in ref_text:
                raise errors.BadInput(f"{text}: Reference counter has wrong suffix")
            raise errors.BadInput(f"{text}: Reference counter brace is not closed")
        ref_ctr_offset = _number(text, ref_text[:-1], "Invalid reference counter offset")
    else:
        offset_text = place
    offset = _number(text, offset_text, "Invalid uprobe offset")
    return RawUprobe(path, offset, ref_ctr_offset, text)


def _number(text: str, field: str, what: str = "Invalid offset") -> int:
    try:
        return kstrtoul(field)
    except ValueError:
        raise errors.BadInput(f"{text}: {what}") from None


def select(probes: Iterable[Probe], patterns: list[SdtPattern]) -> list[Probe]:
    """The probes any pattern matches, in input order; every pattern must match
    something, or ProbeNotFound names the closest probes."""
    probes = list(probes)
    if not patterns:
        return probes
    chosen = []
    for probe in probes:
        if any(p.matches(probe) for p in patterns):
            chosen.append(probe)
    for pattern in patterns:
        if not any(pattern.matches(p) for p in probes):
            raise errors.ProbeNotFound(pattern.text, near_matches(pattern, probes))
    return chosen


def near_matches(pattern: SdtPattern, probes: Iterable[Probe], limit: int = 3) -> list[str]:
    names = sorted({p.full_name for p in probes})
    wanted = f"{pattern.provider}:{pattern.name}"
    near = difflib.get_close_matches(wanted, names, n=limit, cutoff=0.5)
    if not near:
        # A glob such as "*tick" is far from every name as a string; compare the name part too.
        by_name = difflib.get_close_matches(pattern.name, [n.split(":", 1)[1] for n in names], n=limit, cutoff=0.5)
        near = [n for n in names if n.split(":", 1)[1] in by_name][:limit]
    return near
