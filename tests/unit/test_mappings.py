"""Mapping modes' decisions and the refresh after a mapping syscall, on fake maps and memory."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest
from fakes import DATA, FILE, SITE_OFFSET, TEXT, X86_64, FakeMemory, new_mm, uprobe, vma

from uemu import mappings
from uemu.arch import by_name
from uemu.arch.base import MappingSyscall
from uemu.cli import MAPPINGS
from uemu.mappings import FdFile, MappingCall, MappingMode
from uemu.objects import MappedObject
from uemu.ptrace import SyscallInfo
from uemu.tasks import Task
from uemu.uprobes import Uprobes


def test_each_mode_decides() -> None:
    mm = new_mm(FakeMemory(), [TEXT])
    seccomp, rendezvous, syscall, exec_only = (mappings.tracker(mode) for mode in MappingMode)
    assert seccomp.needs_tracer and not seccomp.attachable and seccomp.spawn_filter()
    assert not seccomp.stops_every_syscall(mm)
    assert syscall.stops_every_syscall(mm) and syscall.spawn_filter() is None and syscall.attachable
    assert not exec_only.stops_every_syscall(mm) and not exec_only.needs_tracer
    assert rendezvous.stops_every_syscall(mm), "until ld.so's r_brk is armed, every syscall stops"
    mm.rendezvous_armed = True
    assert not rendezvous.stops_every_syscall(mm)


def test_rendezvous_without_a_dynamic_linker_watches_nothing() -> None:
    mm = new_mm(FakeMemory(), [TEXT])
    tracker = mappings.tracker(MappingMode.RENDEZVOUS)
    tracker.armed(mm, Uprobes(print))
    assert mm.rendezvous_armed


def test_old_mmap_arguments_are_read_from_memory() -> None:
    """i386 old_mmap passes one pointer to its six arguments."""
    i386 = by_name("i386")
    memory = FakeMemory()
    memory.map(0x1000, b"".join(n.to_bytes(4, "little") for n in (0x5000, 0x2000, 5, 2, 3, 0)))
    assert i386.mapping_syscall_arguments(MappingSyscall.OLD_MMAP, (0x1000,), memory.read) == (
        0x5000, 0x2000, 5, 2, 3, 0)
    assert X86_64.mapping_syscall_arguments(MappingSyscall.MMAP, (1, 2), memory.read) == (1, 2)


@pytest.fixture
def armed(monkeypatch):
    """An mm with one breakpoint, whose next /proc read returns ``maps_after``."""
    memory = FakeMemory()
    memory.map(TEXT.start, b"\x90" * 0x1000)
    memory.map(DATA.start, b"\0" * 0x1000)
    mm = new_mm(memory, [TEXT, DATA])
    core = Uprobes(print)
    probe = uprobe()
    core.by_site[(*probe.file_id, probe.offset)] = probe
    core.by_file[probe.file_id] = [probe]
    core.mmap(mm, [TEXT, DATA])
    maps_after: list = []
    monkeypatch.setattr(mappings, "read_maps", lambda pid: list(maps_after))
    monkeypatch.setattr(mappings, "update_objects", lambda mm, vmas, warn: None)
    return mm, core, maps_after


SITE = TEXT.offset_to_vaddr(SITE_OFFSET)


def test_munmap_drops_breakpoints_in_its_range(armed) -> None:
    mm, core, maps_after = armed
    maps_after += [DATA]
    new = mappings.refresh(mm, MappingCall(MappingSyscall.MUNMAP, (TEXT.start, 0x1000)), 0, core, print)
    assert new == [] and not mm.installed and mm.vmas == [DATA]


def test_mprotect_keeps_breakpoints_and_reports_split_vmas_as_new(armed) -> None:
    mm, core, maps_after = armed
    halves = [vma(TEXT.start, 0x800, "r-xp", 0x1000), vma(TEXT.start + 0x800, 0x800, "r--p", 0x1800)]
    maps_after += [*halves, DATA]
    new = mappings.refresh(mm, MappingCall(MappingSyscall.MPROTECT, (TEXT.start + 0x800, 0x800, 1)), 0, core, print)
    assert new == halves and SITE in mm.installed


def test_mmap_over_a_mapping_of_the_same_shape_is_new(armed) -> None:
    """MAP_FIXED over the text: same start, end, perms, offset and file, new pages."""
    mm, core, maps_after = armed
    maps_after += [TEXT, DATA]
    call = MappingCall(MappingSyscall.MMAP, (TEXT.start, 0x1000, 5, 0x12, 3, 0x1000))
    new = mappings.refresh(mm, call, TEXT.start, core, print)
    assert new == [TEXT] and not mm.installed, "the old breakpoint went with the old pages"


def test_a_failed_mmap_changes_nothing(armed) -> None:
    mm, core, maps_after = armed
    maps_after += [TEXT, DATA]
    new = mappings.refresh(mm, MappingCall(MappingSyscall.MMAP, (TEXT.start, 0x1000, 5, 0x12, 3, 0)), -12, core, print)
    assert new == [] and SITE in mm.installed


def test_mremap_moves_breakpoints(armed) -> None:
    mm, core, maps_after = armed
    moved = vma(0x70000, 0x1000, "r-xp", 0x1000)
    maps_after += [moved, DATA]
    new = mappings.refresh(mm, MappingCall(MappingSyscall.MREMAP, (TEXT.start, 0x1000, 0x1000, 3, 0x70000)),
                           0x70000, core, print)
    assert new == [moved] and list(mm.installed) == [SITE - TEXT.start + 0x70000]


def test_a_rendezvous_tells_removed_breakpoints_from_memory(armed) -> None:
    """No syscall at hand: a breakpoint stays ours only where its file offset is still
    mapped and still holds our trap."""
    mm, core, maps_after = armed
    maps_after += [TEXT, DATA]
    assert mappings.refresh(mm, None, 0, core, print) == [] and SITE in mm.installed
    mm.memory.write(SITE, b"\x90")  # the page was replaced behind our back
    mappings.refresh(mm, None, 0, core, print)
    assert not mm.installed


def test_a_rendezvous_forgets_the_counters_of_an_unloaded_library(armed) -> None:
    """dlclose: the counters we raised went with the mapping (the count was kept,
    and grew at each dlopen at the same address: a false "below the count uemu
    raised" warning in the arm64 guest)."""
    mm, core, maps_after = armed
    [semaphore] = mm.raised
    maps_after += [TEXT, DATA]
    mappings.refresh(mm, None, 0, core, print)
    assert mm.raised == {semaphore: 1}, "an unchanged mapping keeps its counter"
    maps_after[:] = []
    mappings.refresh(mm, None, 0, core, print)
    assert not mm.raised and not mm.installed


# ---- which mapping syscalls are worth their exit stop --------------------------------

OTHER_FILE = (FILE[0], 5151)
"""A file mapped and read already, with no probe selected."""
NEW_FILE = (FILE[0], 6161)
ANON = vma(0x40000, 0x4000, "rw-p", 0, (0, 0), "")
OTHER = vma(0x50000, 0x1000, "r--p", 0, OTHER_FILE, "/lib/other.so")
MAP_PRIVATE, MAP_SHARED, MAP_FIXED, MAP_ANONYMOUS = 0x02, 0x01, 0x10, 0x20
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2


@pytest.fixture
def watching():
    """An mm with the probed file's text and data, an anonymous mapping and an
    object without selected probes; ``files`` is what each fd names."""
    mm = new_mm(FakeMemory(), [TEXT, DATA, ANON, OTHER])
    mm.objects = {FILE: None, OTHER_FILE: None}  # type: ignore[dict-item]
    core = Uprobes(print)
    probe = uprobe()
    core.by_site[(*probe.file_id, probe.offset)] = probe
    core.by_file[probe.file_id] = [probe]
    files = {3: FdFile(FILE, True), 4: FdFile(OTHER_FILE, True), 5: FdFile(NEW_FILE, True),
             6: FdFile(NEW_FILE, False), 7: FdFile(None, True)}
    looked: list[int] = []

    def matters(kind: MappingSyscall, *args: int) -> bool:
        def lookup(fd: int) -> FdFile | None:
            looked.append(fd)
            return files.get(fd)

        return mappings.matters(mm, MappingCall(kind, args), core, lookup)

    return matters, core, looked


MMAP, MUNMAP, MPROTECT, MREMAP = (MappingSyscall.MMAP, MappingSyscall.MUNMAP, MappingSyscall.MPROTECT,
                                  MappingSyscall.MREMAP)


def test_anonymous_memory_needs_no_look(watching) -> None:
    """The JVM's heap, stacks and guard pages: nothing of a file is touched."""
    matters, _, looked = watching
    assert not matters(MMAP, 0, 0x10000, 3, MAP_PRIVATE | MAP_ANONYMOUS, 0xFFFFFFFF, 0)
    assert not matters(MMAP, ANON.start, 0x1000, 0, MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS, 0xFFFFFFFFFFFFFFFF, 0)
    assert not matters(MPROTECT, ANON.start + 0x1000, 0x1000, 0)
    assert not matters(MUNMAP, ANON.start, ANON.end - ANON.start)
    assert not matters(MUNMAP, TEXT.end, DATA.start - TEXT.end), "the hole between two VMAs of the file"
    assert not matters(MREMAP, ANON.start, 0x4000, 0x8000, MREMAP_MAYMOVE, 0)
    assert looked == [], "no descriptor is looked at for anonymous memory"


def test_a_range_meeting_a_watched_vma_is_looked_at(watching) -> None:
    """MAP_FIXED replaces, munmap drops, mprotect splits (the kernel runs uprobe_mmap
    on the pieces), mremap moves: all need the maps as the kernel made them."""
    matters, _, _ = watching
    assert matters(MMAP, TEXT.start, 0x1000, 0, MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS, 0xFFFFFFFF, 0)
    assert matters(MMAP, DATA.start - 0x1000, 0x2000, 1, MAP_SHARED | MAP_FIXED, 6, 0), "partly over the data"
    assert matters(MPROTECT, DATA.start, 0x800, 1)
    assert matters(MUNMAP, TEXT.start + 0x800, 0x800)
    assert matters(MappingSyscall.REMAP_FILE_PAGES, TEXT.start, 0x1000, 0, 0, 0)
    assert matters(MREMAP, TEXT.start, 0x1000, 0x2000, MREMAP_MAYMOVE, 0)
    assert matters(MREMAP, ANON.start, 0x1000, 0x1000, MREMAP_MAYMOVE | MREMAP_FIXED, DATA.start)
    assert not matters(MREMAP, ANON.start, 0x1000, 0x1000, MREMAP_MAYMOVE, DATA.start), "no FIXED: a hint"
    assert not matters(MMAP, TEXT.start, 0x1000, 5, MAP_PRIVATE | MAP_ANONYMOUS, 0xFFFFFFFF, 0), "a hint"


def test_an_unwatched_files_vmas_are_left_alone(watching) -> None:
    """An object read already whose probes no word selected: kernel uprobe_mmap finds
    no uprobe of its inode and no delayed counter of it."""
    matters, _, _ = watching
    assert not matters(MPROTECT, OTHER.start, 0x1000, 0)
    assert not matters(MUNMAP, OTHER.start, 0x1000)
    assert not matters(MMAP, OTHER.start, 0x1000, 1, MAP_PRIVATE | MAP_FIXED, 4, 0)


def test_a_private_file_mapping_is_looked_at_by_its_file(watching) -> None:
    matters, _, looked = watching
    assert matters(MMAP, 0, 0x1000, 5, MAP_PRIVATE, 3, 0x1000), "the probed file"
    assert matters(MappingSyscall.OLD_MMAP, 0, 0x1000, 5, MAP_PRIVATE, 3, 0), "i386's, its arguments read already"
    assert not matters(MMAP, 0, 0x1000, 1, MAP_PRIVATE, 4, 0), "an object without selected probes"
    assert matters(MMAP, 0, 0x1000, 1, MAP_PRIVATE, 5, 0), "an ELF file not read yet"
    assert not matters(MMAP, 0, 0x1000, 1, MAP_PRIVATE, 6, 0), "a data file: no ELF, no probes"
    assert matters(MMAP, 0, 0x1000, 1, MAP_PRIVATE, 7, 0), "a file that could not be told"
    assert not matters(MMAP, 0, 0x1000, 1, MAP_PRIVATE, 8, 0), "no such descriptor, or a device"
    assert not matters(MMAP, 0, 0x1000, 1, MAP_PRIVATE, 0xFFFFFFFF, 0), "fd -1 without MAP_ANONYMOUS"
    assert looked == [3, 3, 4, 5, 6, 7, 8]


def test_a_library_placed_by_the_dynamic_linker_is_judged_by_its_file(watching) -> None:
    """ld.so reserves anonymous room for a library, then maps each segment over it
    with MAP_FIXED from the file: replacing anonymous memory is nothing, the file is
    everything."""
    matters, _, looked = watching
    assert matters(MMAP, ANON.start, 0x1000, 5, MAP_PRIVATE | MAP_FIXED, 5, 0), "an ELF file not read yet"
    assert matters(MMAP, ANON.start, 0x1000, 5, MAP_PRIVATE | MAP_FIXED, 3, 0), "the probed file, again"
    assert not matters(MMAP, ANON.start, 0x1000, 5, MAP_PRIVATE | MAP_FIXED, 4, 0), "nothing selected in it"
    assert looked == [5, 3, 4]


def test_what_replaces_nothing_of_ours_is_let_go(watching) -> None:
    """MAP_FIXED_NOREPLACE fails rather than replace (its bit is not MAP_FIXED's);
    mremap with an old size of 0 duplicates a shared mapping, named by the old range."""
    matters, _, _ = watching
    assert not matters(MMAP, TEXT.start, 0x1000, 5, MAP_PRIVATE | MAP_ANONYMOUS | 0x100000, 0xFFFFFFFF, 0)
    assert matters(MREMAP, TEXT.start, 0, 0x1000, MREMAP_MAYMOVE, 0), "a watched range, even of size 0"
    assert not matters(MREMAP, ANON.start, 0, 0x1000, MREMAP_MAYMOVE, 0)


def test_a_shared_mapping_holds_nothing_of_ours(watching) -> None:
    """valid_vma() and valid_ref_ctr_vma() refuse shared VMAs: even the probed file,
    mapped shared, gets no breakpoint and no counter (unless it replaces ours)."""
    matters, _, looked = watching
    assert not matters(MMAP, 0, 0x1000, 1, MAP_SHARED, 3, 0)
    assert not matters(MMAP, 0, 0x1000, 1, 0x03, 3, 0), "MAP_SHARED_VALIDATE"
    assert looked == []


def test_only_files_with_wanted_uprobes_are_watched(watching) -> None:
    """A uprobe whose words were all removed leaves its file unwatched; uemu's own
    (the rendezvous breakpoint) keeps it watched."""
    matters, core, _ = watching
    (probe,) = core.by_file[FILE]
    probe.consumers.clear()
    assert not matters(MPROTECT, TEXT.start, 0x1000, 1)
    assert not matters(MMAP, 0, 0x1000, 5, MAP_PRIVATE, 3, 0x1000)
    probe.internal = True
    assert matters(MPROTECT, TEXT.start, 0x1000, 1)


def test_the_entry_stop_keeps_only_the_calls_that_matter(watching) -> None:
    _, core, _ = watching
    mm = new_mm(FakeMemory(), [TEXT, DATA, ANON])
    task = Task(100, 100, mm)
    mprotect, munmap = 10, 11  # x86_64
    mappings.note_syscall(task, SyscallInfo(0, mprotect, (ANON.start, 0x1000, 0, 0, 0, 0), 0), core)
    assert task.syscall is None, "the task goes on without an exit stop"
    mappings.note_syscall(task, SyscallInfo(0, munmap, (TEXT.start, 0x1000, 0, 0, 0, 0), 0), core)
    assert task.syscall == MappingCall(MappingSyscall.MUNMAP, (TEXT.start, 0x1000, 0, 0, 0, 0))
    task.syscall = None
    mappings.note_syscall(task, SyscallInfo(0, 39, (0,) * 6, 0), core)  # getpid
    assert task.syscall is None


def test_a_descriptor_names_its_file(tmp_path) -> None:
    """Through /proc/TID/fd, as at an entry stop (here: this very process)."""
    data = tmp_path / "data"
    data.write_bytes(b"not an ELF file")
    elf, text = os.open(sys.executable, os.O_RDONLY), os.open(data, os.O_RDONLY)
    reading, writing = os.pipe()
    try:
        st = os.stat(sys.executable)
        assert mappings.fd_file(os.getpid(), elf) == FdFile((st.st_dev, st.st_ino), True)
        assert mappings.fd_file(os.getpid(), text) == FdFile((os.stat(data).st_dev, os.stat(data).st_ino), False)
        assert mappings.fd_file(os.getpid(), reading) is None, "a pipe holds no probes"
    finally:
        for fd in (elf, text, reading, writing):
            os.close(fd)
    assert mappings.fd_file(os.getpid(), elf) is None, "closed: the mmap fails with EBADF"


def test_each_object_gets_its_own_vmas_and_a_moved_one_loses_its_readers() -> None:
    mm = new_mm(FakeMemory(), [TEXT, ANON, OTHER, DATA])
    probed = MappedObject(SimpleNamespace(path="/lib/x.so"), FILE, [TEXT])  # type: ignore[arg-type]
    other = MappedObject(SimpleNamespace(path="/lib/other.so"), OTHER_FILE, [OTHER])  # type: ignore[arg-type]
    mm.objects = {FILE: probed, OTHER_FILE: other}
    reading = uprobe().consumers[0]
    mm.readers[reading] = []
    mappings.update_objects(mm, [], print)
    assert probed.vmas == [TEXT, DATA] and other.vmas == [OTHER]
    assert reading not in mm.readers, "its argument readers are rebuilt where it is now"


def test_the_clis_choices_are_the_modes() -> None:
    assert tuple(MappingMode) == MAPPINGS
