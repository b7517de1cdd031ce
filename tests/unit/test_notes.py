"""Note decoding on real files the tests alter: prelink moves, malformed notes.

Each test copies a sample built by ``make`` and changes a few bytes of the
copy with struct packing (a section header field, one note), so every input
is a real ELF file; what is expected follows from the change alone.  Plain
decoding is compared with ``readelf -n`` in integration/test_readelf_oracle.py.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from uemu import sdt

Uemu = Callable[..., subprocess.CompletedProcess[str]]
"""The conftest fixture that runs the command line."""


class Patcher:
    """Byte-level edits of a copied ELF file, located through its headers."""

    def __init__(self, path: Path):
        self.path = path
        self.data = bytearray(path.read_bytes())
        with path.open("rb") as stream:
            elf = ELFFile(stream)
            self.endian = "<" if elf.little_endian else ">"
            self.word = "Q" if elf.elfclass == 64 else "I"
            self.shoff, self.shentsize = elf["e_shoff"], elf["e_shentsize"]
            self.sections = {s.name: (i, s["sh_offset"], s["sh_size"]) for i, s in enumerate(elf.iter_sections())}
            self.names_offset = elf.get_section(elf["e_shstrndx"])["sh_offset"]

    def section_field(self, name: str, field: str) -> int:
        """File offset of a section header field (gABI layout, ELF32 or ELF64)."""
        index = self.sections[name][0]
        sizes = {"I": 4, "Q": 8}[self.word]
        # sh_name, sh_type are 4 bytes; sh_flags, sh_addr, sh_offset, sh_size are words.
        position = {"sh_name": 0, "sh_addr": 8 + sizes, "sh_size": 8 + 3 * sizes}[field]
        return self.shoff + index * self.shentsize + position

    def read(self, fmt: str, offset: int) -> int:
        return struct.unpack_from(self.endian + fmt, self.data, offset)[0]

    def write(self, fmt: str, offset: int, value: int) -> None:
        struct.pack_into(self.endian + fmt, self.data, offset, value)

    def notes(self) -> Iterator[tuple[int, int, int]]:
        """(file offset, namesz, descsz) of each note in .note.stapsdt (4-byte framing)."""
        _, start, size = self.sections[".note.stapsdt"]
        pos = start
        while pos < start + size:
            namesz, descsz = self.read("I", pos), self.read("I", pos + 4)
            yield pos, namesz, descsz
            pos += 12 + _align4(namesz) + _align4(descsz)

    def save(self) -> Path:
        self.path.write_bytes(self.data)
        return self.path


def _align4(n: int) -> int:
    return (n + 3) & ~3


def patched(source: Path, tmp_path: Path) -> Patcher:
    copy = tmp_path / source.name
    shutil.copyfile(source, copy)
    return Patcher(copy)


def moved(probe: sdt.Probe, path: Path, delta: int) -> sdt.Probe:
    """The probe as it must read after its object moved by ``delta`` (gdb's rule)."""
    return replace(
        probe,
        object=str(path),
        address=probe.address + delta,
        semaphore=None if probe.semaphore is None else probe.semaphore + delta,
        file_offset=None,
        semaphore_offset=None,
    )


def without_offsets(probe: sdt.Probe) -> sdt.Probe:
    return replace(probe, file_offset=None, semaphore_offset=None)


# ---------------------------------------------------------------- prelink


@pytest.mark.parametrize("delta", [0x10, -0x20])
@pytest.mark.parametrize("sample", ["sema", "basic", "libsdtlib.so"])
def test_prelink_moves_sites_and_semaphores(samples: Path, tmp_path: Path, sample: str, delta: int) -> None:
    """.stapsdt.base's sh_addr moved, the notes not: every site and non-zero
    semaphore moves by the difference; file offsets follow the new address."""
    original = sdt.open_elf(str(samples / sample))
    patch = patched(samples / sample, tmp_path)
    where = patch.section_field(".stapsdt.base", "sh_addr")
    patch.write(patch.word, where, patch.read(patch.word, where) + delta)
    obj = sdt.open_elf(str(patch.save()))
    assert original.probes
    assert [without_offsets(p) for p in obj.probes] == [moved(p, patch.path, delta) for p in original.probes]
    for before, after in zip(original.probes, obj.probes, strict=True):
        assert after.file_offset == before.file_offset + delta
    assert obj.warnings == [] and obj.note_errors == []


def test_prelink_keeps_a_note_whose_base_is_zero(samples: Path, tmp_path: Path) -> None:
    """gdb adjusts only when the note's base is non-zero: such a note keeps its address."""
    original = sdt.open_elf(str(samples / "sema"))
    patch = patched(samples / "sema", tmp_path)
    where = patch.section_field(".stapsdt.base", "sh_addr")
    patch.write(patch.word, where, patch.read(patch.word, where) + 0x10)
    first_note = next(patch.notes())[0]
    patch.write(patch.word, first_note + 12 + 8 + struct.calcsize(patch.word), 0)  # desc: pc, base, semaphore
    obj = sdt.open_elf(str(patch.save()))
    assert [p.address - q.address for p, q in zip(obj.probes, original.probes, strict=True)] == [0] + [0x10] * (
        len(original.probes) - 1
    )


def test_without_stapsdt_base_addresses_stay_and_a_warning_says_why(samples: Path, tmp_path: Path) -> None:
    original = sdt.open_elf(str(samples / "sema"))
    patch = patched(samples / "sema", tmp_path)
    name = patch.names_offset + patch.read("I", patch.section_field(".stapsdt.base", "sh_name"))
    assert patch.data[name : name + 14] == b".stapsdt.base\0"
    patch.data[name : name + 13] = b".stapsdt.bas_"
    obj = sdt.open_elf(str(patch.save()))
    assert [replace(p, object="") for p in obj.probes] == [replace(p, object="") for p in original.probes]
    assert obj.warnings == [f"{patch.path}: no .stapsdt.base section; addresses used without prelink adjustment"]


# ---------------------------------------------------------------- malformed notes


@dataclass(frozen=True)
class Corruption:
    """One way to break note ``index`` of a copy; ``survivors``: notes still listed."""

    name: str
    apply: Callable[[Patcher, int, int, int], None]
    """(patcher, note offset, namesz, descsz) -> None"""
    detail: str
    """What uemu's message says is wrong."""
    framing_lost: bool = False
    """The note's framing is gone, so no later note can be found (readelf stops there too)."""


def _grow_descsz_into_padding(patch: Patcher, at: int, namesz: int, descsz: int) -> None:
    assert descsz % 4, "the chosen note has no padding"
    patch.write("I", at + 4, _align4(descsz))


def _drop_last_nul(patch: Patcher, at: int, namesz: int, descsz: int) -> None:
    end = at + 12 + _align4(namesz) + descsz - 1
    assert patch.data[end] == 0
    patch.data[end] = ord("x")


def _empty_name(patch: Patcher, at: int, namesz: int, descsz: int) -> None:
    """provider\\0name\\0args\\0 -> provider\\0\\0<spaces>args\\0, same length."""
    strings_at = at + 12 + _align4(namesz) + 3 * struct.calcsize(patch.word)
    end = at + 12 + _align4(namesz) + descsz
    provider, name, args, _ = bytes(patch.data[strings_at:end]).split(b"\0")
    patch.data[strings_at:end] = provider + b"\0\0" + b" " * len(name) + args + b"\0"


def _wrong_type(patch: Patcher, at: int, namesz: int, descsz: int) -> None:
    patch.write("I", at + 8, 4)


def _descsz_past_section(patch: Patcher, at: int, namesz: int, descsz: int) -> None:
    patch.write("I", at + 4, 0x100000)


def _truncate_section(patch: Patcher, at: int, namesz: int, descsz: int) -> None:
    """The section now ends in the middle of this note's descriptor."""
    _, start, _ = patch.sections[".note.stapsdt"]
    patch.write(patch.word, patch.section_field(".note.stapsdt", "sh_size"), at - start + 12 + namesz + 4)


_STRINGS = "expected provider, name and arguments ending at the descriptor's end"
CORRUPTIONS = [
    Corruption("descsz-into-padding", _grow_descsz_into_padding, _STRINGS),
    Corruption("missing-nul", _drop_last_nul, _STRINGS),
    Corruption("empty-name", _empty_name, "empty probe name"),
    Corruption("wrong-type", _wrong_type, "note type 4, expected 3"),
    Corruption("descsz-past-section", _descsz_past_section, "runs past the section end", framing_lost=True),
    Corruption("truncated-section", _truncate_section, "runs past the section end", framing_lost=True),
]


def corrupt(samples: Path, tmp_path: Path, corruption: Corruption) -> tuple[Path, int, list[sdt.Probe]]:
    """A copy of ``sema`` with one note broken: (copy, its index, the probes that must survive)."""
    original = sdt.open_elf(str(samples / "sema")).probes
    patch = patched(samples / "sema", tmp_path)
    notes = list(patch.notes())
    # A middle note with padding after its descriptor, so that every corruption applies.
    index = next(i for i, (_, _, descsz) in enumerate(notes) if 0 < i < len(notes) - 1 and descsz % 4)
    if corruption.name == "truncated-section":
        index = len(notes) - 1
    corruption.apply(patch, *notes[index])
    patch.save()
    survivors = [replace(p, object=str(patch.path)) for p in original if p.note_index != index]
    if corruption.framing_lost:
        survivors = [p for p in survivors if p.note_index < index]
    return patch.path, index, survivors


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=lambda c: c.name)
def test_a_malformed_note_is_reported_and_the_others_decoded(
    samples: Path, tmp_path: Path, corruption: Corruption
) -> None:
    path, index, survivors = corrupt(samples, tmp_path, corruption)
    obj = sdt.open_elf(str(path))
    assert obj.probes == survivors
    assert [(e.path, e.index) for e in obj.note_errors] == [(str(path), index)]
    assert corruption.detail in obj.note_errors[0].detail


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=lambda c: c.name)
def test_uemu_list_warns_once_and_lists_the_rest(
    samples: Path, tmp_path: Path, uemu: Uemu, corruption: Corruption
) -> None:
    path, index, survivors = corrupt(samples, tmp_path, corruption)
    result = uemu("list", str(path), "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"uemu: warning: {path}: malformed stapsdt note #{index}: ")
    assert result.stderr.count("\n") == 1 and corruption.detail in result.stderr, result.stderr
    assert len(result.stdout.splitlines()) == len(survivors) > 0
