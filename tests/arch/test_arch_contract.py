"""What every arch backend promises (psutil's test_contracts shape), for every registered arch
that has a backend.  The per-arch facts come from the harness table ``MACHINES``; an arch with
a backend and no row there fails here until its row is added."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xol_harness import MACHINES

from uemu.arch import Arch, all_arches
from uemu.arch.base import Emulate, Refuse

TRACED = [pytest.param(arch, id=arch.name) for arch in all_arches() if arch.backend is not None]
SITE = 0x400000


def test_some_arch_is_traced() -> None:
    assert TRACED


@pytest.mark.parametrize("arch", TRACED)
def test_has_a_harness_row(arch: Arch) -> None:
    assert arch.name in MACHINES


@pytest.mark.parametrize("arch", TRACED)
def test_trap_bytes_decode_as_the_trap(arch: Arch) -> None:
    machine = MACHINES[arch.name]
    for nop in machine.nops:
        trap = arch.backend.trap_bytes(bytes.fromhex(nop.hex))
        decoded = list(machine.disassembler().disasm(trap, SITE))  # x86 puts a second int3 in a long one
        assert all(d.mnemonic in machine.trap_mnemonics for d in decoded) and sum(d.size for d in decoded) == len(trap)
        assert len(trap) <= len(bytes.fromhex(nop.hex))
        assert arch.backend.is_trap(trap)
        assert not arch.backend.is_trap(bytes.fromhex(nop.hex))


@pytest.mark.parametrize("arch", TRACED)
def test_every_nop_form_is_emulated(arch: Arch) -> None:
    for nop in MACHINES[arch.name].nops:
        plan = arch.backend.analyze(bytes.fromhex(nop.hex), SITE)
        assert isinstance(plan, Emulate), plan
        assert plan.size == len(nop.hex) // 2


@pytest.mark.parametrize("arch", TRACED)
def test_refusals_carry_a_reason(arch: Arch) -> None:
    for hex_code in MACHINES[arch.name].refused:
        plan = arch.backend.analyze(bytes.fromhex(hex_code), SITE)
        assert isinstance(plan, Refuse) and plan.reason, plan


@pytest.mark.parametrize("arch", TRACED)
@settings(max_examples=300, derandomize=True, deadline=None)
@given(code=st.binary(min_size=1, max_size=16), word=st.integers(0, 1 << 20))
def test_any_bytes_get_a_plan(arch: Arch, code: bytes, word: int) -> None:
    vaddr = SITE + 4 * word
    plan = arch.backend.analyze(code, vaddr)
    assert plan.vaddr == vaddr and plan.size <= min(len(code), arch.backend.max_insn_len)
    if isinstance(plan, Refuse):
        assert plan.reason
    else:
        assert plan.size > 0


def test_importing_the_arches_does_not_import_capstone() -> None:
    """Listing probes must not pay for the decoder (archinfo's test_import_no_capstone)."""
    program = ("import sys, uemu.arch\n"
               "assert all(arch.backend is None or arch.backend.max_insn_len for arch in uemu.arch.all_arches())\n"
               "heavy = ('capstone', 'keystone', 'unicorn')\n"
               "print(sorted(name for name in sys.modules if name.split('.')[0] in heavy))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
