/* Several threads pass probes at the same time.  The threads are created
 * after the "start" sync, so a tracer attached there must pick up threads
 * that did not exist when it attached.
 *
 *   threads:work  in every worker (args: worker index, iteration)
 *   threads:main  in the main thread while the workers run
 *
 *   threads [THREADS [ITERATIONS]]   (default 4 and 3)
 */
#include "sample.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static pthread_barrier_t all_started;
static long iterations;

static void *worker(void *arg)
{
	int index = (int)(long)arg;

	pthread_barrier_wait(&all_started);
	for (long i = 0; i < iterations; i++) {
		EXPECT_HIT(threads, work, ARG(index), ARG(i));
		STAP_PROBE2(threads, work, index, i);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	long count = sample_count_arg(argc, argv, 1, 4);
	pthread_t *workers = calloc((size_t)count, sizeof(*workers));

	iterations = sample_count_arg(argc, argv, 2, 3);
	if (workers == NULL || pthread_barrier_init(&all_started, NULL, (unsigned)count + 1) != 0) {
		perror("threads");
		return 1;
	}
	sample_sync("start");
	for (long i = 0; i < count; i++) {
		if (pthread_create(&workers[i], NULL, worker, (void *)i) != 0) {
			perror("pthread_create");
			return 1;
		}
	}
	pthread_barrier_wait(&all_started);
	EXPECT_HIT(threads, main, ARG(count));
	STAP_PROBE1(threads, main, count);
	for (long i = 0; i < count; i++)
		pthread_join(workers[i], NULL);
	sample_sync("end");
	free(workers);
	return 0;
}
