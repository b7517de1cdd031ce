/* Probes written in assembly: sys/sdt.h copies each operand into the note as
 * text, so operands appear that no compiler prints.  Called from asmprobes.c,
 * which prints the expected values.
 */
#include <sys/sdt.h>

	.data
	.globl asm_shorts
	.hidden asm_shorts
asm_shorts:
	.short 10, -20, 30, -40
asm_word:
	.long -123456

	.text

/* asm_registers(): bare register names without a size: each is read at the
 * width of the alias it names, unsigned (%ah is bits 8..15 of rax). */
	.globl asm_registers
	.hidden asm_registers
	.type asm_registers, @function
asm_registers:
	push %rbx
	movabs $0x1122334455667788, %rax
	movabs $0x99aabbccddeeff00, %rbx
	movabs $0x0123456789abcdef, %rsi
	movabs $0xfedcba9876543210, %r9
	STAP_PROBE8(asmprobes, registers, %ah, %al, %ax, %eax, %rax, %bh, %sil, %r9w)
	pop %rbx
	ret
	.size asm_registers, . - asm_registers

/* asm_memory(): memory operands a compiler never prints: a displacement
 * written as a sum, no displacement at all, a symbol with no base register
 * (scale-index only), a symbol plus offset relative to %rip, and a
 * scale-index-base operand. */
	.globl asm_memory
	.hidden asm_memory
	.type asm_memory, @function
asm_memory:
	push %rbp
	mov %rsp, %rbp
	sub $16, %rsp
	movl $-5, -4(%rbp)
	movq $1234567, (%rsp)
	lea asm_shorts(%rip), %rdx
	mov $2, %eax
	STAP_PROBE6(asmprobes, memory, -4@-4+16-16(%rbp), 8@(%rsp), -2@asm_shorts(,%rax,2), -2@asm_shorts+6(%rip), -2@(%rdx,%rax,2), -4@asm_word(%rip))
	leave
	ret
	.size asm_memory, . - asm_memory

	.section .note.GNU-stack, "", @progbits
