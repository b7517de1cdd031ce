/* A tiny string-keyed cache with the probes a real one has: the target of
 * the pytest plugin's example (README: "Testing a program's probes").
 *
 *   cache [--capacity C] [--fill N] [KEY...]
 *
 * --fill N looks up key-0 ... key-(N-1) in turn, then each KEY is looked up
 * (a KEY cannot start with "--").
 * A lookup that misses inserts its key.  The table holds C entries (default
 * 4, at most 64); when it is full the newest entry gives way (MRU
 * replacement: a scan longer than the cache keeps its first keys, where LRU
 * would keep none), so --fill 10 evicts slot 3 six times, key-3 first.
 *
 * Probes (a key is a pointer to a NUL-terminated string):
 *   cache:hit   (int slot, const char *key)  a lookup found key in slot
 *   cache:miss  (const char *key)            a lookup did not find key
 *   cache:evict (int slot, const char *key)  key leaves slot; the slot is
 *                                            overwritten right after the probe,
 *                                            so a tracer must read the key
 *                                            while the thread is stopped there
 *
 * Each hit line is preceded by a text line giving the key at that address.
 * Bad arguments: a message on stderr, exit 2.
 */
#include "sample.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CAPACITY 64
#define KEY_SIZE 32

static char table[MAX_CAPACITY][KEY_SIZE];
static int used;
static int capacity = 4;

static int find(const char *key)
{
	for (int slot = 0; slot < used; slot++)
		if (strcmp(table[slot], key) == 0)
			return slot;
	return -1;
}

static void lookup(const char *key)
{
	int slot = find(key);
	const char *stored;

	if (slot >= 0) {
		stored = table[slot];
		sample_text(stored);
		EXPECT_HIT(cache, hit, ARG(slot), ARG(stored));
		STAP_PROBE2(cache, hit, slot, stored);
		return;
	}
	sample_text(key);
	EXPECT_HIT(cache, miss, ARG(key));
	STAP_PROBE1(cache, miss, key);
	if (used < capacity) {
		slot = used++;
	} else {
		slot = used - 1;
		stored = table[slot];
		sample_text(stored);
		EXPECT_HIT(cache, evict, ARG(slot), ARG(stored));
		STAP_PROBE2(cache, evict, slot, stored);
	}
	snprintf(table[slot], KEY_SIZE, "%s", key);
}

static void usage(void)
{
	fprintf(stderr, "usage: cache [--capacity 1..%d] [--fill N] [KEY...]\n", MAX_CAPACITY);
	exit(2);
}

int main(int argc, char **argv)
{
	long fill = 0, size = capacity;
	int first_key = 1;
	char key[KEY_SIZE];

	while (first_key < argc && strncmp(argv[first_key], "--", 2) == 0) {
		long *option = strcmp(argv[first_key], "--fill") == 0 ? &fill
			: strcmp(argv[first_key], "--capacity") == 0 ? &size : NULL;

		if (option == NULL || first_key + 1 >= argc)
			usage();
		*option = sample_count_arg(argc, argv, first_key + 1, 0);
		first_key += 2;
	}
	if (size < 1 || size > MAX_CAPACITY)
		usage();
	capacity = (int)size;
	for (long i = 0; i < fill; i++) {
		snprintf(key, sizeof(key), "key-%ld", i);
		lookup(key);
	}
	for (int i = first_key; i < argc; i++)
		lookup(argv[i]);
	return 0;
}
