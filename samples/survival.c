/* A target for fault injection on its tracer (tests/soak, and
 * tests/integration/test_survival.py): uemu is killed, stopped or sent signals
 * while it traces this program, and the program must go on as untraced.
 *
 *   survival:hot   guarded by its semaphore, read afresh every turn; THREADS
 *                  threads pass it in a loop, 200 us apart (args: thread index, turn)
 *   survival:slow  guarded; the main thread passes it every SLOW_MS (arg: count)
 *   work(x)        a small function without a note that every hot thread calls
 *                  each turn: a place for raw probes (PATH:work, PATH:work+OFF)
 *
 * Lines: at start "sema" for both semaphores, then
 * "counter PID TID survival:turns ADDRESS", the address of a 32-bit count of every thread's
 * turns (a tool reads it through /proc/PID/mem to see the program go on), and
 * "sync PID TID started".  A passed slow probe prints its "hit" line, and the
 * main thread prints "tick PID TID survival:slow N" after each slow period
 * whether the probe was passed or not.  At the end each hot thread prints
 * "hits PID TID survival:hot PASSES" and "result PID TID survival:wrong N",
 * the number of times work() returned something else than its formula (0
 * whatever a tracer does).
 *
 * With "fork", the main thread also forks a child each slow period; the child
 * runs 100 hot turns (probe and work()) and exits 0, or 1 after a wrong
 * result; the parent prints "child PID TID waited STATUS" (the raw wait
 * status: 0 when all went well).
 *
 * Runs for DURATION_MS (0: until SIGTERM or SIGINT), then exits 0.
 *
 *   survival [THREADS [SLOW_MS [DURATION_MS [fork]]]]   (default 4, 3000, 0)
 */
#define _SDT_HAS_SEMAPHORES 1
#include "sample.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

SAMPLE_SEMAPHORE(survival, hot);
SAMPLE_SEMAPHORE(survival, slow);

static volatile sig_atomic_t stopping;
static volatile unsigned int turns;

static void on_stop(int sig)
{
	(void)sig;
	stopping = 1;
}

__attribute__((noinline, noipa)) static unsigned long work(unsigned long x)
{
	return x * 40503 + 7;
}

/* One turn: the guarded probe, then work(); returns 1 when work() was wrong. */
static int turn(long index, long i, long *passes)
{
	unsigned long x = (unsigned long)(index << 20) + (unsigned long)i;

	if (*(volatile unsigned short *)SEMAPHORE_OF(survival, hot)) {
		STAP_PROBE2(survival, hot, index, i);
		++*passes;
	}
	__atomic_fetch_add(&turns, 1, __ATOMIC_RELAXED);
	return work(x) != x * 40503 + 7;
}

static void pause_us(long us)
{
	struct timespec pause = { 0, us * 1000L };

	nanosleep(&pause, NULL);
}

static void report(long passes, long wrong)
{
	SAMPLE_LINE("hits", "survival:hot", ARG(passes));
	SAMPLE_LINE("result", "survival:wrong", ARG(wrong));
}

static void *hot_loop(void *arg)
{
	long index = (long)arg, passes = 0, wrong = 0;

	for (long i = 0; !stopping; i++) {
		wrong += turn(index, i, &passes);
		pause_us(200);
	}
	report(passes, wrong);
	return NULL;
}

static void fork_child(void)
{
	pid_t pid = fork();
	long passes = 0, wrong = 0;
	int status;

	if (pid < 0) {
		perror("fork");
		exit(1);
	}
	if (pid == 0) {
		for (long i = 0; i < 100; i++) {
			wrong += turn(-1, i, &passes);
			pause_us(200);
		}
		_exit(wrong != 0);
	}
	/* SIGTERM or SIGINT (no SA_RESTART: they end the loops) may interrupt the wait. */
	while (waitpid(pid, &status, 0) != pid) {
		if (errno != EINTR) {
			perror("waitpid");
			exit(1);
		}
	}
	SAMPLE_LINE("child", "waited", ARG(status));
}

int main(int argc, char **argv)
{
	long threads = sample_count_arg(argc, argv, 1, 4);
	long slow_ms = sample_count_arg(argc, argv, 2, 3000);
	long duration_ms = sample_count_arg(argc, argv, 3, 0);
	int forks = argc > 4 && strcmp(argv[4], "fork") == 0;
	pthread_t *workers = calloc((size_t)threads, sizeof(*workers));
	struct sigaction stop = { .sa_handler = on_stop };
	long waited = 0, next_slow = 0, slow = 0;

	sigaction(SIGTERM, &stop, NULL);
	sigaction(SIGINT, &stop, NULL);
	if (workers == NULL || slow_ms == 0) {
		fprintf(stderr, "survival: SLOW_MS must be at least 1\n");
		return 2;
	}
	EXPECT_SEMA(survival, hot);
	EXPECT_SEMA(survival, slow);
	SAMPLE_LINE("counter", "survival:turns", UNSIGNED((uintptr_t)&turns, sizeof(void *)));
	for (long i = 0; i < threads; i++) {
		if (pthread_create(&workers[i], NULL, hot_loop, (void *)i) != 0) {
			perror("pthread_create");
			return 1;
		}
	}
	sample_sync("started");
	while (!stopping && (duration_ms == 0 || waited < duration_ms)) {
		usleep(10000);
		waited += 10;
		if (waited < next_slow + slow_ms)
			continue;
		next_slow += slow_ms;
		if (*(volatile unsigned short *)SEMAPHORE_OF(survival, slow)) {
			EXPECT_HIT(survival, slow, ARG(slow));
			STAP_PROBE1(survival, slow, slow);
		}
		SAMPLE_LINE("tick", "survival:slow", ARG(slow));
		slow++;
		if (forks)
			fork_child();
	}
	stopping = 1;
	for (long i = 0; i < threads; i++)
		pthread_join(workers[i], NULL);
	free(workers);
	return 0;
}
