"""The jump path's hand-encoded instructions against the GNU assemblers: each trampoline's
head (what calls hit_entry) and every jump a site gets, for x86_64, i386, aarch64 and
riscv64 (which keystone lacks).  tests/runtime/test_hits.py runs them in unicorn; this
says they are the instructions their docstrings name."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from uemu.arch import by_name
from uemu.arch.jump import JumpForm, SiteJump

SITE = 0x40_0000
TRAMPOLINE = 0x41_0000
HIT_ENTRY = 0x7F12_3456_7000
INDEX = 0x1234_5678

AS = {
    "x86_64": ("as", "--64"),
    "i386": ("as", "--32"),
    "aarch64": ("aarch64-linux-gnu-as",),
    "riscv64": ("riscv64-linux-gnu-as", "-march=rv64gc", "-mno-relax"),
}
OBJCOPY = {"x86_64": "objcopy", "i386": "objcopy", "aarch64": "aarch64-linux-gnu-objcopy",
           "riscv64": "riscv64-linux-gnu-objcopy"}


def assemble(arch: str, source: str, tmp_path: Path) -> bytes:
    if shutil.which(AS[arch][0]) is None or shutil.which(OBJCOPY[arch]) is None:
        pytest.skip(f"no {AS[arch][0]}")
    (tmp_path / "t.s").write_text(source + "\n")
    subprocess.run([*AS[arch], "-o", str(tmp_path / "t.o"), str(tmp_path / "t.s")], check=True)
    subprocess.run([OBJCOPY[arch], "-O", "binary", "-j", ".text", str(tmp_path / "t.o"), str(tmp_path / "t.bin")],
                   check=True)
    return (tmp_path / "t.bin").read_bytes()


def nop_site(arch: str, length: int) -> SiteJump:
    return SiteJump(vaddr=SITE, at=SITE, length=length, form=JumpForm.JUMP, displaced=None, resume=SITE + 4,
                    target=None, reach=(0, 1 << 64), why="")


def test_x86_64_trampoline(tmp_path: Path) -> None:
    jumps = by_name("x86_64").jumps
    code = jumps.trampoline(nop_site("x86_64", 5), TRAMPOLINE, INDEX, HIT_ENTRY)
    literal = len(code) - 8
    want = assemble("x86_64", f"""
        lea -0x80(%rsp), %rsp
        push ${INDEX:#x}
        call *{literal - 16:#x}(%rip)
        lea 0x88(%rsp), %rsp
        .byte 0xe9
        .long {SITE + 4 - (TRAMPOLINE + 29)}
        """, tmp_path)
    assert code[:len(want)] == want
    assert int.from_bytes(code[literal:], "little") == HIT_ENTRY


def test_i386_trampoline(tmp_path: Path) -> None:
    jumps = by_name("i386").jumps
    code = jumps.trampoline(nop_site("i386", 5), TRAMPOLINE, INDEX, HIT_ENTRY & 0xFFFFFFFF)
    want = assemble("i386", f"""
        push ${INDEX:#x}
        .byte 0xe8
        .long {(HIT_ENTRY & 0xFFFFFFFF) - (TRAMPOLINE + 10)}
        lea 4(%esp), %esp
        .byte 0xe9
        .long {SITE + 4 - (TRAMPOLINE + 19)}
        """, tmp_path)
    assert code == want


@pytest.mark.parametrize("arch", ["aarch64", "riscv64"])
def test_fixed_width_trampoline_and_jumps(arch: str, tmp_path: Path) -> None:
    jumps = by_name(arch).jumps
    code = jumps.trampoline(nop_site(arch, 4), TRAMPOLINE, INDEX, HIT_ENTRY)
    literal = len(code) - 12
    body = jumps.head_size
    if arch == "aarch64":
        source = f"""
        stp x16, x17, [sp, #-32]!
        str x30, [sp, #16]
        ldr x16, . + {literal - 8}
        ldr w17, . + {literal + 8 - 12}
        blr x16
        ldr x30, [sp, #16]
        ldp x16, x17, [sp], #32
        b . + {SITE + 4 - (TRAMPOLINE + body)}
        """
    else:
        source = f"""
        .option norvc
        addi sp, sp, -32
        sd t0, 0(sp)
        sd t1, 8(sp)
        sd ra, 16(sp)
        auipc t0, 0
        ld t1, {literal - 16}(t0)
        lwu t0, {literal + 8 - 16}(t0)
        jalr ra, 0(t1)
        ld ra, 16(sp)
        ld t1, 8(sp)
        ld t0, 0(sp)
        addi sp, sp, 32
        """
    want = assemble(arch, source, tmp_path)
    assert code[:len(want)] == want
    assert int.from_bytes(code[literal:literal + 8], "little") == HIT_ENTRY
    assert int.from_bytes(code[literal + 8:], "little") == INDEX
    # the jump a site gets, both ways, to the ends of its reach
    half = 1 << (jumps.reach_bits - 1)
    for distance in (-half, -4096, 4096, half - 4):
        site = nop_site(arch, 4)
        if arch == "aarch64":
            text = f"b . + {distance}" if distance >= 0 else f"b . - {-distance}"
        else:
            text = f".option norvc\n jal x0, . + {distance}" if distance >= 0 else \
                f".option norvc\n jal x0, . - {-distance}"
        assert jumps.jump_bytes(site, SITE + distance) == assemble(arch, text, tmp_path), distance


DISPLACED = {"x86_64": "48c7c078563412", "i386": "b878563412", "aarch64": "e00301aa", "riscv64": "3385c500"}
"""mov $0x12345678 to the accumulator (x86), mov x0, x1 (aarch64), add a0, a1, a2 (riscv64):
instructions a trampoline runs displaced."""


@pytest.mark.parametrize("arch", ["x86_64", "i386", "aarch64", "riscv64"])
def test_way_back_is_the_trampolines_jump_to_the_program(arch: str) -> None:
    """Where uemu traps a thread that leaves a hit at detach (uemu/jumpout.py): the jump
    back to ``site.resume``, after a nop's hit and after a displaced instruction."""
    found = by_name(arch)
    jumps, backend = found.jumps, found.backend
    code = bytes.fromhex(DISPLACED[arch])
    displaced = jumps.choose(backend.analyze(code, SITE), code)
    assert isinstance(displaced, SiteJump) and displaced.displaced is not None
    for site in (nop_site(arch, 5 if arch in ("x86_64", "i386") else 4), displaced):
        trampoline = jumps.trampoline(site, TRAMPOLINE, INDEX, HIT_ENTRY & 0xFFFFFFFF)
        way = jumps.way_back(site, TRAMPOLINE)
        at = trampoline[way - TRAMPOLINE:]
        if arch in ("x86_64", "i386"):
            assert at[0] == 0xE9 and way + 5 + int.from_bytes(at[1:5], "little", signed=True) == site.resume
        else:
            assert at[:4] == jumps.branch(way, site.resume)
        if site.displaced is not None:
            assert trampoline[way - TRAMPOLINE - site.displaced.size:way - TRAMPOLINE] == code
