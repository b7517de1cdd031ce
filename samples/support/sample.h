/* What a sample says about itself: the events a tracer must report for it.
 *
 * Every sample prints, just before each probe it passes, a line saying which
 * probe and which argument values a correct tracer reports there (the strace
 * model: the expectation comes from the program under test, not from the
 * tracer).  Line grammar, one event per line, all numbers decimal:
 *
 *   hit  PID TID PROVIDER:NAME [VALUE ...]   about to pass this probe
 *   hits PID TID PROVIDER:NAME COUNT         passed it COUNT times (hot loops)
 *   sema PID TID PROVIDER:NAME ADDRESS VALUE the probe's semaphore at ADDRESS reads VALUE
 *   text PID TID ADDRESS STRING              the NUL-terminated string at ADDRESS
 *   sync PID TID LABEL                       phase boundary (see sample_sync)
 *   KIND PID TID ...                         sample-specific facts (child, signal,
 *                                            result, time: see each sample's header)
 *
 * Output goes to stdout, or appended to the file named by $SAMPLE_OUT.
 */
#ifndef SAMPLE_H
#define SAMPLE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/sdt.h>

#pragma GCC visibility push(hidden)

/* One expected argument value, with the size and signedness the probe's note
 * declares for it.  A tracer reads size bytes and extends by sign, so the
 * expectation is the C value truncated and extended the same way. */
struct sample_arg {
	unsigned long long bits;
	long double real;
	unsigned char size;
	unsigned char is_signed;
	unsigned char is_real;
};

/* The value of a C expression as STAP_PROBEn(..., x) declares it: sys/sdt.h's
 * own size and sign rules (arrays are unsigned pointers, plain char follows
 * the target), so an expectation cannot disagree with the note's "[-]N@". */
#define ARG(x) ((struct sample_arg){ \
	.bits = (uintptr_t)__builtin_choose_expr(SAMPLE_IS_POINTER(x), (x), 0) \
		+ (unsigned long long)__builtin_choose_expr(SAMPLE_IS_POINTER(x), 0, (x)), \
	.size = _SDT_ARGSIZE(x), .is_signed = _SDT_ARGSIGNED(x) })
/* Pointers (and arrays, which decay) go through uintptr_t: no cast warning on 32-bit. */
#define SAMPLE_IS_POINTER(x) (__builtin_classify_type(x) == 5)
/* A float, double or long double argument ("Nf@" in the note). */
#define REAL(x) ((struct sample_arg){ .real = (x), .size = sizeof(x), .is_real = 1 })
/* A value of explicit size and sign: probes written in assembly, counts, addresses. */
#define SIGNED(v, n) ((struct sample_arg){ .bits = (unsigned long long)(v), .size = (n), .is_signed = 1 })
#define UNSIGNED(v, n) ((struct sample_arg){ .bits = (unsigned long long)(v), .size = (n) })

#define SAMPLE_COUNT(...) (sizeof((const struct sample_arg[]){__VA_ARGS__}) / sizeof(struct sample_arg))
#define SAMPLE_LINE(kind, word, ...) \
	sample_line(kind, word, SAMPLE_COUNT(__VA_ARGS__), (const struct sample_arg[]){__VA_ARGS__})
/* "hit" line for STAP_PROBEn(provider, name, ...); write it right before the probe. */
#define EXPECT_HIT(provider, name, ...) SAMPLE_LINE("hit", #provider ":" #name, __VA_ARGS__)

/* Declares the semaphore of provider:name the way `dtrace -G` defines it; the
 * translation unit must define _SDT_HAS_SEMAPHORES before <sys/sdt.h>. */
#define SAMPLE_SEMAPHORE(provider, name) \
	__extension__ unsigned short provider##_##name##_semaphore \
	__attribute__((unused, section(".probes"), visibility("hidden")))
#define SEMAPHORE_OF(provider, name) (&provider##_##name##_semaphore)
#define EXPECT_SEMA(provider, name) sample_sema(#provider ":" #name, SEMAPHORE_OF(provider, name))

/* Writes "KIND PID TID [WORD] VALUE..." with one write(2); async-signal-safe
 * unless an argument is REAL. */
void sample_line(const char *kind, const char *word, size_t nargs, const struct sample_arg *args);
void sample_sema(const char *probe, const volatile unsigned short *semaphore);
void sample_text(const char *text);
/* Writes "sync PID TID LABEL"; when $SAMPLE_SYNC is set, then waits for one
 * line on stdin, so a test can attach or detach a tracer between phases. */
void sample_sync(const char *label);
/* argv[index] as a count, or fallback when absent; exits on garbage. */
long sample_count_arg(int argc, char **argv, int index, long fallback);

#pragma GCC visibility pop

#endif
