"""riscv64 differential tests: each corpus instruction ends the same in place and as uemu runs it.

The corpus is assembled by binutils (keystone has no RISC-V) at test time; the tests that need
it are skipped, with the reason, where ``riscv64-linux-gnu-as`` is missing (the random-encoding
test needs no assembler and still runs).  Every instruction runs at
a random 2-aligned probe address from 34 register states; stepped ones run once from a slot
more than 1 MiB away (``ebreak`` after the instruction, "trap": the kernel's way, riscv has no
single-step) and once from one within reach of a ``jal`` back ("jump").
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from xol_harness import (
    MACHINES,
    Instruction,
    assemble_with_gas,
    check_catches,
    check_corpus_case,
    check_random_encodings,
    check_slot_endings,
)

from uemu.arch.base import Effects
from uemu.arch.riscv import RiscvBackend, RiscvBranch, RiscvFixed, RiscvRegisterJump, RiscvStep

MACHINE = MACHINES["riscv64"]

CORPUS: dict[type, list[Instruction]] = {
    RiscvFixed: [
        *MACHINE.nops,
        "jal .+0x40",
        "jal ra, .-0x1000",
        "jal t0, .+0xffffe",
        "j .-0x100000",
        "c.j .+0x40",
        "c.j .-0x800",
        "c.j .+0x7fe",
        "auipc a0, 0x1",
        "auipc t6, 0xfffff",
        "auipc s1, 0x80000",
        "auipc zero, 0x5",
    ],
    RiscvBranch: [
        *(f"{branch} a0, a1, .+0x40" for branch in ("beq", "bne", "blt", "bge", "bltu", "bgeu")),
        "beq a0, a0, .-0x40",
        "bgeu s0, s0, .+0xffe",
        "blt t0, t1, .-0x1000",
        "beqz a5, .+0x40",
        "bnez s1, .+0x40",
        "bltz t2, .+0x40",
        "c.beqz a0, .+0x20",
        "c.bnez s1, .-0x20",
        "c.beqz a5, .+0xfe",
        "c.bnez s0, .-0x100",
    ],
    RiscvRegisterJump: [
        "jalr a0",
        "jalr ra, 8(a1)",
        "jalr a0, -5(a0)",
        "jalr ra, 0(ra)",
        "jr t0",
        "ret",
        "c.jr a0",
        "c.jr ra",
        "c.jalr a1",
        "c.jalr ra",
    ],
    RiscvStep: [
        "addi a0, a0, 1",
        "addiw a0, a1, -1",
        "lui a0, 0x12345",
        "slli a0, a1, 13",
        "add s2, s3, s4",
        "sub t0, t1, t2",
        "sltu a0, a1, a2",
        "mul a0, a1, a2",
        "mulh a0, a1, a2",
        "div a0, a1, a2",
        "remu a0, a1, a2",
        "ld a0, 8(a1)",
        "lw a0, -4(a1)",
        "lbu a0, 0(a1)",
        "sd a0, 0(sp)",
        "sw ra, -8(sp)",
        "lr.d a0, (a1)",
        "sc.d a2, a0, (a1)",
        "amoadd.d a0, a1, (a2)",
        "amoswap.w a0, a1, (a2)",
        "fld fa0, 0(a1)",
        "fsd fa1, 8(sp)",
        "fadd.d fa0, fa1, fa2",
        "fmv.d.x fa0, a1",
        "fcvt.l.d a0, fa1",
        "c.addi a0, 1",
        "c.addiw a0, -1",  # c.jal's encoding on rv32
        "c.li a5, -3",
        "c.lui a5, 1",
        "c.mv a0, a1",
        "c.add a0, a1",
        "c.slli a0, 3",
        "c.addi16sp sp, 32",
        "c.addi4spn a0, sp, 16",
        "c.ldsp a0, 8(sp)",
        "c.sdsp ra, 0(sp)",
        "c.ld a0, 8(a1)",
        "c.sw a0, 4(a1)",
        "c.fld fa0, 8(a1)",
        "c.and a0, a1",
        "c.srai a0, 3",
    ],
}

CASES = [
    pytest.param(kind, instruction, id=f"{kind.__name__}-{instruction}")
    for kind, instructions in CORPUS.items()
    for instruction in instructions
]


@pytest.fixture(scope="module")
def corpus_assembled() -> None:
    """One binutils run for the whole corpus (and the skip, where binutils is missing)."""
    assemble_with_gas(MACHINE, [text for texts in CORPUS.values() for text in texts if isinstance(text, str)])


@pytest.mark.usefixtures("corpus_assembled")
@pytest.mark.parametrize(("kind", "instruction"), CASES)
def test_runs_as_in_place(kind: type, instruction: Instruction) -> None:
    check_corpus_case(MACHINE, kind, instruction)


@pytest.mark.usefixtures("corpus_assembled")
def test_steps_use_both_slot_methods() -> None:
    """A far slot ends in ebreak; a near one jumps back by itself."""
    check_slot_endings(MACHINE, "c.addi a0, 1", {"trap", "jump"})


# -- the harness catches broken fixups ----------------------------------------------


class BnezAsBeqz(RiscvBackend):
    """c.bnez decoded as c.beqz."""

    def analyze(self, code, vaddr):
        plan = super().analyze(code, vaddr)
        if plan.text.startswith("c.bnez"):
            plan = dataclasses.replace(plan, condition=0)
        return plan


class JalLinksToItself(RiscvBackend):
    """jal's link register gets the jal, not the instruction after it."""

    def analyze(self, code, vaddr):
        plan = super().analyze(code, vaddr)
        if plan.text.startswith("jal "):
            regs = {name: vaddr if name != "pc" else value for name, value in plan.effects.regs.items()}
            plan = dataclasses.replace(plan, effects=Effects(regs=regs))
        return plan


class FourByteResume(RiscvBackend):
    """finish_xol resumes 4 bytes on, whatever the instruction's length."""

    def finish_xol(self, plan, slot_vaddr, regs):
        return Effects(regs={"pc": plan.vaddr + 4})


class TrapAfterFourBytes(RiscvBackend):
    """The slot's ebreak goes at slot + 4 even after a 2-byte instruction (a c.nop between)."""

    def prepare_xol(self, plan, slot_vaddr, regs):
        setup = super().prepare_xol(plan, slot_vaddr + (1 << 32), regs)  # out of jal reach: a trap slot
        padding = b"\x01\x00" * ((4 - plan.size) // 2)
        code = plan.code + padding + setup.code[plan.size:]
        return dataclasses.replace(setup, code=code, regs={"pc": slot_vaddr})


class BltAsBltu(RiscvBackend):
    """blt compares unsigned."""

    @staticmethod
    def condition_holds(condition, left, right):
        return RiscvBackend.condition_holds(condition | 2 if condition >> 1 == 2 else condition, left, right)


@pytest.mark.usefixtures("corpus_assembled")
@pytest.mark.parametrize(
    ("broken", "instructions", "symptom"),
    [
        (BnezAsBeqz, ["c.bnez s1, .-0x20", "c.bnez s0, .-0x100"], "pc"),
        (JalLinksToItself, ["jal ra, .-0x1000", "jal t0, .+0xffffe"], ""),
        (FourByteResume, ["c.addi a0, 1", "c.mv a0, a1"], "pc"),
        (TrapAfterFourBytes, ["c.addi a0, 1"], "no trap instruction at"),
        (BltAsBltu, ["blt t0, t1, .-0x1000", "bltz t2, .+0x40"], "pc"),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else None,
)
def test_harness_reports_broken_fixups(broken: type, instructions: list[str], symptom: str) -> None:
    check_catches(MACHINE, broken(), instructions, symptom)


# -- random encodings ------------------------------------------------------------------

FUZZ_ENCODINGS = 800
"""With seed 7: about 4 s here."""


def test_random_encodings() -> None:
    """Random 4-byte words: three in four start with a compressed instruction."""
    rng = random.Random(7)
    kinds = check_random_encodings(MACHINE, [rng.randbytes(4) for _ in range(FUZZ_ENCODINGS)],
                                   {"emulate", "trap", "jump"})
    assert kinds["RiscvStep"] and kinds["RiscvBranch"] and kinds["RiscvFixed"] and kinds["Refuse"]
