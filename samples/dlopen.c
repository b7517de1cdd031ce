/* Probes that appear and disappear while the program runs: libsdtlib.so is
 * loaded with dlopen, part of its code is mprotect-ed (the mapping splits and
 * merges again), it is unloaded and loaded a second time.  Each phase starts
 * with a sync line; run with SAMPLE_SYNC=1 to attach before the first dlopen.
 *
 *   dlopen   (libsdtlib.so must be next to the program)
 */
#define _GNU_SOURCE
#include "sample.h"
#include "sdtlib.h"

#include <dlfcn.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static char library[PATH_MAX];

static void *load(void)
{
	void *handle = dlopen(library, RTLD_NOW);

	if (handle == NULL) {
		fprintf(stderr, "dlopen: %s\n", dlerror());
		exit(1);
	}
	return handle;
}

static sdtlib_call_fn *entry(void *handle)
{
	sdtlib_call_fn *call = (sdtlib_call_fn *)dlsym(handle, "sdtlib_call");

	if (call == NULL) {
		fprintf(stderr, "dlsym: %s\n", dlerror());
		exit(1);
	}
	return call;
}

/* Takes execute permission away from the page holding the probed function
 * and gives it back: the kernel splits the mapping into three and merges it
 * again, and a tracer must keep the breakpoint it put there. */
static void split_and_merge(void *code)
{
	long page = sysconf(_SC_PAGESIZE);
	void *start = (void *)((unsigned long)code & ~(unsigned long)(page - 1));

	if (mprotect(start, (size_t)page, PROT_READ) != 0 ||
	    mprotect(start, (size_t)page, PROT_READ | PROT_EXEC) != 0) {
		perror("mprotect");
		exit(1);
	}
}

int main(void)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	void *handle;
	sdtlib_call_fn *call;

	if (n < 0) {
		perror("/proc/self/exe");
		return 1;
	}
	self[n] = '\0';
	snprintf(library, sizeof(library), "%s/libsdtlib.so", dirname(self));

	sample_sync("before-dlopen");
	handle = load();
	call = entry(handle);
	call(1, "loaded");

	sample_sync("before-mprotect");
	split_and_merge((void *)call);
	call(2, "mprotected");

	sample_sync("before-dlclose");
	dlclose(handle);

	sample_sync("before-reopen");
	handle = load();
	entry(handle)(3, "reloaded");
	dlclose(handle);

	sample_sync("end");
	return 0;
}
