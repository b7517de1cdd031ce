"""What an instruction set says about the jump path (issue 12): which sites can take a jump
into a trampoline instead of a trap, the bytes of that jump, and the trampoline itself.

Pure, like the backends: bytes and addresses in, bytes and decisions out.  The choice
for a site is taken once, from the instruction the backend analysed (its ``Plan``) and
the file's bytes, as the trap path takes its plan; uemu/jumps.py then checks what only
the process can tell (a free page at a pun target, the trampoline's reach, neighbours
written by uemu) and writes.

A trampoline calls the runtime's ``hit_entry`` (uemu/runtime/src/arch_*.h), which
saves every register as the ``HitFrame`` below says and records the hit; then the
trampoline runs the displaced instruction (the backend's ``prepare_xol`` for a slot
ending in a jump back: the analysis is the trap path's, never copied) or nothing for
a nop, and jumps back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from .base import Plan, StepEnd, StepOutOfLine, XolSetup


@dataclass(frozen=True)
class HitFrame:
    """How ``hit_entry`` lays the registers out on the stack for the runtime's C."""

    slots: tuple[str, ...]
    """Register (regset name) in each word of the frame, from its lowest address; '' for a
    word that holds none of the program's registers."""
    sp_offset: int
    """Bytes from the frame's start to the stack pointer the program had at the site."""

    def slot(self, register: str) -> int | None:
        return self.slots.index(register) if register and register in self.slots else None


class ThreadPointerSource(StrEnum):
    """Where a stopped thread's thread pointer is, for ptrace."""

    REGISTER = "register"
    """A register of the general regset (x86_64's fs_base, riscv64's tp)."""
    REGSET = "regset"
    """A regset of its own (aarch64's NT_ARM_TLS: tpidr_el0)."""
    TLS_ENTRY = "tls-entry"
    """The base of the TLS descriptor a segment register selects (i386's %gs:
    PTRACE_GET_THREAD_AREA)."""


@dataclass(frozen=True)
class ThreadPointer:
    """The thread pointer the runtime reads at a hit (to name the thread without a
    system call), as uemu reads it from a stopped thread."""

    source: ThreadPointerSource
    register: str = ""
    """REGISTER: the register; TLS_ENTRY: the segment register holding the selector."""
    note: int = 0
    """REGSET: its NT_* type."""
    hwcap2: int = 0
    """An AT_HWCAP2 bit without which the runtime cannot read it (x86_64's rdfsbase needs
    HWCAP2_FSGSBASE); 0: always readable."""


@dataclass(frozen=True)
class Counter:
    """The CPU's counter, which the runtime reads at a hit instead of calling the vDSO's
    clock where the kernel keeps time by it (uemu/runtime/src/runtime.c, now_ns), and
    else before calling it (checked_clock_ns)."""

    clocksource: str
    """The kernel clocksource that is this counter (sysfs ``current_clocksource``): only
    then is it the vDSO's own, steady and alike on every CPU."""
    insn_len: int
    """Bytes of the reading instruction, which faults in a thread that turned it off."""
    result_regs: tuple[str, ...]
    """Registers it writes; uemu zeroes them and steps over it after such a fault."""


class JumpForm(StrEnum):
    JUMP = "jump"
    """A whole jump written over the site's instruction (or the nop run it starts)."""
    PUN = "pun"
    """x86 instruction punning (E9Patch): only the jump's opcode is written; the next four
    bytes, the program's own, are its displacement, so its target is fixed."""


@dataclass(frozen=True)
class SiteJump:
    """How a jump can replace the trap at one site, before the process has its say."""

    vaddr: int
    """The probe's address (what events report)."""
    at: int
    """Where the jump is written (x86 ``nop; nopN``: the nopN, past the probe's own nop)."""
    length: int
    """Bytes uemu writes at ``at``."""
    form: JumpForm
    displaced: StepOutOfLine | None
    """The instruction the trampoline runs after the hit; None for nops."""
    resume: int
    """Where the trampoline jumps back to after nops (a displaced instruction's slot code
    ends with its own jump back)."""
    target: int | None
    """PUN: the one address the jump leads to (a landing: a whole jump from there on to
    the trampoline, so that targets a few bytes apart do not collide)."""
    reach: tuple[int, int]
    """[low, high): where a trampoline can be for a jump written at ``at`` (PUN: at
    ``target``)."""
    why: str
    """Said by ``uemu list --plan``."""
    pushes: int | None = None
    """A call moved to a trampoline of its own (an evicted successor): the return address
    its trampoline pushes, the call's own, before it jumps on to ``resume``, the callee."""


@dataclass(frozen=True)
class NoJump:
    """Why a site keeps the trap."""

    why: str


class JumpBackend(Protocol):
    """The jump path's narrow interface to one instruction set."""

    frame: HitFrame
    thread_pointer: ThreadPointer
    counter: Counter | None
    """None: the runtime's clock is the vDSO's alone."""
    tramp_size: int
    """Bytes a trampoline may take (its slot in the area)."""
    user_top: int
    """Where user space ends in the default layout: no trampoline, landing or pun
    target above it (mmap says the last word: a riscv64 Sv39 kernel's ends lower)."""
    trap_first: bool
    """A jump of more than one byte is written trap first, then its tail, then its first
    byte (Kernel: x86's text_poke_bp()), so that no running thread meets a torn
    instruction; False where one aligned store writes a whole jump."""

    def choose(self, plan: Plan, code: bytes) -> SiteJump | NoJump:
        """Whether and how a jump fits the site whose instruction the backend analysed as
        ``plan`` (``code``: the file's bytes from the site on)."""

    def jump_bytes(self, site: SiteJump, trampoline: int) -> bytes:
        """What uemu writes at ``site.at`` to send a thread to ``trampoline``."""

    def trampoline(self, site: SiteJump, address: int, index: int, hit_entry: int) -> bytes | None:
        """The trampoline for ``site`` placed at ``address``: the hit (``hit_entry`` with
        the site's ``index``), the displaced instruction, the jump back.  None when the
        displaced instruction cannot jump back from there (out of reach)."""

    def way_back(self, site: SiteJump, address: int) -> int:
        """Where the trampoline for ``site`` at ``address`` has its jump back to the
        program (to ``site.resume``): the last instruction a thread runs in it.  uemu
        puts a trap there at leaving to stop a thread that is still inside."""


@runtime_checkable
class Eviction(Protocol):
    """A jump backend whose puns can have their successor evicted (E9Patch's T2: x86 alone
    has puns): the instruction after a 1-byte site moves to a trampoline of its own,
    behind a whole jump written over its first bytes whose displacement uemu chooses,
    which makes the pun's displacement uemu's choice too.  Asked only where a pun's own
    target is refused."""

    def successor(self, site: SiteJump, code: bytes) -> SiteJump | None:
        """The jump over the instruction after the pun ``site`` (``code``: the file's bytes
        from the site on) that leads to its own trampoline, if it can have one: a whole
        jump (form JUMP), or a pun in turn (form PUN, ``length`` its bytes uemu writes,
        ``reach`` where it can lead)."""

    def evict_targets(self, site: SiteJump, low: int, high: int) -> range:
        """The addresses in [low, high) that the pun at ``site`` can lead to once its
        successor is evicted behind a whole jump: the first byte of the displacement is
        the successor's new first byte, the jump's opcode."""

    def evicted(self, site: SiteJump, successor: SiteJump, target: int) -> tuple[SiteJump, list[int]]:
        """``site`` with its pun led to ``target`` (one of ``evict_targets``), and where
        the whole jump over its ``successor`` may then lead, nearest first: the
        displacement bytes that the pun does not read are free."""

    def led_by(self, site: SiteJump, successor: SiteJump, lead: int) -> SiteJump:
        """``site`` with its pun's target, once its punned ``successor`` leads to ``lead``
        (within its ``reach``): the two share the bytes uemu chose, so one lead makes one
        target."""

    def relocated(self, successor: SiteJump, address: int) -> bytes | None:
        """The trampoline of an evicted ``successor`` placed at ``address``, with no hit:
        its instruction and the jump back; None when it cannot jump back from there."""

    def relocated_way_back(self, successor: SiteJump, address: int) -> int:
        """``way_back`` of that trampoline."""


def displaced_code(plan: StepOutOfLine, setup: XolSetup) -> bytes | None:
    """A backend's slot code for ``plan`` when it ends in its own jump back (the one-stop
    "jump" slots of the trap path), else None."""
    return setup.code if setup.ends is StepEnd.JUMP else None


def way_back_in(site: SiteJump, body_at: int, body: bytes, jump_size: int) -> int:
    """The jump back of a trampoline whose ``body`` starts at ``body_at``: the body itself
    for a nop (one jump, of whatever form), else its last ``jump_size`` bytes (the
    displaced instruction's slot code ends in the jump back)."""
    return body_at if site.displaced is None else body_at + len(body) - jump_size


def signed_fits(value: int, bits: int) -> bool:
    return -(1 << (bits - 1)) <= value < 1 << (bits - 1)
