"""The x86 backend's decisions, as pure logic: what is refused and why, emulated, or stepped
with which fixup, and what the per-hit calls return."""

from __future__ import annotations

from contextlib import suppress

import pytest
from xol_harness import MACHINES

from uemu.arch import by_name
from uemu.arch.base import Refuse
from uemu.arch.x86 import (
    GOOD_INSNS_32,
    GOOD_INSNS_64,
    NOP,
    Fixup,
    X86Backend,
    X86Call,
    X86CondJump,
    X86Jump,
    X86Jumps,
    X86Push,
    X86Step,
    _capstone,
    _is_nop,
    _scan_encoding,
)

X86_64 = X86Backend(mode64=True)
I386 = X86Backend(mode64=False)
SITE = 0x401000


def analyze64(hex_code: str):
    return X86_64.analyze(bytes.fromhex(hex_code), SITE)


def test_backends_are_attached_to_their_arches() -> None:
    assert isinstance(by_name("x86_64").backend, X86Backend) and by_name("x86_64").backend.mode64
    assert isinstance(by_name("i386").backend, X86Backend) and not by_name("i386").backend.mode64


@pytest.mark.parametrize(
    ("hex_code", "reason"),
    [
        ("f0830001", "lock prefix"),
        ("2e8b00", "cs segment prefix"),
        ("268b00", "es segment prefix"),
        ("368b00", "ss segment prefix"),
        ("3e8b00", "ds segment prefix"),
        ("662e0f1f840000000000", "cs segment prefix"),  # gas's long padding nop, refused as by the kernel
        ("8ed0", "mov/pop %ss"),
        ("cc", "opcode 0xcc (int3"),
        ("cd80", "opcode 0xcd (int N"),
        ("f4", "opcode 0xf4 (hlt"),
        ("ec", "opcode 0xec (in/out"),
        ("6c", "opcode 0x6c (ins/outs"),
        ("fa", "opcode 0xfa (cli/sti"),
        ("f1", "opcode 0xf1 (int1"),
        ("cf", "opcode 0xcf (iret"),
        ("c5f1efc0", "opcode 0xef after a VEX/EVEX prefix"),  # vpxor, refused on Linux 6.18 too
        ("c5f96f00", "opcode 0x6f after a VEX/EVEX prefix"),  # vmovdqa load
        ("66e900000000", "branch with a 0x66 prefix"),  # capstone: rel32, as Intel CPUs
        ("66e800000000", "branch with a 0x66 prefix"),
        ("66740a", "branch with a 0x66 prefix"),
        ("ffff", "ENOEXEC"),
        ("06", "ENOEXEC"),  # push es does not exist in 64-bit mode
        ("48", "ENOEXEC"),  # a lone REX prefix
    ],
)
def test_refused_x86_64(hex_code: str, reason: str) -> None:
    plan = analyze64(hex_code)
    assert isinstance(plan, Refuse)
    assert reason in plan.reason


@pytest.mark.parametrize(
    ("hex_code", "reason"),
    [
        ("17", "mov/pop %ss"),
        ("8ed0", "mov/pop %ss"),
        ("07", "opcode 0x07 (pop es/ss/ds"),
        ("ce", "opcode 0xce (into"),
        ("e460", "opcode 0xe4 (in/out"),
        ("f0ff00", "lock prefix"),
        ("66eb00", "branch with a 0x66 prefix"),
    ],
)
def test_refused_i386(hex_code: str, reason: str) -> None:
    plan = I386.analyze(bytes.fromhex(hex_code), SITE)
    assert isinstance(plan, Refuse)
    assert reason in plan.reason


def test_good_tables_are_the_kernels() -> None:
    refused_64 = {0x06, 0x07, 0x0E, 0x16, 0x17, 0x1E, 0x1F, 0x27, 0x2F, 0x37, 0x3F, 0x60, 0x61, 0x62,
                  *range(0x6C, 0x70), 0x82, 0x9A, *range(0xCC, 0xD0), 0xD4, 0xD5, 0xD6,
                  *range(0xE4, 0xE8), 0xEA, *range(0xEC, 0xF0), 0xF1, 0xF4, 0xFA, 0xFB}
    refused_32 = {0x07, 0x17, 0x1F, *range(0x6C, 0x70), *range(0xCC, 0xD0), *range(0xE4, 0xE8),
                  *range(0xEC, 0xF0), 0xF1, 0xF4, 0xFA, 0xFB}
    assert set(range(256)) - GOOD_INSNS_64 == refused_64
    assert set(range(256)) - GOOD_INSNS_32 == refused_32


@pytest.mark.parametrize("hex_code", ["0f05", "0f34", "0f0b", "0f32", "0f30", "0faee8", "0f01f9"])
def test_every_0f_opcode_is_accepted_as_by_the_kernel(hex_code: str) -> None:
    """syscall, sysenter, ud2, rdmsr, wrmsr, lfence, rdtscp: 0x0f is a good first byte."""
    assert isinstance(analyze64(hex_code), X86Step)


@pytest.mark.parametrize("hex_code", [nop.hex for nop in MACHINES["x86_64"].nops])
def test_nops_jump_to_the_next_instruction(hex_code: str) -> None:
    plan = analyze64(hex_code)
    assert isinstance(plan, X86Jump)
    assert plan.size == len(hex_code) // 2
    assert X86_64.emulate(plan, {}).regs == {"rip": SITE + plan.size}


@pytest.mark.parametrize("hex_code", ["4190", "4990", "0f1f08"])
def test_not_nops(hex_code: str) -> None:
    """xchg r8d, eax and xchg r8, rax (the kernel would emulate them as nops); 0f 1f /1."""
    assert isinstance(analyze64(hex_code), X86Step)


def test_branches_jump_relative_to_the_next_instruction() -> None:
    assert X86_64.emulate(analyze64("eb10"), {}).regs == {"rip": SITE + 2 + 0x10}
    assert X86_64.emulate(analyze64("ebfe"), {}).regs == {"rip": SITE}
    assert X86_64.emulate(analyze64("e900f0ffff"), {}).regs == {"rip": SITE + 5 - 0x1000}
    assert I386.emulate(I386.analyze(bytes.fromhex("e9f0ffffff"), 0x8), {}).regs == {"eip": 0xFFFFFFFD}


def test_jcc_plans_carry_the_condition_nibble() -> None:
    short, near = analyze64("7e10"), analyze64("0f8e00010000")
    assert isinstance(short, X86CondJump) and isinstance(near, X86CondJump)
    assert short.condition == near.condition == 0xE
    assert short.taken.regs == {"rip": SITE + 2 + 0x10}
    assert near.not_taken.regs == {"rip": SITE + 6}


INTEL_CONDITIONS = {  # Intel SDM Jcc table, written independently of the backend
    0x0: lambda cf, pf, zf, sf, of: of,
    0x1: lambda cf, pf, zf, sf, of: not of,
    0x2: lambda cf, pf, zf, sf, of: cf,
    0x3: lambda cf, pf, zf, sf, of: not cf,
    0x4: lambda cf, pf, zf, sf, of: zf,
    0x5: lambda cf, pf, zf, sf, of: not zf,
    0x6: lambda cf, pf, zf, sf, of: cf or zf,
    0x7: lambda cf, pf, zf, sf, of: not cf and not zf,
    0x8: lambda cf, pf, zf, sf, of: sf,
    0x9: lambda cf, pf, zf, sf, of: not sf,
    0xA: lambda cf, pf, zf, sf, of: pf,
    0xB: lambda cf, pf, zf, sf, of: not pf,
    0xC: lambda cf, pf, zf, sf, of: sf != of,
    0xD: lambda cf, pf, zf, sf, of: sf == of,
    0xE: lambda cf, pf, zf, sf, of: zf or sf != of,
    0xF: lambda cf, pf, zf, sf, of: not zf and sf == of,
}


@pytest.mark.parametrize("condition", range(16))
def test_condition_truth_table(condition: int) -> None:
    for combo in range(32):
        bits = [bool(combo >> index & 1) for index in range(5)]
        flags = 0x2 | sum(bit for bit, on in zip((0x1, 0x4, 0x40, 0x80, 0x800), bits, strict=True) if on)
        assert X86Backend.condition_holds(condition, flags) == bool(INTEL_CONDITIONS[condition](*bits))


def test_call_pushes_the_return_address() -> None:
    plan = analyze64("e800010000")
    assert isinstance(plan, X86Call)
    effects = X86_64.emulate(plan, {"rsp": 0x7FFF0000})
    assert effects.regs == {"rip": SITE + 5 + 0x100, "rsp": 0x7FFEFFF8}
    assert effects.writes == ((0x7FFEFFF8, (SITE + 5).to_bytes(8, "little")),)
    effects = I386.emulate(I386.analyze(bytes.fromhex("e800010000"), SITE), {"esp": 0x1000})
    assert effects.writes == ((0xFFC, (SITE + 5).to_bytes(4, "little")),)


@pytest.mark.parametrize(("hex_code", "register"), [("50", "rax"), ("54", "rsp"), ("57", "rdi"),
                                                    ("4150", "r8"), ("4157", "r15")])
def test_push_emulation(hex_code: str, register: str) -> None:
    plan = analyze64(hex_code)
    assert isinstance(plan, X86Push) and plan.register == register
    regs = {"rax": 1, "rsp": 0x7000, "rdi": 3, "r8": 4, "r15": 5}
    effects = X86_64.emulate(plan, regs)
    assert effects.regs == {"rip": SITE + plan.size, "rsp": 0x6FF8}
    assert effects.writes == ((0x6FF8, regs[register].to_bytes(8, "little")),)  # push rsp: the old value


@pytest.mark.parametrize("hex_code", ["4850", "6650", "4950"])
def test_other_pushes_step(hex_code: str) -> None:
    assert isinstance(analyze64(hex_code), X86Step)


def test_i386_push_and_inc() -> None:
    assert I386.analyze(b"\x56", SITE).register == "esi"
    assert isinstance(I386.analyze(b"\x41", SITE), X86Step)  # inc ecx, not REX.B


@pytest.mark.parametrize(
    ("hex_code", "fixup", "one_stop"),
    [
        ("4889d8", Fixup.IP, True),  # mov rax, rbx
        ("9d", Fixup.IP, False),  # popf
        ("c3", Fixup.NONE, False),
        ("c20800", Fixup.NONE, False),
        ("cb", Fixup.NONE, False),
        ("ffe0", Fixup.NONE, False),  # jmp rax
        ("ff28", Fixup.NONE, False),  # ljmp [rax]
        ("ffd0", Fixup.CALL, False),  # call rax
        ("ff18", Fixup.CALL, False),  # lcall [rax]
        ("e20e", Fixup.IP, False),  # loop: relative, must not run from a slot it jumps within
        ("0f05", Fixup.IP, False),  # syscall
        ("c5f0c2c100", Fixup.IP, True),  # vcmpeqps: opcode byte c2 but not ret (the kernel's SIGSEGV)
    ],
)
def test_step_fixups(hex_code: str, fixup: Fixup, one_stop: bool) -> None:
    plan = analyze64(hex_code)
    assert isinstance(plan, X86Step)
    assert (plan.fixup, plan.one_stop) == (fixup, one_stop)


@pytest.mark.parametrize(
    ("hex_code", "scratch", "scratch_code"),
    [
        ("488b0500010000", "rsi", "488b8600010000"),  # mov rax, [rip+0x100] -> [rsi+0x100]
        ("8b3510000000", "rdi", "8bb710000000"),  # mov esi, [rip+0x10]: reg is si
        ("4c8b3510000000", "rdi", "4c8bb710000000"),  # mov r14, ...: ModRM.reg 6 as the kernel sees it
        ("408a3510000000", "rdi", "408ab710000000"),  # mov sil, ...
        ("c4e243f63510000000", "rbx", "c4e243f6b310000000"),  # mulx esi, edi: reg si, vvvv di
        ("c4e240f23510000000", "rbx", "c4e240f2b310000000"),  # andn esi, edi: reg si, vvvv di
        ("0fc70d10000000", "rsi", "0fc78e10000000"),  # cmpxchg8b: uses ebx implicitly
        ("ff1508000000", "rsi", "ff9608000000"),  # call [rip+8]
        ("41ff2508000000", "rsi", "40ffa608000000"),  # jmp [rip+8] with a stray REX.B: cleared
        ("c4c178100510000000", "rsi", "c4e178108610000000"),  # vmovups with VEX.B clear: set
        ("48c705f0ffffff78563412", "rsi", "48c786f0ffffff78563412"),  # imm32 after the disp32
    ],
)
def test_rip_relative_scratch_rewrite(hex_code: str, scratch: str, scratch_code: str) -> None:
    plan = analyze64(hex_code)
    assert isinstance(plan, X86Step) and plan.riprel is not None
    disp = int.from_bytes(bytes.fromhex(hex_code)[plan.riprel.disp_offset:][:4], "little", signed=True)
    assert plan.riprel.target == SITE + plan.size + disp
    assert plan.riprel.scratch == scratch
    assert plan.riprel.scratch_code.hex() == scratch_code


def test_i386_has_no_rip_relative_operands() -> None:
    plan = I386.analyze(bytes.fromhex("8b0500100000"), SITE)  # mov eax, [0x1000]
    assert isinstance(plan, X86Step) and plan.riprel is None


def test_far_slot_uses_the_scratch_register_and_a_step() -> None:
    plan = analyze64("488b0500010000")  # mov rax, [rip + 0x100]
    slot = SITE + (5 << 30)
    setup = X86_64.prepare_xol(plan, slot, {"rip": SITE, "rsi": 0x1234})
    assert (setup.ends, setup.code.hex()) == ("step", "488b8600010000")
    assert setup.regs == {"rip": slot, "rsi": SITE + 7}
    assert setup.restore == {"rsi": 0x1234}
    assert X86_64.finish_xol(plan, slot, {"rip": slot + 7}).regs == {"rip": SITE + 7}
    assert X86_64.abort_xol(plan, slot, {"rip": slot}).regs == {"rip": SITE}


def test_near_slot_rewrites_the_displacement_and_jumps_back() -> None:
    plan = analyze64("488b0500010000")
    slot = SITE + 0x10000
    setup = X86_64.prepare_xol(plan, slot, {"rip": SITE})
    new_disp = SITE + 7 + 0x100 - (slot + 7)
    back = SITE + 7 - (slot + 7 + 5)
    assert setup.ends == "jump" and setup.regs == {"rip": slot} and not setup.restore
    assert setup.code == (bytes.fromhex("488b05") + new_disp.to_bytes(4, "little", signed=True)
                          + b"\xe9" + back.to_bytes(4, "little", signed=True))


def test_far_slot_without_rip_operand_steps_and_fixes_ip() -> None:
    plan = analyze64("4889d8")
    slot = SITE + (5 << 30)
    setup = X86_64.prepare_xol(plan, slot, {"rip": SITE})
    assert (setup.ends, setup.code) == ("step", bytes.fromhex("4889d8"))
    assert X86_64.finish_xol(plan, slot, {"rip": slot + 3}).regs == {"rip": SITE + 3}


def test_i386_jump_back_wraps_around() -> None:
    plan = I386.analyze(bytes.fromhex("89d8"), 0x1000)  # mov eax, ebx
    setup = I386.prepare_xol(plan, 0xFFFF0000, {"eip": 0x1000})
    assert setup.ends == "jump"
    assert (0xFFFF0000 + 2 + 5 + int.from_bytes(setup.code[3:], "little", signed=True)) & 0xFFFFFFFF == 0x1002


def test_calls_step_and_fix_the_return_address() -> None:
    plan = analyze64("ffd0")  # call rax
    slot = SITE + 0x10000
    setup = X86_64.prepare_xol(plan, slot, {"rip": SITE})
    assert setup.ends == "step"
    effects = X86_64.finish_xol(plan, slot, {"rip": 0x5000, "rsp": 0x7FF8})
    assert effects.regs == {} and effects.writes == ((0x7FF8, (SITE + 2).to_bytes(8, "little")),)
    i386_plan = I386.analyze(bytes.fromhex("ffd0"), SITE)
    assert I386.finish_xol(i386_plan, slot, {"eip": 0x5000, "esp": 0x7FFC}).writes == (
        (0x7FFC, (SITE + 2).to_bytes(4, "little")),)


def test_ret_keeps_its_ip() -> None:
    plan = analyze64("c3")
    assert X86_64.finish_xol(plan, SITE + 0x10000, {"rip": 0x5000, "rsp": 0x8000}) == X86_64.finish_xol(
        plan, SITE + 0x20000, {"rip": 0x6000, "rsp": 0x8000})
    assert not X86_64.finish_xol(plan, SITE + 0x10000, {"rip": 0x5000, "rsp": 0x8000}).regs


def test_traps() -> None:
    assert X86_64.trap_bytes(b"\x90") == b"\xcc"
    assert X86_64.trap_bytes(bytes.fromhex("0f1f440000")) == b"\xcc\xcc"  # nop5: a second int3 inside
    assert I386.trap_bytes(bytes.fromhex("55")) == b"\xcc"  # push: the next byte is the next instruction
    assert X86_64.is_trap(b"\xcc\x90") and not X86_64.is_trap(b"\xcd\x03") and not X86_64.is_trap(b"")
    assert X86_64.trap_address(SITE + 1) == SITE


# ---- a push that cannot be emulated is stepped instead -------------------------------------

_STACK_TOP = 0x7FFF0000
_SLOT = 0x10000000


def _run_one(mode64: bool, code: bytes, at: int, regs: dict[str, int],
             stack: bool) -> tuple[dict[str, int], bytes | None, int | None]:
    """One instruction in unicorn: registers after, the stack word below the old sp, the
    address of a write fault (None when it ran)."""
    import unicorn
    from unicorn import x86_const

    emu = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64 if mode64 else unicorn.UC_MODE_32)
    emu.mem_map(at & ~0xFFF, 0x2000)
    emu.mem_write(at, code + b"\xf4")
    if stack:
        emu.mem_map(_STACK_TOP - 0x10000, 0x10000)
    names = {"sp": x86_const.UC_X86_REG_RSP if mode64 else x86_const.UC_X86_REG_ESP,
             "ip": x86_const.UC_X86_REG_RIP if mode64 else x86_const.UC_X86_REG_EIP,
             "ax": x86_const.UC_X86_REG_RAX if mode64 else x86_const.UC_X86_REG_EAX}
    emu.reg_write(names["sp"], regs["sp"])
    emu.reg_write(names["ax"], regs["ax"])
    faulted: list[int] = []

    def on_fault(uc, access, address, size, value, data) -> bool:
        faulted.append(address)
        return False

    emu.hook_add(unicorn.UC_HOOK_MEM_WRITE_UNMAPPED, on_fault)
    with suppress(unicorn.UcError):
        emu.emu_start(at, at + len(code) + 0x1000, count=1)
    after = {"sp": emu.reg_read(names["sp"]), "ip": emu.reg_read(names["ip"]), "ax": emu.reg_read(names["ax"])}
    word = 8 if mode64 else 4
    below = bytes(emu.mem_read(regs["sp"] - word, word)) if stack else None
    return after, below, faulted[0] if faulted else None


@pytest.mark.parametrize("mode64", [True, False], ids=["x86_64", "i386"])
@pytest.mark.parametrize("hex_code", ["e800010000", "50"])
def test_a_push_that_cannot_be_emulated_is_stepped_to_the_same_end(mode64: bool, hex_code: str) -> None:
    """The stand-in faults at the address the instruction's own push faults at, and with a
    stack it leaves the state the instruction leaves (push) or the site to run again (call)."""
    backend = X86_64 if mode64 else I386
    ip, sp = ("rip", "rsp") if mode64 else ("eip", "esp")
    plan = backend.analyze(bytes.fromhex(hex_code), SITE)
    stand_in = backend.step_instead(plan)
    assert isinstance(stand_in, X86Step)
    setup = backend.prepare_xol(stand_in, _SLOT, {ip: SITE, sp: _STACK_TOP, "rax": 7, "eax": 7})
    assert setup.ends == "step" and setup.regs == {ip: _SLOT}
    for stack in (False, True):
        start = {"sp": _STACK_TOP if stack else 0x1000, "ax": 7}
        in_place = _run_one(mode64, bytes.fromhex(hex_code), SITE, start, stack)
        slot_run = _run_one(mode64, setup.code, _SLOT, start, stack)
        if not stack:
            assert in_place[2] is not None and slot_run[2] == in_place[2]
            assert backend.abort_xol(stand_in, _SLOT, {ip: _SLOT}).regs == {ip: SITE}
            continue
        effects = backend.finish_xol(stand_in, _SLOT, {ip: slot_run[0]["ip"], sp: slot_run[0]["sp"]})
        if isinstance(plan, X86Push):
            assert effects.regs[ip] == in_place[0]["ip"] and slot_run[0]["sp"] == in_place[0]["sp"]
            assert slot_run[1] == in_place[1]
        else:
            assert effects.regs == {ip: SITE, sp: _STACK_TOP}


def test_only_pushing_emulations_have_a_stand_in() -> None:
    assert X86_64.step_instead(analyze64("90")) is None
    assert X86_64.step_instead(analyze64("eb10")) is None
    assert X86_64.step_instead(analyze64("4157")).code == bytes.fromhex("4157")


@pytest.mark.parametrize("name", ["x86_64", "i386"])
def test_what_is_known_without_capstone_is_what_capstone_says(name: str) -> None:
    """The SDT ``nop`` (0x90) is analysed, and a byte after it found to start no longer
    nop, without decoding (capstone's import is 30 ms of every run): the same plan, the
    same instruction length and nop size as capstone's decoding gives."""
    arch = by_name(name)
    backend, jumps = arch.backend, arch.jumps
    assert isinstance(backend, X86Backend) and isinstance(jumps, X86Jumps)
    decoder = _capstone(backend.mode64)
    assert backend.analyze(NOP + bytes(14), SITE) == X86Jump(vaddr=SITE, size=1, text="nop",
                                                             effects=backend._goto(SITE + 1))
    tails = (b"\x1f\x44\x00\x00", b"\x1e\xfa\x00\x00", b"\x90\x00\x00\x00", b"\x0f\x1f\x00\x00", bytes(4))
    for first in range(256):
        for tail in tails:
            code = bytes([first]) + tail + bytes(10)
            insn = next(decoder.disasm(code, 0, 1), None)
            raw = bytes(insn.bytes) if insn else b""
            nop = insn is not None and _is_nop(raw, _scan_encoding(raw, backend.mode64), insn.modrm)
            assert jumps._nop_size(code) == (insn.size if nop else 0), code.hex()  # type: ignore[union-attr]
            assert backend._length(code) == (insn.size if insn else 1), code.hex()
