/* Signals that a tracer must pass through untouched, around and inside probes.
 *
 *   trap    the program runs its own breakpoint instruction (int3, brk #0,
 *           ebreak) under a SIGTRAP handler: not a tracer's breakpoint, so
 *           the program must get its SIGTRAP exactly as untraced.  Printed:
 *           "signal PID TID trap SIGNO CODE OFFSET", OFFSET = pc seen by the
 *           handler minus the trap instruction's address (x86: 1, else 0).
 *           Only where the sample knows the instruction (x86, aarch64, riscv64).
 *   raise   raise(SIGTRAP): a SIGTRAP no instruction caused
 *           ("signal PID TID raise SIGNO CODE").
 *   timer   SIGALRM 100 us after the last one was handled while the main loop
 *           passes signals:loop; the handler itself passes signals:handler.
 *   stop    the program stops itself with SIGSTOP; a helper child sends
 *           SIGCONT until it has resumed ("signal PID TID continued SIGNO"),
 *           then signals:resumed.
 *
 *   signals [ITERATIONS]   (loop iterations of the timer phase, default 200)
 */
#define _GNU_SOURCE
#include "sample.h"

#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#define TRAP_INSN "int3"
#define TRAP_PC_ADVANCE 0 /* the CPU reports the pc after int3 */
#elif defined(__aarch64__)
#define TRAP_INSN "brk #0"
#define TRAP_PC_ADVANCE 4
#elif defined(__riscv)
#define TRAP_INSN ".option push\n.option norvc\nebreak\n.option pop" /* 4 bytes, never c.ebreak */
#define TRAP_PC_ADVANCE 4
#endif

#ifdef TRAP_INSN
/* own_trap(): one breakpoint instruction at own_trap_insn, then return. */
void own_trap(void);
extern const char own_trap_insn[];
__asm__(".text\n"
	".globl own_trap\n.hidden own_trap\n.type own_trap, @function\n"
	"own_trap:\n"
	".globl own_trap_insn\n.hidden own_trap_insn\n"
	"own_trap_insn:\n" TRAP_INSN "\n"
	"ret\n"
	".size own_trap, . - own_trap\n");

static unsigned long *context_pc(ucontext_t *context)
{
#if defined(__x86_64__)
	return (unsigned long *)&context->uc_mcontext.gregs[REG_RIP];
#elif defined(__i386__)
	return (unsigned long *)&context->uc_mcontext.gregs[REG_EIP];
#elif defined(__aarch64__)
	return (unsigned long *)&context->uc_mcontext.pc;
#elif defined(__riscv)
	return (unsigned long *)&context->uc_mcontext.__gregs[REG_PC];
#endif
}
#endif

static volatile sig_atomic_t in_trap_phase;
static volatile sig_atomic_t alarms;

static void on_sigtrap(int signo, siginfo_t *info, void *context)
{
#ifdef TRAP_INSN
	if (in_trap_phase) {
		unsigned long *pc = context_pc(context);

		SAMPLE_LINE("signal", "trap", SIGNED(signo, sizeof(int)), SIGNED(info->si_code, sizeof(int)),
			    SIGNED(*pc - (unsigned long)own_trap_insn, sizeof(long)));
		*pc += TRAP_PC_ADVANCE;
		return;
	}
#else
	(void)context;
#endif
	SAMPLE_LINE("signal", "raise", SIGNED(signo, sizeof(int)), SIGNED(info->si_code, sizeof(int)));
}

static volatile sig_atomic_t timer_on;
static const struct itimerval in_100us = { { 0, 0 }, { 0, 100 } };

static void on_sigalrm(int signo)
{
	int count = ++alarms;

	(void)signo;
	EXPECT_HIT(signals, handler, ARG(count));
	STAP_PROBE1(signals, handler, count);
	/* The next alarm is due 100 us after this one was handled, not 100 us after
	 * it was due: a tracer that takes longer over each signal (any, on an
	 * emulated CPU) would otherwise find the next one pending at sigreturn,
	 * again and again, and the main loop would never run. */
	if (timer_on)
		setitimer(ITIMER_REAL, &in_100us, NULL);
}

static void on_sigcont(int signo)
{
	(void)signo;
}

static void handle(int signo, void (*handler)(int), void (*action)(int, siginfo_t *, void *))
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	if (action != NULL) {
		sa.sa_sigaction = action;
		sa.sa_flags = SA_SIGINFO | SA_RESTART;
	} else {
		sa.sa_handler = handler;
		sa.sa_flags = SA_RESTART;
	}
	if (sigaction(signo, &sa, NULL) != 0) {
		perror("sigaction");
		exit(1);
	}
}

static void timer_phase(long iterations)
{
	struct itimerval off = { { 0, 0 }, { 0, 0 } };

	handle(SIGALRM, on_sigalrm, NULL);
	timer_on = 1;
	setitimer(ITIMER_REAL, &in_100us, NULL);
	for (long i = 0; i < iterations; i++) {
		volatile long spin = 0;

		EXPECT_HIT(signals, loop, ARG(i));
		STAP_PROBE1(signals, loop, i);
		while (spin < 20000)
			spin++;
	}
	timer_on = 0; /* a handler that runs before this line arms the last alarm */
	setitimer(ITIMER_REAL, &off, NULL);
}

/* The helper keeps sending SIGCONT until the parent writes to the pipe, so it
 * cannot lose a race with the parent's SIGSTOP. */
static void stop_phase(void)
{
	int resumed[2];
	pid_t parent = getpid();
	pid_t helper;
	int status;
	struct pollfd wait_parent;

	handle(SIGCONT, on_sigcont, NULL);
	if (pipe(resumed) != 0) {
		perror("pipe");
		exit(1);
	}
	helper = fork();
	if (helper == 0) {
		wait_parent.fd = resumed[0];
		wait_parent.events = POLLIN;
		close(resumed[1]);
		while (poll(&wait_parent, 1, 20) == 0)
			kill(parent, SIGCONT);
		_exit(0);
	}
	close(resumed[0]);
	raise(SIGSTOP);
	SAMPLE_LINE("signal", "continued", SIGNED(SIGCONT, sizeof(int)));
	if (write(resumed[1], "", 1) != 1 || waitpid(helper, &status, 0) != helper) {
		perror("stop phase");
		exit(1);
	}
	close(resumed[1]);
	EXPECT_HIT(signals, resumed);
	STAP_PROBE(signals, resumed);
}

int main(int argc, char **argv)
{
	long iterations = sample_count_arg(argc, argv, 1, 200);

	handle(SIGTRAP, NULL, on_sigtrap);
	sample_sync("start");
#ifdef TRAP_INSN
	in_trap_phase = 1;
	own_trap();
	in_trap_phase = 0;
#endif
	raise(SIGTRAP);
	timer_phase(iterations);
	stop_phase();
	sample_sync("end");
	return 0;
}
