"""What a tracer may have left in a live process, judged against the files on
disk and the program's own lines, never against the tracer's records: every
executable mapping compared byte for byte with its file, each semaphore the
sample printed read back, and any anonymous executable mapping (an XOL area).

Used by tests/integration/test_survival.py, the jump path's tests and the soak
scripts (tests/soak/).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from samplelog import Line
from tracee import tracer_pid

from uemu.maps import Vma, read_maps

PAGE = os.sysconf("SC_PAGE_SIZE")


UEMU_AREA = "/memfd:uemu-net (deleted)"
"""uemu's own area (its in-target runtime), no file of the program: after uemu's death
it stays mapped, inert, as the kernel's [uprobes] area stays (README: reliability)."""


def text_differences(pid: int) -> list[str]:
    """Where an executable file mapping's bytes differ from its file: the file as
    mapped (``/proc/PID/map_files``, right even if the path was replaced since),
    memory through ``/proc/PID/mem``; one line per mapping, at its first difference."""
    found = []
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for vma in read_maps(pid):
            if vma.executable and vma.file_backed and vma.path != UEMU_AREA:
                found += _mapping_differences(pid, mem, vma)
    return found


def _mapping_differences(pid: int, mem: BinaryIO, vma: Vma) -> list[str]:
    try:
        with open(f"/proc/{pid}/map_files/{vma.start:x}-{vma.end:x}", "rb") as file:
            file.seek(vma.offset)
            expected = file.read(vma.end - vma.start)
    except FileNotFoundError:
        return []  # unmapped meanwhile
    for page in range(vma.start, vma.end, PAGE):
        want = expected[page - vma.start:page - vma.start + PAGE]
        if not want:
            break  # past the end of the file: nothing to compare
        try:
            mem.seek(page)
            have = mem.read(len(want))
        except OSError:
            continue  # past the end of a file cut short: the page cannot be read
        if have != want:
            at = next(i for i, (a, b) in enumerate(zip(have, want, strict=False)) if a != b)
            return [f"{vma.path}+{vma.vaddr_to_offset(page + at):#x} ({page + at:#x}): "
                    f"file {want[at:at + 4].hex()}, memory {have[at:at + 4].hex()}"]
    return []


def left_clean(pid: int) -> None:
    """No tracer, no mapping of uemu's (area, ring, landing pages), every text its file's."""
    assert tracer_pid(pid) == 0
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "/memfd:uemu-" not in maps, maps
    assert anonymous_code(pid) == [], "a landing page is left"
    assert text_differences(pid) == []


def anonymous_code(pid: int) -> list[Vma]:
    """Executable mappings backed by no file: what an XOL area looks like.  No name, or
    ``[heap]``: the kernel names so any mapping between start_brk and brk, and the XOL
    area, put right after the program's image, lands at start_brk when ASLR put the
    break there and the program has not moved it yet (i386, about 1 run in 50)."""
    return [vma for vma in read_maps(pid)
            if vma.executable and not vma.file_backed and vma.path in ("", "[heap]")]


def semaphores(lines: Sequence[Line]) -> dict[str, int]:
    """Probe name -> semaphore address, from the sample's ``sema`` lines."""
    return {line.word: int(line.values[0]) for line in lines if line.kind == "sema"}


def counters_off(pid: int, addresses: dict[str, int], expected: int = 0) -> list[str]:
    """The semaphores that do not read ``expected`` (no tracer: 0)."""
    off = []
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for name, address in addresses.items():
            mem.seek(address)
            value = int.from_bytes(mem.read(2), sys.byteorder)
            if value != expected:
                off.append(f"{name} semaphore at {address:#x} reads {value}, not {expected}")
    return off


def turns(pid: int, lines: Sequence[Line]) -> int:
    """samples/survival's count of its threads' turns (its ``counter`` line):
    grows while the program runs through its probe sites."""
    [address] = [int(line.values[0]) for line in lines if line.kind == "counter"]
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(address)
        return int.from_bytes(mem.read(4), sys.byteorder)


def harm(pid: int, lines: Sequence[Line]) -> list[str]:
    """Everything left behind in a live process: text and counters."""
    return text_differences(pid) + counters_off(pid, semaphores(lines))
