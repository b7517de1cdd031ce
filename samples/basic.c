/* The plain cases: probes with 0, 2, 9 and 12 arguments of every integer
 * width and sign, a string pointer, and a probe in a loop.
 *
 *   basic [ITERATIONS]   (default 3)
 */
#include "sample.h"

#include <stddef.h>
#include <string.h>

static const char greeting[] = "hello, probe";

int main(int argc, char **argv)
{
	long iterations = sample_count_arg(argc, argv, 1, 3);
	/* Values the compiler cannot fold, so some arguments live in registers or memory. */
	volatile long runtime_base = 1000 + argc;
	long base = runtime_base;
	signed char s8 = -100;
	unsigned char u8 = 0x81;
	short s16 = -30000;
	unsigned short u16 = 65000;
	int s32 = -2000000000;
	unsigned int u32 = 0xf3f2f1f0u;
	long long s64 = -0x123456789abLL - base;
	unsigned long long u64 = 0xfedcba9876543210ULL;
	const char *text = greeting;
	size_t text_len = strlen(greeting);
	long hits = 0;

	sample_sync("start");

	EXPECT_HIT(basic, start);
	STAP_PROBE(basic, start);
	hits++;

	EXPECT_HIT(basic, types, ARG(s8), ARG(u8), ARG(s16), ARG(u16), ARG(s32), ARG(u32),
		   ARG(s64), ARG(u64), ARG(&runtime_base));
	STAP_PROBE9(basic, types, s8, u8, s16, u16, s32, u32, s64, u64, &runtime_base);
	hits++;

	sample_text(text);
	EXPECT_HIT(basic, string, ARG(text), ARG(text_len));
	STAP_PROBE2(basic, string, text, text_len);
	hits++;

	for (long i = 0; i < iterations; i++) {
		int negated = (int)-i;
		unsigned int odd = (unsigned int)(2 * i + 1);

		EXPECT_HIT(basic, loop, ARG(i), ARG(negated), ARG(odd), ARG(base));
		STAP_PROBE4(basic, loop, i, negated, odd, base);
		hits++;
	}

	{
		char c1 = (char)0xe1; /* -31 where char is signed (x86), 225 where not (ARM) */
		short a2 = (short)(base - 1102);
		int a3 = 103;
		long a4 = -base * 4;
		unsigned char a5 = 105;
		unsigned short a6 = (unsigned short)(base * 6);
		unsigned int a7 = 107;
		unsigned long a8 = (unsigned long)base << 20;
		long long a9 = -109;
		int a10 = (int)base + 10;
		signed char a11 = -111;
		unsigned long long a12 = 112;

		EXPECT_HIT(basic, twelve, ARG(c1), ARG(a2), ARG(a3), ARG(a4), ARG(a5), ARG(a6),
			   ARG(a7), ARG(a8), ARG(a9), ARG(a10), ARG(a11), ARG(a12));
		STAP_PROBE12(basic, twelve, c1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12);
		hits++;
	}

	sample_sync("end");
	EXPECT_HIT(basic, end, ARG(hits));
	STAP_PROBE1(basic, end, hits);
	return 0;
}
