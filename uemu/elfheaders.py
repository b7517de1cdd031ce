"""An untrusted ELF file's header tables, read within the file's real size.

Every ELF file uemu reads (a path on the command line, a file a tracee maps, a
library the dynamic linker would load) may be hostile or broken.  This module
is the one place that opens one: without blocking (a FIFO) and only when it
is a regular file (a device may act on open), with each header table checked
against the file's size before it is read, and each section read at most up to
a limit its caller names.  The ELF header and the header tables, fixed gABI
records, are unpacked with ``struct`` (pyelftools' construct costs about 100 us
a record and 4 ms to set up per file: most of a listing); e_type and e_machine
get pyelftools' names.  pyelftools' own view (``ElfHeaders.elf``) is made only
for what needs it: symbol tables, relocations.

The program headers are required: the kernel refuses to run a file without a
sound table (``load_elf_phdrs()``).  The section headers are not (a program
runs without them), so a missing or broken section header table is a fact
(``ElfHeaders.sections_problem``), never an error.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, BinaryIO

from elftools.elf.enums import ENUM_E_MACHINE, ENUM_E_TYPE

from . import errors

if TYPE_CHECKING:  # imported where used: a listing never needs it
    from elftools.elf.elffile import ELFFile

PF_X = 0x1
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
SHT_NOTE, SHT_NOBITS = 7, 8
SHF_COMPRESSED = 0x800
SHN_XINDEX = 0xFFFF
MAX_PROGRAM_HEADERS = 65536
"""Bytes of program headers the kernel reads at most (``load_elf_phdrs()``)."""
MAX_SECTIONS = 1 << 20
"""Section headers read at most: C++ objects with ``-ffunction-sections`` pass
65,280 (the ``e_shnum`` escape), none comes near a million."""
MAX_SECTION_NAMES = 16 << 20
"""Bytes of section names read at most (a big ``.shstrtab`` holds a few hundred KiB)."""


class Unsound(ValueError):
    """A header table or section that lies outside the file, or holds more than uemu reads."""


@dataclass(frozen=True)
class Segment:
    """One program header, with the gABI's field names."""

    p_type: int
    p_offset: int
    p_vaddr: int
    p_filesz: int
    p_memsz: int
    p_flags: int

    @property
    def executable(self) -> bool:
        return bool(self.p_flags & PF_X)

    def file_offset(self, vaddr: int) -> int | None:
        """File offset of ``vaddr`` if this segment maps it from the file."""
        if self.p_vaddr <= vaddr < self.p_vaddr + self.p_filesz:
            return vaddr - self.p_vaddr + self.p_offset
        return None

    def vaddr(self, offset: int) -> int | None:
        if self.p_offset <= offset < self.p_offset + self.p_filesz:
            return offset - self.p_offset + self.p_vaddr
        return None


@dataclass(frozen=True)
class Section:
    """One section header, with the gABI's field names and its name resolved."""

    index: int
    name: str
    sh_type: int
    sh_flags: int
    sh_addr: int
    sh_offset: int
    sh_size: int
    sh_link: int


@dataclass(frozen=True)
class FileHeader:
    """The ELF header (gABI Elf32_Ehdr / Elf64_Ehdr)."""

    elf_class: int
    little_endian: bool
    e_type: str | int
    """pyelftools' name (``ET_DYN``), or the number of a type it does not know."""
    e_machine: str | int
    """pyelftools' name (``EM_X86_64``), or the number."""
    e_phoff: int
    e_shoff: int
    e_phentsize: int
    e_phnum: int
    e_shentsize: int
    e_shnum: int
    e_shstrndx: int

    @property
    def byte_order(self) -> str:
        """The ``struct`` prefix of the file's byte order."""
        return "<" if self.little_endian else ">"


@dataclass
class ElfHeaders:
    """An open ELF file, its header tables checked.

    The section headers are read on first use (ldso.py never needs them);
    ``sections`` is then empty and ``sections_problem`` says why when the file
    has no usable section header table.
    """

    path: str
    stream: BinaryIO
    size: int
    header: FileHeader
    segments: list[Segment]

    @cached_property
    def elf(self) -> ELFFile:
        """pyelftools' view of the file, for symbol tables and relocations
        (may raise ELFError: its caller is ready for a broken table anyway)."""
        from elftools.elf.elffile import ELFFile

        return ELFFile(self.stream)

    @cached_property
    def _section_table(self) -> tuple[list[Section], str | None]:
        try:
            return _section_headers(self.header, self.stream, self.size), None
        except (struct.error, ValueError) as err:
            return [], str(err)

    @property
    def sections(self) -> list[Section]:
        return self._section_table[0]

    @property
    def sections_problem(self) -> str | None:
        return self._section_table[1]

    def section(self, name: str) -> Section | None:
        """The first section of that name (the order ld and readelf use)."""
        return next((s for s in self.sections if s.name == name), None)

    def section_data(self, section: Section, limit: int) -> bytes:
        """A section's bytes as stored, when there are at most ``limit`` of
        them, all inside the file and not compressed."""
        if section.sh_type == SHT_NOBITS:
            return b""
        if section.sh_flags & SHF_COMPRESSED:
            raise Unsound(f"section {section.name} is compressed")
        if section.sh_size > limit:
            raise Unsound(
                f"section {section.name} claims {section.sh_size} bytes, more than uemu reads ({limit})"
            )
        return self.read(section.sh_offset, section.sh_size, f"section {section.name}")

    def read(self, offset: int, size: int, what: str) -> bytes:
        """``size`` bytes at ``offset``, which must lie inside the file."""
        if offset + size > self.size:
            raise Unsound(f"{what} runs past the end of the file ({self.size} bytes)")
        self.stream.seek(offset)
        data = self.stream.read(size)
        if len(data) != size:
            raise Unsound(f"{what}: the file shrank while read")
        return data


@contextmanager
def open_headers(path: str, source: str | None = None) -> Iterator[ElfHeaders]:
    """Open ``path`` (read from ``source`` when given: ``/proc/PID/map_files/...``)
    and check its header tables.

    Raises ``ElfFormatError`` for what is no ELF file or has no sound program
    header table, ``Unreadable`` for what is no regular file, and whatever
    ``errors.from_os_error`` makes of an OSError, inside the ``with`` body too.
    """
    with errors.os_errors(path):
        stream, size = open_regular(path, source or path)
        with stream:
            yield _read_headers(path, stream, size)


def open_regular(path: str, source: str) -> tuple[BinaryIO, int]:
    """``source`` open for reading, and its size, if it is a regular file
    (``path`` names it in errors).  OSError is the caller's to translate."""
    # stat first: opening a FIFO blocks and opening a device may act (a tape
    # rewinds, a watchdog arms).  O_NONBLOCK covers a swap between stat and open.
    _check_regular(path, os.stat(source).st_mode)
    fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    stream = os.fdopen(fd, "rb")
    try:
        st = os.fstat(fd)
        _check_regular(path, st.st_mode)
    except BaseException:
        stream.close()
        raise
    return stream, st.st_size


_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _check_regular(path: str, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise errors.ElfFormatError(path, "is a directory, not an ELF file")
    if not stat.S_ISREG(mode):
        raise errors.Unreadable(path, f"is {_KINDS.get(stat.S_IFMT(mode), 'no regular file')}, not an ELF file")


def _read_headers(path: str, stream: BinaryIO, size: int) -> ElfHeaders:
    if size == 0:
        raise errors.ElfFormatError(path, "is empty, not an ELF file")
    ident = stream.read(EI_NIDENT)
    if not ident.startswith(b"\x7fELF"):
        raise errors.ElfFormatError(path, "not an ELF file")
    try:
        header = _file_header(ident, stream)
        segments = _program_headers(header, stream, size)
    except (struct.error, ValueError) as err:
        raise errors.ElfFormatError(path, f"malformed ELF: {err}") from None
    return ElfHeaders(path, stream, size, header, segments)


EI_NIDENT = 16
# gABI records, fields as named: Elf_Ehdr after e_ident, Elf_Phdr, Elf_Shdr (32- and 64-bit).
_EHDR = {32: "HHIIIIIHHHHHH", 64: "HHIQQQIHHHHHH"}
_EHDR_FIELDS = ("e_type", "e_machine", "e_version", "e_entry", "e_phoff", "e_shoff", "e_flags", "e_ehsize",
                "e_phentsize", "e_phnum", "e_shentsize", "e_shnum", "e_shstrndx")
_PHDR = {32: "IIIIIIII", 64: "IIQQQQQQ"}
_PHDR_FIELDS = {32: ("p_type", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz", "p_flags", "p_align"),
                64: ("p_type", "p_flags", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz", "p_align")}
_SHDR = {32: "IIIIIIIIII", 64: "IIQQQQIIQQ"}
_SHDR_FIELDS = ("sh_name", "sh_type", "sh_flags", "sh_addr", "sh_offset", "sh_size", "sh_link", "sh_info",
                "sh_addralign", "sh_entsize")
_E_TYPES = {value: name for name, value in ENUM_E_TYPE.items() if isinstance(value, int)}
_E_MACHINES = {value: name for name, value in ENUM_E_MACHINE.items() if isinstance(value, int)}


def _file_header(ident: bytes, stream: BinaryIO) -> FileHeader:
    """e_ident's class and byte order (the only values it may not hold are
    refused, as pyelftools and the kernel do), then the rest of the header."""
    elf_class = {1: 32, 2: 64}.get(ident[4]) if len(ident) > 4 else None
    if elf_class is None:
        raise ValueError(f"invalid EI_CLASS {ident[4:5].hex() or 'missing'}")
    little = {1: True, 2: False}.get(ident[5]) if len(ident) > 5 else None
    if little is None:
        raise ValueError(f"invalid EI_DATA {ident[5:6].hex() or 'missing'}")
    fmt = ("<" if little else ">") + _EHDR[elf_class]
    data = stream.read(struct.calcsize(fmt))
    if len(ident) < EI_NIDENT or len(data) < struct.calcsize(fmt):
        raise ValueError("the ELF header is cut off")
    fields = dict(zip(_EHDR_FIELDS, struct.unpack(fmt, data), strict=True))
    return FileHeader(
        elf_class, little, _E_TYPES.get(fields["e_type"], fields["e_type"]),
        _E_MACHINES.get(fields["e_machine"], fields["e_machine"]),
        *(fields[name] for name in ("e_phoff", "e_shoff", "e_phentsize", "e_phnum", "e_shentsize", "e_shnum",
                                    "e_shstrndx")),
    )


def _records(header: FileHeader, stream: BinaryIO, fmt: str, names: tuple[str, ...], offset: int,
             count: int) -> list[dict[str, int]]:
    record = struct.Struct(header.byte_order + fmt)
    stream.seek(offset)
    data = stream.read(record.size * count)
    if len(data) != record.size * count:
        raise Unsound("the file shrank while read")
    return [dict(zip(names, values, strict=True)) for values in record.iter_unpack(data)]


def _check_table(what: str, offset: int, size: int, file_size: int) -> None:
    if offset + size > file_size:
        raise Unsound(
            f"{what} ({size} bytes at offset {offset:#x}) runs past the end of the file ({file_size} bytes)"
        )


def _program_headers(header: FileHeader, stream: BinaryIO, size: int) -> list[Segment]:
    """Kernel: ``load_elf_phdrs()`` wants e_phentsize == sizeof(Elf_Phdr) and at
    most 64 KiB of them (so no PN_XNUM escape either)."""
    count, entsize, offset = header.e_phnum, header.e_phentsize, header.e_phoff
    if count == 0:
        return []
    fmt = _PHDR[header.elf_class]
    expected = struct.calcsize(fmt)
    if entsize != expected:
        raise Unsound(f"program header size {entsize}, expected {expected}")
    if count * entsize > MAX_PROGRAM_HEADERS:
        raise Unsound(f"{count} program headers, more than the kernel reads")
    _check_table("program header table", offset, count * entsize, size)
    headers = _records(header, stream, fmt, _PHDR_FIELDS[header.elf_class], offset, count)
    return [
        Segment(h["p_type"], h["p_offset"], h["p_vaddr"], h["p_filesz"], h["p_memsz"], h["p_flags"])
        for h in headers
    ]


def _section_headers(header: FileHeader, stream: BinaryIO, size: int) -> list[Section]:
    """The section header table, with names; gABI escapes for e_shnum and
    e_shstrndx that do not fit (both in section 0)."""
    offset, entsize = header.e_shoff, header.e_shentsize
    if offset == 0:
        raise Unsound("no section headers")
    fmt = _SHDR[header.elf_class]
    expected = struct.calcsize(fmt)
    if entsize != expected:
        raise Unsound(f"section header size {entsize}, expected {expected}")
    _check_table("section header table", offset, entsize, size)
    [first] = _records(header, stream, fmt, _SHDR_FIELDS, offset, 1)
    count = header.e_shnum or first["sh_size"]
    if count > MAX_SECTIONS:
        raise Unsound(f"{count} section headers, more than uemu reads ({MAX_SECTIONS})")
    _check_table("section header table", offset, count * entsize, size)
    headers = _records(header, stream, fmt, _SHDR_FIELDS, offset, count)
    names_index = first["sh_link"] if header.e_shstrndx == SHN_XINDEX else header.e_shstrndx
    if not 0 < names_index < count:
        raise Unsound(f"section names in section {names_index} of {count}")
    names = headers[names_index]
    if names["sh_size"] > MAX_SECTION_NAMES:
        raise Unsound(f"section names claim {names['sh_size']} bytes, more than uemu reads")
    _check_table("section names", names["sh_offset"], names["sh_size"], size)
    stream.seek(names["sh_offset"])
    table = stream.read(names["sh_size"])
    return [
        Section(i, _name(table, h["sh_name"]), h["sh_type"], h["sh_flags"], h["sh_addr"], h["sh_offset"],
                h["sh_size"], h["sh_link"])
        for i, h in enumerate(headers)
    ]


def _name(table: bytes, offset: int) -> str:
    """A NUL-terminated name in a string table; one past its end reads as empty."""
    end = table.find(b"\0", offset)
    return table[offset:end if end >= 0 else len(table)].decode("utf-8", "surrogateescape")
