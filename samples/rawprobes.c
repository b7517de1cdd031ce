/* Raw uprobes on ordinary instructions: no SDT note at all.  Tests put
 * PATH:SYMBOL, PATH:SYMBOL+OFF and PATH:OFFSET probes on the instructions of
 * the small functions below, found with a disassembler at test time.  Whatever
 * the compiler makes of them (on x86 at -O0 and -O2: push, pop, jcc, jmp, call
 * rel and indirect, ret, mov, ALU, rip-relative loads and stores of globals on
 * x86_64), a tracer that emulates or steps them right leaves every line as it
 * is untraced.  There are no "hit" lines: the hits of a probe at a function's
 * entry are the calls of that function, which the program counts per thread;
 * inside a body, kernel uprobes count them.
 *
 * The functions (each counts its calls, except twin):
 *   add(a, b)             a + b
 *   mix(x)                x * 40503 + 7; twin(x) is its unprobed double for timing
 *   load_global()         reads a global (rip-relative on x86_64)
 *   store_global(v)       writes one
 *   call_indirect(a, b)   add() through a function pointer in memory
 *   loop_sum(n)           a loop calling add() and mix() on alternate turns
 *   raw_fork()            on x86_64 the fork system call by a `syscall` of its
 *                         own (a probe there runs it out of line); fork() elsewhere
 *   raw_mmap(len, fd)     likewise the mmap system call (private, r-x, offset 0)
 *
 * One "round" calls each of them once but raw_fork (loop_sum with n = i % 8);
 * after N rounds a thread prints "result PID TID rawprobes:work VALUE" (a
 * checksum of every return value), and before it ends
 * "hits PID TID rawprobes:FUNCTION CALLS" per function, its own calls.
 *
 *   rawprobes calls [N [far]]     N rounds (default 3)
 *   rawprobes time [N [far]]      timed loops for tests/bench/bench_xol.py, as in
 *                                 samples/bench: N calls of twin() then of mix(),
 *                                 "time PID TID none N NS" and
 *                                 "time PID TID rawprobes:mix N NS"; no result or hits
 *   rawprobes signals [N]         rounds until it has handled N SIGUSR1 sent from
 *                                 outside; the handler prints
 *                                 "signal PID TID usr1 COUNT WHERE", WHERE 1 when
 *                                 it interrupted code of a loaded object (the
 *                                 program, a library, the vDSO), 0 anywhere else
 *                                 (such as a tracer's XOL slot), -1 when this
 *                                 target's pc is not known here; then
 *                                 the "hits" lines (no result: the number of
 *                                 rounds depends on timing)
 *   rawprobes threads [T [N]]     T threads (default 3) of N rounds (default 3)
 *   rawprobes fork [N]            N rounds, then a child by fork() and one by
 *                                 raw_fork(); each child prints
 *                                 "child PID TID fork|raw_fork MAPPINGS", the
 *                                 anonymous executable mappings it started with
 *                                 (0: no XOL area inherited), runs N rounds and
 *                                 exits 0; the parent then prints
 *                                 "child PID TID waited STATUS" (raw wait status),
 *                                 and N rounds again at the end
 *   rawprobes badstack [N]        N times a `call` (at the global label
 *                                 rawprobes_bad_call, x86 only) made with the stack
 *                                 pointer at 0x1000, where nothing can be mapped:
 *                                 the push faults and a SIGSEGV handler on its own
 *                                 stack prints "segv PID TID badstack ADDRESS CODE"
 *                                 (si_addr, si_code) and jumps back
 *   rawprobes map [N [far]]       N rounds, then the program's own file mapped
 *                                 again whole by raw_mmap(): "map PID TID self
 *                                 ADDRESS LENGTH", "sync PID TID mapped" (a tracer
 *                                 must have armed its probes in that copy by then),
 *                                 unmapped, N rounds again
 *
 * With "far" (64-bit targets only), the program first fills every gap of its
 * address space within 3 GiB of its code with PROT_NONE reservations, so a
 * tracer's XOL area lands out of rel32 reach: no slot can jump back, and
 * rip-relative operands need a scratch register (two stops per hit).
 * "sync PID TID start" and "sync PID TID end" bracket the rounds in every mode.
 */
#define _GNU_SOURCE
#include "sample.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#define FUNCTION __attribute__((noinline, noipa))

enum { ADD, MIX, LOAD, STORE, INDIRECT, LOOP, RAW_FORK, RAW_MMAP, FUNCTIONS };
static const char *const names[FUNCTIONS] = {
	"rawprobes:add", "rawprobes:mix", "rawprobes:load_global", "rawprobes:store_global",
	"rawprobes:call_indirect", "rawprobes:loop_sum", "rawprobes:raw_fork", "rawprobes:raw_mmap",
};
static __thread long calls[FUNCTIONS];

static volatile long seed = 12345; /* only read: results stay the same whatever threads do */
static volatile long sink;         /* only written */

FUNCTION static long add(long a, long b)
{
	calls[ADD]++;
	return a + b;
}

static long (*volatile operation)(long, long) = add;

FUNCTION static long mix(long x)
{
	calls[MIX]++;
	return x * 40503 + 7;
}

FUNCTION static long twin(long x)
{
	return x * 40499 + 5;
}

FUNCTION static long load_global(void)
{
	calls[LOAD]++;
	return seed;
}

FUNCTION static void store_global(long v)
{
	calls[STORE]++;
	sink = v;
}

FUNCTION static long call_indirect(long a, long b)
{
	calls[INDIRECT]++;
	return operation(a, b) + 1;
}

FUNCTION static long loop_sum(long n)
{
	long sum = 0;

	calls[LOOP]++;
	for (long i = 0; i < n; i++) {
		if (i & 1)
			sum += add(i, n);
		else
			sum -= mix(i);
	}
	return sum;
}

FUNCTION static long raw_fork(void)
{
	calls[RAW_FORK]++;
#if defined(__x86_64__)
	long pid = 57; /* SYS_fork */

	__asm__ __volatile__("syscall" : "+a"(pid) : : "rcx", "r11", "memory");
	return pid;
#else
	return fork();
#endif
}

FUNCTION static long raw_mmap(long length, long fd)
{
	calls[RAW_MMAP]++;
#if defined(__x86_64__)
	register long flags __asm__("r10") = MAP_PRIVATE;
	register long file __asm__("r8") = fd;
	register long offset __asm__("r9") = 0;
	long result = 9; /* SYS_mmap */

	__asm__ __volatile__("syscall"
			     : "+a"(result)
			     : "D"(0L), "S"(length), "d"((long)(PROT_READ | PROT_EXEC)), "r"(flags), "r"(file),
			       "r"(offset)
			     : "rcx", "r11", "memory");
	return result;
#else
	return (long)mmap(NULL, (size_t)length, PROT_READ | PROT_EXEC, MAP_PRIVATE, (int)fd, 0);
#endif
}

/* The program's own file mapped again by raw_mmap(): a tracer sees a new text
 * mapping of a probed object, made by a probed instruction. */
static void map_self(void)
{
	int fd = open("/proc/self/exe", O_RDONLY);
	off_t size = fd < 0 ? -1 : lseek(fd, 0, SEEK_END);
	long at;

	if (size <= 0) {
		perror("map: /proc/self/exe");
		exit(1);
	}
	at = raw_mmap(size, fd);
	if ((void *)at == MAP_FAILED || (at < 0 && at > -4096)) {
		fprintf(stderr, "map: mmap failed (%ld)\n", at);
		exit(1);
	}
	SAMPLE_LINE("map", "self", UNSIGNED(at, sizeof(long)), UNSIGNED(size, sizeof(long)));
	sample_sync("mapped");
	munmap((void *)at, (size_t)size);
	close(fd);
}

static long round_of_calls(long i)
{
	long value = add(i, 2);

	value = value * 31 + mix(i);
	store_global(value);
	value = value * 31 + load_global();
	value = value * 31 + call_indirect(i, 3);
	return value * 31 + loop_sum(i % 8);
}

static void report_calls(void)
{
	for (int f = 0; f < FUNCTIONS; f++)
		SAMPLE_LINE("hits", names[f], ARG(calls[f]));
}

static void rounds(long n)
{
	long value = 0;

	for (long i = 0; i < n; i++)
		value = value * 31 + round_of_calls(i);
	SAMPLE_LINE("result", "rawprobes:work", ARG(value));
}

/* ---- the address space ---------------------------------------------------- */

static char maps[1 << 16];

/* /proc/self/maps, NUL-terminated, read with plain system calls. */
static const char *read_maps(void)
{
	size_t used = 0;
	ssize_t n;
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		perror("/proc/self/maps");
		exit(1);
	}
	while ((n = read(fd, maps + used, sizeof(maps) - 1 - used)) > 0)
		used += (size_t)n;
	close(fd);
	if (n < 0 || used == sizeof(maps) - 1) {
		fprintf(stderr, "rawprobes: cannot read /proc/self/maps whole\n");
		exit(1);
	}
	maps[used] = '\0';
	return maps;
}

struct mapping {
	unsigned long start, end, inode;
	char perms[5];
	int named;
};

/* The mapping described by the line at *cursor; advances to the next line. */
static int next_mapping(const char **cursor, struct mapping *m)
{
	const char *line = *cursor, *end = strchr(line, '\n');
	int consumed = 0;

	if (*line == '\0' || end == NULL)
		return 0;
	if (sscanf(line, "%lx-%lx %4s %*x %*x:%*x %lu %n", &m->start, &m->end, m->perms, &m->inode, &consumed) < 4) {
		fprintf(stderr, "rawprobes: unexpected maps line\n");
		exit(1);
	}
	m->named = consumed > 0 && line + consumed < end;
	*cursor = end + 1;
	return 1;
}

/* Executable mappings backed by no file and no name: what an XOL area looks like. */
static long anonymous_executable_mappings(void)
{
	const char *cursor = read_maps();
	struct mapping m;
	long count = 0;

	while (next_mapping(&cursor, &m))
		count += m.perms[2] == 'x' && m.inode == 0 && !m.named;
	return count;
}

static void reserve(unsigned long start, unsigned long end)
{
	if (end > start &&
	    mmap((void *)start, end - start, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE,
		 -1, 0) == MAP_FAILED) {
		perror("rawprobes: reserving the address space near the code");
		exit(1);
	}
}

static unsigned long lowest_mappable(void)
{
	char text[32] = "";
	int fd = open("/proc/sys/vm/mmap_min_addr", O_RDONLY | O_CLOEXEC);
	long page = sysconf(_SC_PAGESIZE);
	unsigned long lowest = 0;

	if (fd >= 0) {
		if (read(fd, text, sizeof(text) - 1) > 0)
			lowest = strtoul(text, NULL, 10);
		close(fd);
	}
	return (lowest + (unsigned long)page - 1) / (unsigned long)page * (unsigned long)page;
}

/* Fill every gap within 3 GiB of the code. */
static void reserve_near_code(void)
{
	const unsigned long reach = 3UL << 30;
	unsigned long code = (unsigned long)&mix, lowest = lowest_mappable();
	unsigned long low = code - lowest > reach ? code - reach : lowest, high = code + reach;
	unsigned long next = low & ~0xfffUL;
	const char *cursor;
	struct mapping m;

	if (sizeof(void *) < 8) {
		fprintf(stderr, "rawprobes: far needs a 64-bit address space\n");
		exit(2);
	}
	cursor = read_maps();
	while (next_mapping(&cursor, &m) && next < high) {
		if (m.start > next)
			reserve(next, m.start < high ? m.start : high);
		if (m.end > next)
			next = m.end;
	}
	reserve(next, high);
}

/* ---- the modes --------------------------------------------------------------- */

static unsigned long long clock_ns(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (unsigned long long)now.tv_sec * 1000000000ULL + (unsigned long long)now.tv_nsec;
}

static void timed_loops(long n)
{
	unsigned long long started;
	long value = 0;

	started = clock_ns();
	for (long i = 0; i < n; i++)
		value += twin(i);
	SAMPLE_LINE("time", "none", ARG(n), ARG(clock_ns() - started));
	sink = value;
	started = clock_ns();
	for (long i = 0; i < n; i++)
		value += mix(i);
	SAMPLE_LINE("time", "rawprobes:mix", ARG(n), ARG(clock_ns() - started));
	sink = value;
}

/* A call whose push faults: the stack pointer points where nothing is mapped. */
#if defined(__x86_64__)
#define BAD_STACK_CALL(saved) \
	__asm__ volatile("mov %%rsp, %0\n\tmov $0x1000, %%rsp\n\t.globl rawprobes_bad_call\n" \
			 "rawprobes_bad_call:\n\tcall 1f\n1:\tmov %0, %%rsp" : "=&r"(saved) :: "memory")
#elif defined(__i386__)
#define BAD_STACK_CALL(saved) \
	__asm__ volatile("mov %%esp, %0\n\tmov $0x1000, %%esp\n\t.globl rawprobes_bad_call\n" \
			 "rawprobes_bad_call:\n\tcall 1f\n1:\tmov %0, %%esp" : "=&r"(saved) :: "memory")
#endif

static sigjmp_buf bad_stack_return;

static void on_sigsegv(int sig, siginfo_t *info, void *context)
{
	(void)sig;
	(void)context;
	SAMPLE_LINE("segv", "badstack", UNSIGNED((uintptr_t)info->si_addr, sizeof(void *)), ARG(info->si_code));
	siglongjmp(bad_stack_return, 1);
}

static void bad_stack_calls(long n)
{
#ifdef BAD_STACK_CALL
	static char alternate[1 << 16];
	stack_t stack = { .ss_sp = alternate, .ss_size = sizeof(alternate) };
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigsegv;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
	if (sigaltstack(&stack, NULL) != 0 || sigaction(SIGSEGV, &sa, NULL) != 0) {
		perror("rawprobes");
		exit(1);
	}
	for (long i = 0; i < n; i++) {
		if (sigsetjmp(bad_stack_return, 1) == 0) {
			unsigned long saved;

			BAD_STACK_CALL(saved);
			(void)saved;
			fprintf(stderr, "rawprobes: the call on a bad stack did not fault\n");
			exit(1);
		}
	}
#else
	(void)n;
	fprintf(stderr, "rawprobes: badstack is x86 only\n");
	exit(2);
#endif
}

static volatile sig_atomic_t received;

/* Whether the handler interrupted code of a loaded object: the program, a library,
 * the vDSO (1), or anything else such as an XOL slot (0); -1: no pc known here. */
static int interrupted_in_code(const ucontext_t *context)
{
	Dl_info object;
	uintptr_t pc;

#if defined(__x86_64__)
	pc = (uintptr_t)context->uc_mcontext.gregs[REG_RIP];
#elif defined(__i386__)
	pc = (uintptr_t)context->uc_mcontext.gregs[REG_EIP];
#elif defined(__aarch64__)
	pc = (uintptr_t)context->uc_mcontext.pc;
#elif defined(__riscv)
	pc = (uintptr_t)context->uc_mcontext.__gregs[REG_PC];
#else
	(void)context;
	return -1;
#endif
	return dladdr((void *)pc, &object) != 0;
}

static void on_sigusr1(int signo, siginfo_t *info, void *context)
{
	(void)signo;
	(void)info;
	received++;
	SAMPLE_LINE("signal", "usr1", ARG((long)received), ARG(interrupted_in_code(context)));
}

static void until_signals(long n)
{
	struct sigaction sa;
	long value = 0;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigusr1;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigaction(SIGUSR1, &sa, NULL);
	sample_sync("start");
	for (long i = 0; received < n; i++)
		value = value * 31 + round_of_calls(i);
	sink = value;
	report_calls();
}

static long thread_rounds;

static void *thread_main(void *arg)
{
	(void)arg;
	rounds(thread_rounds);
	report_calls();
	return NULL;
}

static void threads(long count, long n)
{
	pthread_t *all = calloc((size_t)count, sizeof(*all));

	thread_rounds = n;
	if (all == NULL) {
		perror("rawprobes");
		exit(1);
	}
	for (long t = 0; t < count; t++) {
		if (pthread_create(&all[t], NULL, thread_main, NULL) != 0) {
			perror("pthread_create");
			exit(1);
		}
	}
	for (long t = 0; t < count; t++)
		pthread_join(all[t], NULL);
	free(all);
}

static void child(const char *how, long pid, long n)
{
	int status;

	if (pid < 0) {
		perror(how);
		exit(1);
	}
	if (pid == 0) {
		SAMPLE_LINE("child", how, ARG(anonymous_executable_mappings()));
		memset(calls, 0, sizeof(calls)); /* the parent's, copied */
		rounds(n);
		report_calls();
		_exit(0);
	}
	if (waitpid((pid_t)pid, &status, 0) != pid) {
		perror("waitpid");
		exit(1);
	}
	SAMPLE_LINE("child", "waited", ARG(status));
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "calls";
	long n = sample_count_arg(argc, argv, 2, 3);

	if (argc > 3 && strcmp(argv[3], "far") == 0)
		reserve_near_code();
	if (strcmp(mode, "signals") == 0) {
		until_signals(n);
		sample_sync("end");
		return 0;
	}
	sample_sync("start");
	if (strcmp(mode, "calls") == 0) {
		rounds(n);
		report_calls();
	} else if (strcmp(mode, "time") == 0) {
		timed_loops(n);
	} else if (strcmp(mode, "threads") == 0) {
		threads(n, sample_count_arg(argc, argv, 3, 3));
	} else if (strcmp(mode, "fork") == 0) {
		rounds(n);
		child("fork", fork(), n);
		child("raw_fork", raw_fork(), n);
		rounds(n);
		report_calls();
	} else if (strcmp(mode, "map") == 0) {
		rounds(n);
		map_self();
		rounds(n);
		report_calls();
	} else if (strcmp(mode, "badstack") == 0) {
		bad_stack_calls(n);
	} else {
		fprintf(stderr, "usage: rawprobes calls|time|signals|threads|fork|map|badstack [N [far]]\n");
		return 2;
	}
	sample_sync("end");
	return 0;
}
