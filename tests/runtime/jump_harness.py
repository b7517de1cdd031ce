"""The jump path in unicorn: a jumped site, its trampoline and the committed blob's
hit_entry, run as the CPU would run them, with the runtime's system calls carried out
by runtime_harness.FakeKernel and its records read back by uemu.ring and uemu.fetch.

A ``JumpMachine`` is a ``Machine`` (the area, the net installed) plus the jump path's
table (uemu.jumptable.JumpTable, as uemu writes it), a ring mapped at ``RING`` and
mirrored into a bytearray for ``uemu.ring.Ring``, and a way to jump a site and run
through it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import NamedTuple

from runtime_harness import PAGE, STACK, STACK_SIZE, TEXT, Machine
from unicorn import UC_HOOK_CODE, UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE, Uc, UcError
from unicorn import arm64_const as a64
from unicorn import riscv_const as rv
from unicorn import x86_const as x86

from uemu import argspec
from uemu.arch.jump import NoJump, SiteJump
from uemu.fetch import FetchProgram, compile_args
from uemu.jumptable import JumpTable
from uemu.ring import Ring, mapped_size
from uemu.runtime import layout

RING = 0xA00000
NEAR = TEXT + 0x40000
"""Trampolines within reach of the sites of aarch64 and riscv64 (±128 MiB, ±1 MiB)."""
RING_SIZE = 16 * PAGE
SMALL = layout.JumpCapacities(jump_sites=64, fetch_ops=256, tp_slots=64)
PID, TID = 4242, 4242


class RawRecord(NamedTuple):
    """One record as ``Ring.take`` and ``Ring.headers`` tell it: its header, and where it is."""

    id: int
    pid: int
    tid: int
    ts_ns: int
    offset: int


def unicorn_registers(arch: str) -> dict[str, int]:
    """Every register a hit frame holds, by its regset name, as unicorn names it."""
    if arch == "x86_64":
        names = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", *(f"r{n}" for n in range(8, 16)))
        return {**{name: getattr(x86, f"UC_X86_REG_{name.upper()}") for name in names},
                "eflags": x86.UC_X86_REG_EFLAGS}
    if arch == "i386":
        names = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp")
        return {**{name: getattr(x86, f"UC_X86_REG_{name.upper()}") for name in names},
                "eflags": x86.UC_X86_REG_EFLAGS}
    if arch == "aarch64":
        return {**{f"x{n}": getattr(a64, f"UC_ARM64_REG_X{n}") for n in range(31)}, "pstate": a64.UC_ARM64_REG_NZCV}
    from uemu.arch import by_name

    return {name: getattr(rv, f"UC_RISCV_REG_{name.upper()}") for name in by_name(arch).jumps.frame.slots if name}


_FLAG_BITS = {"x86_64": 0xCD5, "i386": 0xCD5, "aarch64": 0xF0000000}
"""Flags a program can set (x86 CF PF AF ZF SF DF OF; arm64 NZCV)."""


@dataclass
class Jumped:
    site: SiteJump
    program: FetchProgram
    index: int
    trampoline: int


class JumpMachine:
    def __init__(self, arch: str, *, drop: bool = False, thread_pointer: bool = False, clock: int = 0,
                 counter: bool = False, syscall_clock: bool = False):
        """``counter``: the runtime reads the CPU's counter (x86's TSC), whose value is
        ``self.counter``; ``syscall_clock``: the flag that forbids the vDSO's clock."""
        self.m = Machine(arch)
        self.m.install()
        self.m.kernel.clock_ns = time.monotonic_ns()  # the clock the ring's heartbeat is on
        self.arch = self.m.arch
        self.uc = self.m.uc
        self.cpu = self.m.cpu
        self.kernel = self.m.kernel
        self.jumps = self.arch.jumps
        self.uc.mem_map(RING, PAGE + mapped_size(RING_SIZE), UC_PROT_READ | UC_PROT_WRITE)
        self.uc.mem_write(RING, Ring.initial(RING_SIZE, drop))
        self.buffer = bytearray(PAGE + mapped_size(RING_SIZE))
        self._refresh()
        self.ring = Ring(self.buffer, RING, sync=self._push)
        self.table = JumpTable(self.arch, self.m.base, self.m.memory, SMALL)
        flags = layout.JumpsFlags(0)
        if thread_pointer:
            flags |= layout.JumpsFlags.THREAD_POINTER
        if counter:
            flags |= layout.JumpsFlags.COUNTER
            self._hook_counter()
        if syscall_clock:
            flags |= layout.JumpsFlags.SYSCALL_CLOCK
        self.table.install(pid=PID, ring=RING, clock=clock, flags=flags)
        self.table.set_state(layout.JumpsState.ON)
        self.next_trampoline = self.m.base + layout.TRAMP_OFF
        self.programs: dict[int, FetchProgram] = {}
        self.registers = unicorn_registers(arch)

    def _hook_counter(self) -> None:
        """The runtime's read of the counter gives ``self.counter`` (unicorn's rdtsc is
        the host's): its rdtsc is replaced as uemu does after a fault (arch.jump.Counter)."""
        assert self.arch.jumps is not None and self.arch.jumps.counter is not None
        counter = self.arch.jumps.counter
        at = self.m.base + self.m.net.blob.read_counter
        self.counter = 0
        self.counter_reads = 0
        self.counter_step = 0
        """Counts the counter moves on after each read (a thread slow between two)."""

        def read(uc: Uc, address: int, *_: object) -> None:
            self.counter_reads += 1
            low, high = counter.result_regs
            uc.reg_write(self.registers[low], self.counter & 0xFFFF_FFFF)
            uc.reg_write(self.registers[high], self.counter >> 32)
            uc.reg_write(self.cpu.ip, address + counter.insn_len)
            self.counter += self.counter_step

        self.uc.hook_add(UC_HOOK_CODE, read, None, at, at)

    def _refresh(self) -> bytearray:
        self.buffer[:] = self.uc.mem_read(RING, len(self.buffer))
        return self.buffer

    def _push(self) -> None:
        self.uc.mem_write(RING, bytes(self.buffer))

    # -- sites --------------------------------------------------------------------------
    def jump(self, address: int, code: bytes, args: str = "", *, ident: int | None = None,
             strings: tuple[int, ...] = (), strsize: int = 0, resolve: argspec.SymbolAddress | None = None,
             arm: bool = True, counted: bool = False) -> Jumped:
        """Put ``code`` at ``address`` as the program's, choose its jump, write the site's
        table entry, its trampoline (in the area, or at the pun target) and the jump.
        ``counted``: the site's hits only count (uemu --count)."""
        self.m.memory.write(address, code)
        plan = self.arch.backend.analyze(code.ljust(16, b"\0"), address)
        site = self.jumps.choose(plan, code.ljust(16, b"\0"))
        assert not isinstance(site, NoJump), site.why
        if site.target is not None:
            trampoline = site.target
            page = trampoline & -PAGE
            if not any(start <= page <= end for start, end, _ in self.uc.mem_regions()):
                self.uc.mem_map(page, 2 * PAGE, UC_PROT_READ | UC_PROT_EXEC)
        else:
            low, high = site.reach
            if not low <= self.next_trampoline < high:  # far from the area: a page near the site
                self.next_trampoline = NEAR
                if not any(start <= NEAR <= end for start, end, _ in self.uc.mem_regions()):
                    self.uc.mem_map(NEAR, 4 * PAGE, UC_PROT_READ | UC_PROT_EXEC)
            trampoline = self.next_trampoline
            self.next_trampoline += self.jumps.tramp_size
        program = compile_args(args, self.arch, self.jumps.frame, resolve, little_endian=True,
                               strings=strings, strsize=strsize)
        ident = len(self.programs) + 1 if ident is None else ident
        self.programs[ident] = program
        index = self.table.take_index()
        assert index is not None
        self.table.set_site(index, site.vaddr, ident, program, self.ring.take_counter() if counted else None)
        code_bytes = self.jumps.trampoline(site, trampoline, index, self.m.base + self.m.net.blob.hit_entry)
        assert code_bytes is not None and len(code_bytes) <= self.jumps.tramp_size
        self.m.memory.write(trampoline, code_bytes)
        jump = self.jumps.jump_bytes(site, trampoline)
        if arm:
            orig = self.m.memory.read(site.at, len(jump))
            self.m.net.add_site(site.at, orig, jump, 5)
            self.m.memory.write(site.at, jump)
        return Jumped(site, program, index, trampoline)

    # -- running ------------------------------------------------------------------------
    def random_registers(self, rng: random.Random) -> dict[str, int]:
        mask = (1 << (8 * self.arch.word_size)) - 1
        values = {name: rng.getrandbits(64) & mask for name in self.registers}
        if "eflags" in values:
            values["eflags"] = 0x202 | (values["eflags"] & _FLAG_BITS["x86_64"])
        if "pstate" in values:
            values["pstate"] &= _FLAG_BITS["aarch64"]
        if self.arch.name == "riscv64":
            values["gp"] = values["gp"] & ~0xFFF  # any value; kept distinct
        return values

    def run(self, start: int, until: int, regs: dict[str, int], sp: int = STACK + STACK_SIZE - 4096,
            count: int = 2_000_000) -> dict[str, int]:
        """Run from ``start`` until pc reaches ``until``; the registers then."""
        for name, value in regs.items():
            self.uc.reg_write(self.registers[name], value)
        self.uc.reg_write(self.cpu.sp, sp)
        try:
            self.uc.emu_start(start, until, count=count)
        except UcError as err:
            raise AssertionError(f"fault at {self.uc.reg_read(self.cpu.ip):#x}: {err}") from None
        assert self.uc.reg_read(self.cpu.ip) == until, f"stopped at {self.uc.reg_read(self.cpu.ip):#x}"
        out = {name: self.uc.reg_read(reg) for name, reg in self.registers.items()}
        out["sp"] = self.uc.reg_read(self.cpu.sp)
        return out

    def hit(self, jumped: Jumped, regs: dict[str, int] | None = None, **kwargs: object) -> dict[str, int]:
        """Run through a jumped nop: from the site to where its trampoline returns."""
        return self.run(jumped.site.vaddr, jumped.site.resume, regs or {}, **kwargs)

    def set_thread_pointer(self, tp: int) -> bool:
        """The thread pointer the runtime reads (x86_64: the fs base, rdfsbase enabled);
        False where it is not emulated here (i386: a %gs descriptor)."""
        if self.arch.name == "x86_64":
            self.uc.reg_write(x86.UC_X86_REG_CR4, self.uc.reg_read(x86.UC_X86_REG_CR4) | 1 << 16)
            self.uc.reg_write(x86.UC_X86_REG_FS_BASE, tp)
        elif self.arch.name == "aarch64":
            self.uc.reg_write(a64.UC_ARM64_REG_TPIDR_EL0, tp)
        elif self.arch.name == "riscv64":
            self.uc.reg_write(rv.UC_RISCV_REG_TP, tp)
        return self.arch.name != "i386"

    # -- the ring -----------------------------------------------------------------------
    def take(self, final: bool = False) -> list[tuple[RawRecord, list[argspec.Value], dict[int, bytes]]]:
        """The records finished, decoded; their room is given back at once."""
        self._refresh()
        out = []
        offsets = self.ring.take(final)
        for header, offset in zip(self.ring.headers(offsets), offsets, strict=True):
            record = RawRecord(*header, offset)
            args, strings = self.programs[record.id].decode(self.buffer, record.offset)
            out.append((record, args, strings))
        self.ring.release()
        self._push()
        return out

    def counts(self) -> tuple[int, ...]:
        self._refresh()
        return self.ring.counts()

    def ring_header(self) -> layout.RingHeader:
        self._refresh()
        return self.ring.header()


def text_nop(arch: str) -> bytes:
    return {"x86_64": b"\x90", "i386": b"\x90", "aarch64": bytes.fromhex("1f2003d5"),
            "riscv64": (0x13).to_bytes(4, "little")}[arch]


SITE = TEXT + 0x100
