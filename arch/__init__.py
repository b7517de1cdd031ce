"""Registry of architectures, installed as ``uemu.arch``.

Keyed exactly by what an ELF header says (``e_machine``, class, byte order) and
by our own name; no guessing.  Importing this package imports every arch
module, and none of them imports capstone or keystone at import time, so
listing probes never pays for instruction decoding.
"""

from __future__ import annotations

from uemu.errors import UnsupportedArch

from .base import Arch, SpecRegister

_BY_NAME: dict[str, Arch] = {}
_BY_ELF: dict[tuple[str, int, bool | None], Arch] = {}


def register(*arches: Arch) -> None:
    for arch in arches:
        _BY_NAME[arch.name] = arch
        _BY_ELF[(arch.e_machine, arch.elf_class, arch.little_endian)] = arch


def by_name(name: str) -> Arch:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UnsupportedArch(name, what=f"known: {', '.join(sorted(_BY_NAME))}") from None


def for_elf(e_machine: str, elf_class: int, little_endian: bool) -> Arch:
    """The Arch of an ELF file, from its header fields."""
    for key in ((e_machine, elf_class, little_endian), (e_machine, elf_class, None)):
        if key in _BY_ELF:
            return _BY_ELF[key]
    raise UnsupportedArch(e_machine, elf_class)


def all_arches() -> list[Arch]:
    return list(_BY_NAME.values())


__all__ = ["Arch", "SpecRegister", "all_arches", "by_name", "for_elf", "register"]
from . import aarch64, arm, loongarch, mips, ppc, riscv, s390x, x86  # noqa: E402,F401  (registers the arches)
