"""The kernel's registration rules, checked on uemu and on kernel uprobes alike:
consumers sharing a site, ref_ctr_offset mismatch and alignment, a trap in the
file, a counter that would go negative, handlers seeing ip = the site."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from oracle import GROUP, _append, _write, sdt_sites, tracefs_reason
from tracee import Tracee, attach_cli, file_memory, read_memory, semaphore, stop_cli, uemu_cli, wait_until

from uemu import sdt
from uemu.arch import for_elf
from uemu.maps import read_maps
from uemu.session import Session

needs_tracefs = pytest.mark.skipif(tracefs_reason() is not None, reason=str(tracefs_reason()))


def _guarded(samples):
    """sema's three sema:guarded sites (they share one semaphore)."""
    return [p for _, p in sdt_sites(str(samples / "sema")) if p.full_name == "sema:guarded"]


def _paused(samples) -> Tracee:
    tracee = Tracee([samples / "sema", "3"])
    tracee.wait_sync("phase")
    return tracee


def _site_bytes(pid: int, path: str, probes) -> list[str]:
    vma = next(v for v in read_maps(pid) if v.path == path and v.executable)
    return [read_memory(pid, vma.offset_to_vaddr(p.file_offset), 1).hex() for p in probes]


def _trap_byte(path: str, probe) -> str:
    """The first byte of the breakpoint uemu writes over the site (int3, BRK, c.ebreak...)."""
    with open(path, "rb") as file:
        elf = ELFFile(file)
        arch = for_elf(elf["e_machine"], elf.elfclass, elf.little_endian)
        file.seek(probe.file_offset)
        original = file.read(16)
    return arch.tracing_backend().trap_bytes(original)[:1].hex()


def _file_bytes(path: str, probe) -> str:
    with open(path, "rb") as file:
        file.seek(probe.file_offset)
        return file.read(1).hex()


def _place(samples, probe, ref: int | None = None) -> str:
    ref = probe.semaphore_offset if ref is None else ref
    return f"{samples / 'sema'}:{probe.file_offset:#x}({ref:#x})"


def _counter_address(pid: int, path: str, probe) -> int:
    vma = next(v for v in read_maps(pid) if v.path == path and v.writable and v.covers_offset(probe.semaphore_offset))
    return vma.offset_to_vaddr(probe.semaphore_offset)


def test_consumers_share_a_site_until_the_last_one_goes(samples):
    """Items 2 and 3: two PROBE words on one site make one breakpoint and one
    increment; removing one word leaves what the other still wants."""
    path = str(samples / "sema")
    first, *others = _guarded(samples)
    with _paused(samples) as tracee:
        counter = _counter_address(tracee.pid, path, first)
        session = Session(["sema:guarded", _place(samples, first)])
        session.attach(tracee.pid)
        try:
            nop = _file_bytes(path, first)
            assert semaphore(tracee.pid, counter) == 3  # three sites, the shared one once
            assert nop not in _site_bytes(tracee.pid, path, [first, *others])
            session.remove_probes(["sema:guarded"])
            assert semaphore(tracee.pid, counter) == 1
            armed, *restored = _site_bytes(tracee.pid, path, [first, *others])
            assert armed != nop and restored == [nop, nop]
            session.remove_probes([_place(samples, first)])
            assert semaphore(tracee.pid, counter) == 0
            assert _site_bytes(tracee.pid, path, [first]) == [nop]
        finally:
            session.close()


@pytest.mark.oracle
@needs_tracefs
def test_consumers_share_a_site_in_the_kernel_too(samples):
    """The same rule on kernel uprobes: two events on one place, one breakpoint."""
    path = str(samples / "sema")
    first = _guarded(samples)[0]
    with _paused(samples) as tracee:
        counter = _counter_address(tracee.pid, path, first)
        for event in ("a", "b"):
            _append("uprobe_events", f"p:{GROUP}/{event} {_place(samples, first)}")
        try:
            _write(f"events/{GROUP}/a/enable", "1")
            _write(f"events/{GROUP}/b/enable", "1")
            assert semaphore(tracee.pid, counter) == 1
            _write(f"events/{GROUP}/a/enable", "0")
            assert semaphore(tracee.pid, counter) == 1
            _write(f"events/{GROUP}/b/enable", "0")
            assert semaphore(tracee.pid, counter) == 0
        finally:
            for event in ("a", "b"):
                _write(f"events/{GROUP}/{event}/enable", "0")
                _append("uprobe_events", f"-:{GROUP}/{event}")


def test_handlers_see_the_site_as_ip(samples):
    """Item 28: consumers see registers as at the breakpoint (x86 reports ip after it)."""
    path = str(samples / "sema")
    always = next(p for _, p in sdt_sites(path) if p.full_name == "sema:always")
    with _paused(samples) as tracee:
        vma = next(v for v in read_maps(tracee.pid) if v.path == path and v.executable)
        session = Session(["sema:always"])
        session.attach(tracee.pid)
        tracee.release()
        addresses = []
        session.run(lambda event: (addresses.append(event.address), session.stop()))
    assert addresses == [vma.offset_to_vaddr(always.file_offset)]


@pytest.mark.parametrize("words, message", [
    (lambda s, p: ["sema:guarded", _place(s, p, p.semaphore_offset + 2)], "ref_ctr_offset mismatch"),
    (lambda s, p: [_place(s, p, p.semaphore_offset + 1)], "not 2-byte aligned"),
], ids=["mismatch", "unaligned"])
def test_registrations_the_kernel_refuses(samples, words, message):
    """Items 5 and 6: refused with the kernel's words, exit 8, the process untouched."""
    first = _guarded(samples)[0]
    with _paused(samples) as tracee:
        before = file_memory(tracee.pid)
        result = attach_cli(str(tracee.pid), *words(samples, first))
        code, _, err = stop_cli(result, None)
        assert code == 8 and message in err and len(err.splitlines()) == 1, err
        assert file_memory(tracee.pid) == before


@pytest.mark.oracle
@needs_tracefs
def test_the_kernel_refuses_them_too(samples):
    first = _guarded(samples)[0]
    _append("uprobe_events", f"p:{GROUP}/ok {_place(samples, first)}")
    try:
        with pytest.raises(OSError) as refused:
            _append("uprobe_events", f"p:{GROUP}/other {_place(samples, first, first.semaphore_offset + 2)}")
        assert refused.value.errno == errno.EINVAL  # and "Reference counter offset mismatch" in the kernel log
        events = Path("/sys/kernel/tracing/uprobe_events").read_text()
        assert f"{GROUP}/ok " in events and f"{GROUP}/other " not in events  # the first one stays
    finally:
        _append("uprobe_events", f"-:{GROUP}/ok")


def _own_trap(samples) -> tuple[str, int]:
    """The file offset of the signals sample's own int3 instruction."""
    path = str(samples / "signals")
    elf = sdt.open_elf(path)
    data = Path(path).read_bytes()
    text = next(seg for seg in elf.segments if seg.executable)
    start = text.p_offset
    import capstone

    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    for insn in decoder.disasm(data[start : start + text.p_filesz], start):
        if insn.mnemonic == "int3" and insn.address > start + 16:
            return path, insn.address
    pytest.skip("no int3 instruction in the signals sample")


def test_a_trap_in_the_file_cannot_be_probed(samples):
    """Item 18: the original instruction comes from the file; a trap there is refused."""
    path, offset = _own_trap(samples)
    result = uemu_cli("run", f"{path}:{offset:#x}", "--", path, "5")
    code, _, err = stop_cli(result, None)
    assert code == 8 and "trap instruction in the file" in err, err


def test_a_counter_zeroed_behind_our_back_is_not_driven_negative(samples):
    """Item 13: lowering a counter someone set to 0 is refused with the kernel's
    words.  Differs: the kernel then leaks its breakpoint; uemu restores the byte
    anyway, since an int3 without a tracer would kill the process."""
    path = str(samples / "sema")
    first = _guarded(samples)[0]
    with _paused(samples) as tracee:
        counter = _counter_address(tracee.pid, path, first)
        before = file_memory(tracee.pid)
        cli = attach_cli(str(tracee.pid), "sema:guarded")
        wait_until(lambda: semaphore(tracee.pid, counter) == 3, what="uemu's increments")
        with open(f"/proc/{tracee.pid}/mem", "r+b", buffering=0) as mem:
            mem.seek(counter)
            mem.write(b"\0\0")
        code, _, err = stop_cli(cli, signal.SIGINT)
        assert code == 0
        assert err.count("ref_ctr going negative") == 3, err
        assert file_memory(tracee.pid) == before
        assert os.path.exists(f"/proc/{tracee.pid}")


@needs_tracefs
def test_a_kernel_uprobe_leaving_a_shared_site_is_noticed_and_mended(samples, tmp_path):
    """A kernel uprobe placed on a site uemu armed finds uemu's int3 and takes the
    site's hits; when it goes it writes the file's byte back and lowers the
    semaphore uemu raised (uprobe_write_opcode -> update_ref_ctr(-1)).  uemu notices
    within its periodic look, says so once, arms the site and raises the counter
    again, and reports hits from then on; at the end every byte and counter is back.
    The trap path's int3 (--no-jumps): a kernel uprobe finding the jump path's jump
    writes its int3 over it and raises the counter (README: the jump path)."""
    path = str(samples / "longrun")
    [tick] = [p for _, p in sdt_sites(path) if p.full_name == "longrun:tick"]
    events = tmp_path / "events.json"
    with Tracee([samples / "longrun", "2", "5"]) as tracee:
        wait_until(tracee.lines, what="the program's first lines")
        counter = _counter_address(tracee.pid, path, tick)
        before = file_memory(tracee.pid, writable=False)
        cli = attach_cli(str(tracee.pid), "--no-jumps", "longrun:tick", "--json", "-o", str(events))
        wait_until(lambda: events.exists() and events.read_text().count("\n") >= 4, what="uemu's first hits")
        # uemu is held still while the kernel comes and goes, so the state it leaves can be seen.
        cli.send_signal(signal.SIGSTOP)
        wait_until(lambda: _state(cli.pid) == "T", what="uemu to stop")
        event = f"{GROUP}/shared"
        place = f"{os.path.realpath(path)}:{tick.file_offset:#x}({tick.semaphore_offset:#x})"
        _append("uprobe_events", f"p:{event} {place}")
        try:
            _write(f"events/{event}/enable", "1")
            assert semaphore(tracee.pid, counter) == 1, "the kernel found our int3: it raised nothing"
        finally:
            _write(f"events/{event}/enable", "0")
            _append("uprobe_events", f"-:{event}")
        assert _site_bytes(tracee.pid, path, [tick]) == [_file_bytes(path, tick)]
        assert semaphore(tracee.pid, counter) == 0, "the kernel lowered the count uemu raised"
        seen = events.read_text().count("\n")
        cli.send_signal(signal.SIGCONT)
        wait_until(lambda: events.read_text().count("\n") >= seen + 4, timeout=10, what="hits after mending")
        assert semaphore(tracee.pid, counter) == 1 and _site_bytes(tracee.pid, path, [tick]) == [_trap_byte(path, tick)]
        code, _, err = stop_cli(cli, signal.SIGINT)
        assert code == 0
        assert err.count("was removed behind uemu's back") == 1, err
        assert err.count("below the count uemu raised") == 1, err
        assert file_memory(tracee.pid, writable=False) == before and semaphore(tracee.pid, counter) == 0


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stream:
        return stream.read().rsplit(")", 1)[1].split()[0]
