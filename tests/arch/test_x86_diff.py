"""x86 differential tests: each corpus instruction ends the same in place and as uemu runs it.

Every instruction runs at a random probe address from 34 register states (two plain ones, and
random ones cycling through all 32 combinations of CF, PF, ZF, SF and OF, so that each jcc is
seen taken and not taken); out-of-line ones run once from a slot more than 4 GiB away (the
scratch-register method, "step") and once from a slot within reach ("jump").
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest
from xol_harness import MACHINES, Instruction, Raw, Report, check

from uemu.arch import by_name
from uemu.arch.base import Effects
from uemu.arch.x86 import Fixup, X86Backend, X86Call, X86CondJump, X86Jump, X86Push, X86Step

CONDITIONS = ("jo", "jno", "jb", "jae", "je", "jne", "jbe", "ja",
              "js", "jns", "jp", "jnp", "jl", "jge", "jle", "jg")  # fmt: skip

BRANCHES_BOTH_MODES: list[Instruction] = [
    "jmp 0x40",
    "jmp 0x1000",
    Raw("eb80", "jmp"),
    Raw("e900f0ffff", "jmp"),
]

X86_64_CORPUS: dict[type, list[Instruction]] = {
    X86Jump: [
        *MACHINES["x86_64"].nops,
        *BRANCHES_BOTH_MODES,
    ],
    X86CondJump: [f"{condition} 0x40" for condition in CONDITIONS]
    + [f"{condition} 0x1000" for condition in CONDITIONS]
    + [Raw("7480", "je"), Raw("0f8500f0ffff", "jne")],
    X86Call: ["call 0x1000", Raw("e800f0ffff", "call")],
    X86Push: [f"push {register}" for register in
              ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", *(f"r{n}" for n in range(8, 16)))],
    X86Step: [
        # rip-relative, with registers that collide with the scratch candidates rsi, rdi, rbx
        "mov rax, qword ptr [rip + 0x100]",
        "mov qword ptr [rip + 0x80], rax",
        "mov esi, dword ptr [rip + 0x10]",
        "mov rsi, qword ptr [rip - 0x100]",
        "mov sil, byte ptr [rip + 0x20]",
        "mov byte ptr [rip + 0x20], dil",
        "mov bl, byte ptr [rip + 0x44]",
        "mov bh, byte ptr [rip + 0x44]",
        "mov r14, qword ptr [rip + 0x48]",
        "mov r8, qword ptr [rip + 0x48]",
        "mov qword ptr [rip - 0x200], 0x12345678",
        "lea rsi, [rip + 0x30]",
        "lea rdi, [rip - 0x30]",
        "lea rbx, [rip + 0x1000]",
        "cmp qword ptr [rip + 0x40], 0x12",
        "add dword ptr [rip + 0x10], 5",
        "add rsi, qword ptr [rip + 0x18]",
        "xor edi, dword ptr [rip + 0x28]",
        "movzx esi, byte ptr [rip + 0x30]",
        "imul rsi, qword ptr [rip + 8], 0x1234",
        "test dword ptr [rip + 0x40], esi",
        "xchg qword ptr [rip + 0x10], rsi",
        "cmovne rdi, qword ptr [rip + 0x10]",
        "cmpxchg8b qword ptr [rip + 0x10]",  # uses edx:eax and ecx:ebx implicitly
        "inc qword ptr [rip + 0x40]",
        "push qword ptr [rip + 0x40]",
        "pop qword ptr [rip + 0x40]",
        "call qword ptr [rip + 0x40]",
        "jmp qword ptr [rip + 0x48]",
        "movups xmm0, xmmword ptr [rip + 0x20]",
        "movdqu xmm6, xmmword ptr [rip + 0x60]",
        "addsd xmm1, qword ptr [rip + 0x70]",
        "movq qword ptr [rip + 0x78], xmm7",
        "mulx esi, edi, dword ptr [rip + 0x10]",  # VEX3: reg rsi, vvvv rdi, so rbx
        "andn rsi, rdi, qword ptr [rip + 0x10]",
        "shlx rdi, qword ptr [rip + 0x10], rsi",
        Raw("4190", "xchg"),  # xchg r8d, eax: not a nop although the kernel emulates it as one
        Raw("4990", "xchg"),
        # control transfers the kernel does not emulate
        "call rax",
        "call rsi",
        "call r11",
        "call qword ptr [rbx + 8]",
        "jmp rax",
        "jmp qword ptr [rsi]",
        "ret",
        "ret 8",
        Raw("e20e", "loop"),
        Raw("e30e", "jrcxz"),
        # ordinary instructions
        "mov rax, rbx",
        "add rax, 0x12",
        "sub esi, edi",
        "xor ebx, ebx",
        "inc r9",
        "lea rax, [rbx + rcx*4 + 8]",
        "mov qword ptr [rsp + 8], rdi",
        "mov rax, qword ptr [rsp]",
        "pop rbx",
        "pop r12",
        Raw("4850", "push"),  # REX.W push: the kernel emulates 41 50-57 only
        "push qword ptr [rbx]",
        "pushfq",
        "popfq",
        "imul rax, rbx",
        "cqo",
        "xchg rax, rcx",
        "bswap eax",
        "cmovne rax, rbx",
        "sete al",
        "shl rax, cl",
        "movsb byte ptr [rdi], byte ptr [rsi]",
        "leave",
        "div rcx",
        "cpuid",
    ],
}

I386_CORPUS: dict[type, list[Instruction]] = {
    X86Jump: [*MACHINES["i386"].nops, *BRANCHES_BOTH_MODES],
    X86CondJump: [f"{condition} 0x40" for condition in CONDITIONS]
    + [f"{condition} 0x1000" for condition in CONDITIONS[::3]],
    X86Call: ["call 0x1000", Raw("e800f0ffff", "call")],
    X86Push: [f"push {register}" for register in ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")],
    X86Step: [
        # ModRM 00 reg 101 is an absolute disp32 here, not rip-relative
        "mov ebx, dword ptr [{data}]",
        "mov dword ptr [{data}], esi",
        "add esi, dword ptr [{data}]",
        "lea edi, [{data}]",
        "inc eax",
        "dec esi",
        "call eax",
        "call dword ptr [ebx + 4]",
        "jmp ecx",
        "jmp dword ptr [esi]",
        "ret",
        "ret 4",
        "pushfd",
        "popfd",
        "push dword ptr [esp + 4]",
        Raw("6650", "push"),
        "pop ebp",
        "leave",
        "mov eax, dword ptr [ebx + 4]",
        "xchg eax, ecx",
        "movzx eax, byte ptr [esi]",
        "imul eax, ebx, 7",
        "cdq",
        Raw("e20e", "loop"),
        Raw("e30e", "jecxz"),
    ],
}

CORPUS = [
    pytest.param(arch, kind, instruction, id=f"{arch}-{kind.__name__}-{instruction}")
    for arch, corpus in (("x86_64", X86_64_CORPUS), ("i386", I386_CORPUS))
    for kind, instructions in corpus.items()
    for instruction in instructions
]


@pytest.mark.parametrize(("arch", "kind", "instruction"), CORPUS)
def test_runs_as_in_place(arch: str, kind: type, instruction: Instruction) -> None:
    report = Report()
    seed = random.Random(f"{arch} {instruction}").getrandbits(32)
    plan = check(MACHINES[arch], by_name(arch).backend, instruction, seed, report)
    assert type(plan) is kind, plan
    assert report.mismatches == []
    assert report.completed > 0, "every in-place run faulted: nothing was compared"


def test_rip_relative_uses_both_slot_methods() -> None:
    """A far slot takes the scratch register and a step; a near one a new disp32 and a jump."""
    report = Report()
    check(MACHINES["x86_64"], by_name("x86_64").backend, "add rsi, qword ptr [rip + 0x18]", 1, report)
    assert report.ends == {"step", "jump"}
    assert report.mismatches == []


# -- the harness catches broken fixups ----------------------------------------------


class ScratchNotRestored(X86Backend):
    """Forgets the scratch register's old value."""

    def prepare_xol(self, plan, slot_vaddr, regs):
        return dataclasses.replace(super().prepare_xol(plan, slot_vaddr, regs), restore={})


class IpFixedForEveryStep(X86Backend):
    """Moves ip back from the slot after ret and indirect jmp too (and never fixes calls)."""

    def finish_xol(self, plan, slot_vaddr, regs):
        return Effects(regs={self.ip_reg: (regs[self.ip_reg] + plan.vaddr - slot_vaddr) & self.mask})


class CallReturnNotFixed(X86Backend):
    """Leaves the slot's return address on the stack after an indirect call."""

    def finish_xol(self, plan, slot_vaddr, regs):
        return Effects() if plan.fixup is Fixup.CALL else super().finish_xol(plan, slot_vaddr, regs)


class JbeOnBothFlags(X86Backend):
    """Takes jbe when CF and ZF are set, instead of CF or ZF."""

    @staticmethod
    def condition_holds(condition: int, flags: int) -> bool:
        if condition >> 1 == 3:
            return ((flags & 0x41) == 0x41) != bool(condition & 1)
        return X86Backend.condition_holds(condition, flags)


@pytest.mark.parametrize(
    ("broken", "instructions", "symptom"),
    [
        (ScratchNotRestored, ["mov rax, qword ptr [rip + 0x100]", "call qword ptr [rip + 0x40]"], "rsi"),
        (ScratchNotRestored, ["mov esi, dword ptr [rip + 0x10]"], "rdi"),
        (ScratchNotRestored, ["mulx esi, edi, dword ptr [rip + 0x10]"], "rbx"),
        (IpFixedForEveryStep, ["ret", "jmp rax", "jmp qword ptr [rip + 0x48]"], "rip"),
        (CallReturnNotFixed, ["call rax", "call qword ptr [rip + 0x40]"], "stack memory"),
        (JbeOnBothFlags, ["jbe 0x40", "ja 0x1000"], "rip"),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else None,
)
def test_harness_reports_broken_fixups(broken: type, instructions: list[str], symptom: str) -> None:
    for index, instruction in enumerate(instructions):
        report = Report()
        check(MACHINES["x86_64"], broken(mode64=True), instruction, index, report)
        assert any(symptom in mismatch for mismatch in report.mismatches), (instruction, report.mismatches[:3])


def test_harness_reports_broken_i386_call_fixup() -> None:
    report = Report()
    check(MACHINES["i386"], CallReturnNotFixed(mode64=False), "call eax", 0, report)
    assert any("stack memory" in mismatch for mismatch in report.mismatches)


# -- random encodings ------------------------------------------------------------------

FUZZ_ENCODINGS = 1500
"""Per arch; with seed 7 this takes about 5 s per arch here."""


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_random_encodings(arch: str) -> None:
    rng = random.Random(7)
    report = Report()
    kinds: Counter[str] = Counter()
    for index in range(FUZZ_ENCODINGS):
        plan = check(MACHINES[arch], by_name(arch).backend, rng.randbytes(16), index, report, random_states=4)
        kinds[type(plan).__name__] += 1
    print(f"{arch}: {FUZZ_ENCODINGS} encodings {dict(kinds)}, {report.runs} runs "
          f"({report.completed} in-place runs did not fault), ends {sorted(report.ends)}")
    assert report.mismatches == []
    assert kinds["Refuse"] == report.refused < FUZZ_ENCODINGS // 2
    assert report.ends == {"emulate", "step", "jump"}
