/* A program whose tracer dies: uemu's in-target runtime must take its breakpoints and
 * semaphore away and give it its own SIGTRAP action back, the program none the wiser.
 *
 *   orphan:tick   guarded by its semaphore (arg: thread index)
 *
 * The program prints "sync PID TID ready" and spins without a system call (so a tracer
 * may stop it anywhere and inject its own) until SIGUSR1.  Then:
 *   1. MODE handler: raise(SIGTRAP), which must reach its own handler ("trap" below);
 *      MODE raise: raise(SIGTRAP) with SIGTRAP at SIG_DFL: it must die of it;
 *   2. "sema" for orphan:tick; THREADS threads (the main thread and THREADS - 1 new
 *      ones) each run ROUNDS rounds, passing orphan:tick while its semaphore is raised,
 *      then print "hits PID TID orphan:tick N"; "sema" again;
 *   3. "action PID TID KIND FLAGS": its SIGTRAP action now, KIND own (its handler),
 *      default or other, FLAGS its sa_flags;
 *   4. MODE handler: raise(SIGTRAP) again;
 *   5. "sync PID TID done", then (under SAMPLE_SYNC) waits for a line, and exits 0.
 *
 * Its handler prints "trap PID TID COUNT CODE": calls so far and the si_code.
 *
 *   orphan MODE [THREADS [ROUNDS]]   (MODE handler, default or raise; 2, 100000)
 */
#define _SDT_HAS_SEMAPHORES 1
#define _GNU_SOURCE
#include "sample.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

SAMPLE_SEMAPHORE(orphan, tick);

static volatile sig_atomic_t go;
static volatile sig_atomic_t traps;
static long rounds;

static void on_go(int sig)
{
	(void)sig;
	go = 1;
}

static void on_trap(int sig, siginfo_t *info, void *context)
{
	(void)sig;
	(void)context;
	traps++;
	SAMPLE_LINE("trap", NULL, ARG((int)traps), ARG(info->si_code));
}

static void *loop(void *arg)
{
	int index = (int)(long)arg;
	long hits = 0;

	for (long i = 0; i < rounds; i++) {
		if (*(volatile unsigned short *)SEMAPHORE_OF(orphan, tick)) {
			hits++;
			STAP_PROBE1(orphan, tick, index);
		}
	}
	SAMPLE_LINE("hits", "orphan:tick", ARG(hits));
	return NULL;
}

static void report_action(void)
{
	struct sigaction now;
	const char *kind;

	sigaction(SIGTRAP, NULL, &now);
	if (now.sa_sigaction == on_trap)
		kind = "own";
	else if (now.sa_handler == SIG_DFL)
		kind = "default";
	else
		kind = "other";
	SAMPLE_LINE("action", kind, UNSIGNED(now.sa_flags, 4));
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "";
	long threads = sample_count_arg(argc, argv, 2, 2);
	pthread_t *workers = calloc((size_t)threads, sizeof(*workers));
	struct sigaction start = { .sa_handler = on_go };

	rounds = sample_count_arg(argc, argv, 3, 100000);
	if (workers == NULL || (strcmp(mode, "handler") && strcmp(mode, "default") && strcmp(mode, "raise"))) {
		fprintf(stderr, "usage: orphan handler|default|raise [THREADS [ROUNDS]]\n");
		return 2;
	}
	if (!strcmp(mode, "handler")) {
		struct sigaction trap = { .sa_sigaction = on_trap, .sa_flags = SA_SIGINFO | SA_RESTART };

		sigaction(SIGTRAP, &trap, NULL);
	}
	sigaction(SIGUSR1, &start, NULL);
	sample_line("sync", "ready", 0, NULL); /* no wait: the tracer comes while it spins */
	while (!go)
		;

	if (strcmp(mode, "default"))
		raise(SIGTRAP);
	EXPECT_SEMA(orphan, tick);
	for (long i = 1; i < threads; i++) {
		if (pthread_create(&workers[i], NULL, loop, (void *)i) != 0) {
			perror("pthread_create");
			return 1;
		}
	}
	loop(0); /* the main thread too: the only one a tracer that follows no clone traces */
	for (long i = 1; i < threads; i++)
		pthread_join(workers[i], NULL);
	EXPECT_SEMA(orphan, tick);
	report_action();
	if (!strcmp(mode, "handler"))
		raise(SIGTRAP);
	sample_sync("done");
	free(workers);
	return 0;
}
