"""The riscv64 backend's decisions, as pure logic: what is refused and why, simulated, or run
out of line, and what the per-hit calls return; and the tracing facts of its Arch.

Encodings were assembled with ``riscv64-linux-gnu-as -march=rv64gc`` (``.option norelax``) and
are checked against capstone's own decoding, so these tests need no binutils."""

from __future__ import annotations

import random

import capstone
import pytest

from uemu.arch import by_name
from uemu.arch.base import Refuse
from uemu.arch.riscv import RiscvBackend, RiscvBranch, RiscvFixed, RiscvRegisterJump, RiscvStep

RV = RiscvBackend()
SITE = 0x5555_5555_1232
SLOT = 0x3F_FFFF_F000
MASK64 = (1 << 64) - 1


def analyze(hex_word: str, vaddr: int = SITE):
    """Analyse an instruction given as objdump prints it (a 16- or 32-bit number)."""
    return RV.analyze(int(hex_word, 16).to_bytes(len(hex_word) // 2, "little"), vaddr)


def test_arch_facts() -> None:
    arch = by_name("riscv64")
    assert isinstance(arch.backend, RiscvBackend)
    assert arch.regset == ("pc", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1",
                           *(f"a{n}" for n in range(8)), *(f"s{n}" for n in range(2, 12)),
                           "t3", "t4", "t5", "t6")
    assert (arch.regset_word, arch.ip_reg, arch.sp_reg, arch.audit_arch) == (8, "pc", "sp", 0xC00000F3)
    assert arch.mapping_syscalls == by_name("aarch64").mapping_syscalls  # both use asm-generic's table
    canonical = {spec.canonical for spec in arch.spec_registers.values()} - {"zero"}
    assert canonical == set(arch.regset) - {"pc"}  # "s0", never "fp"


def test_traps() -> None:
    assert RV.trap_bytes(bytes.fromhex("0100")) == bytes.fromhex("0290")  # c.ebreak over c.nop
    assert RV.trap_bytes(bytes.fromhex("13000000")) == bytes.fromhex("73001000")  # ebreak over nop
    assert RV.is_trap(bytes.fromhex("0290")) and RV.is_trap(bytes.fromhex("73001000"))
    assert RV.is_trap(bytes.fromhex("02900100"))  # c.ebreak then anything
    assert not RV.is_trap(bytes.fromhex("73000000")) and not RV.is_trap(bytes.fromhex("8290"))  # ecall, c.jalr ra
    assert not RV.is_trap(b"\x73\x00\x10") and not RV.is_trap(b"")
    assert RV.trap_address(SITE) == SITE


@pytest.mark.parametrize(
    ("hex_word", "reason"),
    [
        ("00000073", "SYSTEM"),  # ecall
        ("00100073", "SYSTEM"),  # ebreak
        ("c0002573", "SYSTEM"),  # rdcycle a0
        ("30200073", "SYSTEM"),  # mret
        ("10500073", "SYSTEM"),  # wfi
        ("0ff0000f", "fence"),
        ("8330000f", "fence"),  # fence.tso
        ("0000100f", "fence"),  # fence.i
        ("0100000f", "fence"),  # pause
        ("9002", "c.ebreak"),
    ],
)
def test_refused(hex_word: str, reason: str) -> None:
    plan = analyze(hex_word)
    assert isinstance(plan, Refuse) and plan.size == len(hex_word) // 2
    assert reason in plan.reason and plan.reason.startswith("not supported by uprobes: ")


def test_refused_without_an_instruction() -> None:
    assert "aligned" in RV.analyze(bytes.fromhex("0100"), SITE + 1).reason
    assert RV.analyze(b"\x13\x00\x00", SITE).size == 0  # 4-byte instruction, 3 bytes
    assert RV.analyze(b"\x01", SITE).size == 0
    longer = RV.analyze(bytes.fromhex("1f000000"), SITE)  # 48-bit encoding space
    assert isinstance(longer, Refuse) and "longer" in longer.reason


@pytest.mark.parametrize(("hex_word", "size"), [("0001", 2), ("00000013", 4)])
def test_nops_are_emulated(hex_word: str, size: int) -> None:
    plan = analyze(hex_word)
    assert isinstance(plan, RiscvFixed) and plan.size == size
    assert RV.emulate(plan, {}).regs == {"pc": SITE + size}


@pytest.mark.parametrize(
    ("hex_word", "offset", "link"),
    [
        ("800ff0ef", -0x1000, "ra"),  # jal ra, .-0x1000
        ("7ffff06f", 0xFFFFE, None),  # j .+0xffffe
        ("800002ef", -0x100000, "t0"),
        ("affd", 0x7FE, None),  # c.j
        ("b001", -0x800, None),
    ],
)
def test_jal_and_c_j(hex_word: str, offset: int, link: str | None) -> None:
    plan = analyze(hex_word)
    assert isinstance(plan, RiscvFixed)
    expected = {"pc": SITE + offset} | ({link: SITE + 4} if link else {})
    assert RV.emulate(plan, {}).regs == expected


def test_c_jal_encoding_is_c_addiw_on_rv64() -> None:
    plan = analyze("357d")  # c.addiw a0, -1
    assert isinstance(plan, RiscvStep) and plan.text == "c.addiw a0, -1"


@pytest.mark.parametrize(
    ("hex_word", "register", "value"),
    [
        ("fffff517", "a0", SITE - 0x1000),  # auipc a0, 0xfffff
        ("80000f97", "t6", SITE - 0x80000000),  # auipc t6, 0x80000: imm sign-extended from 32 bits
        ("00005097", "ra", SITE + 0x5000),
    ],
)
def test_auipc(hex_word: str, register: str, value: int) -> None:
    assert RV.emulate(analyze(hex_word), {}).regs == {"pc": SITE + 4, register: value}


def test_auipc_to_zero_only_moves_pc() -> None:
    assert RV.emulate(analyze("00005017"), {}).regs == {"pc": SITE + 4}


@pytest.mark.parametrize(
    ("hex_word", "left", "right", "taken", "offset"),
    [
        ("7eb50fe3", 5, 5, True, 0xFFE),  # beq a0, a1
        ("7eb50fe3", 5, 6, False, 0xFFE),
        ("80051063", 1, 0, True, -0x1000),  # bnez a0
        ("0462c063", MASK64, 0, True, 0x40),  # blt t0, t1: -1 < 0
        ("00b55463", 0, MASK64, True, 8),  # bge a0, a1: 0 >= -1
        ("feb56fe3", 0, MASK64, True, -2),  # bltu a0, a1: 0 < 2**64 - 1
        ("00b57263", 0, MASK64, False, 4),  # bgeu
    ],
)
def test_branches(hex_word: str, left: int, right: int, taken: bool, offset: int) -> None:
    plan = analyze(hex_word)
    assert isinstance(plan, RiscvBranch)
    regs = {plan.rs1: left} | ({plan.rs2: right} if plan.rs2 else {})
    assert RV.emulate(plan, regs).regs == {"pc": SITE + (offset if taken else 4)}


def test_compressed_branches_compare_with_zero() -> None:
    beqz, bnez = analyze("cd7d"), analyze("f081")  # c.beqz a0, .+0xfe; c.bnez s1, .-0x100
    assert isinstance(beqz, RiscvBranch) and (beqz.rs1, beqz.rs2, beqz.condition) == ("a0", None, 0)
    assert (bnez.rs1, bnez.rs2, bnez.condition) == ("s1", None, 1)
    assert RV.emulate(beqz, {"a0": 0}).regs == {"pc": SITE + 0xFE}
    assert RV.emulate(beqz, {"a0": 1}).regs == {"pc": SITE + 2}
    assert RV.emulate(bnez, {"s1": 1 << 63}).regs == {"pc": SITE - 0x100}


BRANCH_TRUTH = {  # RISC-V unprivileged spec, written independently of the backend
    0: lambda a, b: a == b,
    1: lambda a, b: a != b,
    4: lambda a, b: a - (a >> 63 << 64) < b - (b >> 63 << 64),
    5: lambda a, b: a - (a >> 63 << 64) >= b - (b >> 63 << 64),
    6: lambda a, b: a < b,
    7: lambda a, b: a >= b,
}


@pytest.mark.parametrize("condition", sorted(BRANCH_TRUTH))
def test_branch_truth_table(condition: int) -> None:
    values = [0, 1, 2, (1 << 63) - 1, 1 << 63, MASK64, MASK64 - 1]
    for left in values:
        for right in values:
            assert RiscvBackend.condition_holds(condition, left, right) == BRANCH_TRUTH[condition](left, right)


def test_register_jumps() -> None:
    regs = {"a1": 0x7001, "t0": 0x5000, "a0": 0x9000, "ra": 0x1111}
    jalr = analyze("800580e7")  # jalr ra, -2048(a1)
    assert isinstance(jalr, RiscvRegisterJump)
    assert RV.emulate(jalr, regs).regs == {"pc": 0x7001 - 2048 & ~1, "ra": SITE + 4}  # bit 0 cleared
    assert RV.emulate(analyze("7ff28067"), regs).regs == {"pc": 0x5000 + 2047 & ~1}  # jr 2047(t0)
    assert RV.emulate(analyze("00050567"), regs).regs == {"pc": 0x9000, "a0": SITE + 4}  # jalr a0, 0(a0)
    assert RV.emulate(analyze("8502"), regs).regs == {"pc": 0x9000}  # c.jr a0
    assert RV.emulate(analyze("9282"), regs).regs == {"pc": 0x5000, "ra": SITE + 2}  # c.jalr t0
    assert RV.emulate(analyze("9082"), regs).regs == {"pc": 0x1111 & ~1, "ra": SITE + 2}  # c.jalr ra: old ra


@pytest.mark.parametrize(
    ("hex_word", "why"),
    [
        ("8002", "c.jr x0 is reserved"),
        ("0000a063", "branch funct3 2 is reserved"),
        ("00001067", "jalr funct3 1 is reserved"),
    ],
)
def test_reserved_forms_step_instead_of_looping(hex_word: str, why: str) -> None:
    """The kernel 'simulates' these, its simulation fails and pc stays on the trap forever; here
    they run in a slot, fault there and the signal names the site."""
    assert isinstance(analyze(hex_word), RiscvStep), why


def test_immediates_agree_with_capstone() -> None:
    """Random jal, c.j, branches and compressed branches: the target the backend computes is the
    one capstone prints (capstone prints pc-relative offsets for riscv)."""
    decoder = capstone.Cs(capstone.CS_ARCH_RISCV, capstone.CS_MODE_RISCV64 | capstone.CS_MODE_RISCVC)
    rng = random.Random(3)
    patterns = [(0x6F, 0x7F, 4), (0x63, 0x707F, 4), (0xA001, 0xE003, 2), (0xC001, 0xE003, 2)]
    for _ in range(400):
        match, mask, size = rng.choice(patterns)
        word = rng.getrandbits(8 * size) & ~mask | match
        code = word.to_bytes(size, "little")
        plan = RV.analyze(code, SITE)
        insn = next(decoder.disasm(code, SITE))
        offset = int(insn.op_str.split(", ")[-1], 16)
        target = plan.taken.regs["pc"] if isinstance(plan, RiscvBranch) else plan.effects.regs["pc"]
        assert target == (SITE + offset) & MASK64, (code.hex(), insn.op_str)


@pytest.mark.parametrize(("hex_word", "size"), [("00150513", 4), ("0505", 2)])  # addi a0, a0, 1; c.addi a0, 1
def test_far_slot_ends_in_ebreak(hex_word: str, size: int) -> None:
    plan = analyze(hex_word)
    setup = RV.prepare_xol(plan, SLOT, {"pc": SITE})
    assert (setup.ends, setup.regs, dict(setup.restore)) == ("trap", {"pc": SLOT}, {})
    assert setup.code == plan.code + bytes.fromhex("73001000") and len(setup.code) == size + 4 <= RV.slot_size
    assert RV.finish_xol(plan, SLOT, {"pc": SLOT + size}).regs == {"pc": SITE + size}
    assert RV.abort_xol(plan, SLOT, {"pc": SLOT}).regs == {"pc": SITE}


def test_near_slot_jumps_back() -> None:
    plan = analyze("0505")
    near = SITE + 0x80000 + 2
    setup = RV.prepare_xol(plan, near, {"pc": SITE})
    assert setup.ends == "jump" and setup.code[:2] == plan.code
    jal = next(capstone.Cs(capstone.CS_ARCH_RISCV, capstone.CS_MODE_RISCV64).disasm(setup.code[2:], near + 2))
    assert jal.mnemonic == "j" and near + 2 + int(jal.op_str, 16) == SITE + 2


def test_jump_reach_is_jal_reach() -> None:
    plan = analyze("00150513")
    assert RV.prepare_xol(plan, SITE + (1 << 20), {}).ends == "jump"  # jal -1 MiB
    assert RV.prepare_xol(plan, SITE + (1 << 20) + 2, {}).ends == "trap"
    assert RV.prepare_xol(plan, SITE - (1 << 20) + 2, {}).ends == "jump"  # jal +1 MiB - 2
    assert RV.prepare_xol(plan, SITE - (1 << 20), {}).ends == "trap"
