/* New processes carry the parent's probes with them: a forked child has a
 * copy of the parent's memory, breakpoints and raised semaphores included,
 * and a vfork child runs in the parent's memory until it exits.
 *
 *   fork:parent   in the parent, before and after the children
 *   fork:child    in a forked child (arg: depth); the depth-1 child forks a
 *                 grandchild (depth 2)
 *   fork:guarded  in every forked child while the semaphore it inherited is non-zero
 *   fork:vchild   in a vfork child, before _exit
 *   fork:spawned  in a child started with posix_spawn (CLONE_VM|CLONE_VFORK,
 *                 then exec of this program with the argument "spawned")
 *
 * After each child the waiting process prints "child PID TID CHILDPID STATUS"
 * with the raw wait status: 0 for a clean exit, 5 for a child killed by a
 * breakpoint it met untraced (SIGTRAP).
 *
 *   fork [spawned]
 */
#define _GNU_SOURCE
#define _SDT_HAS_SEMAPHORES 1
#include "sample.h"

#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

SAMPLE_SEMAPHORE(fork, parent);
SAMPLE_SEMAPHORE(fork, child);
SAMPLE_SEMAPHORE(fork, guarded);
SAMPLE_SEMAPHORE(fork, vchild);
SAMPLE_SEMAPHORE(fork, spawned);

extern char **environ;

static void reap(pid_t child)
{
	int status;

	if (child < 0 || waitpid(child, &status, 0) != child) {
		perror("fork sample");
		exit(1);
	}
	SAMPLE_LINE("child", NULL, SIGNED(child, sizeof(pid_t)), SIGNED(status, sizeof(int)));
}

static void forked(int depth)
{
	EXPECT_HIT(fork, child, ARG(depth));
	STAP_PROBE1(fork, child, depth);
	EXPECT_SEMA(fork, guarded);
	if (fork_guarded_semaphore) {
		EXPECT_HIT(fork, guarded, ARG(depth));
		STAP_PROBE1(fork, guarded, depth);
	}
	if (depth < 2) {
		pid_t grandchild = fork();

		if (grandchild == 0) {
			forked(depth + 1);
			_exit(0);
		}
		reap(grandchild);
	}
}

static void spawn_self(void)
{
	char self[] = "/proc/self/exe";
	char mode[] = "spawned";
	char *argv[] = { self, mode, NULL };
	pid_t child;

	if (posix_spawn(&child, self, NULL, NULL, argv, environ) != 0) {
		perror("posix_spawn");
		exit(1);
	}
	reap(child);
}

int main(int argc, char **argv)
{
	pid_t child;
	int stage = 0;

	if (argc > 1 && strcmp(argv[1], "spawned") == 0) {
		EXPECT_HIT(fork, spawned);
		STAP_PROBE(fork, spawned);
		return 0;
	}

	sample_sync("start");
	EXPECT_HIT(fork, parent, ARG(stage));
	STAP_PROBE1(fork, parent, stage);

	child = fork();
	if (child == 0) {
		forked(1);
		_exit(0);
	}
	reap(child);

	child = vfork();
	if (child == 0) {
		EXPECT_HIT(fork, vchild);
		STAP_PROBE(fork, vchild);
		_exit(0);
	}
	reap(child);

	spawn_self();

	stage = 1;
	EXPECT_HIT(fork, parent, ARG(stage));
	STAP_PROBE1(fork, parent, stage);
	sample_sync("end");
	return 0;
}
