/* Probes on instructions other than nops (see insns_x86_64.S): for each
 * function the program prints the expected hit, calls it and prints
 * "result PID TID insns:NAME VALUE"; a tracer that emulates or steps the
 * instruction correctly leaves every result as it is untraced.  A SIGALRM
 * timer runs meanwhile, so signals also arrive during out-of-line steps.
 *
 *   insns:NAME          one probe per function, args a and b
 *   insns:fault         called once per iteration with a = 0: the load faults;
 *                       "signal PID TID fault SIGNO CODE OFFSET", OFFSET = pc
 *                       seen by the handler minus the probed instruction (0)
 *   insns:riprel_vex    only where the CPU has AVX.  Kernel uprobes on the
 *                       6.18 test machine lose what a VEX instruction writes
 *                       to an xmm register when they step it out of line (the
 *                       register keeps its old value; the result here turns
 *                       0), while ptrace single-stepping it in place does not:
 *                       compared with that kernel, this result differs
 *   insns:refused_lock  kernel uprobes refuse a LOCK prefix: no hit expected,
 *                       the result must still be right
 *
 *   insns [ITERATIONS]   (default 3; x86_64 only)
 */
#define _GNU_SOURCE
#include "sample.h"

#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <ucontext.h>

typedef long insn_fn(long a, long b);
insn_fn insn_nop5, insn_push_rbp, insn_push_r12, insn_jmp8, insn_jmp32, insn_jcc, insn_call_rel,
	insn_call_indirect, insn_call_riprel, insn_riprel_load, insn_riprel_store, insn_riprel_lea,
	insn_riprel_cmp_imm, insn_riprel_store_imm, insn_riprel_rsi, insn_riprel_vex, insn_call_ret,
	insn_jmp_indirect, insn_imul, insn_fault, insn_refused_lock;
extern const char insn_fault_site[];

struct insn_case {
	const char *probe;
	insn_fn *fn;
	long a, b;
	int refused;
};

static long readable = 4242;

static const struct insn_case cases[] = {
	{ "insns:nop5", insn_nop5, 3, 4, 0 },
	{ "insns:push_rbp", insn_push_rbp, 5, 6, 0 },
	{ "insns:push_r12", insn_push_r12, 7, 8, 0 },
	{ "insns:jmp8", insn_jmp8, 9, 10, 0 },
	{ "insns:jmp32", insn_jmp32, 11, 12, 0 },
	{ "insns:jcc", insn_jcc, 1, 2, 0 },
	{ "insns:jcc", insn_jcc, 20, 2, 0 },
	{ "insns:call_rel", insn_call_rel, 13, 14, 0 },
	{ "insns:call_indirect", insn_call_indirect, 15, 16, 0 },
	{ "insns:call_riprel", insn_call_riprel, 17, 18, 0 },
	{ "insns:riprel_load", insn_riprel_load, 19, 20, 0 },
	{ "insns:riprel_store", insn_riprel_store, 21, 22, 0 },
	{ "insns:riprel_lea", insn_riprel_lea, 23, 24, 0 },
	{ "insns:riprel_cmp_imm", insn_riprel_cmp_imm, 25, 26, 0 },
	{ "insns:riprel_store_imm", insn_riprel_store_imm, 27, 28, 0 },
	{ "insns:riprel_rsi", insn_riprel_rsi, 29, 30, 0 },
	{ "insns:riprel_vex", insn_riprel_vex, 31, 32, 0 },
	{ "insns:ret", insn_call_ret, 33, 34, 0 },
	{ "insns:jmp_indirect", insn_jmp_indirect, 35, 36, 0 },
	{ "insns:imul", insn_imul, -37, 38, 0 },
	{ "insns:fault", insn_fault, (long)&readable, 0, 0 },
	{ "insns:refused_lock", insn_refused_lock, 39, 40, 1 },
};

static sigjmp_buf after_fault;

static void on_sigsegv(int signo, siginfo_t *info, void *context)
{
	ucontext_t *uc = context;
	long offset = (long)uc->uc_mcontext.gregs[REG_RIP] - (long)insn_fault_site;

	SAMPLE_LINE("signal", "fault", ARG(signo), ARG(info->si_code), ARG(offset));
	siglongjmp(after_fault, 1);
}

static void on_sigalrm(int signo)
{
	(void)signo;
}

static void run(const struct insn_case *c, long a)
{
	long result;

	if (!c->refused)
		SAMPLE_LINE("hit", c->probe, ARG(a), ARG(c->b));
	result = c->fn(a, c->b);
	SAMPLE_LINE("result", c->probe, ARG(result));
}

int main(int argc, char **argv)
{
	long iterations = sample_count_arg(argc, argv, 1, 3);
	int have_avx = __builtin_cpu_supports("avx");
	struct itimerval every_200us = { { 0, 200 }, { 0, 200 } };
	struct itimerval off = { { 0, 0 }, { 0, 0 } };
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigsegv;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigaction(SIGSEGV, &sa, NULL);
	sa.sa_handler = on_sigalrm;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGALRM, &sa, NULL);

	sample_sync("start");
	setitimer(ITIMER_REAL, &every_200us, NULL);
	for (long i = 0; i < iterations; i++) {
		for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
			if (cases[k].fn == insn_riprel_vex && !have_avx)
				continue;
			run(&cases[k], cases[k].a);
		}
		if (sigsetjmp(after_fault, 1) == 0)
			run(&cases[sizeof(cases) / sizeof(cases[0]) - 2], 0);
	}
	setitimer(ITIMER_REAL, &off, NULL);
	sample_sync("end");
	return 0;
}
