"""SDT probes from ELF files: ``.note.stapsdt`` notes, build-id, address maths.

Notes are found through the section headers (the note section is not
allocated, so no PT_NOTE covers it) and decoded by hand: pyelftools names every
type-3 note ``NT_GNU_BUILD_ID`` whatever its owner, so we match the owner
``stapsdt`` first (shared/reference/usdt-format.md §2).
"""

from __future__ import annotations

import io
import os
import struct
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import BinaryIO

from elftools.common.exceptions import ELFError, ELFRelocationError
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationHandler

from . import errors
from .maps import Vma, find_counter_vma, is_probe_vma

NT_STAPSDT = 3
NT_GNU_BUILD_ID = 3
PF_X = 0x1


@dataclass(frozen=True)
class LoadSegment:
    """One PT_LOAD program header, with the gABI's field names."""

    p_vaddr: int
    p_memsz: int
    p_offset: int
    p_filesz: int
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
    segments: list[LoadSegment]
    build_id: str | None
    probes: list[Probe] = field(default_factory=list)
    note_errors: list[errors.NoteFormatError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    source: str = ""
    """Where to read the file (differs from ``path`` for a process in another mount namespace)."""

    @property
    def arch_name(self) -> str:
        """Our architecture name, or the raw machine when uemu does not know it."""
        from uemu import arch

        try:
            return arch.for_elf(self.e_machine, self.elf_class, self.little_endian).name
        except errors.UnsupportedArch:
            return self.e_machine

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
            with open(self.source or self.path, "rb") as stream:
                return SymbolTable.read(ELFFile(stream))
        except (OSError, ELFError):
            return SymbolTable()

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
    def read(cls, elf: ELFFile) -> SymbolTable:
        table = cls()
        for section_name in (".symtab", ".dynsym"):
            section = elf.get_section_by_name(section_name)
            if section is None:
                continue
            file_index = 0
            for sym in section.iter_symbols():
                kind, bind = sym["st_info"]["type"], sym["st_info"]["bind"]
                if kind == "STT_FILE":
                    file_index += 1
                elif not sym.name or sym["st_shndx"] == "SHN_UNDEF":
                    continue
                elif bind != "STB_LOCAL":
                    table.globals.setdefault(sym.name, sym["st_value"])
                elif section_name == ".symtab":
                    table.locals.setdefault(sym.name, []).append((file_index, sym["st_value"]))
                    if kind == "STT_FUNC":
                        table.local_functions.append((sym["st_value"], sym["st_value"] + sym["st_size"], file_index))
        table.local_functions.sort()
        return table

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
    source = source or path
    try:
        stream = open(source, "rb")
    except FileNotFoundError:
        raise errors.NoSuchFile(path) from None
    except IsADirectoryError:
        raise errors.ElfFormatError(path, "is a directory, not an ELF file") from None
    except PermissionError:
        raise errors.AccessDenied(f"cannot read {path}") from None
    with stream:
        return _read_elf(path, source, stream)


def _read_elf(path: str, source: str, stream: BinaryIO) -> ElfObject:
    if stream.read(4) != b"\x7fELF":
        raise errors.ElfFormatError(path, "not an ELF file")
    stream.seek(0)
    try:
        elf = ELFFile(stream)
        obj = ElfObject(
            path=path,
            e_machine=elf["e_machine"],
            e_type=elf["e_type"],
            elf_class=elf.elfclass,
            little_endian=elf.little_endian,
            segments=[
                LoadSegment(seg["p_vaddr"], seg["p_memsz"], seg["p_offset"], seg["p_filesz"], seg["p_flags"])
                for seg in elf.iter_segments("PT_LOAD")
            ],
            build_id=_build_id(elf),
            source=source,
        )
        _collect_probes(elf, obj)
    except (ELFError, struct.error, ValueError) as err:
        raise errors.ElfFormatError(path, f"malformed ELF: {err}") from None
    return obj


def _build_id(elf: ELFFile) -> str | None:
    section = elf.get_section_by_name(".note.gnu.build-id")
    if section is None:
        return None
    try:
        for note in _iter_raw_notes(section.data(), elf.little_endian):
            if note.owner == b"GNU\0" and note.type == NT_GNU_BUILD_ID:
                return note.desc.hex()
    except _BrokenFraming:
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


def _collect_probes(elf: ELFFile, obj: ElfObject) -> None:
    base_section = elf.get_section_by_name(".stapsdt.base")
    base_addr = base_section["sh_addr"] if base_section is not None else None
    addr_fmt = ("<" if obj.little_endian else ">") + ("QQQ" if obj.elf_class == 64 else "III")
    index = 0
    for section in elf.iter_sections():
        if section.name != ".note.stapsdt" or section["sh_type"] != "SHT_NOTE":
            continue
        try:
            for raw in _iter_raw_notes(_note_data(elf, section), obj.little_endian):
                if raw.owner == b"stapsdt\0":
                    try:
                        obj.probes.append(_decode_stapsdt(obj, raw, index, addr_fmt, base_addr))
                    except errors.NoteFormatError as err:
                        obj.note_errors.append(err)
                index += 1
        except _BrokenFraming as err:
            obj.note_errors.append(errors.NoteFormatError(obj.path, index, str(err)))
    if obj.probes and base_addr is None:
        obj.warnings.append(f"{obj.path}: no .stapsdt.base section; addresses used without prelink adjustment")


def _note_data(elf: ELFFile, section) -> bytes:
    """A note section's bytes; in a relocatable object (.o) with its relocations
    applied, as readelf shows it: sites then hold their offsets in .text."""
    if elf["e_type"] != "ET_REL":
        return section.data()
    handler = RelocationHandler(elf)
    relocations = handler.find_relocations_for_section(section)
    if relocations is None:
        return section.data()
    stream = io.BytesIO(section.data())
    try:
        handler.apply_section_relocations(stream, relocations)
    except ELFRelocationError:
        return section.data()  # an arch pyelftools cannot relocate (riscv): fields as stored
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
    provider, name, args = (s.decode("utf-8", "backslashreplace") for s in strings[:3])
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


@dataclass
class MappedObject:
    """An ELF object as one process maps it: the file, its identity, its VMAs."""

    elf: ElfObject
    file_id: tuple[int, int]
    vmas: list[Vma]

    def runtime_address(self, offset: int) -> int | None:
        """Where the byte at file ``offset`` is in the process's code: the first
        probe VMA covering it (the one the kernel would patch)."""
        for vma in self.vmas:
            if is_probe_vma(vma, self.file_id, offset):
                return vma.offset_to_vaddr(offset)
        return None

    def runtime_semaphore(self, ref_ctr_offset: int) -> int | None:
        vma = find_counter_vma(self.vmas, self.file_id, ref_ctr_offset)
        return vma.offset_to_vaddr(ref_ctr_offset) if vma else None

    @property
    def load_bias(self) -> int:
        """Runtime minus link-time address, from the first VMA that maps a segment."""
        for vma in self.vmas:
            vaddr = self.elf.vaddr(vma.offset)
            if vaddr is not None:
                return vma.start - vaddr
        return 0

    def symbol_runtime_address(self, name: str, near: int | None = None) -> int | None:
        """Where a symbol is in this process; ``near`` is the link-time address of the
        code referring to it (picks the right one of several same-named statics)."""
        vaddr = self.elf.symbol_address(name, near)
        return None if vaddr is None else vaddr + self.load_bias


def mapped_objects(pid: int, vmas: list[Vma]) -> tuple[list[MappedObject], list[str]]:
    """Every ELF file mapped in ``pid``, with warnings for files we could not open.

    Each file is opened through ``/proc/PID/map_files`` (the very file the
    mapping holds, even deleted or in another mount namespace), else through
    ``/proc/PID/root``, and checked against the (device, inode) of its mapping.
    """
    by_file: dict[tuple[int, int], list[Vma]] = {}
    for vma in vmas:
        if vma.file_backed and vma.path.startswith("/"):
            by_file.setdefault(vma.file_id, []).append(vma)
    objects, warnings = [], []
    for file_id, file_vmas in by_file.items():
        first = file_vmas[0]
        path = first.path.removesuffix(" (deleted)")
        fd = _open_mapped_file(pid, first)
        if fd is None:
            warnings.append(f"{path}: cannot open it as mapped in process {pid}; its probes are not listed")
            continue
        try:
            elf = open_elf(path, f"/proc/self/fd/{fd}")
        except errors.UemuError as err:
            os.close(fd)
            if not isinstance(err, errors.ElfFormatError):  # mapped data files (locales, fonts) are not ELF
                warnings.append(err.message)
            continue
        weakref.finalize(elf, os.close, fd)
        objects.append(MappedObject(elf, file_id, file_vmas))
    return objects, warnings


def _open_mapped_file(pid: int, vma: Vma) -> int | None:
    """A descriptor of the mapping's own file, or None.

    The file is opened through /proc and the descriptor kept: a
    ``map_files`` entry disappears as soon as the mapping is split or
    replaced (ld.so remaps segments over its first reservation), but the
    symbols are read later, on first need.
    """
    candidates = (
        f"/proc/{pid}/map_files/{vma.start:x}-{vma.end:x}",
        f"/proc/{pid}/root{vma.path}",
    )
    for candidate in candidates:
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        st = os.fstat(fd)
        # Overlay and bind mounts can show another file under the same path:
        # only the mapping's (device, inode) proves it is the mapped file.
        if (st.st_dev, st.st_ino) == vma.file_id:
            return fd
        os.close(fd)
    return None

