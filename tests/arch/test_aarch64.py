"""The aarch64 backend's decisions, as pure logic: what is refused and why, simulated, or
stepped, and what the per-hit calls return; and the tracing facts of its Arch."""

from __future__ import annotations

import pytest

from uemu.arch import by_name
from uemu.arch.aarch64 import A64CondBranch, A64Fixed, A64Hint, A64RegisterBranch, A64Step, A64ZeroTest, Aarch64Backend
from uemu.arch.base import Refuse

A64 = Aarch64Backend()
SITE = 0x5555_5555_1234  # not page-aligned: adrp must mask
SLOT = 0x7FFF_F000_0000


def analyze(hex_code: str, vaddr: int = SITE):
    return A64.analyze(bytes.fromhex(hex_code), vaddr)


def word(value: int) -> str:
    return value.to_bytes(4, "little").hex()


def test_arch_facts() -> None:
    arch = by_name("aarch64")
    assert isinstance(arch.backend, Aarch64Backend)
    assert arch.regset[:31] == tuple(f"x{n}" for n in range(31))
    assert arch.regset[31:] == ("sp", "pc", "pstate") and arch.regset_word == 8
    assert (arch.ip_reg, arch.sp_reg, arch.audit_arch) == ("pc", "sp", 0xC00000B7)
    assert dict(arch.mapping_syscalls) == {222: "mmap", 215: "munmap", 226: "mprotect", 216: "mremap",
                                           234: "remap_file_pages", 288: "mprotect"}
    # Every canonical spec register but the zero register is in the regset, by the same name.
    canonical = {spec.canonical for spec in arch.spec_registers.values()} - {"zero"}
    assert canonical <= set(arch.regset)


def test_traps() -> None:
    assert A64.trap_bytes(bytes.fromhex("1f2003d5")) == bytes.fromhex("a00020d4")  # brk #5
    assert A64.is_trap(bytes.fromhex("a00020d4")) and A64.is_trap(bytes.fromhex("000020d4"))  # brk #0 too
    assert A64.is_trap(bytes.fromhex("e0ff3fd4"))  # brk #0xffff
    assert not A64.is_trap(bytes.fromhex("000040d4"))  # hlt: SIGILL in user space
    assert not A64.is_trap(bytes.fromhex("010000d4")) and not A64.is_trap(b"\xa0\x00")
    assert A64.trap_address(SITE) == SITE


@pytest.mark.parametrize(
    ("hex_code", "reason"),
    [
        ("000020d4", "exception generation"),  # brk #0
        ("010000d4", "exception generation"),  # svc #0
        ("020000d4", "exception generation"),  # hvc
        ("000040d4", "exception generation"),  # hlt
        ("e0039fd6", "eret"),
        ("ff0b9fd6", "eretaa"),
        ("ff0b5fd6", "pointer authentication"),  # retaa
        ("1f081fd6", "pointer authentication"),  # braaz x0
        ("3f093fd6", "pointer authentication"),  # blraaz x9
        ("00421bd5", "msr (register)"),  # msr nzcv, x0
        ("df4003d5", "msr (immediate)"),  # msr daifset, #0
        ("1f4000d5", "msr (immediate)"),  # cfinv
        ("20423bd5", "mrs of DAIF"),
        ("3f2003d5", "hint outside"),  # yield
        ("5f2003d5", "hint outside"),  # wfe
        ("7f2003d5", "hint outside"),  # wfi
        ("bf2303d5", "hint outside"),  # autiasp
        ("9f2203d5", "hint outside"),  # csdb
        ("1f2503d5", "hint outside"),  # hint #0x28, unallocated
        ("00020018", "ldr (literal)"),  # ldr w0
        ("00020058", "ldr (literal)"),  # ldr x0
        ("00020098", "ldrsw (literal)"),
        ("000200d8", "prfm (literal)"),
        ("0902001c", "SIMD&FP"),  # ldr s9
        ("0902005c", "SIMD&FP"),  # ldr d9
        ("0902009c", "SIMD&FP"),  # ldr q9
        ("207c5fc8", "exclusive"),  # ldxr
        ("207c02c8", "exclusive"),  # stxr
        ("20fc5f88", "exclusive"),  # ldaxr w0
        ("20fc0288", "exclusive"),  # stlxr w2, w0
        ("40047fc8", "exclusive"),  # ldxp
        ("207c2048", "exclusive"),  # casp
        ("2004021d", "MOPS"),  # cpyp
        ("4104c219", "MOPS"),  # setp
    ],
)
def test_refused(hex_code: str, reason: str) -> None:
    plan = analyze(hex_code)
    assert isinstance(plan, Refuse) and plan.size == 4
    assert reason in plan.reason and plan.reason.startswith("not supported by uprobes: ")


def test_refused_without_an_instruction() -> None:
    unaligned = A64.analyze(bytes.fromhex("1f2003d5"), SITE + 2)
    assert isinstance(unaligned, Refuse) and "aligned" in unaligned.reason
    short = A64.analyze(b"\x1f\x20\x03", SITE)
    assert isinstance(short, Refuse) and short.size == 0


@pytest.mark.parametrize(
    ("hex_code", "text"),
    [
        ("3f2303d5", "paciasp"),
        ("7f2303d5", "pacibsp"),
        ("1f2303d5", "paciaz"),
        ("ff2003d5", "xpaclri"),
        ("1f2103d5", "pacia1716"),
        ("40d03bd5", "mrs x0, tpidr_el0"),
        ("00423bd5", "mrs x0, nzcv"),
        ("20fcdfc8", "ldar x0, [x1]"),
        ("20fc9fc8", "stlr x0, [x1]"),
        ("410020f8", "ldadd x0, x1, [x2]"),  # LSE atomics are not exclusives
        ("417ca0c8", "cas x0, x1, [x2]"),
        ("bf3b03d5", "dmb ish"),
        ("217e0bd5", "dc civac, x1"),
        ("e0031faa", "mov x0, xzr"),
        ("ffffffff", ".inst 0xffffffff"),  # unallocated: the kernel steps it (SIGILL from the slot)
    ],
)
def test_stepped(hex_code: str, text: str) -> None:
    plan = analyze(hex_code)
    assert isinstance(plan, A64Step) and plan.text == text
    assert plan.code == bytes.fromhex(hex_code) and plan.size == 4


@pytest.mark.parametrize("hex_code", ["1f2003d5", "1f2403d5", "5f2403d5", "9f2403d5", "df2403d5"])
def test_nop_and_bti_are_emulated_with_btype_cleared(hex_code: str) -> None:
    plan = analyze(hex_code)
    assert isinstance(plan, A64Hint)
    assert A64.emulate(plan, {"pstate": 0x6000_0000}).regs == {"pc": SITE + 4}
    assert A64.emulate(plan, {"pstate": 0x6000_0C00}).regs == {"pc": SITE + 4, "pstate": 0x6000_0000}


def test_b_and_bl() -> None:
    assert A64.emulate(analyze("10000014"), {}).regs == {"pc": SITE + 0x40}  # b +0x40
    assert A64.emulate(analyze("00000016"), {}).regs == {"pc": SITE - 0x8000000}  # b -128 MiB
    assert A64.emulate(analyze("ffffff15"), {}).regs == {"pc": SITE + 0x7FFFFFC}
    bl = analyze("f0ffff97")  # bl -0x40
    assert isinstance(bl, A64Fixed)
    assert A64.emulate(bl, {}).regs == {"pc": SITE - 0x40, "x30": SITE + 4}
    assert A64.emulate(A64.analyze(bytes.fromhex("ffffff17"), 0), {}).regs == {"pc": (1 << 64) - 4}


@pytest.mark.parametrize(
    ("hex_code", "register", "value"),
    [
        ("03080010", "x3", SITE + 0x100),  # adr x3, #0x100
        ("e0ffff10", "x0", SITE - 4),  # adr x0, #-4
        ("030000f0", "x3", (SITE & ~0xFFF) + 0x3000),  # adrp x3, #0x3000
        ("c0fffff0", "x0", (SITE & ~0xFFF) - 0x5000),  # adrp x0, #-0x5000
    ],
)
def test_adr_and_adrp(hex_code: str, register: str, value: int) -> None:
    plan = analyze(hex_code)
    assert isinstance(plan, A64Fixed)
    assert A64.emulate(plan, {}).regs == {"pc": SITE + 4, register: value}


def test_adr_to_the_zero_register_only_moves_pc() -> None:
    assert A64.emulate(analyze("1f000090"), {}).regs == {"pc": SITE + 4}  # adrp xzr


NZCV_CONDITIONS = {  # ARM ARM ConditionHolds(), written independently of the backend
    0x0: lambda n, z, c, v: z,
    0x1: lambda n, z, c, v: not z,
    0x2: lambda n, z, c, v: c,
    0x3: lambda n, z, c, v: not c,
    0x4: lambda n, z, c, v: n,
    0x5: lambda n, z, c, v: not n,
    0x6: lambda n, z, c, v: v,
    0x7: lambda n, z, c, v: not v,
    0x8: lambda n, z, c, v: c and not z,
    0x9: lambda n, z, c, v: not c or z,
    0xA: lambda n, z, c, v: n == v,
    0xB: lambda n, z, c, v: n != v,
    0xC: lambda n, z, c, v: not z and n == v,
    0xD: lambda n, z, c, v: z or n != v,
    0xE: lambda n, z, c, v: True,
    0xF: lambda n, z, c, v: True,
}


@pytest.mark.parametrize("condition", range(16))
def test_condition_truth_table(condition: int) -> None:
    for nzcv in range(16):
        n, z, c, v = (bool(nzcv >> shift & 1) for shift in (3, 2, 1, 0))
        pstate = nzcv << 28 | 0x3C5  # other PSTATE bits must not matter
        assert Aarch64Backend.condition_holds(condition, pstate) == NZCV_CONDITIONS[condition](n, z, c, v)


def test_b_cond_plans() -> None:
    plan = analyze(word(0x54000000 | 0x10 << 5 | 0xC))  # b.gt +0x40
    assert isinstance(plan, A64CondBranch) and plan.condition == 0xC
    assert A64.emulate(plan, {"pstate": 0}).regs == {"pc": SITE + 0x40}
    assert A64.emulate(plan, {"pstate": 0x4000_0000}).regs == {"pc": SITE + 4}  # Z set


def test_cbz_tests_the_register_width() -> None:
    cbz_w = analyze("03020034")  # cbz w3, +0x40
    cbnz_x = analyze("030200b5")  # cbnz x3, +0x40
    assert isinstance(cbz_w, A64ZeroTest) and isinstance(cbnz_x, A64ZeroTest)
    high_only = {"x3": 1 << 40}
    assert A64.emulate(cbz_w, high_only).regs == {"pc": SITE + 0x40}  # w3 is zero
    assert A64.emulate(cbnz_x, high_only).regs == {"pc": SITE + 0x40}
    assert A64.emulate(cbnz_x, {"x3": 0}).regs == {"pc": SITE + 4}
    assert A64.emulate(analyze("1f0200b4"), {}).regs == {"pc": SITE + 0x40}  # cbz xzr: always


def test_tbz_tests_one_bit() -> None:
    tbnz = analyze("030240b7")  # tbnz x3, #40, +0x40
    assert isinstance(tbnz, A64ZeroTest) and tbnz.mask == 1 << 40 and tbnz.nonzero
    assert A64.emulate(tbnz, {"x3": 1 << 40}).regs == {"pc": SITE + 0x40}
    assert A64.emulate(tbnz, {"x3": (1 << 40) - 1}).regs == {"pc": SITE + 4}
    tbz = analyze("0000fcb6")  # tbz x0, #63, -0x8000
    assert A64.emulate(tbz, {"x0": (1 << 63) - 1}).regs == {"pc": SITE - 0x8000}


def test_register_branches() -> None:
    regs = {"x3": 0x5000, "x30": 0x6000}
    assert A64.emulate(analyze("60001fd6"), regs).regs == {"pc": 0x5000}  # br x3
    assert A64.emulate(analyze("c0035fd6"), regs).regs == {"pc": 0x6000}  # ret
    assert A64.emulate(analyze("60005fd6"), regs).regs == {"pc": 0x5000}  # ret x3
    assert A64.emulate(analyze("60003fd6"), regs).regs == {"pc": 0x5000, "x30": SITE + 4}  # blr x3
    blr_x30 = analyze("c0033fd6")
    assert isinstance(blr_x30, A64RegisterBranch) and blr_x30.link
    assert A64.emulate(blr_x30, regs).regs == {"pc": 0x6000, "x30": SITE + 4}  # the old x30
    assert A64.emulate(analyze("e0031fd6"), regs).regs == {"pc": 0}  # br xzr


def test_near_slot_jumps_back() -> None:
    plan = analyze("2000028b")  # add x0, x1, x2
    near = SITE + 0x100000
    setup = A64.prepare_xol(plan, near, {"pc": SITE})
    back = int.from_bytes(setup.code[4:], "little")
    assert setup.ends == "jump" and setup.regs == {"pc": near} and not setup.restore
    assert setup.code[:4] == plan.code and back >> 26 == 0x5  # b
    assert near + 4 + (((back & 0x3FFFFFF) ^ 0x2000000) - 0x2000000) * 4 == SITE + 4
    assert len(setup.code) <= A64.slot_size


def test_jump_reach_is_b_reach() -> None:
    plan = analyze("2000028b")
    assert A64.prepare_xol(plan, SITE + (1 << 27), {}).ends == "jump"  # b -128 MiB
    assert A64.prepare_xol(plan, SITE + (1 << 27) + 4, {}).ends == "step"
    assert A64.prepare_xol(plan, SITE - (1 << 27) + 4, {}).ends == "jump"  # b +128 MiB - 4
    assert A64.prepare_xol(plan, SITE - (1 << 27), {}).ends == "step"


def test_far_slot_single_steps_and_fixes_pc() -> None:
    plan = analyze("2000028b")
    setup = A64.prepare_xol(plan, SLOT, {"pc": SITE})
    assert (setup.ends, setup.code, setup.regs) == ("step", plan.code, {"pc": SLOT})
    assert A64.finish_xol(plan, SLOT, {"pc": SLOT + 4}).regs == {"pc": SITE + 4}
    assert A64.abort_xol(plan, SLOT, {"pc": SLOT}).regs == {"pc": SITE}
