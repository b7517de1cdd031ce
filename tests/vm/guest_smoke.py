"""Checks of the test guest itself, run inside it by guest-tests.sh.

Not named test_*: on the host these would only repeat the integration tests.
In a guest they show that what the integration tests need works there: the
guest kernel's own uprobes, placed at the file offsets the installed ``uemu
list`` computes for a guest sample build, with the semaphore as reference
counter, see every hit the sample says a tracer must see; and the guest's
capstone (a PyPI wheel on arm64, Debian's python3-capstone on riscv64, which
has no wheel) is a 5.x that decodes the guest's instructions as the backends
ask it to.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from collections import Counter
from pathlib import Path

import capstone
import pytest

BUILD = Path(__file__).resolve().parents[2] / "samples" / "build"
BUILDS = os.environ["UEMU_SAMPLE_BUILDS"].split()
TRACEFS = Path("/sys/kernel/tracing")


def uemu_list(path: Path) -> list[dict]:
    result = subprocess.run(["uemu", "list", "--json", str(path)], capture_output=True, text=True, check=True)
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_capstone_decodes_the_guests_nop() -> None:
    arch, mode, nop = {
        "aarch64": (capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM, bytes.fromhex("1f2003d5")),
        "riscv64": (capstone.CS_ARCH_RISCV, capstone.CS_MODE_RISCV64 | capstone.CS_MODE_RISCVC, bytes.fromhex("0100")),
    }[platform.machine()]
    assert capstone.cs_version()[0] == 5
    [instruction] = capstone.Cs(arch, mode).disasm(nop, 0x1000)
    assert instruction.mnemonic in ("nop", "c.nop")


def define(text: str) -> None:
    # Appended with O_APPEND alone: tracefs refuses the seek that open(..., "a") makes.
    fd = os.open(TRACEFS / "uprobe_events", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@pytest.mark.parametrize("build", BUILDS)
def test_kernel_uprobes_at_uemus_offsets_see_what_sema_says(build: str) -> None:
    sample = BUILD / build / "sema"
    group = f"uemu_smoke_{os.getpid()}"
    probes = {}
    try:
        for row in uemu_list(sample):
            event = f"e{len(probes)}"
            counter = "" if row["semaphore_offset"] is None else f"(0x{row['semaphore_offset']:x})"
            define(f"p:{group}/{event} {sample}:0x{row['file_offset']:x}{counter}\n")
            probes[event] = f"{row['provider']}:{row['name']}"
        (TRACEFS / "trace").write_text("")
        (TRACEFS / "events" / group / "enable").write_text("1")
        output = subprocess.run([str(sample)], capture_output=True, text=True, check=True).stdout
        (TRACEFS / "events" / group / "enable").write_text("0")
        seen = Counter(probes[event] for event in re.findall(r" (e\d+): \(", (TRACEFS / "trace").read_text()))
    finally:
        for event in probes:
            define(f"-:{group}/{event}\n")

    lines = [line.split() for line in output.splitlines()]
    expected = Counter(words[3] for words in lines if words[0] == "hit")
    # The kernel raised every semaphore: the guarded probes were passed too.
    assert [words[5] for words in lines if words[0] == "sema"] != []
    assert all(words[5] != "0" for words in lines if words[0] == "sema")
    assert set(expected) == {"sema:guarded", "sema:persite", "sema:always"}
    assert seen == expected
