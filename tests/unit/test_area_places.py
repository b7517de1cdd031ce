"""Where uemu maps its own areas in a process (xol.gap_near): the free gap nearest the
probed code, where XOL slots and jumps reach them, but never where the heap may grow
(maps.heap_growth).  Pure logic over lists of mappings."""

from __future__ import annotations

from uemu.maps import HEAP_ROOM, Vma, heap_growth
from uemu.xol import gap_near

MiB = 1 << 20
PAGE = 4096
IMAGE = Vma(0x400000, 0x500000, "r-xp", 0, 0, 1, "/usr/bin/program")
DATA = Vma(0x500000, 0x520000, "rw-p", 0x100000, 0, 1, "/usr/bin/program")
LIBS = Vma(0x7F0000000000, 0x7F0000100000, "r-xp", 0, 0, 2, "/usr/lib/libc.so.6")
SIZE = 6 * MiB
"""The runtime's area."""


def heap(start: int, size: int) -> Vma:
    return Vma(start, start + size, "rw-p", 0, 0, 0, "[heap]")


def meets(start: int, size: int, keep_off: tuple[int, int]) -> bool:
    return start < keep_off[1] and keep_off[0] < start + size


def test_without_a_break_known_the_area_goes_right_after_the_image() -> None:
    assert gap_near([IMAGE, DATA, LIBS], IMAGE.start, SIZE, None) == DATA.end + PAGE


def test_a_break_right_after_the_image_keeps_the_area_above_its_room() -> None:
    """i386: start_brk within 32 MiB above the image; the area right after the image
    took the break in 11 of 40 starts, and the program's every brk() failed."""
    start_brk = DATA.end + 2 * PAGE
    keep_off = heap_growth([IMAGE, DATA, LIBS], start_brk)
    assert keep_off == (start_brk, start_brk + HEAP_ROOM)
    start = gap_near([IMAGE, DATA, LIBS], IMAGE.start, SIZE, start_brk)
    assert start is not None and not meets(start, SIZE, keep_off)
    assert start == start_brk + HEAP_ROOM, "the nearest place clear of the room"


def test_a_break_far_above_the_image_leaves_room_for_the_area_below_it() -> None:
    start_brk = DATA.end + 100 * MiB
    assert gap_near([IMAGE, DATA, LIBS], IMAGE.start, SIZE, start_brk) == DATA.end + PAGE


def test_a_break_just_too_close_for_the_area_below_it() -> None:
    start_brk = DATA.end + PAGE + SIZE - PAGE  # the area would end a page past it
    keep_off = heap_growth([IMAGE, DATA, LIBS], start_brk)
    assert keep_off is not None
    start = gap_near([IMAGE, DATA, LIBS], IMAGE.start, SIZE, start_brk)
    assert start is not None and not meets(start, SIZE, keep_off)


def test_a_grown_heap_keeps_its_room_above_its_end() -> None:
    start_brk = DATA.end + 8 * PAGE
    vmas = [IMAGE, DATA, heap(start_brk, 300 * MiB), LIBS]
    keep_off = heap_growth(vmas, start_brk)
    assert keep_off == (start_brk, start_brk + 300 * MiB + HEAP_ROOM)
    start = gap_near(vmas, IMAGE.start, SIZE, start_brk)
    assert start == start_brk + 300 * MiB + HEAP_ROOM


def test_no_place_clear_of_the_heap_within_reach_is_no_hint() -> None:
    """Reach (xol.NEAR) ends before the room does: the caller maps where the kernel
    chooses instead."""
    start_brk = DATA.end + PAGE
    vmas = [IMAGE, DATA, heap(start_brk, 1 << 30), LIBS]
    assert gap_near(vmas, IMAGE.start, SIZE, start_brk) is None


def test_an_unknown_break_keeps_nothing_clear() -> None:
    assert heap_growth([IMAGE, DATA, LIBS], None) is None
