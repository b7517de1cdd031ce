"""elfheaders unpacks the ELF header and the header tables itself (struct, for
speed); pyelftools, which parses them field by field, is the oracle: every
file of every sample build (both classes, both byte orders: s390x is
big-endian, armhf 32-bit) must read the same."""

from __future__ import annotations

import pytest
from elftools.elf.elffile import ELFFile

from uemu.elfheaders import PT_DYNAMIC, PT_INTERP, PT_LOAD, SHT_NOBITS, SHT_NOTE, open_headers

pytestmark = pytest.mark.oracle

# pyelftools names the types; these are the numbers uemu compares with.
SEGMENT_TYPES = {"PT_LOAD": PT_LOAD, "PT_DYNAMIC": PT_DYNAMIC, "PT_INTERP": PT_INTERP}
SECTION_TYPES = {"SHT_NOTE": SHT_NOTE, "SHT_NOBITS": SHT_NOBITS}


def test_headers_read_as_pyelftools_reads_them(sample_build) -> None:
    files = sample_build.elf_files()
    assert files
    for path in files:
        with path.open("rb") as stream, open_headers(str(path)) as headers:
            elf = ELFFile(stream)
            header = headers.header
            assert (header.elf_class, header.little_endian, header.e_type, header.e_machine) == (
                elf.elfclass, elf.little_endian, elf["e_type"], elf["e_machine"]), path
            theirs = list(elf.iter_segments())
            assert [(s.p_offset, s.p_vaddr, s.p_filesz, s.p_memsz, s.p_flags) for s in headers.segments] == [
                (s["p_offset"], s["p_vaddr"], s["p_filesz"], s["p_memsz"], s["p_flags"]) for s in theirs], path
            for ours, seg in zip(headers.segments, theirs, strict=True):
                assert (ours.p_type == SEGMENT_TYPES[seg["p_type"]]) if seg["p_type"] in SEGMENT_TYPES else (
                    ours.p_type not in SEGMENT_TYPES.values()), path
            assert headers.sections_problem is None, path
            sections = list(elf.iter_sections())
            assert [(s.name, s.sh_flags, s.sh_addr, s.sh_offset, s.sh_size, s.sh_link) for s in headers.sections] == [
                (s.name, s["sh_flags"], s["sh_addr"], s["sh_offset"], s["sh_size"], s["sh_link"]) for s in sections
            ], path
            for ours, sec in zip(headers.sections, sections, strict=True):
                assert (ours.sh_type == SECTION_TYPES[sec["sh_type"]]) if sec["sh_type"] in SECTION_TYPES else (
                    ours.sh_type not in SECTION_TYPES.values()), path
