/* Argument forms beyond registers and stack slots, one probe per family so
 * that a tracer can support some and report the others:
 *
 *   argforms:globals     globals and a modified static passed as they are:
 *                        "-4@g_int(%rip)", "-2@4+g_array(%rip)" (PIE) or
 *                        "g_array+4(%rip)" (non-PIE), i386 "sym@GOTOFF(%ebx)",
 *                        aarch64 "[x1, #:lo12:sym]"; plus the array's address
 *   argforms:twins       a static whose name also belongs to a static in
 *                        argforms_twin.c (which passes its own twin):
 *                        two .symtab entries share the name
 *   argforms:constants   immediates, including unsigned values the compiler
 *                        prints as negative ("4@$-202182160", "1@$-127")
 *   argforms:wide        64-bit values (a register pair on 32-bit targets,
 *                        named by its low register only: "-8@%eax")
 *   argforms:small       _Bool, plain char (signed on x86, not on ARM),
 *                        signed and unsigned char, short
 *   argforms:floats      float and double ("4f@", "8f@")
 *   argforms:longdouble  long double ("16f@" on x86_64, "12f@" on i386); at
 *                        -O0 x86_64 gcc emits "16f@%rax" with the warning
 *                        "unsupported size for integer register": the value
 *                        is not in rax, a tracer can only report it unreadable
 *
 *   argforms
 */
#include "sample.h"

#include <stdint.h>

int g_int = -7;
unsigned long g_ulong = 0x1234567;
short g_array[4] = { 10, -20, 30, -40 };
struct fields {
	char c;
	short s;
	int i;
	long long ll;
} g_struct = { 'x', -555, 66666, -7777777777LL };
static int twin = 11;

void twin_other_file(void);

static volatile int runtime_one = 1;

static __attribute__((noinline)) void globals(void)
{
	static unsigned short bumped = 65000;

	bumped++;
	twin++;
	EXPECT_HIT(argforms, globals, ARG(g_int), ARG(g_ulong), ARG(g_array[2]), ARG(g_struct.s),
		   ARG(g_struct.ll), ARG(bumped), ARG(g_array));
	STAP_PROBE7(argforms, globals, g_int, g_ulong, g_array[2], g_struct.s, g_struct.ll, bumped,
		    g_array);
	EXPECT_HIT(argforms, twins, ARG(twin));
	STAP_PROBE1(argforms, twins, twin);
}

static __attribute__((noinline)) void constants(void)
{
	EXPECT_HIT(argforms, constants, ARG(42), ARG(-9), ARG((uint32_t)0xf3f2f1f0), ARG((unsigned char)0x81),
		   ARG(UINT64_MAX), ARG(INT64_MIN));
	STAP_PROBE6(argforms, constants, 42, -9, (uint32_t)0xf3f2f1f0, (unsigned char)0x81, UINT64_MAX,
		    INT64_MIN);
}

static __attribute__((noinline)) void wide(long long seed)
{
	long long negative = -0x1122334455667788LL * seed;
	unsigned long long high = 0x8877665544332211ULL * (unsigned long long)seed;

	EXPECT_HIT(argforms, wide, ARG(negative), ARG(high));
	STAP_PROBE2(argforms, wide, negative, high);
}

static __attribute__((noinline)) void small(int seed)
{
	_Bool flag = seed == 1;
	char plain = (char)(0xf0 + seed);
	signed char s8 = (signed char)-seed;
	unsigned char u8 = (unsigned char)(0xfe + seed);
	short s16 = (short)(-1000 * seed);

	EXPECT_HIT(argforms, small, ARG(flag), ARG(plain), ARG(s8), ARG(u8), ARG(s16));
	STAP_PROBE5(argforms, small, flag, plain, s8, u8, s16);
}

/* Values exactly representable in binary, so their printed forms are exact.
 * The long double is a global: gcc cannot hand a 10-byte value in a register
 * to an asm operand ("unsupported operand size"), so it must be in memory. */
long double g_extended = 3.5L;

static __attribute__((noinline)) void reals(int one)
{
	float single = 1.5f * (float)one;
	double twice = -2.25 * one;

	EXPECT_HIT(argforms, floats, REAL(single), REAL(twice));
	STAP_PROBE2(argforms, floats, single, twice);
	EXPECT_HIT(argforms, longdouble, REAL(g_extended));
	STAP_PROBE1(argforms, longdouble, g_extended);
}

int main(void)
{
	sample_sync("start");
	globals();
	twin_other_file();
	constants();
	wide(runtime_one);
	small(runtime_one);
	reals(runtime_one);
	sample_sync("end");
	return 0;
}
