/* Cost per hit: tight loops over one probe each, timed by the program.
 *
 *   bench:nop   no arguments
 *   bench:args  three arguments (a register, a stack slot at -O0, a constant)
 *   bench:sema  two arguments, guarded by its semaphore, read afresh at every
 *               iteration (volatile): untraced the loop skips the probe, as real
 *               programs do with PROVIDER_PROBE_ENABLED()
 *   bench:evict (x86 only) no arguments; right after its nop comes
 *               mov $0xffffff,%eax (b8 ff ff ff 00), so a 1-byte jmp rel32 over
 *               the nop would lead 67 bytes back, into this very code: a tracer
 *               that puns must move the mov away first (successor eviction)
 *   signal      (only with SIGNALS) no probe: kill(getpid(), SIGUSR1), which a
 *               handler counts, SIGNALS times: what a tracer's stop at each of
 *               the program's signals costs (tests/bench/bench_signals.py)
 *
 * For each loop, including one without any probe (the loop's own cost), the
 * program prints "hits PID TID PROBE COUNT" and
 * "time PID TID PROBE COUNT NANOSECONDS"; the cost of a hit is
 * (time with the probe - time without) / COUNT.  No per-hit lines.
 *
 *   bench [ITERATIONS [SIGNALS]]   (default 100000, 0)
 */
#define _SDT_HAS_SEMAPHORES 1 /* every probe of this file then names a semaphore */
#include "sample.h"

#include <signal.h>
#include <time.h>
#include <unistd.h>

SAMPLE_SEMAPHORE(bench, nop);
SAMPLE_SEMAPHORE(bench, args);
SAMPLE_SEMAPHORE(bench, sema);
#if defined(__x86_64__) || defined(__i386__)
SAMPLE_SEMAPHORE(bench, evict);
#endif

static volatile sig_atomic_t handled;

static void count_signal(int sig)
{
	(void)sig;
	handled++;
}

static unsigned long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

static void report(const char *probe, long count, unsigned long long start)
{
	unsigned long long elapsed = now_ns() - start;

	SAMPLE_LINE("hits", probe, ARG(count));
	SAMPLE_LINE("time", probe, ARG(count), ARG(elapsed));
}

int main(int argc, char **argv)
{
	long iterations = sample_count_arg(argc, argv, 1, 100000);
	long signals = sample_count_arg(argc, argv, 2, 0);
	unsigned long long start;
	long i;

	sample_sync("start");

	start = now_ns();
	for (i = 0; i < iterations; i++)
		__asm__ __volatile__("");
	report("none", i, start);

	start = now_ns();
	for (i = 0; i < iterations; i++)
		STAP_PROBE(bench, nop);
	report("bench:nop", i, start);

	start = now_ns();
	for (i = 0; i < iterations; i++) {
		long negated = -i;

		STAP_PROBE3(bench, args, i, negated, 42);
	}
	report("bench:args", i, start);

	start = now_ns();
	for (i = 0; i < iterations; i++) {
		if (*(volatile unsigned short *)SEMAPHORE_OF(bench, sema))
			STAP_PROBE2(bench, sema, i, iterations - i);
	}
	report("bench:sema", i, start);

#if defined(__x86_64__) || defined(__i386__)
	start = now_ns();
	for (i = 0; i < iterations; i++)
		__asm__ __volatile__(STAP_PROBE_ASM(bench, evict, ) "mov $0xffffff, %%eax" ::: "eax");
	report("bench:evict", i, start);
#endif

	if (signals) {
		signal(SIGUSR1, count_signal);
		start = now_ns();
		for (i = 0; i < signals; i++)
			kill(getpid(), SIGUSR1);
		report("signal", handled, start);
	}

	sample_sync("end");
	return 0;
}
