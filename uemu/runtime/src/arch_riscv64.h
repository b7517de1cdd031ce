/* riscv64: system call numbers (asm-generic/unistd.h) and instructions. */

#include "syscalls_generic.h"
#define SYS_riscv_flush_icache 259 /* __NR_arch_specific_syscall + 15 */

#define TORN_WRITE_ORDER 0

/* norvc: a 4-byte ebreak, as uemu writes them. */
#define ASM_PROLOGUE ".option push\n.option norvc\n"
#define ASM_EPILOGUE ".option pop\n"
#define ASM_SYSCALL "ecall"
#define ASM_TRAP "ebreak"
/* uemu_syscall(nr, a..f): number in a7, arguments in a0..a5. */
#define ASM_SYSCALL_BODY                                                        \
    "    mv a7, a0\n    mv a0, a1\n    mv a1, a2\n    mv a2, a3\n"              \
    "    mv a3, a4\n    mv a4, a5\n    mv a5, a6\n    ecall\n    ret\n"
#define ASM_RESTORER "    li a7, " STR(SYS_rt_sigreturn) "\n    ecall\n    ebreak\n"

/* uemu_hit_entry: a trampoline saved t0, t1 and ra below sp (32 bytes), put the site's
 * index in t0 and called here through t1.  x1..x31 make the frame uemu_hit() reads
 * (arch/riscv.py HIT_FRAME: slot n is xn, slot 0 unused, 32 the return address), with the
 * trampoline's saved t0, t1, ra put in their slots.  No floating-point register is used. */
#define ASM_HIT_ENTRY                                                           \
    "    addi sp, sp, -272\n"                                                    \
    "    sd x3, 24(sp)\n    sd x4, 32(sp)\n    sd x7, 56(sp)\n    sd x8, 64(sp)\n"   \
    "    sd x9, 72(sp)\n    sd x10, 80(sp)\n    sd x11, 88(sp)\n    sd x12, 96(sp)\n" \
    "    sd x13, 104(sp)\n    sd x14, 112(sp)\n    sd x15, 120(sp)\n"            \
    "    sd x16, 128(sp)\n    sd x17, 136(sp)\n    sd x18, 144(sp)\n"            \
    "    sd x19, 152(sp)\n    sd x20, 160(sp)\n    sd x21, 168(sp)\n"            \
    "    sd x22, 176(sp)\n    sd x23, 184(sp)\n    sd x24, 192(sp)\n"            \
    "    sd x25, 200(sp)\n    sd x26, 208(sp)\n    sd x27, 216(sp)\n"            \
    "    sd x28, 224(sp)\n    sd x29, 232(sp)\n    sd x30, 240(sp)\n"            \
    "    sd x31, 248(sp)\n    sd ra, 256(sp)\n"                                  \
    "    ld t1, 272(sp)\n    sd t1, 40(sp)\n    ld t1, 280(sp)\n    sd t1, 48(sp)\n" \
    "    ld t1, 288(sp)\n    sd t1, 8(sp)\n"                                     \
    "    mv a0, t0\n    mv a1, sp\n    call uemu_hit\n"                            \
    "    ld x3, 24(sp)\n    ld x4, 32(sp)\n    ld x7, 56(sp)\n    ld x8, 64(sp)\n"   \
    "    ld x9, 72(sp)\n    ld x10, 80(sp)\n    ld x11, 88(sp)\n    ld x12, 96(sp)\n" \
    "    ld x13, 104(sp)\n    ld x14, 112(sp)\n    ld x15, 120(sp)\n"            \
    "    ld x16, 128(sp)\n    ld x17, 136(sp)\n    ld x18, 144(sp)\n"            \
    "    ld x19, 152(sp)\n    ld x20, 160(sp)\n    ld x21, 168(sp)\n"            \
    "    ld x22, 176(sp)\n    ld x23, 184(sp)\n    ld x24, 192(sp)\n"            \
    "    ld x25, 200(sp)\n    ld x26, 208(sp)\n    ld x27, 216(sp)\n"            \
    "    ld x28, 224(sp)\n    ld x29, 232(sp)\n    ld x30, 240(sp)\n"            \
    "    ld x31, 248(sp)\n    ld ra, 256(sp)\n    addi sp, sp, 272\n    ret\n"

static inline unsigned long thread_pointer(void)
{
    unsigned long tp;

    __asm__ volatile("mv %0, tp" : "=r"(tp));
    return tp;
}

/* fence.i is local to one hart; the kernel flushes every hart of the process. */
#define sync_icache(start, len) \
    uemu_syscall(SYS_riscv_flush_icache, (long)(start), (long)((start) + (len)), 0, 0, 0, 0)
