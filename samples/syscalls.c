/* A syscall-heavy loop, to price how each way of noticing new mappings slows a
 * program down: ITERATIONS times getpid() and a 1-byte read(), and every
 * 1000th iteration an mmap and munmap of one anonymous page, timed by the
 * program ("time PID TID syscalls COUNT NANOSECONDS").  One probe after the
 * loop, so a tracer has something to arm.
 *
 *   syscalls [ITERATIONS]   (default 100000)
 */
#define _GNU_SOURCE
#include "sample.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static unsigned long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

int main(int argc, char **argv)
{
	long iterations = sample_count_arg(argc, argv, 1, 100000);
	int zero = open("/dev/zero", O_RDONLY);
	char byte;
	unsigned long long start;

	if (zero < 0) {
		perror("/dev/zero");
		return 1;
	}
	sample_sync("start");
	start = now_ns();
	for (long i = 0; i < iterations; i++) {
		syscall(SYS_getpid); /* not glibc's getpid(), in case it caches */
		if (read(zero, &byte, 1) != 1)
			return 1;
		if (i % 1000 == 0) {
			void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

			if (page == MAP_FAILED || munmap(page, 4096) != 0)
				return 1;
		}
	}
	SAMPLE_LINE("time", "syscalls", ARG(iterations), ARG(now_ns() - start));
	EXPECT_HIT(syscalls, done, ARG(iterations));
	STAP_PROBE1(syscalls, done, iterations);
	return 0;
}
