"""aarch64 differential tests: each corpus instruction ends the same in place and as uemu runs it.

Every instruction runs at a random 4-aligned probe address (never page-aligned on purpose: a
page-aligned site hides an adrp that forgets to mask) from 34 register states: two plain ones,
and random ones cycling through all 16 NZCV values, so that every b.cond is seen taken and not
taken.  Stepped instructions run once from a slot more than 128 MiB away ("step", the kernel's
single-step) and once from one within reach of a ``b`` back ("jump").
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from xol_harness import (
    MACHINES,
    Instruction,
    Raw,
    check_catches,
    check_corpus_case,
    check_random_encodings,
    check_slot_endings,
)

from uemu.arch.aarch64 import A64CondBranch, A64Fixed, A64Hint, A64RegisterBranch, A64Step, A64ZeroTest, Aarch64Backend
from uemu.arch.base import Effects

MACHINE = MACHINES["aarch64"]
CONDITIONS = ("eq", "ne", "hs", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le", "al", "nv")

CORPUS: dict[type, list[Instruction]] = {
    A64Hint: list(MACHINE.nops),
    A64Fixed: [
        "b #0x40",
        "b #-0x1000",
        "b #0x7fffffc",
        "b #-0x8000000",
        "bl #0x40",
        "bl #-0x2000",
        "adr x3, #0x100",
        "adr x0, #-0x10",
        "adr x30, #0xffffc",
        "adr xzr, #8",
        "adrp x3, #0x3000",
        "adrp x0, #-0x5000",
        "adrp x17, #0x40000000",
        Raw("1f000090", "adrp"),  # adrp xzr
    ],
    A64CondBranch: [f"b.{condition} #0x40" for condition in CONDITIONS] + ["b.ne #-0x40", "b.lt #0xffffc"],
    A64ZeroTest: [
        "cbz w3, #0x40",
        "cbz x3, #0x40",
        "cbnz w0, #-0x40",
        "cbnz x30, #0x80",
        "cbz xzr, #0x40",
        "tbz w3, #0, #0x40",
        "tbz w3, #31, #0x40",
        "tbnz x3, #40, #-0x40",
        "tbz x0, #63, #-0x8000",
        "tbnz x29, #5, #0x40",
    ],
    A64RegisterBranch: ["br x3", "br x30", "blr x3", "blr x30", "ret", "ret x3", Raw("e0031fd6", "br")],
    A64Step: [
        "add x0, x1, x2",
        "adds x0, x1, #1",
        "subs w3, w4, w5",
        "cmp x0, x1",
        "csel x0, x1, x2, ne",
        "cset w0, eq",
        "ccmp x0, x1, #0, ne",
        "mov x0, sp",
        "sub sp, sp, #0x40",
        "mov x0, #0x12340000",
        "movk x0, #0x5678",
        "ubfx x0, x1, #4, #8",
        "rev x0, x1",
        "clz x0, x1",
        "mul x3, x4, x5",
        "udiv x0, x1, x2",
        "ldr x0, [x1]",
        "ldr x0, [x1, x2, lsl #3]",
        "ldrb w0, [x1], #1",
        "ldrsw x0, [x1, #4]",
        "str x2, [sp, #16]",
        "stp x29, x30, [sp, #-16]!",
        "ldp x29, x30, [sp], #16",
        "ldar x0, [x1]",
        "stlr x0, [x1]",
        # LSE atomics (ldadd, cas) step too, but unicorn's Cortex-A72 lacks them, and its "max"
        # CPU aborts the process on some random fp16 encodings (QEMU's unreachable code).
        "dmb ish",
        "isb",
        "mrs x0, nzcv",
        "mrs x0, tpidr_el0",
        Raw("3f2303d5", "paciasp"),
        Raw("ff2003d5", "xpaclri"),
        Raw("1f2103d5", "pacia1716"),
        "fadd d0, d1, d2",
        "fmov d0, x1",
        "ldr q0, [x1]",
        "cnt v0.8b, v1.8b",
        "ld1 {{v0.16b}}, [x1]",
    ],
}

CASES = [
    pytest.param(kind, instruction, id=f"{kind.__name__}-{instruction}")
    for kind, instructions in CORPUS.items()
    for instruction in instructions
]


@pytest.mark.parametrize(("kind", "instruction"), CASES)
def test_runs_as_in_place(kind: type, instruction: Instruction) -> None:
    check_corpus_case(MACHINE, kind, instruction)


def test_steps_use_both_slot_methods() -> None:
    """A far slot is single-stepped; a near one jumps back by itself."""
    check_slot_endings(MACHINE, "add x0, x1, x2", {"step", "jump"})


# -- the harness catches broken fixups ----------------------------------------------


class AdrpUnmasked(Aarch64Backend):
    """adrp from vaddr itself, not from its 4 KiB page."""

    def analyze(self, code, vaddr):
        plan = super().analyze(code, vaddr)
        if plan.text.startswith("adrp"):
            regs = {name: value + (vaddr & 0xFFF) if name != "pc" else value
                    for name, value in plan.effects.regs.items()}
            plan = dataclasses.replace(plan, effects=Effects(regs=regs))
        return plan


class BlLinksToItself(Aarch64Backend):
    """bl sets x30 to the bl, not to the instruction after it."""

    def analyze(self, code, vaddr):
        plan = super().analyze(code, vaddr)
        if plan.text.startswith("bl "):
            plan = dataclasses.replace(plan, effects=Effects(regs={**plan.effects.regs, "x30": vaddr}))
        return plan


class PcLeftInSlot(Aarch64Backend):
    """finish_xol forgets to move pc back from the slot."""

    def finish_xol(self, plan, slot_vaddr, regs):
        return Effects(regs={"pc": slot_vaddr + 4})


class HiOnCarryOnly(Aarch64Backend):
    """b.hi taken on C alone, not on C and not Z."""

    @staticmethod
    def condition_holds(condition, pstate):
        if condition >> 1 == 4:
            return bool(pstate & 1 << 29) != bool(condition & 1)
        return Aarch64Backend.condition_holds(condition, pstate)


@pytest.mark.parametrize(
    ("broken", "instructions", "symptom"),
    [
        (AdrpUnmasked, ["adrp x3, #0x3000", "adrp x0, #-0x5000"], ": x"),
        (BlLinksToItself, ["bl #0x40", "bl #-0x2000"], ": x30"),
        (PcLeftInSlot, ["add x0, x1, x2", "ldr x0, [x1]"], ": pc"),
        (HiOnCarryOnly, ["b.hi #0x40", "b.ls #0x40"], ": pc"),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else None,
)
def test_harness_reports_broken_fixups(broken: type, instructions: list[str], symptom: str) -> None:
    check_catches(MACHINE, broken(), instructions, symptom)


# -- random encodings ------------------------------------------------------------------

FUZZ_ENCODINGS = 800
"""With seed 7: about 5 s here."""


def test_random_encodings() -> None:
    """Random words, every other one moved into the branch/exception/system class (bits 28:26 =
    101), where most of the kernel's decisions are taken."""
    rng = random.Random(7)
    words = [rng.getrandbits(32) for _ in range(FUZZ_ENCODINGS)]
    words[1::2] = [word & ~0x1C000000 | 0x14000000 for word in words[1::2]]
    kinds = check_random_encodings(MACHINE, [word.to_bytes(4, "little") for word in words],
                                   {"emulate", "step", "jump"})
    assert kinds["A64Step"] and kinds["A64Fixed"] and kinds["A64ZeroTest"] and kinds["Refuse"]
