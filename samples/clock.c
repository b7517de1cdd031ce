/* Each hit's time against the program's own clock: a thread reads CLOCK_MONOTONIC
 * right before and right after each probe, so the time a tracer gives the hit must
 * lie between the two.  Hits come in bursts of BURST back to back; between bursts a
 * thread goes on at once, spins a few microseconds, or sleeps 2 or 30 ms, so a clock
 * kept by a tracer meets short and long pauses alike.
 *
 *   clock:tick  in every thread (args: thread index, hit number)
 *
 * After each burst, for each of its hits: "bounds PID TID INDEX HIT BEFORE AFTER"
 * (nanoseconds of CLOCK_MONOTONIC).
 *
 * With "tsc-off", every thread first turns its TSC off (x86: prctl PR_SET_TSC,
 * PR_TSC_SIGSEGV: rdtsc then faults, and so does the vDSO's clock), and the program
 * reads the clock by the system call.
 *
 *   clock [THREADS [BURSTS [tsc-off]]]   (default 2 and 64)
 */
#include "sample.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define BURST 16

static long bursts;
static int tsc_off;

static unsigned long long now_ns(void)
{
	struct timespec ts;

	if (tsc_off)
		syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
	else
		clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

static void pause_after(long burst)
{
	struct timespec sleep = { 0, 0 };

	if (burst % 32 == 7)
		sleep.tv_nsec = 30000000;
	else if (burst % 8 == 3)
		sleep.tv_nsec = 2000000;
	else if (burst % 2) {
		unsigned long long until = now_ns() + 5000;

		while (now_ns() < until)
			;
	}
	if (sleep.tv_nsec)
		nanosleep(&sleep, NULL);
}

static void *ticker(void *arg)
{
	long index = (long)arg, hit = 0;
	unsigned long long before[BURST], after[BURST];

	if (tsc_off && prctl(PR_SET_TSC, PR_TSC_SIGSEGV, 0, 0, 0) != 0) {
		perror("prctl(PR_SET_TSC)");
		exit(2);
	}
	for (long burst = 0; burst < bursts; burst++) {
		for (int i = 0; i < BURST; i++) {
			long n = hit + i;

			before[i] = now_ns();
			STAP_PROBE2(clock, tick, index, n);
			after[i] = now_ns();
		}
		for (int i = 0; i < BURST; i++)
			SAMPLE_LINE("bounds", NULL, ARG(index), ARG(hit + i), ARG(before[i]), ARG(after[i]));
		hit += BURST;
		pause_after(burst);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	long count = sample_count_arg(argc, argv, 1, 2);
	pthread_t *threads = calloc((size_t)count, sizeof(*threads));

	bursts = sample_count_arg(argc, argv, 2, 64);
	tsc_off = argc > 3 && strcmp(argv[3], "tsc-off") == 0;
	if (threads == NULL) {
		perror("clock");
		return 1;
	}
	sample_sync("start");
	for (long i = 0; i < count; i++) {
		if (pthread_create(&threads[i], NULL, ticker, (void *)i) != 0) {
			perror("pthread_create");
			return 1;
		}
	}
	for (long i = 0; i < count; i++)
		pthread_join(threads[i], NULL);
	sample_sync("end");
	free(threads);
	return 0;
}
