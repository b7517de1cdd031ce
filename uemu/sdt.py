"""SDT probes from ELF files: ``.note.stapsdt`` notes, build-id, address maths.

Notes are found through the section headers (the note section is not
allocated, so no PT_NOTE covers it) and decoded by hand: pyelftools names every
type-3 note ``NT_GNU_BUILD_ID`` whatever its owner, so we match the owner
``stapsdt`` first (shared/reference/usdt-format.md §2).  Files are opened and
their tables bounded by ``elfheaders``; a file whose section headers are gone
still runs, so it is an object without probes and a warning, never an error.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from elftools.common.exceptions import ELFError

from . import errors
from .elfheaders import PT_LOAD, SHT_NOTE, ElfHeaders, Section, Segment, Unsound, open_headers

if TYPE_CHECKING:
    from elftools.elf.sections import SymbolTableSection

NT_STAPSDT = 3
NT_GNU_BUILD_ID = 3
MAX_NOTE_SECTION = 16 << 20
"""Bytes of one note section read at most: libjvm's ``.note.stapsdt``, the
biggest seen, holds 52 KiB; a file claiming gigabytes is not believed."""
MAX_SYMBOL_TABLE = 256 << 20
"""Bytes of one symbol table read at most (libjvm's ``.symtab``: 1.6 MiB)."""


@dataclass(frozen=True)
class Probe:
    """One SDT site as its note describes it, after the prelink adjustment.

    ``file_offset`` and ``semaphore_offset`` are what the kernel's uprobe API
    takes (``PATH:OFFSET(REF_CTR_OFFSET)``); they are ``None`` in an object with
    no program headers (a relocatable ``.o``).
    """

    object: str
    provider: str
    name: str
    address: int
    file_offset: int | None
    semaphore: int | None
    semaphore_offset: int | None
    args: str
    build_id: str | None
    note_index: int

    @property
    def full_name(self) -> str:
        return f"{self.provider}:{self.name}"


@dataclass
class ElfObject:
    """An ELF file's identity and its SDT probes.

    ``warnings`` and ``note_errors`` collect what is wrong with the file without
    hiding the probes that are fine.
    """

    path: str
    e_machine: str
    e_type: str
    elf_class: int
    little_endian: bool
    segments: list[Segment]
    """The PT_LOAD program headers."""
    build_id: str | None
    probes: list[Probe] = field(default_factory=list)
    note_errors: list[errors.NoteFormatError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    source: str = ""
    """Where to read the file (differs from ``path`` for a process in another mount namespace)."""

    @property
    def arch_name(self) -> str:
        """Our architecture name, or the raw machine when uemu does not know it."""
        from uemu.arch import for_elf  # the registry imports every arch: only callers that need it pay

        try:
            name: str = for_elf(self.e_machine, self.elf_class, self.little_endian).name
        except errors.UnsupportedArch:
            return self.e_machine
        return name

    def file_offset(self, vaddr: int, executable: bool | None = None) -> int | None:
        """vaddr -> file offset through PT_LOAD (pyelftools' ``address_offsets``).

        ``executable`` restricts the segments considered, as libbpf does: the
        probe must lie in an executable segment, the semaphore in a data one.
        """
        for seg in self.segments:
            if executable is not None and seg.executable != executable:
                continue
            off = seg.file_offset(vaddr)
            if off is not None:
                return off
        return None

    def vaddr(self, offset: int) -> int | None:
        """File offset -> link-time vaddr (inverse of ``file_offset``)."""
        for seg in self.segments:
            vaddr = seg.vaddr(offset)
            if vaddr is not None:
                return vaddr
        return None

    @cached_property
    def symbols(self) -> SymbolTable:
        """The object's symbols, read on first use only: listing never needs them,
        and big libraries have hundreds of thousands."""
        try:
            with open_headers(self.path, self.source or None) as headers:
                return SymbolTable.read(headers)
        except errors.UemuError:
            return SymbolTable()  # the file went away or changed: no symbols, arguments read as unknown

    def symbol_address(self, name: str, near: int | None = None) -> int | None:
        """Link-time address of ``name`` as code at address ``near`` sees it."""
        return self.symbols.lookup(name, near)


@dataclass
class SymbolTable:
    """Defined symbols, with file-local ones kept per source file.

    Two files may each have a static with one name (libbpf/usdt issue #13).
    In ``.symtab`` each file's locals follow its STT_FILE symbol, so when the
    probe site lies in a local (static) function we know its file and hence
    which static the operand means.  When it does not, the answer would be a
    guess: ``lookup`` says None instead.
    """

    globals: dict[str, int] = field(default_factory=dict)
    locals: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    """name -> [(file index, address)]."""
    local_functions: list[tuple[int, int, int]] = field(default_factory=list)
    """(start, end, file index) of each static function, sorted."""

    @classmethod
    def read(cls, headers: ElfHeaders) -> SymbolTable:
        """Both symbol tables; one too big, outside the file or broken is skipped
        (a probe whose argument names a symbol then reads it as unknown)."""
        from elftools.elf.sections import SymbolTableSection  # only tracing needs it: listing stays fast

        table = cls()
        for section_name in (".symtab", ".dynsym"):
            found = headers.section(section_name)
            if found is None or found.sh_size > MAX_SYMBOL_TABLE or found.sh_offset + found.sh_size > headers.size:
                continue
            try:
                section = headers.elf.get_section(found.index)
                if isinstance(section, SymbolTableSection):  # not some other type under that name
                    table._add(section_name, section)
            except (ELFError, struct.error, ValueError):
                continue
        table.local_functions.sort()
        return table

    def _add(self, section_name: str, section: SymbolTableSection) -> None:
        file_index = 0
        for sym in section.iter_symbols():
            kind, bind = sym["st_info"]["type"], sym["st_info"]["bind"]
            if kind == "STT_FILE":
                file_index += 1
            elif not sym.name or sym["st_shndx"] == "SHN_UNDEF":
                continue
            elif bind != "STB_LOCAL":
                self.globals.setdefault(sym.name, sym["st_value"])
            elif section_name == ".symtab":
                self.locals.setdefault(sym.name, []).append((file_index, sym["st_value"]))
                if kind == "STT_FUNC":
                    self.local_functions.append((sym["st_value"], sym["st_value"] + sym["st_size"], file_index))

    def lookup(self, name: str, near: int | None = None) -> int | None:
        candidates = self.locals.get(name, [])
        if not candidates:
            return self.globals.get(name)
        here = self.file_of(near) if near is not None else None
        for file_index, address in candidates:
            if file_index == here:
                return address
        if here is not None and name in self.globals:
            return self.globals[name]  # the site's file has no static of that name
        if len(candidates) == 1 and name not in self.globals:
            return candidates[0][1]
        return None  # defined in several files, and nothing tells which one the site sees

    def file_of(self, address: int) -> int | None:
        """The file index of the static function holding ``address``, if any."""
        for start, end, file_index in self.local_functions:
            if start <= address < end:
                return file_index
        return None


def open_elf(path: str, source: str | None = None) -> ElfObject:
    """Read an ELF file's identity and probes.

    ``path`` is the name we report; ``source`` is where to read it from when
    that differs (``/proc/PID/map_files/...`` for a process in another mount
    namespace).
    """
    with open_headers(path, source) as headers:
        return _read_elf(headers, source or path)


def _read_elf(headers: ElfHeaders, source: str) -> ElfObject:
    header = headers.header
    obj = ElfObject(
        path=headers.path,
        e_machine=str(header.e_machine),
        e_type=str(header.e_type),
        elf_class=header.elf_class,
        little_endian=header.little_endian,
        segments=[seg for seg in headers.segments if seg.p_type == PT_LOAD],
        build_id=None,
        source=source,
    )
    if headers.sections_problem is not None:
        obj.warnings.append(f"{obj.path}: {headers.sections_problem}; no SDT notes readable")
        return obj
    obj.build_id = _build_id(headers)
    _collect_probes(headers, obj)
    return obj


def _build_id(headers: ElfHeaders) -> str | None:
    section = headers.section(".note.gnu.build-id")
    if section is None:
        return None
    try:
        for note in _iter_raw_notes(headers.section_data(section, MAX_NOTE_SECTION), headers.header.little_endian):
            if note.owner == b"GNU\0" and note.type == NT_GNU_BUILD_ID:
                return note.desc.hex()
    except (_BrokenFraming, Unsound):
        pass  # a broken build-id note only costs us the build-id
    return None


@dataclass(frozen=True)
class _RawNote:
    owner: bytes
    type: int
    desc: bytes


class _BrokenFraming(ValueError):
    """A note header that cannot be right; nothing after it can be trusted."""


def _iter_raw_notes(data: bytes, little_endian: bool) -> Iterator[_RawNote]:
    """Split a note section: 4-byte-word headers, name and desc each padded to 4
    (gABI; the padding is outside ``namesz``/``descsz``)."""
    header = struct.Struct("<III" if little_endian else ">III")
    pos = 0
    while pos < len(data):
        if pos + header.size > len(data):
            raise _BrokenFraming(f"truncated note header at section offset {pos:#x}")
        namesz, descsz, ntype = header.unpack_from(data, pos)
        name_start = pos + header.size
        desc_start = name_start + _align4(namesz)
        if desc_start + descsz > len(data):
            raise _BrokenFraming(f"note at section offset {pos:#x} runs past the section end")
        yield _RawNote(data[name_start : name_start + namesz], ntype, data[desc_start : desc_start + descsz])
        pos = desc_start + _align4(descsz)


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _collect_probes(headers: ElfHeaders, obj: ElfObject) -> None:
    base_section = headers.section(".stapsdt.base")
    base_addr = base_section.sh_addr if base_section is not None else None
    addr_fmt = ("<" if obj.little_endian else ">") + ("QQQ" if obj.elf_class == 64 else "III")
    index = 0
    for section in headers.sections:
        if section.name != ".note.stapsdt" or section.sh_type != SHT_NOTE:
            continue
        try:
            for raw in _iter_raw_notes(_note_data(headers, section), obj.little_endian):
                if raw.owner == b"stapsdt\0":
                    try:
                        obj.probes.append(_decode_stapsdt(obj, raw, index, addr_fmt, base_addr))
                    except errors.NoteFormatError as err:
                        obj.note_errors.append(err)
                index += 1
        except (_BrokenFraming, Unsound) as err:
            obj.note_errors.append(errors.NoteFormatError(obj.path, index, str(err)))
    if obj.probes and base_addr is None:
        obj.warnings.append(f"{obj.path}: no .stapsdt.base section; addresses used without prelink adjustment")


def _note_data(headers: ElfHeaders, section: Section) -> bytes:
    """A note section's bytes; in a relocatable object (.o) with its relocations
    applied, as readelf shows it: sites then hold their offsets in .text."""
    data = headers.section_data(section, MAX_NOTE_SECTION)
    if headers.header.e_type != "ET_REL":
        return data
    from elftools.elf.relocation import RelocationHandler  # relocatable objects only: listing stays fast

    stream = io.BytesIO(data)
    try:
        elf = headers.elf
        handler = RelocationHandler(elf)
        relocations = handler.find_relocations_for_section(elf.get_section(section.index))
        if relocations is None:
            return data
        handler.apply_section_relocations(stream, relocations)
    except (ELFError, struct.error, ValueError):
        return data  # an arch pyelftools cannot relocate (riscv), or broken relocations: fields as stored
    return stream.getvalue()


def _decode_stapsdt(
    obj: ElfObject, raw: _RawNote, index: int, addr_fmt: str, base_addr: int | None
) -> Probe:
    """Decode one v3 descriptor: pc, base, semaphore, provider\\0name\\0args\\0.

    The argument string's NUL must be the descriptor's last byte (gdb's and
    systemtap's rule; ``descsz`` excludes the padding).
    """
    if raw.type != NT_STAPSDT:
        raise errors.NoteFormatError(obj.path, index, f"note type {raw.type}, expected {NT_STAPSDT}")
    addr_size = struct.calcsize(addr_fmt)
    desc = raw.desc
    if len(desc) < addr_size + 3:
        raise errors.NoteFormatError(obj.path, index, f"descriptor of {len(desc)} bytes is too short")
    pc, note_base, semaphore = struct.unpack_from(addr_fmt, desc)
    strings = desc[addr_size:].split(b"\0")
    if len(strings) != 4 or strings[3] != b"":
        raise errors.NoteFormatError(
            obj.path, index, "expected provider, name and arguments ending at the descriptor's end"
        )
    # surrogateescape: the bytes that are not UTF-8 stay what they were, for printing to escape (events.escape)
    provider, name, args = (s.decode("utf-8", "surrogateescape") for s in strings[:3])
    if not name:
        raise errors.NoteFormatError(obj.path, index, "empty probe name")
    # Prelink moves the object but cannot rewrite unallocated notes; the
    # section header of .stapsdt.base moved with it (usdt-format.md §3, gdb's rule).
    if base_addr and note_base:
        delta = base_addr - note_base
        pc += delta
        if semaphore:
            semaphore += delta
    return Probe(
        object=obj.path,
        provider=provider,
        name=name,
        address=pc,
        file_offset=obj.file_offset(pc, executable=True) if obj.segments else None,
        semaphore=semaphore or None,
        semaphore_offset=(obj.file_offset(semaphore, executable=False) if semaphore and obj.segments else None),
        args=args,
        build_id=obj.build_id,
        note_index=index,
    )


def group_sites(probes: list[Probe]) -> dict[tuple[str, str, str], list[Probe]]:
    """Sites of one probe name, keyed (object, provider, name), in note order."""
    groups: dict[tuple[str, str, str], list[Probe]] = {}
    for probe in probes:
        groups.setdefault((probe.object, probe.provider, probe.name), []).append(probe)
    return groups
