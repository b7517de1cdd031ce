"""PROBE words -> uprobes and consumers in each object a process maps.

Kernel: kernel/trace/trace_uprobe.c turns a ``uprobe_events`` line into a
registration; here each PROBE word (``probespec.py``) is matched against
every object as it appears (at attach, exec and each new mapping) and each
site it selects becomes one consumer of the site's uprobe (``Uprobes.register``).

A word that matches nothing when tracing starts is pending, as gdb's pending
breakpoints are: it is armed in every object mapped later whose probes it
matches (dlopen, exec, children followed with -f), and said at the end if it
never matched.  ``strict`` makes it an error at start instead.  Kernel
uprobes, keyed by inode, see later mappings by construction.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

from . import errors, ldso, probespec, sdt
from .objects import MappedObject
from .probespec import ProbeSpec, RawUprobe, SdtPattern, SymbolUprobe
from .uprobes import Consumer, ProbeInfo, Uprobe, Uprobes, check_offset

Site = tuple[int, int, ProbeInfo]
"""(file offset, ref_ctr_offset, what to report) of one selected site."""


class Selection:
    """The PROBE words of a session and the consumers they made."""

    def __init__(self, words: Sequence[str], uprobes: Uprobes, warn: Callable[[str], None], strict: bool = False):
        self.specs: list[ProbeSpec] = [probespec.parse(text) for text in words]
        self.uprobes = uprobes
        self.warn = warn
        self.strict = strict
        self._consumers: dict[Consumer, None] = {}
        """In the order made; a dict, so that a site's look for its consumers is no walk
        over all of them (10 000 sites: 10^8 steps)."""
        self._seen_files: set[tuple[int, int]] = set()
        self._matched: set[str] = set()
        """Words that selected a site somewhere."""
        self._seen_probes: dict[str, sdt.Probe] = {}
        """One SDT probe per name, of every object registered: the near matches of a pending word."""
        self._scope = "the traced processes"
        """What was traced, for the end-of-run messages."""

    def remove(self, words: Sequence[str]) -> list[Uprobe]:
        """Forget some words; the uprobes left without any consumer."""
        self.specs = [spec for spec in self.specs if spec.text not in words]
        return [u for word in words for u in self.uprobes.unregister(word)]

    def register_object(self, mapped: MappedObject) -> list[Uprobe]:
        """Uprobes for the sites the PROBE words select in one object (once per file)."""
        if mapped.file_id in self._seen_files:
            return self.uprobes.by_file.get(mapped.file_id, [])
        self._seen_files.add(mapped.file_id)
        chosen: dict[tuple[int, int, ProbeInfo, str], None] = {}
        for spec in self.specs or [SdtPattern(None, "*", "*", "*:*")]:
            for offset, ref, info in selected(spec, mapped):
                chosen[offset, ref, info, spec.text] = None
                self._matched.add(spec.text)
        for probe in mapped.elf.probes:
            self._seen_probes.setdefault(probe.full_name, probe)
        uprobes = []
        for offset, ref, info, word in chosen:
            uprobe = self.uprobes.register(mapped, offset, ref, info, word)
            self._consumers.update(dict.fromkeys(uprobe.consumers))
            uprobes.append(uprobe)
        return uprobes

    def check_process(self, objects: Sequence[MappedObject], pid: int) -> None:
        """At attach: each word that matches nothing in the process's objects now
        is pending (said now), or with ``strict`` an error naming the closest probes;
        a raw probe its file cannot hold is an error (``_check_raw``), mapped or not."""
        self._scope = f"process {pid} or anything it mapped while traced"
        for spec in self.specs:
            if any(selected(spec, mapped) for mapped in objects):
                continue
            if not isinstance(spec, SdtPattern) and os.path.isfile(spec.path):
                _check_raw(spec, sdt.open_elf(spec.path))  # not mapped now: as check_spawn
            self._not_yet(spec, [p for m in objects for p in m.elf.probes], f"process {pid}")

    def check_spawn(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        """Before starting anything: each word that can match neither the program,
        its start-up libraries (found as ld.so would, without running anything) nor
        a file it names is pending (said now), or with ``strict`` an error naming the
        closest probes.  A command that is no file, or whose ``#!`` interpreter is
        none, is not looked in: its start fails with the one error line a shell would
        give."""
        candidates = ldso.startup_objects(argv[0], env)
        if not all(os.path.isfile(path) for path in candidates):  # a missing library is left out already
            return
        objects = []
        for path in candidates:
            try:
                objects.append(sdt.open_elf(path))
            except errors.UemuError:
                continue
        where = f"{argv[0]} and its start-up libraries"
        self._scope = f"{argv[0]} or anything it loaded"
        for spec in self.specs:
            named = spec.object if isinstance(spec, SdtPattern) else spec.path
            if named and os.path.isfile(named) and named not in candidates:
                objects.append(sdt.open_elf(named))
            if not any(_file_matches(spec, obj) for obj in objects):
                self._not_yet(spec, [p for o in objects for p in o.probes], where)

    def _not_yet(self, spec: ProbeSpec, probes: Sequence[sdt.Probe], where: str) -> None:
        near = probespec.near_matches(spec, probes) if isinstance(spec, SdtPattern) else []
        if self.strict:
            raise errors.ProbeNotFound(spec.text, near, f"in {where}; a library loaded later (dlopen) is "
                                       "matched only once it is mapped: drop --strict, or name it by path "
                                       "(/path/to/libfoo.so:PROVIDER:NAME) to check it before starting")
        hint = f" (closest: {', '.join(near)})" if near else ""
        self.warn(f"{spec.text!r} matches nothing in {where}{hint}; it stays pending for objects mapped "
                  "later (dlopen, exec, children followed with -f)")

    @property
    def consumers(self) -> list[Consumer]:
        """Every consumer made, in the order made."""
        return list(self._consumers)

    def report_pending(self) -> None:
        """At the end: the words that never matched, with the closest probes seen,
        or that there was nothing at all to trace."""
        if not self.specs and not self.consumers:
            self.warn(f"nothing was traced: no SDT probe in {self._scope}")
        seen = list(self._seen_probes.values())
        for spec in self.specs:
            if spec.text in self._matched:
                continue
            near = probespec.near_matches(spec, seen) if isinstance(spec, SdtPattern) else []
            hint = f"; closest probes seen: {', '.join(near)}" if near else ""
            self.warn(f"{spec.text!r} never matched a probe{hint}")

    def counts(self) -> dict[str, int]:
        """Hits per probe name (``provider:name``) over all its sites."""
        totals: dict[str, int] = {}
        for consumer in self.consumers:
            name = consumer.probe.full_name
            totals[name] = totals.get(name, 0) + consumer.hits
        return totals


def selected(spec: ProbeSpec, mapped: MappedObject) -> list[Site]:
    """The sites ``spec`` selects in ``mapped``."""
    elf = mapped.elf
    if isinstance(spec, SdtPattern):
        return [
            (p.file_offset, p.semaphore_offset or 0, _probe_info(p))
            for p in elf.probes
            if spec.matches(p) and p.file_offset is not None
        ]
    if not _same_file(spec.path, mapped.file_id):
        return []
    offset, ref = _raw_site(spec, elf)
    vaddr = elf.vaddr(offset)
    # Named after what the user wrote: FILE:SYMBOL[+OFF] or FILE:OFFSET, FILE the object's
    # name.  Differs: tracefs names such an event p_STEM_0xOFFSET.  Two words on one
    # address (longjmp, siglongjmp) are two consumers under two names, as in the kernel.
    info = ProbeInfo(elf.path, os.path.basename(spec.path), spec.place, vaddr if vaddr is not None else offset, "")
    return [(offset, ref, info)]


def _raw_site(spec: RawUprobe | SymbolUprobe, elf: sdt.ElfObject) -> tuple[int, int]:
    """The file offset and counter offset ``spec`` names in ``elf``: a symbol it lacks or
    a place outside its code is an error, as bpftrace's attach refuses them."""
    if isinstance(spec, RawUprobe):
        return spec.offset, spec.ref_ctr_offset
    vaddr = elf.symbol_address(spec.symbol)
    if vaddr is None:
        raise errors.ProbeNotFound(spec.text, hint=f"{spec.path} has no symbol {spec.symbol!r}")
    found = elf.file_offset(vaddr + spec.offset, executable=True)
    if found is None:
        raise errors.UprobeError(f"{spec.text}: not in an executable segment")
    return found, 0


def _check_raw(spec: RawUprobe | SymbolUprobe, elf: sdt.ElfObject) -> None:
    """Before anything is registered: ``_raw_site``'s errors, and an offset past the
    file's end, which the uprobe's registration refuses later (``check_offset``)."""
    offset, _ = _raw_site(spec, elf)
    check_offset(elf.path, elf.source or elf.path, offset)


def _probe_info(probe: sdt.Probe) -> ProbeInfo:
    return ProbeInfo(probe.object, probe.provider, probe.name, probe.address, probe.args)


def _same_file(path: str, file_id: tuple[int, int]) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == file_id


def _file_matches(spec: ProbeSpec, obj: sdt.ElfObject) -> bool:
    """Whether ``spec`` selects a site in ``obj``; a raw probe of it that cannot (past its
    end, no such symbol, not in its code) is an error now, not a word pending for ever."""
    if isinstance(spec, SdtPattern):
        return any(spec.matches(p) for p in obj.probes)
    if not (os.path.exists(spec.path) and os.path.samefile(spec.path, obj.source or obj.path)):
        return False
    _check_raw(spec, obj)
    return True
