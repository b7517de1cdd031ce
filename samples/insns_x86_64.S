/* Probes on real instructions.  sys/sdt.h can only put a probe on a nop; the
 * SITE macro below writes the same stapsdt note for any label, so a tracer
 * meets instructions it must emulate or run out of line exactly as kernel
 * uprobes do (arch/x86/kernel/uprobes.c).  Every function is
 * long insn_NAME(long a, long b); insns.c calls them and prints the results.
 */

/* The note sys/sdt.h would write for a probe insns:NAME at LABEL (version 3:
 * pc, .stapsdt.base, no semaphore, provider, name, arguments). */
.macro SITE label, name, args
	.pushsection .note.stapsdt, "", "note"
	.balign 4
	.4byte .Lnote_name_end\@ - .Lnote_name\@, .Lnote_desc_end\@ - .Lnote_desc\@, 3
.Lnote_name\@:
	.asciz "stapsdt"
.Lnote_name_end\@:
	.balign 4
.Lnote_desc\@:
	.8byte \label, _.stapsdt.base, 0
	.asciz "insns"
	.asciz "\name"
	.asciz "\args"
.Lnote_desc_end\@:
	.balign 4
	.popsection
.endm

/* The one-byte section whose link-time address every note records. */
	.ifndef _.stapsdt.base
	.pushsection .stapsdt.base, "aG", "progbits", .stapsdt.base, comdat
	.weak _.stapsdt.base
	.hidden _.stapsdt.base
_.stapsdt.base:
	.space 1
	.size _.stapsdt.base, 1
	.popsection
	.endif

.macro FUNC name
	.globl \name
	.hidden \name
	.type \name, @function
\name:
.endm

.macro END name
	.size \name, . - \name
.endm

#define ARGS "-8@%rdi -8@%rsi"

	.data
	.balign 16
riprel_value:
	.quad 0x1122334455667788
	.quad 0x0101010101010101
riprel_slot:
	.quad 0
riprel_int:
	.long 0x12345
riprel_int_slot:
	.long 0
lock_counter:
	.quad 0
helper_pointer:
	.quad helper_add

	.text
helper_add:
	lea (%rdi,%rsi), %rax
	ret

/* Emulated by the kernel, no slot: a multi-byte nop, push of a register,
 * jmp rel8 and rel32, jcc, call rel32. */
FUNC insn_nop5
.Lnop5:	nopl 0x0(%rax,%rax,1)
	SITE .Lnop5, nop5, ARGS
	lea (%rdi,%rsi), %rax
	ret
END insn_nop5

FUNC insn_push_rbp
.Lpush_rbp:
	push %rbp
	SITE .Lpush_rbp, push_rbp, ARGS
	mov %rsp, %rbp
	lea (%rdi,%rsi,2), %rax
	pop %rbp
	ret
END insn_push_rbp

FUNC insn_push_r12
.Lpush_r12:
	push %r12
	SITE .Lpush_r12, push_r12, ARGS
	mov %rsi, %r12
	lea 7(%r12,%rdi), %rax
	pop %r12
	ret
END insn_push_r12

FUNC insn_jmp8
.Ljmp8:	jmp .Ljmp8_target
	SITE .Ljmp8, jmp8, ARGS
	ud2
.Ljmp8_target:
	lea (%rdi,%rdi), %rax
	ret
END insn_jmp8

FUNC insn_jmp32
.Ljmp32:
	.byte 0xe9			/* jmp rel32, spelled out so gas cannot shorten it */
	.long .Ljmp32_target - .Ljmp32_next
.Ljmp32_next:
	SITE .Ljmp32, jmp32, ARGS
	ud2
.Ljmp32_target:
	mov %rsi, %rax
	ret
END insn_jmp32

/* Taken when a < b (returns -1), not taken otherwise (returns 1). */
FUNC insn_jcc
	cmp %rsi, %rdi
.Ljcc:	jl .Ljcc_less
	SITE .Ljcc, jcc, ARGS
	mov $1, %rax
	ret
.Ljcc_less:
	mov $-1, %rax
	ret
END insn_jcc

FUNC insn_call_rel
.Lcall_rel:
	call helper_add
	SITE .Lcall_rel, call_rel, ARGS
	add $100, %rax
	ret
END insn_call_rel

/* Run out of line, with the kernel's fix-ups: the return address an
 * indirect call pushes, rip-relative operands rewritten to a scratch register
 * (rsi, else rdi, else rbx: whichever the instruction does not use), and no ip
 * fix-up after ret and indirect jmp. */
FUNC insn_call_indirect
	lea helper_add(%rip), %rax
.Lcall_indirect:
	call *%rax
	SITE .Lcall_indirect, call_indirect, ARGS
	add $200, %rax
	ret
END insn_call_indirect

FUNC insn_call_riprel
.Lcall_riprel:
	call *helper_pointer(%rip)
	SITE .Lcall_riprel, call_riprel, ARGS
	add $300, %rax
	ret
END insn_call_riprel

FUNC insn_riprel_load
.Lriprel_load:
	mov riprel_value(%rip), %rax
	SITE .Lriprel_load, riprel_load, ARGS
	add %rdi, %rax
	ret
END insn_riprel_load

FUNC insn_riprel_store
.Lriprel_store:
	mov %rdi, riprel_slot(%rip)
	SITE .Lriprel_store, riprel_store, ARGS
	mov riprel_slot(%rip), %rax
	add %rsi, %rax
	ret
END insn_riprel_store

/* a + (address computed at the site - the same address computed here). */
FUNC insn_riprel_lea
.Lriprel_lea:
	lea riprel_value(%rip), %rax
	SITE .Lriprel_lea, riprel_lea, ARGS
	lea riprel_value(%rip), %rdx
	sub %rdx, %rax
	add %rdi, %rax
	ret
END insn_riprel_lea

/* An immediate after the displacement: the rewrite must keep both. */
FUNC insn_riprel_cmp_imm
	xor %eax, %eax
.Lriprel_cmp_imm:
	cmpl $0x12345, riprel_int(%rip)
	SITE .Lriprel_cmp_imm, riprel_cmp_imm, ARGS
	sete %al
	ret
END insn_riprel_cmp_imm

FUNC insn_riprel_store_imm
.Lriprel_store_imm:
	movl $0x5a5a5a5a, riprel_int_slot(%rip)
	SITE .Lriprel_store_imm, riprel_store_imm, ARGS
	mov riprel_int_slot(%rip), %eax
	ret
END insn_riprel_store_imm

/* Writes rsi: the scratch register must be rdi, which holds a. */
FUNC insn_riprel_rsi
.Lriprel_rsi:
	add riprel_value(%rip), %rsi
	SITE .Lriprel_rsi, riprel_rsi, ARGS
	lea (%rsi,%rdi), %rax
	ret
END insn_riprel_rsi

/* ModRM.reg 6 (xmm6) and VEX.vvvv 7 (xmm7) rule out rsi and rdi: scratch rbx.
 * vpor, not vpaddq: the kernel checks a VEX instruction's opcode byte against
 * its one-byte table, where vpaddq's 0xd4 (aam) is refused and vpor's 0xeb is not. */
FUNC insn_riprel_vex
	vmovq %rdi, %xmm7
.Lriprel_vex:
	vpor riprel_value(%rip), %xmm7, %xmm6
	SITE .Lriprel_vex, riprel_vex, ARGS
	vmovq %xmm6, %rax
	ret
END insn_riprel_vex

FUNC insn_call_ret
	lea (%rdi,%rsi,4), %rax
.Lret:	ret
	SITE .Lret, ret, ARGS
END insn_call_ret

FUNC insn_jmp_indirect
	lea .Ljmp_indirect_target(%rip), %rax
.Ljmp_indirect:
	jmp *%rax
	SITE .Ljmp_indirect, jmp_indirect, ARGS
	ud2
.Ljmp_indirect_target:
	lea 5(%rdi), %rax
	ret
END insn_jmp_indirect

FUNC insn_imul
.Limul:	imul %rsi, %rdi
	SITE .Limul, imul, ARGS
	mov %rdi, %rax
	ret
END insn_imul

/* Loads through a; called once with a = 0, so the instruction faults in its
 * slot: the SIGSEGV must show the pc of the probed instruction. */
FUNC insn_fault
	.globl insn_fault_site
	.hidden insn_fault_site
insn_fault_site:
	mov (%rdi), %rax
	SITE insn_fault_site, fault, ARGS
	ret
END insn_fault

/* The kernel refuses a LOCK prefix; the program still runs the instruction. */
FUNC insn_refused_lock
.Lrefused_lock:
	lock addq $1, lock_counter(%rip)
	SITE .Lrefused_lock, refused_lock, ARGS
	mov lock_counter(%rip), %rax
	ret
END insn_refused_lock

	.section .note.GNU-stack, "", @progbits
