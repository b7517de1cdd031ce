/* Probes whose successor (the instruction right after the 1-byte nop) a tracer
 * may evict (see evict_x86_64.S).  A 1-byte jmp rel32 written over the nop
 * takes the successor's first four bytes as its displacement, so its target is
 * fixed; where that target is already mapped, uemu moves the successor to a
 * trampoline and rewrites its first 5 bytes as a jmp rel32 of its own, which
 * lets it choose the displacement.  For each function the program prints the
 * expected hit, calls it and prints "result PID TID evict:NAME VALUE"; a
 * tracer that relocates the successor right leaves every result as it is
 * untraced.
 *
 *   evict:mov_imm      mov $0x00ffffff, %eax (b8 ff ff ff 00): the jump's
 *                      target is 67 bytes before the nop, inside the text by
 *                      construction, so a plain jump can never be used there
 *   evict:mov_imm_r9   mov $imm32, %r9d (41 b9 imm32)
 *   evict:riprel_load  mov evict_word(%rip), %eax
 *   evict:riprel_lea   lea evict_word(%rip), %rax, then a load through it
 *   evict:cmp_flags    cmp $imm32, %eax, whose flags pick the result (called
 *                      with a below and above the immediate)
 *   evict:nopl5        nopl 0x0(%rax,%rax,1): 5 bytes after the nop, room for a
 *                      whole jmp rel32 there, nothing to evict
 *   evict:movabs       movabs $imm64, %rax (10 bytes)
 *   evict:loop_head    add $imm32, %eax at the head of a loop: a later branch
 *                      comes back to the successor's first byte, which runs b
 *                      times for one hit
 *   evict:short_succ   xor %eax, %eax (2 bytes): cannot be evicted
 *   evict:call_succ    call rel32: cannot be evicted (a call is emulated)
 *
 * Each probe has two arguments, a and b (%rdi %rsi: 8 bytes, unsigned).
 *
 * Before the "start" sync the program blocks each site's jump target, so a
 * tracer attached after it must evict: the target is the nop's address + 5 +
 * the 4 bytes after the nop (read from the text as they are then, little
 * endian, signed), and one page is mapped there (PROT_READ, MAP_FIXED_NOREPLACE)
 * unless one already is.  One line per probe gives it:
 *
 *   block PID TID evict:NAME TARGET
 *
 * Where a tracer has already rewritten the successor (evict:mov_imm under a
 * tracer present from the start), TARGET is the tracer's jump target: block
 * lines may differ traced, result lines must not.
 *
 *   evict [ITERATIONS]   (default 3; x86_64 only)
 */
#define _GNU_SOURCE
#include "sample.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

typedef long evict_fn(long a, long b);
evict_fn evict_mov_imm, evict_mov_imm_r9, evict_riprel_load, evict_riprel_lea, evict_cmp_flags,
	evict_nopl5, evict_movabs, evict_loop_head, evict_short_succ, evict_call_succ;
extern const unsigned char evict_site_mov_imm[], evict_site_mov_imm_r9[], evict_site_riprel_load[],
	evict_site_riprel_lea[], evict_site_cmp_flags[], evict_site_nopl5[], evict_site_movabs[],
	evict_site_loop_head[], evict_site_short_succ[], evict_site_call_succ[];

#define PAGE_SIZE 4096

struct evict_case {
	const char *probe;
	evict_fn *fn;
	long a, b;
	const unsigned char *site;
};

/* Rows of one probe are adjacent. */
static const struct evict_case cases[] = {
	{ "evict:mov_imm", evict_mov_imm, 3, 4, evict_site_mov_imm },
	{ "evict:mov_imm_r9", evict_mov_imm_r9, 5, 6, evict_site_mov_imm_r9 },
	{ "evict:riprel_load", evict_riprel_load, 7, 8, evict_site_riprel_load },
	{ "evict:riprel_lea", evict_riprel_lea, 9, 10, evict_site_riprel_lea },
	{ "evict:cmp_flags", evict_cmp_flags, 0x1fff00, 11, evict_site_cmp_flags },
	{ "evict:cmp_flags", evict_cmp_flags, 0x200100, 12, evict_site_cmp_flags },
	{ "evict:nopl5", evict_nopl5, 13, 14, evict_site_nopl5 },
	{ "evict:movabs", evict_movabs, 15, 16, evict_site_movabs },
	{ "evict:loop_head", evict_loop_head, 17, 4, evict_site_loop_head },
	{ "evict:short_succ", evict_short_succ, 19, 20, evict_site_short_succ },
	{ "evict:call_succ", evict_call_succ, 21, 22, evict_site_call_succ },
};

#define NCASES (sizeof(cases) / sizeof(cases[0]))

/* Maps a page at the target of a jmp rel32 written over the site's nop. */
static void block(const struct evict_case *c)
{
	int32_t displacement;
	uintptr_t target, page;
	void *p;

	memcpy(&displacement, c->site + 1, sizeof(displacement));
	target = (uintptr_t)c->site + 5 + (uintptr_t)(intptr_t)displacement;
	page = target & ~(uintptr_t)(PAGE_SIZE - 1);
	p = mmap((void *)page, PAGE_SIZE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (p == MAP_FAILED && errno != EEXIST)
		fprintf(stderr, "evict: %s: mmap at %#lx: %s\n", c->probe, (unsigned long)page, strerror(errno));
	else if (p != MAP_FAILED && p != (void *)page)
		fprintf(stderr, "evict: %s: mmap at %#lx gave %p\n", c->probe, (unsigned long)page, p);
	SAMPLE_LINE("block", c->probe, UNSIGNED(target, 8));
}

int main(int argc, char **argv)
{
	long iterations = sample_count_arg(argc, argv, 1, 3);
	long result;

	for (size_t k = 0; k < NCASES; k++)
		if (k == 0 || cases[k].site != cases[k - 1].site)
			block(&cases[k]);
	sample_sync("start");
	for (long i = 0; i < iterations; i++) {
		for (size_t k = 0; k < NCASES; k++) {
			SAMPLE_LINE("hit", cases[k].probe, UNSIGNED(cases[k].a, 8), UNSIGNED(cases[k].b, 8));
			result = cases[k].fn(cases[k].a, cases[k].b);
			SAMPLE_LINE("result", cases[k].probe, ARG(result));
		}
	}
	sample_sync("end");
	return 0;
}
