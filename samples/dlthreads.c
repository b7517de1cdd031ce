/* A long-running multi-threaded program that keeps loading, calling and
 * unloading a probed library: THREADS threads, each ROUNDS times dlopen
 * libsdtlib.so, call it (its probes print their hit lines), dlclose it, and
 * sleep a millisecond.  The threads exist before the "start" sync and begin
 * together after it, so a tracer can attach to all of them first.
 *
 *   dlthreads [THREADS [ROUNDS]]   (default 3 and 20; libsdtlib.so next to it)
 */
#define _GNU_SOURCE
#include "sample.h"
#include "sdtlib.h"

#include <dlfcn.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char library[PATH_MAX];
static long rounds;
static pthread_barrier_t go;

static void *worker(void *arg)
{
	int index = (int)(long)arg;

	pthread_barrier_wait(&go);
	for (long round = 0; round < rounds; round++) {
		void *handle = dlopen(library, RTLD_NOW);
		sdtlib_call_fn *call = handle ? (sdtlib_call_fn *)dlsym(handle, "sdtlib_call") : NULL;

		if (call == NULL) {
			fprintf(stderr, "dlthreads: %s\n", dlerror());
			exit(1);
		}
		call(index * 1000 + (int)round, "thread");
		dlclose(handle);
		usleep(1000);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	long threads = sample_count_arg(argc, argv, 1, 3);
	pthread_t *workers = calloc((size_t)threads, sizeof(*workers));
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

	rounds = sample_count_arg(argc, argv, 2, 20);
	if (n < 0 || workers == NULL || pthread_barrier_init(&go, NULL, (unsigned)threads + 1) != 0) {
		perror("dlthreads");
		return 1;
	}
	self[n] = '\0';
	snprintf(library, sizeof(library), "%s/libsdtlib.so", dirname(self));
	for (long i = 0; i < threads; i++) {
		if (pthread_create(&workers[i], NULL, worker, (void *)i) != 0) {
			perror("pthread_create");
			return 1;
		}
	}
	sample_sync("start");
	pthread_barrier_wait(&go);
	for (long i = 0; i < threads; i++)
		pthread_join(workers[i], NULL);
	sample_sync("end");
	free(workers);
	return 0;
}
