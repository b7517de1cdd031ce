"""Parsing SDT argument specs: the fields every arch's real compiler output gives.

Strings marked "observed" were read with ``readelf -n`` from objects compiled on
Debian 12 (gcc 12.2, systemtap-sdt-dev 4.8) from a test file with STAP_PROBEn of
ints of each width, pointers, struct fields, arrays, globals, statics, floats,
long double and constants, at -O0..-O3 with ``-c``: ``gcc`` (x86_64, also
``-fno-pie``), ``gcc -m32`` (default, ``-fpie``, ``-fno-pie``) and the cross
compilers ``aarch64-linux-gnu``, ``arm-linux-gnueabihf``, ``powerpc64le-linux-gnu``
(also ``-mregnames`` and ``-mbig-endian``), ``s390x-linux-gnu``,
``riscv64-linux-gnu``, ``mips64el-linux-gnuabi64`` (also ``-EB``), plus a ``.S``
file using STAP_PROBEn with hand-written operands.
"""

from __future__ import annotations

import pytest

from uemu.arch import by_name
from uemu.argspec import ZERO_REGISTER, ArgSpec, parse, parse_all, split

S = {"signed": True}
MEM = {"kind": "mem"}


def reg(name: str, width: int, **more) -> dict:
    return {"kind": "reg", "reg": name, "reg_bytes": width, **more}


def imm(value, **more) -> dict:
    return {"kind": "imm", "value": value, **more}


PARSED = [
    # x86_64, observed (gcc -O0..-O2, PIE and -fno-pie)
    ("x86_64", "-4@-4(%rbp)", dict(size=4, **S, **MEM, base="rbp", offset=-4)),
    ("x86_64", "8@24(%rsp)", dict(size=8, **MEM, base="rsp", offset=24)),
    ("x86_64", "-4@%ecx", dict(size=4, **S, **reg("rcx", 4))),
    ("x86_64", "-2@%si", dict(size=2, **S, **reg("rsi", 2))),
    ("x86_64", "-1@%al", dict(size=1, **S, **reg("rax", 1))),
    ("x86_64", "1@%r8b", dict(size=1, **reg("r8", 1))),
    ("x86_64", "2@%r9w", dict(size=2, **reg("r9", 2))),
    ("x86_64", "-4@%r8d", dict(size=4, **S, **reg("r8", 4))),
    ("x86_64", "-4@(%rcx)", dict(size=4, **S, **MEM, base="rcx")),
    ("x86_64", "-4@(%r8,%rdx,4)", dict(size=4, **S, **MEM, base="r8", index="rdx", index_bytes=8, scale=4)),
    ("x86_64", "-1@16(%rcx,%rdx)", dict(size=1, **S, **MEM, base="rcx", index="rdx", index_bytes=8, offset=16)),
    ("x86_64", "-4@gi(%rip)", dict(size=4, **S, **MEM, base="rip", symbol="gi")),
    ("x86_64", "-1@1+ti(%rip)", dict(size=1, **S, **MEM, base="rip", symbol="ti", offset=1)),
    ("x86_64", "-1@ti+1(%rip)", dict(size=1, **S, **MEM, base="rip", symbol="ti", offset=1)),
    ("x86_64", "8f@.LC0(%rip)", dict(size=8, is_float=True, **MEM, base="rip", symbol=".LC0")),
    ("x86_64", "-4@garr(,%rdx,4)", dict(size=4, **S, **MEM, symbol="garr", index="rdx", index_bytes=8, scale=4)),
    ("x86_64", "-1@ti(%rdx)", dict(size=1, **S, **MEM, base="rdx", symbol="ti")),
    ("x86_64", "8f@-40(%rbp)", dict(size=8, is_float=True, **MEM, base="rbp", offset=-40)),
    ("x86_64", "4f@%r11d", dict(size=4, is_float=True, **reg("r11", 4))),
    ("x86_64", "16f@64(%rbp)", dict(size=16, is_float=True, **MEM, base="rbp", offset=64)),
    ("x86_64", "16f@%rax", dict(size=16, is_float=True, **reg("rax", 8))),
    ("x86_64", "-4@$5", dict(size=4, **S, **imm(5))),
    ("x86_64", "-8@$140737488355327", dict(size=8, **S, **imm(140737488355327))),
    ("x86_64", "4@$-202182160", dict(size=4, **imm(-202182160))),
    ("x86_64", "1@$-127", dict(size=1, **imm(-127))),
    # x86_64, hand-written / peers' examples
    ("x86_64", "8@-4+16-16(%rbp)", dict(size=8, **MEM, base="rbp", offset=-4)),
    ("x86_64", "8@24+mp_(%rip)", dict(size=8, **MEM, base="rip", symbol="mp_", offset=24)),
    ("x86_64", "-4@glob-2(%rip)", dict(size=4, **S, **MEM, base="rip", symbol="glob", offset=-2)),
    ("x86_64", "8@16(%rip)", dict(size=8, **MEM, base="rip", offset=16)),
    ("x86_64", "8@$0x10", dict(size=8, **imm(16))),
    ("x86_64", "8@$sym+8", dict(size=8, kind="imm", symbol="sym", offset=8)),
    ("x86_64", "-2@(%rdx,%rax,2)", dict(size=2, **S, **MEM, base="rdx", index="rax", index_bytes=8, scale=2)),
    ("x86_64", "-1@1024", dict(size=1, **S, **MEM, offset=1024)),
    # asm probes without N@ (observed, sdt_asm-like .S): width of the view, else the word
    ("x86_64", "%ah", dict(size=1, sized=False, **reg("rax", 1, reg_shift=8))),
    ("x86_64", "%ax", dict(size=2, sized=False, **reg("rax", 2))),
    ("x86_64", "%eax", dict(size=4, sized=False, **reg("rax", 4))),
    ("x86_64", "-12+3+1(%rbp)", dict(size=8, sized=False, **MEM, base="rbp", offset=-8)),
    ("x86_64", "$5", dict(size=8, sized=False, **imm(5))),
    ("x86_64", "(%rsp)", dict(size=8, sized=False, **MEM, base="rsp")),
    # i386, observed (gcc -m32: default PIE, -fno-pie)
    ("i386", "-4@8(%ebp)", dict(size=4, **S, **MEM, base="ebp", offset=8)),
    ("i386", "-1@%ecx", dict(size=1, **S, **reg("ecx", 4))),
    ("i386", "-8@%ecx", dict(size=8, **S, **reg("ecx", 4))),
    ("i386", "-4@gi@GOTOFF(%ecx)", dict(size=4, **S, **MEM, base="ecx", symbol="gi", gotoff=True)),
    ("i386", "-1@1+ti@GOTOFF(%ecx)", dict(size=1, **S, **MEM, base="ecx", symbol="ti", offset=1, gotoff=True)),
    ("i386", "-4@garr@GOTOFF(%ecx,%ebx,4)",
     dict(size=4, **S, **MEM, base="ecx", index="ebx", index_bytes=4, scale=4, symbol="garr", gotoff=True)),
    ("i386", "-4@gi", dict(size=4, **S, **MEM, symbol="gi")),
    ("i386", "-1@ti+1", dict(size=1, **S, **MEM, symbol="ti", offset=1)),
    ("i386", "-4@garr(,%ecx,4)", dict(size=4, **S, **MEM, symbol="garr", index="ecx", index_bytes=4, scale=4)),
    ("i386", "12f@76(%ebp)", dict(size=12, is_float=True, **MEM, base="ebp", offset=76)),
    ("i386", "12f@gld@GOTOFF(%ecx)", dict(size=12, is_float=True, **MEM, base="ecx", symbol="gld", gotoff=True)),
    ("i386", "8f@%eax", dict(size=8, is_float=True, **reg("eax", 4))),
    ("i386", "-4@0(%ebp,%ebx,4)", dict(size=4, **S, **MEM, base="ebp", index="ebx", index_bytes=4, scale=4)),
    # aarch64, observed
    ("aarch64", "-4@[sp, 60]", dict(size=4, **S, **MEM, base="sp", offset=60)),
    ("aarch64", "8@[sp]", dict(size=8, **MEM, base="sp")),
    ("aarch64", "-4@x2", dict(size=4, **S, **reg("x2", 8))),
    ("aarch64", "-4@5", dict(size=4, **S, **imm(5))),
    ("aarch64", "4@-202182160", dict(size=4, **imm(-202182160))),
    ("aarch64", "1@[x2, w11, sxtw]", dict(size=1, **MEM, base="x2", index="x11", index_bytes=4, index_signed=True)),
    ("aarch64", "16f@[x4, 32]", dict(size=16, is_float=True, **MEM, base="x4", offset=32)),
    ("aarch64", "16f@x12", dict(size=16, is_float=True, **reg("x12", 8))),
    ("aarch64", "8f@x9", dict(size=8, is_float=True, **reg("x9", 8))),
    # aarch64, peers' and hand-written forms
    ("aarch64", "-4@[x0, x1]", dict(size=4, **S, **MEM, base="x0", index="x1", index_bytes=8)),
    ("aarch64", "-4@[x0, #16]", dict(size=4, **S, **MEM, base="x0", offset=16)),
    ("aarch64", "-4@[x0, -8]", dict(size=4, **S, **MEM, base="x0", offset=-8)),
    ("aarch64", "8@[x2, x3, lsl #3]", dict(size=8, **MEM, base="x2", index="x3", index_bytes=8, scale=8)),
    ("aarch64", "4@[x2, w3, uxtw #2]", dict(size=4, **MEM, base="x2", index="x3", index_bytes=4, scale=4)),
    ("aarch64", "-4@w7", dict(size=4, **S, **reg("x7", 4))),
    ("aarch64", "-4@#-1", dict(size=4, **S, **imm(-1))),
    ("aarch64", "8@xzr", dict(size=8, **reg(ZERO_REGISTER, 8))),
    ("aarch64", "8@fp", dict(size=8, **reg("x29", 8))),
    # arm (armhf, Thumb-2), observed
    ("arm", "-4@[r7, #36]", dict(size=4, **S, **MEM, base="r7", offset=36)),
    ("arm", "-2@[r7]", dict(size=2, **S, **MEM, base="r7")),
    ("arm", "1@[sp, #36]", dict(size=1, **MEM, base="r13", offset=36)),
    ("arm", "1@ip", dict(size=1, **reg("r12", 4))),
    ("arm", "4f@lr", dict(size=4, is_float=True, **reg("r14", 4))),
    ("arm", "-8@r2", dict(size=8, **S, **reg("r2", 4))),
    ("arm", "-4@#5", dict(size=4, **S, **imm(5))),
    ("arm", "-8@#140737488355327", dict(size=8, **S, **imm(140737488355327))),
    ("arm", "8f@#1.5e+0", dict(size=8, is_float=True, **imm(1.5))),
    ("arm", "-4@[r3, r4, lsl #2]", dict(size=4, **S, **MEM, base="r3", index="r4", index_bytes=4, scale=4)),
    ("arm", "4@#.LANCHOR0+8", dict(size=4, kind="imm", symbol=".LANCHOR0", offset=8)),
    ("arm", "-4@[ip, #40]", dict(size=4, **S, **MEM, base="r12", offset=40)),
    # arm, reference forms
    ("arm", "-4@[fp, #-8]", dict(size=4, **S, **MEM, base="r11", offset=-8)),
    ("arm", "-2@[r3, r6, lsl #1]", dict(size=2, **S, **MEM, base="r3", index="r6", index_bytes=4, scale=2)),
    ("arm", "-4@[r3, -r6]", dict(size=4, **S, **MEM, base="r3", index="r6", index_bytes=4, scale=-1)),
    ("arm", "4@sl", dict(size=4, **reg("r10", 4))),
    # ppc64le / ppc64, observed (also -mregnames, -mbig-endian)
    ("ppc64le", "-4@0(9)", dict(size=4, **S, **MEM, base="r9")),
    ("ppc64le", "-4@8", dict(size=4, **S, **reg("r8", 8))),
    ("ppc64le", "8f@0", dict(size=8, is_float=True, **reg("r0", 8))),
    ("ppc64le", "-4@i5", dict(size=4, **S, **imm(5))),
    ("ppc64le", "-8@i140737488355327", dict(size=8, **S, **imm(140737488355327))),
    ("ppc64le", "1@i-127", dict(size=1, **imm(-127))),
    ("ppc64le", "-4@10,7", dict(size=4, **S, **MEM, base="r10", index="r7", index_bytes=8)),
    ("ppc64le", "-4@%r8,%r7", dict(size=4, **S, **MEM, base="r8", index="r7", index_bytes=8)),
    ("ppc64le", "-4@%r3", dict(size=4, **S, **reg("r3", 8))),
    ("ppc64le", "8@0(%r6)", dict(size=8, **MEM, base="r6")),
    ("ppc64le", "16f@0(8)", dict(size=16, is_float=True, **MEM, base="r8")),
    ("ppc64", "-8@-693(31)", dict(size=8, **S, **MEM, base="r31", offset=-693)),
    ("ppc64", "-2@6,9", dict(size=2, **S, **MEM, base="r6", index="r9", index_bytes=8)),
    # ppc: register 0 as a base means the value 0 (RA|0)
    ("ppc64", "-4@16(0)", dict(size=4, **S, **MEM, base=ZERO_REGISTER, offset=16)),
    # s390x, observed
    ("s390x", "-4@204(%r11)", dict(size=4, **S, **MEM, base="r11", offset=204)),
    ("s390x", "-4@%r3", dict(size=4, **S, **reg("r3", 8))),
    ("s390x", "-4@5", dict(size=4, **S, **imm(5))),
    ("s390x", "-4@0(%r8,%r4)", dict(size=4, **S, **MEM, index="r8", index_bytes=8, base="r4")),
    ("s390x", "1@16(%r1,%r11)", dict(size=1, **MEM, index="r1", index_bytes=8, base="r11", offset=16)),
    ("s390x", "8@352(%r15)", dict(size=8, **MEM, base="r15", offset=352)),
    ("s390x", "-2@16(%r1,%r5)", dict(size=2, **S, **MEM, index="r1", index_bytes=8, base="r5", offset=16)),
    ("s390x", "8@8(%r0,%r2)", dict(size=8, **MEM, index=ZERO_REGISTER, index_bytes=8, base="r2", offset=8)),
    # riscv64, observed
    ("riscv64", "-4@-20(s0)", dict(size=4, **S, **MEM, base="s0", offset=-20)),
    ("riscv64", "8@a0", dict(size=8, **reg("a0", 8))),
    ("riscv64", "8@0(sp)", dict(size=8, **MEM, base="sp")),
    ("riscv64", "4f@t1", dict(size=4, is_float=True, **reg("t1", 8))),
    ("riscv64", "-4@5", dict(size=4, **S, **imm(5))),
    ("riscv64", "16f@32(s0)", dict(size=16, is_float=True, **MEM, base="s0", offset=32)),
    # riscv64 aliases (GAS)
    ("riscv64", "8@x10", dict(size=8, **reg("a0", 8))),
    ("riscv64", "-4@-8(fp)", dict(size=4, **S, **MEM, base="s0", offset=-8)),
    ("riscv64", "8@zero", dict(size=8, **reg(ZERO_REGISTER, 8))),
    # mips64el, observed (also -EB)
    ("mips64", "-4@0($fp)", dict(size=4, **S, **MEM, base="r30")),
    ("mips64", "-4@$4", dict(size=4, **S, **reg("r4", 8))),
    ("mips64", "-2@18($13)", dict(size=2, **S, **MEM, base="r13", offset=18)),
    ("mips64", "8@0($sp)", dict(size=8, **MEM, base="r29")),
    ("mips64", "-4@5", dict(size=4, **S, **imm(5))),
    ("mips64", "-8@0", dict(size=8, **S, **imm(0))),
    ("mips64", "8@$a0", dict(size=8, **reg("r4", 8))),
    ("mips64", "8@$0", dict(size=8, **reg(ZERO_REGISTER, 8))),
    # loongarch64: gcc's printing (not observed: no cross compiler here) and bcc's brackets
    ("loongarch64", "-4@$r4", dict(size=4, **S, **reg("r4", 8))),
    ("loongarch64", "-4@$r3,8", dict(size=4, **S, **MEM, base="r3", offset=8)),
    ("loongarch64", "-8@$r12,$r13", dict(size=8, **S, **MEM, base="r12", index="r13", index_bytes=8)),
    ("loongarch64", "-4@$r0,1234", dict(size=4, **S, **MEM, base=ZERO_REGISTER, offset=1234)),
    ("loongarch64", "8@$sp", dict(size=8, **reg("r3", 8))),
    ("loongarch64", "8@$a0", dict(size=8, **reg("r4", 8))),
    ("loongarch64", "8@$fp", dict(size=8, **reg("r22", 8))),
    ("loongarch64", "-4@7", dict(size=4, **S, **imm(7))),
    ("loongarch64", "8@[$r3, 16]", dict(size=8, **MEM, base="r3", offset=16)),
]


@pytest.mark.parametrize(("arch", "spec", "fields"), PARSED, ids=[f"{a}:{s}" for a, s, _ in PARSED])
def test_parse_fields(arch: str, spec: str, fields: dict) -> None:
    assert parse(spec, arch) == ArgSpec(raw=spec, **fields)


UNPARSED = [
    ("aarch64", "-4@[x7, #:lo12:.LANCHOR0]"),  # observed in the reference, and bash on arm64
    ("aarch64", "4@[x21, #:lo12:.LANCHOR2]"),
    ("riscv64", "8f@%lo(gdd)(a4)"),  # observed, riscv64 -O1/-O2 -fno-pie
    ("mips64", "8f@%got_ofst(.LC0)($6)"),  # observed, mips64el -O1/-O2
    ("ppc64le", "8f@.LC0@toc@l(9)"),
    ("loongarch64", "-4@$r12,%pc_lo12(x)"),
    ("x86_64", "-4@%fs:tv@tpoff"),
    ("x86_64", "8@$3+($10-$8)-$1"),  # gdb's GAS expressions
    ("x86_64", "-4@-4(%rbp,%eax,0)"),
    ("x86_64", "-4@(%rbp"),
    ("x86_64", "-4@"),
    ("x86_64", "7@%rax"),
    ("x86_64", "-4@%xmm0"),
    ("x86_64", "-4@-sym(%rip)"),
    ("aarch64", "-4@[x0"),
    ("aarch64", "-4@[x0, x1, ror #2]"),
    ("arm", "-4@[]"),
    ("s390x", "-4@%r99"),
    ("mips64", "-4@0(4)"),  # mips registers need their $
]


@pytest.mark.parametrize(("arch", "spec"), UNPARSED, ids=[f"{a}:{s}" for a, s in UNPARSED])
def test_unparsed_keeps_raw_and_never_raises(arch: str, spec: str) -> None:
    parsed = parse(spec, arch)
    assert not parsed.parsed
    assert parsed.kind == "unparsed"
    assert parsed.raw == spec
    assert parsed.error


def test_unparsed_keeps_what_the_prefix_says() -> None:
    parsed = parse("-4@[x7, #:lo12:.LANCHOR0]", "aarch64")
    assert (parsed.size, parsed.signed, parsed.is_float) == (4, True, False)
    assert "relocation" in parsed.error


def test_unparsed_without_prefix_takes_the_native_word() -> None:
    assert parse("%lo(x)(a0)", "riscv64").size == 8
    assert parse("%fs:0", "i386").size == 4


# --------------------------------------------------------------------------
# Whole argument strings
# --------------------------------------------------------------------------

ARGUMENT_STRINGS = [
    # observed, aarch64 -O0: operands with blanks inside brackets
    ("aarch64", "-4@[sp, 60] -8@[sp, 48] 1@[sp, 59] 8@x0 -4@5",
     ["-4@[sp, 60]", "-8@[sp, 48]", "1@[sp, 59]", "8@x0", "-4@5"]),
    ("aarch64", "1@[x2, w11, sxtw] -4@[x7, #:lo12:.LANCHOR0] 8@x0",
     ["1@[x2, w11, sxtw]", "-4@[x7, #:lo12:.LANCHOR0]", "8@x0"]),
    # observed, arm -O2
    ("arm", "-4@[r2, r4, lsl #2] 1@[r3, #16] 4@r2", ["-4@[r2, r4, lsl #2]", "1@[r3, #16]", "4@r2"]),
    # observed, x86_64 -O0 and i386 PIE
    ("x86_64", "-4@-4(%rbp) -8@-16(%rbp) -1@-8(%rbp)", ["-4@-4(%rbp)", "-8@-16(%rbp)", "-1@-8(%rbp)"]),
    ("i386", "-4@gi@GOTOFF(%ecx) -1@1+ti@GOTOFF(%ecx) -8@gll@GOTOFF(%ecx)",
     ["-4@gi@GOTOFF(%ecx)", "-1@1+ti@GOTOFF(%ecx)", "-8@gll@GOTOFF(%ecx)"]),
    # observed, asm probes: no N@ anywhere, and mixed
    ("x86_64", "%ah %al %ax %eax", ["%ah", "%al", "%ax", "%eax"]),
    ("x86_64", "-12+3+1(%rbp) 8@-4+16-16(%rbp) $5", ["-12+3+1(%rbp)", "8@-4+16-16(%rbp)", "$5"]),
    ("ppc64le", "-4@3 -4@8,7 -4@i5", ["-4@3", "-4@8,7", "-4@i5"]),
    ("x86_64", "  8@%rax   -4@$1  ", ["8@%rax", "-4@$1"]),
    ("x86_64", "", []),
    ("x86_64", ":", []),
    ("x86_64", ":8@%rax", []),
]


@pytest.mark.parametrize(("arch", "args", "raws"), ARGUMENT_STRINGS)
def test_parse_all_splits(arch: str, args: str, raws: list[str]) -> None:
    """``split`` names an event's specs (events.Event.specs): one per value read."""
    assert [spec.raw for spec in parse_all(args, arch)] == list(split(args)) == raws


def test_parse_all_parses_each() -> None:
    specs = parse_all("-4@[sp, 12] 8@x1", "aarch64")
    assert specs == [parse("-4@[sp, 12]", "aarch64"), parse("8@x1", "aarch64")]


def test_arch_object_and_name_are_the_same() -> None:
    assert parse("-4@%edi", by_name("x86_64")) == parse("-4@%edi", "x86_64")
    assert parse_all("8@a0", by_name("riscv64")) == parse_all("8@a0", "riscv64")
