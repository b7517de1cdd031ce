"""Bytes from a file or a tracee reach the terminal escaped, everywhere the CLI
prints them: the list table and its JSON, malformed-note warnings (printed by
list through the same callback the session warns with), the "did you mean" hint, hit lines
and JSON events.  A program whose notes hold ESC, BEL, CR, LF, TAB and 0xff is
made here from a compiled one, its note bytes replaced in place, and saved
under a file name holding the same bytes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from tracee import compile_program

CONTROL = b"\x1b\x07\r\n\t"
SHOWN = r"\x1b\x07\r\n\t"
ARG_BYTES = b"\x1b\x07\x7f\x01\x02"  # no white space: the spec string stays one spec
ARG_SHOWN = r"\x1b\x07\x7f\x01\x02"
NAME_BYTES = b"\xff\\xff"  # the byte 0xff, then a literal backslash-x-f-f: two things, two forms
FILE_NAME = b"esc\x1b[31m\x07\r\n\xff-prog"
FILE_SHOWN = r"esc\x1b[31m\x07\r\n\xff-prog"

SOURCE = r"""
#include <sys/sdt.h>
int main(void) {
    STAP_PROBE1(escprovAAAAA, escnameBBBBB, 123456789);
    STAP_PROBE(escprovAAAAA, brokenCCCCC);
    return 0;
}
"""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("escaping")
    data = bytearray(compile_program(directory, "prog", SOURCE).read_bytes())
    with open(directory / "prog", "rb") as stream:
        section = ELFFile(stream).get_section_by_name(".note.stapsdt")
        start, end = section["sh_offset"], section["sh_offset"] + section["sh_size"]
    note = bytes(data[start:end])
    note = note.replace(b"AAAAA", CONTROL).replace(b"BBBBB", NAME_BYTES).replace(b"$12345", b"$" + ARG_BYTES)
    # The second note loses the NUL between provider and name: malformed, with the file's name in the warning.
    note = note.replace(CONTROL + b"\0brokenCCCCC", CONTROL + b"!brokenCCCCC")
    assert len(note) == end - start
    data[start:end] = note
    path = directory / os.fsdecode(FILE_NAME)
    path.write_bytes(bytes(data))
    path.chmod(0o755)
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run([sys.executable, "-m", "uemu", *map(str, args)], capture_output=True, timeout=60)
    for stream in (result.stdout, result.stderr):
        assert all(0x20 <= b < 0x7F or b == 0x0A for b in stream), stream  # printable ASCII lines only
    return result


def lines(stream: bytes) -> list[str]:
    return stream.decode("ascii").splitlines()


def test_list_table_and_warning_are_escaped(hostile):
    result = run("list", hostile)
    assert result.returncode == 0
    (line,) = lines(result.stdout)
    assert line.startswith(f"{hostile.parent}/{FILE_SHOWN} escprov{SHOWN}:escname")
    assert line.endswith(f"args: -4@${ARG_SHOWN}6789")
    (warning,) = lines(result.stderr)
    assert warning == f"uemu: warning: {hostile.parent}/{FILE_SHOWN}: malformed stapsdt note #1: " \
                      "expected provider, name and arguments ending at the descriptor's end"


def test_list_json_holds_the_escaped_form(hostile):
    (record,) = [json.loads(line) for line in lines(run("list", "--json", hostile).stdout)]
    assert record["object"] == f"{hostile.parent}/{FILE_SHOWN}"
    assert record["provider"] == f"escprov{SHOWN}"
    assert record["args"] == f"-4@${ARG_SHOWN}6789"


def test_a_byte_and_a_literal_backslash_escape_differently(hostile):
    (record,) = [json.loads(line) for line in lines(run("list", "--json", hostile).stdout)]
    assert record["name"] == r"escname\xff\\xff"


def test_the_did_you_mean_hint_is_escaped(hostile):
    result = run("list", hostile, "escprov*:escnamX")
    assert result.returncode == 6
    _warning, line = lines(result.stderr)
    assert line.startswith(f"uemu: no probe matches 'escprov*:escnamX'; did you mean escprov{SHOWN}:escname")


@pytest.fixture
def traced(hostile, tmp_path) -> Path:
    """The same program under a name with control bytes and 0xff but no CR or
    LF (see the test after this one)."""
    path = tmp_path / os.fsdecode(b"esc\x1b[31m\x07\xff-prog")
    shutil.copy(hostile, path)
    return path


def test_tracing_escapes_hits(traced):
    shown = r"esc\x1b[31m\x07\xff-prog"
    text = run("run", "--", traced)
    assert text.returncode == 0, text.stderr
    hit = next(line for line in lines(text.stderr) if " escprov" in line)
    assert hit.split(" ", 2)[2].startswith(f"escprov{SHOWN}:escname")
    events = run("run", "--json", f"escprov{CONTROL.decode()}:*", "--", traced)
    (event,) = [json.loads(line) for line in lines(events.stderr) if line.startswith("{")]
    assert event["provider"] == f"escprov{SHOWN}" and event["object"] == f"{traced.parent}/{shown}"
    assert event["specs"] == [f"-4@${ARG_SHOWN}6789"] and event["args"] == [None]


def test_tracing_a_program_whose_name_holds_cr_and_lf(hostile):
    result = run("run", "--json", "--", hostile)
    assert result.returncode == 0
    (event,) = [json.loads(line) for line in lines(result.stderr) if line.startswith("{")]
    assert event["object"] == f"{hostile.parent}/{FILE_SHOWN}"
