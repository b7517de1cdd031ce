/* Ten thousand sites of one probe in straight-line code (a generated
 * include): attaching must scale to many sites, and every site's argument is
 * its own index ("-4@$N"), so a tracer's hits must carry each of 0..N-1 once.
 * Prints "hits PID TID many:site N" (no per-hit lines).
 *
 *   manysites
 */
#include "sample.h"

int main(void)
{
	long hits = 0;

	sample_sync("start");
#define SITE(n) do { STAP_PROBE1(many, site, n); hits++; } while (0);
#include "manysites_sites.h"
	SAMPLE_LINE("hits", "many:site", ARG(hits));
	sample_sync("end");
	return 0;
}
