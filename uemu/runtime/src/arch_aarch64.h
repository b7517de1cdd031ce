/* aarch64: system call numbers (asm-generic/unistd.h) and instructions. */

#include "syscalls_generic.h"

#define TORN_WRITE_ORDER 0

#define ASM_SYSCALL "svc #0"
/* Not the kernel's UPROBES_BRK_IMM (5): the kernel's uprobe hook never looks at it. */
#define ASM_TRAP "brk #0x3e5"
/* uemu_syscall(nr, a..f): number in x8, arguments in x0..x5. */
#define ASM_SYSCALL_BODY                                                        \
    "    mov x8, x0\n    mov x0, x1\n    mov x1, x2\n    mov x2, x3\n"          \
    "    mov x3, x4\n    mov x4, x5\n    mov x5, x6\n    svc #0\n    ret\n"
#define ASM_RESTORER "    mov x8, #" STR(SYS_rt_sigreturn) "\n    svc #0\n    " ASM_TRAP "\n"

/* uemu_hit_entry: a trampoline saved x16, x17 and x30 below sp (32 bytes), loaded this
 * address into x16 and the site's index into w17, and called here.  x0..x30 and nzcv make
 * the frame uemu_hit() reads (arch/aarch64.py HIT_FRAME: slot n is xn, 31 nzcv, 32 the
 * return address), with the trampoline's saved x16, x17, x30 put in their slots. */
#define ASM_HIT_ENTRY                                                           \
    "    sub sp, sp, #272\n"                                                     \
    "    stp x0, x1, [sp, #0]\n    stp x2, x3, [sp, #16]\n"                      \
    "    stp x4, x5, [sp, #32]\n    stp x6, x7, [sp, #48]\n"                     \
    "    stp x8, x9, [sp, #64]\n    stp x10, x11, [sp, #80]\n"                   \
    "    stp x12, x13, [sp, #96]\n    stp x14, x15, [sp, #112]\n"                \
    "    stp x18, x19, [sp, #144]\n    stp x20, x21, [sp, #160]\n"               \
    "    stp x22, x23, [sp, #176]\n    stp x24, x25, [sp, #192]\n"               \
    "    stp x26, x27, [sp, #208]\n    stp x28, x29, [sp, #224]\n"               \
    "    mrs x9, nzcv\n    str x9, [sp, #248]\n    str x30, [sp, #256]\n"         \
    "    ldp x9, x10, [sp, #272]\n    stp x9, x10, [sp, #128]\n"                 \
    "    ldr x9, [sp, #288]\n    str x9, [sp, #240]\n"                           \
    "    mov w0, w17\n    mov x1, sp\n    bl uemu_hit\n"                          \
    "    ldr x9, [sp, #248]\n    msr nzcv, x9\n"                                 \
    "    ldp x0, x1, [sp, #0]\n    ldp x2, x3, [sp, #16]\n"                      \
    "    ldp x4, x5, [sp, #32]\n    ldp x6, x7, [sp, #48]\n"                     \
    "    ldp x8, x9, [sp, #64]\n    ldp x10, x11, [sp, #80]\n"                   \
    "    ldp x12, x13, [sp, #96]\n    ldp x14, x15, [sp, #112]\n"                \
    "    ldp x18, x19, [sp, #144]\n    ldp x20, x21, [sp, #160]\n"               \
    "    ldp x22, x23, [sp, #176]\n    ldp x24, x25, [sp, #192]\n"               \
    "    ldp x26, x27, [sp, #208]\n    ldp x28, x29, [sp, #224]\n"               \
    "    ldr x30, [sp, #256]\n    add sp, sp, #272\n    ret\n"

static inline unsigned long thread_pointer(void)
{
    unsigned long tp;

    __asm__ volatile("mrs %0, tpidr_el0" : "=r"(tp));
    return tp;
}

/* After a store to code through process_vm_writev (which, unlike /proc/self/mem, does not
 * flush): clean the data cache and invalidate the instruction cache to the point of
 * unification, broadcast to every CPU (Linux sets SCTLR_EL1.UCI, so EL0 may). */
static inline void sync_icache(uint64_t start, unsigned long len)
{
    unsigned long ctr, line, end = start + len, p;

    __asm__ volatile("mrs %0, ctr_el0" : "=r"(ctr));
    line = 4UL << ((ctr >> 16) & 15);
    for (p = start & ~(line - 1); p < end; p += line)
        __asm__ volatile("dc cvau, %0" : : "r"(p) : "memory");
    __asm__ volatile("dsb ish" : : : "memory");
    line = 4UL << (ctr & 15);
    for (p = start & ~(line - 1); p < end; p += line)
        __asm__ volatile("ic ivau, %0" : : "r"(p) : "memory");
    __asm__ volatile("dsb ish\n\tisb" : : : "memory");
}
