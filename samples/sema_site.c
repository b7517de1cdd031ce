/* The second site of sema:persite, with a semaphore of its own: a file-local
 * counter in .data.  It has the same name as dtrace's global one, so this
 * file's note points at this counter and sema.c's at the other. */
#define _SDT_HAS_SEMAPHORES 1
#include "sample.h"

static volatile unsigned short sema_persite_semaphore __attribute__((section(".data")));

void persite_other_file(int phase)
{
	EXPECT_SEMA(sema, persite);
	if (sema_persite_semaphore) {
		EXPECT_HIT(sema, persite, ARG(phase));
		STAP_PROBE1(sema, persite, phase);
	}
}
