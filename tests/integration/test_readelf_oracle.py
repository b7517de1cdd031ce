"""uemu.sdt against ``readelf``: notes (``-n``), sections (``-S``), PT_LOAD (``-l``).

The corpus: every ELF file of every sample build (all targets at -O0 and -O2,
PIE and non-PIE x86, objects included), big-endian programs and objects built
here (the sample Makefile has no big-endian target), and every ELF file under
/usr/bin and /usr/lib that has a ``.note.stapsdt`` section.

uemu must agree with readelf note for note, up to the differences ``expected``
lists.  File offsets must be what readelf's PT_LOAD table gives, in a segment
of the right kind, and the bytes there must be the architecture's SDT nop.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import pytest

from uemu import sdt

if TYPE_CHECKING:
    from conftest import Build

pytestmark = pytest.mark.oracle

if shutil.which("readelf") is None:
    pytest.skip("readelf (binutils) is not installed: it is the oracle", allow_module_level=True)


# ---------------------------------------------------------------- readelf's view


@dataclass(frozen=True)
class Note:
    """One stapsdt note as readelf prints it; ``corrupt`` when it printed only that."""

    provider: str = ""
    name: str = ""
    pc: int = 0
    base: int = 0
    semaphore: int = 0
    args: str = ""
    corrupt: bool = False


@dataclass(frozen=True)
class Segment:
    """A PT_LOAD row of ``readelf -lW``."""

    offset: int
    vaddr: int
    filesz: int
    flags: str

    def file_offset(self, vaddr: int) -> int | None:
        if self.vaddr <= vaddr < self.vaddr + self.filesz:
            return vaddr - self.vaddr + self.offset
        return None


@dataclass(frozen=True)
class Readelf:
    notes: list[Note]
    base_section: int | None
    """sh_addr of ``.stapsdt.base``, or None without one."""
    segments: list[Segment]
    build_id: str | None


_NOTE = re.compile(
    rb"^ +stapsdt +0x[0-9a-f]+\s+NT_STAPSDT \(SystemTap probe descriptors\)\s+"
    rb"(?:(?P<corrupt><corrupt[^\n]*>)|Provider: (?P<provider>[^\n]*)\n +Name: (?P<name>[^\n]*)\n"
    rb" +Location: (?P<pc>0x[0-9a-f]+), Base: (?P<base>0x[0-9a-f]+), Semaphore: (?P<semaphore>0x[0-9a-f]+)\n"
    rb" +Arguments: (?P<args>[^\n]*))$",
    re.MULTILINE,
)
_NOTE_HEADER = re.compile(rb"^ +stapsdt +0x[0-9a-f]+\s+NT_STAPSDT", re.MULTILINE)
_BASE_SECTION = re.compile(rb"^ +\[ *\d+\] \.stapsdt\.base +\S+ +([0-9a-f]+) ", re.MULTILINE)
_LOAD = re.compile(
    rb"^ +LOAD +0x([0-9a-f]+) 0x([0-9a-f]+) 0x[0-9a-f]+ 0x([0-9a-f]+) 0x[0-9a-f]+ ([R ][W ][E ]) ", re.MULTILINE
)
_BUILD_ID = re.compile(rb"\sBuild ID: ([0-9a-f]+)$", re.MULTILINE)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def readelf(path: Path) -> Readelf:
    out = subprocess.run(["readelf", "-W", "-n", "-S", "-l", str(path)], capture_output=True, check=False).stdout
    notes = [
        Note(corrupt=True) if m["corrupt"] else Note(
            _text(m["provider"]), _text(m["name"]), int(m["pc"], 16), int(m["base"], 16),
            int(m["semaphore"], 16), _text(m["args"]),
        )
        for m in _NOTE.finditer(out)
    ]
    assert len(notes) == len(_NOTE_HEADER.findall(out)), f"{path}: a stapsdt note this parser does not read"
    base = _BASE_SECTION.search(out)
    build_id = _BUILD_ID.search(out)
    return Readelf(
        notes,
        int(base[1], 16) if base else None,
        [Segment(int(m[1], 16), int(m[2], 16), int(m[3], 16), m[4].decode()) for m in _LOAD.finditer(out)],
        build_id[1].decode() if build_id else None,
    )


# ---------------------------------------------------------------- the normaliser


@dataclass(frozen=True)
class Site:
    """The fields of a probe both tools show."""

    provider: str
    name: str
    address: int | None
    semaphore: int | None
    args: str


def expected(note: Note, base_section: int | None, unrelocated: bool) -> Site | None:
    """What uemu must report for a note readelf printed; None: uemu must call it malformed.

    Every difference tolerated between ``readelf -n`` and uemu:

    1. readelf prints the link-time pc and semaphore stored in the note; uemu
       moves both by the prelink delta ``sh_addr(.stapsdt.base) - note base``,
       when both are non-zero, and the semaphore only when it is non-zero
       (gdb's rule, usdt-format.md §3).  In an unmodified file the delta is 0.
    2. No semaphore is ``0x0`` in readelf, None in uemu.
    3. readelf prints the strings' raw bytes; uemu decodes them as UTF-8 with
       invalid bytes backslash-escaped (``_text`` decodes readelf's the same way).
    4. uemu rejects, with the note's index, notes readelf prints: an empty
       probe name (libbpf's rule) and bytes after the argument string's NUL
       inside descsz (gdb's rule; readelf then only sets its exit status, so
       such a note cannot be told apart here; the malformed-note tests build
       one).  A note readelf calls ``<corrupt>`` is malformed for uemu too.
    5. In a relocatable object (no program headers) both apply the note
       section's relocations and give the site's offset in its section, except
       where pyelftools cannot apply them (riscv): uemu then reports the stored
       field, so the address is not compared there (None on both sides).
    """
    if note.corrupt or not note.name:
        return None
    delta = base_section - note.base if base_section and note.base else 0
    return Site(
        note.provider,
        note.name,
        None if unrelocated else note.pc + delta,
        note.semaphore + delta if note.semaphore else None,
        note.args,
    )


def uemu_view(obj: sdt.ElfObject, unrelocated: bool) -> dict[int, Site | None]:
    """uemu's probes and malformed notes by note index."""
    view: dict[int, Site | None] = {
        p.note_index: Site(p.provider, p.name, None if unrelocated else p.address, p.semaphore, p.args)
        for p in obj.probes
    }
    view.update((err.index, None) for err in obj.note_errors)
    return view


def agree_with_readelf(path: Path) -> int:
    """Assert uemu and readelf agree on ``path``; the number of sites compared."""
    oracle = readelf(path)
    obj = sdt.open_elf(str(path))
    unrelocated = not oracle.segments and obj.e_machine == "EM_RISCV"
    want = {i: expected(note, oracle.base_section, unrelocated) for i, note in enumerate(oracle.notes)}
    assert uemu_view(obj, unrelocated) == want, path
    assert obj.build_id == oracle.build_id, path
    return len(obj.probes)


# ---------------------------------------------------------------- file offsets and nops

# The SDT nop as bytes in the file (usdt-format.md §1).  AArch64 and ARM (BE8)
# keep instructions little-endian whatever the data byte order.
SDT_NOPS: dict[str, tuple[bytes, ...]] = {
    "EM_X86_64": (b"\x90",),
    "EM_386": (b"\x90",),
    "EM_AARCH64": (bytes.fromhex("1f2003d5"),),  # d503201f
    "EM_ARM": (bytes.fromhex("00bf"),),  # Thumb bf00; the note has no Thumb bit
    "EM_RISCV": (bytes.fromhex("0100"), bytes.fromhex("13000000")),  # c.nop 0001, nop 00000013
    "EM_PPC64": (bytes.fromhex("00000060"),),  # 60000000, little-endian (ppc64le)
    "EM_S390": (bytes.fromhex("47000000"),),  # nop 0, big-endian only
    "EM_MIPS": (bytes(4),),
}
NOT_NOPS = {"insns", "leaving"}
"""Samples whose notes point at real instructions on purpose (samples/README.md)."""


def expected_offset(segments: list[Segment], vaddr: int, executable: bool) -> int | None:
    """File offset through readelf's PT_LOAD rows; the segment must be of the right kind."""
    for segment in segments:
        offset = segment.file_offset(vaddr)
        if offset is not None:
            assert ("E" in segment.flags) == executable, f"{vaddr:#x} in a {segment.flags!r} segment"
            return offset
    return None


def offsets_agree(path: Path, nops: bool = True) -> int:
    """Assert file_offset/semaphore_offset match readelf -lW and that each site
    holds the SDT nop; the number of sites checked."""
    segments = readelf(path).segments
    obj = sdt.open_elf(str(path))
    stream = path.open("rb")
    for probe in obj.probes:
        where = f"{path} {probe.full_name} at {probe.address:#x}"
        if not segments:  # a relocatable object: no offsets at all
            assert (probe.file_offset, probe.semaphore_offset) == (None, None), where
            continue
        assert probe.file_offset == expected_offset(segments, probe.address, executable=True), where
        assert probe.file_offset is not None, where
        semaphore_offset = None if probe.semaphore is None else expected_offset(segments, probe.semaphore, False)
        assert probe.semaphore_offset == semaphore_offset, where
        if nops:
            stream.seek(probe.file_offset)
            at = stream.read(4)
            assert any(at.startswith(nop) for nop in SDT_NOPS[obj.e_machine]), f"{where}: {at.hex()}"
    stream.close()
    return len(obj.probes)


# ---------------------------------------------------------------- sample builds


def test_samples_agree_with_readelf(sample_build: Build) -> None:
    files = sample_build.elf_files()
    sites = sum(agree_with_readelf(path) for path in files)
    assert sites > 100, f"only {sites} sites in {sample_build.name}"
    # In files nobody moved, the notes' base is where .stapsdt.base is: no delta.
    for path in files:
        oracle = readelf(path)
        if oracle.segments and oracle.notes:
            assert {n.base for n in oracle.notes} == {oracle.base_section}, path


def test_sample_offsets_and_nops(sample_build: Build) -> None:
    sites = sum(offsets_agree(path, nops=path.name not in NOT_NOPS) for path in sample_build.elf_files())
    assert sites > 100


# ---------------------------------------------------------------- big-endian builds

# A freestanding program: no big-endian libc is installed, but a static link
# without one works.  A probe without arguments, one with, and, in a second
# unit (a unit with semaphores must have them for all its probes), one whose
# semaphore lives in .probes.
BIG_ENDIAN_SOURCES = {
    "main.c": r"""
#include <sys/sdt.h>
volatile long total;
void counted(int i, long v);
void _start(void)
{
	STAP_PROBE(be, start);
	for (int i = 0; i < 4; i++) {
		STAP_PROBE2(be, plain, i, total);
		counted(i, total + i);
	}
	for (;;)
		;
}
""",
    "sema.c": r"""
#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>
unsigned short be_counted_semaphore __attribute__((section(".probes")));
extern volatile long total;
void counted(int i, long v)
{
	if (be_counted_semaphore)
		STAP_PROBE3(be, counted, i, v, &total);
	total += v;
}
""",
}
BIG_ENDIAN = {
    "aarch64_be": ("aarch64-linux-gnu-gcc", ["-mbig-endian"]),
    "armeb": ("arm-linux-gnueabihf-gcc", ["-mbig-endian"]),
    "mips32eb": ("mips64el-linux-gnuabi64-gcc", ["-EB", "-mabi=32"]),
    "mips64eb": ("mips64el-linux-gnuabi64-gcc", ["-EB"]),
}


@pytest.fixture(scope="module", params=sorted(BIG_ENDIAN))
def big_endian(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A big-endian program and its two objects, built by a cross gcc."""
    compiler, flags = BIG_ENDIAN[request.param]
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed")
    out = tmp_path_factory.mktemp(request.param)
    multiarch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True, check=True).stdout
    cc = [compiler, *flags, "-O2", "-ffreestanding", "-idirafter", f"/usr/include/{multiarch.strip()}"]
    objects = []
    for name, text in BIG_ENDIAN_SOURCES.items():
        (out / name).write_text(text)
        objects.append(out / name.replace(".c", ".o"))
        subprocess.run([*cc, "-c", "-o", str(objects[-1]), str(out / name)], check=True)
    program = out / "be"
    subprocess.run([*cc, "-nostdlib", "-static", "-Wl,-e,_start", "-o", str(program), *map(str, objects)],
                   check=True)
    for path in (program, *objects):
        assert path.read_bytes()[5] == 2, f"{path} is not big-endian (EI_DATA)"
    return [program, *objects]


def test_big_endian_agrees_with_readelf(big_endian: list[Path]) -> None:
    assert [agree_with_readelf(path) for path in big_endian] == [3, 2, 1]


def test_big_endian_offsets_and_nops(big_endian: list[Path]) -> None:
    program = big_endian[0]
    assert offsets_agree(program) == 3
    probes = sdt.open_elf(str(program)).probes
    assert {p.name for p in probes if p.semaphore_offset is not None} == {"counted"}


def test_relocatable_objects_give_section_offsets(big_endian: list[Path]) -> None:
    """What readelf prints for an object's sites: their offsets in .text."""
    objects = [path for path in big_endian[1:] if b".rela.note.stapsdt" in path.read_bytes()]
    if not objects:
        pytest.skip("REL objects: the offsets are stored in the notes, uemu agrees already")
    for path in objects:
        assert [p.address for p in sdt.open_elf(str(path)).probes] == [n.pc for n in readelf(path).notes]


# ---------------------------------------------------------------- the system's files

SYSTEM_ROOTS = ("/usr/bin", "/usr/lib")


def _section_names(stream: BinaryIO, header: bytes) -> bytes:
    """The section-name string table, read through the ELF and section headers only."""
    endian = "<" if header[5] == 1 else ">"
    if header[4] == 2:
        (shoff,) = struct.unpack_from(endian + "Q", header, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", header, 0x3A)
        entry = endian + "24xQQ4xI"  # sh_offset, sh_size, sh_link
    else:
        (shoff,) = struct.unpack_from(endian + "I", header, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", header, 0x2E)
        entry = endian + "16xIII"
    if shoff == 0 or shnum <= shstrndx < 0xFF00:
        return b""

    def section(index: int) -> tuple[int, int, int]:
        stream.seek(shoff + index * shentsize)
        return struct.unpack(entry, stream.read(struct.calcsize(entry)))

    if shstrndx == 0xFFFF:  # SHN_XINDEX: the real index is section 0's sh_link
        shstrndx = section(0)[2]
    offset, size, _ = section(shstrndx)
    stream.seek(offset)
    return stream.read(min(size, 1 << 20))


def has_sdt_notes(path: str) -> bool:
    """Cheaply: the ELF magic first, then only the section names."""
    try:
        with open(path, "rb") as stream:
            header = stream.read(64)
            if len(header) < 52 or header[:4] != b"\x7fELF":
                return False
            return b".note.stapsdt\0" in _section_names(stream, header)
    except (OSError, struct.error):
        return False


def system_sdt_files() -> Iterator[Path]:
    """Regular files (each inode once, no symlinks) under SYSTEM_ROOTS with SDT notes."""
    seen: set[tuple[int, int]] = set()
    for root in SYSTEM_ROOTS:
        for directory, _, names in os.walk(root):
            for name in names:
                path = os.path.join(directory, name)
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    if has_sdt_notes(path):
                        yield Path(path)


@pytest.fixture(scope="module")
def system_files() -> list[Path]:
    start = time.perf_counter()
    files = list(system_sdt_files())
    print(f"\n{len(files)} files with SDT notes found in {time.perf_counter() - start:.2f} s")
    if not files:
        pytest.skip(f"no ELF file with SDT notes under {', '.join(SYSTEM_ROOTS)}")
    return files


def test_system_files_agree_with_readelf(system_files: list[Path]) -> None:
    start = time.perf_counter()
    sites = sum(agree_with_readelf(path) for path in system_files)
    print(f"{len(system_files)} files, {sites} sites agree in {time.perf_counter() - start:.2f} s")
    assert sites >= len(system_files)


def test_system_files_offsets_and_nops(system_files: list[Path]) -> None:
    assert sum(offsets_agree(path) for path in system_files) >= len(system_files)
