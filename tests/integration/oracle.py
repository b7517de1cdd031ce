"""Oracles nobody here wrote: kernel uprobes through tracefs, and bpftrace.

``KernelUprobes`` defines one tracefs uprobe per site (``PATH:OFFSET(REF)``
with fetch-args derived from the site's SDT spec where the kernel can fetch
the same thing), enables them while a test runs the program, and reads back
hit counts and argument values from the trace buffer.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from uemu import argspec, sdt

TRACEFS = Path("/sys/kernel/tracing")
GROUP = f"uemu_oracle_{os.getpid()}"
"""Our own event group: other tests (and tools) may have uprobe events of their own."""
BUFFER_KB = 8192
"""Our instance's buffer per CPU: room for every event of a test (about 40 bytes each)."""


def tracefs_reason() -> str | None:
    """Why kernel uprobes cannot serve as an oracle here, or None."""
    if not (TRACEFS / "uprobe_events").exists():
        return "tracefs uprobe_events is not available (mount tracefs at /sys/kernel/tracing)"
    if not os.access(TRACEFS / "uprobe_events", os.W_OK):
        return "kernel uprobes need root (tracefs uprobe_events is not writable)"
    return None


def bpftrace_reason() -> str | None:
    if shutil.which("bpftrace") is None:
        return "bpftrace is not installed"
    if os.geteuid() != 0:
        return "bpftrace needs root"
    return None


_KERNEL_REGS = {"rax": "ax", "rbx": "bx", "rcx": "cx", "rdx": "dx", "rsi": "si", "rdi": "di",
                "rbp": "bp", "rsp": "sp", "rip": "ip",
                **{f"r{n}": f"r{n}" for n in range(8, 16)}}


def fetcharg(spec: argspec.ArgSpec, elf: sdt.ElfObject, probe_address: int) -> str | None:
    """The kernel fetch-arg that reads what an x86_64 SDT spec names, or None.

    Floats are fetched as their bit pattern (the kernel has no float type).
    """
    if not spec.parsed or spec.size not in (1, 2, 4, 8):
        return None
    kind = "x" if spec.is_float else ("s" if spec.signed else "u")
    typ = f":{kind}{spec.size * 8}"
    if spec.kind == "reg" and spec.reg in _KERNEL_REGS and not spec.reg_shift:
        return f"%{_KERNEL_REGS[spec.reg]}{typ}"
    if spec.kind == "imm" and spec.symbol is None:
        return f"\\{spec.value}{typ}"
    if spec.kind == "mem" and spec.index is None:
        if spec.symbol is not None:
            # The kernel fetches @+X at (probe VMA start - its file offset) + X: X is the
            # symbol's distance from the text segment's file-offset origin.
            vaddr = elf.symbol_address(spec.symbol, probe_address)
            text = next((seg for seg in elf.segments if seg.executable), None)
            if vaddr is None or text is None:
                return None
            return f"@+{vaddr + spec.offset - (text.p_vaddr - text.p_offset)}{typ}"
        if spec.base in _KERNEL_REGS and spec.base != "rip":
            return f"+{spec.offset}(%{_KERNEL_REGS[spec.base]}){typ}"
    return None


@dataclass(frozen=True)
class KernelSite:
    event: str
    probe: sdt.Probe
    fetched: tuple[int | None, ...]
    """For each argument: its index among the fetch-args, or None when not fetched."""


def sdt_sites(*paths: str) -> list[tuple[sdt.ElfObject, sdt.Probe]]:
    """Every SDT site of some objects (a program and the libraries it loads)."""
    sites = []
    for path in paths:
        elf = sdt.open_elf(path)
        sites += [(elf, probe) for probe in elf.probes]
    return sites


class KernelUprobes:
    """Kernel uprobes on SDT sites, enabled for the duration of a ``with``.

    Their events are enabled in a tracefs instance of their own, whose buffer no
    other user of tracefs clears or fills (tests of other checkouts may run beside)."""

    def __init__(self, sites: Sequence[tuple[sdt.ElfObject, sdt.Probe]], with_args: bool = True):
        self.sites: list[KernelSite] = []
        self.definitions: list[str] = []
        self.instance = f"instances/{GROUP}"
        for index, (elf, probe) in enumerate(sites):
            event = f"s{index}"
            specs = argspec.parse_all(probe.args, "x86_64") if with_args and elf.arch_name == "x86_64" else []
            args, fetched = [], []
            for spec in specs:
                arg = fetcharg(spec, elf, probe.address)
                fetched.append(None if arg is None else len(args))
                if arg is not None:
                    args.append(f"a{len(args)}={arg}")
            ref = f"({probe.semaphore_offset:#x})" if probe.semaphore_offset else ""
            place = f"{os.path.realpath(elf.path)}:{probe.file_offset:#x}{ref}"
            self.definitions.append(f"p:{GROUP}/{event} {place} {' '.join(args)}".rstrip())
            self.sites.append(KernelSite(event, probe, tuple(fetched)))

    def __enter__(self) -> KernelUprobes:
        for definition in self.definitions:
            _append("uprobe_events", definition)
        (TRACEFS / self.instance).mkdir(exist_ok=True)
        _write(f"{self.instance}/buffer_size_kb", str(BUFFER_KB))
        _write(f"{self.instance}/trace", "")
        _write(f"{self.instance}/tracing_on", "1")
        _write(f"{self.instance}/events/{GROUP}/enable", "1")
        return self

    def __exit__(self, *exc: object) -> None:
        _write(f"{self.instance}/events/{GROUP}/enable", "0")
        for site in self.sites:
            _append("uprobe_events", f"-:{GROUP}/{site.event}")
        (TRACEFS / self.instance).rmdir()

    def hits(self) -> Counter[str]:
        """Hits per probe name, summed over its sites: the events in our instance's buffer,
        none of them lost.  Not uprobe_profile's nhit: kernels before its per-CPU counters
        (the guests' 6.1) raise it with a plain ``tu->nhit++``, which hits on two CPUs at
        once can lose (threads: 199 of 200 in the arm64 guest)."""
        lost = sum(_overrun(stats) for stats in (TRACEFS / self.instance / "per_cpu").glob("cpu*/stats"))
        assert lost == 0, f"the kernel's trace buffer dropped {lost} events: make it bigger (BUFFER_KB)"
        return Counter(name for name, _, _ in self.records())

    def records(self) -> list[tuple[str, list[int | None], int]]:
        """(probe name, argument values with None where not fetched, thread) per hit, in order."""
        by_event = {site.event: site for site in self.sites}
        out = []
        for line in (TRACEFS / self.instance / "trace").read_text().splitlines():
            match = _TRACE_LINE.search(line)
            if match is None or match.group(2) not in by_event:
                continue
            site = by_event[match.group(2)]
            values = dict(_ARG.findall(match.group(3)))
            out.append((site.probe.full_name, [
                None if index is None else _number(values[f"a{index}"]) for index in site.fetched
            ], int(match.group(1))))
        return out


_TRACE_LINE = re.compile(r"-(\d+) +\[\d+\] .* (s\d+): \(0x[0-9a-f]+\)(.*)$")
_ARG = re.compile(r"(a\d+)=(\S+)")


def _overrun(stats: Path) -> int:
    """Events a CPU's buffer dropped (its stats file's ``overrun:`` line)."""
    return next((int(line.split()[1]) for line in stats.read_text().splitlines() if line.startswith("overrun:")), 0)


def _number(text: str) -> int:
    return int(text, 16) if text.startswith("0x") else int(text)


def _write(name: str, text: str, flags: int = os.O_TRUNC) -> None:
    """One write(2) to a tracefs file (Python's "a" mode seeks, which tracefs refuses).

    Removing events just disabled can meet EBUSY while the kernel lets go of
    them: retry for a moment.
    """
    for attempt in range(50):
        fd = os.open(TRACEFS / name, os.O_WRONLY | flags)
        try:
            os.write(fd, text.encode())
            return
        except OSError as err:
            if err.errno != errno.EBUSY or attempt == 49:
                raise
        finally:
            os.close(fd)
        time.sleep(0.1)


def _append(name: str, text: str) -> None:
    _write(name, text + "\n", os.O_APPEND)


def bpftrace_counts(binary: str, probes: Sequence[str], argv: Sequence[str]) -> Counter[str]:
    """Hits per ``provider:name`` as bpftrace's usdt probes count them over one run of argv."""
    clauses = " ".join(f'usdt:{binary}:{name} {{ @["{name}"] = count(); }}' for name in probes)
    result = subprocess.run(
        ["bpftrace", "-q", "-e", clauses, "-c", " ".join(argv)],
        capture_output=True, text=True, timeout=120,
    )
    counts: Counter[str] = Counter()
    for name, value in re.findall(r"^@\[(.+)\]: (\d+)$", result.stdout, re.M):
        counts[name] = int(value)
    if not counts and result.returncode != 0:
        raise RuntimeError(f"bpftrace failed: {result.stderr}")
    return counts
