/* exec replaces the image: the old probes are gone and the new image's must
 * be found again.  The program execs itself GENERATIONS times, counting down;
 * with "thread" the exec is made by a second thread, so the kernel first
 * kills the other threads and the exec'ing thread takes over the process id.
 *
 *   exec:image  once per image (arg: generations still to go)
 *
 *   exec [GENERATIONS [thread]]   (default 2)
 */
#include "sample.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *next_argv[4];

static void *exec_next(void *unused)
{
	(void)unused;
	execv("/proc/self/exe", next_argv);
	perror("execv");
	exit(1);
}

int main(int argc, char **argv)
{
	long generations = sample_count_arg(argc, argv, 1, 2);
	int from_thread = argc > 2 && strcmp(argv[2], "thread") == 0;
	char remaining[24];
	pthread_t thread;

	sample_sync("start");
	EXPECT_HIT(exec, image, ARG(generations));
	STAP_PROBE1(exec, image, generations);
	if (generations == 0)
		return 0;

	snprintf(remaining, sizeof(remaining), "%ld", generations - 1);
	next_argv[0] = argv[0];
	next_argv[1] = remaining;
	next_argv[2] = from_thread ? argv[2] : NULL;
	if (!from_thread)
		exec_next(NULL);
	if (pthread_create(&thread, NULL, exec_next, NULL) != 0) {
		perror("pthread_create");
		return 1;
	}
	pthread_join(thread, NULL); /* never returns: the exec ends this thread */
	return 1;
}
