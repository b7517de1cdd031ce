/* A library mapped by hand, segment by segment, so that a tracer meets the
 * kernel's delayed semaphore logic in a known order: the text (with the
 * probes) first, the data (with the semaphores) later, and in between the
 * mappings that must NOT count as the counter's VMA.  Nothing in the library
 * runs: it is only mapped.  After each step the program prints
 * "map PID TID STEP ADDRESS LENGTH FILE_OFFSET" and a sync line, so a test
 * reads memory at each step (run with SAMPLE_SYNC=1 to pause there).
 *
 *   text         the text segment, private r-x     (breakpoints; increments delayed)
 *   text-twice   the text again elsewhere          (still one pending increment per probe)
 *   other-inode  this program's own file, private rw  (another inode: not a counter VMA)
 *   shared       the data segment MAP_SHARED, r--  (shared: not a counter VMA)
 *   readonly     the data segment private r--      (read-only: not a counter VMA)
 *   uncovered    the file's first page, private rw (does not cover the counters)
 *   data         the data segment private rw       (the counter VMA: increments applied)
 *   text-again   the text a third time             (increments again)
 *   text-over    the same text mapped over itself  (MAP_FIXED: a new VMA, armed again)
 *   unmap-text   that third text munmap-ed         (no decrement)
 *   text-moved   the first text moved by mremap     (its breakpoints move with its pages)
 *   text-split   the second text's first page made read-only by mprotect
 *                (a split: the breakpoints stay, nothing counts again)
 *
 * With --cut OFFSET the steps show instead what happens to writes that
 * cannot succeed: the library (a copy the caller may change) is cut to OFFSET
 * bytes after its text is mapped, so what is mapped next past OFFSET lies
 * beyond the end of the file, where no page can be read or written.  With
 * OFFSET past the text:
 *
 *   text         the text segment, private r-x     (increments delayed)
 *   cut          the file cut to OFFSET            ("file" line, no mapping)
 *   data-cut     the data segment private rw       (the increment fails: entry deleted)
 *   text-cut     the text again                    (the counter cannot be raised: no breakpoint)
 *   restore      the file's tail written back      ("file" line, no mapping)
 *   data         the data segment mapped again     (nothing left to apply)
 *   text-again   the text a third time             (increments directly)
 *
 * With OFFSET inside the text, the cut also takes the breakpoints of the first
 * text mapping away and text-cut has no page to put one in.
 *
 *   rawmap [--cut OFFSET] [LIBRARY]   (default: libsdtlib.so next to the program)
 */
#define _GNU_SOURCE
#include "sample.h"

#include <elf.h>
#include <fcntl.h>
#include <libgen.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static long page;

static void fail(const char *what)
{
	perror(what);
	exit(1);
}

static unsigned long page_down(unsigned long n)
{
	return n & ~(unsigned long)(page - 1);
}

/* A fresh, unused range of addresses large enough for the whole library. */
static char *reserve(size_t span)
{
	void *at = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (at == MAP_FAILED)
		fail("mmap reserve");
	return at;
}

/* Map bytes [offset, offset + length) of fd at base + vaddr, page-aligned as ld.so does. */
static char *map_at(const char *step, char *base, unsigned long vaddr, unsigned long offset,
		    unsigned long length, int prot, int flags, int fd)
{
	unsigned long lead = offset - page_down(offset);
	char *at = mmap(base + page_down(vaddr), length + lead, prot, flags | MAP_FIXED, fd,
			(off_t)page_down(offset));

	if (at == MAP_FAILED)
		fail(step);
	SAMPLE_LINE("map", step, UNSIGNED((uintptr_t)at, sizeof(void *)), UNSIGNED(length + lead, sizeof(long)),
		    UNSIGNED(page_down(offset), sizeof(long)));
	sample_sync(step);
	return at;
}

/* The file's bytes from offset on, read before it is cut to that length. */
static char *cut_file(int fd, unsigned long offset, size_t *length)
{
	off_t size = lseek(fd, 0, SEEK_END);
	char *tail;

	if (size < 0 || (unsigned long)size < offset)
		fail("cut: offset beyond the file");
	*length = (size_t)size - offset;
	tail = malloc(*length + 1);
	if (tail == NULL)
		fail("malloc");
	if (pread(fd, tail, *length, (off_t)offset) != (ssize_t)*length || ftruncate(fd, (off_t)offset) != 0)
		fail("cut");
	SAMPLE_LINE("file", "cut", UNSIGNED(offset, sizeof(long)));
	sample_sync("cut");
	return tail;
}

static void restore_file(int fd, unsigned long offset, const char *tail, size_t length)
{
	if (pwrite(fd, tail, length, (off_t)offset) != (ssize_t)length)
		fail("restore");
	SAMPLE_LINE("file", "restore", UNSIGNED(offset + length, sizeof(long)));
	sample_sync("restore");
}

int main(int argc, char **argv)
{
	char path[4096];
	unsigned long cut = 0;
	int cutting = 0; /* --cut given: OFFSET may be 0 (text and probes in the first page) */
	ElfW(Ehdr) header;
	ElfW(Phdr) segments[32];
	const ElfW(Phdr) *text = NULL, *data = NULL;
	unsigned long span = 0;
	int fd, self;

	page = sysconf(_SC_PAGESIZE);
	if (argc > 2 && strcmp(argv[1], "--cut") == 0) {
		cut = strtoul(argv[2], NULL, 0);
		cutting = 1;
		argc -= 2;
		argv += 2;
	}
	if (argc > 1) {
		snprintf(path, sizeof(path), "%s", argv[1]);
	} else {
		char exe[4096];
		ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

		if (n < 0)
			fail("readlink");
		exe[n] = 0;
		snprintf(path, sizeof(path), "%s/libsdtlib.so", dirname(exe));
	}
	fd = open(path, cutting ? O_RDWR : O_RDONLY);
	self = open("/proc/self/exe", O_RDONLY);
	if (fd < 0 || self < 0)
		fail("open");
	if (pread(fd, &header, sizeof(header), 0) != sizeof(header) || header.e_phnum > 32 ||
	    pread(fd, segments, header.e_phnum * sizeof(segments[0]), (off_t)header.e_phoff) !=
		    (ssize_t)(header.e_phnum * sizeof(segments[0])))
		fail("read ELF headers");
	for (int i = 0; i < header.e_phnum; i++) {
		const ElfW(Phdr) *seg = &segments[i];

		if (seg->p_type != PT_LOAD)
			continue;
		if ((seg->p_flags & PF_X) && text == NULL)
			text = seg;
		if ((seg->p_flags & PF_W) && data == NULL)
			data = seg;
		if (seg->p_vaddr + seg->p_memsz > span)
			span = seg->p_vaddr + seg->p_memsz;
	}
	if (text == NULL || data == NULL)
		fail("no text or data segment");
	span = page_down(span + page - 1);

	sample_sync("start");
	char *base = reserve(span);
	if (cutting) {
		size_t length;

		map_at("text", base, text->p_vaddr, text->p_offset, text->p_filesz, PROT_READ | PROT_EXEC,
		       MAP_PRIVATE, fd);
		char *tail = cut_file(fd, cut, &length);
		map_at("data-cut", base, data->p_vaddr, data->p_offset, data->p_filesz, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE, fd);
		map_at("text-cut", reserve(span), text->p_vaddr, text->p_offset, text->p_filesz,
		       PROT_READ | PROT_EXEC, MAP_PRIVATE, fd);
		restore_file(fd, cut, tail, length);
		map_at("data", base, data->p_vaddr, data->p_offset, data->p_filesz, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE, fd);
		map_at("text-again", reserve(span), text->p_vaddr, text->p_offset, text->p_filesz,
		       PROT_READ | PROT_EXEC, MAP_PRIVATE, fd);
		sample_sync("end");
		return 0;
	}
	map_at("text", base, text->p_vaddr, text->p_offset, text->p_filesz, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd);
	char *twice = reserve(span);
	map_at("text-twice", twice, text->p_vaddr, text->p_offset, text->p_filesz, PROT_READ | PROT_EXEC, MAP_PRIVATE,
	       fd);
	map_at("other-inode", reserve(span), data->p_vaddr, 0, (unsigned long)page, PROT_READ | PROT_WRITE,
	       MAP_PRIVATE, self);
	map_at("shared", reserve(span), data->p_vaddr, data->p_offset, data->p_filesz, PROT_READ, MAP_SHARED, fd);
	map_at("readonly", reserve(span), data->p_vaddr, data->p_offset, data->p_filesz, PROT_READ, MAP_PRIVATE,
	       fd);
	map_at("uncovered", reserve(span), 0, 0, (unsigned long)page, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd);
	map_at("data", base, data->p_vaddr, data->p_offset, data->p_filesz, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd);
	char *again_base = reserve(span);
	char *again = map_at("text-again", again_base, text->p_vaddr, text->p_offset, text->p_filesz,
			     PROT_READ | PROT_EXEC, MAP_PRIVATE, fd);
	map_at("text-over", again_base, text->p_vaddr, text->p_offset, text->p_filesz, PROT_READ | PROT_EXEC,
	       MAP_PRIVATE, fd);
	if (munmap(again, text->p_filesz + text->p_offset - page_down(text->p_offset)) != 0)
		fail("munmap");
	SAMPLE_LINE("map", "unmap-text", UNSIGNED((uintptr_t)again, sizeof(void *)), UNSIGNED(0, sizeof(long)),
		    UNSIGNED(0, sizeof(long)));
	sample_sync("unmap-text");
	unsigned long text_length = text->p_filesz + text->p_offset - page_down(text->p_offset);
	char *moved = mremap(base + page_down(text->p_vaddr), text_length, text_length, MREMAP_MAYMOVE | MREMAP_FIXED,
			     reserve(span));
	if (moved == MAP_FAILED)
		fail("mremap");
	SAMPLE_LINE("map", "text-moved", UNSIGNED((uintptr_t)moved, sizeof(void *)),
		    UNSIGNED(text_length, sizeof(long)), UNSIGNED(page_down(text->p_offset), sizeof(long)));
	sample_sync("text-moved");
	if (mprotect(twice + page_down(text->p_vaddr), (size_t)page, PROT_READ) != 0)
		fail("mprotect");
	SAMPLE_LINE("map", "text-split", UNSIGNED((uintptr_t)twice + page_down(text->p_vaddr), sizeof(void *)),
		    UNSIGNED(text_length, sizeof(long)), UNSIGNED(page_down(text->p_offset), sizeof(long)));
	sample_sync("text-split");
	sample_sync("end");
	return 0;
}
