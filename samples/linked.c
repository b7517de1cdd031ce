/* A program linked against libsdtlib.so: the library's probes are mapped by
 * ld.so before main, and common:both exists in both objects.
 *
 *   linked [ITERATIONS]   (default 2)
 */
#include "sample.h"
#include "sdtlib.h"

int main(int argc, char **argv)
{
	long iterations = sample_count_arg(argc, argv, 1, 2);

	sample_sync("start");
	for (int i = 0; i < iterations; i++) {
		int n = (int)sdtlib_call(i, "linked");

		EXPECT_HIT(common, both, ARG(n));
		STAP_PROBE1(common, both, n);
	}
	sample_sync("end");
	return 0;
}
