"""The register facts of every arch, as argument specs use them."""

from __future__ import annotations

import subprocess
import sys

import pytest
from elftools.elf.enums import ENUM_E_MACHINE

from uemu.arch import all_arches, by_name, for_elf
from uemu.argspec import _DIALECTS, ZERO_REGISTER, parse

ARCHES = {
    # name: (e_machine, class, little_endian, canonical registers)
    "aarch64": ("EM_AARCH64", 64, True, {f"x{n}" for n in range(31)} | {"sp", ZERO_REGISTER}),
    "arm": ("EM_ARM", 32, True, {f"r{n}" for n in range(16)}),
    "ppc64": ("EM_PPC64", 64, False, {f"r{n}" for n in range(32)}),
    "ppc64le": ("EM_PPC64", 64, True, {f"r{n}" for n in range(32)}),
    "s390x": ("EM_S390", 64, False, {f"r{n}" for n in range(16)}),
    "riscv64": ("EM_RISCV", 64, True, {
        "zero", "ra", "sp", "gp", "tp", *(f"t{n}" for n in range(7)), *(f"s{n}" for n in range(12)),
        *(f"a{n}" for n in range(8)),
    }),
    "loongarch64": ("EM_LOONGARCH", 64, True, {f"r{n}" for n in range(1, 32)} | {ZERO_REGISTER}),
    "mips64": ("EM_MIPS", 64, None, {f"r{n}" for n in range(1, 32)} | {ZERO_REGISTER}),
}


@pytest.mark.parametrize("name", sorted(ARCHES))
def test_arch_facts(name: str) -> None:
    e_machine, elf_class, little_endian, canonical = ARCHES[name]
    arch = by_name(name)
    assert (arch.e_machine, arch.elf_class, arch.little_endian) == (e_machine, elf_class, little_endian)
    assert e_machine in ENUM_E_MACHINE  # pyelftools' spelling
    assert arch.spec_dialect in _DIALECTS
    assert {view.canonical for view in arch.spec_registers.values()} == canonical
    assert arch.sp_reg in canonical and arch.ip_reg


def test_every_registered_arch_has_a_dialect() -> None:
    assert {arch.spec_dialect for arch in all_arches()} <= set(_DIALECTS)


@pytest.mark.parametrize(("e_machine", "elf_class", "little_endian", "name"), [
    ("EM_PPC64", 64, False, "ppc64"),
    ("EM_PPC64", 64, True, "ppc64le"),
    ("EM_MIPS", 64, True, "mips64"),
    ("EM_MIPS", 64, False, "mips64"),
    ("EM_AARCH64", 64, True, "aarch64"),
    ("EM_ARM", 32, True, "arm"),
    ("EM_S390", 64, False, "s390x"),
    ("EM_RISCV", 64, True, "riscv64"),
    ("EM_LOONGARCH", 64, True, "loongarch64"),
])
def test_for_elf_finds_each_arch(e_machine: str, elf_class: int, little_endian: bool, name: str) -> None:
    assert for_elf(e_machine, elf_class, little_endian).name == name


@pytest.mark.parametrize(("arch", "spelling", "canonical", "width"), [
    ("aarch64", "w5", "x5", 4),
    ("aarch64", "wsp", "sp", 4),
    ("aarch64", "lr", "x30", 8),
    ("aarch64", "wzr", ZERO_REGISTER, 4),
    ("arm", "fp", "r11", 4),
    ("arm", "ip", "r12", 4),
    ("arm", "sp", "r13", 4),
    ("arm", "lr", "r14", 4),
    ("arm", "pc", "r15", 4),
    ("arm", "sl", "r10", 4),
    ("arm", "a1", "r0", 4),
    ("arm", "v8", "r11", 4),
    ("ppc64le", "31", "r31", 8),
    ("ppc64le", "sp", "r1", 8),
    ("riscv64", "fp", "s0", 8),
    ("riscv64", "x8", "s0", 8),
    ("riscv64", "x31", "t6", 8),
    ("riscv64", "x0", ZERO_REGISTER, 8),
    ("loongarch64", "sp", "r3", 8),
    ("loongarch64", "fp", "r22", 8),
    ("loongarch64", "s9", "r22", 8),
    ("loongarch64", "a0", "r4", 8),
    ("loongarch64", "s0", "r23", 8),
    ("loongarch64", "t8", "r20", 8),
    ("loongarch64", "r0", ZERO_REGISTER, 8),
    ("mips64", "fp", "r30", 8),
    ("mips64", "sp", "r29", 8),
    ("mips64", "ra", "r31", 8),
    ("mips64", "gp", "r28", 8),
    ("mips64", "a4", "r8", 8),
    ("mips64", "t0", "r12", 8),
    ("mips64", "0", ZERO_REGISTER, 8),
])
def test_register_spellings(arch: str, spelling: str, canonical: str, width: int) -> None:
    view = by_name(arch).spec_registers[spelling]
    assert (view.canonical, view.width) == (canonical, width)


def test_arm_pairs_are_consecutive() -> None:
    pairs = by_name("arm").pair_high
    assert pairs["r0"] == "r1" and pairs["r2"] == "r3" and pairs["r11"] == "r12"
    assert "r12" not in pairs  # ip:sp is never a pair


def test_x86_high_byte_names_still_parse() -> None:
    assert parse("%bh", "i386").reg_shift == 8


def test_argspec_imports_no_instruction_decoder() -> None:
    code = "import sys, uemu.argspec; sys.exit(bool({'capstone', 'keystone'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
