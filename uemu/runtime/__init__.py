"""The in-target runtime: a flat code blob per ABI, committed as package data.

``src/runtime.c`` is compiled by ``python3 -m uemu.runtime.build`` (see its docstring for
why C and why committed blobs); ``layout.py`` defines the area and the table the blob
reads.  This module only loads a blob and its entry offsets: no compiler is needed to
run uemu.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

from uemu.errors import UnsupportedArch

from . import layout


@dataclass(frozen=True)
class Blob:
    """One ABI's runtime: its bytes (to write at the area's start) and entry offsets."""

    arch: str
    code: bytes
    trap_handler: int
    restorer: int
    inject_syscall: int
    """The syscall instruction of the inject stub; the trap instruction follows it."""
    hit_entry: int
    read_counter: int
    """0: this ABI's runtime never reads the CPU's counter itself."""


def has_blob(arch: str) -> bool:
    return (resources.files(__name__) / "blobs" / f"{arch}.bin").is_file()


@cache
def load_blob(arch: str) -> Blob:
    """The blob built for ``arch`` (an ``Arch.name``), checked against its own header."""
    path = resources.files(__name__) / "blobs" / f"{arch}.bin"
    if not path.is_file():
        raise UnsupportedArch(arch, what="no in-target runtime built for it")
    code = path.read_bytes()
    header = layout.BLOB_HEADER.decode(code)
    if header.magic != layout.BLOB_MAGIC or header.version != layout.BLOB_VERSION or header.size != len(code):
        raise UnsupportedArch(arch, what=f"{path}: not a runtime blob of version {layout.BLOB_VERSION}")
    return Blob(arch, code, header.trap_handler, header.restorer, header.inject_syscall, header.hit_entry,
                header.read_counter)
