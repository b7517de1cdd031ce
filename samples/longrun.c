/* A long-running program to attach to: threads that already exist when a
 * tracer arrives, each passing probes in a loop with a short sleep.
 *
 *   longrun:tick   guarded by its semaphore, read afresh every iteration
 *                  (args: thread index, iteration)
 *   longrun:beat   unguarded (arg: thread index)
 *
 * Runs for DURATION milliseconds (0: until SIGTERM or SIGINT), then exits 0.
 *
 *   longrun [THREADS [SLEEP_MS [DURATION_MS]]]   (default 3, 10, 0)
 */
#define _SDT_HAS_SEMAPHORES 1
#include "sample.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

SAMPLE_SEMAPHORE(longrun, tick);
SAMPLE_SEMAPHORE(longrun, beat);

static volatile sig_atomic_t stopping;
static long sleep_ms;

static void on_stop(int sig)
{
	(void)sig;
	stopping = 1;
}

static void *loop(void *arg)
{
	int index = (int)(long)arg;
	struct timespec pause = { sleep_ms / 1000, (sleep_ms % 1000) * 1000000L };

	for (long i = 0; !stopping; i++) {
		if (*(volatile unsigned short *)SEMAPHORE_OF(longrun, tick)) {
			EXPECT_HIT(longrun, tick, ARG(index), ARG(i));
			STAP_PROBE2(longrun, tick, index, i);
		}
		EXPECT_HIT(longrun, beat, ARG(index));
		STAP_PROBE1(longrun, beat, index);
		nanosleep(&pause, NULL);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	long threads = sample_count_arg(argc, argv, 1, 3);
	long duration_ms = sample_count_arg(argc, argv, 3, 0);
	pthread_t *workers = calloc((size_t)threads, sizeof(*workers));
	struct sigaction stop = { .sa_handler = on_stop };

	sleep_ms = sample_count_arg(argc, argv, 2, 10);
	sigaction(SIGTERM, &stop, NULL);
	sigaction(SIGINT, &stop, NULL);
	if (workers == NULL)
		return 1;
	for (long i = 0; i < threads; i++) {
		if (pthread_create(&workers[i], NULL, loop, (void *)i) != 0) {
			perror("pthread_create");
			return 1;
		}
	}
	sample_sync("started");
	for (long waited = 0; !stopping && (duration_ms == 0 || waited < duration_ms); waited += 10)
		usleep(10000);
	stopping = 1;
	for (long i = 0; i < threads; i++)
		pthread_join(workers[i], NULL);
	free(workers);
	return 0;
}
