/* Semaphores (the is-enabled idiom), made the way real projects make them.
 *
 *   sema:guarded  three inlined sites sharing the one semaphore `dtrace -G`
 *                 defines; the program passes them only while it is non-zero
 *   sema:persite  one site here using dtrace's semaphore and one in
 *                 sema_site.c using that file's own counter in .data, not
 *                 .probes (Rust's probe crate has one semaphore per site and no
 *                 .probes section)
 *   sema:always   has a semaphore the program never reads: always passed
 *
 * Each phase starts with a sync line and prints every semaphore ("sema"); run
 * with SAMPLE_SYNC=1 to attach or detach between phases.  Untraced, every
 * semaphore reads 0 and only sema:always is hit.
 *
 *   sema [PHASES]   (default 3)
 */
#include "sema_probes.h" /* defines _SDT_HAS_SEMAPHORES: must precede sys/sdt.h */
#include "sample.h"

void persite_other_file(int phase);

static inline __attribute__((always_inline)) void guarded(int site, long phase)
{
	if (SEMA_GUARDED_ENABLED()) {
		EXPECT_HIT(sema, guarded, ARG(site), ARG(phase));
		SEMA_GUARDED(site, phase);
	}
}

static __attribute__((noinline)) void run_phase(int phase)
{
	EXPECT_SEMA(sema, guarded);
	EXPECT_SEMA(sema, persite);
	EXPECT_SEMA(sema, always);
	guarded(1, phase);
	guarded(2, phase);
	guarded(3, phase);
	if (SEMA_PERSITE_ENABLED()) {
		EXPECT_HIT(sema, persite, ARG(phase));
		SEMA_PERSITE(phase);
	}
	persite_other_file(phase);
	EXPECT_HIT(sema, always, ARG(phase));
	SEMA_ALWAYS(phase);
}

int main(int argc, char **argv)
{
	long phases = sample_count_arg(argc, argv, 1, 3);

	for (int phase = 0; phase < phases; phase++) {
		sample_sync("phase");
		run_phase(phase);
	}
	sample_sync("end");
	return 0;
}
