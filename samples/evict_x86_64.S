/* SDT probes followed by instructions of many kinds, for uemu's eviction of a
 * site's successor (see evict.c).  Each function is long evict_NAME(long a,
 * long b) with one probe, evict:NAME, whose 1-byte nop is at the global label
 * evict_site_NAME; the successor under test follows the nop directly, and what
 * it does feeds the returned value.
 *
 * A 1-byte jmp rel32 (0xe9) written over the nop takes the successor's first
 * four bytes as its displacement, so each successor's bytes (immediates
 * included) decide where that jump would land: the comments give that
 * displacement.
 */
#include <sys/sdt.h>

/* A global hidden label at the probe's nop: write it right before STAP_PROBE2. */
#define SITE(name) .globl evict_site_##name; .hidden evict_site_##name; evict_site_##name:
#define FUNC(name) .globl name; .hidden name; .type name, @function; name:
#define END(name) .size name, . - name

/* evict_word lies 0x28 bytes into a 256-byte block: see evict_riprel_lea. */
	.data
	.p2align 8
	.skip 0x28
	.globl evict_word
	.hidden evict_word
	.type evict_word, @object
evict_word:
	.long 0x01020304
	.size evict_word, 4

	.text
	.p2align 8

/* 48 8d 05 disp32, first in a 256-byte block: the lea ends 8 bytes into it, so
 * its displacement's low byte, the top byte of the jump's, is 0x28 - 8 in
 * every build (0x20058d48: forwards, a valid address in a non-PIE program too).
 * Returns a + b + evict_word + (address computed at the site - the same address
 * computed here), loaded through the address computed at the site. */
FUNC(evict_riprel_lea)
SITE(riprel_lea)
	STAP_PROBE2(evict, riprel_lea, %rdi, %rsi)
	lea evict_word(%rip), %rax
	lea evict_word(%rip), %rdx
	sub %rax, %rdx
	mov (%rax), %eax
	sub %rdx, %rax
	add %rdi, %rax
	add %rsi, %rax
	ret
END(evict_riprel_lea)

/* Called by evict_call_succ, from the end of the file: the call's rel32 is
 * negative, and the jump over its nop would land well before the program. */
	.type evict_helper, @function
evict_helper:
	lea 1(%rdi,%rsi,2), %rax
	ret
	.size evict_helper, . - evict_helper

/* 41 b9 imm32: the jump takes 41 b9 and the immediate's low half (0x2a15b941). */
FUNC(evict_mov_imm_r9)
SITE(mov_imm_r9)
	STAP_PROBE2(evict, mov_imm_r9, %rdi, %rsi)
	mov $0x12342a15, %r9d
	lea (%r9,%rdi), %rax
	add %rsi, %rax
	ret
END(evict_mov_imm_r9)

/* 8b 05 disp32 (0x....058b: the low half of the load's displacement, forwards
 * to .data): the displacement must be rewritten wherever the load runs. */
FUNC(evict_riprel_load)
SITE(riprel_load)
	STAP_PROBE2(evict, riprel_load, %rdi, %rsi)
	mov evict_word(%rip), %eax
	add %rdi, %rax
	add %rsi, %rax
	ret
END(evict_riprel_load)

/* 3d imm32 (0x2000003d).  b when (int)a < 0x200000, a otherwise: the
 * successor's flags decide. */
FUNC(evict_cmp_flags)
	mov %edi, %eax
SITE(cmp_flags)
	STAP_PROBE2(evict, cmp_flags, %rdi, %rsi)
	cmp $0x200000, %eax
	mov %rdi, %rax
	cmovl %rsi, %rax
	ret
END(evict_cmp_flags)

/* 0f 1f 44 00 00 (0x00441f0f), spelled out: gas drops a zero displacement and
 * writes `nopl 0x0(%rax,%rax,1)` as the 4-byte 0f 1f 04 00. */
FUNC(evict_nopl5)
SITE(nopl5)
	STAP_PROBE2(evict, nopl5, %rdi, %rsi)
	.byte 0x0f, 0x1f, 0x44, 0x00, 0x00	/* nopl 0x0(%rax,%rax,1) */
	lea (%rdi,%rsi), %rax
	ret
END(evict_nopl5)

/* 48 b8 imm64, 10 bytes: only the first 5 would be overwritten (0x7788b848). */
FUNC(evict_movabs)
SITE(movabs)
	STAP_PROBE2(evict, movabs, %rdi, %rsi)
	movabs $0x1122334455667788, %rax
	add %rdi, %rax
	sub %rsi, %rax
	ret
END(evict_movabs)

/* 05 imm32 (0x10000005), the head of a loop run b times although the probe
 * is passed once: a + b * 0x100000, in 32 bits. */
FUNC(evict_loop_head)
	mov %edi, %eax
	mov %esi, %ecx
SITE(loop_head)
	STAP_PROBE2(evict, loop_head, %rdi, %rsi)
.Lloop_head:
	add $0x100000, %eax
	dec %ecx
	jnz .Lloop_head
	ret
END(evict_loop_head)

/* 31 c0, 2 bytes: punned, 0xE9 and one byte of the tracer's choice, the next
 * bytes (push %rsi, pop %rdx, push %rdx: 56 5a 52) the rest, which keeps its
 * jump's window (0x525a56..: 256 bytes, 1.29 GiB on) and the pun's (0x5a56..e9:
 * 64 KiB, 1.41 GiB on) past where a PIE's heap may grow (brk is randomised
 * over 1 GiB) and in user space in every build.  Returns b (a | b if the xor
 * did not run). */
FUNC(evict_short_succ)
	mov %rdi, %rax
SITE(short_succ)
	STAP_PROBE2(evict, short_succ, %rdi, %rsi)
	xor %eax, %eax
	push %rsi
	pop %rdx
	push %rdx
	pop %rdx
	or %rdx, %rax
	ret
END(evict_short_succ)

/* b8 ff ff ff 00: the jump's displacement is 0xffffffb8, -72, and lands 67
 * bytes before the nop, inside this text (the functions above come first). */
FUNC(evict_mov_imm)
SITE(mov_imm)
	STAP_PROBE2(evict, mov_imm, %rdi, %rsi)
	mov $0x00ffffff, %eax
	add %rdi, %rax
	add %rsi, %rax
	ret
END(evict_mov_imm)

/* e9 rel32, forwards over 256 int3s (spelled out: gas would take the 2-byte
 * jmp): the trampoline of an evicted jmp is a jump on to where it led (the
 * jump's displacement: 0x000100e9).  3a + b, computed past the int3s. */
FUNC(evict_jmp_succ)
SITE(jmp_succ)
	STAP_PROBE2(evict, jmp_succ, %rdi, %rsi)
	.byte 0xe9
	.long .Ljmp_succ_to - . - 4
	.fill 0x100, 1, 0xcc
.Ljmp_succ_to:
	lea (%rdi,%rdi,2), %rax
	add %rsi, %rax
	ret
END(evict_jmp_succ)

/* 40 84 ff, 3 bytes: too short for a whole jump, so its own jump is a pun, 0xE9
 * and two bytes of the tracer's choice, the movslq's 48 63 the rest: its window
 * 0x6348...., 64 KiB 1.55 GiB on; the pun's 0x48....e9, 16 MiB 1.13 GiB on
 * (past the heap's room, as short_succ's).  b when a's low byte is 0, else a
 * as a 32-bit int. */
FUNC(evict_test_byte)
SITE(test_byte)
	STAP_PROBE2(evict, test_byte, %rdi, %rsi)
	test %dil, %dil
	movslq %edi, %rax
	cmove %rsi, %rax
	ret
END(evict_test_byte)

/* 48 83 38 00, 4 bytes (libjvm's thread__start has a cmpq $0,(%r14) there):
 * punned, the je's 74 the top byte (a window of 16 MiB, 1.8 GiB on; the pun's
 * target anywhere in its reach).  The word compared is
 * a, kept in the red zone.  0 when a is 0, else a + b. */
FUNC(evict_cmp_mem)
	mov %rdi, -8(%rsp)
	lea -8(%rsp), %rax
SITE(cmp_mem)
	STAP_PROBE2(evict, cmp_mem, %rdi, %rsi)
	cmpq $0, (%rax)
	je 1f
	add %rsi, %rdi
1:	mov %rdi, %rax
	ret
END(evict_cmp_mem)

/* e8 rel32: a moved call's trampoline pushes the call's own return address
 * (the callee returns here, not into the tracer's code) and jumps to the
 * callee.  2a + 2b + 1. */
FUNC(evict_call_succ)
SITE(call_succ)
	STAP_PROBE2(evict, call_succ, %rdi, %rsi)
	call evict_helper
	add %rdi, %rax
	ret
END(evict_call_succ)

	.section .note.GNU-stack, "", @progbits
