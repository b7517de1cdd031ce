"""/proc/PID/maps parsing and the kernel's VMA predicates."""

import os

from uemu import maps

TEXT = """\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1311 /usr/bin/app
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 1311 /usr/bin/app
55d0c0a03000-55d0c0a04000 rw-p 00002000 fe:01 1311 /usr/bin/app
55d0c0a04000-55d0c0a05000 rw-s 00002000 fe:01 1311 /usr/bin/app
55d0c0a05000-55d0c0a06000 rw-p 00002000 fe:01 2222 /usr/lib/other.so
55d0c0b00000-55d0c0b21000 rw-p 00000000 00:00 0 [heap]
7ffd1000-7ffd2000 r-xp 00000000 00:00 0 [vdso]
7f0000000000-7f0000001000 r-xp 00000000 fe:01 3333 /tmp/with space (deleted)
"""

APP = (os.makedev(0xFE, 0x01), 1311)


def test_parse_fields():
    vmas = maps.parse_maps(TEXT)
    assert len(vmas) == 8
    text = vmas[1]
    assert (text.start, text.end, text.offset) == (0x55D0C0A01000, 0x55D0C0A02000, 0x1000)
    assert text.executable and text.private and not text.writable
    assert text.file_id == APP
    assert vmas[5].path == "[heap]" and not vmas[5].file_backed
    assert vmas[7].path == "/tmp/with space (deleted)"


def test_offset_translation_round_trips():
    text = maps.parse_maps(TEXT)[1]
    assert text.offset_to_vaddr(0x1130) == 0x55D0C0A01130
    assert text.vaddr_to_offset(0x55D0C0A01130) == 0x1130


def test_probe_vma_is_private_not_writable_and_covers_offset():
    vmas = maps.parse_maps(TEXT)
    assert [maps.is_probe_vma(v, APP, 0x1130) for v in vmas[:4]] == [False, True, False, False]
    # an r--p mapping covering the offset qualifies too (VM_MAYEXEC, not VM_EXEC)
    assert maps.is_probe_vma(vmas[0], APP, 0x10)


def test_counter_vma_rules():
    vmas = maps.parse_maps(TEXT)
    assert maps.find_counter_vma(vmas, APP, 0x2010) is vmas[2]
    assert not maps.is_counter_vma(vmas[3], APP, 0x2010)  # shared
    assert not maps.is_counter_vma(vmas[4], APP, 0x2010)  # another inode
    assert not maps.is_counter_vma(vmas[1], APP, 0x1010)  # not writable
    assert not maps.is_counter_vma(vmas[2], APP, 0x3010)  # does not cover
    assert not maps.is_counter_vma(vmas[2], APP, 0)  # no ref_ctr_offset


def test_the_mapping_at_an_address_and_its_protection():
    vmas = sorted(maps.parse_maps(TEXT), key=lambda v: v.start)  # as the kernel lists them
    for address in sorted({a for v in vmas for a in (v.start - 1, v.start, v.end - 1, v.end)}):
        walked = next((v for v in vmas if v.start <= address < v.end), None)
        assert maps.vma_at(vmas, address) is walked, hex(address)
    assert maps.vma_at(vmas, 0x55D0C0A01FFF).start == 0x55D0C0A01000
    assert maps.vma_at(vmas, 0x55D0C0A02000) is None, "a mapping's end is not in it"
    assert maps.prot_at(vmas, 0x55D0C0A01000) == maps.PROT_READ | maps.PROT_EXEC
    assert maps.prot_at(vmas, 0x55D0C0A03010) == maps.PROT_READ | maps.PROT_WRITE
    assert maps.prot_at(vmas, 0x55D0C0A00000) == maps.PROT_READ
    assert maps.prot_at(vmas, 0x1000) == maps.PROT_READ | maps.PROT_EXEC, "unknown: a text page's"
