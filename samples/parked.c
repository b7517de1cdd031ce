/* Threads parked in blocking system calls while others call a function a
 * tracer probes out of line: a tracer that leaves, or injects system calls,
 * while threads sit in read, futex, nanosleep and epoll_wait must not make any
 * of them return early, nor with a kernel-internal errno (ERESTARTSYS 512 and
 * kin, which never reach a program without a tracer).
 *
 *   step(x)   a small function without a note that the hitters call in a
 *             loop: a place for raw probes (PATH:step, PATH:step+OFF)
 *
 * PARKERS threads park, by turns, in read() of a pipe, FUTEX_WAIT, nanosleep()
 * until the end and epoll_wait() on a pipe; the main thread parks in read() of
 * the pipe too.  HITTERS threads (64 KiB stacks, so thousands fit) call step()
 * until the end, PAUSE_US apart.  "sync PID TID parked" once every thread has
 * started (a parker is then about to park); DURATION_MS later a waker releases
 * everyone (it writes the pipes, wakes the futex); each parked thread then prints
 *
 *   woke PID TID CALL RETURN ERRNO EARLY
 *
 * CALL read, futex, nanosleep or epoll_wait; RETURN what the call returned;
 * ERRNO errno when it returned -1, else 0; EARLY 1 when it returned before the
 * release (nanosleep: before its deadline).  Untraced every line is "read 1 0 0",
 * "futex 0 0 0", "nanosleep 0 0 0" or "epoll_wait 1 0 0".  Any ptrace stop
 * (strace and gdb too) also gives "epoll_wait -1 4 ..." (man 7 signal), and
 * "futex -1 11 0" when the release comes while the thread is stopped.  Each hitter prints "hits PID TID parked:step CALLS",
 * and "result PID TID parked:wrong N", the number of times step() returned
 * something else than its formula (0 whatever a tracer does).
 *
 *   parked [PARKERS [HITTERS [DURATION_MS [PAUSE_US]]]]   (default 4, 2, 2000, 200)
 */
#define _GNU_SOURCE
#include "sample.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum call { READ, FUTEX, NANOSLEEP, EPOLL_WAIT, CALLS };
static const char *const call_names[CALLS] = { "read", "futex", "nanosleep", "epoll_wait" };

static int read_pipe[2], epoll_pipe[2];
static int futex_word;
static volatile int released, deadline_set;
static struct timespec deadline;
static long pause_us;
static int ready;

__attribute__((noinline, noipa)) static unsigned long step(unsigned long x)
{
	return x * 2654435761UL + 11;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static int before_deadline(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec < deadline.tv_sec || (now.tv_sec == deadline.tv_sec && now.tv_nsec < deadline.tv_nsec);
}

static void am_ready(void)
{
	__atomic_fetch_add(&ready, 1, __ATOMIC_RELEASE);
}

static void wait_deadline_set(void)
{
	while (!__atomic_load_n(&deadline_set, __ATOMIC_ACQUIRE))
		usleep(1000);
}

/* The one blocking call of a parked thread, and how it returned. */
static void park(enum call call)
{
	struct timespec now, left;
	struct epoll_event event = { .events = EPOLLIN };
	long result = -1;
	int early, fd;
	char c;

	switch (call) {
	case READ:
		am_ready();
		result = read(read_pipe[0], &c, 1);
		break;
	case FUTEX:
		am_ready();
		result = syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
		break;
	case NANOSLEEP:
		am_ready();
		wait_deadline_set();
		clock_gettime(CLOCK_MONOTONIC, &now);
		left.tv_sec = deadline.tv_sec - now.tv_sec;
		left.tv_nsec = deadline.tv_nsec - now.tv_nsec;
		if (left.tv_nsec < 0) {
			left.tv_sec--;
			left.tv_nsec += 1000000000L;
		}
		result = nanosleep(&left, NULL);
		break;
	case EPOLL_WAIT:
		fd = epoll_create1(EPOLL_CLOEXEC);
		if (fd < 0 || epoll_ctl(fd, EPOLL_CTL_ADD, epoll_pipe[0], &event) != 0)
			die("epoll");
		am_ready();
		result = epoll_wait(fd, &event, 1, -1);
		break;
	case CALLS:
		abort();
	}
	early = call == NANOSLEEP ? before_deadline() : !released;
	SAMPLE_LINE("woke", call_names[call], SIGNED(result, sizeof(long)), ARG(result == -1 ? errno : 0),
		    ARG(early));
}

static void *parker(void *arg)
{
	park((enum call)((long)arg % CALLS));
	return NULL;
}

static void *hitter(void *arg)
{
	struct timespec pause = { 0, pause_us * 1000L };
	long calls = 0, wrong = 0;

	(void)arg;
	am_ready();
	while (!released) {
		unsigned long x = (unsigned long)calls;

		wrong += step(x) != x * 2654435761UL + 11;
		calls++;
		if (pause_us > 0)
			nanosleep(&pause, NULL);
	}
	SAMPLE_LINE("hits", "parked:step", ARG(calls));
	SAMPLE_LINE("result", "parked:wrong", ARG(wrong));
	return NULL;
}

/* At the deadline: everyone goes. */
static void *waker(void *arg)
{
	long readers = (long)arg;
	char bytes[256] = { 0 };

	wait_deadline_set();
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL) != 0)
		;
	released = 1;
	__atomic_store_n(&futex_word, 1, __ATOMIC_SEQ_CST);
	syscall(SYS_futex, &futex_word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
	for (long left = readers; left > 0; left -= (long)sizeof(bytes)) {
		size_t n = left < (long)sizeof(bytes) ? (size_t)left : sizeof(bytes);

		if (write(read_pipe[1], bytes, n) != (ssize_t)n)
			die("write");
	}
	if (write(epoll_pipe[1], bytes, 1) != 1)
		die("write");
	return NULL;
}

/* 64 KiB, or the C library's least where that is more (aarch64 glibc: 128 KiB, and
 * pthread_attr_setstacksize refuses less with EINVAL). */
static size_t stack_size(void)
{
	long least = sysconf(_SC_THREAD_STACK_MIN);

	return least > 64 * 1024 ? (size_t)least : 64 * 1024;
}

static void start(pthread_t *thread, pthread_attr_t *attr, void *(*body)(void *), long arg)
{
	if (pthread_create(thread, attr, body, (void *)arg) != 0)
		die("pthread_create");
}

int main(int argc, char **argv)
{
	long parkers = sample_count_arg(argc, argv, 1, 4);
	long hitters = sample_count_arg(argc, argv, 2, 2);
	long duration_ms = sample_count_arg(argc, argv, 3, 2000);
	long readers = 1 + (parkers + CALLS - 1) / CALLS; /* the main thread and parkers 0, 4, 8... */
	long threads = parkers + hitters + 1;
	pthread_t *all = calloc((size_t)threads, sizeof(*all));
	pthread_attr_t attr;

	pause_us = sample_count_arg(argc, argv, 4, 200);
	if (all == NULL)
		die("parked");
	if (pipe(read_pipe) != 0 || pipe(epoll_pipe) != 0)
		die("pipe");
	if (pthread_attr_init(&attr) != 0 || pthread_attr_setstacksize(&attr, stack_size()) != 0)
		die("pthread_attr");
	for (long i = 0; i < parkers; i++)
		start(&all[i], &attr, parker, i);
	for (long i = 0; i < hitters; i++)
		start(&all[parkers + i], &attr, hitter, i);
	start(&all[threads - 1], &attr, waker, readers);
	while (__atomic_load_n(&ready, __ATOMIC_ACQUIRE) < parkers + hitters)
		usleep(1000);
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += duration_ms / 1000;
	deadline.tv_nsec += duration_ms % 1000 * 1000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	__atomic_store_n(&deadline_set, 1, __ATOMIC_RELEASE);
	sample_sync("parked");
	park(READ);
	for (long i = 0; i < threads; i++)
		pthread_join(all[i], NULL);
	free(all);
	return 0;
}
