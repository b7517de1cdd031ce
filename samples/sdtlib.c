/* A shared library with probes, used by `linked` (at start-up) and `dlopen`
 * (later, and twice).  Its semaphores are in the library's own .probes, so
 * they only exist once the library's data is mapped.
 *
 *   sdtlib:call     every call; arguments n and the caller's string
 *   sdtlib:guarded  only while its semaphore is non-zero
 *   common:both     the same provider:name as a probe in the programs, so a
 *                   selection without an object must match in both
 */
#define _SDT_HAS_SEMAPHORES 1
#include "sample.h"
#include "sdtlib.h"

SAMPLE_SEMAPHORE(sdtlib, call);
SAMPLE_SEMAPHORE(sdtlib, guarded);
SAMPLE_SEMAPHORE(common, both);

/* A file-local variable passed to a probe: its spec may name it relative to
 * the library's own load address ("-4@calls(%rip)"). */
static int calls;

long sdtlib_call(int n, const char *who)
{
	calls++;
	sample_text(who);
	EXPECT_HIT(sdtlib, call, ARG(n), ARG(who), ARG(calls));
	STAP_PROBE3(sdtlib, call, n, who, calls);
	EXPECT_SEMA(sdtlib, guarded);
	if (sdtlib_guarded_semaphore) {
		long doubled = 2L * n;

		EXPECT_HIT(sdtlib, guarded, ARG(doubled));
		STAP_PROBE1(sdtlib, guarded, doubled);
	}
	EXPECT_HIT(common, both, ARG(n));
	STAP_PROBE1(common, both, n);
	return n + 1;
}
