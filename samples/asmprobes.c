/* Probes written in assembly (asmprobes_x86_64.S) and inside a C asm
 * statement (STAP_PROBE_ASM): argument text that only a hand can write.
 *
 *   asmprobes:registers  bare register names, no size: %ah %al %ax %eax %rax
 *                        %bh %sil %r9w, each read at its own width, unsigned
 *   asmprobes:memory     -4@-4+16-16(%rbp)  8@(%rsp)  -2@asm_shorts(,%rax,2)
 *                        -2@asm_shorts+6(%rip)  -2@(%rdx,%rax,2)  -4@asm_word(%rip)
 *   asmprobes:casm       STAP_PROBE_ASM with a literal scale-index-base operand,
 *                        as in the kernel's BPF selftests
 *   asmprobes:template   STAP_PROBE_ASM with a template operand the compiler
 *                        fills in (systemtap's sdt_casm test)
 *
 *   asmprobes            (x86_64 only)
 */
#include "sample.h"

void asm_registers(void);
void asm_memory(void);

static short c_shorts[4] = { 100, -200, 300, -400 };

static __attribute__((noinline)) void casm(long index, int value)
{
	EXPECT_HIT(asmprobes, casm, SIGNED(c_shorts[index], 2));
	__asm__ __volatile__(STAP_PROBE_ASM(asmprobes, casm, -2@(%%rdx,%%rax,2)) :: "d"(c_shorts), "a"(index));
	EXPECT_HIT(asmprobes, template, ARG(value));
	__asm__ __volatile__(STAP_PROBE_ASM(asmprobes, template, STAP_PROBE_ASM_TEMPLATE(1))
			     :: STAP_PROBE_ASM_OPERANDS(1, value));
}

int main(void)
{
	sample_sync("start");
	EXPECT_HIT(asmprobes, registers, UNSIGNED(0x77, 1), UNSIGNED(0x88, 1), UNSIGNED(0x7788, 2),
		   UNSIGNED(0x55667788, 4), UNSIGNED(0x1122334455667788, 8), UNSIGNED(0xff, 1),
		   UNSIGNED(0xef, 1), UNSIGNED(0x3210, 2));
	asm_registers();
	EXPECT_HIT(asmprobes, memory, SIGNED(-5, 4), UNSIGNED(1234567, 8), SIGNED(30, 2), SIGNED(-40, 2),
		   SIGNED(30, 2), SIGNED(-123456, 4));
	asm_memory();
	casm(3, -77);
	sample_sync("end");
	return 0;
}
