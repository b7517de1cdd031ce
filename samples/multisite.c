/* One probe name, many sites: each site has its own note, its own nop and its
 * own argument spec, and attaching to the name must arm all of them.
 *
 *   multisite:step      an always_inline function expanded at three call sites
 *   multisite:unrolled  a loop the compiler unrolls at -O2 (one site at -O0)
 *   multisite:first, multisite:second
 *                       two probes with nothing between them: back-to-back nops,
 *                       so breakpoints sit at adjacent addresses
 *
 *   multisite [ITERATIONS]   (default 2)
 */
#include "sample.h"

static inline __attribute__((always_inline)) void step(int site, long long value)
{
	EXPECT_HIT(multisite, step, ARG(site), ARG(value));
	STAP_PROBE2(multisite, step, site, value);
}

static __attribute__((noinline)) long work(long i)
{
	step(1, i * 10);
	step(2, -i);
	step(3, (long long)i << 40);
	return i + 1;
}

static __attribute__((noinline)) void unrolled(long base)
{
#pragma GCC unroll 4
	for (int i = 0; i < 4; i++) {
		long value = base + i;

		EXPECT_HIT(multisite, unrolled, ARG(i), ARG(value));
		STAP_PROBE2(multisite, unrolled, i, value);
	}
}

static __attribute__((noinline)) void adjacent(void)
{
	EXPECT_HIT(multisite, first);
	EXPECT_HIT(multisite, second);
	STAP_PROBE(multisite, first);
	STAP_PROBE(multisite, second);
}

int main(int argc, char **argv)
{
	long iterations = sample_count_arg(argc, argv, 1, 2);

	sample_sync("start");
	for (long i = 0; i < iterations; i++) {
		unrolled(work(i) * 100);
		adjacent();
	}
	sample_sync("end");
	return 0;
}
