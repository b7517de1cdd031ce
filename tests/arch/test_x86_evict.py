"""x86 successor eviction (E9Patch's T2, arch/x86.py): which instructions after a 1-byte
site can be moved to a trampoline of their own, and that the jump written over one and
the pun before it agree, byte for byte, on where each leads."""

from __future__ import annotations

import random

import pytest
import unicorn
from unicorn import x86_const as x86

from uemu.arch import by_name
from uemu.arch.jump import Eviction, JumpForm, SiteJump

SITE = 0x5555_5555_4123


def chosen(arch: str, code: bytes, vaddr: int = SITE) -> tuple[SiteJump, SiteJump | None]:
    """The pun over the site ``code`` starts with, and the jump over its successor."""
    x86 = by_name(arch)
    assert x86.backend is not None and isinstance(x86.jumps, Eviction)
    code = code.ljust(15, b"\xcc")
    choice = x86.jumps.choose(x86.backend.analyze(code, vaddr), code)
    assert isinstance(choice, SiteJump) and choice.form is JumpForm.PUN, choice
    return choice, x86.jumps.successor(choice, code)


@pytest.mark.parametrize("after", [
    "b8ffffff00",  # mov $0xffffff,%eax
    "41b978563412",  # mov $0x12345678,%r9d
    "8b05f0ffffff",  # mov -0x10(%rip),%eax: rip-relative, relocated
    "488d05f0ffffff",  # lea -0x10(%rip),%rax
    "3d00010000",  # cmp $0x100,%eax
    "48b88877665544332211",  # movabs: only its first five bytes are overwritten
])
def test_an_instruction_of_five_bytes_or_more_after_a_nop_can_be_evicted(after: str) -> None:
    code = bytes.fromhex("90" + after)
    _, successor = chosen("x86_64", code)
    assert successor is not None and successor.displaced is not None
    assert (successor.at, successor.length, successor.resume) == (SITE + 1, 5, SITE + 1 + len(code) - 1)


@pytest.mark.parametrize("after", [
    "eb00",  # jmp rel8: emulated by the trap path, no slot to run it
    "50",  # push: one byte, none of its displacement left to choose
])
def test_what_cannot_be_evicted(after: str) -> None:
    assert chosen("x86_64", bytes.fromhex("90" + after))[1] is None


def test_a_punned_successor_whose_jump_leads_below_user_space_cannot_be_evicted() -> None:
    """A non-PIE program's text near 4 MiB: a 4-byte successor followed by a byte with the
    top bit set (its jump leads 2 GiB back at most, 2 GiB - 16 MiB at least)."""
    assert chosen("x86_64", bytes.fromhex("90" + "8b442404" + "90"), 0x40_1123)[1] is None
    assert chosen("x86_64", bytes.fromhex("90" + "8b442404" + "0f"), 0x40_1123)[1] is not None


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
@pytest.mark.parametrize(("after", "following"), [
    ("31c0", "4809f0"),  # xor %eax,%eax; or %rsi,%rax...: 2 bytes, a window of 256
    ("4584e4", "0f84"),  # test %r12b,%r12b; je: 3 bytes (postgres's query__start), 64 KiB
    ("49833e00", "74"),  # cmpq $0,(%r14); je: 4 bytes (libjvm's thread__start), 16 MiB
])
@pytest.mark.parametrize("seed", range(3))
def test_a_short_successor_is_punned_and_both_puns_agree_byte_for_byte(arch: str, after: str, following: str,
                                                                       seed: int) -> None:
    """E9Patch's T2 proper: 0xE9 and bytes uemu chooses over the successor, whose jump
    may lead anywhere in its window (``reach``); the site's pun then reads 0xE9 and the
    same chosen bytes (and the next instruction's), which lead where ``led_by`` says."""
    if arch == "i386" and after.startswith(("45", "49")):
        pytest.skip("a REX prefix is an inc/dec on i386")
    rng = random.Random(seed)
    jumps = by_name(arch).jumps
    space = 1 << (64 if arch == "x86_64" else 32)
    vaddr = rng.randrange(0x5555_0000_0000, 0x7FF0_0000_0000) if arch == "x86_64" else \
        rng.randrange(0x5000_0000, 0xB000_0000)
    length = len(after) // 2
    site, successor = chosen(arch, bytes.fromhex("90" + after + following), vaddr)
    assert successor is not None and successor.form is JumpForm.PUN and successor.displaced is not None
    assert (successor.at, successor.length, successor.resume) == (vaddr + 1, length, vaddr + 1 + length)
    low, high = successor.reach
    assert high - low == 1 << 8 * (length - 1)
    program = bytes.fromhex(following).ljust(4, b"\xcc")  # the bytes after the successor
    for lead in [low, high - 1, *(rng.randrange(low, high) for _ in range(8))]:
        written = jumps.jump_bytes(successor, lead)
        assert len(written) == length and written[0] == 0xE9
        memory = b"\xe9" + written + program  # the site's pun, then the successor's
        assert (vaddr + 6 + int.from_bytes(memory[2:6], "little", signed=True)) % space == lead
        led = jumps.led_by(site, successor, lead)
        assert led.target == (vaddr + 5 + int.from_bytes(memory[1:5], "little", signed=True)) % space
    code = jumps.relocated(successor, low)
    assert code is not None and code.startswith(bytes.fromhex(after))
    assert jumps.relocated_way_back(successor, low) == low + len(code) - 5


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
@pytest.mark.parametrize("seed", range(5))
def test_the_successors_jump_starts_with_the_puns_displacement(arch: str, seed: int) -> None:
    """For any target ``evict_targets`` offers, each place the successor's jump may lead
    to gives a jump whose first four bytes, read as the pun's displacement, lead to that
    target: the two jumps share those bytes."""
    rng = random.Random(seed)
    x86 = by_name(arch)
    jumps = x86.jumps
    space = 1 << (64 if arch == "x86_64" else 32)
    vaddr = rng.randrange(0x10_0000, 0x7FFF_0000_0000 if arch == "x86_64" else 0xF000_0000)
    site, successor = chosen(arch, bytes.fromhex("90b8ffffff00"), vaddr)
    assert successor is not None
    low = rng.randrange(max(vaddr - (1 << 30), 0), vaddr + (1 << 30))
    targets = jumps.evict_targets(site, low, low + 0x10000)
    assert len(targets) == 256 and all((t - (vaddr + 5) - 0xE9) % 256 == 0 for t in targets)
    target = rng.choice(targets)
    led, leads = jumps.evicted(site, successor, target)
    assert led.target == target and led.resume == site.resume
    assert len(set(leads)) == 256
    distances = [abs(lead - (vaddr + 6)) for lead in leads]
    assert distances == sorted(distances), "nearest first"
    for lead in rng.sample(leads, 16):
        written = jumps.jump_bytes(successor, lead)
        assert written[0] == 0xE9
        assert (vaddr + 6 + int.from_bytes(written[1:], "little", signed=True)) % space == lead
        assert (vaddr + 5 + int.from_bytes(written[:4], "little", signed=True)) % space == target


def test_an_evicted_successors_trampoline_is_its_instruction_and_the_jump_back() -> None:
    jumps = by_name("x86_64").jumps
    _, successor = chosen("x86_64", bytes.fromhex("90b8ffffff00"))
    assert successor is not None
    at = SITE + 0x1000_0000
    code = jumps.relocated(successor, at)
    assert code is not None and code[:5] == bytes.fromhex("b8ffffff00")
    way_back = jumps.relocated_way_back(successor, at)
    assert way_back == at + len(code) - 5 and code[-5] == 0xE9
    assert way_back + 5 + int.from_bytes(code[-4:], "little", signed=True) == SITE + 6


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_a_jmp_after_a_nop_is_evicted_to_a_jump_on_to_where_it_led(arch: str) -> None:
    """``jmp rel32`` (the nop at the end of an if, say): its trampoline is one jump to
    where it led, which is also where leaving's trap at it sends a thread."""
    jumps = by_name(arch).jumps
    vaddr = SITE if arch == "x86_64" else 0x0804_9123
    _, successor = chosen(arch, bytes.fromhex("90e9f0ffffff"), vaddr)  # jmp back 16 bytes from its end
    assert successor is not None and successor.displaced is None
    led = vaddr + 6 - 0x10
    assert (successor.at, successor.length, successor.resume) == (vaddr + 1, 5, led)
    for at in (vaddr + 0x1000_0000, vaddr - 0x4000_0000):
        code = jumps.relocated(successor, at)
        assert code is not None and code[0] == 0xE9 and len(code) == 5
        assert at + 5 + int.from_bytes(code[1:], "little", signed=True) == led
        assert jumps.relocated_way_back(successor, at) == at


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
@pytest.mark.parametrize("far", [False, True])
def test_a_call_after_a_nop_is_evicted_to_code_that_pushes_its_return_address(arch: str, far: bool) -> None:
    """``call rel32`` (libstdcxx:throw's): its trampoline, run under unicorn, arrives at the
    callee with the call's own return address on the stack (so the callee returns into
    the program, not into uemu's code), every register and the flags as they were, and
    leaving's trap at its last jump sends a thread to the callee with that stack."""
    mode64 = arch == "x86_64"
    jumps = by_name(arch).jumps
    vaddr = (0x5555_5555_4123 if far else 0x40_1123) if mode64 else 0x0804_9123
    _, successor = chosen(arch, bytes.fromhex("90e8f0ffffff"), vaddr)  # a callee 16 bytes back
    assert successor is not None and successor.displaced is None
    callee, back = vaddr + 6 - 0x10, vaddr + 6
    assert (successor.resume, successor.pushes) == (callee, back)
    at = vaddr + 0x1000_0000
    code = jumps.relocated(successor, at)
    assert code is not None
    way_back = jumps.relocated_way_back(successor, at)
    assert code[way_back - at] == 0xE9 and at < way_back < at + len(code)

    emu = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64 if mode64 else unicorn.UC_MODE_32)
    page, stack = at & -0x1000, 0x7000_0000
    emu.mem_map(page, 0x2000)
    emu.mem_map(stack - 0x1000, 0x2000)
    emu.mem_write(at, code)
    sp, flags = (x86.UC_X86_REG_RSP, x86.UC_X86_REG_EFLAGS) if mode64 else (x86.UC_X86_REG_ESP, x86.UC_X86_REG_EFLAGS)
    others = [x86.UC_X86_REG_RAX, x86.UC_X86_REG_RCX, x86.UC_X86_REG_RDX] if mode64 else \
        [x86.UC_X86_REG_EAX, x86.UC_X86_REG_ECX, x86.UC_X86_REG_EDX]
    emu.reg_write(sp, stack)
    emu.reg_write(flags, 0x8D7)  # CF PF AF ZF SF OF, and bit 1
    for number, reg in enumerate(others):
        emu.reg_write(reg, 0x1111 * (number + 1))
    emu.emu_start(at, callee, count=3)
    word = 8 if mode64 else 4
    ip = emu.reg_read(x86.UC_X86_REG_RIP if mode64 else x86.UC_X86_REG_EIP)
    assert ip == callee
    assert emu.reg_read(sp) == stack - word
    assert int.from_bytes(emu.mem_read(stack - word, word), "little") == back
    assert emu.reg_read(flags) & 0x8D7 == 0x8D7
    assert [emu.reg_read(reg) for reg in others] == [0x1111 * (number + 1) for number in range(len(others))]
