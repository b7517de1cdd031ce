"""The signal frames of the way back (``SigreturnWayBack.frame``) of arm64 and riscv64,
read at the offsets the architecture's cross compiler gives for the kernel's struct
rt_sigframe (a siginfo, then the uapi ``struct ucontext``, as arch/*/kernel/signal.c
declare it), from the uapi headers of its C library: every register, the mask, the
floating-point state and the zero words rt_sigreturn checks are where the kernel reads
them.  The compiler only compiles (-S); nothing foreign runs."""

from __future__ import annotations

import random
import re
import shutil
import struct
import subprocess

import pytest

from uemu.arch import by_name
from uemu.arch.base import Arch, NoWayBack

COMPILER = {"aarch64": "aarch64-linux-gnu-gcc", "riscv64": "riscv64-linux-gnu-gcc"}
PRELUDE = """#include <stddef.h>
#include <asm/signal.h>
#include <asm/siginfo.h>
#include <asm/sigcontext.h>
#include <asm/ucontext.h>
struct rt_sigframe { struct siginfo info; struct ucontext uc; };
#define AT(member) offsetof(struct rt_sigframe, member)
"""
TOP = 0x7FFF_FFF0_1238
"""Not 16-aligned: the frame must be aligned below it."""


def _kernel_values(arch: str, expressions: list[str]) -> list[int]:
    """The values of C ``expressions`` (offsets and constants) as the arch's compiler
    computes them with its uapi headers."""
    compiler = COMPILER[arch]
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed")
    source = PRELUDE + "const unsigned int values[] = {" + ", ".join(expressions) + "};\n"
    asm = subprocess.run([compiler, "-S", "-o", "-", "-x", "c", "-"], input=source, capture_output=True,
                         text=True, check=True).stdout
    values = [int(value, 0) for value in re.findall(r"^\s*\.word\s+(\S+)$", asm, re.MULTILINE)]
    assert len(values) == len(expressions)
    return values


def _aarch64_fields(arch: Arch, fp: bytes) -> list[tuple[str, str, bytes]]:
    """(offset, the expected bytes' size, what they are) of arm64: the registers, then the
    fpsimd record (head, fpsr, fpcr, vregs) opening uc_mcontext's __reserved, then the
    zero terminator record after it."""
    fpsr, fpcr = fp[512:516], fp[516:520]
    record = "AT(uc.uc_mcontext.__reserved)"
    return [(f"AT(uc.uc_mcontext.regs[{n}])", f"x{n}", b"") for n in range(31)] + [
        ("AT(uc.uc_mcontext.sp)", "sp", b""), ("AT(uc.uc_mcontext.pc)", "pc", b""),
        ("AT(uc.uc_mcontext.pstate)", "pstate", b""),
        (record, "FPSIMD_MAGIC", b""), (f"{record} + 4", "sizeof(struct fpsimd_context)", b""),
        (f"{record} + offsetof(struct fpsimd_context, fpsr)", "", fpsr),
        (f"{record} + offsetof(struct fpsimd_context, fpcr)", "", fpcr),
        (f"{record} + offsetof(struct fpsimd_context, vregs)", "", fp[:512]),
        (f"{record} + sizeof(struct fpsimd_context)", "", bytes(8)),
    ]


def _riscv64_fields(arch: Arch, fp: bytes) -> list[tuple[str, str, bytes]]:
    """riscv64: sc_regs by their kernel names, the D state (f[32], fcsr), then the
    reserved word and the END header (q.reserved[3] in headers before sc_extdesc)."""
    return [(f"AT(uc.uc_mcontext.sc_regs.{name})", name, b"") for name in arch.regset] + [
        ("AT(uc.uc_mcontext.sc_fpregs.d.f)", "", fp[:256]),
        ("AT(uc.uc_mcontext.sc_fpregs.d.fcsr)", "", fp[256:260]),
        ("AT(uc.uc_mcontext.sc_fpregs.q.reserved)", "", bytes(12)),
    ]


FIELDS = {"aarch64": _aarch64_fields, "riscv64": _riscv64_fields}
FP_IMAGE = {"aarch64": 520, "riscv64": 260}
"""Bytes of ptrace's NT_PRFPREG (user_fpsimd_state; __riscv_d_ext_state)."""


@pytest.mark.parametrize("arch_name", sorted(FIELDS))
def test_frame_is_the_kernels_rt_sigframe(arch_name: str) -> None:
    arch = by_name(arch_name)
    assert arch.way_back is not None
    rng = random.Random(arch_name)
    regs = {name: rng.getrandbits(64) for name in arch.regset}
    blocked = rng.getrandbits(64)
    fp = rng.randbytes(FP_IMAGE[arch_name])
    images = [fp] + [b""] * len(arch.way_back.feature_notes)
    at, frame = arch.way_back.frame(regs, blocked, images, TOP)
    fields = FIELDS[arch_name](arch, fp)
    common = ["sizeof(struct rt_sigframe)", "AT(uc)", "AT(uc.uc_link)", "AT(uc.uc_stack.ss_flags)",
              "AT(uc.uc_sigmask)"]
    named = [what for _, what, _ in fields if what and what not in regs]
    values = _kernel_values(arch_name, common + [e for e, _, _ in fields] + named)
    size, uc, link, ss_flags, sigmask = values[:len(common)]
    offsets = values[len(common):len(common) + len(fields)]
    constants = dict(zip(named, values[len(common) + len(fields):], strict=True))

    assert len(frame) == size and at == (TOP - size) & ~15
    assert frame[:link + 8] == bytes(link + 8), "a zero siginfo, uc_flags and uc_link"
    assert struct.unpack_from("<i", frame, ss_flags)[0] == 4, "uc_stack: no change asked"
    assert struct.unpack_from("<Q", frame, sigmask)[0] == blocked
    for offset, (_, what, expected) in zip(offsets, fields, strict=True):
        if what in regs:
            assert struct.unpack_from("<Q", frame, offset)[0] == regs[what], what
            assert arch.ucontext_regs[what] == offset - uc, f"{what} where the in-target runtime reads it"
        elif what:
            assert struct.unpack_from("<I", frame, offset)[0] == constants[what], what
        else:
            assert frame[offset:offset + len(expected)] == expected, f"at {offset}"


def test_riscv64_refuses_a_thread_using_the_vector_registers() -> None:
    """Its vector state would need a record of the frame's extension area; without one
    rt_sigreturn leaves the registers as the call left them."""
    arch = by_name("riscv64")
    assert arch.way_back is not None
    regs = dict.fromkeys(arch.regset, 0)
    with pytest.raises(NoWayBack):
        arch.way_back.frame(regs, 0, [bytes(260), bytes(40 + 32 * 16)], TOP)
    arch.way_back.frame(regs, 0, [bytes(260), b""], TOP)
