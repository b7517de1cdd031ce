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
 *   evict:jmp_succ     jmp rel32 over 256 int3s: its trampoline jumps on to
 *                      where it led
 *   evict:short_succ   xor %eax, %eax (2 bytes), test_byte (test %dil, %dil:
 *   evict:test_byte    3 bytes), cmp_mem (cmpq $0, (%rax): 4 bytes): too short
 *   evict:cmp_mem      for a whole jump, each is punned in turn, its jump's
 *                      displacement ending in the next instruction's bytes
 *   evict:call_succ    call rel32: its trampoline pushes the call's own return
 *                      address and jumps to the callee
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
 *
 * Hot mode, a target for fault injection on its tracer (tests/soak's
 * kill9/attach/evict), modelled on samples/survival:
 *
 *   evict hot [THREADS [LIFETIME_MS]]   (default 4, 0)
 *
 * blocks the jump targets as above ("block" lines), prints
 * "site PID TID evict:NAME ADDRESS" for each evictable site (the nop: a tool
 * reads e9 e9 there while the successor is evicted) and
 * "counter PID TID evict:turns ADDRESS", the address of a 32-bit count of every
 * thread's turns (read through /proc/PID/mem), then syncs "start" and starts
 * THREADS threads.  Each turn a thread calls every evictable case's function
 * (mov_imm, mov_imm_r9, riprel_load, riprel_lea, cmp_flags below and above its
 * immediate, movabs, loop_head, jmp_succ, short_succ, test_byte, cmp_mem,
 * call_succ) with arguments that change every turn, and
 * checks each result against its closed form (the comments of
 * evict_x86_64.S); turns come in bursts of 10, 200 us apart.  On SIGTERM or
 * SIGINT, or after LIFETIME_MS (0: never), each thread prints
 * "result PID TID evict:wrong N", the number of results that differed from
 * their formula (0 whatever a tracer does), and the program exits 0.
 */
#define _GNU_SOURCE
#include "sample.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

typedef long evict_fn(long a, long b);
evict_fn evict_mov_imm, evict_mov_imm_r9, evict_riprel_load, evict_riprel_lea, evict_cmp_flags,
	evict_nopl5, evict_movabs, evict_loop_head, evict_jmp_succ, evict_short_succ, evict_test_byte,
	evict_cmp_mem, evict_call_succ;
extern const unsigned char evict_site_mov_imm[], evict_site_mov_imm_r9[], evict_site_riprel_load[],
	evict_site_riprel_lea[], evict_site_cmp_flags[], evict_site_nopl5[], evict_site_movabs[],
	evict_site_loop_head[], evict_site_jmp_succ[], evict_site_short_succ[], evict_site_test_byte[],
	evict_site_cmp_mem[], evict_site_call_succ[];
extern const uint32_t evict_word;

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
	{ "evict:jmp_succ", evict_jmp_succ, 23, 24, evict_site_jmp_succ },
	{ "evict:short_succ", evict_short_succ, 19, 20, evict_site_short_succ },
	{ "evict:test_byte", evict_test_byte, 0x100, 25, evict_site_test_byte },
	{ "evict:test_byte", evict_test_byte, 0x80000001, 26, evict_site_test_byte },
	{ "evict:cmp_mem", evict_cmp_mem, 0, 27, evict_site_cmp_mem },
	{ "evict:cmp_mem", evict_cmp_mem, 28, 29, evict_site_cmp_mem },
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

/* ---------------------------------------------------------------- hot mode */

#define BURST 10

static volatile sig_atomic_t stopping;
static volatile unsigned int turns;

static void on_stop(int sig)
{
	(void)sig;
	stopping = 1;
}

/* What each evictable function returns untraced (evict_x86_64.S). */
static unsigned long expect_mov_imm(unsigned long a, unsigned long b) { return 0x00ffffffUL + a + b; }
static unsigned long expect_mov_imm_r9(unsigned long a, unsigned long b) { return 0x12342a15UL + a + b; }
static unsigned long expect_word(unsigned long a, unsigned long b) { return evict_word + a + b; }
static unsigned long expect_cmp_flags(unsigned long a, unsigned long b)
{
	return (int32_t)(uint32_t)a < 0x200000 ? b : a;
}
static unsigned long expect_jmp_succ(unsigned long a, unsigned long b) { return 3 * a + b; }
static unsigned long expect_short_succ(unsigned long a, unsigned long b) { (void)a; return b; }
static unsigned long expect_test_byte(unsigned long a, unsigned long b) { return (a & 0xff) ? (unsigned long)(long)(int32_t)a : b; }
static unsigned long expect_cmp_mem(unsigned long a, unsigned long b) { return a ? a + b : 0; }
static unsigned long expect_call_succ(unsigned long a, unsigned long b) { return 2 * a + 2 * b + 1; }
static unsigned long expect_movabs(unsigned long a, unsigned long b) { return 0x1122334455667788UL + a - b; }
static unsigned long expect_loop_head(unsigned long a, unsigned long b)
{
	return (uint32_t)(a + b * 0x100000UL);
}

enum args { PLAIN, BELOW, ABOVE, LOOP };

struct hot_case {
	const char *probe;
	evict_fn *fn;
	unsigned long (*expect)(unsigned long a, unsigned long b);
	enum args args;
	const unsigned char *site;
};

/* Every case whose successor a tracer evicts (tests/integration/test_jumps_evict.py's EVICTED). */
static const struct hot_case hot_cases[] = {
	{ "evict:mov_imm", evict_mov_imm, expect_mov_imm, PLAIN, evict_site_mov_imm },
	{ "evict:mov_imm_r9", evict_mov_imm_r9, expect_mov_imm_r9, PLAIN, evict_site_mov_imm_r9 },
	{ "evict:riprel_load", evict_riprel_load, expect_word, PLAIN, evict_site_riprel_load },
	{ "evict:riprel_lea", evict_riprel_lea, expect_word, PLAIN, evict_site_riprel_lea },
	{ "evict:cmp_flags", evict_cmp_flags, expect_cmp_flags, BELOW, evict_site_cmp_flags },
	{ "evict:cmp_flags", evict_cmp_flags, expect_cmp_flags, ABOVE, evict_site_cmp_flags },
	{ "evict:movabs", evict_movabs, expect_movabs, PLAIN, evict_site_movabs },
	{ "evict:loop_head", evict_loop_head, expect_loop_head, LOOP, evict_site_loop_head },
	{ "evict:jmp_succ", evict_jmp_succ, expect_jmp_succ, PLAIN, evict_site_jmp_succ },
	{ "evict:short_succ", evict_short_succ, expect_short_succ, PLAIN, evict_site_short_succ },
	{ "evict:test_byte", evict_test_byte, expect_test_byte, PLAIN, evict_site_test_byte },
	{ "evict:cmp_mem", evict_cmp_mem, expect_cmp_mem, PLAIN, evict_site_cmp_mem },
	{ "evict:call_succ", evict_call_succ, expect_call_succ, PLAIN, evict_site_call_succ },
};

#define NHOT (sizeof(hot_cases) / sizeof(hot_cases[0]))

/* One turn: every case once, a and b from the thread's index and the turn;
 * returns how many results were wrong. */
static long hot_turn(long index, long i)
{
	unsigned long x = ((unsigned long)index << 20) + (unsigned long)i;
	unsigned long a, b, result;
	long wrong = 0;

	for (size_t k = 0; k < NHOT; k++) {
		const struct hot_case *c = &hot_cases[k];

		a = x;
		b = (unsigned long)i * 0x9e3779b97f4a7c15UL;
		if (c->args == BELOW) /* high half and low half: only the low 32 bits compare */
			a = (x & 0x1fffff) | ((unsigned long)i << 32);
		else if (c->args == ABOVE)
			a = 0x200000 + (x & 0x7fffff);
		else if (c->args == LOOP) /* 1 to 8 rounds: never 0, which would loop 2^32 times */
			b = 1 + ((unsigned long)i & 7);
		/* Not the immediate the last call left there: a successor that lost its
		 * REX prefix (mov to %ecx, not %r9d) must give a wrong result. */
		__asm__ volatile("mov %0, %%r9" : : "r"(~a) : "r9");
		result = (unsigned long)c->fn((long)a, (long)b);
		wrong += result != c->expect(a, b);
	}
	__atomic_fetch_add(&turns, 1, __ATOMIC_RELAXED);
	return wrong;
}

static void *hot_loop(void *arg)
{
	long index = (long)arg, wrong = 0;
	struct timespec pause = { 0, 200 * 1000L };

	for (long i = 0; !stopping; i++) {
		wrong += hot_turn(index, i);
		if (i % BURST == BURST - 1)
			nanosleep(&pause, NULL);
	}
	SAMPLE_LINE("result", "evict:wrong", ARG(wrong));
	return NULL;
}

static int hot(int argc, char **argv)
{
	long threads = sample_count_arg(argc, argv, 2, 4);
	long lifetime_ms = sample_count_arg(argc, argv, 3, 0);
	pthread_t *workers = calloc((size_t)threads, sizeof(*workers));
	struct sigaction stop = { .sa_handler = on_stop };
	long waited = 0;

	if (workers == NULL && threads > 0) {
		perror("calloc");
		return 1;
	}
	/* No SA_RESTART: the signals end the waits below. */
	sigaction(SIGTERM, &stop, NULL);
	sigaction(SIGINT, &stop, NULL);
	for (size_t k = 0; k < NCASES; k++)
		if (k == 0 || cases[k].site != cases[k - 1].site)
			block(&cases[k]);
	for (size_t k = 0; k < NHOT; k++)
		if (k == 0 || hot_cases[k].site != hot_cases[k - 1].site)
			SAMPLE_LINE("site", hot_cases[k].probe, UNSIGNED((uintptr_t)hot_cases[k].site, 8));
	SAMPLE_LINE("counter", "evict:turns", UNSIGNED((uintptr_t)&turns, 8));
	sample_sync("start");
	for (long i = 0; i < threads; i++) {
		if (pthread_create(&workers[i], NULL, hot_loop, (void *)i) != 0) {
			perror("pthread_create");
			return 1;
		}
	}
	while (!stopping && (lifetime_ms == 0 || waited < lifetime_ms)) {
		usleep(10000);
		waited += 10;
	}
	stopping = 1;
	for (long i = 0; i < threads; i++)
		pthread_join(workers[i], NULL);
	free(workers);
	return 0;
}

int main(int argc, char **argv)
{
	long iterations;
	long result;

	if (argc > 1 && strcmp(argv[1], "hot") == 0)
		return hot(argc, argv);
	iterations = sample_count_arg(argc, argv, 1, 3);
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
