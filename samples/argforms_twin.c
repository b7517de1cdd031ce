/* The other "twin": same name as argforms.c's file-local static, other value. */
#include "sample.h"

static int twin = 22;

void twin_other_file(void);

__attribute__((noinline)) void twin_other_file(void)
{
	twin++;
	EXPECT_HIT(argforms, twins, ARG(twin));
	STAP_PROBE1(argforms, twins, twin);
}
