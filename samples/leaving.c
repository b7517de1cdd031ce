/* Threads inside a hit when the tracer leaves.  T workers wait until the
 * semaphore of leaving:pass is raised (a tracer attached), then pass the probe in
 * a hot loop until the semaphore reads 0 again (the tracer left), and say how
 * often they passed it.  A tracer that leaves while they run finds some of them
 * inside its hit code.
 *
 *   leaving:pass  in every worker (arg: how often this worker passed it before)
 *
 * On x86 the probe is on the loop's own `cmpw $0, semaphore` (a note written
 * here, not sys/sdt.h's nop), so the count is exact whenever the tracer leaves:
 * a worker that has not run the cmp reads 0 and stops uncounted with no hit, one
 * that ran it (in a tracer's trampoline or in place) saw the semaphore raised,
 * was hit, and counts.  Elsewhere the probe is a guarded nop: a worker stopped
 * between the check and the nop may count one pass more than it was hit.
 *
 *   leaving [T] [US]   (default 4 workers; US: microseconds each SIGRTMIN handler
 *                       sleeps, default 0, so that a tracer leaving finds it inside)
 *
 * Lines: `sync started` once every worker waits; `hits PID TID leaving:pass N`
 * per worker after the tracer left; `sync done` once all have said it; at the
 * end `signal PID TID rtmin N CHANGED`: SIGRTMIN handled N times (a tester may
 * send some while a tracer leaves), CHANGED of them with a siginfo that does not
 * say kill(2) (SI_USER), as one a tracer held and sent again by tgkill.
 */
#define _SDT_HAS_SEMAPHORES 1
#include "sample.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

SAMPLE_SEMAPHORE(leaving, pass);

static pthread_barrier_t all_waiting;
static volatile long rtmin_handled, rtmin_changed;
static struct timespec handler_nap;

static void on_rtmin(int sig, siginfo_t *info, void *uc)
{
	(void)sig;
	(void)uc;
	if (handler_nap.tv_sec || handler_nap.tv_nsec)
		nanosleep(&handler_nap, NULL);
	__atomic_add_fetch(&rtmin_handled, 1, __ATOMIC_RELAXED);
	if (info->si_code != SI_USER)
		__atomic_add_fetch(&rtmin_changed, 1, __ATOMIC_RELAXED);
}

#if defined(__x86_64__) || defined(__i386__)
#if defined(__x86_64__)
#define NOTE_ADDR ".8byte"
#define COUNT_ARG "-8@%[n]"
#else
#define NOTE_ADDR ".4byte"
#define COUNT_ARG "-4@%[n]"
#endif

/* The note sys/sdt.h writes for leaving:pass (version 3: pc, .stapsdt.base,
 * semaphore, provider, name, arguments), at the label 990. */
#define NOTE                                                                        \
	".pushsection .note.stapsdt, \"\", \"note\"\n"                              \
	".balign 4\n"                                                               \
	".4byte 992f - 991f, 994f - 993f, 3\n"                                      \
	"991: .asciz \"stapsdt\"\n"                                                 \
	"992: .balign 4\n"                                                          \
	"993: " NOTE_ADDR " 990b, _.stapsdt.base, leaving_pass_semaphore\n"         \
	".asciz \"leaving\"\n"                                                      \
	".asciz \"pass\"\n"                                                         \
	".asciz \"" COUNT_ARG "\"\n"                                                \
	"994: .balign 4\n"                                                          \
	".popsection\n"

/* The section whose link-time address the note records (as sys/sdt.h makes it). */
__asm__(".ifndef _.stapsdt.base\n"
	".pushsection .stapsdt.base, \"aG\", \"progbits\", .stapsdt.base, comdat\n"
	".weak _.stapsdt.base\n.hidden _.stapsdt.base\n"
	"_.stapsdt.base: .space 1\n.size _.stapsdt.base, 1\n"
	".popsection\n.endif\n");

static long pass_while_raised(void)
{
	long n = 0;

	__asm__ volatile("1:\n"
			 "990: cmpw $0, %[sema]\n"
			 "    je 2f\n"
			 "    add $1, %[n]\n"
			 "    jmp 1b\n"
			 "2:\n" NOTE
			 : [n] "+r"(n)
			 : [sema] "m"(leaving_pass_semaphore)
			 : "cc", "memory");
	return n;
}
#else
static long pass_while_raised(void)
{
	long n = 0;

	while (*(volatile unsigned short *)SEMAPHORE_OF(leaving, pass)) {
		STAP_PROBE1(leaving, pass, n);
		n++;
	}
	return n;
}
#endif

static void *worker(void *arg)
{
	const struct timespec nap = { 0, 100000 };

	(void)arg;
	pthread_barrier_wait(&all_waiting);
	while (!*(volatile unsigned short *)SEMAPHORE_OF(leaving, pass))
		nanosleep(&nap, NULL);
	long n = pass_while_raised();
	SAMPLE_LINE("hits", "leaving:pass", SIGNED(n, 8));
	return NULL;
}

int main(int argc, char **argv)
{
	long count = sample_count_arg(argc, argv, 1, 4);
	long nap_us = sample_count_arg(argc, argv, 2, 0);
	pthread_t *workers = calloc((size_t)count, sizeof(*workers));
	struct sigaction action = { .sa_sigaction = on_rtmin, .sa_flags = SA_SIGINFO | SA_RESTART };

	handler_nap.tv_sec = nap_us / 1000000;
	handler_nap.tv_nsec = nap_us % 1000000 * 1000;
	if (sigaction(SIGRTMIN, &action, NULL) != 0 || workers == NULL || pthread_barrier_init(&all_waiting, NULL, (unsigned)count + 1) != 0) {
		perror("leaving");
		return 1;
	}
	for (long i = 0; i < count; i++) {
		if (pthread_create(&workers[i], NULL, worker, NULL) != 0) {
			perror("pthread_create");
			return 1;
		}
	}
	pthread_barrier_wait(&all_waiting);
	sample_sync("started");
	for (long i = 0; i < count; i++)
		pthread_join(workers[i], NULL);
	sample_sync("done");
	SAMPLE_LINE("signal", "rtmin", SIGNED(rtmin_handled, 8), SIGNED(rtmin_changed, 8));
	free(workers);
	return 0;
}
