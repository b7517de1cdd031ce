/* The x86-64 red zone across a probe: a leaf function keeps its locals in the 128
 * bytes below %rsp (no frame of its own) and passes a probe between writing and
 * reading them.  A tracer whose hit code pushes or calls at the site before moving
 * below the red zone (the kernel's first nop5 optimisation did) corrupts them, and
 * the sum comes out wrong.  Elsewhere (no red zone) it is an ordinary loop.
 *
 *   redzone:leaf  in the leaf function (arg: its seed)
 *
 * After the "start" sync, ITERATIONS calls; then "hits PID TID redzone:leaf N" and
 * "result PID TID redzone:sum VALUE" (78 * N * (N - 1) / 2 when nothing was corrupted).
 *
 *   redzone [ITERATIONS]   (default 1000)
 */
#include "sample.h"

static __attribute__((noinline)) long leaf(long seed)
{
	volatile long data[12];
	long sum = 0;
	int k;

	for (k = 0; k < 12; k++)
		data[k] = seed * (k + 1);
	STAP_PROBE1(redzone, leaf, seed);
	for (k = 0; k < 12; k++)
		sum += data[k];
	return sum;
}

int main(int argc, char **argv)
{
	long iterations = sample_count_arg(argc, argv, 1, 1000);
	long total = 0;

	sample_sync("start");
	for (long i = 0; i < iterations; i++)
		total += leaf(i);
	SAMPLE_LINE("hits", "redzone:leaf", ARG(iterations));
	SAMPLE_LINE("result", "redzone:sum", ARG(total));
	sample_sync("end");
	return 0;
}
