"""What only the traced process can tell the jump path (issue 12), read from outside it.

The vDSO's clock_gettime (the runtime's clock where it cannot read the counter), whether
the kernel keeps time by the CPU's counter (then the runtime reads the counter itself),
whether the runtime may read the thread pointer, a stopped thread's thread pointer (the
key of its slot in the jumps table), and whether a thread found in the vDSO was called
from the jump path's code (leaving must then move it out).  uemu/jumps.py decides with
these; nothing here writes to the process.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from uemu.arch import Arch
from uemu.arch.jump import Counter, ThreadPointerSource

from . import errors, ptrace
from .maps import Vma, vma_at
from .uprobes import Mm

VDSO_FRAME_ROOM = 512
"""Bytes of a thread's stack looked at for the runtime's return address when it is
stopped in the vDSO (clock_gettime's frames are far smaller)."""
_VDSO_CLOCK = ("__vdso_clock_gettime", "__kernel_clock_gettime")
AT_HWCAP2 = 26


def called_from(arch: Arch, regs: Mapping[str, int], stack: bytes, ranges: Sequence[tuple[int, int]]) -> bool:
    """Whether a thread in the vDSO with ``regs`` and ``stack`` (the top of its stack)
    was called from the jump path's code (``ranges``): a register (aarch64's x30,
    riscv64's ra) or a word of the stack (x86) points into it.  Stale words only make
    uemu look closer (uemu/jumpout.py steps such a thread out of the vDSO first); on
    i386 the code's 2 MiB lie among the program's own addresses, and with 600 threads
    parked one had a stale word there in about one leaving in four.  A thread
    interrupted inside a system call the kernel would restart is in a blocking call of
    the program's: the runtime calls only clock_gettime through the vDSO, which never
    blocks, and makes its own system calls with its own instruction.  Stepped, such a
    thread would restart its call with the trap flag, and the step's trap would come
    when the call returns (i386 soak ``parked/attach/600``: a parker in nanosleep killed
    by SIGTRAP after uemu left)."""
    if arch.restarted_syscall(regs):
        return False
    width = arch.word_size
    values = [*regs.values(), *(int.from_bytes(stack[at:at + width], arch.byte_order)
                                for at in range(0, len(stack) - width + 1, width))]
    return any(start <= value < end for value in values for start, end in ranges)


def in_vdso_called_from(mm: Mm, regs: ptrace.Regset, ranges: Sequence[tuple[int, int]]) -> bool:
    """Whether a stopped thread with ``regs`` is in the vDSO, called from the jump path's
    code (``ranges``): ``called_from`` on the top of its stack."""
    return in_vdso(mm, regs[mm.arch.ip_reg]) and stack_called_from(mm, regs.snapshot(), ranges)


def stack_called_from(mm: Mm, regs: Mapping[str, int], ranges: Sequence[tuple[int, int]]) -> bool:
    """``called_from`` on the top of the stack ``regs`` point at (a stopped thread's, or
    those a signal frame saved)."""
    try:
        stack = mm.memory.read(regs[mm.arch.sp_reg], VDSO_FRAME_ROOM)
    except OSError:
        stack = b""
    return called_from(mm.arch, regs, stack, ranges)


def in_vdso(mm: Mm, address: int) -> bool:
    vma = vma_at(mm.vmas, address)
    return vma is not None and vma.path == "[vdso]"


def stack_of(mm: Mm, address: int) -> int | None:
    """The start of the mapping (as uemu last read the maps) that holds stack address
    ``address``: a thread's stack, or an alternate signal stack."""
    vma = vma_at(mm.vmas, address)
    return None if vma is None else vma.start


def vdso_clock(memory: ptrace.Memory, vmas: Sequence[Vma]) -> int:
    """The address of the vDSO's clock_gettime in the process, 0 if none (the runtime
    then makes the system call).  The vDSO is read from the process, never run by uemu."""
    return vdso_symbol(memory, vmas, _VDSO_CLOCK)


def vdso_symbol(memory: ptrace.Memory, vmas: Sequence[Vma], names: Sequence[str]) -> int:
    """The address of the first of ``names`` the process's vDSO defines, 0 if none."""
    vdso = next((v for v in vmas if v.path == "[vdso]"), None)
    if vdso is None:
        return 0
    try:
        elf = ELFFile(io.BytesIO(memory.read(vdso.start, vdso.end - vdso.start)))
        symbols = elf.get_section_by_name(".dynsym")
        base = min(s["p_vaddr"] for s in elf.iter_segments() if s["p_type"] == "PT_LOAD")
        for name in names:
            found = symbols.get_symbol_by_name(name) if isinstance(symbols, SymbolTableSection) else None
            if found:
                return int(vdso.start + found[0]["st_value"] - base)
    except (OSError, ELFError, ValueError, TypeError):
        pass
    return 0


CLOCKSOURCE = "/sys/devices/system/clocksource/clocksource0/current_clocksource"


def counter_of(arch: Arch) -> Counter | None:
    """The CPU's counter the arch's runtime reads, if any."""
    return arch.jumps.counter if arch.jumps is not None else None


def counter_is_the_clock(arch: Arch) -> bool:
    """Whether the kernel keeps time by the counter the arch's runtime can read itself
    (``Counter.clocksource``): then the counter runs alike on every CPU and a record's
    time can be read through it.  Not where /sys cannot say."""
    counter = counter_of(arch)
    if counter is None:
        return False
    try:
        with open(CLOCKSOURCE) as stream:
            return stream.read().strip() == counter.clocksource
    except OSError:
        return False


def thread_pointer_readable(pid: int, arch: Arch) -> bool:
    """Whether the runtime can read the thread pointer without a fault: where the arch
    names an AT_HWCAP2 bit for it (x86_64's rdfsbase), the kernel must have set it."""
    assert arch.jumps is not None, "only an arch with a jump path has a runtime reading it"
    bit = arch.jumps.thread_pointer.hwcap2
    if not bit:
        return True
    try:
        with open(f"/proc/{pid}/auxv", "rb") as stream:
            auxv = stream.read()
    except OSError:
        return False
    width = arch.word_size
    words = [int.from_bytes(auxv[at:at + width], arch.byte_order) for at in range(0, len(auxv) - width + 1, width)]
    return any(key == AT_HWCAP2 and value & bit for key, value in zip(words[::2], words[1::2], strict=False))


def thread_pointer(arch: Arch, tid: int, regs: ptrace.Regset) -> int:
    """The thread pointer of a stopped thread, as the runtime reads it at a hit (where the
    arch says it is: ``ThreadPointer``); 0 when it has none yet or cannot be read."""
    assert arch.jumps is not None, "only an arch with a jump path has a runtime reading it"
    where = arch.jumps.thread_pointer
    try:
        if where.source is ThreadPointerSource.REGISTER:
            return regs[where.register]
        if where.source is ThreadPointerSource.REGSET:
            return int.from_bytes(ptrace.regset_bytes(tid, where.note, arch.word_size), arch.byte_order)
        selector = regs[where.register]
        return ptrace.tls_entry_base(tid, selector >> 3) if selector & 0xFFFC else 0
    except (OSError, errors.UemuError):
        return 0  # running, or gone


