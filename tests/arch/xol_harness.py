"""Differential harness: one instruction run in unicorn twice, in place and the way uemu runs it.

In place: the instruction at the probe address A, one step.  As uemu: what the arch backend
decided at A, either emulated (``backend.emulate``) or copied by ``prepare_xol`` to a slot at
another address, run ("step": one instruction; "trap": until the trap instruction the slot
ends in raises, which must sit at slot + size; "jump": until ip comes back to A + size), and
fixed up by ``finish_xol`` (``abort_xol`` when the slot faults).  Both runs start from the same
registers and memory; all general registers, ip, flags, vector or float registers and the
memory around A and the stack are compared afterwards.

The per-arch facts about unicorn, the assemblers and capstone live in ``MACHINES``: another
backend is tested by adding its row (and a corpus).  Where keystone cannot assemble an arch
(RISC-V), corpora are assembled with binutils at test time, or skipped when it is missing.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import capstone
import keystone
import pytest
import unicorn
from elftools.elf.elffile import ELFFile
from unicorn import arm64_const, riscv_const, x86_const

from uemu.arch import by_name
from uemu.arch.base import Backend, Emulate, Plan, Refuse, StepOutOfLine

PAGE = 0x1000
DATA_SIZE = 0x40000
"""Mapped around A: the code, rip-relative targets, what pointer registers point at."""
STACK_SIZE = 0x10000


@dataclass(frozen=True)
class Raw:
    """An instruction given as bytes, where keystone cannot assemble it (or assembles something
    else), with the mnemonic capstone must decode it as."""

    hex: str
    mnemonic: str


@dataclass(frozen=True)
class Machine:
    """How unicorn, keystone and capstone name one arch, and where its addresses may go."""

    arch: str
    """uemu's arch name (``uemu.arch.by_name``)."""
    bits: int
    unicorn_mode: tuple[int, int]
    keystone_mode: tuple[int, int] | None
    """None where keystone cannot assemble the arch: ``gas`` does."""
    capstone_mode: tuple[int, int]
    registers: Mapping[str, int]
    """Backend register name -> unicorn id, for every register handed to the backend."""
    compared_only: Mapping[str, int]
    """Registers compared but not handed to the backend (vector and float registers)."""
    flags_reg: str | None
    """The register conditions test, if the arch has one."""
    flag_states: tuple[int, ...]
    """Values of the flags register that, between them, make every condition true and false."""
    padding: bytes
    """What follows the instruction: one that faults, so unicorn's look-ahead stops right there."""
    highest_site: int
    """Probe addresses are drawn below this."""
    far_offset: int
    """Distance of the far slot: out of every relative reach (more than 4 GiB on x86_64)."""
    near_window: int
    """The near slot lies within this distance past ``near_start``, so that relative reach holds."""
    trap_mnemonics: frozenset[str]
    """How capstone names the breakpoint instruction(s)."""
    nops: tuple[Raw, ...]
    """Every nop form of the arch: each must be emulated."""
    refused: tuple[str, ...]
    """Encodings (hex) the backend must refuse."""
    compared_bits: int = 128
    """Width of the ``compared_only`` registers."""
    cpu_setup: Mapping[int, int] = field(default_factory=dict)
    """unicorn register id -> value, written once before any run (control registers)."""
    alignment: int = 1
    """Instructions start at multiples of this."""
    near_start: int = 0x200000
    """Distance from the site's page to the first near slot."""
    gas: tuple[str, ...] = ()
    """binutils assembler command, for arches keystone lacks."""
    gas_lines: Callable[[str], str] | None = None
    """The assembler source for one instruction (its ``.option`` lines and the text)."""

    def assembler(self) -> keystone.Ks:
        return keystone.Ks(*self.keystone_mode)

    def disassembler(self) -> capstone.Cs:
        return capstone.Cs(*self.capstone_mode)


def _registers(constants: ModuleType, names: Sequence[str]) -> dict[str, int]:
    """Backend register name -> unicorn id, ``UC_<ARCH>_REG_<NAME>`` of a unicorn constants module."""
    prefix = {x86_const: "UC_X86_REG_", arm64_const: "UC_ARM64_REG_", riscv_const: "UC_RISCV_REG_"}[constants]
    return {name: getattr(constants, prefix + name.upper()) for name in names}


# Every combination of CF, PF, ZF, SF and OF, with the always-set bit 1.
_X86_FLAG_STATES = tuple(
    0x2 | sum(bit for index, bit in enumerate((0x1, 0x4, 0x40, 0x80, 0x800)) if combo >> index & 1)
    for combo in range(32)
)

_X86_NOPS = (
    Raw("90", "nop"),
    Raw("6690", "nop"),
    Raw("0f1f00", "nop"),
    Raw("0f1f4000", "nop"),
    Raw("0f1f440000", "nop"),
    Raw("660f1f440000", "nop"),
    Raw("0f1f8000000000", "nop"),
    Raw("0f1f840000000000", "nop"),
    Raw("660f1f840000000000", "nop"),
    Raw("66660f1f840000000000", "nop"),
    Raw("6666660f1f840000000000", "nop"),
    Raw("666666666666660f1f840000000000", "nop"),
    Raw("f390", "pause"),
    Raw("6490", "nop"),
    Raw("f30f1efb", "endbr32"),
)
_X86_HLT = b"\xf4" * 16
_X86_REFUSED = ("f0830001", "2e8b00", "8ed0", "cc", "f4", "ec", "fa")


_A64_GPRS = [f"x{n}" for n in range(31)]
_RISCV_GPRS = ["ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1", *(f"a{n}" for n in range(8)),
               *(f"s{n}" for n in range(2, 12)), "t3", "t4", "t5", "t6"]


def _riscv_gas_lines(text: str) -> str:
    """norelax keeps ``.+N`` targets in the bytes; rvc only for the explicit ``c.`` forms, so
    that ``addi`` stays four bytes."""
    return f".option {'rvc' if text.startswith('c.') else 'norvc'}\n{text}\n"


MACHINES: dict[str, Machine] = {
    "x86_64": Machine(
        arch="x86_64",
        bits=64,
        unicorn_mode=(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64),
        keystone_mode=(keystone.KS_ARCH_X86, keystone.KS_MODE_64),
        capstone_mode=(capstone.CS_ARCH_X86, capstone.CS_MODE_64),
        registers=_registers(x86_const,
            ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", *(f"r{n}" for n in range(8, 16)),
             "rip", "eflags"]),
        compared_only=_registers(x86_const, [f"xmm{n}" for n in range(16)]),
        flags_reg="eflags",
        flag_states=_X86_FLAG_STATES,
        padding=_X86_HLT,
        highest_site=1 << 46,
        far_offset=5 << 30,
        near_window=1 << 30,
        trap_mnemonics=frozenset({"int3"}),
        nops=(*_X86_NOPS, Raw("4890", "nop"), Raw("0f1f0510000000", "nop"), Raw("f30f1efa", "endbr64")),
        refused=(*_X86_REFUSED, "c5f1efc0", "06"),
    ),
    "i386": Machine(
        arch="i386",
        bits=32,
        unicorn_mode=(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32),
        keystone_mode=(keystone.KS_ARCH_X86, keystone.KS_MODE_32),
        capstone_mode=(capstone.CS_ARCH_X86, capstone.CS_MODE_32),
        registers=_registers(x86_const, ["eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eip", "eflags"]),
        compared_only=_registers(x86_const, [f"xmm{n}" for n in range(8)]),
        flags_reg="eflags",
        flag_states=_X86_FLAG_STATES,
        padding=_X86_HLT,
        highest_site=0x7000_0000,
        far_offset=1 << 31,
        near_window=1 << 28,
        trap_mnemonics=frozenset({"int3"}),
        nops=_X86_NOPS,
        refused=(*_X86_REFUSED, "17", "ce"),
    ),
    "aarch64": Machine(
        arch="aarch64",
        bits=64,
        unicorn_mode=(unicorn.UC_ARCH_ARM64, unicorn.UC_MODE_ARM),
        keystone_mode=(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN),
        capstone_mode=(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM),
        # The backend reads NZCV from "pstate"; unicorn's NZCV register holds just those bits.
        registers={**_registers(arm64_const, [*_A64_GPRS, "sp", "pc"]), "pstate": arm64_const.UC_ARM64_REG_NZCV},
        compared_only=_registers(arm64_const, [f"q{n}" for n in range(32)]),
        flags_reg="pstate",
        flag_states=tuple(nzcv << 28 for nzcv in range(16)),
        padding=bytes(16),  # udf #0
        highest_site=1 << 46,
        far_offset=5 << 30,  # past b's ±128 MiB
        near_window=1 << 26,
        trap_mnemonics=frozenset({"brk"}),
        nops=(Raw("1f2003d5", "nop"), Raw("1f2403d5", "bti"), Raw("5f2403d5", "bti"), Raw("9f2403d5", "bti"),
              Raw("df2403d5", "bti")),
        # brk #0, brk #5, svc, hlt, eret, retaa, msr nzcv, mrs daif, yield, wfe, autiasp, ldxr, stxr,
        # ldaxp, casp, ldr/ldrsw/prfm (literal), ldr s9 (literal), cpyp
        refused=("000020d4", "a00020d4", "010000d4", "000040d4", "e0039fd6", "ff0b5fd6", "00421bd5",
                 "20423bd5", "3f2003d5", "5f2003d5", "bf2303d5", "207c5fc8", "207c02c8", "40847fc8",
                 "207c2048", "00020058", "00020098", "000200d8", "0902001c", "2004021d"),
        alignment=4,
    ),
    "riscv64": Machine(
        arch="riscv64",
        bits=64,
        unicorn_mode=(unicorn.UC_ARCH_RISCV, unicorn.UC_MODE_RISCV64),
        keystone_mode=None,
        capstone_mode=(capstone.CS_ARCH_RISCV, capstone.CS_MODE_RISCV64 | capstone.CS_MODE_RISCVC),
        registers=_registers(riscv_const, [*_RISCV_GPRS, "pc"]),
        compared_only=_registers(riscv_const, [f"f{n}" for n in range(32)]),
        compared_bits=64,
        cpu_setup={riscv_const.UC_RISCV_REG_MSTATUS: 0x6000},  # FS dirty: the F and D instructions run
        flags_reg=None,
        flag_states=(0,),
        padding=bytes(16),  # c.unimp
        highest_site=1 << 37,  # Sv39 user space
        far_offset=5 << 30,  # past jal's ±1 MiB
        near_start=0x40000,  # below the stack, so that the near slot stays within 1 MiB
        near_window=0x80000,
        trap_mnemonics=frozenset({"c.ebreak", "ebreak"}),
        nops=(Raw("0100", "c.nop"), Raw("13000000", "nop")),
        # ecall, ebreak, c.ebreak, frrm, rdcycle, fence, fence.i, pause, a 48-bit encoding
        refused=("73000000", "73001000", "0290", "f3252000", "732500c0", "0f00f00f", "0f100000",
                 "0f000001", "1f000000"),
        alignment=2,
        gas=("riscv64-linux-gnu-as", "-march=rv64gc"),
        gas_lines=_riscv_gas_lines,
    ),
}


@dataclass(frozen=True)
class Layout:
    """Where things are for one instruction: A, its data, the stack and two slots."""

    site: int
    data: int
    stack: int
    far_slot: int
    near_slot: int

    @classmethod
    def random(cls, machine: Machine, rng: random.Random) -> Layout:
        """A random probe address (any byte offset in its page) and slots far and near."""
        page = rng.randrange(DATA_SIZE, machine.highest_site) & -PAGE
        slot_size = by_name(machine.arch).backend.slot_size
        slot_offset = rng.randrange(PAGE // slot_size) * slot_size
        near = page + machine.near_start + (rng.randrange(machine.near_window) & -PAGE)
        far = page + machine.far_offset + (rng.randrange(1 << 24) & -PAGE)
        site = page + (rng.randrange(PAGE - 32) & -machine.alignment)
        return cls(site=site, data=page - DATA_SIZE // 2,
                   stack=page + 0x100000, far_slot=far + slot_offset, near_slot=near + slot_offset)

    def slots(self) -> dict[str, int]:
        return {"far": self.far_slot, "near": self.near_slot}


@dataclass(frozen=True)
class Outcome:
    """The state after one run: whether it faulted, the registers, the memory regions."""

    faulted: bool
    registers: Mapping[str, int]
    memory: tuple[bytes, bytes]
    broken: str = ""
    """Why the run cannot stand for the tracer's at all (a "trap" slot that never trapped)."""


@dataclass
class Report:
    """What the harness found for a set of instructions."""

    runs: int = 0
    completed: int = 0
    """Runs where the in-place instruction did not fault."""
    refused: int = 0
    ends: set[str] = field(default_factory=set)
    """How the uemu runs ended: "emulate", and the XolSetup.ends values seen."""
    mismatches: list[str] = field(default_factory=list)


class Rig:
    """One unicorn machine with a layout mapped; runs one instruction from many states."""

    def __init__(self, machine: Machine, layout: Layout, rng: random.Random):
        self.machine = machine
        self.layout = layout
        self.ip_reg = by_name(machine.arch).ip_reg
        self.word = machine.bits // 8
        self.uc = unicorn.Uc(*machine.unicorn_mode)
        self.uc.mem_map(layout.data, DATA_SIZE)
        self.uc.mem_map(layout.stack, STACK_SIZE)
        for slot in layout.slots().values():
            self.uc.mem_map(slot & -PAGE, PAGE)
        # Memory full of words that point back into the data region, so that loaded pointers,
        # indirect branches and ret land on mapped memory.
        self.data_image = self._pointer_image(rng, DATA_SIZE)
        self.stack_image = self._pointer_image(rng, STACK_SIZE)
        self.register_ids = {**machine.registers, **machine.compared_only}
        for register_id, value in machine.cpu_setup.items():
            self.uc.reg_write(register_id, value)
        self.code_written: dict[int, bytes] = {}
        # unicorn fetches the target of a branch even when told to run one instruction.
        self.uc.hook_add(unicorn.UC_HOOK_MEM_FETCH_UNMAPPED, _map_on_fetch)
        # After a CPU exception unicorn's next run may return at once without running: each
        # run starts from this saved CPU context.
        self.fresh_cpu = self.uc.context_save()

    def _pointer_image(self, rng: random.Random, size: int) -> bytes:
        """``size`` bytes of words pointing into the data region (a random kilobyte-word
        pattern, repeated: drawing every word would cost more than the runs)."""
        words = [rng.randrange(self.layout.data, self.layout.data + DATA_SIZE) for _ in range(1024)]
        pattern = b"".join(word.to_bytes(self.word, "little") for word in words)
        return pattern * (size // len(pattern))

    def random_state(self, rng: random.Random, flags: int) -> dict[str, int]:
        """Registers: pointers into the data region, small numbers or any bits; sp on the stack."""
        state = {}
        for name in self.machine.registers:
            roll = rng.random()
            if roll < 0.5:
                state[name] = rng.randrange(self.layout.data, self.layout.data + DATA_SIZE - 64)
            elif roll < 0.7:
                state[name] = rng.randrange(256)
            else:
                state[name] = rng.getrandbits(self.machine.bits)
        for name in self.machine.compared_only:
            state[name] = rng.getrandbits(self.machine.compared_bits)
        return self._fix_state(state, rng.randrange(STACK_SIZE // 4, STACK_SIZE * 3 // 4) & -self.word, flags)

    def plain_state(self, value: int) -> dict[str, int]:
        """Every register set to ``value`` (sp on the stack, flags clear)."""
        state = dict.fromkeys([*self.machine.registers, *self.machine.compared_only], value)
        return self._fix_state(state, STACK_SIZE // 2, self.machine.flag_states[0])

    def _fix_state(self, state: dict[str, int], stack_offset: int, flags: int) -> dict[str, int]:
        sp_reg = by_name(self.machine.arch).sp_reg
        state.update({self.ip_reg: self.layout.site, sp_reg: self.layout.stack + stack_offset})
        if self.machine.flags_reg:
            state[self.machine.flags_reg] = flags
        return state

    # -- the two ways to run -------------------------------------------------

    def run_in_place(self, code: bytes, state: Mapping[str, int]) -> Outcome:
        """The reference.  A fault leaves ip at the site: faults are precise on real CPUs, but
        unicorn's x87 helpers (fnstenv, fnsave) leave ip after the instruction."""
        self._reset(code, state)
        faulted = self._start(self.layout.site, 0, 1)
        if faulted:
            self._set_registers({self.ip_reg: self.layout.site})
        return self._outcome(faulted)

    def run_as_uemu(self, backend: Backend, plan: Plan, code: bytes, state: Mapping[str, int],
                    slot: int) -> tuple[Outcome, str]:
        """Run ``plan`` as the tracer would; also says how it ended."""
        self._reset(code, state)
        regs = self._registers()
        if isinstance(plan, Emulate):
            return self._outcome(not self._apply(backend.emulate(plan, regs))), "emulate"
        assert isinstance(plan, StepOutOfLine)
        setup = backend.prepare_xol(plan, slot, regs)
        assert len(setup.code) <= backend.slot_size
        if not setup.restore:  # the core reuses such a setup for the next hit (XolSetup)
            other = {name: value ^ ((1 << self.word * 8) - 1) for name, value in regs.items()}
            assert backend.prepare_xol(plan, slot, {**other, self.ip_reg: regs[self.ip_reg]}) == setup
        self._write_code(slot, setup.code)
        self._set_registers(setup.regs)
        broken = ""
        if setup.ends == "jump":
            faulted = self._start(slot, self.layout.site + plan.size, 2)
        elif setup.ends == "trap":
            faulted, broken = self._run_to_trap(backend, slot, slot + plan.size)
        else:
            assert setup.ends == "step", f"unknown ending {setup.ends!r}"
            faulted = self._start(slot, 0, 1)
        # The kernel keeps the scratch register aside (utask->autask); uemu hands it back in
        # the setup, and the tracer restores it whether the step completed or not.
        self._set_registers(setup.restore)
        after = self._registers()
        finish = backend.abort_xol if faulted else backend.finish_xol
        if faulted or setup.ends != "jump":
            self._apply(finish(plan, slot, after))
        return self._outcome(faulted, broken), setup.ends

    def _run_to_trap(self, backend: Backend, slot: int, trap: int) -> tuple[bool, str]:
        """Run a "trap" slot up to ``trap``, where the tracer expects the stop, and check that a
        trap instruction is there.  Returns (faulted, broken).

        The trap itself is not run: unicorn reports pc after the instruction for some faults
        (riscv misaligned atomics), so a fault of the instruction and the trap after it could
        not be told apart by pc."""
        if self._start(slot, trap, 2):
            return True, ""
        ip = self._registers()[self.ip_reg]
        if ip != trap:
            return False, f"the slot went on to {ip:#x} without trapping at {trap:#x}"
        if not backend.is_trap(bytes(self.uc.mem_read(trap, 4))):
            return False, f"no trap instruction at {trap:#x}, where the tracer expects the stop"
        return False, ""

    # -- helpers ---------------------------------------------------------------

    def _reset(self, code: bytes, state: Mapping[str, int]) -> None:
        self.uc.context_restore(self.fresh_cpu)
        self.uc.mem_write(self.layout.data, self.data_image)
        self.uc.mem_write(self.layout.stack, self.stack_image)
        self._write_code(self.layout.site, code + self.machine.padding)
        self._set_registers(state)

    def _write_code(self, address: int, code: bytes) -> None:
        """Write code, dropping unicorn's translations of it when it changed (it keeps stale ones)."""
        self.uc.mem_write(address, code)
        if self.code_written.get(address) != code:
            self.uc.ctl_remove_cache(address, address + len(code))
            self.code_written[address] = code

    def _start(self, begin: int, until: int, count: int) -> bool:
        """Run; True when the run faulted."""
        try:
            self.uc.emu_start(begin, until, count=count)
        except unicorn.UcError:
            return True
        return False

    def _apply(self, effects) -> bool:
        """Memory writes, then registers (a faulting write leaves registers alone); False on fault."""
        try:
            for address, data in effects.writes:
                self.uc.mem_write(address, data)
        except unicorn.UcError:
            return False
        self._set_registers(effects.regs)
        return True

    def _set_registers(self, values: Mapping[str, int]) -> None:
        if values:
            self.uc.reg_write_batch([(self.register_ids[name], value) for name, value in values.items()])

    def _registers(self, ids: Mapping[str, int] | None = None) -> dict[str, int]:
        ids = self.machine.registers if ids is None else ids
        return dict(zip(ids, self.uc.reg_read_batch(list(ids.values())), strict=True))

    def _outcome(self, faulted: bool, broken: str = "") -> Outcome:
        registers = self._registers(self.register_ids)
        memory = (bytes(self.uc.mem_read(self.layout.data, DATA_SIZE)),
                  bytes(self.uc.mem_read(self.layout.stack, STACK_SIZE)))
        return Outcome(faulted, registers, memory, broken)


def _map_on_fetch(uc: unicorn.Uc, access: int, address: int, size: int, value: int, user_data) -> bool:
    try:
        uc.mem_map(address & -PAGE, PAGE)
    except unicorn.UcError:
        return False
    return True


def differences(expected: Outcome, actual: Outcome) -> list[str]:
    """What differs between two outcomes, in words."""
    found = [actual.broken] if actual.broken else []
    if expected.faulted != actual.faulted:
        found.append(f"faulted {expected.faulted} != {actual.faulted}")
    for name, value in expected.registers.items():
        if actual.registers[name] != value:
            found.append(f"{name} {value:#x} != {actual.registers[name]:#x}")
    for region, (want, got) in zip(("data", "stack"), zip(expected.memory, actual.memory, strict=True), strict=True):
        if want != got:
            first = next(index for index, (a, b) in enumerate(zip(want, got, strict=False)) if a != b)
            found.append(f"{region} memory differs from offset {first:#x}")
    return found


Instruction = str | Raw | bytes
"""Assembler text (``{data}`` stands for an address in the data region), checked bytes, or
unchecked bytes (fuzzing)."""


_GAS_CODE: dict[tuple[str, str], bytes] = {}
"""(arch, text) -> bytes assembled by binutils, for this test session."""


def assemble_with_gas(machine: Machine, texts: Sequence[str]) -> None:
    """Assemble every text not assembled yet in one binutils run, each in a section of its own
    starting at 0 (as keystone assembles at 0); skips the test when binutils is missing."""
    missing = sorted({text for text in texts if (machine.arch, text) not in _GAS_CODE})
    if not missing:
        return
    if shutil.which(machine.gas[0]) is None:
        pytest.skip(f"{machine.gas[0]} is not installed (Debian: binutils-{machine.gas[0].rsplit('-', 1)[0]})")
    source = ".option norelax\n" + "".join(
        f'.section .text.{index},"ax",@progbits\n{machine.gas_lines(text)}' for index, text in enumerate(missing))
    with tempfile.TemporaryDirectory() as folder:
        obj = Path(folder) / "corpus.o"
        subprocess.run([*machine.gas, "-o", str(obj), "-"], input=source, text=True, check=True,
                       capture_output=True)
        with obj.open("rb") as stream:
            elf = ELFFile(stream)
            for index, text in enumerate(missing):
                _GAS_CODE[(machine.arch, text)] = elf.get_section_by_name(f".text.{index}").data()


def encode(machine: Machine, instruction: Instruction, layout: Layout) -> bytes:
    """Bytes for one instruction, checked by disassembling them back as one whole instruction."""
    if isinstance(instruction, bytes):
        return instruction
    if isinstance(instruction, Raw):
        code, mnemonic = bytes.fromhex(instruction.hex), instruction.mnemonic
    elif machine.keystone_mode is None:
        assemble_with_gas(machine, [instruction])
        code, mnemonic = _GAS_CODE[(machine.arch, instruction)], instruction.split()[0]
    else:
        text = instruction.format(data=layout.data + 0x800)
        code, mnemonic = bytes(machine.assembler().asm(text, 0)[0]), text.split()[0]
    decoded = list(machine.disassembler().disasm(code, 0))
    assert len(decoded) == 1 and decoded[0].size == len(code), f"{instruction} is {code.hex()}"
    assert decoded[0].mnemonic == mnemonic, f"{instruction} decodes as {decoded[0].mnemonic}"
    return code


def check(machine: Machine, backend: Backend, instruction: Instruction, seed: int, report: Report,
          random_states: int = 32) -> Plan:
    """Run one instruction at a random layout from fixed and random states, into ``report``;
    returns the backend's plan."""
    rng = random.Random(seed)
    layout = Layout.random(machine, rng)
    code = encode(machine, instruction, layout)
    plan = backend.analyze(code, layout.site)
    if isinstance(plan, Refuse):
        report.refused += 1
        return plan
    code = code[: plan.size]
    rig = Rig(machine, layout, rng)
    states = [rig.plain_state(0), rig.plain_state(layout.data + 0x100)]
    states += [rig.random_state(rng, machine.flag_states[index % len(machine.flag_states)])
               for index in range(random_states)]
    slots = layout.slots() if isinstance(plan, StepOutOfLine) else {"-": layout.far_slot}
    for number, state in enumerate(states):
        expected = rig.run_in_place(code, state)
        report.completed += not expected.faulted
        for slot_name, slot in slots.items():
            actual, ends = rig.run_as_uemu(backend, plan, code, state, slot)
            report.runs += 1
            report.ends.add(ends)
            for difference in differences(expected, actual):
                report.mismatches.append(
                    f"{code.hex()} ({plan.text}) at {layout.site:#x}, state {number}, "
                    f"{ends} via {slot_name} slot: {difference}")
    return plan


# -- the checks every backend's differential tests make --------------------------------


def check_corpus_case(machine: Machine, kind: type, instruction: Instruction) -> None:
    """A corpus instruction gets a plan of ``kind``, and every way uemu runs it ends as in
    place, from a layout and states seeded by its text; at least one in-place run completed."""
    report = Report()
    seed = random.Random(f"{machine.arch} {instruction}").getrandbits(32)
    plan = check(machine, by_name(machine.arch).backend, instruction, seed, report)
    assert type(plan) is kind, plan
    assert report.mismatches == []
    assert report.completed > 0, "every in-place run faulted: nothing was compared"


def check_slot_endings(machine: Machine, instruction: Instruction, ends: set[str]) -> None:
    """The far and the near slot run ``instruction`` in these two ways, both right."""
    report = Report()
    check(machine, by_name(machine.arch).backend, instruction, 1, report)
    assert report.ends == ends
    assert report.mismatches == []


def check_catches(machine: Machine, broken: Backend, instructions: Sequence[Instruction], symptom: str) -> None:
    """The harness reports a deliberately broken backend on every one of ``instructions``,
    with ``symptom`` in some mismatch."""
    for index, instruction in enumerate(instructions):
        report = Report()
        check(machine, broken, instruction, index, report)
        assert any(symptom in mismatch for mismatch in report.mismatches), (instruction, report.mismatches[:3])


def check_random_encodings(machine: Machine, codes: Iterable[bytes], ends: set[str]) -> Counter[str]:
    """Random encodings, four random states each: no mismatch, fewer than half refused, every
    way of running seen.  Prints what was drawn; returns the plan kinds."""
    report = Report()
    kinds: Counter[str] = Counter()
    backend = by_name(machine.arch).backend
    for index, code in enumerate(codes):
        plan = check(machine, backend, code, index, report, random_states=4)
        kinds[type(plan).__name__] += 1
    total = sum(kinds.values())
    print(f"{machine.arch}: {total} encodings {dict(kinds)}, {report.runs} runs "
          f"({report.completed} in-place runs did not fault), ends {sorted(report.ends)}")
    assert report.mismatches == []
    assert kinds["Refuse"] == report.refused < total // 2
    assert report.ends == ends
    return kinds
